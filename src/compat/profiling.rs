//! The original crate's `profiling` module: the profiler of a store and its
//! report (defined in the store's `profiler` module, re-exported here under
//! the original's path).

pub use crate::maintain::ChunkTotals;
pub use crate::profiler::{ProfileSnapshot, ProfileStats, Profiler};
