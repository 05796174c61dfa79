//! The chunk registry of a shared namespace: which chunk files exist, which
//! are being created, and the ids they go by. Pure logic over the control
//! block's slot words (no system calls), so Miri and loom can check it.
//!
//! Each of the [`REGISTRY_SLOTS`] slots is one 64-bit word (see
//! [`crate::layout`] for the bits): a state, an epoch, and for a creation a
//! time stamp. The id of the chunk in slot `s` at epoch `e` is
//! `e << SLOT_BITS | s`, so
//!
//! * ids never run out: a slot's epoch advances each time the slot is
//!   freed, and the same id comes back only after 2^20 uses of one slot —
//!   long after every handle of the old chunk failed its generation check;
//! * a chunk is counted exactly by its slot: the number of files the
//!   namespace holds is the number of slots not FREE, so no separate
//!   counter can leak when a process dies between two steps;
//! * a creation is registered before its file exists (CREATING, with the
//!   time of its last step), so a creator killed mid-creation leaves a
//!   slot that any pass recognises once it is older than the grace period:
//!   the pass marks it ABANDONED, unlinks the file, and frees the slot.
//!
//! ```text
//! FREE(e) --claim--> CREATING(e,t) --publish--> READY(e) --unregister--> FREE(e+1)
//!                      |    ^  heartbeat          (file unlinked first)
//!                      |    +-------+
//!                      |--cancel (creator gave up, file removed)--> FREE(e+1)
//!                      +--abandon (a pass: t older than the grace)--> ABANDONED(e)
//! ABANDONED(e) --forget (file unlinked first; the creator or a pass)--> FREE(e+1)
//! ```

use crate::layout::{
    NO_CHUNK, REGISTRY_SLOTS, SLOT_ABANDONED, SLOT_BITS, SLOT_CREATING, SLOT_EPOCH_BITS,
    SLOT_EPOCH_SHIFT, SLOT_FREE, SLOT_READY, SLOT_STAMP_SHIFT, SLOT_STATE_MASK, SLOT_TENTATIVE,
};
use crate::sync::{AtomicU64, Ordering};

const EPOCH_MASK: u64 = (1 << SLOT_EPOCH_BITS) - 1;

/// A slot word, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    /// One of the `SLOT_*` states.
    pub(crate) state: u64,
    /// How many times the slot was freed (mod 2^20).
    pub(crate) epoch: u32,
    /// Low 32 bits of the coarse-monotonic ms of the creation's last step.
    pub(crate) stamp: u32,
}

impl Slot {
    /// Decodes a slot word.
    pub(crate) fn decode(word: u64) -> Self {
        Self {
            state: word & SLOT_STATE_MASK,
            epoch: ((word >> SLOT_EPOCH_SHIFT) & EPOCH_MASK) as u32,
            stamp: (word >> SLOT_STAMP_SHIFT) as u32,
        }
    }

    fn encode(self) -> u64 {
        self.state
            | (u64::from(self.epoch) & EPOCH_MASK) << SLOT_EPOCH_SHIFT
            | u64::from(self.stamp) << SLOT_STAMP_SHIFT
    }

    /// Bits no valid slot word sets.
    pub(crate) fn reserved_bits(word: u64) -> u64 {
        word & !(SLOT_STATE_MASK
            | EPOCH_MASK << SLOT_EPOCH_SHIFT
            | SLOT_TENTATIVE
            | u64::from(u32::MAX) << SLOT_STAMP_SHIFT)
    }

    /// Whether a word is a claim not yet checked against the limit.
    pub(crate) fn is_tentative(word: u64) -> bool {
        word & SLOT_TENTATIVE != 0
    }
}

/// The id of the chunk in slot `slot` at epoch `epoch`.
pub(crate) fn id_at(slot: usize, epoch: u32) -> u32 {
    (epoch << SLOT_BITS) | slot as u32
}

/// The slot and epoch an id names.
pub(crate) fn slot_of(id: u32) -> (usize, u32) {
    ((id as usize) & (REGISTRY_SLOTS - 1), id >> SLOT_BITS)
}

