//! Storage backends. Shared mode lives in [`shared`].

pub mod shared;
