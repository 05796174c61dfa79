//! Storage backends: [`heap`] (one process) and [`shared`] (POSIX shared
//! memory, many processes). Both run the same chunk and store protocols.

pub mod heap;
pub mod shared;
