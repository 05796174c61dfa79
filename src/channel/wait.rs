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

/// How long a waiter spins before it sleeps, unless the endpoint's
/// [`ChannelConfig::spin`](crate::ChannelConfig::spin) says otherwise. Chosen
/// from the measurement in `BENCHMARKS.md` (wake-up latency against the
/// receiver's CPU per message): see `docs/design.md`.
pub(crate) const DEFAULT_SPIN: Duration = Duration::from_micros(5);

/// The spin phase of one wait: true while the caller should spin on (its
/// budget has not run out since the first call).
#[derive(Debug)]
pub(crate) struct Spin {
    budget: Duration,
    until: Option<std::time::Instant>,
}

impl Spin {
    /// A spin of `budget` (at most an hour: any `Instant` has room for
    /// that, so no budget makes the deadline overflow).
    pub(crate) fn new(budget: Duration) -> Self {
        Self {
            budget: budget.min(Duration::from_secs(3600)),
            until: None,
        }
    }

    /// Whether to spin once more (with a `spin_loop` hint) rather than sleep.
    pub(crate) fn again(&mut self) -> bool {
        if self.budget.is_zero() {
            return false;
        }
        let now = std::time::Instant::now();
        let until = *self.until.get_or_insert(now + self.budget);
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
/// threads sleep (the bit stays set while any does).
#[derive(Debug)]
pub(crate) struct Sleeper {
    bit: u32,
    threads: AtomicU32,
}

impl Sleeper {
    pub(crate) fn new(index: usize) -> Self {
        Self {
            bit: 1u32 << (index as u32 & 31),
            threads: AtomicU32::new(0),
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
        if self.threads.fetch_add(1, Ordering::SeqCst) == 0 {
            mask.fetch_or(self.bit, Ordering::SeqCst);
        }
        // Pairs with the waker's SeqCst fence before it reads `mask`:
        // either it sees our bit, or we see its publication in `ready`.
        fence(Ordering::SeqCst);
        let seen = word.load(Ordering::SeqCst);
        let slept = (!ready()).then(|| {
            sleep_on(word, seen, timeout);
            seen
        });
        // Two threads of one endpoint racing here can clear the bit while
        // one still sleeps: that one then waits for its timeout (a tick).
        if self.threads.fetch_sub(1, Ordering::SeqCst) == 1 {
            mask.fetch_and(!self.bit, Ordering::SeqCst);
        }
        slept
    }
}

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
