//! The original crate's API surface over the store: `lifecycle`
//! (`LifecycleManager`, `BlobStoreLifecycleExt`) and `profiling`, kept at
//! their original paths by the crate root's re-exports. Nothing below the
//! facade imports this folder.

pub mod lifecycle;
pub mod profiling;
