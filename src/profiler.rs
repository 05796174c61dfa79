//! The profiler: operation counters (opt-in), chunk totals, and the
//! original crate's `ProfileStats` report. The public module `profiling`
//! (the original crate's path) re-exports it.

use crate::maintain::Maintain;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{OnceLock, Weak};
use std::time::Instant;

/// Counts operations of one store, off by default so the hot paths pay a
/// single relaxed load when it is not wanted ([`enable`](Self::enable)).
///
/// [`stats`](Self::stats) gives the original crate's report: the chunk
/// (page) totals come from the store itself and are always exact; the
/// operation counts (appends, reads, bytes) count only while enabled. The
/// `record_*` methods add to the counts whether enabled or not, for code
/// that records its own events, as with the original.
#[derive(Debug)]
pub struct Profiler {
    enabled: AtomicBool,
    appends: AtomicU64,
    appended_bytes: AtomicU64,
    reads: AtomicU64,
    read_bytes: AtomicU64,
    misses: AtomicU64,
    acks: AtomicU64,
    cleanups: AtomicU64,
    spans: AtomicU64,
    pages_allocated: AtomicU64,
    pages_freed: AtomicU64,
    capacity_allocated: AtomicU64,
    capacity_freed: AtomicU64,
    bytes_discarded: AtomicU64,
    started: Instant,
    store: OnceLock<Weak<dyn Maintain>>,
}

impl Default for Profiler {
    fn default() -> Self {
        Self::new()
    }
}

/// The original crate's profile report; see [`Profiler::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProfileStats {
    /// Chunks (pages) created so far: the store's own plus recorded ones.
    pub total_pages_allocated: usize,
    /// Chunks (pages) released so far (files unlinked, pages freed).
    pub total_pages_freed: usize,
    /// Appends counted.
    pub total_appends: u64,
    /// Successful reads counted (copies and views).
    pub total_reads: u64,
    /// Reclamation passes counted.
    pub total_cleanups: u64,
    /// Blobs spanning pages: always 0 here (blobs never span chunks: a
    /// blob larger than a chunk gets a dedicated chunk).
    pub multi_page_spans: u64,
    /// Payload bytes appended (counted).
    pub total_bytes_written: u64,
    /// Payload bytes read (counted).
    pub total_bytes_read: u64,
    /// Bytes recorded as discarded with freed pages (`record_page_cleanup`).
    pub total_bytes_discarded: u64,
    /// Capacity of the chunks created, counting each at the standard chunk
    /// size (a dedicated chunk is as large as its blob).
    pub total_capacity_allocated: u64,
    /// Capacity of the chunks released, counted the same way.
    pub total_capacity_freed: u64,
    /// Chunks in existence now.
    pub active_pages: usize,
    /// Their capacity (standard size each).
    pub active_capacity_bytes: u64,
    /// Bytes written minus bytes discarded (as counted).
    pub active_data_bytes: u64,
    /// Capacity minus data.
    pub free_space_bytes: u64,
    /// Free space over capacity (0 when nothing is allocated).
    pub fragmentation_ratio: f64,
    /// Seconds since the profiler was made.
    pub uptime_secs: u64,
}

impl ProfileStats {
    /// Mean bytes per counted append (0 if none).
    pub fn avg_append_size(&self) -> u64 {
        self.total_bytes_written
            .checked_div(self.total_appends)
            .unwrap_or(0)
    }

    /// Mean bytes per counted read (0 if none).
    pub fn avg_read_size(&self) -> u64 {
        self.total_bytes_read
            .checked_div(self.total_reads)
            .unwrap_or(0)
    }
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
    /// A profiler with zeroed counts, not counting a store's operations
    /// until [`enable`](Self::enable)d.
    pub fn new() -> Self {
        let z = || AtomicU64::new(0);
        Self {
            enabled: AtomicBool::new(false),
            appends: z(),
            appended_bytes: z(),
            reads: z(),
            read_bytes: z(),
            misses: z(),
            acks: z(),
            cleanups: z(),
            spans: z(),
            pages_allocated: z(),
            pages_freed: z(),
            capacity_allocated: z(),
            capacity_freed: z(),
            bytes_discarded: z(),
            started: Instant::now(),
            store: OnceLock::new(),
        }
    }