/// The epoch a slot takes when it is freed at `epoch`: the next one, skipping
/// the one whose id would be [`NO_CHUNK`].
fn next_epoch(slot: usize, epoch: u32) -> u32 {
    let next = (epoch + 1) & EPOCH_MASK as u32;
    if id_at(slot, next) == NO_CHUNK {
        (next + 1) & EPOCH_MASK as u32
    } else {
        next
    }
}

/// Whether a stamp is more than `grace_ms` before `now_ms`, on the 32-bit
/// wrapping clock. A stamp after `now_ms` (a creation that began after the
/// pass read the clock) is young, not 4 billion ms old.
fn older_than(now_ms: u64, stamp: u32, grace_ms: u64) -> bool {
    let age = (now_ms as u32).wrapping_sub(stamp);
    age < 1 << 31 && u64::from(age) > grace_ms
}

/// A creation in progress: the slot this process claimed and the word it
/// last wrote there.
#[derive(Debug)]
pub(crate) struct Claim {
    slot: usize,
    word: u64,
}

impl Claim {
    /// The id of the chunk being created.
    pub(crate) fn id(&self) -> u32 {
        let s = Slot::decode(self.word);
        id_at(self.slot, s.epoch)
    }
}

/// Why a claim failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Full {
    /// Every slot is taken.
    Registry,
    /// `limit` slots are taken.
    Limit,
}

/// What a pass found to finish: a creation presumed dead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Abandoned {
    /// The id whose file must be unlinked before [`Registry::forget`].
    pub(crate) id: u32,
}

/// The registry over the control block's slot words.
pub(crate) struct Registry<'a> {
    slots: &'a [AtomicU64],
}

impl<'a> Registry<'a> {
    /// The registry held in `slots` (the control block's, [`REGISTRY_SLOTS`] words).
    pub(crate) fn new(slots: &'a [AtomicU64]) -> Self {
        Self { slots }
    }

    /// Claims a free slot for a new chunk, stamped `now_ms`, unless `limit`
    /// slots are taken already. The claim counts against the limit from the
    /// moment it is made, and a creator killed at any point after it leaves
    /// a slot that [`Registry::sweep`] returns.
    pub(crate) fn claim(&self, now_ms: u64, limit: usize) -> Result<Claim, Full> {
        // Two creators racing for the last place may both see the other's
        // claim and both back off; retrying a few times settles it.
        for _ in 0..4 {
            let mut claim = self.claim_any(now_ms)?;
            if self.taken() <= limit {
                // Confirmed: from now on it counts as a chunk file of the
                // namespace (`files`). Fails only if a pass abandoned it
                // meanwhile (a creator stalled past the grace period).
                let confirmed = claim.word & !SLOT_TENTATIVE;
                if self.slots[claim.slot]
                    .compare_exchange(claim.word, confirmed, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    claim.word = confirmed;
                    return Ok(claim);
                }
            }
            self.cancel(&claim);
            if self.taken() >= limit {
                return Err(Full::Limit);
            }
        }
        Err(Full::Limit)
    }

    fn claim_any(&self, now_ms: u64) -> Result<Claim, Full> {
        for (slot, word) in self.slots.iter().enumerate() {
            // SeqCst, with the SeqCst loads of `taken`: of two creators that
            // both claim, at least one counts the other's claim (the store
            // buffering pattern), so `limit` is never exceeded.
            let seen = word.load(Ordering::SeqCst);
            let s = Slot::decode(seen);
            if s.state != SLOT_FREE {
                continue;
            }
            // Tentative until counted against the limit, so that `files`
            // never reports a claim that is about to be given back.
            let claimed = Slot {
                state: SLOT_CREATING,
                epoch: s.epoch,
                stamp: now_ms as u32,
            }
            .encode()
                | SLOT_TENTATIVE;
            if word
                .compare_exchange(seen, claimed, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(Claim {
                    slot,
                    word: claimed,
                });
            }
        }
        Err(Full::Registry)
    }

