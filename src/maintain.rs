//! What the reclamation thread and the profiler need from a store: a pass,
//! and the chunk totals. Below the backends, which implement it, and below
//! the original crate's `lifecycle` and `profiling` modules, which use it.

/// Something whose chunks a lifecycle thread can reclaim.
pub trait Maintain: Send + Sync {
    /// One reclamation pass; returns the number of chunks reclaimed.
    fn maintain(&self) -> usize;
    /// Its chunk totals (for the profiler's report).
    fn totals(&self) -> ChunkTotals {
        ChunkTotals::default()
    }
}

/// A store's chunk totals, as its profiler reads them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkTotals {
    /// Chunks in existence now.
    pub live: u64,
    /// Chunks released so far.
    pub released: u64,
    /// Size of a standard chunk.
    pub chunk_size: u64,
}
