//! The ring protocol of a channel, over raw memory: claiming, publishing,
//! reading and freeing slots, the frontier, joins, and the repair of a dead
//! producer's claims. No system call here (the endpoints add liveness and
//! blocking), so the protocol runs under Miri on heap memory.
//!
//! A message has a sequence number `seq`; it lives in slot `seq % slots`
//! during lap `seq / slots`. A slot's state word names the lap and moves
//! FREE(lap) → CLAIMED(lap, producer) → READY(lap) → FREE(lap + 1):
//!
//! * a producer claims with one CAS on the slot (so a claim always names its
//!   owner, and a dead owner's claim can be found and skipped), writes the
//!   slot, and publishes with one Release store;
//! * consumers read READY slots; each consumer publishes `low`, the lowest
//!   sequence it still holds or will read, in its record;
//! * the frontier passes a message once every consumer's `low` is above
//!   it; whoever moves the frontier frees the slot (and acknowledges the
//!   store entry the slot referred to).

use super::layout::*;
use crate::sync::{fence, AtomicU64, Ordering};
use std::ptr::NonNull;

/// What a producer's claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Slot of `seq` is ours to write.
    Claimed(u64),
    /// Every slot holds a message not yet passed by the frontier.
    Full,
}

/// What a consumer finds at a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// A message: length and flags.
    Ready { len: u32, flags: u32 },
    /// A slot its dead producer never published; pass over it.
    Skipped,
    /// Claimed by producer `owner`, not yet published.
    Pending { owner: u32 },
    /// Nothing published at this sequence yet.
    Empty,
    /// The frontier passed this sequence: the slot holds a later message.
    Gone,
}

/// What a queue receiver's take found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// The message at `seq` is this receiver's (the tail moved past it).
    Taken { seq: u64, read: Read },
    /// The message at the tail is not published yet (`Empty` or `Pending`).
    Wait(Read),
}

/// A mapped ring. Copyable view; whoever made it keeps the memory alive.
#[derive(Clone, Copy)]
pub(crate) struct Ring {
    base: NonNull<u8>,
    geo: Geometry,
    shift: u32,
    queue: bool,
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
            .field("queue", &self.queue)
            .finish()
    }
}

