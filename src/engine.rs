//! The store protocol above single chunks — the append target and its
//! lock-free rollover, the warm pool, dedicated chunks for oversized blobs,
//! resolving and acknowledging by location, and the reclamation pass —
//! written once over the [`Chunks`] trait and used by shared mode (chunk
//! files in `/dev/shm`) and heap mode (pages in process memory).

use crate::chunk::{ChunkRegion, Deactivate, Reserve, Unlocated, Verdict, SEALED_ACTIVATING};
use crate::clock;
use crate::error::{BlobError, Result};
pub(crate) use crate::handle::Loc;
use crate::hooks::{self, Point};
use crate::layout::*;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// Fixed parameters of a store, read once when it is opened.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Key of the entry tags.
    pub key: u64,
    /// Size of a standard chunk, header included.
    pub chunk_size: u32,
    /// Offset whose crossing asks for the next chunk to be prepared.
    pub prefetch_at: u32,
    /// Expiry of unacknowledged data, from sealing.
    pub ttl_ms: u64,
    /// Grace period after full acknowledgement.
    pub decay_ms: u64,
    /// Warm-pool slots in use.
    pub pool_capacity: u32,
}

impl Policy {
    pub(crate) fn new(
        key: u64,
        chunk_size: u32,
        prefetch_ratio: f64,
        ttl_ms: u64,
        decay_ms: u64,
        pool: u32,
    ) -> Self {
        let data = (chunk_size as usize).saturating_sub(CHUNK_HEADER_SIZE) as f64;
        Self {
            key,
            chunk_size,
            prefetch_at: CHUNK_HEADER_SIZE as u32 + (data * prefetch_ratio) as u32,
            ttl_ms,
            decay_ms,
            pool_capacity: pool.min(POOL_SLOTS as u32),
        }
    }

    /// Largest payload of one blob.
    pub(crate) const MAX_BLOB: usize = MAX_CHUNK_SIZE - CHUNK_HEADER_SIZE - ENTRY_HEADER_SIZE;

    fn tag(&self, loc: &Loc) -> u64 {
        entry_tag(self.key, loc.id, loc.generation, loc.offset, loc.size)
    }
}

/// A pooled chunk idle for longer than max(decay, this) is released.
pub(crate) const POOL_IDLE_MIN_MS: u64 = 1_000;

/// How long an appender refused by the chunk limit waits for a creation in
/// flight (a prefetch) to land in the pool.
const CREATION_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// A process's memory of its last reclamation pass by the store's rules, so
/// that a rollover with an empty pool runs a pass before creating a chunk
/// only when one may find something: an acknowledgement since that pass
/// began (the namespace's `last_ack_ms`), a chunk it kept for its decay, a
/// TTL that may have run out since, or a second gone by (crash recovery).
/// Without it every such rollover walked every chunk, so creating a chunk
/// cost O(chunks). A hint: a stale read makes a rollover create a chunk a
/// pass would have found, and at the chunk limit the pass runs anyway.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// Coarse ms at which the last pass began; 0: none yet.
    start_ms: AtomicU64,
    /// When a chunk that pass kept may expire (or a second after it began).
    next_ms: AtomicU64,
    /// Non-zero if that pass kept a fully acknowledged chunk for its decay.
    decaying: AtomicU32,
}

impl Gate {
    /// Whether a pass now may reclaim something the last one did not.
    fn pass_may_reclaim(&self, last_ack_ms: &AtomicU64, now_ms: u64) -> bool {
        // Relaxed throughout: a hint (see the type's documentation).
        let start = self.start_ms.load(Ordering::Relaxed);
        start == 0
            || self.decaying.load(Ordering::Relaxed) != 0
            || now_ms >= self.next_ms.load(Ordering::Relaxed)
            // An acknowledgement in the millisecond the pass began, or after.
            || last_ack_ms.load(Ordering::Relaxed).saturating_add(1) >= start
    }

    fn record(&self, start_ms: u64, next_ms: u64, decaying: bool) {
        self.next_ms.store(next_ms, Ordering::Relaxed);
        self.decaying.store(u32::from(decaying), Ordering::Relaxed);
        self.start_ms.store(start_ms.max(1), Ordering::Relaxed);
    }
}

/// Raises the namespace's latest-acknowledgement time to now (at most one
/// store per millisecond per thread: a read first).
fn note_acknowledged<C: Chunks>(c: &C) {
    if let Some((_, last)) = c.gate() {
        let now = clock::now_ms();
        // Relaxed: a hint, read by `Gate::pass_may_reclaim`.
        if last.load(Ordering::Relaxed) < now {
            last.fetch_max(now, Ordering::Relaxed);
        }
    }
}

/// Rollovers one append may go through before giving up (only reachable if
/// another process keeps corrupting the shared words).
const MAX_ROLLOVERS: u32 = 10_000;

/// A chunk kept alive (mapped or allocated) for as long as it is held.
pub(crate) trait ChunkRef: Clone {
    /// The chunk's region.
    fn region(&self) -> &ChunkRegion;
    /// The chunk's id.
    fn id(&self) -> u32;
    /// Whether `other` is this very chunk (the same memory), not merely
    /// one with the same id.
    fn same(&self, other: &Self) -> bool;
}

/// What a reclamation pass did, for statistics.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event {
    Recycled,
    Retired,
    Expired,
}

/// The chunks of one store and the words their protocol shares.
pub(crate) trait Chunks {
    /// How a chunk is held.
    type Chunk: ChunkRef;
    /// The store's fixed parameters.
    fn policy(&self) -> &Policy;
    /// `(generation << 32) | id` of the append target.
    fn active(&self) -> &AtomicU64;
    /// Warm-pool slots (id + 1, 0 = empty), `pool_capacity` of them.
    fn pool(&self) -> &[AtomicU32];
    /// The generation counter.
    fn generation(&self) -> &AtomicU32;
    /// Chunk `id`, or an error if it does not exist or is unusable.
    fn chunk(&self, id: u32) -> Result<Self::Chunk>;
    /// Calls `f` on chunk `id`'s region without taking a reference count
    /// (the hot path); an error if the chunk does not exist or is unusable.
    fn with_region<R>(&self, id: u32, f: impl FnOnce(&ChunkRegion) -> R) -> Result<R> {
        self.chunk(id).map(|c| f(c.region()))
    }
    /// A new chunk of `size` bytes, formatted FREE and sealed, owned by the caller.
    fn create(&self, size: usize, flags: u32, populate: bool) -> Result<Self::Chunk>;
    /// Releases a chunk already marked RETIRED (unlink its own file,
    /// unregister, forget). Takes the chunk itself, not its id: the id's
    /// cache entry may already be gone, or belong to a later chunk.
    fn release(&self, chunk: &Self::Chunk);
    /// Appends the ids of every live chunk to `out`.
    fn ids(&self, out: &mut Vec<u32>);
    /// Finishes the release of a chunk found RETIRED but still listed: its
    /// retirer died between marking it and releasing it (shared mode; a
    /// heap page's retirer cannot die alone, and it releases at once).
    fn finish_release(&self, _chunk: &Self::Chunk) {}
    /// Chunk `id` is listed but could not be opened: if its file is gone
    /// (its releaser died between the unlink and the unregistration),
    /// forgets it (shared mode).
    fn forget_missing(&self, _id: u32) {}
    /// Finishes chunk creations whose creator made no step for `grace_ms`
    /// (it died between registering the creation and publishing the chunk):
    /// removes their files and frees their places (shared mode).
    fn sweep_creations(&self, _grace_ms: u64) {}
    /// Whether chunk `id` is listed as live (its file published, in shared
    /// mode), so that a failure to open it is not a reclamation.
    fn is_listed(&self, id: u32) -> bool;
    /// The error to report when the store was closed under its user (shared
    /// mode: the creator removed the namespace).
    fn closed(&self) -> Option<BlobError> {
        None
    }
    /// Backs the next step of chunk `id` with memory (see
    /// [`ChunkRegion::ready`]); an error if there is none (a full tmpfs).
    /// Heap pages are allocated whole: nothing to do.
    fn prepare(&self, _id: u32) -> Result<()> {
        Ok(())
    }
    /// Asks for a chunk to be prepared off the append path.
    fn request_prefetch(&self) {}
    /// Asks for the append target and the pooled chunks to be backed
    /// ahead of the appenders (see [`backing`]), without making a chunk.
    fn request_backing(&self) {}
    /// Whether a chunk is being created right now (by any process), so that
    /// an appender refused by the chunk limit may wait for it to land in the
    /// pool (a prefetch in flight) instead of failing.
    fn creation_in_flight(&self) -> bool {
        false
    }
    /// This process's [`Gate`] and the namespace's latest-acknowledgement
    /// word; `None`: every rollover with an empty pool runs a pass.
    fn gate(&self) -> Option<(&Gate, &AtomicU64)> {
        None
    }
    /// Counts a reclamation event.
    fn count(&self, _event: Event) {}
}

/// Warm chunks waiting in the pool.
pub(crate) fn pool_len<C: Chunks>(c: &C) -> u32 {
    c.pool()
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) != 0)
        .count() as u32
}

fn pool_push<C: Chunks>(c: &C, id: u32) -> bool {
    c.pool().iter().any(|s| {
        // Release: pairs with the Acquire in `pool_pop`: the popper sees
        // the chunk's FREE header.
        s.load(Ordering::Relaxed) == 0
            && s.compare_exchange(0, id + 1, Ordering::Release, Ordering::Relaxed)
                .is_ok()
    })
}

fn pool_pop<C: Chunks>(c: &C) -> Option<u32> {
    for s in c.pool() {
        let v = s.load(Ordering::Relaxed);
        // Acquire: pairs with the Release in `pool_push`.
        if v != 0
            && s.compare_exchange(v, 0, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return Some(v - 1);
        }
    }
    None
}

fn next_generation<C: Chunks>(c: &C) -> u32 {
    c.generation()
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(1)
}

/// Retires a chunk already claimed or exclusively owned, and releases it.
fn retire<C: Chunks>(c: &C, chunk: &C::Chunk) {
    chunk.region().mark_retired();
    hooks::at(Point::Retired);
    c.release(chunk);
    c.count(Event::Retired);
}

