//! Blocking without burning CPU: a short spin, then a futex on a word of
//! the shared ring. A waiter announces itself by setting its participant
//! bit in a waiter mask before its last check; a waker publishes, then
//! (after a SeqCst fence) looks at the mask and makes the wake system call
//! only if someone waits — so the fast path of a producer with no sleeping
//! consumer makes no system call. A bit (not a count) per participant means
//! a waiter killed while asleep leaves nothing behind that the repair of
//! its record does not clear.

use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// How long a waiter spins before it sleeps (while spinning pays, see
/// [`SpinPolicy`]), unless the endpoint's
/// [`ChannelConfig::spin`](crate::ChannelConfig::spin) says otherwise.
/// Chosen from `sfb-bench --scenario wait` in `BENCHMARKS.md` (latency
/// against the receiver's CPU per message at 1 and 10 kHz, beside a Unix
/// socket): see `docs/design.md`.
pub(crate) const DEFAULT_SPIN: Duration = Duration::from_micros(5);

/// An endpoint's spin, adapted to how its waits end. A wait that ended
/// within the spin budget (the message or the room came while spinning, or
/// would have) keeps the next waits spinning; one that outlasted it (the
/// thread slept, and would have spun in vain) turns spinning off, except
/// for one wait in [`PROBE_EVERY`] that spins again to find out whether the
/// traffic has sped up. A stream spins and never sleeps; a receiver of
/// messages milliseconds apart sleeps at once and pays the spin only on
/// the probes.
#[derive(Debug)]
pub(crate) struct SpinPolicy {
    budget: Duration,
    /// Waits in a row that outlasted the budget (0: the last one did not).
    unpaid: AtomicU32,
}

/// One wait in this many spins while spinning does not pay.
pub(crate) const PROBE_EVERY: u32 = 16;

impl SpinPolicy {
    /// A policy of `budget` (at most an hour: any `Instant` has room for
    /// that, so no budget makes a deadline overflow).
    pub(crate) fn new(budget: Duration) -> Self {
        Self {
            budget: budget.min(Duration::from_secs(3600)),
            unpaid: AtomicU32::new(0),
        }
    }

    /// The spin of a wait about to begin.
    pub(crate) fn start(&self) -> Spin {
        let n = self.unpaid.load(Ordering::Relaxed);
        Spin {
            budget: if n % PROBE_EVERY == 0 {
                self.budget
            } else {
                Duration::ZERO
            },
            started: None,
            until: None,
        }
    }

    /// Records how the wait of `spin` ended (it got what it waited for).
    pub(crate) fn settle(&self, spin: &Spin) {
        let Some(started) = spin.started else {
            return; // No wait: the first try succeeded.
        };
        if started.elapsed() <= self.budget {
            if self.unpaid.load(Ordering::Relaxed) != 0 {
                self.unpaid.store(0, Ordering::Relaxed);
            }
        } else {
            // Relaxed, and a lost update between threads only shifts a probe.
            let n = self.unpaid.load(Ordering::Relaxed);
            self.unpaid.store(n.wrapping_add(1), Ordering::Relaxed);
        }
    }
}

/// The spin phase of one wait: true while the caller should spin on (its
/// budget has not run out since the first call).
#[derive(Debug)]
pub(crate) struct Spin {
    budget: Duration,
    /// When the wait began (the first call of [`again`](Self::again)).
    started: Option<std::time::Instant>,
    until: Option<std::time::Instant>,
}

impl Spin {
    /// Whether to spin once more (with a `spin_loop` hint) rather than sleep.
    pub(crate) fn again(&mut self) -> bool {
        let now = std::time::Instant::now();
        let started = *self.started.get_or_insert(now);
        if self.budget.is_zero() {
            return false;
        }
        let until = *self.until.get_or_insert(started + self.budget);
        if now < until {
            std::hint::spin_loop();
            true
        } else {
            false
        }
    }
}

