//! Blocking without burning CPU: a short spin, then a futex on a word of
//! the shared ring. A waiter announces itself in a waiter count before its
//! last check; a waker publishes, then (after a SeqCst fence) looks at the
//! count and makes the wake system call only if someone waits — so the
//! fast path of a producer with no sleeping consumer makes no system call.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Spins before parking (each a `spin_loop` hint, well under 10 µs in all).
pub(crate) const SPINS: u32 = 2_000;

/// Longest sleep between liveness checks of the other side.
pub(crate) const LIVENESS_TICK: Duration = Duration::from_millis(100);

/// Sleeps on `word` for at most `timeout` unless `ready()` holds once this
/// waiter is announced in `waiters`.
pub(crate) fn park(
    word: &AtomicU32,
    waiters: &AtomicU32,
    timeout: Duration,
    ready: impl FnOnce() -> bool,
) {
    // SeqCst: pairs with the waker's SeqCst fence before it reads
    // `waiters` — either it sees us, or we see its publication in `ready`.
    waiters.fetch_add(1, Ordering::SeqCst);
    let seen = word.load(Ordering::SeqCst);
    if !ready() {
        crate::os::futex_wait(word, seen, timeout);
    }
    waiters.fetch_sub(1, Ordering::SeqCst);
}
