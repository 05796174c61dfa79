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
    /// A message, in pool slot `slot`.
    Ready { slot: u32 },
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
}

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
    pub(crate) unsafe fn new(base: NonNull<u8>, geo: Geometry, queue: bool, drop_oldest: bool) -> Self {
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
        self.geo.payloads_offset() + (b as usize).min(self.geo.pool as usize - 1) * self.geo.payload_stride()
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

    /// Takes a free pool slot for producer `me`: `prefer` first (the slot
    /// its entry named last lap, warm in cache), then the pool from the
    /// allocation hint. `back` backs a slot's payload the first time it is
    /// used (false: no space).
    pub(crate) fn alloc(
        &self,
        me: u32,
        prefer: Option<u32>,
        back: &dyn Fn(u32) -> bool,
    ) -> Result<u32, NoSlot> {
        let pool = self.geo.pool as u64;
        let h = self.header();
        let try_one = |b: u32| -> Option<Result<u32, NoSlot>> {
            let slot = self.slot(b);
            // Acquire: pairs with the Release (AcqRel) RMW that freed it, so
            // the freer's reads of the old contents come before our writes.
            if slot.owners.load(Ordering::Relaxed) != 0
                || slot
                    .owners
                    .compare_exchange(0, owners_writer(me), Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
            {
                return None;
            }
            // Acquire: pairs with the Release store below in whoever backed it.
            if slot.backed.load(Ordering::Acquire) == 0 {
                if !back(b) {
                    // Release: our (nonexistent) writes are done; pairs with
                    // the Acquire CAS of the next allocator.
                    slot.owners.store(0, Ordering::Release);
                    return Some(Err(NoSlot::NoSpace));
                }
                slot.backed.store(1, Ordering::Release);
            }
            slot.flags.store(0, Ordering::Relaxed);
            slot.delivered.store(0, Ordering::Relaxed);
            Some(Ok(b))
        };
        if let Some(b) = prefer.filter(|&b| self.in_pool(b)) {
            if let Some(r) = try_one(b) {
                return r;
            }
        }
        let start = h.alloc_hint.load(Ordering::Relaxed) % pool;
        for i in 0..pool {
            let b = ((start + i) % pool) as u32;
            if let Some(r) = try_one(b) {
                h.alloc_hint.store(b as u64 + 1, Ordering::Relaxed);
                return r;
            }
        }
        Err(NoSlot::Exhausted)
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
        self.update_owners(b, ack, |w| {
            (w & OWNER_RING_MASK == owners_in_ring(seq)).then_some(w & !OWNER_RING_MASK)
        });
    }

    // ---- producers ----

    /// Claims the next entry for producer `me`. Under `DropOldest` it frees
    /// the oldest entry if that is what stands in the way.
    pub(crate) fn try_claim(&self, me: u32, now_ms: u64, ack: &mut dyn FnMut([u8; 24])) -> Claim {
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
                // Someone claimed `s` (or head lags far behind): move head on.
                let _ = h.head.compare_exchange(
                    s,
                    s.wrapping_add(1),
                    Ordering::Release,
                    Ordering::Relaxed,
                );
                continue;
            }
            if wl + 1 == lap && tag == TAG_READY {
                // The previous message of this entry. If the frontier passed
                // it, its freer died between the frontier CAS and the free:
                // help. Under DropOldest, pass it ourselves.
                let f = frontier_seq(h.frontier.load(Ordering::SeqCst));
                if f.wrapping_add(slots) > s {
                    self.free_entry(s.wrapping_sub(slots), w, ack);
                    continue;
                }
                if self.drop_oldest && self.advance(s.wrapping_sub(slots).wrapping_add(1), ack) > 0 {
                    continue;
                }
                if self.release(now_ms, ack) > 0 {
                    continue;
                }
            }
            return Claim::Full;
        }
        Claim::Full
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
        entry.flags.store(0, Ordering::Relaxed);
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
        let entry = self.entry(seq);
        entry.flags.store(FLAG_SKIPPED, Ordering::Relaxed);
        // Release: pairs with the Acquire load in `read`.
        entry
            .state
            .store(slot_state(self.lap(seq), me, TAG_READY), Ordering::Release);
        self.header().skipped.fetch_add(1, Ordering::Relaxed);
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
                if entry.flags.load(Ordering::Relaxed) & FLAG_SKIPPED != 0 || !self.in_pool(slot) {
                    Read::Skipped
                } else {
                    Read::Ready { slot }
                }
            }
            TAG_CLAIMED => Read::Pending {
                owner: state_owner(w),
            },
            _ => Read::Empty,
        }
    }

    fn held(&self, seq: u64, b: u32) -> Held {
        let slot = self.slot(b);
        Held {
            seq,
            slot: b,
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
                } else {
                    Next::Wait
                }
            }
            Read::Gone => Next::Lagged {
                at: frontier().max(seq.wrapping_add(1)),
            },
            Read::Skipped => Next::Pass,
            Read::Ready { slot: b } => {
                let bit = owners_holder(me);
                // AcqRel: Acquire pairs with the publisher's Release store
                // of the owners word; our bit keeps the slot from being freed.
                let before = self.slot(b).owners.fetch_or(bit, Ordering::AcqRel);
                if before & OWNER_RING_MASK == owners_in_ring(seq) {
                    return Next::Got(self.held(seq, b));
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
                Read::Ready { slot: b } => {
                    let slot = self.slot(b);
                    // Acquire: pairs with the publisher's Release store.
                    let w = slot.owners.load(Ordering::Acquire);
                    if w & OWNER_RING_MASK == owners_in_ring(t) {
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
                            return Take::Taken(self.held(t, b));
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
                return Some(self.held(seq, b));
            }
        }
        // None left: a requeue that lands after this scan counts itself
        // after its slot is marked, so resetting what we saw loses nothing.
        let _ = h
            .requeued
            .compare_exchange(hint, 0, Ordering::SeqCst, Ordering::Relaxed);
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
            if low < f {
                continue;
            }
            if stall > 0 && full_since > 0 && low < b {
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
        let to = self.bound(now_ms);
        self.advance(to, ack)
    }

    /// Moves the frontier up to `to` (over published entries only), freeing
    /// each entry it passes and taking the entry's slot out of the ring.
    pub(crate) fn advance(&self, to: u64, ack: &mut dyn FnMut([u8; 24])) -> u64 {
        let h = self.header();
        let mut freed = 0;
        for _ in 0..(self.geo.slots as u64 * 2 + 64) {
            let fw = h.frontier.load(Ordering::SeqCst);
            let f = frontier_seq(fw);
            if f >= to {
                break;
            }
            let entry = self.entry(f);
            // Acquire: pairs with `publish`.
            let w = entry.state.load(Ordering::Acquire);
            if state_lap(w) != self.lap(f) || state_tag(w) != TAG_READY {
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
        rec.active_ms.store(crate::clock::now_ms(), Ordering::Relaxed);
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
                let start = h.head.load(Ordering::SeqCst).max(frontier_seq(fw));
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
                entry.flags.store(FLAG_SKIPPED, Ordering::Relaxed);
                // Release: pairs with the Acquire load in `read`.
                if entry
                    .state
                    .compare_exchange(
                        w,
                        slot_state(state_lap(w), owner, TAG_READY),
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
            self.update_owners(b, ack, |w| (w & OWNER_WRITER == writer).then_some(w & !OWNER_WRITER));
        }
        self.header().skipped.fetch_add(n, Ordering::Relaxed);
        n
    }

    /// Lets go of every slot consumer `c` (dead, its record locked by the
    /// caller) holds. With `requeue`, a slot nobody else holds goes back to
    /// the queue, counted as delivered once more. Returns how many slots
    /// were requeued.
    pub(crate) fn drop_holds_of(&self, c: usize, requeue: bool, ack: &mut dyn FnMut([u8; 24])) -> u64 {
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
                slot.delivered.store(delivered.wrapping_add(1), Ordering::Relaxed);
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