/// Longest sleep between liveness checks of the other side.
pub(crate) const LIVENESS_TICK: Duration = Duration::from_millis(100);

/// At most one liveness check per tick for one endpoint (each check costs
/// a system call per participant record), shared by its threads: a coarse
/// clock read and, when due, one CAS. No lock, so an empty poll stays cheap.
#[derive(Debug)]
pub(crate) struct Throttle {
    last_ms: AtomicU64,
}

impl Throttle {
    /// Due at once the first time.
    pub(crate) fn new() -> Self {
        Self {
            last_ms: AtomicU64::new(0),
        }
    }

    /// Whether a tick has passed since the last check (and if so, the
    /// caller is now the one checking).
    pub(crate) fn due(&self) -> bool {
        let now = crate::clock::now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= LIVENESS_TICK.as_millis() as u64
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// One endpoint's place in a waiter mask: its bit, and how many of its
/// waits (threads, a `Select`, async tasks) are announced (the bit stays
/// set while any is). The count and the bit change together under a lock
/// of this process: with two atomics, a wait ending (count to 0) and one
/// beginning (count from 0) could interleave so that the bit is cleared
/// under the new wait, which a waker would then never see.
#[derive(Debug)]
pub(crate) struct Sleeper {
    bit: u32,
    waits: std::sync::Mutex<u32>,
}

impl Sleeper {
    pub(crate) fn new(index: usize) -> Self {
        Self {
            bit: 1u32 << (index as u32 & 31),
            waits: std::sync::Mutex::new(0),
        }
    }

    /// Sleeps on `word` for at most `timeout` unless `ready()` holds once
    /// this waiter is announced in `mask`. Returns the value of `word` it
    /// went to sleep on, if it did.
    pub(crate) fn park(
        &self,
        word: &AtomicU32,
        mask: &AtomicU32,
        timeout: Duration,
        ready: impl FnOnce() -> bool,
    ) -> Option<u32> {
        let seen = self.announce(word, mask);
        crate::hooks::at(crate::hooks::Point::Parking);
        let slept = (!ready()).then(|| {
            sleep_on(word, seen, timeout);
            seen
        });
        self.withdraw(mask);
        slept
    }

    /// Announces a waiter of this endpoint in `mask` (from now on a waker
    /// bumps `word` and makes the wake call) and returns the value of
    /// `word` to sleep on. The caller checks its condition after this, and
    /// sleeps only if it does not hold; [`withdraw`](Self::withdraw) ends
    /// the announcement. A blocking wait, a [`Select`](crate::Select) and
    /// an async wait all go through here.
    pub(crate) fn announce(&self, word: &AtomicU32, mask: &AtomicU32) -> u32 {
        {
            let mut n = self.waits.lock().unwrap_or_else(|e| e.into_inner());
            if *n == 0 {
                mask.fetch_or(self.bit, Ordering::SeqCst);
            }
            *n = n.saturating_add(1);
        }
        // Pairs with the waker's SeqCst fence before it reads `mask`:
        // either it sees our bit, or we see its publication in the check
        // the caller makes after this.
        fence(Ordering::SeqCst);
        word.load(Ordering::SeqCst)
    }

    /// Ends an announcement of [`announce`](Self::announce).
    pub(crate) fn withdraw(&self, mask: &AtomicU32) {
        let mut n = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            mask.fetch_and(!self.bit, Ordering::SeqCst);
        }
    }
}

/// Something a thread or a task can wait on without its own futex wait:
/// a consumer waiting for a message, or a producer for space. A
/// [`Select`](crate::Select) and the async helper wait on many of them at
/// once, through their words.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) trait Source: Send + Sync + std::fmt::Debug {
    /// Announces a waiter (see [`Sleeper::announce`]); returns the value of
    /// the futex word to sleep on.
    fn announce(&self) -> u32;
    /// Ends an announcement.
    fn withdraw(&self);
    /// The futex word the other side bumps.
    fn word(&self) -> &AtomicU32;
    /// Which word that is: endpoints of one channel in one process map its
    /// file apart, so their words have different addresses; equal keys
    /// are one word, waited on once.
    fn key(&self) -> WordKey;
    /// Whether the operation waited for would not wait now (a message, an
    /// error to report, or room). Cheap: loads only.
    fn ready(&self) -> bool;
    /// Liveness work, at most once per [`LIVENESS_TICK`]: dead
    /// participants evicted (what a killed peer held comes back, a killed
    /// last producer disconnects), which no word announces.
    fn tick(&self);
}

