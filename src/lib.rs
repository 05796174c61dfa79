//! Variable-size byte blobs in fixed-size chunks that never move — across
//! processes on one host through POSIX shared memory.
//!
//! A producer appends bytes and gets a 24-byte [`OverflowHandle`]; it sends
//! the handle over any channel; any attached process resolves it; consumers
//! acknowledge; chunks are reclaimed after everything in them is
//! acknowledged (plus a decay period), or after a TTL when a consumer
//! crashed. Files of a crashed creator are removed by
//! [`SharedBackend::cleanup_namespace`].
//!
//! ```
//! use stable_fragmented_buffer::{Config, PinnedBlobStore};
//!
//! # let ns = format!("sfbdoc-{}", std::process::id());
//! let producer = PinnedBlobStore::new_shared(Config::default(), &ns, 1 << 20)?;
//! let handle = producer.append_shared(b"hello")?;
//!
//! // In another process (here the same one, for the example):
//! let consumer = PinnedBlobStore::attach_shared(Config::default(), &ns)?;
//! let bytes = consumer.resolve(&OverflowHandle::from_bytes(&handle.as_bytes()));
//! assert_eq!(bytes.as_deref(), Some(&b"hello"[..]));
//! assert!(consumer.acknowledge_shared(&handle));
//! assert!(!consumer.acknowledge_shared(&handle)); // counted once
//! # use stable_fragmented_buffer::OverflowHandle;
//! # Ok::<(), stable_fragmented_buffer::BlobError>(())
//! ```
//!
//! The byte layout is documented in [`layout`]; the design and its reasons
//! in `docs/design.md`.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod backend;
#[cfg(feature = "bench")]
pub mod bench;
pub mod channel;
mod chunk;
mod clock;
mod config;
mod copy;
mod engine;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod handle;
#[doc(hidden)]
pub mod hooks;
pub mod inspect;
pub mod layout;
mod lifecycle;
pub mod namespace;
mod os;
mod registry;
mod stats;
mod store;
mod sync;
mod table;
mod view;

pub use backend::heap::HeapBackend;
pub use backend::shared::{Recovery, SharedBackend, DEFAULT_CHUNK_SIZE};

/// The README's Rust examples, compiled and run as doctests so the README
/// stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
pub use channel::{
    ChannelConfig, Loan, Message, Publisher, Receiver, RecvError, RecvTimeoutError, SendError,
    Sender, Subscriber, TryRecvError, TrySendError,
};
pub use config::Config;
pub use error::{BlobError, Result};
pub use handle::{BlobHandle, OverflowHandle};
pub use lifecycle::{CleanupHandle, LifecycleManager, Maintain};
pub use os::{SHM_DIR, SHM_DIR_ENV};
pub use stats::{ProfileSnapshot, Profiler, StoreStats};
pub use store::{BlobStoreLifecycleExt, PinnedBlobStore};
pub use view::BlobView;
