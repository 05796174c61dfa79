//! Statistics and the opt-in operation profiler.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A snapshot of a store's chunks (pages in heap mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Chunks in existence (in use, pooled or dedicated).
    pub chunks: usize,
    /// Warm chunks waiting in the pool.
    pub pooled: usize,
    /// Chunks recycled in place so far.
    pub recycled: u64,
    /// Chunks released (unlinked or freed) so far.
    pub retired: u64,
    /// Chunks reclaimed by TTL so far.
    pub expired: u64,
}

/// Counts operations of one store, off by default so the hot paths pay a
/// single relaxed load when it is not wanted.
#[derive(Debug, Default)]
pub struct Profiler {
    enabled: AtomicBool,
    appends: AtomicU64,
    appended_bytes: AtomicU64,
    reads: AtomicU64,
    misses: AtomicU64,
    acks: AtomicU64,
}

/// What a [`Profiler`] counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProfileSnapshot {
    /// Successful appends.
    pub appends: u64,
    /// Bytes appended.
    pub appended_bytes: u64,
    /// Successful reads (copies and views).
    pub reads: u64,
    /// Reads that found nothing (stale, reclaimed or forged handles).
    pub misses: u64,
    /// Acknowledgements that counted.
    pub acks: u64,
}

impl Profiler {
    /// Starts counting.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Stops counting (the counts stay).
    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Relaxed);
    }

    /// Whether it is counting.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The counts so far.
    pub fn snapshot(&self) -> ProfileSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProfileSnapshot {
            appends: l(&self.appends),
            appended_bytes: l(&self.appended_bytes),
            reads: l(&self.reads),
            misses: l(&self.misses),
            acks: l(&self.acks),
        }
    }

    pub(crate) fn on_append(&self, bytes: usize) {
        if self.is_enabled() {
            self.appends.fetch_add(1, Ordering::Relaxed);
            self.appended_bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    pub(crate) fn on_read(&self, hit: bool) {
        if self.is_enabled() {
            let c = if hit { &self.reads } else { &self.misses };
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn on_ack(&self, counted: bool) {
        if self.is_enabled() && counted {
            self.acks.fetch_add(1, Ordering::Relaxed);
        }
    }
}