/// A futex word's identity: the channel file's device and inode, and
/// whether it is the space word (producers wait) or the data word.
pub(crate) type WordKey = (u64, u64, bool);

/// Waits until a word of `words` moves from the value given, or `timeout`
/// passes. More words than one `futex_waitv` takes (or a kernel without
/// it) shorten the wait to [`POLL_SLICE`]: those words are looked at
/// again after each slice instead of waking the waiter.
#[cfg(not(loom))]
pub(crate) fn wait_any(words: &[(&AtomicU32, u32)], timeout: Duration) {
    use crate::os::{futex_waitv, WaitvEnd, FUTEX_WAITV_MAX};
    let slice = if words.len() > FUTEX_WAITV_MAX {
        timeout.min(POLL_SLICE)
    } else {
        timeout
    };
    if futex_waitv(words, slice) == WaitvEnd::Unsupported {
        std::thread::sleep(timeout.min(POLL_SLICE));
    }
}

/// How often words a `futex_waitv` cannot take are looked at.
#[cfg(not(loom))]
pub(crate) const POLL_SLICE: Duration = Duration::from_millis(1);

/// `FUTEX_WAIT` on a shared word. Under loom, a wait with no timeout:
/// it returns only once the word differs from `seen`, so a lost wake-up
/// shows as a model that never completes (the real wait's timeout would
/// hide it).
fn sleep_on(word: &AtomicU32, seen: u32, timeout: Duration) {
    #[cfg(not(loom))]
    crate::os::futex_wait(word, seen, timeout);
    #[cfg(loom)]
    {
        let _ = timeout;
        while word.load(Ordering::SeqCst) == seen {
            loom::thread::yield_now();
        }
    }
}

/// The waker's half, after publishing (a message, or freed slots): a
/// SeqCst fence, then — only if some waiter bit is set in `mask`, or
/// `always` — a bump of `word` and `FUTEX_WAKE`. Returns whether it woke.
pub(crate) fn wake(word: &AtomicU32, mask: &AtomicU32, always: bool) -> bool {
    // Pairs with the SeqCst fence in `Sleeper::park`: either the sleeper
    // sees what we published, or we see its bit.
    fence(Ordering::SeqCst);
    if always || mask.load(Ordering::Relaxed) != 0 {
        word.fetch_add(1, Ordering::SeqCst);
        wake_all(word);
        return true;
    }
    false
}

