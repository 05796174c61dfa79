//! The ring protocol of a channel, over raw memory: claiming, publishing,
//! reading, holding and freeing, the frontier, joins, the pool of slots,
//! and the repair of a dead participant's share. No system call here (the
//! endpoints add liveness, blocking and backing), so the protocol runs under
//! Miri on heap memory and under loom.
//!
//! A message has a sequence number `seq`; it is named by ring entry
//! `seq % slots` during lap `seq / slots`, and it lives in a pool slot that
//! the entry names. An entry's state word moves FREE(lap) →
//! CLAIMED(lap, producer) → READY(lap) → FREE(lap + 1):
//!
//! * a producer claims an entry with one CAS (so a claim always names its
//!   owner, and a dead owner's claim can be found and skipped), takes a
//!   free pool slot (the one the entry named last time, if free), writes
//!   it, and publishes with one Release store;
//! * a consumer that receives a message sets its own bit in the slot's
//!   owners word, and clears it when the message is dropped: the message
//!   keeps its slot, not the entry, so a held message never stops the ring;
//! * the frontier passes an entry once the subscribers that gate it have
//!   read it (`Block`), or when a producer needs the entry (`DropOldest`),
//!   or once it was taken (work queue); passing it clears the slot's in-ring
//!   bit, and whoever clears the last owner of a slot frees it (and
//!   acknowledges the store entry it referred to).

use super::layout::*;
use crate::sync::{fence, AtomicU64, Ordering};
use std::ptr::NonNull;

/// What a producer's claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Entry of `seq` is ours to publish into.
    Claimed(u64),
    /// Every entry holds a message the frontier may not pass yet.
    Full,
}

/// How far a pool slot's payload is backed by memory, as one process
/// knows it, and backing it further (see [`Ring::alloc`]).
pub(crate) trait Backing {
    /// Bytes of slot `b`'s payload this process has backed (or knows to be).
    fn backed(&self, b: u32) -> usize;
    /// Backs slot `b`'s payload up to `to` bytes: false when the file
    /// system is full.
    fn back(&self, b: u32, to: usize) -> bool;
}

/// A [`Backing`] for tests and models over heap memory: every slot backed.
#[cfg(any(test, loom))]
pub(crate) struct AllBacked;

#[cfg(any(test, loom))]
impl Backing for AllBacked {
    fn backed(&self, _b: u32) -> usize {
        usize::MAX
    }
    fn back(&self, _b: u32, _to: usize) -> bool {
        true
    }
}

/// Why no pool slot could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoSlot {
    /// Every slot is in the ring, held or being written.
    Exhausted,
    /// A free slot could not be backed (the file system is full).
    NoSpace,
}

/// What a consumer finds at a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// A message, in pool slot `slot`, published by producer record `owner`.
    Ready { slot: u32, owner: u32 },
    /// An entry its dead producer never published; pass over it.
    Skipped,
    /// Claimed by producer `owner`, not yet published.
    Pending { owner: u32 },
    /// Nothing published at this sequence yet.
    Empty,
    /// The frontier passed this sequence: the entry holds a later message.
    Gone,
}

/// A message a consumer now holds (its bit is set in the slot's owners).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    /// Sequence it was published at.
    pub seq: u64,
    /// Pool slot.
    pub slot: u32,
    /// Length (inline) or message length (overflow).
    pub len: u32,
    /// Slot flags ([`FLAG_OVERFLOW`]).
    pub flags: u32,
    /// Times handed out before.
    pub delivered: u32,
    /// Producer record that published it ([`NO_PRODUCER`] if not known).
    pub producer: u32,
}

/// `Held::producer` of a message whose publisher is not known (a requeued
/// job: its entry was freed long ago).
pub(crate) const NO_PRODUCER: u32 = u32::MAX;

/// What a queue receiver's take found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// This message is the receiver's now.
    Taken(Held),
    /// The message at the tail is not published yet (`Empty` or `Pending`).
    Wait(Read),
}

/// What a subscriber's read at its cursor found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// The message at the cursor, held.
    Got(Held),
    /// Nothing to hand out at the cursor; move on by one (a skipped entry).
    Pass,
    /// The cursor fell behind the frontier: resume at `at`.
    Lagged { at: u64 },
    /// Nothing published at the cursor yet.
    Wait,
}

/// A mapped ring. Copyable view; whoever made it keeps the memory alive.
#[derive(Clone, Copy)]
pub(crate) struct Ring {
    base: NonNull<u8>,
    geo: Geometry,
    shift: u32,
    queue: bool,
    drop_oldest: bool,
    /// Under loom, the shared words live in loom atomics (the payload bytes
    /// stay in `base`).
    #[cfg(loom)]
    shadow: &'static Shadow,
}

/// The ring's words as loom atomics.
#[cfg(loom)]
pub(crate) struct Shadow {
    header: ChanHeader,
    records: Vec<Record>,
    entries: Vec<Entry>,
    slots: Vec<SlotHeader>,
    handles: Vec<[AtomicU64; 3]>,
}

// SAFETY: a Ring is a pointer into shared memory accessed only through
// atomics (and raw copies ordered by them); the owner keeps it mapped.
unsafe impl Send for Ring {}
// SAFETY: see Send.
unsafe impl Sync for Ring {}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("slots", &self.geo.slots)
            .field("slot_size", &self.geo.slot_size)
            .field("pool", &self.geo.pool)
            .field("queue", &self.queue)
            .field("drop_oldest", &self.drop_oldest)
            .finish()
    }
}

/// The store handle a slot refers to, read while its reader still owns a
/// bit of the slot (afterwards the slot may be written again).
fn handle_of(flags: u32, handle: impl FnOnce() -> [u8; 24]) -> Option<[u8; 24]> {
    (flags & FLAG_OVERFLOW != 0).then(handle)
}

impl Ring {
    /// # Safety
    /// `base` must be 64-aligned and valid for reads and writes of
    /// `geo.file_size()` bytes for as long as the ring (and every copy) is
    /// used, and hold a channel file (zeroed, or written by this protocol).
    pub(crate) unsafe fn new(
        base: NonNull<u8>,
        geo: Geometry,
        queue: bool,
        drop_oldest: bool,
    ) -> Self {
        Self {
            base,
            geo,
            shift: geo.slots.trailing_zeros(),
            queue,
            drop_oldest: drop_oldest && !queue,
            #[cfg(loom)]
            shadow: Box::leak(Box::new(Shadow {
                header: loom_words::header(),
                records: (0..RECORDS).map(|_| loom_words::record()).collect(),
                entries: (0..geo.slots).map(|_| loom_words::entry()).collect(),
                slots: (0..geo.pool).map(|_| loom_words::slot()).collect(),
                handles: (0..geo.pool)
                    .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                    .collect(),
            })),
        }
    }

    /// The geometry.
    pub(crate) fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Whether this is a work queue.
    pub(crate) fn is_queue(&self) -> bool {
        self.queue
    }

    /// Whether producers overwrite the oldest message instead of waiting.
    pub(crate) fn drops_oldest(&self) -> bool {
        self.drop_oldest
    }

    /// The header.
    pub(crate) fn header(&self) -> &ChanHeader {
        #[cfg(loom)]
        return &self.shadow.header;
        // SAFETY: `new`'s contract: the mapping holds the header at 0.
        #[cfg(not(loom))]
        unsafe {
            &*(self.base.as_ptr() as *const ChanHeader)
        }
    }

    /// Participant record `index` (`index < RECORDS`, checked: an index
    /// out of range is clamped to the last record, never read out of bounds).
    pub(crate) fn record(&self, index: usize) -> &Record {
        let i = index.min(RECORDS - 1);
        #[cfg(loom)]
        return &self.shadow.records[i];
        // SAFETY: records lie at RECORDS_OFFSET, RECORDS of them, 64-aligned,
        // inside the mapping; `i < RECORDS`.
        #[cfg(not(loom))]
        unsafe {
            &*(self.base.as_ptr().add(RECORDS_OFFSET + i * RECORD_SIZE) as *const Record)
        }
    }

    /// Record of consumer `i` (`i < MAX_CONSUMERS`).
    pub(crate) fn consumer(&self, i: usize) -> &Record {
        self.record(MAX_PRODUCERS + i)
    }

    fn index(&self, seq: u64) -> usize {
        (seq & (self.geo.slots as u64 - 1)) as usize
    }

    fn lap(&self, seq: u64) -> u64 {
        seq >> self.shift
    }

    /// The ring entry of `seq`.
    pub(crate) fn entry(&self, seq: u64) -> &Entry {
        #[cfg(loom)]
        return &self.shadow.entries[self.index(seq)];
        // SAFETY: entries are 16-aligned, `slots` of them from
        // ENTRIES_OFFSET, inside the mapping; index < slots.
        #[cfg(not(loom))]
        unsafe {
            &*(self
                .base
                .as_ptr()
                .add(ENTRIES_OFFSET + self.index(seq) * ENTRY_SIZE) as *const Entry)
        }
    }

    /// Pool slot `b`, clamped into the pool (a scribbled index reads some
    /// slot's header, never memory outside the file).
    pub(crate) fn slot(&self, b: u32) -> &SlotHeader {
        let b = (b as usize).min(self.geo.pool as usize - 1);
        #[cfg(loom)]
        return &self.shadow.slots[b];
        // SAFETY: slot headers are 64-aligned, `pool` of them from
        // slot_headers_offset, inside the mapping; b < pool.
        #[cfg(not(loom))]
        unsafe {
            &*(self
                .base
                .as_ptr()
                .add(self.geo.slot_headers_offset() + b * SLOT_HEADER_SIZE)
                as *const SlotHeader)
        }
    }

    /// Whether `b` names a pool slot.
    pub(crate) fn in_pool(&self, b: u32) -> bool {
        b < self.geo.pool
    }

    /// Offset of slot `b`'s payload in the file (`b < pool`).
    pub(crate) fn payload_offset(&self, b: u32) -> usize {
        self.geo.payloads_offset()
            + (b as usize).min(self.geo.pool as usize - 1) * self.geo.payload_stride()
    }