/// Replaces the append target `seen` (sealed, or none yet) with a warm
/// chunk from the pool or a new one. Lock-free: every appender that finds
/// the target sealed may try; one CAS on `active` wins and the losers give
/// their chunk back.
pub(crate) fn rollover<C: Chunks>(c: &C, seen: u64) -> Result<()> {
    // Acquire: pairs with the AcqRel CAS below in another appender.
    if c.active().load(Ordering::Acquire) != seen {
        return Ok(());
    }
    let now = clock::now_ms();
    // Make sure the target being replaced is sealed (it normally is; not if
    // it could not be mapped a moment ago), so it can be reclaimed.
    if id_of(seen) != NO_CHUNK {
        if let Ok(old) = c.chunk(id_of(seen)) {
            old.region().seal(generation_of(seen), now);
        }
    }
    let mut reclaimed_once = false;
    let mut waiting_since: Option<std::time::Instant> = None;
    let (chunk, generation) = loop {
        let ch = match pool_pop(c) {
            Some(id) => match c.chunk(id) {
                Ok(ch) if !ch.region().is_dedicated() => ch,
                // Unmappable or scribbled on: dropped from the pool; the
                // reclamation pass releases FREE chunks left outside it.
                _ => continue,
            },
            // A warm chunk beats a new one (no page faults, no tmpfs
            // growth): reclaim once before creating, if a pass may find
            // one (`Gate`).
            None if !reclaimed_once
                && c.gate()
                    .is_none_or(|(g, last)| g.pass_may_reclaim(last, clock::now_ms())) =>
            {
                reclaimed_once = true;
                reclaim(c);
                continue;
            }
            None => match c.create(c.policy().chunk_size as usize, 0, false) {
                Ok(ch) => ch,
                // Any creation error (the chunk limit, a full tmpfs, a full
                // registry): a pass the gate skipped runs after all, since
                // the gate does not hear of a seal (the target just sealed
                // may be fully acknowledged).
                Err(_) if !reclaimed_once => {
                    reclaimed_once = true;
                    reclaim(c);
                    continue;
                }
                // At the limit while another creation is in flight (this or
                // another process's prefetch), or just landed: it reaches the
                // pool within milliseconds, so wait for it rather than fail
                // (once at least: a creation published a moment ago may be a
                // few instructions from the pool). Bounded: a creator that
                // died leaves its claim until a pass sweeps it.
                Err(BlobError::StoreFull { .. })
                    if (waiting_since.is_none() || c.creation_in_flight() || pool_len(c) > 0)
                        && waiting_since
                            .get_or_insert_with(std::time::Instant::now)
                            .elapsed()
                            < CREATION_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        let (state, generation) = ch.region().state();
        // `activate` fails if a reclaimer retired the chunk meanwhile.
        // A fresh generation for every life as the append target.
        let fresh = next_generation(c);
        if state == STATE_FREE && ch.region().activate(generation, fresh, now) {
            hooks::at(Point::Activated);
            break (ch, fresh);
        }
    };
    let region = chunk.region();
    let word = ((generation as u64) << 32) | chunk.id() as u64;
    let won = c
        .active()
        .compare_exchange(seen, word, Ordering::AcqRel, Ordering::Acquire)
        .is_ok();
    // The new target still being backed in steps: the worker backs it
    // ahead of its appenders from now on (the next chunk is still made at
    // the prefetch threshold).
    if won && region.ready().is_some() {
        c.request_backing();
    }
    if !won {
        // Another appender won: give the chunk back.
        match region.try_deactivate(generation, now) {
            Deactivate::Free => {
                if !pool_push(c, chunk.id()) && region.retire_free(generation) {
                    c.release(&chunk);
                    c.count(Event::Retired);
                }
            }
            // A writer reserved in it through a stale view of `active`:
            // sealed, it is reclaimed like any other chunk.
            Deactivate::InUse => region.seal(generation, now),
            // A reclaimer took it while we stalled: no longer ours.
            Deactivate::Lost => {}
        }
    }
    Ok(())
}

/// How an operation reaches a chunk's memory: through the process's chunk
/// table on every call ([`ByTable`]), or through a chunk the caller keeps
/// from one call to the next ([`Held`], a writer's or reader's context).
pub(crate) trait Reach<C: Chunks> {
    /// Calls `f` on chunk `id`'s region; `key` names the life the caller
    /// expects (the `active` word for an appender): a held chunk is used
    /// again only under the same key. `None` if the chunk cannot be had.
    fn with<R>(&mut self, c: &C, id: u32, key: u64, f: impl FnOnce(&ChunkRegion) -> R)
        -> Option<R>;

    /// After a held chunk refused an operation: fetches chunk `id` from the
    /// table again and, if that is another chunk than the one held (an
    /// earlier file under a reused id was held), holds it and calls `f` on
    /// it. `None` otherwise, and always for [`ByTable`].
    fn again<R>(
        &mut self,
        c: &C,
        id: u32,
        key: u64,
        f: impl FnOnce(&ChunkRegion) -> R,
    ) -> Option<R>;
}

/// Every call looks the chunk up in the table (no state kept).
pub(crate) struct ByTable;

impl<C: Chunks> Reach<C> for ByTable {
    fn with<R>(
        &mut self,
        c: &C,
        id: u32,
        _key: u64,
        f: impl FnOnce(&ChunkRegion) -> R,
    ) -> Option<R> {
        c.with_region(id, f).ok()
    }

    fn again<R>(&mut self, _: &C, _: u32, _: u64, _: impl FnOnce(&ChunkRegion) -> R) -> Option<R> {
        None
    }
}

/// One chunk kept (mapped, or allocated) between calls, under the key it was
/// fetched for: the table lookup — two read-modify-writes of a shared
/// "debt" slot — is paid once per chunk instead of once per call. The held
/// chunk is only a mapping: every protocol check (state, generation, tag)
/// still runs on each call, so holding a chunk that was reclaimed since is
/// harmless; it only keeps that memory mapped until the holder moves on or
/// is dropped.
pub(crate) struct Held<K> {
    key: u64,
    chunk: Option<K>,
}

impl<K> Default for Held<K> {
    fn default() -> Self {
        Self {
            key: 0,
            chunk: None,
        }
    }
}

impl<K> Held<K> {
    /// Drops the held chunk (its mapping goes with the last holder).
    pub(crate) fn clear(&mut self) {
        self.chunk = None;
    }
}

impl<C: Chunks> Reach<C> for Held<C::Chunk> {
    fn with<R>(
        &mut self,
        c: &C,
        id: u32,
        key: u64,
        f: impl FnOnce(&ChunkRegion) -> R,
    ) -> Option<R> {
        let fresh = match &self.chunk {
            Some(k) => self.key != key || k.id() != id,
            None => true,
        };
        if fresh {
            // Drop the old one first: never two chunks held at once.
            self.chunk = None;
            self.chunk = c.chunk(id).ok();
            self.key = key;
        }
        self.chunk.as_ref().map(|k| f(k.region()))
    }

    fn again<R>(
        &mut self,
        c: &C,
        id: u32,
        key: u64,
        f: impl FnOnce(&ChunkRegion) -> R,
    ) -> Option<R> {
        let now = c.chunk(id).ok()?;
        if self.chunk.as_ref().is_some_and(|k| k.same(&now)) {
            return None;
        }
        self.key = key;
        let out = f(now.region());
        self.chunk = Some(now);
        Some(out)
    }
}

/// Appends `data`; blobs too large for a standard chunk get a dedicated one.
pub(crate) fn append<C: Chunks>(c: &C, data: &[u8]) -> Result<Loc> {
    append_via(c, &mut ByTable, data)
}

/// [`append`], reaching the append target through `reach`.
pub(crate) fn append_via<C: Chunks>(c: &C, reach: &mut impl Reach<C>, data: &[u8]) -> Result<Loc> {
    let footprint = footprint_of(data.len())?;
    let policy = c.policy();
    if footprint > policy.chunk_size as usize - CHUNK_HEADER_SIZE {
        return append_dedicated(c, data, footprint);
    }
    let mut tries = Tries::default();
    loop {
        // Acquire: pairs with the AcqRel CAS in `rollover`.
        let active = c.active().load(Ordering::Acquire);
        let id = id_of(active);
        let timestamp = clock::now_ns();
        let now_ms = (timestamp / 1_000_000).max(1);
        let attempt = if id == NO_CHUNK {
            Attempt::Roll
        } else {
            reach
                .with(c, id, active, |region| {
                    match reserve_in(region, active, footprint, now_ms) {
                        Reserve::Reserved {
                            offset,
                            end,
                            generation,
                        } => {
                            let loc = Loc {
                                id,
                                generation,
                                offset,
                                size: data.len() as u32,
                                timestamp,
                            };
                            hooks::at(Point::Reserved);
                            // SAFETY: `offset` was reserved just now for `data.len()` bytes.
                            unsafe {
                                region.commit(offset, generation, data, policy.tag(&loc), now_ms)
                            };
                            hooks::at(Point::Committed);
                            // A writer stalled past the TTL may find its chunk
                            // reclaimed under it: its entry is then unreachable.
                            let live = region.state() == (STATE_IN_USE, generation);
                            Attempt::Done((loc, end, live))
                        }
                        Reserve::NotReady => Attempt::NotReady,
                        Reserve::Sealed => Attempt::Roll,
                    }
                })
                .unwrap_or(Attempt::Roll)
        };
        match attempt {
            Attempt::Done((loc, end, live)) => {
                prefetch_if_crossed(c, loc.offset, end);
                if live {
                    return Ok(loc);
                }
                // Write it again rather than return a dead handle.
            }
            blocked => unblock(c, active, blocked, &mut tries)?,
        }
    }
}

/// What one try at the append target came to.
enum Attempt<T> {
    /// Reserved (and written).
    Done(T),
    /// The entry fits only past the part of the target backed by memory.
    NotReady,
    /// The target is full, sealed, or not there: roll over.
    Roll,
}

/// Gets an appender past a try that did not reserve: prepares the next
/// step of the target (see [`ChunkRegion::ready`]), or rolls over to a new
/// target (bounded: only another process corrupting the shared words keeps
/// an appender rolling over).
fn unblock<C: Chunks, T>(c: &C, active: u64, attempt: Attempt<T>, tries: &mut Tries) -> Result<()> {
    if let Attempt::NotReady = attempt {
        // A step of backing is progress, not a failed try; counted apart,
        // against the most steps two chunks of the largest size can have
        // (only another process corrupting `ready` reaches it).
        tries.steps += 1;
        if tries.steps > MAX_STEPS {
            return Err(BlobError::Corrupt {
                file: "(chunk header)".into(),
                detail: "the append chunk's backing never advances".into(),
            });
        }
        match c.prepare(id_of(active)) {
            // The appender caught up with the worker's window: wake the
            // worker to move it on.
            Ok(()) => {
                c.request_backing();
                return Ok(());
            }
            // No memory for the next step (tmpfs full): the chunk ends at
            // its mark; sealed, everyone moves on, and the creation of the
            // next chunk reports the error.
            Err(_) => {
                if let Ok(ch) = c.chunk(id_of(active)) {
                    ch.region().seal(generation_of(active), clock::now_ms());
                }
            }
        }
    }
    tries.rollovers += 1;
    if tries.rollovers > MAX_ROLLOVERS {
        return Err(BlobError::Corrupt {
            file: "(control block)".into(),
            detail: "no usable append chunk after 10000 attempts".into(),
        });
    }
    rollover(c, active)
}

/// What an appender tried since it last stored something.
#[derive(Default)]
struct Tries {
    rollovers: u32,
    steps: u32,
}

/// Steps of backing one append may wait for (see [`unblock`]).
const MAX_STEPS: u32 = (2 * (MAX_CHUNK_SIZE / PREPARE_STEP) + 2) as u32;

/// Appends every blob of `blobs`, in order, pushing each one's location to
/// `out` as soon as it is stored. Consecutive blobs that fit in the append
/// target together are reserved with one CAS (one read-modify-write for
/// the run instead of one per blob) and stamped with one clock reading. On
/// an error, `out` holds the blobs appended before it.
pub(crate) fn append_all_via<C: Chunks>(
    c: &C,
    reach: &mut impl Reach<C>,
    blobs: &[&[u8]],
    out: &mut Vec<Loc>,
) -> Result<()> {
    let policy = *c.policy();
    let room = policy.chunk_size as usize - CHUNK_HEADER_SIZE;
    let mut rest = blobs;
    let mut tries = Tries::default();
    while let Some(first) = rest.first() {
        let footprint = footprint_of(first.len())?;
        if footprint > room {
            out.push(append_dedicated(c, first, footprint)?);
            rest = &rest[1..];
            continue;
        }
        // Acquire: pairs with the AcqRel CAS in `rollover`.
        let active = c.active().load(Ordering::Acquire);
        let id = id_of(active);
        let timestamp = clock::now_ns();
        let now_ms = (timestamp / 1_000_000).max(1);
        // The blobs of the run: the leading ones that are neither empty nor
        // oversized, whose footprints fit in the room left.
        let fit = |left: usize| {
            let mut take = 0;
            for b in rest {
                match entry_footprint(b.len()) {
                    Some(f) if !b.is_empty() && f <= room && take + f <= left => take += f,
                    _ => break,
                }
            }
            take
        };
        let attempt = if id == NO_CHUNK {
            Attempt::Roll
        } else {
            reach
                .with(c, id, active, |region| {
                    if region.state() != (STATE_IN_USE, generation_of(active)) {
                        return Attempt::Roll;
                    }
                    let (offset, end, generation) = match region.reserve_run(fit, now_ms) {
                        Reserve::Reserved {
                            offset,
                            end,
                            generation,
                        } => (offset, end, generation),
                        Reserve::NotReady => return Attempt::NotReady,
                        Reserve::Sealed => return Attempt::Roll,
                    };
                    hooks::at(Point::Reserved);
                    let start = out.len();
                    let mut at = offset;
                    let mut n = 0;
                    while at < end {
                        let Some(&data) = rest.get(n) else { break };
                        let loc = Loc {
                            id,
                            generation,
                            offset: at,
                            size: data.len() as u32,
                            timestamp,
                        };
                        // SAFETY: [offset, end) was reserved just now for the
                        // footprints of these blobs, in order: `at` is where
                        // this one's starts.
                        unsafe { region.commit(at, generation, data, policy.tag(&loc), now_ms) };
                        out.push(loc);
                        n += 1;
                        // `fit` took whole footprints that are in range.
                        let Some(f) = entry_footprint(data.len()) else {
                            break;
                        };
                        at += f as u32;
                    }
                    hooks::at(Point::Committed);
                    // As in `append_via`: a writer stalled past the TTL may
                    // find its chunk reclaimed under it; write the run again.
                    let live = region.state() == (STATE_IN_USE, generation);
                    if !live {
                        out.truncate(start);
                    }
                    Attempt::Done((offset, end, n, live))
                })
                .unwrap_or(Attempt::Roll)
        };
        match attempt {
            Attempt::Done((offset, end, n, live)) => {
                prefetch_if_crossed(c, offset, end);
                if live {
                    rest = &rest[n..];
                    // Progress: the limits are on tries without any.
                    tries = Tries::default();
                }
            }
            blocked => unblock(c, active, blocked, &mut tries)?,
        }
    }
    Ok(())
}

/// Reserves `footprint` bytes in `region`, only in the life of the chunk
/// that `active` names (heap page ids are reused; a stale `active` must not
/// lead here). `None` if the region is not that life.
fn reserve_in(region: &ChunkRegion, active: u64, footprint: usize, now_ms: u64) -> Reserve {
    if region.state() == (STATE_IN_USE, generation_of(active)) {
        region.reserve(footprint as u32, now_ms)
    } else {
        Reserve::Sealed
    }
}

/// Asks for the next chunk to be prepared when a reservation crossed the
/// prefetch threshold and the pool is empty (once per chunk).
fn prefetch_if_crossed<C: Chunks>(c: &C, offset: u32, end: u32) {
    let at = c.policy().prefetch_at;
    if offset < at && end >= at && pool_len(c) == 0 {
        c.request_prefetch();
    }
}

/// A blob too large for a standard chunk gets a chunk of its own size,
/// sealed at once and retired (never pooled) when reclaimed.
fn append_dedicated<C: Chunks>(c: &C, data: &[u8], footprint: usize) -> Result<Loc> {
    for _ in 0..3 {
        let r = reserve_dedicated(c, data.len(), footprint)?;
        // SAFETY: `r.loc.offset` was reserved just now for `data.len()` bytes.
        unsafe { r.chunk.region().write_payload(r.loc.offset, data) };
        // As for a standard chunk: a copy that outlived the TTL may find
        // its chunk reclaimed under it; write it again rather than return
        // a dead handle.
        match commit_reserved(c, &r) {
            Err(BlobError::Expired { .. }) => continue,
            done => return done,
        }
    }
    Err(BlobError::Expired { size: data.len() })
}

/// A fresh dedicated chunk of its own size with the one entry reserved.
fn reserve_dedicated<C: Chunks>(c: &C, len: usize, footprint: usize) -> Result<Reserved<C::Chunk>> {
    let chunk = match c.create(CHUNK_HEADER_SIZE + footprint, FLAG_DEDICATED, false) {
        // At the chunk limit with warm chunks idle in the pool: they cannot
        // take an oversized blob, and would hold the limit until their idle
        // time runs out. Give them back and try once more.
        Err(BlobError::StoreFull { .. }) if pool_len(c) > 0 => {
            shrink_pool_after(c, clock::now_ms(), 0);
            c.create(CHUNK_HEADER_SIZE + footprint, FLAG_DEDICATED, false)?
        }
        done => done?,
    };
    let region = chunk.region();
    let (_, generation) = region.state();
    let timestamp = clock::now_ns();
    let now_ms = (timestamp / 1_000_000).max(1);
    // A fresh chunk is ours alone: activation fails only if scribbled on.
    let reserved = if region.activate(generation, generation, now_ms) {
        region.reserve(footprint as u32, now_ms)
    } else {
        Reserve::Sealed
    };
    let Reserve::Reserved { offset, .. } = reserved else {
        region.seal(generation, now_ms);
        return Err(BlobError::Corrupt {
            file: format!("(chunk {})", chunk.id()).into(),
            detail: "a fresh dedicated chunk refused its reservation".into(),
        });
    };
    let loc = Loc {
        id: chunk.id(),
        generation,
        offset,
        size: len as u32,
        timestamp,
    };
    let ptr = region.payload_mut(offset);
    Ok(Reserved {
        chunk,
        loc,
        ptr,
        dedicated: true,
    })
}

/// The footprint of a blob of `len` bytes, or why it cannot be stored.
fn footprint_of(len: usize) -> Result<usize> {
    if len == 0 {
        return Err(BlobError::EmptyBlob);
    }
    match entry_footprint(len) {
        Some(f) if len <= Policy::MAX_BLOB => Ok(f),
        _ => Err(BlobError::BlobTooLarge {
            size: len,
            max: Policy::MAX_BLOB,
        }),
    }
}

/// An entry reserved for a writer that fills it in place (a loan): the
/// chunk (kept mapped or allocated while held), where the entry is, and
/// the start of its payload.
pub(crate) struct Reserved<K> {
    pub chunk: K,
    pub loc: Loc,
    pub ptr: *mut u8,
    dedicated: bool,
}

/// Reserves an entry of `len` bytes for a writer that fills it in place;
/// [`commit_reserved`] publishes it. An entry never committed (its writer
/// died) holds its chunk until the TTL reclaims it, as any in-flight write.
pub(crate) fn reserve<C: Chunks>(c: &C, len: usize) -> Result<Reserved<C::Chunk>> {
    let footprint = footprint_of(len)?;
    let policy = *c.policy();
    if footprint > policy.chunk_size as usize - CHUNK_HEADER_SIZE {
        return reserve_dedicated(c, len, footprint);
    }
    let timestamp = clock::now_ns();
    let now_ms = (timestamp / 1_000_000).max(1);
    let mut tries = Tries::default();
    loop {
        // Acquire: pairs with the AcqRel CAS in `rollover`.
        let active = c.active().load(Ordering::Acquire);
        let id = id_of(active);
        let chunk = if id == NO_CHUNK {
            None
        } else {
            c.chunk(id).ok()
        };
        let mut attempt = Attempt::Roll;
        if let Some(chunk) = chunk {
            let region = chunk.region();
            match reserve_in(region, active, footprint, now_ms) {
                Reserve::Reserved {
                    offset,
                    end,
                    generation,
                } => {
                    prefetch_if_crossed(c, offset, end);
                    let loc = Loc {
                        id,
                        generation,
                        offset,
                        size: len as u32,
                        timestamp,
                    };
                    let ptr = region.payload_mut(offset);
                    return Ok(Reserved {
                        chunk,
                        loc,
                        ptr,
                        dedicated: false,
                    });
                }
                Reserve::NotReady => attempt = Attempt::<()>::NotReady,
                Reserve::Sealed => {}
            }
        }
        unblock(c, active, attempt, &mut tries)?;
    }
}

/// Publishes a reserved entry whose payload the writer has filled. Fails
/// with [`BlobError::Expired`] if the chunk was reclaimed under the writer
/// (it held the reservation past the TTL): the entry is then unreachable.
pub(crate) fn commit_reserved<C: Chunks>(c: &C, r: &Reserved<C::Chunk>) -> Result<Loc> {
    let region = r.chunk.region();
    let now_ms = clock::now_ms().max(1);
    let tag = c.policy().tag(&r.loc);
    // SAFETY: `r` is a reservation of this region in its generation, for
    // `size` bytes, not yet committed (Reserved is consumed once by callers).
    unsafe { region.commit_written(r.loc.offset, r.loc.generation, r.loc.size, tag, now_ms) };
    if r.dedicated {
        region.seal(r.loc.generation, now_ms);
    }
    if region.state() == (STATE_IN_USE, r.loc.generation) {
        Ok(r.loc)
    } else {
        Err(BlobError::Expired {
            size: r.loc.size as usize,
        })
    }
}

/// Runs `f` on the bytes at `loc` while they are pinned; `None` if `loc`
/// is stale, reclaimed, forged or out of bounds.
pub(crate) fn with_bytes<C: Chunks, R>(c: &C, loc: &Loc, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    let tag = c.policy().tag(loc);
    c.with_region(loc.id, |region| {
        let _pin = region.pin();
        let at = region.locate(loc.generation, loc.offset, loc.size, tag)?;
        // SAFETY: `locate` checked [at, at + size) lies inside the region and
        // holds a committed entry; the pin keeps the chunk from being
        // recycled (rewritten) while the slice lives, and nobody writes
        // committed bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts(region.payload_ptr(at), loc.size as usize) };
        Some(f(bytes))
    })
    .ok()
    .flatten()
}

/// Pins the bytes at `loc` beyond this call: returns the chunk (which keeps
/// the memory alive), a pointer to the payload and its length. The caller
/// must call `unpin_raw` on the chunk's region exactly once when done.
pub(crate) fn pin_bytes<C: Chunks>(c: &C, loc: &Loc) -> Option<(C::Chunk, *const u8, usize)> {
    let chunk = c.chunk(loc.id).ok()?;
    let region = chunk.region();
    let pin = region.pin();
    let at = region.locate(loc.generation, loc.offset, loc.size, c.policy().tag(loc))?;
    let ptr = region.payload_ptr(at);
    std::mem::forget(pin);
    Some((chunk, ptr, loc.size as usize))
}

/// Why the handle `loc` does not resolve (the slow path after a resolve
/// returned nothing), as read at this moment.
pub(crate) fn why_unresolved<C: Chunks>(c: &C, loc: &Loc) -> BlobError {
    if let Some(closed) = c.closed() {
        return closed;
    }
    let ttl_ns = c.policy().ttl_ms.saturating_mul(1_000_000);
    let stale = || BlobError::Reclaimed {
        chunk: loc.id,
        generation: loc.generation,
        older_than_ttl: clock::now_ns().saturating_sub(loc.timestamp) > ttl_ns,
    };
    if !c.is_listed(loc.id) {
        return stale();
    }
    let chunk = match c.chunk(loc.id) {
        Ok(chunk) => chunk,
        // Released between the two looks.
        Err(_) if !c.is_listed(loc.id) => return stale(),
        Err(e) => return e,
    };
    let tag = c.policy().tag(loc);
    match chunk
        .region()
        .why_unlocated(loc.generation, loc.offset, loc.size, tag)
    {
        Err(Unlocated::Invalid(reason)) => BlobError::InvalidHandle { reason },
        // Stale, or it resolves now: it was reclaimed, or (a blob's entry
        // never goes back to unwritten) the first look met a chunk
        // changing life.
        Err(Unlocated::Stale) | Ok(()) => stale(),
    }
}

/// Acknowledges the entry at `loc`: `true` the first time only.
pub(crate) fn acknowledge<C: Chunks>(c: &C, loc: &Loc) -> bool {
    acknowledge_via(c, &mut ByTable, loc)
}

/// [`acknowledge`], reaching the chunk through `reach`. A held chunk that
/// refuses the handle may be an earlier file under the same id (released
/// since, the id reused): the table is asked once more then, so a held
/// chunk never turns a valid acknowledgement down.
pub(crate) fn acknowledge_via<C: Chunks>(c: &C, reach: &mut impl Reach<C>, loc: &Loc) -> bool {
    let tag = c.policy().tag(loc);
    let ack = |region: &ChunkRegion| region.acknowledge(loc.generation, loc.offset, loc.size, tag);
    let key = loc.id as u64;
    let counted = reach.with(c, loc.id, key, ack) == Some(true)
        || reach.again(c, loc.id, key, ack) == Some(true);
    if counted {
        note_acknowledged(c);
    }
    counted
}

/// Acknowledges every entry of `locs` (each as [`acknowledge`] would) and
/// returns how many counted. Consecutive entries of one chunk share one pin
/// and one decay stamp, so each costs one read-modify-write (its CAS)
/// instead of four.
pub(crate) fn acknowledge_all_via<C: Chunks>(
    c: &C,
    reach: &mut impl Reach<C>,
    locs: impl IntoIterator<Item = Loc>,
) -> usize {
    /// Entries acknowledged under one pin at most (a failure mask's bits).
    const RUN: usize = 64;
    let policy = *c.policy();
    let mut locs = locs.into_iter().peekable();
    let mut run = [None::<Loc>; RUN];
    let mut counted = 0;
    while let Some(first) = locs.next() {
        // A run: up to RUN consecutive entries of one chunk.
        run[0] = Some(first);
        let mut n = 1;
        while n < RUN {
            match locs.next_if(|l| l.id == first.id) {
                Some(l) => {
                    run[n] = Some(l);
                    n += 1;
                }
                None => break,
            }
        }
        let failed = reach
            .with(c, first.id, first.id as u64, |region| {
                let pin = region.pin();
                let mut failed = 0u64;
                for (i, loc) in run[..n].iter().flatten().enumerate() {
                    let tag = policy.tag(loc);
                    if !pin.acknowledge(loc.generation, loc.offset, loc.size, tag) {
                        failed |= 1 << i;
                    }
                }
                if failed != u64::MAX >> (64 - n) {
                    pin.stamp_acknowledged();
                }
                failed
            })
            .unwrap_or(u64::MAX >> (64 - n));
        counted += n - failed.count_ones() as usize;
        if failed.count_ones() as usize != n {
            note_acknowledged(c);
        }
        // The refused ones one by one: a held chunk may be an earlier file
        // under the same id (see `acknowledge_via`); repeats and stale
        // handles are refused again.
        for (i, loc) in run[..n].iter().flatten().enumerate() {
            if failed & (1 << i) != 0 && acknowledge_via(c, reach, loc) {
                counted += 1;
            }
        }
    }
    counted
}

/// One reclamation pass over every chunk; returns how many were reclaimed.
pub(crate) fn reclaim<C: Chunks>(c: &C) -> usize {
    let policy = c.policy();
    reclaim_with(
        c,
        Rules {
            ttl_ms: policy.ttl_ms,
            decay_ms: policy.decay_ms,
            pool: true,
        },
    )
}

/// The rules of one reclamation pass: the store's own ([`reclaim`]), or a
/// caller's explicit ones (the original crate's `cleanup_chunks(ttl,
/// decay)`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// Chunks sealed longer ago than this are reclaimed, acknowledged or not.
    pub ttl_ms: u64,
    /// Fully acknowledged chunks are reclaimed this long after their last
    /// acknowledgement (at once while the warm pool has room, if `pool`).
    pub decay_ms: u64,
    /// Whether reclaimed chunks may be recycled into the warm pool; if not,
    /// every reclaimed chunk is retired (its file removed).
    pub pool: bool,
}

/// One reclamation pass by `rules`; returns the chunks reclaimed.
///
/// The crash-recovery steps (finishing dead claimers' and creators' work,
/// sealing an abandoned append target) keep the store's own periods
/// whatever the rules: they judge whether a process died, not whether
/// data may go.
pub(crate) fn reclaim_with<C: Chunks>(c: &C, rules: Rules) -> usize {
    let policy = *c.policy();
    let now = clock::now_ms();
    let idle = policy.decay_ms.max(POOL_IDLE_MIN_MS);
    c.sweep_creations(claim_grace(&policy));
    let mut ids = Vec::new();
    c.ids(&mut ids);
    // Acquire: pairs with the AcqRel CAS in `rollover`.
    let active = c.active().load(Ordering::Acquire);
    let mut reclaimed = 0;
    // For the rollover's `Gate`: when a chunk kept now may expire, and
    // whether one was kept for its decay.
    let own_rules =
        rules.pool && rules.ttl_ms == policy.ttl_ms && rules.decay_ms == policy.decay_ms;
    let mut next_ms = now.saturating_add(policy.ttl_ms.min(POOL_IDLE_MIN_MS));
    let mut decaying = false;
    for id in ids {
        let Ok(chunk) = c.chunk(id) else {
            c.forget_missing(id);
            continue;
        };
        let region = chunk.region();
        let (state, generation) = region.state();
        if state == STATE_RETIRED {
            c.finish_release(&chunk);
            continue;
        }
        // A claim older than the grace period: its claimer died between
        // the claim and the recycling or retirement. Finish it (retire).
        if state == STATE_RECLAIMING
            && region.claim_expired(generation, now, claim_grace(&policy))
            && region.retire_claimed(generation)
        {
            c.finish_release(&chunk);
            c.count(Event::Retired);
            continue;
        }
        if id != id_of(active) && !is_pooled(c, id) {
            let h = region.header();
            if state == STATE_IN_USE
                && !alloc_sealed(h.alloc.load(Ordering::Relaxed))
                && now.saturating_sub(h.activated_ms.load(Ordering::Relaxed)) >= idle
            {
                // An append target nobody points at (its activator died
                // before publishing it): seal it so it can be reclaimed.
                region.seal(generation, now);
            } else if state == STATE_FREE
                && now.saturating_sub(region.free_since()) >= idle
                && region.retire_free(generation)
            {
                // A FREE chunk that fell out of the pool.
                c.release(&chunk);
                c.count(Event::Retired);
                continue;
            }
        }
        let decay = if rules.pool {
            reuse_decay(c, &policy, rules.decay_ms)
        } else {
            rules.decay_ms
        };
        let verdict = region.assess(now, rules.ttl_ms, decay);
        let Verdict::Reclaim {
            generation,
            expired,
        } = verdict
        else {
            if verdict == Verdict::Decaying {
                decaying = true;
            } else if state == STATE_IN_USE {
                let h = region.header();
                let sealed = h.sealed_ms.load(Ordering::Relaxed);
                let from = if sealed == SEALED_ACTIVATING {
                    h.activated_ms.load(Ordering::Relaxed)
                } else {
                    sealed
                };
                if from != 0 {
                    next_ms = next_ms.min(from.saturating_add(rules.ttl_ms));
                }
            }
            continue;
        };
        if !region.claim(generation) {
            continue;
        }
        hooks::at(Point::Claimed);
        reclaimed += 1;
        if expired {
            c.count(Event::Expired);
        }
        if rules.pool && region.recyclable() && pool_len(c) < policy.pool_capacity {
            let fresh = next_generation(c);
            if !region.recycle(generation, fresh, now) {
                // Presumed dead by a pass while we stalled: retired by it.
                continue;
            }
            if pool_push(c, id) {
                c.count(Event::Recycled);
            } else if region.retire_free(fresh) {
                c.release(&chunk);
                c.count(Event::Retired);
            }
        } else {
            retire(c, &chunk);
        }
    }
    shrink_pool(c, now);
    if own_rules {
        if let Some((gate, _)) = c.gate() {
            gate.record(now, next_ms, decaying);
        }
    }
    reclaimed
}

/// The grace period a fully acknowledged chunk waits before reclamation:
/// none while the warm pool has room (it is recycled in place at once, so
/// a stream reuses its memory instead of growing), the decay otherwise (it
/// governs when memory goes back to the system: unlinking, and the pool's
/// own idle release in `shrink_pool`).
fn reuse_decay<C: Chunks>(c: &C, policy: &Policy, decay_ms: u64) -> u64 {
    if pool_len(c) < policy.pool_capacity {
        0
    } else {
        decay_ms
    }
}

/// How long a claim (or a chunk creation's step) may stay unfinished before
/// a pass presumes its maker dead: the TTL (a live claimer finishes in
/// microseconds, a creator's longest step — sizing or faulting one chunk —
/// in milliseconds), at least 1 s.
fn claim_grace(policy: &Policy) -> u64 {
    policy.ttl_ms.max(1_000)
}

/// Id of the append target (`NO_CHUNK` before the first append).
pub(crate) fn target_id<C: Chunks>(c: &C) -> u32 {
    // Acquire: pairs with the AcqRel CAS in `rollover`.
    id_of(c.active().load(Ordering::Acquire))
}

/// One line per chunk (id, generation, state, bytes used, acknowledgements,
/// pins), for the original crate's `debug_chunks`.
pub(crate) fn describe<C: Chunks>(c: &C) -> Vec<String> {
    let active = target_id(c);
    let mut ids = Vec::new();
    c.ids(&mut ids);
    ids.sort_unstable();
    let mut out = vec![format!(
        "write_head={}, chunks={}",
        if active == NO_CHUNK {
            "none".to_owned()
        } else {
            active.to_string()
        },
        ids.len()
    )];
    for id in ids {
        let line = c.with_region(id, |r| {
            let (state, generation) = r.state();
            let h = r.header();
            let used = alloc_used(h.alloc.load(Ordering::Relaxed));
            let (_, acked) = r.count_entries(generation);
            let state = match state {
                STATE_FREE => "free",
                STATE_IN_USE => "in use",
                STATE_RECLAIMING => "reclaiming",
                _ => "retired",
            };
            format!(
                "chunk[{id}]: gen={generation} {state} used={used}/{} acked={} pins={}{}{}",
                r.len(),
                acked,
                h.pins.load(Ordering::Relaxed),
                if is_pooled(c, id) { " pooled" } else { "" },
                if id == active { " <-- ACTIVE" } else { "" },
            )
        });
        out.push(line.unwrap_or_else(|e| format!("chunk[{id}]: unreadable ({e})")));
    }
    out
}

/// What holds the chunks of a store, for an error that says so.
pub(crate) fn census<C: Chunks>(c: &C) -> String {
    let policy = *c.policy();
    let now = clock::now_ms();
    let active = id_of(c.active().load(Ordering::Acquire));
    let mut ids = Vec::new();
    c.ids(&mut ids);
    let (mut unacked, mut pinned, mut acked, mut target, mut warm, mut other) =
        (0u32, 0u32, 0u32, 0u32, 0u32, 0u32);
    let mut oldest_seal: Option<u64> = None;
    for id in ids {
        let Ok(chunk) = c.chunk(id) else {
            other += 1;
            continue;
        };
        let region = chunk.region();
        let (state, generation) = region.state();
        let h = region.header();
        if id == active {
            target += 1;
        } else if state == STATE_FREE || is_pooled(c, id) {
            warm += 1;
        } else if state != STATE_IN_USE {
            other += 1;
        } else if h.pins.load(Ordering::Relaxed) != 0 {
            pinned += 1;
        } else if region.walk(generation) && region.all_acknowledged(generation) {
            acked += 1;
        } else {
            unacked += 1;
            let sealed = h.sealed_ms.load(Ordering::Relaxed);
            if sealed != 0 && sealed != crate::chunk::SEALED_ACTIVATING {
                oldest_seal = Some(oldest_seal.map_or(sealed, |o: u64| o.min(sealed)));
            }
        }
    }
    let mut parts = Vec::new();
    if unacked > 0 {
        let ttl = match oldest_seal {
            Some(s) => format!(
                "; the TTL ({} ms) frees the oldest in {} ms if its consumer died",
                policy.ttl_ms,
                (s + policy.ttl_ms).saturating_sub(now)
            ),
            None => String::new(),
        };
        parts.push(format!("{unacked} hold unacknowledged entries{ttl}"));
    }
    if pinned > 0 {
        parts.push(format!("{pinned} pinned by views"));
    }
    if acked > 0 {
        parts.push(format!(
            "{acked} fully acknowledged, waiting for a reclamation pass"
        ));
    }
    if target > 0 {
        parts.push("1 is the append target".to_owned());
    }
    if warm > 0 {
        parts.push(format!("{warm} warm in the pool"));
    }
    if other > 0 {
        parts.push(format!("{other} being reclaimed or unreadable"));
    }
    if parts.is_empty() {
        "no chunk found".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Whether some chunk could be reclaimed now.
fn any_reclaimable<C: Chunks>(c: &C) -> bool {
    let policy = *c.policy();
    let now = clock::now_ms();
    let mut ids = Vec::new();
    c.ids(&mut ids);
    ids.into_iter().any(|id| {
        c.with_region(id, |r| {
            matches!(
                r.assess(now, policy.ttl_ms, reuse_decay(c, &policy, policy.decay_ms)),
                Verdict::Reclaim { .. }
            )
        })
        .unwrap_or(false)
    })
}

fn is_pooled<C: Chunks>(c: &C, id: u32) -> bool {
    c.pool().iter().any(|s| s.load(Ordering::Relaxed) == id + 1)
}

/// Scale-down: a pooled chunk idle for longer than the decay period (and at
/// least [`POOL_IDLE_MIN_MS`], so a zero decay does not defeat the pool) is
/// released, so an idle store gives its memory back.
fn shrink_pool<C: Chunks>(c: &C, now: u64) {
    shrink_pool_after(c, now, c.policy().decay_ms.max(POOL_IDLE_MIN_MS));
}

/// Retires the pooled chunks that have been free for `idle` ms.
fn shrink_pool_after<C: Chunks>(c: &C, now: u64, idle: u64) {
    for s in c.pool() {
        let v = s.load(Ordering::Acquire);
        if v == 0 {
            continue;
        }
        let Ok(chunk) = c.chunk(v - 1) else { continue };
        let region = chunk.region();
        let (state, generation) = region.state();
        if state == STATE_FREE
            && now.saturating_sub(region.free_since()) >= idle
            && s.compare_exchange(v, 0, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            && region.retire_free(generation)
        {
            c.release(&chunk);
            c.count(Event::Retired);
        }
        // If `retire_free` lost, someone popped and activated it first.
    }
}

/// Prepares a chunk off the append path and parks it in the pool.
pub(crate) fn prefetch<C: Chunks>(c: &C) {
    // The append target first: its appenders are the nearest to a step.
    prepare_ahead(c, id_of(c.active().load(Ordering::Acquire)));
    // Recycling what consumers released beats creating: if a chunk is
    // ready to be reclaimed, the rollover will recycle it (reclamation
    // itself stays with the rollover and the lifecycle passes).
    if pool_len(c) == 0 && !any_reclaimable(c) {
        // Errors (limit reached, no space) are reported by the append that
        // needs the chunk, not here.
        if let Ok(chunk) = c.create(c.policy().chunk_size as usize, 0, true) {
            let (_, generation) = chunk.region().state();
            if !pool_push(c, chunk.id()) && chunk.region().retire_free(generation) {
                c.release(&chunk);
                c.count(Event::Retired);
            }
        }
    }
    back_pool(c);
}

/// Backs the append target and the warm chunks next in line (each
/// published to the pool after its first step) a window ahead of their
/// appenders; makes no chunk.
pub(crate) fn backing<C: Chunks>(c: &C) {
    prepare_ahead(c, id_of(c.active().load(Ordering::Acquire)));
    back_pool(c);
}

/// Backs the pooled chunks a window ahead (see [`backing`]).
fn back_pool<C: Chunks>(c: &C) {
    for slot in c.pool() {
        // Acquire: pairs with the Release CAS in `pool_push`.
        let v = slot.load(Ordering::Acquire);
        if v != 0 {
            prepare_ahead(c, v - 1);
        }
    }
}

/// How far ahead of its appenders the worker backs a chunk with memory. A
/// window, not the whole chunk: backing maps the pages into this process
/// (its resident size grows with them), and a chunk may be gigabytes that
/// its appenders fill slowly or never; an appender that reaches the end of
/// the window backs the next step itself and wakes the worker to move the
/// window on.
pub(crate) const PREPARE_AHEAD: usize = 16 * PREPARE_STEP;

/// Backs chunk `id` with memory step by step (each step is also taken by
/// an appender that reaches it first) up to [`PREPARE_AHEAD`] beyond what
/// its appenders reserved; stops at the first error, which the appender
/// that needs the step reports.
fn prepare_ahead<C: Chunks>(c: &C, id: u32) {
    if id == NO_CHUNK {
        return;
    }
    let Ok(chunk) = c.chunk(id) else { return };
    let region = chunk.region();
    while let Some((ready, _)) = region.ready() {
        // Relaxed: a hint of how far the appenders got; the steps
        // themselves are published by the CAS in `mark_ready`.
        let used = alloc_used(region.header().alloc.load(Ordering::Relaxed)) as usize;
        if ready >= used.saturating_add(PREPARE_AHEAD)
            || c.prepare(id).is_err()
            || c.closed().is_some()
        {
            return;
        }
    }
}

/// The engine's protocol (rollover, activation, the warm pool, claim,
/// recycle, retire) under loom, over the smallest backend it can run: a
/// few chunk regions in leaked memory, created on demand.
#[cfg(all(loom, test))]
mod loom_tests {
    use super::*;
    use std::ptr::NonNull;

    /// Room for four 8-byte entries.
    const CHUNK: usize = CHUNK_HEADER_SIZE + 96;
    const KEY: u64 = 7;

    #[derive(Clone)]
    struct Chunk(u32, &'static ChunkRegion);

    impl ChunkRef for Chunk {
        fn region(&self) -> &ChunkRegion {
            self.1
        }
        fn id(&self) -> u32 {
            self.0
        }
        fn same(&self, other: &Self) -> bool {
            std::ptr::eq(self.1, other.1)
        }
    }

    struct Model {
        policy: Policy,
        active: AtomicU64,
        pool: Vec<AtomicU32>,
        generation: AtomicU32,
        regions: Vec<&'static ChunkRegion>,
        /// Chunks handed out by `create` so far.
        made: AtomicU32,
        /// 1 once chunk `id` is formatted (as a shared registry publishes
        /// an id only after its chunk file is formatted).
        published: Vec<AtomicU32>,
        /// Releases of each chunk (must end at most 1).
        released: Vec<AtomicU32>,
    }

    impl Model {
        fn new(chunks: usize) -> Self {
            let regions = (0..chunks)
                .map(|_| {
                    let words: &'static mut [u64] =
                        Box::leak(vec![0u64; CHUNK / 8].into_boxed_slice());
                    let base = NonNull::new(words.as_mut_ptr() as *mut u8).unwrap();
                    // SAFETY: leaked, so valid and 8-aligned for the whole model.
                    let r: &'static ChunkRegion =
                        Box::leak(Box::new(unsafe { ChunkRegion::new(base, CHUNK) }));
                    r
                })
                .collect();
            Self {
                policy: Policy::new(KEY, CHUNK as u32, 1.0, 60_000, 0, 2),
                active: AtomicU64::new(NO_CHUNK as u64),
                pool: (0..2).map(|_| AtomicU32::new(0)).collect(),
                generation: AtomicU32::new(0),
                regions,
                made: AtomicU32::new(0),
                published: (0..chunks).map(|_| AtomicU32::new(0)).collect(),
                released: (0..chunks).map(|_| AtomicU32::new(0)).collect(),
            }
        }

        fn listed(&self, id: u32) -> bool {
            id < self.made.load(Ordering::SeqCst)
                // Acquire: pairs with the Release store in `create`.
                && self.published[id as usize].load(Ordering::Acquire) == 1
                && self.released[id as usize].load(Ordering::SeqCst) == 0
        }

        fn describe(&self) -> String {
            let active = self.active.load(Ordering::SeqCst);
            let pool: Vec<u32> = self.pool.iter().map(|p| p.load(Ordering::SeqCst)).collect();
            let chunks: Vec<String> = (0..self.made.load(Ordering::SeqCst))
                .map(|id| {
                    let r = self.regions[id as usize];
                    format!(
                        "{id}: {:?} alloc {:#x} released {}",
                        r.state(),
                        r.header().alloc.load(Ordering::SeqCst),
                        self.released[id as usize].load(Ordering::SeqCst)
                    )
                })
                .collect();
            format!("active {active:#x} pool {pool:?} chunks {chunks:?}")
        }

        /// Every chunk is in exactly one place: the append target, the
        /// pool, released, or sealed and waiting for reclamation.
        fn check_places(&self) {
            let active = id_of(self.active.load(Ordering::SeqCst));
            for id in 0..self.made.load(Ordering::SeqCst) {
                let r = self.regions[id as usize];
                let (state, _) = r.state();
                let pooled = is_pooled(self, id);
                let released = self.released[id as usize].load(Ordering::SeqCst);
                assert!(released <= 1, "chunk {id} released {released} times");
                assert!(!(pooled && id == active), "chunk {id} active and pooled");
                if released == 1 {
                    assert_eq!(state, STATE_RETIRED, "released chunk {id}");
                    assert!(!pooled && id != active, "released chunk {id} still in use");
                } else if pooled {
                    assert_eq!(state, STATE_FREE, "pooled chunk {id}");
                } else if id == active {
                    assert_eq!(state, STATE_IN_USE, "active chunk {id}");
                } else {
                    assert_eq!(state, STATE_IN_USE, "chunk {id} lost");
                    assert!(
                        alloc_sealed(r.header().alloc.load(Ordering::SeqCst)),
                        "chunk {id}: neither target, pooled nor sealed"
                    );
                }
            }
        }
    }

    impl Chunks for Model {
        type Chunk = Chunk;
        fn policy(&self) -> &Policy {
            &self.policy
        }
        fn active(&self) -> &AtomicU64 {
            &self.active
        }
        fn pool(&self) -> &[AtomicU32] {
            &self.pool
        }
        fn generation(&self) -> &AtomicU32 {
            &self.generation
        }
        fn chunk(&self, id: u32) -> Result<Chunk> {
            if self.listed(id) {
                Ok(Chunk(id, self.regions[id as usize]))
            } else {
                Err(BlobError::InvalidConfig {
                    reason: format!("no chunk {id}"),
                })
            }
        }
        fn create(&self, _size: usize, flags: u32, _populate: bool) -> Result<Chunk> {
            let id = self.made.fetch_add(1, Ordering::SeqCst);
            let Some(&r) = self.regions.get(id as usize) else {
                self.made.fetch_sub(1, Ordering::SeqCst);
                return Err(BlobError::StoreFull {
                    namespace: "model".into(),
                    max_chunks: self.regions.len() as u32,
                    held: String::new(),
                });
            };
            let generation = next_generation(self);
            r.format(id, generation, flags, KEY, clock::now_ms(), 0);
            self.published[id as usize].store(1, Ordering::Release);
            Ok(Chunk(id, r))
        }
        fn release(&self, chunk: &Chunk) {
            self.released[chunk.0 as usize].fetch_add(1, Ordering::SeqCst);
        }
        fn ids(&self, out: &mut Vec<u32>) {
            out.extend((0..self.made.load(Ordering::SeqCst)).filter(|&id| self.listed(id)));
        }
        fn is_listed(&self, id: u32) -> bool {
            self.listed(id)
        }
    }

    /// Runs a model with at most two preemptions: these models run whole
    /// engine operations (hundreds of atomic steps), and a bound of three
    /// takes minutes.
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(2);
        b.check(f);
    }

    fn bytes(m: &Model, loc: &Loc) -> Option<Vec<u8>> {
        with_bytes(m, loc, <[u8]>::to_vec)
    }

    /// Two appenders find no append target at once: one rollover wins,
    /// the other's chunk goes to the pool, both appends land and read back,
    /// and every chunk is in exactly one place.
    #[test]
    fn loom_racing_rollovers_leave_one_target_and_lose_no_chunk() {
        model(|| {
            let m: &'static Model = Box::leak(Box::new(Model::new(3)));
            let t = loom::thread::spawn(move || append(m, &[1; 8]).unwrap());
            let b = append(m, &[2; 8]).unwrap();
            let a = t.join().unwrap();
            assert_eq!(bytes(m, &a).unwrap(), [1; 8]);
            assert_eq!(bytes(m, &b).unwrap(), [2; 8]);
            m.check_places();
            assert!(m.made.load(Ordering::SeqCst) <= 2, "{}", m.describe());
        });
    }

    /// An appender rolls over from a full chunk while a reclamation pass
    /// recycles that chunk (every entry acknowledged) into the pool: the
    /// new append lands and reads back, the acknowledged entry never reads
    /// other bytes, and every chunk is in exactly one place.
    #[test]
    fn loom_rollover_races_recycling_of_the_old_target() {
        model(|| {
            let m: &'static Model = Box::leak(Box::new(Model::new(3)));
            // Fill the first chunk (four entries), acknowledge them all.
            let old: Vec<Loc> = (0..4u8).map(|i| append(m, &[i; 8]).unwrap()).collect();
            for loc in &old {
                assert!(acknowledge(m, loc));
            }
            let t = loom::thread::spawn(move || reclaim(m));
            let new = append(m, &[9; 8]).unwrap();
            t.join().unwrap();
            assert_eq!(bytes(m, &new).unwrap(), [9; 8]);
            for (i, loc) in old.iter().enumerate() {
                if let Some(b) = bytes(m, loc) {
                    assert_eq!(b, [i as u8; 8], "an old handle read other bytes");
                }
            }
            m.check_places();
        });
    }
}

/// The engine's recovery and re-append paths, each staged at the step it
/// guards (with the test hooks) on a heap store.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::backend::heap::{HeapBackend, HeapPages};
    use crate::chunk::SEALED_ACTIVATING;
    use crate::Config;
    use std::sync::Arc;

    fn store(ttl_ms: u64) -> (HeapBackend, Arc<HeapPages>) {
        store_with(0, ttl_ms)
    }

    /// A heap store of 4 KiB pages with this decay and TTL.
    fn store_with(decay_ms: u64, ttl_ms: u64) -> (HeapBackend, Arc<HeapPages>) {
        let b = HeapBackend::new(&Config {
            page_size: 4096,
            decay_timeout_ms: decay_ms,
            default_ttl_ms: ttl_ms,
            ..Config::default()
        })
        .unwrap();
        let c = b.pages();
        (b, c)
    }

    fn target(c: &HeapPages) -> (u32, u32) {
        let a = c.active().load(Ordering::SeqCst);
        (id_of(a), generation_of(a))
    }

    fn read(c: &HeapPages, loc: &Loc) -> Option<Vec<u8>> {
        with_bytes(c, loc, <[u8]>::to_vec)
    }

    /// Invariant 2's other half: a writer whose chunk a pass reclaimed
    /// while it copied (it stalled past the TTL) appends again rather than
    /// return a handle to a dead chunk.
    #[test]
    fn a_writer_whose_chunk_was_reclaimed_under_it_appends_again() {
        let (_b, c) = store(60_000);
        append(&*c, b"first").unwrap();
        let (id, generation) = target(&c);
        let pass = Arc::clone(&c);
        let mut once = true;
        hooks::set(move |p| {
            if p == Point::Committed && std::mem::take(&mut once) {
                // A pass that presumed this writer dead: seal, claim, retire.
                let chunk = pass.chunk(id).unwrap();
                chunk.region().seal(generation, clock::now_ms());
                assert!(chunk.region().claim(generation));
                retire(&*pass, &chunk);
            }
        });
        let loc = append(&*c, b"second").unwrap();
        hooks::clear();
        assert_ne!((loc.id, loc.generation), (id, generation), "written again");
        assert_eq!(read(&c, &loc).as_deref(), Some(&b"second"[..]));
    }

    /// Invariant 2: an append that is still copying its payload has not
    /// committed its entry, so a pass that finds its chunk sealed and past
    /// the TTL never vouches for it: the walk stops at the entry and the
    /// chunk is not recyclable (it is retired, and the stalled copy lands
    /// in a dead life, never in the next one). Committing before the copy
    /// would vouch for a writer that then overwrites the next life.
    #[test]
    fn a_writer_still_copying_is_never_vouched_for() {
        let (_b, c) = store(60_000);
        append(&*c, b"first").unwrap();
        let (id, generation) = target(&c);
        let pass = Arc::clone(&c);
        let mut once = true;
        let checked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = Arc::clone(&checked);
        hooks::set(move |p| {
            if p == Point::Copying && std::mem::take(&mut once) {
                let chunk = pass.chunk(id).unwrap();
                let region = chunk.region();
                region.seal(generation, clock::now_ms());
                assert!(
                    !region.walk(generation),
                    "the walk vouched for a writer still copying"
                );
                assert!(region.claim(generation));
                assert!(!region.recyclable(), "recyclable under a writer");
                retire(&*pass, &chunk);
                seen.store(true, Ordering::SeqCst);
            }
        });
        let loc = append(&*c, b"second").unwrap();
        hooks::clear();
        assert!(checked.load(Ordering::SeqCst), "the hook never ran");
        assert_ne!((loc.id, loc.generation), (id, generation), "written again");
        assert_eq!(read(&c, &loc).as_deref(), Some(&b"second"[..]));
    }

    /// A copy (`resolve`, `get`) holds its pin until it is done: a pass
    /// that reclaims the chunk in the middle of the copy retires it rather
    /// than recycle it, so the appends that follow never rewrite the bytes
    /// being copied.
    #[test]
    fn a_copy_holds_its_pin_until_it_is_done() {
        let (_b, c) = store(60_000);
        let loc = append(&*c, &[1u8; 1000]).unwrap();
        assert!(acknowledge(&*c, &loc));
        let (id, generation) = target(&c);
        let copy = with_bytes(&*c, &loc, |bytes| {
            // In the middle of the copy: the chunk is sealed, a pass
            // reclaims it (every entry is acknowledged), and the writer
            // goes on through chunks the pool hands out.
            c.chunk(id)
                .unwrap()
                .region()
                .seal(generation, clock::now_ms());
            reclaim(&*c);
            for _ in 0..16 {
                append(&*c, &[2u8; 1000]).unwrap();
            }
            bytes.to_vec()
        })
        .unwrap();
        assert_eq!(copy, vec![1u8; 1000], "the bytes changed under the copy");
    }

    /// A dedicated chunk (one oversized blob) is never pooled or recycled:
    /// once its blob is acknowledged, a pass retires it.
    #[test]
    fn a_dedicated_chunk_is_retired_never_recycled() {
        let (_b, c) = store(60_000);
        let loc = append(&*c, &[5u8; 10_000]).unwrap();
        let chunk = c.chunk(loc.id).unwrap();
        assert!(chunk.region().is_dedicated());
        assert!(acknowledge(&*c, &loc));
        reclaim(&*c);
        assert_eq!(chunk.region().state().0, STATE_RETIRED);
        assert!(!is_pooled(&*c, loc.id));
        assert_eq!(read(&c, &loc), None);
    }

    /// A held chunk is only a mapping: when its id comes to name another
    /// chunk (heap page ids are reused; shared ids after an epoch wraps),
    /// an appender and an acknowledger holding the earlier one fetch the
    /// new one instead of using (or sealing) the wrong chunk.
    #[test]
    fn a_held_chunk_whose_id_names_another_chunk_now_is_fetched_again() {
        let (_b, c) = store_with(0, 60_000);
        // Acknowledgement: a dedicated page, retired once acknowledged,
        // frees its id for the next dedicated page.
        let mut acker = Held::default();
        let big = append(&*c, &[5u8; 10_000]).unwrap();
        assert!(acknowledge_via(&*c, &mut acker, &big));
        reclaim(&*c);
        let big2 = append(&*c, &[6u8; 10_000]).unwrap();
        assert_eq!(big2.id, big.id, "the id was reused");
        assert!(acknowledge_via(&*c, &mut acker, &big2));
        assert!(!acknowledge_via(&*c, &mut acker, &big2), "once");

        // Appending: a writer holds the target; the target is pinned (so
        // the pass retires it instead of recycling it in place), filled
        // and acknowledged; the pass frees its id, which the next target
        // takes.
        let mut writer = Held::default();
        let first = append_via(&*c, &mut writer, &[1u8; 64]).unwrap();
        let (pinned, _, _) = pin_bytes(&*c, &first).unwrap();
        let mut loc = first;
        while (loc.id, loc.generation) == (first.id, first.generation) {
            assert!(acknowledge(&*c, &loc));
            loc = append(&*c, &[2u8; 64]).unwrap();
        }
        assert_eq!(pinned.region().state().0, STATE_RETIRED);
        pinned.region().unpin_raw();
        drop(pinned);
        assert_eq!(loc.id, first.id, "the id was reused");
        let next = (loc.id, loc.generation);
        assert_eq!(target(&c), next);
        let loc = append_via(&*c, &mut writer, &[3u8; 64]).unwrap();
        assert_eq!(
            (loc.id, loc.generation),
            next,
            "appended to the target, which it did not seal"
        );
        assert_eq!(read(&c, &loc).as_deref(), Some(&[3u8; 64][..]));
    }

    /// The largest blob is exactly `MAX_BLOB`: its entry fills the largest
    /// chunk file to the byte; one more byte is `BlobTooLarge`.
    #[test]
    fn the_largest_blob_fills_the_largest_chunk_file() {
        let f = footprint_of(Policy::MAX_BLOB).unwrap();
        assert_eq!(CHUNK_HEADER_SIZE + f, MAX_CHUNK_SIZE);
        assert!(matches!(
            footprint_of(Policy::MAX_BLOB + 1),
            Err(BlobError::BlobTooLarge { .. })
        ));
        assert!(matches!(footprint_of(0), Err(BlobError::EmptyBlob)));
    }

    /// A rollover seals the target it replaces (it normally is already),
    /// so that it can be reclaimed.
    #[test]
    fn a_rollover_seals_the_target_it_replaces() {
        let (_b, c) = store(60_000);
        append(&*c, b"one").unwrap();
        let (id, _) = target(&c);
        let seen = c.active().load(Ordering::SeqCst);
        rollover(&*c, seen).unwrap();
        assert_ne!(target(&c).0, id);
        let alloc = c
            .chunk(id)
            .unwrap()
            .region()
            .header()
            .alloc
            .load(Ordering::SeqCst);
        assert!(alloc_sealed(alloc));
    }

    /// A stream whose consumer acknowledges as it goes cycles through a few
    /// warm chunks without any reclamation thread: a rollover with an empty
    /// pool reclaims once before it creates.
    #[test]
    fn a_rollover_recycles_before_it_creates() {
        let (b, c) = store(60_000);
        for i in 0..400u32 {
            let loc = append(&*c, &[i as u8; 1000]).unwrap();
            assert!(acknowledge(&*c, &loc));
        }
        assert!(b.page_count() <= 3, "{} pages", b.page_count());
    }

    /// A pass never seals the live append target, however long ago it was
    /// activated (only an activated chunk nobody points at is sealed).
    #[test]
    fn a_pass_never_seals_the_live_append_target() {
        let (_b, c) = store(60_000);
        append(&*c, b"one").unwrap();
        let (id, _) = target(&c);
        let chunk = c.chunk(id).unwrap();
        let h = chunk.region().header();
        h.activated_ms
            .store(clock::now_ms().saturating_sub(5_000), Ordering::SeqCst);
        reclaim(&*c);
        assert!(!alloc_sealed(h.alloc.load(Ordering::SeqCst)));
        assert_eq!(target(&c).0, id);
    }

    /// A pool word naming a dedicated chunk (scribbled on, in shared mode)
    /// is dropped, never made the append target. (Its `is_dedicated` guard
    /// is redundant with the FREE check here, since a dedicated chunk is
    /// IN_USE once its blob is in; the guard covers the moment before.)
    #[test]
    fn a_rollover_never_activates_a_dedicated_chunk_from_the_pool() {
        let (_b, c) = store(60_000);
        append(&*c, b"one").unwrap();
        let big = append(&*c, &[1u8; 10_000]).unwrap();
        assert!(pool_push(&*c, big.id));
        let seen = c.active().load(Ordering::SeqCst);
        rollover(&*c, seen).unwrap();
        assert_ne!(target(&c).0, big.id);
        assert_eq!(read(&c, &big).as_deref(), Some(&[1u8; 10_000][..]));
    }

    /// With the warm pool full, a fully acknowledged chunk waits out the
    /// decay before it is released (reuse is immediate only while the pool
    /// has room).
    #[test]
    fn with_the_pool_full_the_decay_governs_release() {
        let (_b, c) = store_with(60_000, 60_000);
        let loc = append(&*c, b"acked").unwrap();
        // Fill every pool slot (counted here, not with `pool_len`, which
        // the decay decision itself uses).
        let full = || c.pool().iter().all(|s| s.load(Ordering::SeqCst) != 0);
        while !full() {
            let free = c.create(4096, 0, false).unwrap();
            assert!(pool_push(&*c, free.id()));
        }
        assert!(acknowledge(&*c, &loc));
        let chunk = c.chunk(loc.id).unwrap();
        chunk.region().seal(loc.generation, clock::now_ms());
        reclaim(&*c);
        assert_eq!(
            chunk.region().state(),
            (STATE_IN_USE, loc.generation),
            "kept for the decay"
        );
    }

    /// The census a `StoreFull` error carries names every kind of holder,
    /// counted, and only the kinds present; the TTL hint is for the oldest
    /// seal among chunks holding unacknowledged entries.
    #[test]
    fn the_census_counts_what_holds_the_chunks() {
        let (_b, c) = store(60_000);
        assert_eq!(
            census(&*c),
            "no chunk found",
            "no target before the first append"
        );
        // Only the append target at first.
        append(&*c, b"x").unwrap();
        assert_eq!(census(&*c), "1 is the append target");
        // One 3000-byte blob per 4 KiB page: each append seals the last page.
        let big = |c: &HeapPages| append(c, &[7u8; 3000]).unwrap();
        let (u1, u2, unstamped, pinned, acked) = (big(&c), big(&c), big(&c), big(&c), big(&c));
        big(&c); // the target
        let now = clock::now_ms();
        let region = |id| c.chunk(id).unwrap();
        let sealed = |id, at| {
            region(id)
                .region()
                .header()
                .sealed_ms
                .store(at, Ordering::Relaxed)
        };
        sealed(u1.id, now - 5_000);
        sealed(u2.id, now - 1_000);
        // A seal never stamped gives no TTL hint of its own.
        sealed(unstamped.id, 0);
        let pinned_chunk = region(pinned.id);
        let _pin = pinned_chunk.region().pin();
        assert!(acknowledge(&*c, &acked));
        for _ in 0..2 {
            let free = c.create(4096, 0, false).unwrap();
            assert!(pool_push(&*c, free.id()));
        }
        // FREE outside the pool counts as warm too.
        let _loose = c.create(4096, 0, false).unwrap();
        let gone = c.create(4096, 0, false).unwrap();
        gone.region().mark_retired();
        let text = census(&*c);
        let (head, tail) = text
            .split_once("frees the oldest in ")
            .unwrap_or_else(|| panic!("no TTL hint: {text}"));
        assert_eq!(
            head, "3 hold unacknowledged entries; the TTL (60000 ms) ",
            "{text}"
        );
        let (ms, rest) = tail.split_once(" ms").unwrap();
        let ms: u64 = ms.parse().unwrap();
        assert!((54_000..=55_000).contains(&ms), "the oldest seal: {text}");
        assert_eq!(
            rest,
            " if its consumer died, 1 pinned by views, 1 fully acknowledged, waiting for a reclamation pass, 1 is the append target, 3 warm in the pool, 1 being reclaimed or unreadable"
        );
    }

    /// `debug_chunks`' lines: the append target, then one line per chunk
    /// in id order with its state, use, acknowledgements and pins, the
    /// pooled ones and the target marked.
    #[test]
    fn describe_lists_every_chunk_in_id_order() {
        let (_b, c) = store(60_000);
        assert_eq!(describe(&*c), vec!["write_head=none, chunks=0".to_owned()]);
        // One 3000-byte blob per page: four pages, the last one the target.
        let first = append(&*c, &[1u8; 3000]).unwrap();
        append(&*c, &[2u8; 3000]).unwrap();
        let claimed = append(&*c, &[3u8; 3000]).unwrap();
        append(&*c, &[4u8; 3000]).unwrap();
        assert!(acknowledge(&*c, &first));
        assert!(c
            .chunk(claimed.id)
            .unwrap()
            .region()
            .claim(claimed.generation));
        let pooled = c.create(4096, 0, false).unwrap();
        assert!(pool_push(&*c, pooled.id()));
        let (target, _) = target(&c);
        let lines = describe(&*c);
        assert_eq!(
            lines[0],
            format!("write_head={target}, chunks=5"),
            "{lines:?}"
        );
        let line = |id: u32| {
            lines
                .iter()
                .find(|l| l.starts_with(&format!("chunk[{id}]:")))
                .unwrap_or_else(|| panic!("no line for {id}: {lines:?}"))
                .clone()
        };
        assert!(
            line(first.id).contains(" in use used=3144/4096 acked=1 pins=0"),
            "{lines:?}"
        );
        assert!(line(pooled.id()).contains(" free ") && line(pooled.id()).ends_with(" pooled"));
        assert!(line(claimed.id).contains(" reclaiming "));
        assert!(line(target).ends_with(" <-- ACTIVE"));
        let mut ids: Vec<u32> = lines[1..]
            .iter()
            .map(|l| l[6..l.find(']').unwrap()].parse().unwrap())
            .collect();
        let sorted = {
            let mut v = ids.clone();
            v.sort_unstable();
            v
        };
        assert_eq!(ids, sorted);
        ids.dedup();
        assert_eq!(ids.len(), 5);
    }

    /// A pass recycles a fully acknowledged chunk into the pool at once
    /// while the pool has room, whatever the decay, and counts it.
    #[test]
    fn a_pass_recycles_at_once_while_the_pool_has_room() {
        let (_b, c) = store_with(60_000, 60_000);
        let loc = append(&*c, &[1u8; 3000]).unwrap();
        append(&*c, &[2u8; 3000]).unwrap();
        assert!(acknowledge(&*c, &loc));
        assert_eq!(reclaim(&*c), 1);
        assert_eq!(pool_len(&*c), 1);
        assert!(is_pooled(&*c, loc.id));
        assert_eq!(c.chunk(loc.id).unwrap().region().state().0, STATE_FREE);
    }

    /// A claim younger than the grace period belongs to a live reclaimer: a
    /// pass leaves it alone (it would otherwise retire a chunk its claimer is
    /// about to recycle).
    #[test]
    fn a_live_claim_is_left_to_its_claimer() {
        let (_b, c) = store(60_000);
        let loc = append(&*c, &[1u8; 3000]).unwrap();
        append(&*c, &[2u8; 3000]).unwrap();
        assert!(acknowledge(&*c, &loc));
        let chunk = c.chunk(loc.id).unwrap();
        assert!(chunk.region().claim(loc.generation));
        reclaim(&*c);
        std::thread::sleep(std::time::Duration::from_millis(5));
        reclaim(&*c);
        assert_eq!(
            chunk.region().state(),
            (STATE_RECLAIMING, loc.generation),
            "still its claimer's"
        );
    }

    /// Prefetch prepares a chunk only when none is waiting and none can be
    /// reclaimed, and parks it in the pool, FREE.
    #[test]
    fn prefetch_creates_only_when_nothing_can_be_reused() {
        let (b, c) = store(60_000);
        let loc = append(&*c, &[1u8; 3000]).unwrap();
        append(&*c, &[2u8; 3000]).unwrap();
        assert_eq!(b.page_count(), 2);
        prefetch(&*c);
        assert_eq!(
            (b.page_count(), pool_len(&*c)),
            (3, 1),
            "prepared and pooled"
        );
        let pooled = c
            .pool()
            .iter()
            .map(|s| s.load(Ordering::SeqCst))
            .find(|&v| v != 0);
        let chunk = c.chunk(pooled.unwrap() - 1).unwrap();
        assert_eq!(chunk.region().state().0, STATE_FREE);
        prefetch(&*c);
        assert_eq!(b.page_count(), 3, "one is waiting in the pool");
        // Empty the pool; a reclaimable chunk is as good as a new one.
        for s in c.pool() {
            s.store(0, Ordering::SeqCst);
        }
        assert!(acknowledge(&*c, &loc));
        prefetch(&*c);
        assert_eq!(b.page_count(), 3, "a chunk can be recycled instead");
    }

    /// Scale-down: a pooled chunk idle past max(decay, 1 s) is released and
    /// leaves the pool; a fresh one stays.
    #[test]
    fn an_idle_pooled_chunk_is_released_and_a_fresh_one_stays() {
        let (b, c) = store(60_000);
        append(&*c, b"x").unwrap();
        let idle = c.create(4096, 0, false).unwrap();
        let fresh = c.create(4096, 0, false).unwrap();
        assert!(pool_push(&*c, idle.id()) && pool_push(&*c, fresh.id()));
        let now = clock::now_ms();
        for (ch, at) in [(&idle, now - 10_000), (&fresh, now)] {
            ch.region()
                .header()
                .empty_since_ms
                .store(at, Ordering::SeqCst);
            ch.region()
                .header()
                .activated_ms
                .store(at, Ordering::SeqCst);
        }
        assert_eq!(b.page_count(), 3);
        reclaim(&*c);
        assert_eq!(b.page_count(), 2, "the idle one is released");
        assert_eq!(pool_len(&*c), 1);
        assert!(is_pooled(&*c, fresh.id()) && !is_pooled(&*c, idle.id()));
        assert_eq!(fresh.region().state().0, STATE_FREE);
        assert_eq!(idle.region().state().0, STATE_RETIRED);
    }

    /// A handle that points into a payload crafted to look like an entry
    /// (length, a committed state of the right generation, and a guessed
    /// tag) never resolves: the tag is keyed with the store's secret key.
    #[test]
    fn a_forged_handle_into_a_crafted_payload_never_resolves() {
        let (_b, c) = store(60_000);
        let first = append(&*c, b"x").unwrap();
        for guess in [0u64, 1, u64::MAX] {
            let mut crafted = Vec::new();
            crafted.extend_from_slice(&8u32.to_le_bytes());
            crafted
                .extend_from_slice(&entry_state(first.generation, ENTRY_COMMITTED).to_le_bytes());
            crafted.extend_from_slice(&guess.to_le_bytes());
            crafted.extend_from_slice(b"forged!!");
            let real = append(&*c, &crafted).unwrap();
            assert_eq!(real.generation, first.generation, "same chunk life");
            let forged = Loc {
                offset: real.offset + ENTRY_HEADER_SIZE as u32,
                size: 8,
                ..real
            };
            assert_eq!(read(&c, &forged), None, "tag guess {guess}");
            assert!(!acknowledge(&*c, &forged));
            assert_eq!(read(&c, &real).as_deref(), Some(&crafted[..]));
        }
    }

    /// A blob one entry-alignment too large for a standard chunk gets a
    /// dedicated chunk (the threshold is the chunk's capacity exactly).
    #[test]
    fn a_blob_just_over_a_chunks_capacity_gets_a_dedicated_chunk() {
        let (_b, c) = store(60_000);
        let capacity = 4096 - CHUNK_HEADER_SIZE;
        let len = capacity + ENTRY_ALIGN - ENTRY_HEADER_SIZE;
        assert_eq!(footprint_of(len).unwrap(), capacity + ENTRY_ALIGN);
        let loc = append(&*c, &vec![3u8; len]).unwrap();
        assert!(c.chunk(loc.id).unwrap().region().is_dedicated());
        assert_eq!(read(&c, &loc), Some(vec![3u8; len]));
        // And one that fills a standard chunk exactly stays standard.
        let fits = capacity - ENTRY_HEADER_SIZE;
        let loc = append(&*c, &vec![4u8; fits]).unwrap();
        assert!(!c.chunk(loc.id).unwrap().region().is_dedicated());
        assert_eq!(read(&c, &loc), Some(vec![4u8; fits]));
    }

    /// Fills a loan (the in-place append path) and commits it.
    fn loan(c: &HeapPages, data: &[u8]) -> Loc {
        let r = reserve(c, data.len()).unwrap();
        // SAFETY: the reservation holds `data.len()` writable bytes at `ptr`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), r.ptr, data.len()) };
        commit_reserved(c, &r).unwrap()
    }

    /// The loan path places blobs as `append` does: into the append target
    /// while they fit, into a dedicated chunk of exactly their size beyond
    /// the capacity, with times on the millisecond clock (the TTL of a
    /// loaned blob runs from a real seal time).
    #[test]
    fn loans_are_placed_and_stamped_like_appends() {
        // Miri runs this thousands of times slower than the CPU: a TTL of
        // 300 ms can pass between the seal and the first pass there.
        let ttl = if cfg!(miri) { 20_000 } else { 300 };
        let (_b, c) = store(ttl);
        let capacity = 4096 - CHUNK_HEADER_SIZE;
        let fits = capacity - ENTRY_HEADER_SIZE;
        let first = loan(&c, &vec![1u8; fits]);
        assert_eq!(first.id, target(&c).0, "into the append target");
        assert!(!c.chunk(first.id).unwrap().region().is_dedicated());
        let len = capacity + ENTRY_ALIGN - ENTRY_HEADER_SIZE;
        let big = loan(&c, &vec![2u8; len]);
        let dedicated = c.chunk(big.id).unwrap();
        assert!(dedicated.region().is_dedicated());
        assert_eq!(
            dedicated.region().len(),
            CHUNK_HEADER_SIZE + footprint_of(len).unwrap(),
            "a dedicated chunk is exactly as large as its entry"
        );
        let now = clock::now_ms();
        let activated = dedicated
            .region()
            .header()
            .activated_ms
            .load(Ordering::SeqCst);
        assert!(
            activated <= now && now - activated < ttl.max(1_000),
            "{activated} vs {now}"
        );
        assert_eq!(read(&c, &first), Some(vec![1u8; fits]));
        assert_eq!(read(&c, &big), Some(vec![2u8; len]));
        // The next loan seals the first chunk (full): its TTL runs from then.
        let second = loan(&c, &[3u8; 100]);
        assert_ne!(second.id, first.id);
        reclaim(&*c);
        assert_eq!(read(&c, &first), Some(vec![1u8; fits]), "not yet expired");
        std::thread::sleep(std::time::Duration::from_millis(ttl + 50));
        reclaim(&*c);
        assert_eq!(read(&c, &first), None, "expired");
    }

    /// The TTL runs from the seal an append stamps (in milliseconds): not
    /// expired just after it, expired once the TTL has passed.
    #[test]
    fn the_ttl_runs_from_the_seal_an_append_stamps() {
        // A longer TTL under Miri (see `loans_are_placed_and_stamped_like_appends`).
        let ttl = if cfg!(miri) { 20_000 } else { 300 };
        let (_b, c) = store(ttl);
        let first = append(&*c, &[1u8; 2000]).unwrap();
        // The second blob does not fit: this append seals the first chunk.
        append(&*c, &[2u8; 2000]).unwrap();
        let chunk = c.chunk(first.id).unwrap();
        assert!(alloc_sealed(
            chunk.region().header().alloc.load(Ordering::SeqCst)
        ));
        reclaim(&*c);
        assert_eq!(read(&c, &first), Some(vec![1u8; 2000]), "not yet expired");
        std::thread::sleep(std::time::Duration::from_millis(ttl + 50));
        reclaim(&*c);
        assert_eq!(read(&c, &first), None, "expired");
    }

    /// Every activation takes a fresh generation, also for a chunk a
    /// rollover's loser gave back to the pool: its next life as the target
    /// is not the life it was given back in.
    #[test]
    fn every_activation_takes_a_fresh_generation() {
        let (_b, c) = store(60_000);
        let inner = Arc::clone(&c);
        let mut once = true;
        // The outer rollover activates a chunk; before it publishes it, a
        // racing rollover wins; the outer one gives its chunk back.
        hooks::set(move |p| {
            if p == Point::Activated && std::mem::take(&mut once) {
                rollover(&*inner, NO_CHUNK as u64).unwrap();
            }
        });
        rollover(&*c, NO_CHUNK as u64).unwrap();
        hooks::clear();
        let pooled = pool_pop(&*c).expect("the loser's chunk is pooled");
        let (state, given_back) = c.chunk(pooled).unwrap().region().state();
        assert_eq!(state, STATE_FREE);
        assert!(pool_push(&*c, pooled));
        // The next rollover takes it from the pool.
        let seen = c.active().load(Ordering::SeqCst);
        rollover(&*c, seen).unwrap();
        let (id, generation) = target(&c);
        assert_eq!(id, pooled, "the pooled chunk became the target");
        assert_ne!(generation, given_back, "in a fresh generation");
    }

    /// A producer killed mid-rollover left an activated chunk that nobody
    /// points at: a pass seals it after max(decay, 1 s) so it can be
    /// reclaimed.
    #[test]
    fn a_pass_seals_an_append_chunk_abandoned_by_its_activator() {
        let (_b, c) = store(60_000);
        let chunk = c.create(4096, 0, false).unwrap();
        let (_, g) = chunk.region().state();
        let long_ago = clock::now_ms().saturating_sub(2_000);
        assert!(chunk.region().activate(g, g + 1, long_ago));
        reclaim(&*c);
        let alloc = chunk.region().header().alloc.load(Ordering::SeqCst);
        assert!(alloc_sealed(alloc), "sealed by the pass");
    }

    /// A sealer killed between its seal and its time stamp: a pass starts
    /// the TTL clock, and the TTL then reclaims the chunk.
    #[test]
    fn a_seal_that_lost_its_time_gets_one_and_expires() {
        let (_b, c) = store(50);
        let chunk = c.create(4096, 0, false).unwrap();
        let (_, g) = chunk.region().state();
        assert!(chunk.region().activate(g, g + 1, clock::now_ms()));
        let h = chunk.region().header();
        h.alloc.fetch_or(ALLOC_SEALED, Ordering::SeqCst);
        assert_eq!(h.sealed_ms.load(Ordering::SeqCst), 0);
        reclaim(&*c);
        assert_ne!(h.sealed_ms.load(Ordering::SeqCst), 0, "stamped by the pass");
        std::thread::sleep(std::time::Duration::from_millis(60));
        reclaim(&*c);
        assert_ne!(chunk.region().state(), (STATE_IN_USE, g + 1), "expired");
    }

    /// An activator killed between its state CAS and unsealing left the
    /// chunk IN_USE, sealed, marked "being activated": after a TTL a pass
    /// treats it as sealed, and the TTL then reclaims it.
    #[test]
    fn a_chunk_half_activated_by_a_dead_process_is_recovered() {
        let (_b, c) = store(50);
        let chunk = c.create(4096, 0, false).unwrap();
        let (_, g) = chunk.region().state();
        let h = chunk.region().header();
        // What `activate` leaves when killed right after its CAS.
        h.activated_ms
            .store(clock::now_ms().saturating_sub(1_000), Ordering::SeqCst);
        h.sealed_ms.store(SEALED_ACTIVATING, Ordering::SeqCst);
        h.state_gen
            .store(state_gen(STATE_IN_USE, g), Ordering::SeqCst);
        reclaim(&*c);
        let sealed = h.sealed_ms.load(Ordering::SeqCst);
        assert!(
            sealed != 0 && sealed != SEALED_ACTIVATING,
            "sealed for real"
        );
        std::thread::sleep(std::time::Duration::from_millis(60));
        reclaim(&*c);
        assert_ne!(chunk.region().state(), (STATE_IN_USE, g), "expired");
    }

    /// A pass that takes a chunk (its TTL expired) while a writer is
    /// between its reservation and its commit retires it, never recycles
    /// it in place (the writer would then write into the chunk's next
    /// life); the writer appends again.
    #[test]
    fn a_chunk_with_a_writer_in_flight_is_never_recycled_in_place() {
        let (_b, c) = store(0);
        append(&*c, b"first").unwrap();
        let (id, generation) = target(&c);
        let pass = Arc::clone(&c);
        let mut once = true;
        hooks::set(move |p| {
            if p == Point::Reserved && std::mem::take(&mut once) {
                let chunk = pass.chunk(id).unwrap();
                chunk.region().seal(generation, clock::now_ms());
                reclaim(&*pass);
                assert_eq!(
                    chunk.region().state().0,
                    STATE_RETIRED,
                    "retired, not recycled, under the writer"
                );
                assert!(!is_pooled(&*pass, id));
            }
        });
        let loc = append(&*c, b"second").unwrap();
        hooks::clear();
        assert_eq!(read(&c, &loc).as_deref(), Some(&b"second"[..]));
    }
}
