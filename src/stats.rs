//! `BlobStats`: a snapshot of a store's chunks.

/// A snapshot of a store's chunks (pages in heap mode).
///
/// `page_count` and `current_page_id` are the original crate's fields;
/// the others are this crate's reclamation counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlobStats {
    /// Chunks in existence (in use, pooled or dedicated), as `chunks`.
    pub page_count: usize,
    /// Id of the chunk appends currently go to (`u32::MAX` if none yet).
    pub current_page_id: u32,
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

/// The former name of [`BlobStats`].
pub type StoreStats = BlobStats;
