//! The chunk protocol — reserve, commit, walk, pin, locate, acknowledge,
//! assess, claim, recycle, retire — written once over a raw memory region and
//! used by every mode (a shared-memory mapping or process-local memory).
//!
//! # The words and who changes them
//!
//! * `alloc` packs the next free offset and the sealed bit. A reservation is
//!   one CAS on it; once sealed, no reservation can succeed.
//! * Each entry's `state` word, `(generation << 2) | kind`, is its commit
//!   (a plain Release store, no locked instruction after the payload copy)
//!   and its acknowledgement (a CAS). Reclaimers prove that a sealed chunk
//!   has no writer in flight by walking its entries (`walk`), resuming from
//!   a cursor that carries the generation, so a walk of one life of the
//!   chunk can never vouch for another (invariant 2).
//! * `state_gen` packs the chunk state and its generation. Only one
//!   reclaimer wins the CAS `IN_USE -> RECLAIMING` for a generation.
//! * `pins` counts readers. A reader increments `pins` (an RMW) and then
//!   loads `state_gen`; a reclaimer CASes `state_gen` and then reads `pins`
//!   with an RMW (`fetch_add(0)`). Because both accesses to `pins` are RMWs,
//!   one reads from the other: either the reclaimer sees the pin and retires
//!   the chunk (unlinks it) instead of recycling its memory in place, or its
//!   RMW synchronizes with the reader's increment and the reader's load of
//!   `state_gen` sees the claim and backs off. (A plain load of `pins` would
//!   be the store-buffering pattern, correct only under SeqCst; loom, which
//!   models SeqCst as AcqRel, found that version unsound in its model.) Bytes under
//!   a pin therefore never change (invariant 4), and a pin leaked by a
//!   crashed process only turns one recycling into an unlink, it never
//!   blocks reclamation.
//!
//! Every offset read from the shared header is checked against the local
//! length of the region before it is used (invariant 5).

use crate::layout::*;
use crate::sync::{AtomicU64, Ordering};
use std::ptr::NonNull;
use std::sync::atomic::AtomicUsize;

/// `sealed_ms` while a chunk is being activated (not a time).
pub(crate) const SEALED_ACTIVATING: u64 = u64::MAX;

/// Outcome of [`ChunkRegion::try_deactivate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deactivate {
    /// FREE again, owned by the caller: pool it.
    Free,
    /// A writer reserved in it: keep it IN_USE and seal it.
    InUse,
    /// A reclaimer took it: it is not the caller's any more.
    Lost,
}

/// Outcome of [`ChunkRegion::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reserve {
    /// Space `[offset, offset + footprint)` is ours; the chunk's generation
    /// cannot change until we commit.
    Reserved {
        /// Entry offset.
        offset: u32,
        /// Offset of the end of the entry.
        end: u32,
        /// Generation of the chunk we reserved in.
        generation: u32,
    },
    /// The chunk takes no more reservations: move to the next one.
    Sealed,
    /// The entry fits in the chunk but not yet in the part of it backed by
    /// memory: prepare the next step (see [`ChunkRegion::ready`]), then
    /// try again.
    NotReady,
}

/// Why a handle finds no entry in its chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unlocated {
    /// The chunk is in another life (recycled, or being reclaimed).
    Stale,
    /// The chunk is in the handle's life but holds no such entry.
    Invalid(&'static str),
}

/// What [`ChunkRegion::assess`] concluded about a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Still holds live data, or is not ours to judge (active, pooled).
    Keep,
    /// Fully acknowledged, kept while its decay runs.
    Decaying,
    /// May be reclaimed; `expired` tells whether by TTL.
    Reclaim {
        /// Generation to claim.
        generation: u32,
        /// Reclaimed by TTL rather than by acknowledgement.
        expired: bool,
    },
}

/// A chunk: a header followed by entries, in memory that stays mapped for
/// as long as this value exists.
#[derive(Clone, Copy)]
pub(crate) struct ChunkRegion {
    base: NonNull<u8>,
    len: usize,
    /// This process's own mark of how far the chunk is backed by memory
    /// (what it created with `fallocate` or populated itself), for a chunk
    /// backed in steps; `None`: all of it (heap pages, test regions). A
    /// write goes only below both this mark and the shared `ready`, so a
    /// `ready` raised by a stray write of another process can never lead
    /// this one to write to a page without memory (SIGBUS on a full tmpfs).
    local: Option<NonNull<AtomicUsize>>,
    /// Under loom, the headers live in loom atomics beside the memory (loom
    /// cannot track atomics cast from raw bytes); payloads stay in `base`.
    #[cfg(loom)]
    shadow: &'static loom_shadow::Shadow,
}

// SAFETY: a ChunkRegion is a pointer to memory that every thread may access:
// all shared fields are atomics and payload bytes are only written by the one
// writer that reserved them and read after the Release/Acquire pair on the
// entry state; the owner of the memory keeps it mapped for the region's life.
unsafe impl Send for ChunkRegion {}
// SAFETY: see `Send`; no method hands out `&mut` to shared memory.
unsafe impl Sync for ChunkRegion {}

