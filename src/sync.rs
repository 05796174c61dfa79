//! Atomics shim: the real `std` atomics normally, loom's under `--cfg loom`, so
//! the chunk protocol can be model-checked without changing a line of it.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