/// `FUTEX_WAKE` of every sleeper on a shared word.
fn wake_all(word: &AtomicU32) {
    #[cfg(not(loom))]
    crate::os::futex_wake_all(word);
    #[cfg(loom)]
    let _ = word;
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn wait_for(policy: &SpinPolicy, wait: Duration) -> bool {
        let mut spin = policy.start();
        let spun = spin.again();
        std::thread::sleep(wait);
        policy.settle(&spin);
        spun
    }

    #[test]
    fn a_spin_that_does_not_pay_is_turned_off_but_for_probes() {
        let policy = SpinPolicy::new(Duration::from_millis(2));
        // A wait that ended within the budget keeps the next one spinning.
        assert!(wait_for(&policy, Duration::ZERO));
        assert!(wait_for(&policy, Duration::ZERO));
        // Waits that outlast it: spinning stops, but for one wait in
        // PROBE_EVERY.
        assert!(wait_for(&policy, Duration::from_millis(4)));
        let spun: Vec<bool> = (0..2 * PROBE_EVERY)
            .map(|_| wait_for(&policy, Duration::from_millis(3)))
            .collect();
        assert_eq!(spun.iter().filter(|&&s| s).count(), 2, "{spun:?}");
        assert!(spun[PROBE_EVERY as usize - 1]);
        // A quick wait (a probe would have caught it) turns it back on.
        let mut spin = policy.start();
        let _ = spin.again();
        policy.settle(&spin);
        assert!(wait_for(&policy, Duration::ZERO));
    }

    #[test]
    fn a_first_try_that_succeeds_changes_nothing() {
        let policy = SpinPolicy::new(Duration::from_millis(1));
        assert!(wait_for(&policy, Duration::from_millis(3)));
        let spin = policy.start();
        policy.settle(&spin); // never waited
        assert!(!policy.start().again(), "still off");
    }

    #[test]
    fn a_huge_budget_does_not_overflow() {
        let policy = SpinPolicy::new(Duration::MAX);
        let mut spin = policy.start();
        assert!(spin.again());
    }

    #[test]
    fn liveness_looks_are_due_once_per_tick() {
        let t = Throttle::new();
        assert!(t.due(), "due at once the first time");
        assert!(!t.due(), "not again within the tick");
        std::thread::sleep(LIVENESS_TICK + Duration::from_millis(30));
        assert!(t.due());
        assert!(!t.due());
    }

    /// A waiter whose condition already holds does not sleep; one that
    /// sleeps is announced in the mask while it checks and sleeps, sleeps
    /// for its timeout when nobody wakes it, returns the word it slept on,
    /// and leaves the others' bits as they were.
    #[test]
    fn a_sleeper_is_announced_only_while_it_waits() {
        let (word, mask) = (AtomicU32::new(7), AtomicU32::new(1 << 9));
        let s = Sleeper::new(3);
        let t = std::time::Instant::now();
        assert_eq!(s.park(&word, &mask, Duration::from_secs(2), || true), None);
        assert!(t.elapsed() < Duration::from_secs(1), "ready: no sleep");
        assert_eq!(mask.load(Ordering::SeqCst), 1 << 9);
        let mut seen_mask = 0;
        let t = std::time::Instant::now();
        let slept = s.park(&word, &mask, Duration::from_millis(50), || {
            seen_mask = mask.load(Ordering::SeqCst);
            false
        });
        assert_eq!(slept, Some(7));
        assert!(
            t.elapsed() >= Duration::from_millis(40),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(seen_mask, 1 << 9 | 1 << 3, "announced while it checks");
        assert_eq!(mask.load(Ordering::SeqCst), 1 << 9, "and only then");
    }

    /// A waker makes the call only when someone is announced (or always),
    /// and the call wakes a sleeper long before its timeout.
    #[test]
    fn a_waker_wakes_an_announced_sleeper_and_otherwise_makes_no_call() {
        let (word, mask) = (AtomicU32::new(0), AtomicU32::new(0));
        assert!(!wake(&word, &mask, false), "nobody waits");
        assert_eq!(word.load(Ordering::SeqCst), 0);
        assert!(wake(&word, &mask, true), "always");
        assert_eq!(word.load(Ordering::SeqCst), 1);
        let s = Sleeper::new(0);
        let checked = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|sc| {
            let t = sc.spawn(|| {
                let t0 = std::time::Instant::now();
                s.park(&word, &mask, Duration::from_secs(3), || {
                    checked.store(true, Ordering::SeqCst);
                    false
                });
                t0.elapsed()
            });
            // Its last check done (the word it sleeps on read): wake it.
            while !checked.load(Ordering::SeqCst) && !t.is_finished() {
                std::thread::yield_now();
            }
            assert!(wake(&word, &mask, false));
            let slept = t.join().unwrap();
            assert!(slept < Duration::from_millis(1500), "{slept:?}");
        });
    }
}