impl ChunkRegion {
    /// Wraps a region.
    ///
    /// # Safety
    /// `base` must be 8-aligned and valid for reads and writes of `len` bytes
    /// for as long as the returned value (or a copy) is used, and may only be
    /// accessed by others through this protocol. `len` must be at least
    /// [`CHUNK_HEADER_SIZE`] and at most [`MAX_CHUNK_SIZE`].
    pub(crate) unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        debug_assert!(base.as_ptr() as usize % ENTRY_ALIGN == 0);
        debug_assert!((CHUNK_HEADER_SIZE..=MAX_CHUNK_SIZE).contains(&len));
        Self {
            base,
            len,
            local: None,
            #[cfg(loom)]
            shadow: Box::leak(Box::new(loom_shadow::Shadow::new(len))),
        }
    }

    /// The same region, with `mark` as this process's own mark of how far
    /// it is backed by memory (see the `local` field).
    ///
    /// # Safety
    /// `mark` must outlive the returned region and every copy of it (the
    /// owner of the mapping keeps both).
    pub(crate) unsafe fn with_local_mark(self, mark: &AtomicUsize) -> Self {
        Self {
            local: Some(NonNull::from(mark)),
            ..self
        }
    }

    /// This process's own mark, or `len` without one.
    fn local_mark(&self) -> usize {
        match self.local {
            // SAFETY: `with_local_mark`'s contract keeps the mark alive for
            // as long as this region. Relaxed: a process-local hint, set by
            // this process after its own populate returned.
            Some(m) => unsafe { m.as_ref() }.load(Ordering::Relaxed),
            None => self.len,
        }
    }

    /// Length of the region (the chunk's size) in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The header.
    pub(crate) fn header(&self) -> &ChunkHeader {
        #[cfg(loom)]
        return &self.shadow.header;
        #[cfg(not(loom))]
        // SAFETY: `new` guarantees at least CHUNK_HEADER_SIZE valid, aligned
        // bytes; ChunkHeader is only atomics, valid for any bit pattern.
        unsafe {
            &*(self.base.as_ptr() as *const ChunkHeader)
        }
    }

    /// The entry header at `offset`, which must be 8-aligned and leave room
    /// for the header inside the region.
    fn entry(&self, offset: usize) -> Option<&EntryHeader> {
        if offset < CHUNK_HEADER_SIZE
            || offset % ENTRY_ALIGN != 0
            || offset.checked_add(ENTRY_HEADER_SIZE)? > self.len
        {
            return None;
        }
        #[cfg(loom)]
        return self
            .shadow
            .entries
            .get((offset - CHUNK_HEADER_SIZE) / ENTRY_ALIGN);
        // SAFETY: offset is aligned and in bounds (checked above); an
        // EntryHeader is only atomics, valid for any bit pattern.
        #[allow(unreachable_code)]
        Some(unsafe { &*(self.base.as_ptr().add(offset) as *const EntryHeader) })
    }

    /// Pointer to payload bytes at `payload_offset` (from `locate`, so in
    /// bounds; `wrapping_add` keeps even a wrong offset free of UB here).
    pub(crate) fn payload_ptr(&self, payload_offset: usize) -> *const u8 {
        debug_assert!(payload_offset <= self.len);
        self.base.as_ptr().wrapping_add(payload_offset)
    }

    /// Writes a fresh header into zeroed memory: the chunk starts FREE and
    /// sealed, owned by whoever formatted it, freed "now" as far as the
    /// pool's idle clock is concerned.
    pub(crate) fn format(
        &self,
        id: u32,
        generation: u32,
        flags: u32,
        incarnation: u64,
        now_ms: u64,
        ready: usize,
    ) {
        let h = self.header();
        h.incarnation.store(incarnation, Ordering::Relaxed);
        h.ready.store(
            if ready >= self.len { 0 } else { ready as u32 },
            Ordering::Relaxed,
        );
        h.empty_since_ms.store(now_ms, Ordering::Relaxed);
        h.chunk_id.store(id, Ordering::Relaxed);
        h.size.store(self.len as u32, Ordering::Relaxed);
        h.flags.store(flags, Ordering::Relaxed);
        h.alloc
            .store(CHUNK_HEADER_SIZE as u64 | ALLOC_SEALED, Ordering::Relaxed);
        h.state_gen
            .store(state_gen(STATE_FREE, generation), Ordering::Relaxed);
        // Release: pairs with the Acquire load of `magic` by `check_header`
        // in any process that maps the chunk later.
        h.magic.store(CHUNK_MAGIC, Ordering::Release);
    }

    /// Checks the header of a chunk mapped from a file named `id`, made by
    /// the namespace incarnation `incarnation`.
    pub(crate) fn check_header(&self, id: u32, incarnation: u64) -> Result<(), String> {
        let h = self.header();
        // Acquire: pairs with the Release store in `format`.
        let magic = h.magic.load(Ordering::Acquire);
        if magic != CHUNK_MAGIC {
            return Err(format!("bad chunk magic {magic:#018x}"));
        }
        let hid = h.chunk_id.load(Ordering::Relaxed);
        if hid != id {
            return Err(format!("header says chunk {hid}, file name says {id}"));
        }
        let size = h.size.load(Ordering::Relaxed) as usize;
        if size != self.len {
            return Err(format!("header says {size} bytes, file has {}", self.len));
        }
        let inc = h.incarnation.load(Ordering::Relaxed);
        if inc != incarnation {
            return Err(format!(
                "made by another incarnation of the namespace ({inc:#x})"
            ));
        }
        Ok(())
    }

    /// Generation and state of the chunk.
    pub(crate) fn state(&self) -> (u32, u32) {
        let w = self.header().state_gen.load(Ordering::Acquire);
        (state_of(w), generation_of(w))
    }

    /// Whether the chunk holds one oversized blob.
    pub(crate) fn is_dedicated(&self) -> bool {
        self.header().flags.load(Ordering::Relaxed) & FLAG_DEDICATED != 0
    }

    /// Makes a FREE chunk of generation `from`, taken from the pool (so
    /// owned by the caller), the target of appends in the fresh generation
    /// `to`. `false` if it is no longer FREE in `from` (a reclaimer retired
    /// it meanwhile). A fresh generation per activation means that nothing
    /// decided about an earlier life of the chunk — a reclaimer's verdict, a
    /// walker's cursor — can apply to this one.
    ///
    /// Between the state change and the unsealing the chunk is IN_USE yet
    /// sealed; `sealed_ms == SEALED_ACTIVATING` tells reclaimers it is not
    /// sealed for real, so it is not mistaken for an empty sealed chunk.
    pub(crate) fn activate(&self, from: u32, to: u32, now_ms: u64) -> bool {
        let h = self.header();
        // `activated_ms` before the marker, so whoever sees the marker sees
        // this activation's time.
        h.activated_ms.store(now_ms, Ordering::Relaxed);
        h.sealed_ms.store(SEALED_ACTIVATING, Ordering::Release);
        h.acks.store(0, Ordering::Relaxed);
        h.first_write_ms.store(0, Ordering::Relaxed);
        // Release: pairs with the Acquire load in `free_since`, so a pass
        // that sees this reset sees this activation's `activated_ms` too
        // (and does not take the chunk, FREE for a moment more, for idle).
        h.empty_since_ms.store(0, Ordering::Release);
        // AcqRel: publishes the resets above to whoever sees IN_USE; fails
        // if `retire_free` won the chunk.
        if h.state_gen
            .compare_exchange(
                state_gen(STATE_FREE, from),
                state_gen(STATE_IN_USE, to),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return false;
        }
        // Release: pairs with the Acquire CAS in `reserve`, so a writer that
        // reserves sees the reset header and the new generation.
        h.alloc.store(CHUNK_HEADER_SIZE as u64, Ordering::Release);
        // Only now may a seal stamp its time.
        let _ = h.sealed_ms.compare_exchange(
            SEALED_ACTIVATING,
            0,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        true
    }

    /// Reserves `footprint` bytes (from [`entry_footprint`]) with one CAS.
    /// Seals the chunk when the entry does not fit, stamping the seal time.
    #[inline]
    pub(crate) fn reserve(&self, footprint: u32, now_ms: u64) -> Reserve {
        self.reserve_run(
            |room| {
                if footprint as usize <= room {
                    footprint as usize
                } else {
                    0
                }
            },
            now_ms,
        )
    }

    /// Reserves, with one CAS, the space of a run of consecutive entries:
    /// `fit(room)` is told the bytes left in the chunk and returns how many
    /// to take (a sum of whole entry footprints, at most `room`), or 0 when
    /// not even the first entry fits: the chunk is then sealed, as by
    /// [`reserve`](Self::reserve). The caller writes and commits every
    /// entry of the run, each at the offset the previous one ends at.
    #[inline]
    pub(crate) fn reserve_run(&self, fit: impl Fn(usize) -> usize, now_ms: u64) -> Reserve {
        let h = self.header();
        let mut cur = h.alloc.load(Ordering::Relaxed);
        loop {
            if alloc_sealed(cur) {
                return Reserve::Sealed;
            }
            let used = alloc_used(cur) as usize;
            // Acquire: pairs with the AcqRel CAS in `mark_ready`, made after
            // the memory below the new mark was allocated.
            let limit = self.ready().map_or(self.len, |(r, _)| r);
            let take = limit.checked_sub(used).map_or(0, &fit);
            if take == 0 && limit < self.len && self.len.checked_sub(used).map_or(0, &fit) > 0 {
                return Reserve::NotReady;
            }
            let end = used + take;
            if used < CHUNK_HEADER_SIZE || used % ENTRY_ALIGN != 0 || take == 0 || end > limit {
                // Full (or a corrupt offset): seal so everyone moves on. The
                // life we seal, read before the alloc CAS (off the append
                // path): a successful CAS on `alloc` proves the chunk was
                // not reactivated since, which resets it.
                let life = self.state().1;
                match h.alloc.compare_exchange_weak(
                    cur,
                    cur | ALLOC_SEALED,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        self.stamp_sealed(life, now_ms);
                        return Reserve::Sealed;
                    }
                    Err(actual) => {
                        cur = actual;
                        continue;
                    }
                }
            }
            let next = (cur & !0xFFFF_FFFF) | end as u64;
            // Acquire: pairs with the Release store of `alloc` in `activate`.
            match h
                .alloc
                .compare_exchange_weak(cur, next, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => {
                    let (state, generation) = self.state();
                    if state != STATE_IN_USE {
                        // Only possible if another process scribbled on the
                        // header: the space stays unwritten (so the chunk can
                        // only go by TTL, and is then retired); move on.
                        self.seal(generation, now_ms);
                        return Reserve::Sealed;
                    }
                    return Reserve::Reserved {
                        offset: used as u32,
                        end: end as u32,
                        generation,
                    };
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// The part of the chunk this process may write to, `(ready, len)`, if
    /// it is not all of it (a new chunk being backed in steps): the lower
    /// of the shared `ready` and this process's own mark.
    pub(crate) fn ready(&self) -> Option<(usize, usize)> {
        // Acquire: pairs with the AcqRel CAS in `mark_ready`.
        let shared = match self.header().ready.load(Ordering::Acquire) as usize {
            0 => self.len,
            r => r.min(self.len),
        };
        let r = shared.min(self.local_mark());
        (r < self.len).then_some((r, self.len))
    }

    /// Records that this process backed the memory up to `to`: its own
    /// mark, and the shared one if it is behind (never moved back).
    /// AcqRel: pairs with the Acquire load in `ready`: a writer in another
    /// process that sees the new mark also sees that the memory exists.
    pub(crate) fn mark_ready(&self, to: usize) {
        if let Some(m) = self.local {
            // SAFETY: see `local_mark`.
            unsafe { m.as_ref() }.fetch_max(to.min(self.len), Ordering::Relaxed);
        }
        let word = &self.header().ready;
        let mut cur = word.load(Ordering::Acquire);
        while cur != 0 && (cur as usize) < to {
            let next = if to >= self.len { 0 } else { to as u32 };
            match word.compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// Writes the entry and publishes it — with plain stores only: the
    /// entry's state word, tagged with the generation, is the completion
    /// signal (Release), so no locked instruction waits for the payload's
    /// stores to drain. Reclaimers find out that every reserved entry is
    /// committed by walking the entries (see `walk`).
    ///
    /// # Safety
    /// `offset` must come from a [`Reserve::Reserved`] of this region in
    /// `generation` for an entry of `data.len()` bytes, not yet committed:
    /// the bytes there belong to the caller alone until this returns.
    pub(crate) unsafe fn commit(
        &self,
        offset: u32,
        generation: u32,
        data: &[u8],
        tag: u64,
        now_ms: u64,
    ) {
        // SAFETY: forwarded contract.
        unsafe { self.write_payload(offset, data) };
        // SAFETY: the caller's reservation, now holding `data.len()` bytes.
        unsafe { self.commit_written(offset, generation, data.len() as u32, tag, now_ms) };
    }

    /// Copies `data` into the payload of the entry reserved at `offset`,
    /// without publishing it.
    ///
    /// # Safety
    /// As for [`commit`](Self::commit).
    pub(crate) unsafe fn write_payload(&self, offset: u32, data: &[u8]) {
        if self.entry(offset as usize).is_none() {
            return; // Unreachable for a valid reservation.
        }
        crate::hooks::at(crate::hooks::Point::Copying);
        // SAFETY: the caller reserved [offset, offset + footprint) and
        // footprint >= ENTRY_HEADER_SIZE + data.len(), inside the region;
        // nobody reads these bytes before `commit_written` publishes them.
        unsafe {
            crate::copy::copy_payload(
                self.payload_mut(offset),
                data.as_ptr(),
                data.len(),
                self.len,
            );
        }
    }

    /// Start of the payload of the entry reserved at `offset` (header
    /// offset, from [`Reserve::Reserved`]): where a writer fills it in place.
    pub(crate) fn payload_mut(&self, offset: u32) -> *mut u8 {
        self.base
            .as_ptr()
            .wrapping_add(offset as usize + ENTRY_HEADER_SIZE)
    }

    /// Publishes an entry whose `len` payload bytes the caller has already
    /// written in place (through [`payload_mut`](Self::payload_mut)).
    ///
    /// # Safety
    /// As for [`commit`](Self::commit), with the payload already written.
    pub(crate) unsafe fn commit_written(
        &self,
        offset: u32,
        generation: u32,
        len: u32,
        tag: u64,
        now_ms: u64,
    ) {
        let h = self.header();
        let Some(e) = self.entry(offset as usize) else {
            return; // Unreachable for a valid reservation.
        };
        e.len.store(len, Ordering::Relaxed);
        e.tag.store(tag, Ordering::Relaxed);
        // Before publishing: once published, the chunk may be reclaimed and
        // this stamp would land on its next life.
        if h.first_write_ms.load(Ordering::Relaxed) == 0 {
            let _ =
                h.first_write_ms
                    .compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed);
        }
        // Release: pairs with the Acquire loads of the state in `locate` and
        // `walk`: whoever sees it committed sees the length, tag and payload.
        e.state
            .store(entry_state(generation, ENTRY_COMMITTED), Ordering::Release);
    }

    /// Advances `cursor` — an `offset | generation << 32` word — over the
    /// entries of `generation` whose kind `accept` admits, from where the
    /// last walk of this generation stopped (or the first entry) up to the
    /// first entry it does not admit. Returns whether it reached `used`.
    /// Reads only entry headers, bounds-checks every length, and can never
    /// move a cursor of one generation with a walk of another: the CAS
    /// compares the whole word, generation included.
    fn advance(&self, cursor: &AtomicU64, generation: u32, accept: impl Fn(u32) -> bool) -> bool {
        let h = self.header();
        // Acquire: pairs with the reservation CASes; on a sealed chunk
        // `used` is final.
        let used = alloc_used(h.alloc.load(Ordering::Acquire)) as usize;
        // Acquire: pairs with the AcqRel CAS below in another reclaimer.
        let w = cursor.load(Ordering::Acquire);
        let mut off = if generation_of(w) == generation {
            id_of(w) as usize
        } else {
            CHUNK_HEADER_SIZE
        };
        let start = off;
        while off < used {
            let Some(e) = self.entry(off) else { break };
            // Acquire: pairs with the Release store in `commit` (and the
            // AcqRel CAS in `acknowledge`).
            let st = e.state.load(Ordering::Acquire);
            if !entry_in_generation(st, generation) || !accept(entry_kind(st)) {
                break; // Not yet written (a writer in flight, or dead), or not acknowledged.
            }
            let len = e.len.load(Ordering::Relaxed);
            let Some(fp) = entry_footprint(len as usize) else {
                break;
            };
            if off + fp > used {
                break; // Scribbled: the chunk never completes; TTL retires it.
            }
            // The keyed tag (written before the state's Release store):
            // bytes of an earlier life that imitate a header of this one —
            // a payload crafted to — do not have it.
            let tag = entry_tag(
                h.incarnation.load(Ordering::Relaxed),
                h.chunk_id.load(Ordering::Relaxed),
                generation,
                off as u32,
                len,
            );
            if e.tag.load(Ordering::Relaxed) != tag {
                break;
            }
            off += fp;
        }
        if off != start || generation_of(w) != generation {
            let next = ((generation as u64) << 32) | off as u64;
            let _ = cursor.compare_exchange(w, next, Ordering::AcqRel, Ordering::Relaxed);
        }
        off == used
    }

    /// Whether every entry reserved in `generation` is committed — so, on
    /// a sealed chunk, no writer is in flight.
    pub(crate) fn walk(&self, generation: u32) -> bool {
        self.advance(&self.header().walked, generation, |k| {
            matches!(k, ENTRY_COMMITTED | ENTRY_ACKED)
        })
    }

    /// Whether every entry of `generation` is acknowledged. Every entry up
    /// to where this walk got is then committed too, so it moves the
    /// `walked` cursor there as well: [`walk`](Self::walk) does not read
    /// the same entries a second time.
    pub(crate) fn all_acknowledged(&self, generation: u32) -> bool {
        let h = self.header();
        let done = self.advance(&h.acked, generation, |k| k == ENTRY_ACKED);
        // Acquire: pairs with the AcqRel CASes of the cursors.
        let acked = h.acked.load(Ordering::Acquire);
        let walked = h.walked.load(Ordering::Acquire);
        if generation_of(acked) == generation
            && (generation_of(walked) != generation || id_of(walked) < id_of(acked))
        {
            // A CAS: a walk that got further meanwhile keeps its cursor.
            let _ = h
                .walked
                .compare_exchange(walked, acked, Ordering::AcqRel, Ordering::Relaxed);
        }
        done
    }

    /// Seals the chunk (no more reservations) and stamps the seal time —
    /// only in life `generation`, the one the caller judged: a caller that
    /// stalled while the chunk was recycled and reactivated must not seal
    /// or stamp the next life.
    pub(crate) fn seal(&self, generation: u32, now_ms: u64) {
        if self.state().1 != generation {
            return;
        }
        self.header()
            .alloc
            .fetch_or(ALLOC_SEALED, Ordering::Relaxed);
        self.stamp_sealed(generation, now_ms);
    }

    /// Stamps the seal time once per generation. A stamper that stalled
    /// across a recycling would write a stale time into the next
    /// generation (shortening its TTL): it takes its stamp back then.
    fn stamp_sealed(&self, generation: u32, now_ms: u64) {
        Self::stamp_once(
            &self.header().sealed_ms,
            &self.header().state_gen,
            generation,
            now_ms,
        );
    }

    /// Sets `word` from 0 to `now_ms` in life `generation` only: checked
    /// before the CAS (a stamper that stalled across a recycling and a
    /// reactivation finds another generation and stamps nothing — the
    /// activation zeroed the word for the new life), and after it (a
    /// recycling between the check and the CAS: the stamp is taken back).
    /// Returns the word's value for `generation` (`now_ms` if it stamped).
    fn stamp_once(word: &AtomicU64, state: &AtomicU64, generation: u32, now_ms: u64) -> u64 {
        if generation_of(state.load(Ordering::Acquire)) != generation {
            return now_ms;
        }
        match word.compare_exchange(0, now_ms, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => {
                if generation_of(state.load(Ordering::Acquire)) != generation {
                    let _ = word.compare_exchange(now_ms, 0, Ordering::Relaxed, Ordering::Relaxed);
                }
                now_ms
            }
            Err(current) => current,
        }
    }

    /// Takes an activated chunk that lost the race to become the append
    /// target back to FREE.
    pub(crate) fn try_deactivate(&self, generation: u32, now_ms: u64) -> Deactivate {
        let h = self.header();
        let fresh = CHUNK_HEADER_SIZE as u64;
        if h.alloc
            .compare_exchange(
                fresh,
                fresh | ALLOC_SEALED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            // A writer reserved in it through a stale view of `active`.
            return Deactivate::InUse;
        }
        h.empty_since_ms.store(now_ms, Ordering::Relaxed);
        // A CAS, not a store: a reclaimer may have taken the (sealed, empty)
        // chunk while we stalled, and recycled or retired it already.
        match h.state_gen.compare_exchange(
            state_gen(STATE_IN_USE, generation),
            state_gen(STATE_FREE, generation),
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => Deactivate::Free,
            Err(_) => Deactivate::Lost,
        }
    }

    /// Registers a reader. Validate (with [`locate`](Self::locate)) after
    /// pinning, never before.
    pub(crate) fn pin(&self) -> PinGuard<'_> {
        // SeqCst: the reader half of the Dekker pair with `claim` + `recyclable`.
        self.header().pins.fetch_add(1, Ordering::SeqCst);
        PinGuard { region: self }
    }

    /// Removes a pin that outlived its borrow (a view's, see `engine::pin_bytes`).
    pub(crate) fn unpin_raw(&self) {
        // Release: the reader's accesses happen before a reclaimer's reuse
        // (the reclaimer's AcqRel read-modify-write of `pins` acquires).
        self.header().pins.fetch_sub(1, Ordering::Release);
    }

    /// Finds the payload of an entry named by a handle, or `None` if the
    /// handle is stale, reclaimed, forged or out of bounds. Returns the
    /// payload offset. Call with a pin held.
    pub(crate) fn locate(
        &self,
        generation: u32,
        offset: u32,
        size: u32,
        tag: u64,
    ) -> Option<usize> {
        self.find(generation, offset, size, tag).ok()
    }

    /// Why [`locate`](Self::locate) finds no entry for a handle, read at
    /// this moment (the slow path of a checked resolve): `Ok(())` if it
    /// would find one now.
    pub(crate) fn why_unlocated(
        &self,
        generation: u32,
        offset: u32,
        size: u32,
        tag: u64,
    ) -> Result<(), Unlocated> {
        self.find(generation, offset, size, tag).map(|_| ())
    }

    /// The checks of [`locate`](Self::locate), each failure named: the
    /// payload offset of the entry, or which check refused the handle.
    #[inline]
    fn find(&self, generation: u32, offset: u32, size: u32, tag: u64) -> Result<usize, Unlocated> {
        // SeqCst: pairs with the SeqCst pin increment and the claim CAS.
        let w = self.header().state_gen.load(Ordering::SeqCst);
        if state_of(w) != STATE_IN_USE || generation_of(w) != generation {
            return Err(Unlocated::Stale);
        }
        let offset = offset as usize;
        let Some(footprint) = entry_footprint(size as usize) else {
            return Err(Unlocated::Invalid("its size is out of range"));
        };
        if offset
            .checked_add(footprint)
            .is_none_or(|end| end > self.len)
        {
            return Err(Unlocated::Invalid("it points past the end of its chunk"));
        }
        let Some(e) = self.entry(offset) else {
            return Err(Unlocated::Invalid("its offset is not an entry offset"));
        };
        // Acquire: pairs with the Release store of COMMITTED in `commit`.
        let st = e.state.load(Ordering::Acquire);
        if !entry_in_generation(st, generation)
            || !matches!(entry_kind(st), ENTRY_COMMITTED | ENTRY_ACKED)
        {
            return Err(Unlocated::Invalid("no entry was written at its offset"));
        }
        if e.len.load(Ordering::Relaxed) != size || e.tag.load(Ordering::Relaxed) != tag {
            return Err(Unlocated::Invalid(
                "it does not match the entry at its offset (forged, corrupted, or from another store)",
            ));
        }
        Ok(offset + ENTRY_HEADER_SIZE)
    }

    /// Acknowledges an entry: `true` the first time for a live entry,
    /// `false` for a repeat, a stale or a forged handle.
    pub(crate) fn acknowledge(&self, generation: u32, offset: u32, size: u32, tag: u64) -> bool {
        let pin = self.pin();
        let counted = pin.acknowledge(generation, offset, size, tag);
        if counted {
            pin.stamp_acknowledged();
        }
        counted
    }

    /// Entries written in `generation` (committed or acknowledged) and how
    /// many of them are acknowledged, counted from the first entry up to
    /// the first one not written (for reports; pinned while it reads).
    pub(crate) fn count_entries(&self, generation: u32) -> (u32, u32) {
        let _pin = self.pin();
        // Judged after the pin: a chunk recycled since the caller read its
        // generation holds another life's bytes, being written.
        if self.state().1 != generation {
            return (0, 0);
        }
        let used = alloc_used(self.header().alloc.load(Ordering::Acquire)) as usize;
        let (mut off, mut entries, mut acked) = (CHUNK_HEADER_SIZE, 0, 0);
        while off < used {
            let Some(e) = self.entry(off) else { break };
            // Acquire: pairs with the Release store in `commit`.
            let st = e.state.load(Ordering::Acquire);
            if !entry_in_generation(st, generation) {
                break;
            }
            match entry_kind(st) {
                ENTRY_COMMITTED => {}
                ENTRY_ACKED => acked += 1,
                _ => break,
            }
            let Some(fp) = entry_footprint(e.len.load(Ordering::Relaxed) as usize) else {
                break;
            };
            entries += 1;
            off += fp;
        }
        (entries, acked)
    }

    /// Decides whether this chunk may be reclaimed now.
    ///
    /// A chunk qualifies when it is IN_USE and sealed, and either every
    /// reserved entry is committed and acknowledged and the decay period has
    /// passed since the last acknowledgement (stamped by `acknowledge`; a
    /// chunk with no entries is stamped by the first pass that sees it), or
    /// `ttl_ms` has passed since it was
    /// sealed (writers that never committed are presumed dead then).
    ///
    /// Pinned for its whole walk: a chunk recycled and rewritten while a
    /// pass walked it would have the pass read a new life's payload bytes
    /// as entry headers (atomic reads racing the writer's plain copy, a data
    /// race ThreadSanitizer reported). With the pin, a reclaimer that claims
    /// the chunk meanwhile retires it instead of recycling it.
    pub(crate) fn assess(&self, now_ms: u64, ttl_ms: u64, decay_ms: u64) -> Verdict {
        let _pin = self.pin();
        let h = self.header();
        let (state, generation) = self.state();
        if state != STATE_IN_USE {
            return Verdict::Keep;
        }
        if !alloc_sealed(h.alloc.load(Ordering::Acquire)) {
            return Verdict::Keep;
        }
        let sealed = h.sealed_ms.load(Ordering::Relaxed);
        if sealed == SEALED_ACTIVATING {
            // Being activated: not sealed for real. An activator that died
            // here left it so; after a TTL it is treated as sealed (only if
            // the chunk is still in the life we judged).
            let since = h.activated_ms.load(Ordering::Relaxed);
            if now_ms.saturating_sub(since) >= ttl_ms
                && h.sealed_ms
                    .compare_exchange(
                        SEALED_ACTIVATING,
                        now_ms,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                && self.state() != (STATE_IN_USE, generation)
            {
                let _ = h.sealed_ms.compare_exchange(
                    now_ms,
                    SEALED_ACTIVATING,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            return Verdict::Keep;
        }
        if sealed == 0 {
            // The sealer died before stamping: start the clock now.
            self.stamp_sealed(generation, now_ms);
            return Verdict::Keep;
        }
        if now_ms.saturating_sub(sealed) >= ttl_ms {
            return Verdict::Reclaim {
                generation,
                expired: true,
            };
        }
        // Acknowledged first: acknowledged entries are committed, so a
        // complete acknowledged walk completes the other (one pass over
        // the entries, not two).
        if !self.all_acknowledged(generation) || !self.walk(generation) {
            return Verdict::Keep;
        }
        let since = Self::stamp_once(&h.empty_since_ms, &h.state_gen, generation, now_ms);
        if now_ms.saturating_sub(since) >= decay_ms {
            Verdict::Reclaim {
                generation,
                expired: false,
            }
        } else {
            Verdict::Decaying
        }
    }

    /// Claims the chunk for reclamation; only one caller wins per generation.
    pub(crate) fn claim(&self, generation: u32) -> bool {
        let h = self.header();
        // SeqCst: the reclaimer half of the Dekker pair with `pin` + `locate`.
        let won = h
            .state_gen
            .compare_exchange(
                state_gen(STATE_IN_USE, generation),
                state_gen(STATE_RECLAIMING, generation),
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_ok();
        if won {
            // A claimer killed before this store leaves 0: the first pass
            // that sees the claim starts the clock instead.
            h.claimed_ms
                .store(crate::clock::now_ms().max(1), Ordering::Relaxed);
        }
        won
    }

    /// Whether the claim of `generation` is older than `grace_ms` (its
    /// claimer presumed dead); a claim with no time yet gets one now.
    pub(crate) fn claim_expired(&self, generation: u32, now_ms: u64, grace_ms: u64) -> bool {
        let h = self.header();
        if self.state() != (STATE_RECLAIMING, generation) {
            return false;
        }
        let at = h.claimed_ms.load(Ordering::Relaxed);
        if at == 0 {
            let _ = h.claimed_ms.compare_exchange(
                0,
                now_ms.max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            return false;
        }
        now_ms.saturating_sub(at) >= grace_ms
    }

    /// Retires a chunk claimed in `generation` by a claimer presumed dead:
    /// one CAS, so exactly one party (this pass, or the claimer itself
    /// recycling late) decides the chunk's fate.
    pub(crate) fn retire_claimed(&self, generation: u32) -> bool {
        let h = self.header();
        let won = h
            .state_gen
            .compare_exchange(
                state_gen(STATE_RECLAIMING, generation),
                state_gen(STATE_RETIRED, generation),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok();
        if won {
            h.alloc.fetch_or(ALLOC_SEALED, Ordering::Relaxed);
        }
        won
    }

    /// After a successful [`claim`](Self::claim): whether the memory may be
    /// reused in place (no reader pinned, every reserved entry committed —
    /// so no writer in flight — and a standard chunk). Otherwise the chunk
    /// must be retired.
    pub(crate) fn recyclable(&self) -> bool {
        let h = self.header();
        // A read-modify-write, not a load: RMWs on `pins` are totally
        // ordered, so either this reads after a reader's increment (and we
        // retire), or the reader's increment reads from this RMW, which then
        // synchronizes with it (AcqRel) and the reader's later load of
        // `state_gen` must see our claim. This holds under acquire/release
        // alone; a plain load would need SeqCst's store-buffering guarantee.
        let pins = h.pins.fetch_add(0, Ordering::AcqRel);
        let (_, generation) = self.state();
        pins == 0 && !self.is_dedicated() && self.walk(generation)
    }

    /// Recycles a chunk claimed in `generation` in place: new generation,
    /// empty, FREE and sealed until activated again. Old handles no longer
    /// validate. A CAS from RECLAIMING of that generation: `false` if a pass
    /// that presumed this claimer dead retired the chunk meanwhile (then it
    /// stays retired; a slow claimer cannot revive it).
    pub(crate) fn recycle(&self, generation: u32, new_generation: u32, now_ms: u64) -> bool {
        let h = self.header();
        h.alloc
            .store(CHUNK_HEADER_SIZE as u64 | ALLOC_SEALED, Ordering::Relaxed);
        h.acks.store(0, Ordering::Relaxed);
        h.first_write_ms.store(0, Ordering::Relaxed);
        h.sealed_ms.store(0, Ordering::Relaxed);
        h.empty_since_ms.store(now_ms, Ordering::Relaxed);
        h.claimed_ms.store(0, Ordering::Relaxed);
        // Release: pairs with the Acquire load in `state` of whoever pops
        // the chunk from the pool.
        h.state_gen
            .compare_exchange(
                state_gen(STATE_RECLAIMING, generation),
                state_gen(STATE_FREE, new_generation),
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Marks a claimed (or exclusively owned FREE) chunk RETIRED: no handle
    /// validates any more; the memory stays valid for existing mappings.
    pub(crate) fn mark_retired(&self) {
        let h = self.header();
        let generation = generation_of(h.state_gen.load(Ordering::Relaxed));
        h.alloc.fetch_or(ALLOC_SEALED, Ordering::Relaxed);
        h.state_gen
            .store(state_gen(STATE_RETIRED, generation), Ordering::Release);
    }

    /// Since when a FREE chunk has been idle: its freeing (or making), or a
    /// later activation attempt. An activation resets `empty_since_ms` a
    /// moment before its CAS takes the chunk out of FREE; measured from
    /// `empty_since_ms` alone, a pass would find the chunk idle for ever
    /// in that moment and retire it under its activator. An activator
    /// that dies in that moment leaves the chunk idle from its
    /// `activated_ms`, so the pass still releases it later.
    pub(crate) fn free_since(&self) -> u64 {
        let h = self.header();
        // Acquire: pairs with the Release reset in `activate`.
        let freed = h.empty_since_ms.load(Ordering::Acquire);
        freed.max(h.activated_ms.load(Ordering::Relaxed))
    }

    /// Retires a FREE chunk of generation `generation` (pooled and idle).
    pub(crate) fn retire_free(&self, generation: u32) -> bool {
        self.header()
            .state_gen
            .compare_exchange(
                state_gen(STATE_FREE, generation),
                state_gen(STATE_RETIRED, generation),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }
}

/// A pin held for the duration of a borrow.
pub(crate) struct PinGuard<'a> {
    region: &'a ChunkRegion,
}

impl Drop for PinGuard<'_> {
    fn drop(&mut self) {
        // Release: the reader's accesses happen before a reclaimer's reuse
        // (the reclaimer's AcqRel read-modify-write of `pins` acquires).
        self.region.header().pins.fetch_sub(1, Ordering::Release);
    }
}

impl PinGuard<'_> {
    /// Acknowledges an entry of the pinned chunk: `true` the first time for
    /// a live entry, `false` for a repeat, a stale or a forged handle. One
    /// read-modify-write (the entry's CAS); the caller stamps the decay
    /// with [`stamp_acknowledged`](Self::stamp_acknowledged) after one or
    /// more of these.
    pub(crate) fn acknowledge(&self, generation: u32, offset: u32, size: u32, tag: u64) -> bool {
        let r = self.region;
        if r.locate(generation, offset, size, tag).is_none() {
            return false;
        }
        let Some(e) = r.entry(offset as usize) else {
            return false;
        };
        // AcqRel: pairs with the Acquire loads of entry states in the walks
        // of `assess` (Release) and with the commit's Release store.
        e.state
            .compare_exchange(
                entry_state(generation, ENTRY_COMMITTED),
                entry_state(generation, ENTRY_ACKED),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Moves the decay stamp to now: the decay runs from the last
    /// acknowledgement, so when the last entry is acknowledged the stamp is
    /// that moment, not the first pass that notices it. Safe in this life
    /// only: the pin keeps the chunk from being recycled and reactivated
    /// (which zeroes the word) under us. A plain store, not a `fetch_max`:
    /// a stamp is a time for the decay (a grace period, not a safety
    /// guarantee), and an acknowledger that read the clock a moment before
    /// another and stores after it only moves the stamp back by that moment;
    /// a read-modify-write per acknowledgement cost more than the rest of
    /// it. Relaxed: a pass reads it after seeing every entry acknowledged,
    /// and stamps it itself if it is still 0.
    pub(crate) fn stamp_acknowledged(&self) {
        self.region
            .header()
            .empty_since_ms
            .store(crate::clock::now_ms(), Ordering::Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Process-local memory for a region: u64 words keep it 8-aligned.
    struct Mem(Box<[std::cell::UnsafeCell<u64>]>);

    impl Mem {
        fn new(len: usize) -> Self {
            Self(
                (0..len / 8)
                    .map(|_| std::cell::UnsafeCell::new(0))
                    .collect(),
            )
        }
        fn region(&self) -> ChunkRegion {
            let base = NonNull::new(self.0.as_ptr() as *mut u8).unwrap();
            // SAFETY: the boxed words are aligned, zeroed and outlive the
            // region in every test; UnsafeCell permits shared mutation.
            unsafe { ChunkRegion::new(base, self.0.len() * 8) }
        }
    }

    fn append(r: &ChunkRegion, data: &[u8], now: u64) -> Option<(u32, u32, u64)> {
        let fp = entry_footprint(data.len()).unwrap() as u32;
        match r.reserve(fp, now) {
            Reserve::Reserved {
                offset, generation, ..
            } => {
                let tag = entry_tag(7, 0, generation, offset, data.len() as u32);
                // SAFETY: offset was just reserved for this data.
                unsafe { r.commit(offset, generation, data, tag, now) };
                Some((generation, offset, tag))
            }
            Reserve::Sealed | Reserve::NotReady => None,
        }
    }

    fn read(r: &ChunkRegion, g: u32, off: u32, len: usize, tag: u64) -> Option<Vec<u8>> {
        let _pin = r.pin();
        let p = r.locate(g, off, len as u32, tag)?;
        // SAFETY: locate checked bounds; the pin keeps the bytes stable.
        Some(unsafe { std::slice::from_raw_parts(r.payload_ptr(p), len) }.to_vec())
    }

    /// A freshly made chunk is FREE and sealed: nothing can reserve in it
    /// before an activation opens it.
    #[test]
    fn a_fresh_chunk_takes_no_reservation_before_activation() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(3, 9, 0, 7, 1, 0);
        assert_eq!(r.state(), (STATE_FREE, 9));
        assert!(matches!(r.reserve(64, 1), Reserve::Sealed));
        assert!(r.activate(9, 10, 1));
        assert!(matches!(r.reserve(64, 1), Reserve::Reserved { .. }));
    }

    /// An entry header is read only at an aligned offset past the chunk
    /// header with a whole header before the end: anything else (a forged
    /// offset) is refused before any reference is made.
    #[test]
    fn entry_headers_are_read_only_at_valid_offsets() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        assert!(r.activate(1, 1, 1));
        let (g, off, tag) = append(&r, b"x", 1).unwrap();
        assert!(r.entry(off as usize).is_some());
        for bad in [0, 8, 120, off as usize + 3, 4096 - 8, 4096, usize::MAX - 4] {
            assert!(r.entry(bad).is_none(), "offset {bad}");
        }
        for bad in [0u32, 120, off + 3, 4096 - 8, u32::MAX - 4] {
            assert!(r.locate(g, bad, 1, tag).is_none(), "offset {bad}");
            assert!(r.why_unlocated(g, bad, 1, tag).is_err(), "offset {bad}");
        }
    }

    /// The header check refuses a wrong magic, id, size or incarnation.
    #[test]
    fn the_header_check_refuses_every_mismatch() {
        let m = Mem::new(4096);
        let r = m.region();
        assert!(r.check_header(3, 7).is_err(), "no magic yet");
        r.format(3, 9, 0, 7, 1, 0);
        assert_eq!(r.check_header(3, 7), Ok(()));
        assert!(r.check_header(4, 7).is_err(), "another id");
        assert!(r.check_header(3, 8).is_err(), "another incarnation");
        r.header().size.store(8192, Ordering::Relaxed);
        assert!(r.check_header(3, 7).is_err(), "another size");
    }

    #[test]
    fn reserve_commit_locate_round_trip() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        assert_eq!(
            append(&r, b"x", 5),
            None,
            "a formatted chunk is sealed until activated"
        );
        assert!(r.activate(1, 1, 1));
        let (g, off, tag) = append(&r, b"hello", 5).unwrap();
        assert_eq!(read(&r, g, off, 5, tag).as_deref(), Some(&b"hello"[..]));
        assert_eq!(read(&r, g + 1, off, 5, tag), None, "wrong generation");
        assert_eq!(read(&r, g, off, 4, tag), None, "wrong size");
        assert_eq!(read(&r, g, off, 5, tag ^ 1), None, "wrong tag");
        assert_eq!(read(&r, g, off + 8, 5, tag), None, "wrong offset");
        assert_eq!(read(&r, g, u32::MAX - 3, 5, tag), None, "out of bounds");
    }

    #[test]
    fn full_chunk_seals_and_stamps() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        assert!(r.activate(1, 1, 1));
        let mut n = 0;
        while append(&r, &[1u8; 100], 42).is_some() {
            n += 1;
        }
        assert_eq!(n, (4096 - 128) / 120);
        assert_eq!(r.header().sealed_ms.load(Ordering::Relaxed), 42);
        assert!(r.walk(1));
    }

    #[test]
    fn the_walk_stops_at_an_uncommitted_entry_and_resumes() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        assert!(r.activate(1, 1, 1));
        append(&r, b"one", 1).unwrap();
        let fp = entry_footprint(3).unwrap() as u32;
        let Reserve::Reserved {
            offset, generation, ..
        } = r.reserve(fp, 1)
        else {
            panic!()
        };
        append(&r, b"three", 1).unwrap();
        r.seal(r.state().1, 1);
        assert!(!r.walk(1), "stops at the writer in flight");
        let stopped = r.header().walked.load(Ordering::Relaxed);
        assert_eq!(
            (generation_of(stopped), id_of(stopped)),
            (1, 128 + 24),
            "cursor at the writer"
        );
        // SAFETY: offset was reserved above for 3 bytes.
        unsafe {
            r.commit(
                offset,
                generation,
                b"two",
                entry_tag(7, 0, generation, offset, 3),
                1,
            )
        };
        assert!(r.walk(1), "resumes and completes");
        assert_eq!(
            r.header().walked.load(Ordering::Relaxed),
            (1u64 << 32) | u64::from(alloc_used(r.header().alloc.load(Ordering::Relaxed))),
            "the cursor moved to the end: the next walk starts there"
        );
        assert!(!r.all_acknowledged(1));
        // Entries of another generation never count, and a cursor of one
        // generation is never resumed by a walk of another.
        assert!(!r.walk(2));
        assert_eq!(id_of(r.header().walked.load(Ordering::Relaxed)), 128);
    }

    #[test]
    fn a_payload_imitating_the_next_lifes_headers_never_passes_the_walk() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        assert!(r.activate(1, 2, 1));
        // Every handle discloses its generation, and the next one is
        // predictable: a producer fills its payload with what a committed
        // entry header of generation 3 looks like, [len 8, state, tag].
        // (8 bytes first: the next life's second entry starts 8 bytes into
        // this payload.)
        let mut crafted = vec![0u8; 8];
        while crafted.len() < 3000 {
            crafted.extend_from_slice(&8u32.to_le_bytes());
            crafted.extend_from_slice(&entry_state(3, ENTRY_COMMITTED).to_le_bytes());
            crafted.extend_from_slice(&0x5eed_u64.to_le_bytes());
        }
        let (g, off, tag) = append(&r, &crafted, 1).unwrap();
        r.seal(2, 1);
        assert!(r.acknowledge(g, off, crafted.len() as u32, tag));
        assert!(matches!(r.assess(5, 1_000, 0), Verdict::Reclaim { .. }));
        assert!(r.claim(2));
        assert!(r.recycle(2, 3, 5));
        assert!(r.activate(3, 3, 6));
        // Life 3: a writer reserves at an offset where the old payload left
        // a perfect imitation of a committed header, and is still copying.
        let first = append(&r, &[1u8; 8], 7).unwrap();
        assert_eq!(first.0, 3);
        let fp = entry_footprint(8).unwrap() as u32;
        let Reserve::Reserved { offset, .. } = r.reserve(fp, 7) else {
            panic!()
        };
        let e = r.entry(offset as usize).unwrap();
        assert_eq!(
            e.state.load(Ordering::Relaxed),
            entry_state(3, ENTRY_COMMITTED)
        );
        assert_eq!(e.len.load(Ordering::Relaxed), 8);
        r.seal(3, 8);
        // The walk must not take the imitation for a committed entry: the
        // chunk would then be recycled under the writer in flight.
        assert!(!r.walk(3), "an unwritten reservation passed for committed");
    }

    #[test]
    fn a_cursor_of_an_earlier_life_never_vouches_for_a_later_one() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        assert!(r.activate(1, 2, 1));
        append(&r, b"aaaa", 1).unwrap();
        append(&r, b"bbbb", 1).unwrap();
        r.seal(r.state().1, 1);
        assert!(r.walk(2), "generation 2 complete");
        let cursor_of_2 = r.header().walked.load(Ordering::Relaxed);
        // Recycled and activated again; the same layout is being written.
        assert!(r.claim(2));
        assert!(r.recycle(2, 3, 1));
        assert!(r.activate(3, 4, 1));
        append(&r, b"cccc", 1).unwrap();
        let fp = entry_footprint(4).unwrap() as u32;
        assert!(matches!(r.reserve(fp, 1), Reserve::Reserved { .. })); // in flight
        r.seal(r.state().1, 1);
        // A stalled walker of generation 2 now writes its stale cursor back.
        r.header().walked.store(cursor_of_2, Ordering::Relaxed);
        assert!(
            !r.walk(4),
            "the in-flight writer of generation 4 is still seen"
        );
        assert!(!r.recyclable(), "never recycled under that writer");
    }

    #[test]
    fn a_stale_verdict_cannot_claim_a_reactivated_chunk() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        // Activated as 2, lost the race for `active`, handed back to FREE(2).
        assert!(r.activate(1, 2, 1));
        assert_eq!(r.try_deactivate(2, 1), Deactivate::Free);
        // A reclaimer judged the chunk in generation 2 (sealed and empty)...
        let stale = 2;
        // ...then the chunk was popped and activated again: a fresh generation.
        assert!(r.activate(2, 3, 1));
        append(&r, b"live", 1).unwrap();
        assert!(
            !r.claim(stale),
            "the verdict of an earlier life must not apply"
        );
        assert_eq!(r.state(), (STATE_IN_USE, 3));
    }

    #[test]
    fn a_complete_acknowledged_walk_completes_the_committed_walk() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        assert!(r.activate(1, 1, 1));
        let (g, off, tag) = append(&r, b"abc", 1).unwrap();
        append(&r, b"de", 1).unwrap();
        assert!(r.acknowledge(g, off, 3, tag));
        assert!(!r.all_acknowledged(g), "one entry left");
        let h = r.header();
        assert_eq!(
            h.walked.load(Ordering::Relaxed),
            h.acked.load(Ordering::Relaxed)
        );
        assert_eq!(r.count_entries(g), (2, 1));
        assert!(r.walk(g), "both committed");
        assert_ne!(
            h.walked.load(Ordering::Relaxed),
            h.acked.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn acknowledgement_is_idempotent_and_rejects_stale() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        assert!(r.activate(1, 1, 1));
        let (g, off, tag) = append(&r, b"abc", 1).unwrap();
        assert!(r.acknowledge(g, off, 3, tag));
        assert!(!r.acknowledge(g, off, 3, tag), "second ack must not count");
        assert!(!r.acknowledge(g + 1, off, 3, tag));
        assert_eq!(r.count_entries(g), (1, 1));
        assert_eq!(
            read(&r, g, off, 3, tag).as_deref(),
            Some(&b"abc"[..]),
            "acked data stays readable until reclaimed"
        );
    }

    #[test]
    fn no_reclamation_with_a_writer_in_flight() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        assert!(r.activate(1, 1, 1));
        let fp = entry_footprint(8).unwrap() as u32;
        let Reserve::Reserved {
            offset, generation, ..
        } = r.reserve(fp, 1)
        else {
            panic!()
        };
        r.seal(r.state().1, 1);
        // Everything committed is acknowledged (nothing is), decay 0: still kept.
        assert_eq!(r.assess(10, 1_000, 0), Verdict::Keep);
        let tag = entry_tag(7, 0, generation, offset, 8);
        // SAFETY: offset was reserved above for 8 bytes.
        unsafe { r.commit(offset, generation, &[9; 8], tag, 1) };
        assert_eq!(
            r.assess(10, 1_000, 0),
            Verdict::Keep,
            "one unacknowledged entry"
        );
        assert!(r.acknowledge(generation, offset, 8, tag));
        assert_eq!(
            r.assess(10, 1_000, 0),
            Verdict::Reclaim {
                generation,
                expired: false
            }
        );
    }

    #[test]
    fn a_claim_whose_claimer_died_is_finished_and_a_late_claimer_cannot_revive_it() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        assert!(r.activate(1, 2, 1));
        r.seal(2, 1);
        assert!(matches!(r.assess(5, 1_000, 0), Verdict::Reclaim { .. }));
        assert!(r.claim(2));
        // Killed right after the claim (before it stamped): the first look
        // starts the clock, the grace period then expires it.
        r.header().claimed_ms.store(0, Ordering::Relaxed);
        assert!(!r.claim_expired(2, 100, 50));
        assert!(!r.claim_expired(2, 120, 50));
        assert!(r.claim_expired(2, 150, 50));
        assert!(r.retire_claimed(2));
        assert!(!r.retire_claimed(2), "one party decides");
        // The claimer was only slow: its recycling fails, the chunk stays
        // retired (no pooled FREE chunk with a released file).
        assert!(!r.recycle(2, 3, 160));
        assert_eq!(r.state(), (STATE_RETIRED, 2));
    }

    #[test]
    fn a_late_timestamp_never_lands_in_the_chunks_next_life() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        assert!(r.activate(1, 2, 1));
        // An appender seals life 2 (the alloc CAS) and stalls before it
        // stamps; a reclamation pass stamps instead (t = 10), finds it
        // empty, and the chunk is recycled and reactivated as life 4.
        r.header().alloc.fetch_or(ALLOC_SEALED, Ordering::Relaxed);
        assert_eq!(r.assess(10, 1_000, 0), Verdict::Keep);
        assert_eq!(r.header().sealed_ms.load(Ordering::Relaxed), 10);
        assert!(matches!(r.assess(11, 1_000, 0), Verdict::Reclaim { .. }));
        assert!(r.claim(2));
        assert!(r.recycle(2, 3, 12));
        assert!(r.activate(3, 4, 13));
        assert_eq!(r.header().sealed_ms.load(Ordering::Relaxed), 0);
        // The stalled appender resumes with its old time and its old life:
        // nothing lands in life 4 (its TTL would count from t = 5).
        r.seal(2, 5);
        assert_eq!(r.header().sealed_ms.load(Ordering::Relaxed), 0);
        assert!(!alloc_sealed(r.header().alloc.load(Ordering::Relaxed)));
        assert_eq!(
            ChunkRegion::stamp_once(&r.header().sealed_ms, &r.header().state_gen, 2, 5),
            5
        );
        assert_eq!(r.header().sealed_ms.load(Ordering::Relaxed), 0);
        // The same for the decay clock of an old life.
        ChunkRegion::stamp_once(&r.header().empty_since_ms, &r.header().state_gen, 2, 5);
        assert_ne!(r.header().empty_since_ms.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn ttl_reclaims_despite_a_dead_writer_but_never_recycles_under_it() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        assert!(r.activate(1, 1, 1));
        let fp = entry_footprint(8).unwrap() as u32;
        assert!(matches!(r.reserve(fp, 1), Reserve::Reserved { .. }));
        r.seal(r.state().1, 100);
        assert_eq!(r.assess(150, 100, 0), Verdict::Keep);
        assert_eq!(
            r.assess(200, 100, 0),
            Verdict::Reclaim {
                generation: 1,
                expired: true
            }
        );
        assert!(r.claim(1));
        assert!(!r.claim(1), "only one reclaimer wins");
        assert!(
            !r.recyclable(),
            "a writer is still in flight: retire, do not reuse"
        );
    }

    #[test]
    fn a_pin_turns_recycling_into_retirement() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        assert!(r.activate(1, 1, 1));
        let (g, off, tag) = append(&r, b"view", 1).unwrap();
        r.seal(r.state().1, 1);
        assert!(r.acknowledge(g, off, 4, tag));
        let pin = r.pin();
        assert!(r.locate(g, off, 4, tag).is_some());
        assert!(matches!(r.assess(5, 1_000, 0), Verdict::Reclaim { .. }));
        assert!(r.claim(g));
        assert!(!r.recyclable());
        drop(pin);
        assert!(r.recyclable());
        assert!(r.recycle(g, g + 1, 9));
        assert_eq!(read(&r, g, off, 4, tag), None, "stale after recycle");
        assert_eq!(r.state(), (STATE_FREE, g + 1));
        // Reactivated, and nothing written over the old entry yet: its
        // header still names the old generation, and the handle must still
        // find nothing (the chunk's life is checked, not only the entry's).
        assert!(r.activate(g + 1, g + 1, 10));
        assert_eq!(r.state(), (STATE_IN_USE, g + 1));
        assert_eq!(read(&r, g, off, 4, tag), None, "stale after reactivation");
        assert!(!r.acknowledge(g, off, 4, tag));
    }

    /// The decay runs from the last acknowledgement, not from the first
    /// pass that notices the chunk is fully acknowledged.
    #[test]
    fn the_decay_runs_from_the_last_acknowledgement() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        assert!(r.activate(1, 1, 1));
        let (g, off, tag) = append(&r, b"one", 1).unwrap();
        let (g2, off2, tag2) = append(&r, b"two", 1).unwrap();
        r.seal(g, 1);
        let first = crate::clock::now_ms();
        assert!(r.acknowledge(g, off, 3, tag));
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(r.acknowledge(g2, off2, 3, tag2));
        let acked = crate::clock::now_ms();
        let decay = 500;
        // Past the decay from the first acknowledgement, not the last: kept.
        assert!(
            !matches!(
                r.assess(first + decay + 20, u64::MAX, decay),
                Verdict::Reclaim { .. }
            ),
            "the decay ran from the first acknowledgement"
        );
        assert!(
            !matches!(
                r.assess(acked + decay - 10, u64::MAX, decay),
                Verdict::Reclaim { .. }
            ),
            "reclaimed before the decay"
        );
        assert!(
            matches!(
                r.assess(acked + decay, u64::MAX, decay),
                Verdict::Reclaim { expired: false, .. }
            ),
            "the first pass after the decay reclaims"
        );
    }

    #[test]
    fn deactivate_only_when_untouched() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        assert!(r.activate(1, 1, 1));
        assert_eq!(r.try_deactivate(1, 1), Deactivate::Free);
        assert_eq!(r.state(), (STATE_FREE, 1));
        assert!(r.activate(1, 1, 1));
        append(&r, b"x", 1).unwrap();
        assert_eq!(r.try_deactivate(1, 1), Deactivate::InUse);
    }

    #[test]
    fn corrupt_alloc_word_seals_instead_of_writing_out_of_bounds() {
        let m = Mem::new(4096);
        let r = m.region();
        r.format(0, 1, 0, 7, 1, 0);
        assert!(r.activate(1, 1, 1));
        r.header().alloc.store(4090, Ordering::Relaxed);
        assert_eq!(r.reserve(24, 1), Reserve::Sealed);
        r.header().alloc.store(3, Ordering::Relaxed);
        assert_eq!(r.reserve(24, 1), Reserve::Sealed);
        // Inside the chunk, room to spare, but not an entry boundary.
        r.header()
            .alloc
            .store(CHUNK_HEADER_SIZE as u64 + 4, Ordering::Relaxed);
        assert_eq!(r.reserve(24, 1), Reserve::Sealed);
    }
}