    /// Start of slot `b`'s payload (inline capacity bytes).
    pub(crate) fn payload(&self, b: u32) -> *mut u8 {
        // SAFETY: payload_offset clamps into the pool, whose payloads lie
        // inside the mapping.
        unsafe { self.base.as_ptr().add(self.payload_offset(b)) }
    }

    fn handle_words(&self, b: u32) -> [&AtomicU64; 3] {
        #[cfg(loom)]
        {
            let w = &self.shadow.handles[(b as usize).min(self.geo.pool as usize - 1)];
            return [&w[0], &w[1], &w[2]];
        }
        #[cfg(not(loom))]
        let p = self.payload(b) as *const AtomicU64;
        // SAFETY: the payload is 64-aligned and at least 64 bytes (slot size
        // >= 128), so three u64 words fit; handles are only ever accessed
        // through these atomics.
        #[cfg(not(loom))]
        unsafe {
            [&*p, &*p.add(1), &*p.add(2)]
        }
    }

    /// Writes a 24-byte store handle into slot `b` (which the caller writes).
    pub(crate) fn write_handle(&self, b: u32, handle: &[u8; 24]) {
        for (w, chunk) in self.handle_words(b).iter().zip(handle.chunks_exact(8)) {
            let mut x = [0u8; 8];
            x.copy_from_slice(chunk);
            w.store(u64::from_le_bytes(x), Ordering::Relaxed);
        }
    }

