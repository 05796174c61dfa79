//! The one clock of the crate: `CLOCK_MONOTONIC_COARSE`.
//!
//! It is system-wide (every process on the host reads the same value), never
//! goes backwards, and costs a few nanoseconds through the vDSO, so it can be
//! read on the append path. Its resolution is one scheduler tick (1-4 ms),
//! which is ample for TTL and decay decisions measured in milliseconds.

/// Nanoseconds on the coarse monotonic clock.
pub fn now_ns() -> u64 {
    read(CLOCK).unwrap_or(0)
}

/// Nanoseconds on `clock`, `None` if it cannot be read.
fn read(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| {
        (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64)
    })
}

/// Nanoseconds on the precise monotonic clock (`CLOCK_MONOTONIC`), the same
/// clock as [`now_ns`] read between ticks: never behind it. For ages of
/// handles, off the append path.
pub fn precise_now_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC).unwrap_or_else(now_ns)
}

/// Milliseconds on the coarse monotonic clock (never 0 once the host is up,
/// so 0 can mean "not set" in shared headers).
pub fn now_ms() -> u64 {
    (now_ns() / 1_000_000).max(1)
}

/// Miri only knows the plain monotonic clock.
#[cfg(miri)]
const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;
#[cfg(not(miri))]
const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC_COARSE;

/// Wall-clock milliseconds since the Unix epoch, for display only.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clock_is_monotonic_and_nonzero() {
        let a = now_ns();
        let b = now_ns();
        assert!(a > 0);
        assert!(b >= a);
        assert!(now_ms() >= 1);
        // The coarse clock is the precise one as of the last tick: read
        // after it, the precise clock is never behind.
        let coarse = now_ns();
        assert!(precise_now_ns() >= coarse);
    }
}