#[cfg(loom)]
mod loom_shadow {
    use crate::layout::*;
    use crate::sync::{AtomicU32, AtomicU64};

    /// Loom-tracked header words of one region.
    pub(crate) struct Shadow {
        pub(crate) header: ChunkHeader,
        pub(crate) entries: Vec<EntryHeader>,
    }

    impl Shadow {
        pub(crate) fn new(len: usize) -> Self {
            let a64 = || AtomicU64::new(0);
            let a32 = || AtomicU32::new(0);
            Self {
                header: ChunkHeader {
                    magic: a64(),
                    chunk_id: a32(),
                    size: a32(),
                    alloc: a64(),
                    state_gen: a64(),
                    ready: a32(),
                    acks: a32(),
                    first_write_ms: a64(),
                    sealed_ms: a64(),
                    empty_since_ms: a64(),
                    pins: a32(),
                    flags: a32(),
                    activated_ms: a64(),
                    incarnation: a64(),
                    walked: a64(),
                    acked: a64(),
                    claimed_ms: a64(),
                    _reserved: std::array::from_fn(|_| a64()),
                },
                entries: (0..(len - CHUNK_HEADER_SIZE) / ENTRY_ALIGN)
                    .map(|_| EntryHeader {
                        len: a32(),
                        state: a32(),
                        tag: a64(),
                    })
                    .collect(),
            }
        }
    }
}