    /// Reads the 24-byte store handle of slot `b`.
    pub(crate) fn read_handle(&self, b: u32) -> [u8; 24] {
        let mut out = [0u8; 24];
        for (w, chunk) in self.handle_words(b).iter().zip(out.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        out
    }

    /// Writes an inline message into slot `b`.
    ///
    /// # Safety
    /// The caller must be the slot's writer (its owners word names it), and
    /// `data.len() <= inline_capacity`.
    pub(crate) unsafe fn write_inline(&self, b: u32, data: &[u8]) {
        let n = data.len().min(self.geo.inline_capacity());
        // SAFETY: the writer owns these bytes until it publishes; nobody
        // reads a slot that is not in the ring or held. n fits the payload.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.payload(b), n) };
    }

    // ---- the pool ----

    /// Takes a free pool slot for producer `me` to write `need` payload
    /// bytes into: the slots of `prefer` first, in order (the caller's guess
    /// at what is warm in cache), then the lowest free spare slot (past the
    /// ring's own), then any. Lowest-first keeps the set of slots in use,
    /// and so the memory backed and the cache footprint, as small as what
    /// is in the ring, held and loaned.
    ///
    /// A slot's payload is backed in pages as far as a message has needed:
    /// `backing` says how far this process knows a slot to be backed and
    /// backs it further (false: no space). When backing fails, the search
    /// goes on among the free slots already backed far enough, so a full
    /// file system refuses a message only if no free slot can take it
    /// without new memory (`NoSpace`).
    pub(crate) fn alloc(
        &self,
        me: u32,
        prefer: &[u32],
        need: usize,
        backing: &dyn Backing,
    ) -> Result<u32, NoSlot> {
        let to = need
            .next_multiple_of(BACK_STEP)
            .min(self.geo.payload_stride());
        let mut no_space = false;
        let mut take = |b: u32| -> Option<u32> {
            let backed = backing.backed(b) >= to;
            if no_space && !backed {
                return None;
            }
            let slot = self.slot(b);
            // Acquire: pairs with the Release (SeqCst) RMW that freed it, so
            // the freer's reads of the old contents come before our writes.
            if slot.owners.load(Ordering::Relaxed) != 0
                || slot
                    .owners
                    .compare_exchange(0, owners_writer(me), Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
            {
                return None;
            }
            if !backed && !backing.back(b, to) {
                no_space = true;
                // Release: pairs with the Acquire CAS of the next allocator.
                slot.owners.store(0, Ordering::Release);
                return None;
            }
            slot.flags.store(0, Ordering::Relaxed);
            slot.delivered.store(0, Ordering::Relaxed);
            Some(b)
        };
        let ring = self.geo.slots;
        let found = prefer
            .iter()
            .copied()
            .filter(|&b| self.in_pool(b))
            .chain(ring..self.geo.pool)
            .chain(0..ring)
            .find_map(&mut take);
        match found {
            Some(b) => Ok(b),
            None if no_space => Err(NoSlot::NoSpace),
            None => Err(NoSlot::Exhausted),
        }
    }

    /// The slots of the `n` entries before `seq`, most recent first: for a
    /// large message, the slots a consumer has just read and let go of are
    /// the ones still in cache (the entry's own slot from last lap is a
    /// whole ring of messages old).
    pub(crate) fn recent_slots(&self, seq: u64, out: &mut [u32]) {
        for (k, o) in out.iter_mut().enumerate() {
            *o = self.previous_slot(seq.wrapping_sub(k as u64 + 1));
        }
    }

    /// Whether some pool slot is free (a producer about to sleep for one
    /// re-checks this after announcing itself).
    pub(crate) fn any_free_slot(&self) -> bool {
        // SeqCst: with the SeqCst CAS that frees a slot (see `Consumer::done`).
        (0..self.geo.pool).any(|b| self.slot(b).owners.load(Ordering::SeqCst) == 0)
    }

    /// Gives back slot `b` that producer `me` took and did not publish.
    pub(crate) fn unalloc(&self, b: u32, me: u32) {
        let slot = self.slot(b);
        slot.flags.store(0, Ordering::Relaxed);
        // Release: our writes to it are done; pairs with the next
        // allocator's Acquire CAS.
        let _ = slot.owners.fetch_and(!owners_writer(me), Ordering::Release);
    }

    /// Changes slot `b`'s owners word with `f` (which returns the new word,
    /// or `None` to leave it); if that turned it to 0, frees the slot:
    /// `ack` gets the store handle it referred to. Returns the word before.
    fn update_owners(
        &self,
        b: u32,
        ack: &mut dyn FnMut([u8; 24]),
        f: impl Fn(u64) -> Option<u64>,
    ) -> Option<u64> {
        let slot = self.slot(b);
        // Acquire: pairs with the Release of the publisher (the flags and
        // handle we read are its).
        let mut w = slot.owners.load(Ordering::Acquire);
        // Bounded: every failure is another owner's progress.
        for _ in 0..1024 {
            let new = f(w)?;
            // Read while we still own part of the slot: once the word is 0
            // a producer may take it and write a new message.
            let handle = handle_of(slot.flags.load(Ordering::Relaxed), || self.read_handle(b));
            // SeqCst: Release orders our reads of the slot before a later
            // allocator's writes, Acquire sees the other owners' releases,
            // and the total order pairs a freeing with a producer that
            // announces it waits for a slot (see `Consumer::done`).
            match slot
                .owners
                .compare_exchange(w, new, Ordering::SeqCst, Ordering::Acquire)
            {
                Ok(_) => {
                    if new == 0 && w != 0 {
                        if let Some(h) = handle {
                            ack(h);
                        }
                    }
                    return Some(w);
                }
                Err(now) => w = now,
            }
        }
        None
    }

    /// Consumer `c` lets go of slot `b` (its message was dropped).
    pub(crate) fn unhold(&self, b: u32, c: usize, ack: &mut dyn FnMut([u8; 24])) {
        let bit = owners_holder(c);
        self.update_owners(b, ack, |w| (w & bit != 0).then_some(w & !bit));
    }

    /// Clears slot `b`'s in-ring bits if they are those of `seq`.
    fn out_of_ring(&self, b: u32, seq: u64, ack: &mut dyn FnMut([u8; 24])) {
        if !self.in_pool(b) {
            return;
        }
        let full = self.slot(b).seq.load(Ordering::Acquire) == seq;
        self.update_owners(b, ack, |w| {
            (full && w & OWNER_RING_MASK == owners_in_ring(seq)).then_some(w & !OWNER_RING_MASK)
        });
    }

    // ---- producers ----

    /// Claims the next entry for producer `me`. Under `DropOldest` it frees
    /// the oldest entry if that is what stands in the way. `now_ms` is the
    /// clock, read only when the claim has to release (the stall timeout's
    /// bound needs it): a claim that finds its entry free reads no clock.
    pub(crate) fn try_claim(
        &self,
        me: u32,
        now_ms: &dyn Fn() -> u64,
        ack: &mut dyn FnMut([u8; 24]),
    ) -> Claim {
        let h = self.header();
        let slots = self.geo.slots as u64;
        // Bounded: only a scribbled ring can keep every attempt failing.
        for _ in 0..(1u32 << 16) {
            // Acquire: pairs with the Release CAS below in another producer.
            let s = h.head.load(Ordering::Acquire);
            let lap = self.lap(s);
            let entry = self.entry(s);
            // Acquire: pairs with the Release store of the state that freed it.
            let w = entry.state.load(Ordering::Acquire);
            let (wl, tag) = (state_lap(w), state_tag(w));
            if wl == lap && tag == TAG_FREE {
                // AcqRel: the claim orders our writes after the free.
                if entry
                    .state
                    .compare_exchange(
                        w,
                        slot_state(lap, me, TAG_CLAIMED),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    // Release: pairs with the Acquire load of head above.
                    let _ = h.head.compare_exchange(
                        s,
                        s.wrapping_add(1),
                        Ordering::Release,
                        Ordering::Relaxed,
                    );
                    return Claim::Claimed(s);
                }
                continue;
            }
            if wl >= lap {
                // Someone claimed `s`: move head on; if it lags more than a
                // lap (a scribbled head), jump to the frontier.
                let f = frontier_seq(h.frontier.load(Ordering::SeqCst));
                let to = if wl > lap + 1 && f > s {
                    f
                } else {
                    s.wrapping_add(1)
                };
                let _ = h
                    .head
                    .compare_exchange(s, to, Ordering::Release, Ordering::Relaxed);
                continue;
            }
            if wl.wrapping_add(1) < lap {
                // The entry is two laps or more behind the head: nobody
                // claimed the sequence a lap before `s`, so the head was
                // scribbled ahead. Start again from the frontier.
                let f = frontier_seq(h.frontier.load(Ordering::SeqCst));
                if f < s
                    && h.head
                        .compare_exchange(s, f, Ordering::Release, Ordering::Relaxed)
                        .is_ok()
                {
                    continue;
                }
                return Claim::Full;
            }
            if wl + 1 == lap && tag == TAG_FREE {
                // The sequence a lap before `s` was never claimed: a hole
                // left by a scribbled head. Plug it, so the frontier and
                // consumers pass it.
                if self.plug(s.wrapping_sub(slots), w) {
                    continue;
                }
                return Claim::Full;
            }
            if wl + 1 == lap && published(tag) {
                // The previous message of this entry. If the frontier passed
                // it, its freer died between the frontier CAS and the free:
                // help. Under DropOldest, pass it ourselves.
                let f = frontier_seq(h.frontier.load(Ordering::SeqCst));
                if f.wrapping_add(slots) > s {
                    self.free_entry(s.wrapping_sub(slots), w, ack);
                    continue;
                }
                if self.drop_oldest && self.advance(s.wrapping_sub(slots).wrapping_add(1), ack) > 0
                {
                    continue;
                }
                if self.release(now_ms(), ack) > 0 {
                    continue;
                }
            }
            return Claim::Full;
        }
        Claim::Full
    }

    /// Whether the ring's counters are in the order the protocol keeps
    /// them (the frontier never far beyond the head, the head never more
    /// than a lap beyond the frontier, with room for hints that lag). A
    /// ring that is not was scribbled: producers report it instead of
    /// waiting for space that cannot come.
    pub(crate) fn consistent(&self) -> bool {
        let h = self.header();
        let slots = self.geo.slots as u64;
        // A snapshot: the frontier read on both sides of the head, judged
        // only if it did not move (a thread descheduled between two loads
        // of a busy ring would otherwise see them out of order).
        for _ in 0..8 {
            let f = frontier_seq(h.frontier.load(Ordering::SeqCst));
            let head = h.head.load(Ordering::SeqCst);
            if frontier_seq(h.frontier.load(Ordering::SeqCst)) == f {
                return f <= head.saturating_add(slots) && head <= f.saturating_add(2 * slots);
            }
        }
        true
    }

    /// Whether the entry at the head looks claimable (a producer about to
    /// sleep re-checks this after announcing itself).
    pub(crate) fn has_space(&self) -> bool {
        let s = self.header().head.load(Ordering::SeqCst);
        let w = self.entry(s).state.load(Ordering::SeqCst);
        state_lap(w) >= self.lap(s)
    }

    /// The slot the entry of `seq` named last lap (a warm one to reuse).
    pub(crate) fn previous_slot(&self, seq: u64) -> u32 {
        self.entry(seq).slot.load(Ordering::Relaxed)
    }

    /// Publishes slot `b` (written by producer `me`) in the claimed entry
    /// of `seq`.
    pub(crate) fn publish(&self, seq: u64, me: u32, b: u32, len: u32, flags: u32) {
        let slot = self.slot(b);
        let entry = self.entry(seq);
        slot.len.store(len, Ordering::Relaxed);
        slot.flags.store(flags, Ordering::Relaxed);
        slot.seq.store(seq, Ordering::Relaxed);
        // The entry names the slot before the slot says "in the ring": a
        // producer that dies in between leaves a slot the freer of the
        // (skipped) entry finds.
        entry.slot.store(b, Ordering::Relaxed);
        // Release: pairs with the Acquire RMWs of consumers on the owners
        // word (they see the length, flags and payload). A stray consumer
        // bit (a failed hold, about to be undone) is dropped by this store.
        slot.owners.store(owners_in_ring(seq), Ordering::Release);
        // Release: pairs with the Acquire load in `read`.
        entry
            .state
            .store(slot_state(self.lap(seq), me, TAG_READY), Ordering::Release);
        self.header().published.fetch_add(1, Ordering::Relaxed);
    }

    /// Gives up producer `me`'s claim of `seq` (its message could not be
    /// placed): the entry is published as skipped.
    pub(crate) fn skip(&self, seq: u64, me: u32) {
        // Release: pairs with the Acquire load in `read`.
        self.entry(seq).state.store(
            slot_state(self.lap(seq), me, TAG_SKIPPED),
            Ordering::Release,
        );
        self.header().skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// Plugs a hole: the entry of `seq` (state `w`, FREE, a lap behind) was
    /// never claimed although the head passed it, which only a scribbled
    /// head does. It is published as skipped (one CAS: a producer claiming
    /// it after all wins, and then nothing is plugged).
    fn plug(&self, seq: u64, w: u64) -> bool {
        let plugged = w == slot_state(self.lap(seq), 0, TAG_FREE)
            && self
                .entry(seq)
                .state
                .compare_exchange(
                    w,
                    slot_state(self.lap(seq), 0, TAG_SKIPPED),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_ok();
        if plugged {
            self.header().skipped.fetch_add(1, Ordering::Relaxed);
        }
        plugged
    }

    // ---- consumers ----

    /// What is at `seq` for a consumer.
    pub(crate) fn read(&self, seq: u64) -> Read {
        let entry = self.entry(seq);
        let lap = self.lap(seq);
        // Acquire: pairs with the Release store in `publish`.
        let w = entry.state.load(Ordering::Acquire);
        let wl = state_lap(w);
        if wl < lap {
            return Read::Empty;
        }
        if wl > lap {
            return Read::Gone;
        }
        match state_tag(w) {
            TAG_READY => {
                let slot = entry.slot.load(Ordering::Relaxed);
                if self.in_pool(slot) {
                    Read::Ready {
                        slot,
                        owner: state_owner(w),
                    }
                } else {
                    Read::Skipped
                }
            }
            TAG_SKIPPED => Read::Skipped,
            TAG_CLAIMED => Read::Pending {
                owner: state_owner(w),
            },
            _ => Read::Empty,
        }
    }

    fn held(&self, seq: u64, b: u32, producer: u32) -> Held {
        let slot = self.slot(b);
        Held {
            seq,
            slot: b,
            producer,
            len: slot.len.load(Ordering::Relaxed),
            flags: slot.flags.load(Ordering::Relaxed),
            delivered: slot.delivered.load(Ordering::Relaxed),
        }
    }

    /// Subscriber `me` reads at its cursor `seq`: on a message, it takes
    /// hold of the message's slot.
    pub(crate) fn next(&self, me: usize, seq: u64, ack: &mut dyn FnMut([u8; 24])) -> Next {
        let frontier = || frontier_seq(self.header().frontier.load(Ordering::SeqCst));
        match self.read(seq) {
            Read::Empty | Read::Pending { .. } => {
                // A cursor the frontier passed (let go, or under DropOldest)
                // lags even where the entry is not rewritten yet.
                let f = frontier();
                if f > seq {
                    Next::Lagged { at: f }
                } else if self.plug_hole(seq) {
                    Next::Pass
                } else {
                    Next::Wait
                }
            }
            Read::Gone => Next::Lagged {
                at: frontier().max(seq.wrapping_add(1)),
            },
            Read::Skipped => Next::Pass,
            Read::Ready { slot: b, owner } => {
                let bit = owners_holder(me);
                // AcqRel: Acquire pairs with the publisher's Release store
                // of the owners word; our bit keeps the slot from being freed.
                let before = self.slot(b).owners.fetch_or(bit, Ordering::AcqRel);
                // The full sequence too: the owners word carries 23 bits.
                if before & OWNER_RING_MASK == owners_in_ring(seq)
                    && self.slot(b).seq.load(Ordering::Relaxed) == seq
                {
                    return Next::Got(self.held(seq, b, owner));
                }
                // The entry was passed (and maybe the slot reused) between
                // our read and our bit: undo the bit. If the slot had owners
                // and we were the last, we free it.
                if before & bit == 0 {
                    if before == 0 {
                        let _ = self.slot(b).owners.fetch_and(!bit, Ordering::AcqRel);
                    } else {
                        self.unhold(b, me, ack);
                    }
                }
                Next::Lagged {
                    at: frontier().max(seq.wrapping_add(1)),
                }
            }
        }
    }

    /// A consumer waiting at `seq` (which reads empty) plugs it if it is a
    /// hole: the head passed it although nobody claimed it (a head moves
    /// past a sequence only after its claim), so no producer ever will.
    /// Returns whether it was plugged.
    fn plug_hole(&self, seq: u64) -> bool {
        let entry = self.entry(seq);
        // Acquire: pairs with the Release of the last free of the entry.
        let w = entry.state.load(Ordering::Acquire);
        // SeqCst, after the entry: a head past `seq` read after an entry
        // still free means the claim of `seq` never happened before it.
        let head = self.header().head.load(Ordering::SeqCst);
        if head <= seq.wrapping_add(1) || w != slot_state(self.lap(seq), 0, TAG_FREE) {
            return false;
        }
        self.plug(seq, w)
    }

    /// A queue receiver (consumer `me`) takes the next message: a requeued
    /// one first, else the one at the tail.
    pub(crate) fn take(&self, me: usize) -> Take {
        let h = self.header();
        if h.requeued.load(Ordering::SeqCst) > 0 {
            if let Some(held) = self.take_requeued(me) {
                return Take::Taken(held);
            }
        }
        // Bounded: contention makes progress for someone on every retry;
        // only a scribbled ring could keep us here longer.
        for _ in 0..(self.geo.slots as u64 * 4 + 1024) {
            // SeqCst with the reclaimer's loads in `bound`.
            let t = h.tail.load(Ordering::SeqCst);
            let step = |to: u64| {
                let _ = h
                    .tail
                    .compare_exchange(t, to, Ordering::SeqCst, Ordering::Relaxed);
            };
            match self.read(t) {
                Read::Ready { slot: b, owner } => {
                    let slot = self.slot(b);
                    // Acquire: pairs with the publisher's Release store.
                    let w = slot.owners.load(Ordering::Acquire);
                    if w & OWNER_RING_MASK == owners_in_ring(t)
                        && slot.seq.load(Ordering::Relaxed) == t
                    {
                        // AcqRel: the take is this CAS; Acquire pairs with
                        // the publisher, Release with whoever frees it later.
                        if slot
                            .owners
                            .compare_exchange(
                                w,
                                (w & !OWNER_RING_MASK) | owners_holder(me),
                                Ordering::AcqRel,
                                Ordering::Relaxed,
                            )
                            .is_ok()
                        {
                            step(t.wrapping_add(1));
                            return Take::Taken(self.held(t, b, owner));
                        }
                    } else {
                        // Taken by another receiver that has not moved the
                        // tail yet (or died or stopped before it): help.
                        step(t.wrapping_add(1));
                    }
                }
                Read::Skipped => step(t.wrapping_add(1)),
                Read::Gone => {
                    // Only a scribbled tail lags the frontier: move it on.
                    let f = frontier_seq(h.frontier.load(Ordering::SeqCst));
                    step(f.max(t.wrapping_add(1)));
                }
                Read::Empty
                    if t > h
                        .head
                        .load(Ordering::SeqCst)
                        .saturating_add(self.geo.slots as u64) =>
                {
                    // A tail beyond anything claimed was scribbled: start
                    // again from the frontier.
                    step(frontier_seq(h.frontier.load(Ordering::SeqCst)));
                }
                Read::Empty if self.plug_hole(t) => step(t.wrapping_add(1)),
                other => return Take::Wait(other),
            }
        }
        Take::Wait(Read::Empty)
    }

    /// Takes a requeued slot, if there is one; resets the hint when the
    /// pool holds none.
    fn take_requeued(&self, me: usize) -> Option<Held> {
        let h = self.header();
        let hint = h.requeued.load(Ordering::SeqCst);
        for b in 0..self.geo.pool {
            let slot = self.slot(b);
            let w = slot.owners.load(Ordering::Acquire);
            if w & OWNER_WRITER == OWNER_REQUEUED
                && w & OWNER_IN_RING == 0
                && slot
                    .owners
                    .compare_exchange(
                        w,
                        (w & !OWNER_WRITER) | owners_holder(me),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                let _ = h
                    .requeued
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                let seq = slot.seq.load(Ordering::Relaxed);
                // Requeued: its entry (and who published it) is long gone.
                return Some(self.held(seq, b, NO_PRODUCER));
            }
        }
        // None left: a requeue that lands after this scan counts itself
        // after its slot is marked, so resetting what we saw loses nothing.
        if h.requeued
            .compare_exchange(hint, 0, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
        {
            // A requeue may have landed behind our scan and been counted
            // before our reset: count what is there now.
            let left = (0..self.geo.pool)
                .filter(|&b| {
                    let w = self.slot(b).owners.load(Ordering::SeqCst);
                    w & OWNER_WRITER == OWNER_REQUEUED && w & OWNER_IN_RING == 0
                })
                .count() as u64;
            if left > 0 {
                h.requeued.fetch_add(left, Ordering::SeqCst);
            }
        }
        None
    }

    // ---- the frontier ----

    /// The frontier may not pass this sequence. Work queue: the tail.
    /// Broadcast: the lowest cursor of the subscribers that gate it; a
    /// subscriber whose cursor the frontier already passed gates nothing
    /// (it was let go, or it lags under DropOldest), and under a stall
    /// timeout a subscriber that has not received for that long while the
    /// ring is full is let go.
    pub(crate) fn bound(&self, now_ms: u64) -> u64 {
        let h = self.header();
        if self.queue {
            // SeqCst: pairs with the SeqCst tail CAS of receivers.
            return h.tail.load(Ordering::SeqCst);
        }
        let f = frontier_seq(h.frontier.load(Ordering::SeqCst));
        let head = h.head.load(Ordering::SeqCst);
        let stall = h.stall_timeout_ms.load(Ordering::Relaxed);
        let full_since = h.full_since_ms.load(Ordering::Relaxed);
        let mut b = LOW_NONE;
        // SeqCst: pairs with the SeqCst mask and low stores of `join`.
        let mut m = h.consumer_mask.load(Ordering::SeqCst) & MASK_BITS;
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            let rec = self.consumer(i);
            let low = rec.low.load(Ordering::SeqCst);
            // A mask bit whose record is not in use is scribble (a record
            // leaves the mask before it is given back).
            if low < f || rec.in_use.load(Ordering::SeqCst) == 0 {
                continue;
            }
            // Only a subscriber with unread messages can be stalling.
            if stall > 0 && full_since > 0 && low < b && low < head {
                let active = rec.active_ms.load(Ordering::Relaxed).max(full_since);
                if now_ms.saturating_sub(active) >= stall {
                    continue;
                }
            }
            b = b.min(low);
        }
        b
    }

    /// Moves the frontier over every published message that no consumer
    /// gates any more, freeing their entries. Returns how many.
    pub(crate) fn release(&self, now_ms: u64, ack: &mut dyn FnMut([u8; 24])) -> u64 {
        self.advance_to(&|| self.bound(now_ms), ack)
    }

    /// Moves the frontier up to `to` (over published entries only), freeing
    /// each entry it passes and taking the entry's slot out of the ring.
    pub(crate) fn advance(&self, to: u64, ack: &mut dyn FnMut([u8; 24])) -> u64 {
        self.advance_to(&|| to, ack)
    }

    /// Moves the frontier while it is below `bound()`, evaluated after each
    /// load of the frontier word: a subscriber that joins in between bumps
    /// the word's epoch, so the CAS of a bound computed without it fails.
    fn advance_to(&self, bound: &dyn Fn() -> u64, ack: &mut dyn FnMut([u8; 24])) -> u64 {
        let h = self.header();
        let mut freed = 0;
        for _ in 0..(self.geo.slots as u64 * 2 + 64) {
            let fw = h.frontier.load(Ordering::SeqCst);
            let f = frontier_seq(fw);
            if f >= bound() {
                break;
            }
            let entry = self.entry(f);
            // Acquire: pairs with `publish`.
            let w = entry.state.load(Ordering::Acquire);
            if state_lap(w) != self.lap(f) || !published(state_tag(w)) {
                break; // Not published yet (or a scribbled entry).
            }
            // The frontier word only grows (its sequence part), so a CAS
            // that succeeds proves nobody freed `f` since we read the entry.
            if h.frontier
                .compare_exchange(
                    fw,
                    frontier_word(f + 1, frontier_epoch(fw)),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            self.free_entry(f, w, ack);
            freed += 1;
        }
        if freed > 0 {
            // Pairs with the SeqCst fence of a producer about to sleep
            // (`Sleeper::park`): it sees the freed entry, or we see its bit.
            fence(Ordering::SeqCst);
        }
        freed
    }

    /// Frees the entry of `seq` (state `w`, READY, passed by the frontier):
    /// its slot leaves the ring, then the entry is free for the next lap.
    fn free_entry(&self, seq: u64, w: u64, ack: &mut dyn FnMut([u8; 24])) {
        let entry = self.entry(seq);
        self.out_of_ring(entry.slot.load(Ordering::Relaxed), seq, ack);
        // Release: pairs with the Acquire load in `try_claim`.
        let _ = entry.state.compare_exchange(
            w,
            slot_state(state_lap(w) + 1, 0, TAG_FREE),
            Ordering::Release,
            Ordering::Relaxed,
        );
    }

    /// Consumer record `me` joins: a subscriber's cursor starts at the
    /// head, and from now on the frontier of a `Block` channel does not
    /// pass it. Returns the first sequence it will read.
    pub(crate) fn join(&self, me: usize) -> u64 {
        let h = self.header();
        let rec = self.consumer(me);
        rec.active_ms
            .store(crate::clock::now_ms(), Ordering::Relaxed);
        if self.queue {
            rec.low.store(LOW_NONE, Ordering::SeqCst);
            h.consumer_mask.fetch_or(1 << me, Ordering::SeqCst);
            return 0;
        }
        rec.low.store(
            frontier_seq(h.frontier.load(Ordering::SeqCst)),
            Ordering::SeqCst,
        );
        h.consumer_mask.fetch_or(1 << me, Ordering::SeqCst);
        // Bump the epoch: a reclaimer that computed its bound without us
        // fails its frontier CAS and looks again. Bounded: each failure is
        // another participant's progress.
        for _ in 0..(1u32 << 16) {
            let fw = h.frontier.load(Ordering::SeqCst);
            rec.low.store(frontier_seq(fw), Ordering::SeqCst);
            let next = frontier_word(frontier_seq(fw), frontier_epoch(fw) + 1);
            if h.frontier
                .compare_exchange(fw, next, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                let f = frontier_seq(fw);
                let head = h.head.load(Ordering::SeqCst);
                // A head more than a lap off the frontier was scribbled.
                let start = if head > f.saturating_add(self.geo.slots as u64) {
                    f
                } else {
                    head.max(f)
                };
                rec.low.store(start, Ordering::SeqCst);
                return start;
            }
        }
        frontier_seq(h.frontier.load(Ordering::SeqCst))
    }

    /// Consumer record `me` leaves: the frontier no longer waits for it.
    pub(crate) fn leave(&self, me: usize) {
        let h = self.header();
        h.consumer_mask.fetch_and(!(1u64 << me), Ordering::SeqCst);
        self.consumer(me).low.store(LOW_NONE, Ordering::SeqCst);
    }

    // ---- repair ----

    /// Marks every entry claimed by producer `owner` (dead, and its record
    /// locked by the caller) as published-and-skipped, so consumers and the
    /// frontier pass over it, and frees the pool slots it was writing.
    /// Returns how many entries.
    pub(crate) fn skip_claims_of(&self, owner: u32, ack: &mut dyn FnMut([u8; 24])) -> u64 {
        let mut n = 0;
        for seq in 0..self.geo.slots as u64 {
            let entry = self.entry(seq);
            let w = entry.state.load(Ordering::Acquire);
            if state_tag(w) == TAG_CLAIMED && state_owner(w) == owner {
                // Release: pairs with the Acquire load in `read`.
                if entry
                    .state
                    .compare_exchange(
                        w,
                        slot_state(state_lap(w), owner, TAG_SKIPPED),
                        Ordering::Release,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    n += 1;
                }
            }
        }
        let writer = owners_writer(owner);
        for b in 0..self.geo.pool {
            self.update_owners(b, ack, |w| {
                (w & OWNER_WRITER == writer).then_some(w & !OWNER_WRITER)
            });
        }
        self.header().skipped.fetch_add(n, Ordering::Relaxed);
        n
    }

    /// Frees pool slots whose owners word names owners that cannot be
    /// (only a scribbled file has them): a consumer bit of a record not in
    /// use, a writer whose record is not in use, an in-ring mark whose
    /// entry names another slot. Each check reads the owners word first and
    /// the record (or entry) after, and clears with a CAS on the word it
    /// read: a participant sets a bit or mark only while its record is in
    /// use (an entry names its slot before the slot says "in the ring"), so
    /// a real owner is never cleared. Also skips entries claimed by a
    /// producer record not in use. Returns how many entries and slots it
    /// freed.
    pub(crate) fn sweep_orphans(&self, ack: &mut dyn FnMut([u8; 24])) -> u64 {
        let mut freed = 0;
        // Entries claimed by producers that cannot be: skipped, so the
        // frontier can pass them.
        for i in 0..self.geo.slots as u64 {
            let entry = self.entry(i);
            let w = entry.state.load(Ordering::SeqCst);
            let owner = state_owner(w) as usize;
            if state_tag(w) == TAG_CLAIMED
                && (owner >= MAX_PRODUCERS || self.record(owner).in_use.load(Ordering::SeqCst) == 0)
                && entry
                    .state
                    .compare_exchange(
                        w,
                        slot_state(state_lap(w), state_owner(w), TAG_SKIPPED),
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                freed += 1;
            }
        }
        for b in 0..self.geo.pool {
            let before = self.update_owners(b, ack, |w| {
                if w == 0 {
                    return None;
                }
                let mut keep = w;
                let mut holders = w & OWNER_HOLDERS;
                while holders != 0 {
                    let c = holders.trailing_zeros() as usize;
                    holders &= holders - 1;
                    if self.consumer(c).in_use.load(Ordering::SeqCst) == 0 {
                        keep &= !owners_holder(c);
                    }
                }
                let writer = (w & OWNER_WRITER) >> 32;
                if w & OWNER_WRITER != OWNER_REQUEUED
                    && writer != 0
                    && (writer as usize > MAX_PRODUCERS
                        || self
                            .record(writer as usize - 1)
                            .in_use
                            .load(Ordering::SeqCst)
                            == 0)
                {
                    keep &= !OWNER_WRITER;
                }
                if w & OWNER_IN_RING != 0 {
                    let tag = (w >> 41) & ((1 << 23) - 1);
                    if self.entry(tag).slot.load(Ordering::SeqCst) != b {
                        keep &= !OWNER_RING_MASK;
                    }
                }
                (keep != w).then_some(keep)
            });
            if before.is_some() && self.slot(b).owners.load(Ordering::SeqCst) == 0 {
                freed += 1;
            }
        }
        freed
    }

    /// Lets go of every slot consumer `c` (dead, its record locked by the
    /// caller) holds. With `requeue`, a slot nobody else holds goes back to
    /// the queue, counted as delivered once more. Returns how many slots
    /// were requeued.
    pub(crate) fn drop_holds_of(
        &self,
        c: usize,
        requeue: bool,
        ack: &mut dyn FnMut([u8; 24]),
    ) -> u64 {
        let bit = owners_holder(c);
        let mut requeued = 0;
        for b in 0..self.geo.pool {
            let slot = self.slot(b);
            if slot.owners.load(Ordering::Acquire) & bit == 0 {
                continue;
            }
            if requeue {
                // Counted before it is marked, undone if the mark fails:
                // a reader that sees the mark sees the count.
                let delivered = slot.delivered.load(Ordering::Relaxed);
                slot.delivered
                    .store(delivered.wrapping_add(1), Ordering::Relaxed);
                let before = self.update_owners(b, ack, |w| {
                    (w & bit != 0 && w & !bit & !OWNER_HOLDERS == 0)
                        .then_some((w & !bit) | OWNER_REQUEUED)
                });
                if before.is_some() {
                    requeued += 1;
                    // After the mark (see `take_requeued`).
                    self.header().requeued.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                slot.delivered.store(delivered, Ordering::Relaxed);
            }
            self.unhold(b, c, ack);
        }
        self.header()
            .redelivered
            .fetch_add(requeued, Ordering::Relaxed);
        requeued
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A zeroed, 64-aligned ring in process memory (runs under Miri), set
    /// up as a new channel file is.
    struct Mem {
        // Owns the memory `ring` points into.
        _buf: Vec<AtomicU64>,
        ring: Ring,
    }

    fn mem(slots: u32, queue: bool, drop_oldest: bool) -> Mem {
        let geo = Geometry::new(slots, 128, 1).unwrap();
        let words = geo.file_size() / 8 + 8;
        let buf: Vec<AtomicU64> = (0..words).map(|_| AtomicU64::new(0)).collect();
        let addr = buf.as_ptr() as usize;
        let aligned = (addr + 63) & !63;
        let base = buf.as_ptr().cast::<u8>().wrapping_add(aligned - addr) as *mut u8;
        // SAFETY: the buffer holds file_size bytes past the 64-aligned start,
        // zeroed, and lives in Mem beside the ring.
        let ring = unsafe { Ring::new(NonNull::new(base).unwrap(), geo, queue, drop_oldest) };
        for i in 0..slots {
            ring.entry(i as u64).slot.store(i, Ordering::Relaxed);
        }
        for b in 0..geo.pool {
            ring.slot(b).backed.store(u32::MAX, Ordering::Relaxed);
        }
        for c in 0..MAX_CONSUMERS {
            ring.consumer(c).low.store(LOW_NONE, Ordering::Relaxed);
        }
        Mem { _buf: buf, ring }
    }

    fn join(r: &Ring, c: usize) -> u64 {
        r.consumer(c).in_use.store(1, Ordering::SeqCst);
        r.join(c)
    }

    impl Ring {
        fn producer_record_in_use_for_tests(&self, p: usize) {
            self.record(p).in_use.store(1, Ordering::SeqCst);
        }
    }

    fn no_ack() -> impl FnMut([u8; 24]) {
        |_| panic!("nothing here refers to the store")
    }

    /// Claims, takes a slot and publishes a one-byte message.
    fn send(r: &Ring, me: u32, byte: u8) -> bool {
        match r.try_claim(me, &|| 0, &mut no_ack()) {
            Claim::Claimed(s) => {
                let b = r.alloc(me, &[r.previous_slot(s)], 1, &AllBacked).unwrap();
                // SAFETY: we are the slot's writer; 1 byte fits.
                unsafe { r.write_inline(b, &[byte]) };
                r.publish(s, me, b, 1, 0);
                true
            }
            Claim::Full => false,
        }
    }

    fn byte(r: &Ring, h: &Held) -> u8 {
        // SAFETY: the slot is held by the reader (test).
        unsafe { *r.payload(h.slot) }
    }

    /// Subscriber `c` reads at `seq` and must find a message.
    fn got(r: &Ring, c: usize, seq: u64) -> Held {
        match r.next(c, seq, &mut no_ack()) {
            Next::Got(h) => h,
            other => panic!("seq {seq}: {other:?}"),
        }
    }

    fn set_low(r: &Ring, c: usize, low: u64) {
        r.consumer(c).low.store(low, Ordering::SeqCst);
    }

    #[test]
    fn block_unread_messages_gate_producers_but_held_ones_do_not() {
        let m = mem(4, false, false);
        let r = &m.ring;
        assert_eq!(join(r, 0), 0);
        for b in 0..4 {
            assert!(send(r, 0, b));
        }
        assert!(!send(r, 0, 9), "4 unread messages fill a 4-slot ring");
        // The subscriber reads all four and holds them all.
        let held: Vec<Held> = (0..4).map(|s| got(r, 0, s)).collect();
        set_low(r, 0, 4);
        for b in 4..12 {
            assert!(
                send(r, 0, b),
                "held messages keep their slots, not the ring"
            );
            let h = got(r, 0, b as u64);
            assert_eq!(byte(r, &h), b);
            set_low(r, 0, b as u64 + 1);
            r.unhold(h.slot, 0, &mut no_ack());
        }
        for (i, h) in held.iter().enumerate() {
            assert_eq!(byte(r, h), i as u8, "a held slot is never rewritten");
            assert_eq!(h.seq, i as u64);
            assert_ne!(r.slot(h.slot).owners.load(Ordering::SeqCst), 0);
            r.unhold(h.slot, 0, &mut no_ack());
            assert_eq!(
                r.slot(h.slot).owners.load(Ordering::SeqCst),
                0,
                "out of the ring and let go: free"
            );
        }
    }

    #[test]
    fn drop_oldest_overwrites_unread_messages_and_reports_the_lag() {
        let m = mem(4, false, true);
        let r = &m.ring;
        join(r, 0);
        assert!(send(r, 0, 0));
        let held = got(r, 0, 0);
        set_low(r, 0, 1);
        for b in 1..20 {
            assert!(send(r, 0, b), "the subscriber never stops a producer");
        }
        assert_eq!(byte(r, &held), 0, "a held message survives the overwrites");
        match r.next(0, 1, &mut no_ack()) {
            Next::Lagged { at } => assert_eq!(at, 16, "resume at the oldest kept"),
            other => panic!("{other:?}"),
        }
        let h = got(r, 0, 16);
        assert_eq!(byte(r, &h), 16);
        assert_eq!(r.next(0, 20, &mut no_ack()), Next::Wait);
    }

    #[test]
    fn a_subscriber_let_go_by_the_stall_timeout_stops_gating() {
        let m = mem(4, false, false);
        let r = &m.ring;
        let h = r.header();
        h.stall_timeout_ms.store(200, Ordering::Relaxed);
        join(r, 0);
        join(r, 1);
        for b in 0..4 {
            assert!(send(r, 0, b));
        }
        set_low(r, 1, 4); // subscriber 1 read everything
        r.consumer(0).active_ms.store(1_000, Ordering::Relaxed);
        r.consumer(1).active_ms.store(1_000, Ordering::Relaxed);
        // Not full before: nobody is let go.
        assert_eq!(r.bound(5_000), 0);
        h.full_since_ms.store(1_000, Ordering::Relaxed);
        assert_eq!(r.bound(1_199), 0, "stalled for 199 ms: still gating");
        assert_eq!(r.bound(1_200), 4, "200 ms: let go");
        // Counted from when the ring became full, not the last receive.
        h.full_since_ms.store(4_900, Ordering::Relaxed);
        assert_eq!(r.bound(5_000), 0);
        assert_eq!(r.release(5_100, &mut no_ack()), 4);
        // Once passed, its cursor no longer gates anyone.
        h.full_since_ms.store(0, Ordering::Relaxed);
        assert_eq!(r.bound(5_100), 4);
        assert!(matches!(
            r.next(0, 0, &mut no_ack()),
            Next::Lagged { at: 4 }
        ));
    }

    #[test]
    fn queue_gives_each_message_to_one_receiver_and_a_held_job_frees_its_entry() {
        let m = mem(4, true, false);
        let r = &m.ring;
        join(r, 0);
        join(r, 1);
        for b in 0..3 {
            assert!(send(r, 0, b));
        }
        let mut got = vec![];
        for me in [0, 1, 0] {
            match r.take(me) {
                Take::Taken(h) => got.push((me, byte(r, &h), h)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            got.iter().map(|x| (x.0, x.1)).collect::<Vec<_>>(),
            vec![(0, 0), (1, 1), (0, 2)]
        );
        assert_eq!(r.take(1), Take::Wait(Read::Empty));
        // Receiver 0 holds job 0 while 40 more pass through receiver 1.
        for b in 3..43 {
            assert!(send(r, 0, b) || (r.release(0, &mut no_ack()) > 0 && send(r, 0, b)));
            let Take::Taken(h) = r.take(1) else { panic!() };
            assert_eq!(byte(r, &h), b);
            r.unhold(h.slot, 1, &mut no_ack());
        }
        assert_eq!(byte(r, &got[0].2), 0, "the held job is intact");
    }

    #[test]
    fn at_least_once_requeues_what_a_dead_receiver_held() {
        let m = mem(4, true, false);
        let r = &m.ring;
        join(r, 0);
        join(r, 1);
        assert!(send(r, 0, 7));
        assert!(send(r, 0, 8));
        let Take::Taken(a) = r.take(0) else { panic!() };
        assert_eq!((a.seq, a.delivered), (0, 0));
        // Receiver 0 dies holding job 7; its repair requeues it.
        r.leave(0);
        assert_eq!(r.drop_holds_of(0, true, &mut no_ack()), 1);
        assert_eq!(r.header().requeued.load(Ordering::SeqCst), 1);
        let Take::Taken(b) = r.take(1) else { panic!() };
        assert_eq!((b.seq, b.slot, b.delivered, byte(r, &b)), (0, a.slot, 1, 7));
        assert_eq!(r.header().requeued.load(Ordering::SeqCst), 0);
        let Take::Taken(c) = r.take(1) else { panic!() };
        assert_eq!((c.seq, c.delivered, byte(r, &c)), (1, 0, 8));
        // At most once: a dead receiver's job is let go (and freed).
        r.leave(1);
        assert_eq!(r.drop_holds_of(1, false, &mut no_ack()), 0);
        assert_eq!(r.slot(c.slot).owners.load(Ordering::SeqCst), 0);
        assert_eq!(r.slot(b.slot).owners.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_stale_requeue_count_is_reset_by_a_scan_that_finds_nothing() {
        let m = mem(4, true, false);
        let r = &m.ring;
        join(r, 0);
        r.header().requeued.store(5, Ordering::SeqCst);
        assert_eq!(r.take(0), Take::Wait(Read::Empty));
        assert_eq!(r.header().requeued.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_last_owner_of_an_overflow_slot_acknowledges_its_handle_once() {
        let m = mem(2, false, false);
        let r = &m.ring;
        join(r, 0);
        join(r, 1);
        let Claim::Claimed(s) = r.try_claim(0, &|| 0, &mut no_ack()) else {
            panic!()
        };
        let b = r.alloc(0, &[], 1, &AllBacked).unwrap();
        let h: [u8; 24] = std::array::from_fn(|i| i as u8 + 1);
        r.write_handle(b, &h);
        r.publish(s, 0, b, 1 << 20, FLAG_OVERFLOW);
        let x = got(r, 0, 0);
        let y = got(r, 1, 0);
        assert_eq!(x.flags, FLAG_OVERFLOW);
        set_low(r, 0, 1);
        set_low(r, 1, 1);
        let mut acked = vec![];
        assert_eq!(r.release(0, &mut |x| acked.push(x)), 1);
        r.unhold(x.slot, 0, &mut |x| acked.push(x));
        assert!(acked.is_empty(), "subscriber 1 still holds it");
        r.unhold(y.slot, 1, &mut |x| acked.push(x));
        r.unhold(y.slot, 1, &mut |x| acked.push(x));
        assert_eq!(acked, vec![h], "acknowledged once, by the last owner");
    }

    /// A [`Backing`] that records its calls: `backed` per slot, and
    /// whether the file system has space.
    struct Marks {
        backed: std::cell::RefCell<Vec<usize>>,
        space: std::cell::Cell<bool>,
        calls: std::cell::RefCell<Vec<(u32, usize, usize)>>,
    }

    impl Marks {
        fn new(pool: u32) -> Self {
            Self {
                backed: std::cell::RefCell::new(vec![0; pool as usize]),
                space: std::cell::Cell::new(true),
                calls: std::cell::RefCell::new(vec![]),
            }
        }
    }

    impl Backing for Marks {
        fn backed(&self, b: u32) -> usize {
            self.backed.borrow()[b as usize]
        }
        fn back(&self, b: u32, to: usize) -> bool {
            let from = self.backed(b);
            self.calls.borrow_mut().push((b, from, to));
            if self.space.get() {
                self.backed.borrow_mut()[b as usize] = to;
            }
            self.space.get()
        }
    }

    /// A slot is backed in pages as far as its longest message reaches:
    /// never again below that, never past the payload. With no space left,
    /// a message takes a free slot already backed far enough (the
    /// preferred one is passed over), and only when there is none is the
    /// answer `NoSpace`; a slot that could not be backed is given back.
    #[test]
    fn a_slot_is_backed_as_far_as_its_messages_reach() {
        let geo = Geometry::new(2, (64 << 10) + 64, 1).unwrap();
        let words = geo.file_size() / 8 + 8;
        let buf: Vec<AtomicU64> = (0..words).map(|_| AtomicU64::new(0)).collect();
        let addr = buf.as_ptr() as usize;
        let base = buf
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(((addr + 63) & !63) - addr) as *mut u8;
        // SAFETY: file_size bytes past the 64-aligned start, zeroed, and
        // `buf` outlives the ring.
        let r = unsafe { Ring::new(NonNull::new(base).unwrap(), geo, false, false) };
        let m = Marks::new(geo.pool);
        for need in [100, 4096, 10_000, 1 << 20] {
            assert_eq!(r.alloc(0, &[0], need, &m), Ok(0), "{need}");
            r.unalloc(0, 0);
        }
        assert_eq!(
            *m.calls.borrow(),
            vec![(0, 0, 4096), (0, 4096, 12288), (0, 12288, 64 << 10)],
            "pages as far as needed, once, clamped to the payload"
        );
        // No space: slot 1 (preferred, unbacked) is passed over for slot 0,
        // backed far enough, and given back untouched.
        m.space.set(false);
        assert_eq!(r.alloc(0, &[1], 8192, &m), Ok(0));
        assert_eq!(r.slot(1).owners.load(Ordering::SeqCst), 0);
        assert_eq!(m.backed(1), 0);
        // With slot 0 taken, no free slot can take 8 KiB without memory.
        assert_eq!(r.alloc(0, &[1], 8192, &m), Err(NoSlot::NoSpace));
        assert!((1..geo.pool).all(|b| r.slot(b).owners.load(Ordering::SeqCst) == 0));
    }

    /// The slots of the last few entries, most recent first.
    #[test]
    fn recent_slots_name_the_last_entries_slots_newest_first() {
        let m = mem(8, false, false);
        let r = &m.ring;
        for (seq, b) in [(5u64, 40u32), (6, 41), (7, 42)] {
            r.entry(seq).slot.store(b, Ordering::Relaxed);
        }
        let mut out = [0u32; 3];
        r.recent_slots(8, &mut out);
        assert_eq!(out, [42, 41, 40]);
    }

    #[test]
    fn the_pool_prefers_the_warm_slot_and_reports_exhaustion_and_no_space() {
        let m = mem(2, false, false);
        let r = &m.ring;
        let pool = r.geometry().pool;
        assert_eq!(r.alloc(3, &[1], 1, &AllBacked), Ok(1));
        assert_eq!(r.slot(1).owners.load(Ordering::SeqCst), owners_writer(3));
        let mut all = vec![1];
        while let Ok(b) = r.alloc(3, &[1], 1, &AllBacked) {
            all.push(b);
        }
        assert_eq!(all.len(), pool as usize);
        assert_eq!(r.alloc(3, &[], 1, &AllBacked), Err(NoSlot::Exhausted));
        r.unalloc(5, 3);
        let marks = Marks::new(pool);
        marks.space.set(false);
        assert_eq!(r.alloc(3, &[], 1, &marks), Err(NoSlot::NoSpace));
        assert_eq!(r.slot(5).owners.load(Ordering::SeqCst), 0, "given back");
        marks.space.set(true);
        assert_eq!(r.alloc(3, &[], 1, &marks), Ok(5));
        assert_eq!(
            marks.backed(5),
            r.geometry().payload_stride(),
            "a payload smaller than a page is backed whole"
        );
        // A dead writer's slots are freed by its repair.
        r.skip_claims_of(3, &mut no_ack());
        assert!((0..pool).all(|b| r.slot(b).owners.load(Ordering::SeqCst) == 0));
    }

    #[test]
    fn a_pool_full_of_scribbled_owners_is_swept_but_real_owners_stay() {
        let m = mem(2, false, false);
        let r = &m.ring;
        join(r, 0);
        assert!(send(r, 0, 1));
        let held = got(r, 0, 0);
        set_low(r, 0, 1);
        r.producer_record_in_use_for_tests(2);
        let live = r.alloc(2, &[], 1, &AllBacked).unwrap();
        let pool = r.geometry().pool;
        // Scribble every other slot: bits of consumers not in use, writers
        // not in use, in-ring marks no entry backs.
        let mut fakes = 0;
        for b in 0..pool {
            if r.slot(b).owners.load(Ordering::SeqCst) == 0 {
                let w = match b % 3 {
                    0 => owners_holder(7),
                    1 => owners_writer(9),
                    _ => owners_in_ring(1 << 22),
                };
                r.slot(b).owners.store(w, Ordering::SeqCst);
                fakes += 1;
            }
        }
        assert_eq!(r.alloc(2, &[], 1, &AllBacked), Err(NoSlot::Exhausted));
        assert_eq!(r.sweep_orphans(&mut no_ack()), fakes);
        assert_ne!(r.slot(held.slot).owners.load(Ordering::SeqCst), 0, "held");
        assert_eq!(
            r.slot(live).owners.load(Ordering::SeqCst),
            owners_writer(2),
            "loaned"
        );
        assert_eq!(byte(r, &held), 1);
        assert!(r.alloc(2, &[], 1, &AllBacked).is_ok());
    }

    #[test]
    fn a_dead_producers_claim_is_skipped_and_its_slot_freed() {
        let m = mem(4, false, false);
        let r = &m.ring;
        join(r, 0);
        let Claim::Claimed(s) = r.try_claim(7, &|| 0, &mut no_ack()) else {
            panic!()
        };
        let b = r.alloc(7, &[r.previous_slot(s)], 1, &AllBacked).unwrap();
        assert!(send(r, 1, 42));
        assert_eq!(r.read(s), Read::Pending { owner: 7 });
        assert_eq!(r.skip_claims_of(6, &mut no_ack()), 0);
        assert_eq!(r.skip_claims_of(7, &mut no_ack()), 1);
        assert_eq!(r.read(s), Read::Skipped);
        assert_eq!(r.slot(b).owners.load(Ordering::SeqCst), 0);
        assert_eq!(r.next(0, s, &mut no_ack()), Next::Pass);
        assert_eq!(byte(r, &got(r, 0, s + 1)), 42);
    }

    #[test]
    fn a_producer_that_died_between_in_ring_and_ready_leaves_no_slot_behind() {
        let m = mem(2, false, false);
        let r = &m.ring;
        let Claim::Claimed(s) = r.try_claim(4, &|| 0, &mut no_ack()) else {
            panic!()
        };
        let b = r.alloc(4, &[], 1, &AllBacked).unwrap();
        // publish() up to the owners word, then death.
        r.entry(s).slot.store(b, Ordering::Relaxed);
        r.slot(b).owners.store(owners_in_ring(s), Ordering::SeqCst);
        assert_eq!(r.skip_claims_of(4, &mut no_ack()), 1);
        assert_eq!(r.release(0, &mut no_ack()), 1, "no subscriber: passed");
        assert_eq!(r.slot(b).owners.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_join_bumps_the_epoch_so_a_stale_frontier_cas_fails() {
        let m = mem(4, false, false);
        let r = &m.ring;
        assert!(send(r, 0, 1));
        let stale = r.header().frontier.load(Ordering::SeqCst);
        join(r, 0);
        assert_ne!(r.header().frontier.load(Ordering::SeqCst), stale);
        assert!(r
            .header()
            .frontier
            .compare_exchange(
                stale,
                frontier_word(1, 0),
                Ordering::SeqCst,
                Ordering::SeqCst
            )
            .is_err());
    }

    #[test]
    fn a_freer_that_died_after_the_frontier_cas_is_helped() {
        let m = mem(2, false, false);
        let r = &m.ring;
        assert!(send(r, 0, 1));
        assert!(send(r, 0, 2));
        // The frontier moved past 0 but entry 0 was never freed.
        r.header()
            .frontier
            .store(frontier_word(1, 0), Ordering::SeqCst);
        assert!(send(r, 0, 3), "the producer frees the passed entry itself");
        assert_eq!(
            r.slot(0).owners.load(Ordering::SeqCst) & OWNER_RING_MASK,
            owners_in_ring(2)
        );
    }

    #[test]
    fn mask_bits_of_records_not_in_use_are_ignored() {
        let m = mem(4, false, false);
        let r = &m.ring;
        join(r, 0);
        assert!(send(r, 0, 1));
        assert!(send(r, 0, 2));
        set_low(r, 0, 2);
        r.header()
            .consumer_mask
            .fetch_or(0xffff_ffff_ffff_fff0, Ordering::SeqCst);
        r.consumer(5).low.store(0, Ordering::SeqCst);
        assert_eq!(r.bound(0), 2);
        assert_eq!(r.release(0, &mut no_ack()), 2);
    }

    #[test]
    fn a_scribbled_head_or_tail_is_recovered_from() {
        for queue in [false, true] {
            let m = mem(4, queue, false);
            let r = &m.ring;
            join(r, 0);
            for (i, head) in [u64::MAX / 2, 1 << 40, 3].into_iter().enumerate() {
                r.header().head.store(head, Ordering::SeqCst);
                let mut ok = send(r, 0, i as u8);
                if !ok && r.release(0, &mut no_ack()) > 0 {
                    ok = send(r, 0, i as u8);
                }
                if queue {
                    r.header().tail.store(head ^ 0x5555, Ordering::SeqCst);
                    let mut taken = false;
                    for _ in 0..3 {
                        if let Take::Taken(h) = r.take(0) {
                            r.unhold(h.slot, 0, &mut no_ack());
                            taken = true;
                            break;
                        }
                    }
                    assert!(
                        taken || !ok,
                        "queue, head {head}: head {} tail {} frontier {} entries {:?}",
                        r.header().head.load(Ordering::SeqCst),
                        r.header().tail.load(Ordering::SeqCst),
                        frontier_seq(r.header().frontier.load(Ordering::SeqCst)),
                        (0..4).map(|s| r.read(s)).collect::<Vec<_>>()
                    );
                } else {
                    let s = r.header().head.load(Ordering::SeqCst) - 1;
                    set_low(r, 0, s + 1);
                    assert!(ok, "broadcast, head {head}");
                }
                assert!(r.consistent() || head == 3);
            }
        }
    }

    #[test]
    fn a_scribbled_ring_never_hangs_or_reads_out_of_bounds() {
        for (queue, drop_oldest) in [(true, false), (false, false), (false, true)] {
            let m = mem(4, queue, drop_oldest);
            let r = &m.ring;
            let h = r.header();
            for v in [u64::MAX, 1 << 63, 12345, 0] {
                h.head.store(v, Ordering::SeqCst);
                h.tail.store(v.wrapping_mul(3), Ordering::SeqCst);
                h.frontier.store(v ^ 0x55, Ordering::SeqCst);
                h.consumer_mask.store(v, Ordering::SeqCst);
                h.requeued.store(v, Ordering::SeqCst);
                for s in 0..4u64 {
                    r.entry(s)
                        .state
                        .store(v.rotate_left(s as u32), Ordering::SeqCst);
                    r.entry(s).slot.store(v as u32 ^ s as u32, Ordering::SeqCst);
                }
                for b in 0..r.geometry().pool {
                    r.slot(b).owners.store(v.rotate_right(b), Ordering::SeqCst);
                    r.slot(b).len.store(u32::MAX, Ordering::SeqCst);
                }
                let _ = r.try_claim(0, &|| 0, &mut |_| {});
                let _ = r.take(0);
                let _ = r.next(0, v, &mut |_| {});
                let _ = r.release(0, &mut |_| {});
                let _ = r.alloc(0, &[v as u32], 1, &AllBacked);
                let _ = r.read(v);
                let _ = r.consistent();
                let _ = r.drop_holds_of(0, true, &mut |_| {});
                let _ = r.skip_claims_of(0, &mut |_| {});
            }
        }
    }

    /// A reclaimer between the two steps of `free_entry`: the slot is out
    /// of the ring (freed, or already another producer's), the entry still
    /// reads READY. A subscriber's hold must see it and lag, leaving the
    /// owners word as it found it.
    #[test]
    fn a_subscriber_never_holds_a_slot_that_left_the_ring_under_it() {
        let m = mem(4, false, false);
        let r = &m.ring;
        join(r, 0);
        assert!(send(r, 0, 5));
        assert!(send(r, 0, 6));
        let (b0, b1) = (
            r.entry(0).slot.load(Ordering::Relaxed),
            r.entry(1).slot.load(Ordering::Relaxed),
        );
        // Seq 0: out of the ring and free, entry still READY.
        r.out_of_ring(b0, 0, &mut no_ack());
        assert_eq!(r.slot(b0).owners.load(Ordering::SeqCst), 0);
        assert_eq!(r.read(0), Read::Ready { slot: b0, owner: 0 });
        assert_eq!(r.next(0, 0, &mut no_ack()), Next::Lagged { at: 1 });
        assert_eq!(
            r.slot(b0).owners.load(Ordering::SeqCst),
            0,
            "no bit left behind"
        );
        // Seq 1: out of the ring and taken by producer 2 for a new message.
        r.out_of_ring(b1, 1, &mut no_ack());
        assert_eq!(r.alloc(2, &[b1], 1, &AllBacked), Ok(b1));
        assert_eq!(r.next(0, 1, &mut no_ack()), Next::Lagged { at: 2 });
        assert_eq!(
            r.slot(b1).owners.load(Ordering::SeqCst),
            owners_writer(2),
            "the writer's slot, without our bit"
        );
    }

    /// The redelivery count belongs to a message, not to its slot: a slot
    /// freed after a redelivery carries its next message as a first one.
    #[test]
    fn a_slot_reused_after_a_redelivery_starts_a_first_delivery() {
        let m = mem(4, true, false);
        let r = &m.ring;
        join(r, 0);
        join(r, 1);
        assert!(send(r, 0, 7));
        let Take::Taken(a) = r.take(0) else { panic!() };
        r.leave(0);
        assert_eq!(r.drop_holds_of(0, true, &mut no_ack()), 1);
        let Take::Taken(b) = r.take(1) else { panic!() };
        assert_eq!((b.slot, b.delivered), (a.slot, 1));
        r.unhold(b.slot, 1, &mut no_ack());
        assert_eq!(r.slot(a.slot).owners.load(Ordering::SeqCst), 0);
        let Claim::Claimed(s) = r.try_claim(0, &|| 0, &mut no_ack()) else {
            panic!()
        };
        assert_eq!(r.alloc(0, &[a.slot], 1, &AllBacked), Ok(a.slot));
        // SAFETY: we are the slot's writer; 1 byte fits.
        unsafe { r.write_inline(a.slot, &[9]) };
        r.publish(s, 0, a.slot, 1, 0);
        let Take::Taken(c) = r.take(1) else { panic!() };
        assert_eq!((c.seq, c.slot, c.delivered, byte(r, &c)), (1, a.slot, 0, 9));
    }
}

/// Model checks of the ring: `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::channel::wait::{self, Sleeper};
    use loom::thread;

    fn ring(slots: u32, queue: bool, drop_oldest: bool) -> Ring {
        let geo = Geometry::new(slots, MIN_SLOT_SIZE, 1).unwrap();
        let mem: &'static mut [u64] =
            Box::leak(vec![0u64; geo.file_size() / 8 + 8].into_boxed_slice());
        let addr = mem.as_mut_ptr() as usize;
        let base = mem
            .as_mut_ptr()
            .cast::<u8>()
            .wrapping_add(((addr + 63) & !63) - addr);
        // SAFETY: file_size bytes past the 64-aligned start, leaked.
        let r = unsafe { Ring::new(NonNull::new(base).unwrap(), geo, queue, drop_oldest) };
        for i in 0..slots {
            r.entry(i as u64).slot.store(i, Ordering::Relaxed);
        }
        for c in 0..MAX_CONSUMERS {
            r.consumer(c).low.store(LOW_NONE, Ordering::Relaxed);
        }
        r
    }

    fn join(r: &Ring, c: usize) -> u64 {
        r.consumer(c).in_use.store(1, Ordering::SeqCst);
        r.join(c)
    }

    /// The message of sequence `seq`: its handle words (atomics under loom,
    /// unlike the payload bytes) carry its identity.
    fn body(seq: u64) -> [u8; 24] {
        std::array::from_fn(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8))
    }

    /// Claims (helping the frontier when full), takes a slot, writes the
    /// body and publishes. Returns the sequence.
    fn send(r: &Ring, me: u32) -> u64 {
        loop {
            if let Claim::Claimed(s) = r.try_claim(me, &|| 0, &mut |_| {}) {
                let b = loop {
                    match r.alloc(me, &[r.previous_slot(s)], 1, &AllBacked) {
                        Ok(b) => break b,
                        Err(_) => thread::yield_now(),
                    }
                };
                r.write_handle(b, &body(s));
                r.publish(s, me, b, 24, 0);
                return s;
            }
            r.release(0, &mut |_| {});
            thread::yield_now();
        }
    }

    #[test]
    fn loom_block_a_subscriber_reads_every_message_in_order_and_held_slots_never_change() {
        loom::model(|| {
            let r = ring(2, false, false);
            assert_eq!(join(&r, 0), 0);
            let p = thread::spawn(move || {
                for _ in 0..3 {
                    send(&r, 0);
                }
            });
            let mut held = vec![];
            for seq in 0..3u64 {
                let h = loop {
                    match r.next(0, seq, &mut |_| {}) {
                        Next::Got(h) => break h,
                        Next::Wait => thread::yield_now(),
                        other => panic!("seq {seq}: {other:?}"),
                    }
                };
                assert_eq!(h.seq, seq, "in order, none lost");
                assert_eq!(r.read_handle(h.slot), body(seq));
                // Past it, still holding it: the producer goes on.
                r.consumer(0).low.store(seq + 1, Ordering::SeqCst);
                held.push(h);
            }
            p.join().unwrap();
            for h in &held {
                assert_eq!(r.read_handle(h.slot), body(h.seq), "a held slot changed");
                r.unhold(h.slot, 0, &mut |_| {});
            }
        });
    }

    #[test]
    fn loom_drop_oldest_overwrites_around_a_held_slot_and_the_reader_gets_it_whole_or_lags() {
        loom::model(|| {
            let r = ring(2, false, true);
            join(&r, 0);
            send(&r, 0);
            let p = thread::spawn(move || {
                send(&r, 0);
                send(&r, 0);
            });
            // The subscriber reads seq 0 while the producer may overwrite it.
            match r.next(0, 0, &mut |_| {}) {
                Next::Got(h) => {
                    thread::yield_now();
                    assert_eq!(r.read_handle(h.slot), body(0), "a held slot changed");
                    p.join().unwrap();
                    assert_eq!(r.read_handle(h.slot), body(0), "a held slot changed");
                    r.unhold(h.slot, 0, &mut |_| {});
                }
                Next::Lagged { at } => {
                    assert!(at >= 1);
                    p.join().unwrap();
                }
                other => panic!("{other:?}"),
            }
        });
    }

    #[test]
    fn loom_a_queue_message_goes_to_exactly_one_receiver() {
        loom::model(|| {
            let r = ring(2, true, false);
            join(&r, 0);
            join(&r, 1);
            send(&r, 0);
            let a = thread::spawn(move || matches!(r.take(0), Take::Taken(_)));
            let b = matches!(r.take(1), Take::Taken(_));
            let a = a.join().unwrap();
            assert!(a ^ b, "taken by exactly one: {a} {b}");
        });
    }

    #[test]
    fn loom_a_dead_receivers_job_is_redelivered_exactly_once() {
        loom::model(|| {
            let r = ring(2, true, false);
            join(&r, 0);
            join(&r, 1);
            send(&r, 0);
            let Take::Taken(first) = r.take(0) else {
                panic!()
            };
            // Receiver 0 dies holding it; its repair runs while receiver 1
            // looks for work.
            let repair = thread::spawn(move || {
                r.leave(0);
                r.drop_holds_of(0, true, &mut |_| {})
            });
            let mut got = None;
            for _ in 0..3 {
                if let Take::Taken(h) = r.take(1) {
                    got = Some(h);
                    break;
                }
                thread::yield_now();
            }
            assert_eq!(repair.join().unwrap(), 1);
            let h = match got {
                Some(h) => h,
                None => match r.take(1) {
                    Take::Taken(h) => h,
                    other => panic!("the job was lost: {other:?}"),
                },
            };
            assert_eq!((h.slot, h.seq, h.delivered), (first.slot, 0, 1));
            assert_eq!(r.read_handle(h.slot), body(0));
            assert!(matches!(r.take(1), Take::Wait(_)), "delivered twice");
        });
    }

    #[test]
    fn loom_a_joining_subscriber_never_has_its_first_message_freed() {
        loom::model(|| {
            let r = ring(4, false, false);
            // No subscriber yet: message 0 is published and freed at once.
            send(&r, 0);
            assert_eq!(r.release(0, &mut |_| {}), 1);
            let producer = thread::spawn(move || send(&r, 0));
            let releaser = thread::spawn(move || {
                r.release(0, &mut |_| {});
            });
            let start = join(&r, 1);
            producer.join().unwrap();
            releaser.join().unwrap();
            let frontier = frontier_seq(r.header().frontier.load(Ordering::SeqCst));
            assert!(
                frontier <= start,
                "freed {frontier} > joiner's start {start}"
            );
            if start == 1 {
                let Next::Got(h) = r.next(1, 1, &mut |_| {}) else {
                    panic!()
                };
                assert_eq!(r.read_handle(h.slot), body(1));
            }
        });
    }

    #[test]
    fn loom_a_consumer_going_to_sleep_is_always_woken() {
        loom::model(|| {
            let r = ring(2, false, false);
            join(&r, 0);
            let producer = thread::spawn(move || {
                send(&r, 0);
                let h = r.header();
                wait::wake(&h.data_seq, &h.data_waiters, false);
            });
            let h = r.header();
            let sleeper = Sleeper::new(0);
            let slept = sleeper.park(
                &h.data_seq,
                &h.data_waiters,
                std::time::Duration::from_millis(1),
                || r.read(0) != Read::Empty,
            );
            producer.join().unwrap();
            // Under loom a sleep ends only when the producer bumps the word
            // (no timeout), so reaching here proves the wake-up was not lost.
            if slept.is_some() {
                assert_ne!(r.read(0), Read::Empty);
            }
        });
    }

    /// The async wait (`future.rs`, `reactor.rs`): the future announces
    /// itself, looks, and registers the word's value it read with the
    /// helper thread, which waits (elsewhere, later) until the word moves
    /// from it. A message published between the look and the registration
    /// is never slept through.
    #[test]
    fn loom_an_async_waiter_registered_after_its_look_is_always_woken() {
        loom::model(|| {
            let r = ring(2, false, false);
            join(&r, 0);
            let producer = thread::spawn(move || {
                send(&r, 0);
                let h = r.header();
                wait::wake(&h.data_seq, &h.data_waiters, false);
            });
            let h = r.header();
            let sleeper = Sleeper::new(0);
            let seen = sleeper.announce(&h.data_seq, &h.data_waiters);
            if r.read(0) == Read::Empty {
                // Registered: the helper waits on the word from `seen`.
                let helper = thread::spawn(move || {
                    while r.header().data_seq.load(Ordering::SeqCst) == seen {
                        thread::yield_now();
                    }
                });
                helper.join().unwrap();
                // Woken: the poll that follows finds the message.
                assert_ne!(r.read(0), Read::Empty);
            }
            sleeper.withdraw(&h.data_waiters);
            producer.join().unwrap();
        });
    }
}