impl Ring {
    /// # Safety
    /// `base` must be 64-aligned and valid for reads and writes of
    /// `geo.file_size()` bytes for as long as the ring (and every copy) is
    /// used, and hold a channel file (zeroed, or written by this protocol).
    pub(crate) unsafe fn new(base: NonNull<u8>, geo: Geometry, queue: bool) -> Self {
        Self {
            base,
            geo,
            shift: geo.slots.trailing_zeros(),
            queue,
            #[cfg(loom)]
            shadow: Box::leak(Box::new(Shadow {
                header: loom_words::header(),
                records: (0..RECORDS).map(|_| loom_words::record()).collect(),
                slots: (0..geo.slots).map(|_| loom_words::slot()).collect(),
                handles: (0..geo.slots)
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

    fn slot_ptr(&self, seq: u64) -> *mut u8 {
        // SAFETY: index < slots, so the slot lies inside the mapping.
        unsafe {
            self.base
                .as_ptr()
                .add(SLOTS_OFFSET + self.index(seq) * self.geo.slot_size as usize)
        }
    }

    /// The header of the slot of `seq`.
    pub(crate) fn slot(&self, seq: u64) -> &SlotHeader {
        #[cfg(loom)]
        return &self.shadow.slots[self.index(seq)];
        // SAFETY: slots are 64-aligned (SLOTS_OFFSET and slot_size are
        // multiples of 64) and inside the mapping.
        #[cfg(not(loom))]
        unsafe {
            &*(self.slot_ptr(seq) as *const SlotHeader)
        }
    }

    /// Start of the inline payload of the slot of `seq` (inline capacity bytes).
    pub(crate) fn payload(&self, seq: u64) -> *mut u8 {
        // SAFETY: the payload follows the 16-byte slot header inside the slot.
        unsafe { self.slot_ptr(seq).add(SLOT_HEADER_SIZE) }
    }

    fn handle_words(&self, seq: u64) -> [&AtomicU64; 3] {
        #[cfg(loom)]
        {
            let w = &self.shadow.handles[self.index(seq)];
            return [&w[0], &w[1], &w[2]];
        }
        #[cfg(not(loom))]
        let p = self.payload(seq) as *const AtomicU64;
        // SAFETY: the payload is 64-aligned and at least 64 bytes (slot size
        // >= 128), so three u64 words fit; handles are only ever accessed
        // through these atomics.
        #[cfg(not(loom))]
        unsafe {
            [&*p, &*p.add(1), &*p.add(2)]
        }
    }

    /// Writes a 24-byte store handle into the claimed slot of `seq`.
    pub(crate) fn write_handle(&self, seq: u64, handle: &[u8; 24]) {
        for (w, chunk) in self.handle_words(seq).iter().zip(handle.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            w.store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
    }

    /// Reads the 24-byte store handle of the slot of `seq`.
    pub(crate) fn read_handle(&self, seq: u64) -> [u8; 24] {
        let mut out = [0u8; 24];
        for (w, chunk) in self.handle_words(seq).iter().zip(out.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        out
    }

    /// Writes an inline message into the claimed slot of `seq`.
    ///
    /// # Safety
    /// The caller must hold the claim of `seq` (the slot is CLAIMED by it),
    /// and `data.len() <= inline_capacity`.
    pub(crate) unsafe fn write_inline(&self, seq: u64, data: &[u8]) {
        let n = data.len().min(self.geo.inline_capacity());
        // SAFETY: the claim makes these bytes ours until we publish; nobody
        // reads a slot that is not READY. n fits the slot's payload.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.payload(seq), n) };
    }

    /// Claims the next slot for producer `me`.
    pub(crate) fn try_claim(&self, me: u32) -> Claim {
        let h = self.header();
        let slots = self.geo.slots as u64;
        // Bounded: only a scribbled ring can keep every attempt failing.
        for _ in 0..(1u32 << 20) {
            // Acquire: pairs with the Release CAS below in another producer.
            let s = h.head.load(Ordering::Acquire);
            let lap = self.lap(s);
            let slot = self.slot(s);
            // Acquire: pairs with the Release store of the state that freed it.
            let w = slot.state.load(Ordering::Acquire);
            let (wl, tag) = (state_lap(w), state_tag(w));
            if wl == lap && tag == TAG_FREE {
                // AcqRel: the claim orders our writes after the free (and
                // the freer's reads of the old contents before our writes).
                if slot
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
                // The previous message in this slot. If the frontier passed it,
                // its freer died between the frontier CAS and the free: help.
                let f = frontier_seq(h.frontier.load(Ordering::SeqCst));
                if f.wrapping_add(slots) > s {
                    let _ = slot.state.compare_exchange(
                        w,
                        slot_state(lap, 0, TAG_FREE),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    );
                    continue;
                }
            }
            return Claim::Full;
        }
        Claim::Full
    }

    /// Whether the slot at the head looks claimable (a producer about to
    /// sleep re-checks this after announcing itself).
    pub(crate) fn has_space(&self) -> bool {
        let s = self.header().head.load(Ordering::SeqCst);
        let w = self.slot(s).state.load(Ordering::SeqCst);
        state_lap(w) >= self.lap(s)
    }

    /// Publishes the claimed slot of `seq` (one Release store).
    pub(crate) fn publish(&self, seq: u64, me: u32, len: u32, flags: u32) {
        let slot = self.slot(seq);
        slot.len.store(len, Ordering::Relaxed);
        slot.flags.store(flags, Ordering::Relaxed);
        // Release: pairs with the Acquire load in `read`: a consumer that
        // sees READY sees the length, flags and payload.
        slot.state
            .store(slot_state(self.lap(seq), me, TAG_READY), Ordering::Release);
        self.header().published.fetch_add(1, Ordering::Relaxed);
    }

    /// What is at `seq` for a consumer.
    pub(crate) fn read(&self, seq: u64) -> Read {
        let slot = self.slot(seq);
        let lap = self.lap(seq);
        // Acquire: pairs with the Release store in `publish`.
        let w = slot.state.load(Ordering::Acquire);
        let wl = state_lap(w);
        if wl < lap {
            return Read::Empty;
        }
        if wl > lap {
            return Read::Gone;
        }
        match state_tag(w) {
            TAG_READY => {
                let flags = slot.flags.load(Ordering::Relaxed);
                if flags & FLAG_SKIPPED != 0 {
                    Read::Skipped
                } else {
                    Read::Ready {
                        len: slot.len.load(Ordering::Relaxed),
                        flags,
                    }
                }
            }
            TAG_CLAIMED => Read::Pending {
                owner: state_owner(w),
            },
            _ => Read::Empty,
        }
    }

    /// A queue receiver (consumer `me`) takes the message at the tail.
    /// `holding` says whether it already holds a message (then its `low`
    /// is below the tail already and stays).
    pub(crate) fn take(&self, me: usize, holding: bool) -> Take {
        let h = self.header();
        let rec = self.consumer(me);
        // Bounded: contention makes progress for someone on every retry;
        // only a scribbled ring could keep us here longer.
        for _ in 0..(self.geo.slots as u64 * 4 + 1024) {
            // SeqCst with the reclaimer's loads in `bound`: a reclaimer
            // that sees the tail moved by us sees our `low`.
            let t = h.tail.load(Ordering::SeqCst);
            let read = self.read(t);
            match read {
                Read::Ready { .. } | Read::Skipped => {
                    if !holding {
                        rec.low.store(t, Ordering::SeqCst);
                    }
                    if h.tail
                        .compare_exchange(t, t.wrapping_add(1), Ordering::SeqCst, Ordering::Relaxed)
                        .is_ok()
                    {
                        return Take::Taken { seq: t, read };
                    }
                }
                Read::Gone => {
                    // Only a scribbled tail lags the frontier: move it on.
                    let f = frontier_seq(h.frontier.load(Ordering::SeqCst));
                    let _ = h.tail.compare_exchange(
                        t,
                        f.max(t.wrapping_add(1)),
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    );
                }
                other => {
                    if !holding {
                        rec.low.store(LOW_NONE, Ordering::SeqCst);
                    }
                    return Take::Wait(other);
                }
            }
        }
        if !holding {
            rec.low.store(LOW_NONE, Ordering::SeqCst);
        }
        Take::Wait(Read::Empty)
    }

    /// The frontier may not pass this sequence: the lowest `low` of every
    /// consumer in the mask (and the tail, in a queue).
    pub(crate) fn bound(&self) -> u64 {
        let h = self.header();
        // SeqCst: pairs with the SeqCst tail CAS / low stores of consumers
        // (see `take` and `join`).
        let mut b = if self.queue {
            h.tail.load(Ordering::SeqCst)
        } else {
            LOW_NONE
        };
        let mut m = h.consumer_mask.load(Ordering::SeqCst) & MASK_BITS;
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            b = b.min(self.consumer(i).low.load(Ordering::SeqCst));
            m &= m - 1;
        }
        b
    }

    /// Moves the frontier over every published message that no consumer
    /// holds any more, freeing their slots; calls `ack` with the store
    /// handle of each freed overflow message. Returns how many were freed.
    pub(crate) fn release(&self, mut ack: impl FnMut([u8; 24])) -> u64 {
        let h = self.header();
        let mut freed = 0;
        for _ in 0..(self.geo.slots as u64 * 2 + 64) {
            let fw = h.frontier.load(Ordering::SeqCst);
            let f = frontier_seq(fw);
            if f >= self.bound() {
                break;
            }
            let slot = self.slot(f);
            let lap = self.lap(f);
            // Acquire: pairs with `publish`.
            let w = slot.state.load(Ordering::Acquire);
            if state_lap(w) != lap || state_tag(w) != TAG_READY {
                break; // Not published yet (or a scribbled slot).
            }
            let flags = slot.flags.load(Ordering::Relaxed);
            let handle = (flags & (FLAG_OVERFLOW | FLAG_SKIPPED) == FLAG_OVERFLOW)
                .then(|| self.read_handle(f));
            // The frontier word only grows (its sequence part), so a CAS
            // that succeeds proves nobody freed `f` since we read the slot.
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
            // Release: pairs with the Acquire load in `try_claim`.
            let _ = slot.state.compare_exchange(
                w,
                slot_state(lap + 1, 0, TAG_FREE),
                Ordering::Release,
                Ordering::Relaxed,
            );
            if let Some(handle) = handle {
                ack(handle);
            }
            freed += 1;
        }
        if freed > 0 {
            // Pairs with the SeqCst fence of a producer about to sleep
            // (`Sleeper::park`): it sees the freed slot, or we see its bit.
            fence(Ordering::SeqCst);
        }
        freed
    }

    /// Consumer record `me` joins a broadcast: from now on the frontier does
    /// not pass its `low`. Returns the first sequence it will read.
    pub(crate) fn join(&self, me: usize) -> u64 {
        let h = self.header();
        let rec = self.consumer(me);
        rec.low.store(
            frontier_seq(h.frontier.load(Ordering::SeqCst)),
            Ordering::SeqCst,
        );
        h.consumer_mask.fetch_or(1 << me, Ordering::SeqCst);
        // Bump the epoch: a reclaimer that computed its bound without us
        // fails its frontier CAS and looks again.
        loop {
            let fw = h.frontier.load(Ordering::SeqCst);
            rec.low.store(frontier_seq(fw), Ordering::SeqCst);
            let next = frontier_word(frontier_seq(fw), frontier_epoch(fw) + 1);
            if h.frontier
                .compare_exchange(fw, next, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                let start = if self.queue {
                    0
                } else {
                    h.head.load(Ordering::SeqCst).max(frontier_seq(fw))
                };
                if !self.queue {
                    rec.low.store(start, Ordering::SeqCst);
                } else {
                    rec.low.store(LOW_NONE, Ordering::SeqCst);
                }
                return start;
            }
        }
    }

    /// Consumer record `me` leaves: the frontier no longer waits for it.
    pub(crate) fn leave(&self, me: usize) {
        let h = self.header();
        h.consumer_mask.fetch_and(!(1u64 << me), Ordering::SeqCst);
        self.consumer(me).low.store(LOW_NONE, Ordering::SeqCst);
    }

    /// Marks every slot claimed by producer `owner` (dead, and its record
    /// locked by the caller) as published-and-skipped, so consumers and the
    /// frontier pass over it. Returns how many.
    pub(crate) fn skip_claims_of(&self, owner: u32) -> u64 {
        let mut n = 0;
        for seq in 0..self.geo.slots as u64 {
            let slot = self.slot(seq);
            let w = slot.state.load(Ordering::Acquire);
            if state_tag(w) == TAG_CLAIMED && state_owner(w) == owner {
                slot.len.store(0, Ordering::Relaxed);
                slot.flags.store(FLAG_SKIPPED, Ordering::Relaxed);
                // Release: pairs with the Acquire load in `read`.
                if slot
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
        self.header().skipped.fetch_add(n, Ordering::Relaxed);
        n
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A zeroed, 64-aligned ring in process memory (runs under Miri).
    struct Mem {
        // Owns the memory `ring` points into.
        _buf: Vec<AtomicU64>,
        ring: Ring,
    }

    fn mem(slots: u32, slot_size: u32, queue: bool) -> Mem {
        let geo = Geometry::new(slots, slot_size).unwrap();
        let words = geo.file_size() / 8 + 8;
        let buf: Vec<AtomicU64> = (0..words).map(|_| AtomicU64::new(0)).collect();
        let addr = buf.as_ptr() as usize;
        let aligned = (addr + 63) & !63;
        let base = buf.as_ptr().cast::<u8>().wrapping_add(aligned - addr) as *mut u8;
        // SAFETY: the buffer holds file_size bytes past the 64-aligned start,
        // zeroed, and lives in Mem beside the ring.
        let ring = unsafe { Ring::new(NonNull::new(base).unwrap(), geo, queue) };
        Mem { _buf: buf, ring }
    }

    fn send(r: &Ring, me: u32, byte: u8) -> bool {
        match r.try_claim(me) {
            Claim::Claimed(s) => {
                // SAFETY: we hold the claim; 1 byte fits.
                unsafe { r.write_inline(s, &[byte]) };
                r.publish(s, me, 1, 0);
                true
            }
            Claim::Full => false,
        }
    }

    fn byte_at(r: &Ring, seq: u64) -> u8 {
        // SAFETY: the slot is READY and held by the reader (test).
        unsafe { *r.payload(seq) }
    }

    #[test]
    fn broadcast_subscriber_sees_every_message_in_order_and_gates_producers() {
        let m = mem(4, 128, false);
        let r = &m.ring;
        let start = r.join(0);
        assert_eq!(start, 0);
        for b in 0..4 {
            assert!(send(r, 0, b));
        }
        assert!(
            !send(r, 0, 9),
            "a subscriber holding 4 unread messages fills a 4-slot ring"
        );
        for seq in 0..4 {
            assert_eq!(r.read(seq), Read::Ready { len: 1, flags: 0 });
            assert_eq!(byte_at(r, seq), seq as u8);
        }
        assert_eq!(r.read(4), Read::Empty);
        // Released up to 2: two slots come back.
        r.consumer(0).low.store(2, Ordering::SeqCst);
        assert_eq!(r.release(|_| {}), 2);
        assert!(send(r, 0, 4));
        assert!(send(r, 0, 5));
        assert!(!send(r, 0, 6));
        assert_eq!(r.read(0), Read::Gone);
        assert_eq!(byte_at(r, 5), 5);
        assert_eq!(r.header().head.load(Ordering::SeqCst), 6);
    }

    /// Where things are: every participant has its own record (an index out
    /// of range clamps to the last one), slots follow each other, and a
    /// consumer's mask bit is set while it is joined and only then.
    #[test]
    fn records_slots_and_mask_bits_are_each_participants_own() {
        let m = mem(4, 128, false);
        let r = &m.ring;
        assert!(!r.is_queue() && mem(4, 128, true).ring.is_queue());
        assert!(format!("{r:?}").contains("slots: 4"));
        let at = |x: &Record| x as *const Record as usize;
        assert_eq!(at(r.consumer(0)), at(r.record(MAX_PRODUCERS)));
        assert_eq!(at(r.consumer(1)), at(r.record(MAX_PRODUCERS + 1)));
        assert_eq!(at(r.record(RECORDS)), at(r.record(RECORDS - 1)));
        assert_eq!(at(r.record(usize::MAX)), at(r.record(RECORDS - 1)));
        assert_ne!(at(r.record(RECORDS - 2)), at(r.record(RECORDS - 1)));
        assert_eq!(r.payload(1) as usize - r.payload(0) as usize, 128);
        assert_eq!(r.payload(5), r.payload(1), "sequence 5 reuses slot 1");

        assert!(r.has_space());
        r.join(2);
        assert_eq!(r.header().consumer_mask.load(Ordering::SeqCst), 1 << 2);
        for b in 0..4 {
            assert!(send(r, 0, b));
        }
        assert!(!r.has_space(), "consumer 2 holds all four");
        assert_eq!(r.release(|_| {}), 0);
        r.leave(2);
        assert_eq!(r.header().consumer_mask.load(Ordering::SeqCst), 0);
        assert_eq!(r.consumer(2).low.load(Ordering::SeqCst), LOW_NONE);
        assert_eq!(r.release(|_| {}), 4, "nobody holds them any more");
        assert!(r.has_space());
    }

    #[test]
    fn without_subscribers_the_frontier_frees_everything_published() {
        let m = mem(2, 128, false);
        let r = &m.ring;
        for b in 0..10 {
            if !send(r, 3, b) {
                r.release(|_| {});
                assert!(send(r, 3, b));
            }
        }
        assert_eq!(r.header().published.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn a_late_subscriber_starts_after_what_was_sent() {
        let m = mem(8, 128, false);
        let r = &m.ring;
        let a = r.join(0);
        assert!(send(r, 0, 1));
        assert!(send(r, 0, 2));
        let b = r.join(1);
        assert_eq!((a, b), (0, 2));
        assert!(send(r, 0, 3));
        assert_eq!(r.read(b), Read::Ready { len: 1, flags: 0 });
        assert_eq!(byte_at(r, b), 3);
        // The frontier waits for the slower one.
        r.consumer(1).low.store(3, Ordering::SeqCst);
        assert_eq!(r.release(|_| {}), 0);
        r.consumer(0).low.store(3, Ordering::SeqCst);
        assert_eq!(r.release(|_| {}), 3);
    }

    #[test]
    fn a_join_bumps_the_epoch_so_a_stale_frontier_cas_fails() {
        let m = mem(4, 128, false);
        let r = &m.ring;
        assert!(send(r, 0, 1));
        let stale = r.header().frontier.load(Ordering::SeqCst);
        r.join(0);
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
    fn queue_gives_each_message_to_one_receiver() {
        let m = mem(4, 128, true);
        let r = &m.ring;
        r.join(0);
        r.join(1);
        for b in 0..3 {
            assert!(send(r, 0, b));
        }
        let mut got = vec![];
        for (me, holding) in [(0, false), (1, false), (0, true)] {
            match r.take(me, holding) {
                Take::Taken {
                    seq,
                    read: Read::Ready { .. },
                } => got.push((me, byte_at(r, seq))),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, vec![(0, 0), (1, 1), (0, 2)]);
        assert_eq!(r.take(1, false), Take::Wait(Read::Empty));
        assert_eq!(r.consumer(1).low.load(Ordering::SeqCst), LOW_NONE);
        // Receiver 0 still holds seq 0 (its low), receiver 1 released seq 1.
        assert_eq!(r.release(|_| {}), 0, "receiver 0's low is 0 still");
        r.consumer(0).low.store(LOW_NONE, Ordering::SeqCst);
        assert_eq!(r.release(|_| {}), 3);
    }

    #[test]
    fn a_dead_producers_claim_is_skipped_not_wedged() {
        let m = mem(4, 128, false);
        let r = &m.ring;
        r.join(0);
        let Claim::Claimed(s) = r.try_claim(7) else {
            panic!()
        };
        assert!(send(r, 1, 42));
        assert_eq!(r.read(s), Read::Pending { owner: 7 });
        assert_eq!(r.skip_claims_of(6), 0);
        assert_eq!(r.skip_claims_of(7), 1);
        assert_eq!(r.read(s), Read::Skipped);
        assert_eq!(r.read(s + 1), Read::Ready { len: 1, flags: 0 });
        r.consumer(0).low.store(2, Ordering::SeqCst);
        assert_eq!(r.release(|_| {}), 2);
    }

    #[test]
    fn overflow_handles_are_acknowledged_when_freed() {
        let m = mem(2, 128, false);
        let r = &m.ring;
        let Claim::Claimed(s) = r.try_claim(0) else {
            panic!()
        };
        let h: [u8; 24] = std::array::from_fn(|i| i as u8 + 1);
        r.write_handle(s, &h);
        r.publish(s, 0, 1 << 20, FLAG_OVERFLOW);
        let mut acked = vec![];
        assert_eq!(r.release(|x| acked.push(x)), 1);
        assert_eq!(acked, vec![h]);
    }

    #[test]
    fn a_freer_that_died_after_the_frontier_cas_is_helped() {
        let m = mem(2, 128, false);
        let r = &m.ring;
        assert!(send(r, 0, 1));
        assert!(send(r, 0, 2));
        // The frontier moved past 0 but slot 0 was never freed.
        r.header()
            .frontier
            .store(frontier_word(1, 0), Ordering::SeqCst);
        assert!(send(r, 0, 3), "the producer frees the passed slot itself");
        assert_eq!(byte_at(r, 2), 3);
    }

    #[test]
    fn scribbled_mask_bits_beyond_the_records_are_ignored() {
        let m = mem(4, 128, false);
        let r = &m.ring;
        r.join(0);
        assert!(send(r, 0, 1));
        assert!(send(r, 0, 2));
        r.consumer(0).low.store(2, Ordering::SeqCst);
        // Bits 32..64 name no record; read through a clamped index they
        // would alias record 63 (consumer 31, never joined, low 0).
        r.header()
            .consumer_mask
            .fetch_or(0xffff_ffff_0000_0000, Ordering::SeqCst);
        assert_eq!(r.bound(), 2);
        assert_eq!(r.release(|_| {}), 2);
    }

    #[test]
    fn a_scribbled_ring_never_hangs_or_reads_out_of_bounds() {
        let m = mem(4, 128, true);
        let r = &m.ring;
        let h = r.header();
        for v in [u64::MAX, 1 << 63, 12345, 0] {
            h.head.store(v, Ordering::SeqCst);
            h.tail.store(v.wrapping_mul(3), Ordering::SeqCst);
            h.frontier.store(v ^ 0x55, Ordering::SeqCst);
            h.consumer_mask.store(v, Ordering::SeqCst);
            for s in 0..4u64 {
                r.slot(s)
                    .state
                    .store(v.rotate_left(s as u32), Ordering::SeqCst);
                r.slot(s).len.store(u32::MAX, Ordering::SeqCst);
            }
            let _ = r.try_claim(0);
            let _ = r.take(0, false);
            let _ = r.release(|_| {});
            let _ = r.read(v);
            let _ = r.bound();
        }
    }
}

/// Model checks of the ring: `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::channel::wait::{self, Sleeper};
    use loom::thread;

    fn ring(slots: u32, queue: bool) -> Ring {
        let geo = Geometry::new(slots, MIN_SLOT_SIZE).unwrap();
        let mem: &'static mut [u64] =
            Box::leak(vec![0u64; geo.file_size() / 8 + 8].into_boxed_slice());
        let addr = mem.as_mut_ptr() as usize;
        let base = mem
            .as_mut_ptr()
            .cast::<u8>()
            .wrapping_add(((addr + 63) & !63) - addr);
        // SAFETY: file_size bytes past the 64-aligned start, leaked.
        unsafe { Ring::new(NonNull::new(base).unwrap(), geo, queue) }
    }

    /// Claims (helping the frontier when full) and publishes a message whose
    /// identity is its length.
    fn send(r: &Ring, me: u32, len: u32) {
        loop {
            if let Claim::Claimed(s) = r.try_claim(me) {
                r.publish(s, me, len, 0);
                return;
            }
            r.release(|_| {});
            thread::yield_now();
        }
    }

    #[test]
    fn loom_a_subscriber_reads_every_message_in_order_and_no_slot_changes_while_held() {
        loom::model(|| {
            let r = ring(2, false);
            assert_eq!(r.join(0), 0);
            let p = thread::spawn(move || {
                for len in 1..=3 {
                    send(&r, 0, len);
                }
            });
            for seq in 0..3u64 {
                let len = loop {
                    match r.read(seq) {
                        Read::Ready { len, .. } => break len,
                        Read::Empty | Read::Pending { .. } => thread::yield_now(),
                        other => panic!("seq {seq}: {other:?}"),
                    }
                };
                assert_eq!(len as u64, seq + 1, "in order, none lost");
                thread::yield_now();
                // Held (low still = seq): the slot cannot have been rewritten.
                assert_eq!(r.read(seq), Read::Ready { len, flags: 0 });
                r.consumer(0).low.store(seq + 1, Ordering::SeqCst);
                r.release(|_| {});
            }
            p.join().unwrap();
        });
    }

    #[test]
    fn loom_a_queue_message_goes_to_exactly_one_receiver() {
        loom::model(|| {
            let r = ring(2, true);
            r.join(0);
            r.join(1);
            send(&r, 0, 7);
            let a = thread::spawn(move || matches!(r.take(0, false), Take::Taken { .. }));
            let b = matches!(r.take(1, false), Take::Taken { .. });
            let a = a.join().unwrap();
            assert!(a ^ b, "taken by exactly one: {a} {b}");
        });
    }

    #[test]
    fn loom_a_joining_subscriber_never_has_its_first_message_freed() {
        loom::model(|| {
            let r = ring(4, false);
            // No subscriber yet: message 0 is published and freed at once.
            send(&r, 0, 1);
            assert_eq!(r.release(|_| {}), 1);
            // A releaser with no subscriber in sight frees whatever is
            // published, while message 1 is sent and a subscriber joins.
            let producer = thread::spawn(move || send(&r, 0, 2));
            let releaser = thread::spawn(move || {
                r.release(|_| {});
            });
            let start = r.join(1);
            producer.join().unwrap();
            releaser.join().unwrap();
            let frontier = frontier_seq(r.header().frontier.load(Ordering::SeqCst));
            assert!(
                frontier <= start,
                "freed {frontier} > joiner's start {start}"
            );
            if start == 1 {
                assert_eq!(r.read(1), Read::Ready { len: 2, flags: 0 });
            }
        });
    }

    #[test]
    fn loom_a_consumer_going_to_sleep_is_always_woken() {
        loom::model(|| {
            let r = ring(2, false);
            r.join(0);
            let producer = thread::spawn(move || {
                send(&r, 0, 1);
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
}