    /// A store's profiler: its chunk totals are read from `store`.
    pub(crate) fn for_store(store: Weak<dyn Maintain>) -> Self {
        let p = Self::new();
        let _ = p.store.set(store);
        p
    }

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

    /// The original crate's report: chunk totals (exact, from the store)
    /// plus what was counted and recorded.
    pub fn stats(&self) -> ProfileStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let t = self
            .store
            .get()
            .and_then(Weak::upgrade)
            .map(|s| s.totals())
            .unwrap_or_default();
        let allocated = t.live + t.released + l(&self.pages_allocated);
        let freed = t.released + l(&self.pages_freed);
        let cap_allocated = (t.live + t.released) * t.chunk_size + l(&self.capacity_allocated);
        let cap_freed = t.released * t.chunk_size + l(&self.capacity_freed);
        let written = l(&self.appended_bytes);
        let discarded = l(&self.bytes_discarded);
        let active_cap = cap_allocated.saturating_sub(cap_freed);
        let active_data = written.saturating_sub(discarded);
        let free = active_cap.saturating_sub(active_data);
        ProfileStats {
            total_pages_allocated: allocated as usize,
            total_pages_freed: freed as usize,
            total_appends: l(&self.appends),
            total_reads: l(&self.reads),
            total_cleanups: l(&self.cleanups),
            multi_page_spans: l(&self.spans),
            total_bytes_written: written,
            total_bytes_read: l(&self.read_bytes),
            total_bytes_discarded: discarded,
            total_capacity_allocated: cap_allocated,
            total_capacity_freed: cap_freed,
            active_pages: allocated.saturating_sub(freed) as usize,
            active_capacity_bytes: active_cap,
            active_data_bytes: active_data,
            free_space_bytes: free,
            fragmentation_ratio: if active_cap > 0 {
                free as f64 / active_cap as f64
            } else {
                0.0
            },
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }

    /// Records an append of `size` bytes.
    pub fn record_append(&self, size: usize) {
        self.appends.fetch_add(1, Ordering::Relaxed);
        self.appended_bytes
            .fetch_add(size as u64, Ordering::Relaxed);
    }

    /// Records a read of `size` bytes.
    pub fn record_read(&self, size: usize) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(size as u64, Ordering::Relaxed);
    }

    /// Records a page of `capacity` bytes allocated.
    pub fn record_page_allocated(&self, capacity: usize) {
        self.pages_allocated.fetch_add(1, Ordering::Relaxed);
        self.capacity_allocated
            .fetch_add(capacity as u64, Ordering::Relaxed);
    }

    /// Records a page of `capacity` bytes freed with `used_data` bytes in it.
    pub fn record_page_cleanup(&self, capacity: usize, used_data: usize) {
        self.pages_freed.fetch_add(1, Ordering::Relaxed);
        self.capacity_freed
            .fetch_add(capacity as u64, Ordering::Relaxed);
        self.bytes_discarded
            .fetch_add(used_data as u64, Ordering::Relaxed);
    }

    /// Records a cleanup pass.
    pub fn record_cleanup(&self) {
        self.cleanups.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a blob spanning pages (kept for the original's API; this
    /// crate's blobs never span chunks).
    pub fn record_multi_page_span(&self) {
        self.spans.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_append(&self, bytes: usize) {
        self.on_appends(1, bytes);
    }

    /// `count` appends of `bytes` bytes in all (a batch).
    pub(crate) fn on_appends(&self, count: usize, bytes: usize) {
        if self.is_enabled() {
            self.appends.fetch_add(count as u64, Ordering::Relaxed);
            self.appended_bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    pub(crate) fn on_read(&self, bytes: Option<usize>) {
        if self.is_enabled() {
            match bytes {
                Some(n) => self.record_read(n),
                None => {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    pub(crate) fn on_cleanup(&self) {
        if self.is_enabled() {
            self.record_cleanup();
        }
    }

    pub(crate) fn on_ack(&self, counted: bool) {
        self.on_acks(usize::from(counted));
    }

    /// `counted` acknowledgements that counted (a batch).
    pub(crate) fn on_acks(&self, counted: usize) {
        if self.is_enabled() && counted > 0 {
            self.acks.fetch_add(counted as u64, Ordering::Relaxed);
        }
    }
}