/// Model checks of the protocol: `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::thread;

    /// A tiny region (room for a few 8-byte entries) in leaked memory.
    fn region() -> ChunkRegion {
        let words: &'static mut [u64] =
            Box::leak(vec![0u64; (CHUNK_HEADER_SIZE + 96) / 8].into_boxed_slice());
        let base = NonNull::new(words.as_mut_ptr() as *mut u8).unwrap();
        // SAFETY: leaked, so valid and 8-aligned for the whole test.
        let r = unsafe { ChunkRegion::new(base, words.len() * 8) };
        r.format(0, 1, 0, 7, 1, 0);
        assert!(r.activate(1, 1, 1));
        r
    }

    fn append(r: &ChunkRegion, byte: u8) -> Option<(u32, u32, u64)> {
        let fp = entry_footprint(8).unwrap() as u32;
        match r.reserve(fp, 1) {
            Reserve::Reserved {
                offset, generation, ..
            } => {
                let tag = entry_tag(7, 0, generation, offset, 8);
                // SAFETY: offset was just reserved for 8 bytes.
                unsafe { r.commit(offset, generation, &[byte; 8], tag, 1) };
                Some((generation, offset, tag))
            }
            Reserve::Sealed | Reserve::NotReady => None,
        }
    }

    fn read(r: &ChunkRegion, at: usize) -> Vec<u8> {
        // SAFETY: `at` came from `locate` on this region (in bounds).
        let first = unsafe { std::slice::from_raw_parts(r.payload_ptr(at), 4) }.to_vec();
        // A scheduling point in the middle of the copy, so the model can
        // run a reclaimer between the two halves.
        let _ = r.state();
        // SAFETY: as above.
        let second = unsafe { std::slice::from_raw_parts(r.payload_ptr(at + 4), 4) }.to_vec();
        [first, second].concat()
    }

    /// Reclaims the chunk if allowed; when the protocol says it may be
    /// recycled in place, does so and appends new bytes (`2`) into it.
    /// Returns where that new entry went.
    fn reclaim(r: &ChunkRegion, ttl: u64) -> Option<(u32, u32, u64)> {
        if let Verdict::Reclaim { generation, .. } = r.assess(5, ttl, 0) {
            if r.claim(generation) {
                if r.recyclable() {
                    assert!(r.recycle(generation, generation + 1, 5));
                    assert!(r.activate(generation + 1, generation + 1, 1));
                    return append(r, 2);
                }
                r.mark_retired();
            }
        }
        None
    }

    #[test]
    fn loom_a_pinned_reader_never_sees_recycled_bytes() {
        loom::model(|| {
            let r = region();
            let (g, off, tag) = append(&r, 1).unwrap();
            assert!(r.acknowledge(g, off, 8, tag));
            r.seal(r.state().1, 1);
            let reader = thread::spawn(move || {
                let _pin = r.pin();
                if let Some(at) = r.locate(g, off, 8, tag) {
                    assert_eq!(read(&r, at), vec![1u8; 8], "bytes changed under a pin");
                }
            });
            let reclaimer = thread::spawn(move || reclaim(&r, 1_000));
            reader.join().unwrap();
            reclaimer.join().unwrap();
        });
    }

    #[test]
    fn loom_no_recycling_under_an_in_flight_writer() {
        loom::model(|| {
            let r = region();
            let writer = thread::spawn(move || append(&r, 7));
            // TTL 0: the reclaimer may reclaim at once, even with the writer
            // in flight, but must then retire instead of reusing the memory.
            let reclaimer = thread::spawn(move || {
                r.seal(r.state().1, 1);
                reclaim(&r, 0)
            });
            let wrote = writer.join().unwrap();
            if let Some((g, off, tag)) = reclaimer.join().unwrap() {
                // The recycled chunk holds the reclaimer's new entry; a late
                // commit from a writer that reserved before the recycling
                // would have overwritten it. (A writer may legitimately
                // append into the new generation: then its entry is elsewhere.)
                let at = r.locate(g, off, 8, tag).expect("the new entry is live");
                assert_eq!(
                    read(&r, at),
                    vec![2u8; 8],
                    "writer scribbled on a recycled chunk ({wrote:?})"
                );
                // A writer entry of the old generation no longer resolves.
                if let Some((wg, woff, wtag)) = wrote {
                    if wg != g {
                        assert!(r.locate(wg, woff, 8, wtag).is_none());
                    }
                }
            }
        });
    }

    #[test]
    fn loom_concurrent_acknowledgements_count_once() {
        loom::model(|| {
            let r = region();
            let (g, off, tag) = append(&r, 1).unwrap();
            let a = thread::spawn(move || r.acknowledge(g, off, 8, tag));
            let b = thread::spawn(move || r.acknowledge(g, off, 8, tag));
            let (a, b) = (a.join().unwrap(), b.join().unwrap());
            assert!(a ^ b, "exactly one acknowledgement counts");
            assert_eq!(r.count_entries(g), (1, 1));
        });
    }

    #[test]
    fn loom_reserve_races_with_sealing_and_assessment() {
        loom::model(|| {
            let r = region();
            let w1 = thread::spawn(move || append(&r, 3));
            let w2 = thread::spawn(move || append(&r, 4));
            let a = w1.join().unwrap();
            let b = w2.join().unwrap();
            if let (Some(a), Some(b)) = (a, b) {
                assert_ne!(a.1, b.1, "two writers got the same offset");
            }
            r.seal(r.state().1, 1);
            assert!(r.walk(1), "both reservations were committed");
        });
    }

    #[test]
    fn loom_a_complete_walk_never_counts_a_writer_in_flight() {
        loom::model(|| {
            let r = region();
            let writer = thread::spawn(move || append(&r, 5));
            let walker = thread::spawn(move || {
                r.seal(r.state().1, 1);
                r.walk(1)
            });
            let wrote = writer.join().unwrap();
            if walker.join().unwrap() {
                // Everything reserved before the seal was committed: if the
                // writer got space, its entry is readable.
                if let Some((g, off, tag)) = wrote {
                    let at = r.locate(g, off, 8, tag).expect("committed");
                    assert_eq!(read(&r, at), vec![5u8; 8]);
                }
            }
        });
    }
}