    /// Slots not FREE: the chunk files of the namespace, those being created
    /// and those whose creator died.
    pub(crate) fn taken(&self) -> usize {
        self.slots
            .iter()
            .filter(|w| Slot::decode(w.load(Ordering::SeqCst)).state != SLOT_FREE)
            .count()
    }

    /// Slots whose chunk is being created now (or whose creator died before
    /// a pass noticed).
    pub(crate) fn creating(&self) -> usize {
        self.slots
            .iter()
            .filter(|w| Slot::decode(w.load(Ordering::SeqCst)).state == SLOT_CREATING)
            .count()
    }

    /// Chunk files of the namespace as a count should report them: slots
    /// taken, less claims not yet confirmed against the limit (a racing
    /// creator's, about to be kept or given back within microseconds).
    pub(crate) fn files(&self) -> usize {
        self.slots
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .filter(|&w| Slot::decode(w).state != SLOT_FREE && !Slot::is_tentative(w))
            .count()
    }

    /// Refreshes a creation's stamp after a long step, so that a pass does
    /// not presume a live creator dead. `false` if a pass did already: the
    /// creator must remove its file and [`Registry::cancel`].
    pub(crate) fn heartbeat(&self, claim: &mut Claim, now_ms: u64) -> bool {
        let mut s = Slot::decode(claim.word);
        s.stamp = now_ms as u32;
        let fresh = s.encode();
        match self.slots[claim.slot].compare_exchange(
            claim.word,
            fresh,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => {
                claim.word = fresh;
                true
            }
            Err(_) => false,
        }
    }

    /// Makes a formatted chunk visible: CREATING → READY. `false` if a pass
    /// presumed the creator dead meanwhile (then the creator removes its
    /// file and cancels).
    pub(crate) fn publish(&self, claim: &Claim) -> bool {
        let s = Slot::decode(claim.word);
        let ready = Slot {
            state: SLOT_READY,
            epoch: s.epoch,
            stamp: 0,
        }
        .encode();
        // Release: pairs with the Acquire loads in `is_ready` and `ids`, so
        // a process that finds the id finds the chunk file formatted.
        self.slots[claim.slot]
            .compare_exchange(claim.word, ready, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    }

    /// Gives up a creation whose file is already removed (or never made):
    /// frees the slot, whether it is still CREATING or a pass marked it
    /// ABANDONED meanwhile.
    pub(crate) fn cancel(&self, claim: &Claim) {
        let epoch = Slot::decode(claim.word).epoch;
        self.free_if(claim.slot, epoch, |state| {
            state == SLOT_CREATING || state == SLOT_ABANDONED
        });
    }

    /// Whether `id` names a published chunk. Acquire: pairs with the Release
    /// CAS in `publish`.
    pub(crate) fn is_ready(&self, id: u32) -> bool {
        let (slot, epoch) = slot_of(id);
        let s = Slot::decode(self.slots[slot].load(Ordering::Acquire));
        s.state == SLOT_READY && s.epoch == epoch
    }

    /// Appends the ids of every published chunk to `out`.
    pub(crate) fn ids(&self, out: &mut Vec<u32>) {
        for (slot, word) in self.slots.iter().enumerate() {
            // Acquire: pairs with the Release CAS in `publish`.
            let s = Slot::decode(word.load(Ordering::Acquire));
            if s.state == SLOT_READY {
                out.push(id_at(slot, s.epoch));
            }
        }
    }

    /// Frees published chunk `id`'s slot (its file is unlinked already);
    /// `true` for the one caller whose CAS did it.
    pub(crate) fn unregister(&self, id: u32) -> bool {
        let (slot, epoch) = slot_of(id);
        self.free_if(slot, epoch, |state| state == SLOT_READY)
    }

    /// Marks every creation stamped more than `grace_ms` before `now_ms` as
    /// ABANDONED, and returns every abandoned creation: the caller unlinks
    /// each one's file, then calls [`Registry::forget`].
    pub(crate) fn sweep(&self, now_ms: u64, grace_ms: u64, out: &mut Vec<Abandoned>) {
        for (slot, word) in self.slots.iter().enumerate() {
            let seen = word.load(Ordering::Relaxed);
            let s = Slot::decode(seen);
            let id = id_at(slot, s.epoch);
            match s.state {
                SLOT_ABANDONED => out.push(Abandoned { id }),
                SLOT_CREATING if older_than(now_ms, s.stamp, grace_ms) => {
                    let abandoned = Slot {
                        state: SLOT_ABANDONED,
                        ..s
                    }
                    .encode();
                    // Only if the creator made no step meanwhile (its
                    // heartbeat or publish changes the word).
                    if word
                        .compare_exchange(seen, abandoned, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                    {
                        out.push(Abandoned { id });
                    }
                }
                _ => {}
            }
        }
    }

    /// Frees an abandoned creation's slot once its file is unlinked; `true`
    /// for the one caller whose CAS did it.
    pub(crate) fn forget(&self, abandoned: &Abandoned) -> bool {
        let (slot, epoch) = slot_of(abandoned.id);
        self.free_if(slot, epoch, |state| state == SLOT_ABANDONED)
    }

    /// CAS loop: slot at `epoch` in a state `from` accepts → FREE at the
    /// next epoch. `true` for the caller whose CAS did it.
    fn free_if(&self, slot: usize, epoch: u32, from: impl Fn(u64) -> bool) -> bool {
        let word = &self.slots[slot];
        let mut seen = word.load(Ordering::Relaxed);
        loop {
            let s = Slot::decode(seen);
            if s.epoch != epoch || !from(s.state) {
                return false;
            }
            let free = Slot {
                state: SLOT_FREE,
                epoch: next_epoch(slot, epoch),
                stamp: 0,
            }
            .encode();
            // Release: the unlink before it happens-before a later claim of
            // the slot (Acquire via its SeqCst CAS) re-creating the name.
            match word.compare_exchange(seen, free, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(v) => seen = v,
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn slots(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn fresh_slots_give_ids_in_order_and_a_freed_slot_a_new_id() {
        let words = slots(REGISTRY_SLOTS);
        let r = Registry::new(&words);
        let a = r.claim(1, REGISTRY_SLOTS).unwrap();
        let b = r.claim(1, REGISTRY_SLOTS).unwrap();
        assert_eq!((a.id(), b.id()), (0, 1));
        assert!(r.publish(&a) && r.publish(&b));
        assert!(r.is_ready(0) && r.is_ready(1));
        assert!(r.unregister(0));
        assert!(!r.unregister(0), "exactly one caller frees a slot");
        assert!(!r.is_ready(0));
        let c = r.claim(1, REGISTRY_SLOTS).unwrap();
        assert_eq!(c.id(), 1 << SLOT_BITS, "slot 0 again, next epoch");
        assert!(r.publish(&c));
        assert!(!r.is_ready(0), "the old id stays gone");
        assert!(r.is_ready(1 << SLOT_BITS));
        assert_eq!(r.taken(), 2);
    }

    #[test]
    fn chunk_ids_never_run_out() {
        // A slot whose epoch is at the top of its range: the id after it
        // wraps to epoch 0, and the one id that would be NO_CHUNK is skipped.
        let words = slots(REGISTRY_SLOTS);
        let last = REGISTRY_SLOTS - 1;
        for (i, w) in words.iter().enumerate() {
            let epoch = if i == last { EPOCH_MASK as u32 - 1 } else { 0 };
            let s = Slot {
                state: if i == last { SLOT_FREE } else { SLOT_READY },
                epoch,
                stamp: 0,
            };
            w.store(s.encode(), Ordering::Relaxed);
        }
        let r = Registry::new(&words);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5 {
            let c = r.claim(7, REGISTRY_SLOTS).expect("ids never run out");
            let id = c.id();
            assert_ne!(id, NO_CHUNK);
            assert_eq!(slot_of(id).0, last);
            seen.insert(id);
            assert!(r.publish(&c));
            assert!(r.is_ready(id));
            assert!(r.unregister(id));
        }
        assert_eq!(seen.len(), 5, "every use a distinct id");
        assert!(seen.contains(&id_at(last, 0)), "wrapped to epoch 0");
    }

    #[test]
    fn a_limit_counts_creations_in_progress() {
        let words = slots(16);
        let r = Registry::new(&words);
        let a = r.claim(1, 2).unwrap();
        let b = r.claim(1, 2).unwrap();
        assert_eq!(r.creating(), 2, "both in progress");
        assert_eq!(r.claim(1, 2).unwrap_err(), Full::Limit);
        r.cancel(&a);
        assert_eq!(r.creating(), 1);
        assert!(r.claim(1, 2).is_ok(), "a cancelled claim frees its place");
        assert_eq!(r.taken(), 2);
        assert!(r.publish(&b));
        assert_eq!(
            r.creating(),
            1,
            "a published chunk is no longer in progress"
        );
    }

    #[test]
    fn a_claim_counts_against_the_limit_at_once_and_as_a_file_once_confirmed() {
        let words = slots(4);
        let r = Registry::new(&words);
        let a = r.claim(1, 4).unwrap();
        assert_eq!((r.taken(), r.files()), (1, 1), "confirmed");
        // A racing creator's claim, not yet checked against the limit.
        words[3].store(SLOT_CREATING | SLOT_TENTATIVE, Ordering::Relaxed);
        assert_eq!(r.taken(), 2, "the limit sees it");
        assert_eq!(r.files(), 1, "the count does not report it");
        r.cancel(&a);
        assert_eq!(r.files(), 0);
    }

    #[test]
    fn a_creator_that_gives_up_frees_its_slot_even_if_a_pass_abandoned_it() {
        let words = slots(2);
        let r = Registry::new(&words);
        let c = r.claim(1_000, 2).unwrap();
        let mut out = Vec::new();
        r.sweep(5_000, 1_000, &mut out);
        assert_eq!(out.len(), 1, "the pass marked it abandoned");
        // The creator (only slow) removes its file and gives up first.
        r.cancel(&c);
        assert_eq!(r.taken(), 0, "freed by the creator");
        assert!(!r.forget(&out[0]), "the pass frees nothing more");
        assert_eq!(r.taken(), 0);
    }

    #[test]
    fn a_stale_id_never_frees_the_slots_next_chunk() {
        let words = slots(1);
        let r = Registry::new(&words);
        let old = r.claim(1, 1).unwrap();
        assert!(r.publish(&old));
        assert!(r.unregister(old.id()));
        let new = r.claim(1, 1).unwrap();
        assert!(r.publish(&new));
        assert_ne!(new.id(), old.id());
        // A late release of the old chunk (same slot, older epoch).
        assert!(!r.unregister(old.id()));
        r.cancel(&old);
        assert!(r.is_ready(new.id()), "the new chunk keeps its slot");
    }

    #[test]
    fn a_full_registry_is_reported() {
        let words = slots(2);
        let r = Registry::new(&words);
        let _a = r.claim(1, 8).unwrap();
        let _b = r.claim(1, 8).unwrap();
        assert_eq!(r.claim(1, 8).unwrap_err(), Full::Registry);
    }

    #[test]
    fn a_creation_older_than_the_grace_is_abandoned_once_and_freed_once() {
        let words = slots(4);
        let r = Registry::new(&words);
        let mut c = r.claim(1_000, 4).unwrap();
        let mut out = Vec::new();
        r.sweep(1_500, 1_000, &mut out);
        assert!(out.is_empty(), "a young creation is its creator's");
        assert!(r.heartbeat(&mut c, 1_900));
        r.sweep(2_500, 1_000, &mut out);
        assert!(out.is_empty(), "the heartbeat keeps it young");
        r.sweep(3_000, 1_000, &mut out);
        assert_eq!(out, vec![Abandoned { id: c.id() }]);
        // The creator, late, can neither step nor publish.
        assert!(!r.heartbeat(&mut c, 3_001));
        assert!(!r.publish(&c));
        assert!(!r.is_ready(c.id()));
        // Abandoned slots keep being reported until forgotten.
        let mut again = Vec::new();
        r.sweep(3_000, 1_000, &mut again);
        assert_eq!(again, out);
        assert!(r.forget(&out[0]));
        assert!(!r.forget(&out[0]));
        r.cancel(&c);
        assert_eq!(r.taken(), 0, "freed exactly once");
        assert_eq!(r.claim(4_000, 4).unwrap().id(), 1 << SLOT_BITS);
    }

    #[test]
    fn a_creation_that_began_after_the_pass_read_the_clock_is_young() {
        let words = slots(1);
        let r = Registry::new(&words);
        let c = r.claim(2_000, 1).unwrap();
        let mut out = Vec::new();
        r.sweep(1_990, 1_000, &mut out);
        assert!(out.is_empty(), "a stamp ahead of the pass's clock");
        assert!(r.publish(&c));
    }

    #[test]
    fn a_stamp_survives_the_wrap_of_the_32_bit_clock() {
        let words = slots(1);
        let r = Registry::new(&words);
        let start = u64::from(u32::MAX) - 10;
        let c = r.claim(start, 1).unwrap();
        let mut out = Vec::new();
        r.sweep(start + 500, 1_000, &mut out);
        assert!(out.is_empty());
        r.sweep(start + 1_500, 1_000, &mut out);
        assert_eq!(out, vec![Abandoned { id: c.id() }]);
    }

    #[test]
    fn slot_words_round_trip() {
        for (state, epoch, stamp) in [(0, 0, 0), (3, EPOCH_MASK as u32, u32::MAX), (1, 77, 5)] {
            let s = Slot {
                state,
                epoch,
                stamp,
            };
            assert_eq!(Slot::decode(s.encode()), s);
            assert_eq!(Slot::reserved_bits(s.encode()), 0);
        }
        assert_ne!(Slot::reserved_bits(1 << 30), 0);
    }
}

#[cfg(all(loom, test))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;

    fn registry_words(n: usize) -> Arc<Vec<AtomicU64>> {
        Arc::new((0..n).map(|_| AtomicU64::new(0)).collect())
    }

    /// Two creators race for the last place under a limit: never both win.
    #[test]
    fn loom_registry_limit_is_never_exceeded() {
        loom::model(|| {
            let words = registry_words(3);
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    let words = Arc::clone(&words);
                    loom::thread::spawn(move || Registry::new(&words).claim(1, 1).is_ok())
                })
                .collect();
            let won = racers
                .into_iter()
                .map(|t| t.join().unwrap())
                .filter(|&w| w)
                .count();
            assert!(won <= 1, "{won} creators passed a limit of 1");
            assert_eq!(Registry::new(&words).taken(), won);
        });
    }

    /// A creator publishing while a pass presumes it dead: exactly one of
    /// them wins, and the slot ends FREE exactly once or READY.
    #[test]
    fn loom_registry_publish_races_the_sweep() {
        loom::model(|| {
            let words = registry_words(1);
            let claim = Registry::new(&words).claim(0, 1).unwrap();
            let w2 = Arc::clone(&words);
            let sweeper = loom::thread::spawn(move || {
                let r = Registry::new(&w2);
                let mut out = Vec::new();
                r.sweep(10_000, 1_000, &mut out);
                out.iter().filter(|a| r.forget(a)).count()
            });
            let r = Registry::new(&words);
            let published = r.publish(&claim);
            if !published {
                r.cancel(&claim);
            }
            let freed_by_sweeper = sweeper.join().unwrap();
            let end = Slot::decode(words[0].load(Ordering::SeqCst));
            if published {
                assert_eq!(end.state, SLOT_READY);
                assert_eq!(freed_by_sweeper, 0);
            } else {
                assert_eq!(end.state, SLOT_FREE);
                assert_eq!(end.epoch, 1, "freed exactly once");
            }
        });
    }
}
