//! Variable-size byte blobs in fixed-size chunks that never move — inside
//! one process (heap mode), or across processes on one host through POSIX
//! shared memory (shared mode), with channels between processes on top.
//!
//! * **Heap mode** ([`PinnedBlobStore::new`]): [`append`](PinnedBlobStore::append)
//!   returns a [`BlobHandle`]; [`get`](PinnedBlobStore::get) copies,
//!   [`get_ref`](PinnedBlobStore::get_ref) gives a zero-copy [`BlobView`]
//!   whose bytes stay put while it lives; acknowledged pages are recycled.
//! * **Shared mode** ([`PinnedBlobStore::new_shared`] /
//!   [`attach_shared`](PinnedBlobStore::attach_shared)): below. A
//!   [`Writer`] ([`PinnedBlobStore::writer`]) is one thread's faster way to
//!   append and acknowledge, one blob or a batch at a time.
//! * **Channels** ([`channel`]): broadcast ([`Publisher`] / [`Subscriber`])
//!   and work queues ([`Sender`] / [`Receiver`]) between processes, small
//!   messages inline in a shared ring slot, large ones through the store.
//! * The original crate's API is kept: its module paths ([`page`], [`types`],
//!   [`profiling`], [`lifecycle`], [`backend::shared`]) and signatures.
//!
//! In shared mode a producer appends bytes and gets a 24-byte [`OverflowHandle`]; it sends
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
//! let wire: [u8; 24] = handle.to_array(); // send these bytes any way you like
//! let bytes = consumer.resolve(&OverflowHandle::from_array(&wire));
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

// The module tree, top-down.

// The facade: the store, its lifecycle thread, statistics, views, writers, handles.
mod compat;
mod config;
mod error;
mod handle;
pub use compat::{lifecycle, profiling};
mod maintain;
mod profiler;
mod stats;
mod store;
mod view;
mod writer;

// Channels between processes, on the store.
pub mod channel;

// The store protocol: the two backends, and the engine both run on.
pub mod backend;
mod engine;
mod registry;
mod table;

// The chunk protocol, the byte layout, payload copies.
mod chunk;
mod copy;
pub mod layout;

// The operating system: system calls, the clock, atomics (loom's under
// `--cfg loom`), namespace names.
mod clock;
pub(crate) mod fork;
pub mod namespace;
mod os;
mod removal;
mod sync;

// Tools beside the store: read-only inspection, and test and fuzzing aids.
#[doc(hidden)]
pub mod fuzzing;
#[doc(hidden)]
pub mod hooks;
pub mod inspect;

pub use backend::heap::HeapBackend;
pub use backend::shared::{Recovery, SharedBackend, DEFAULT_CHUNK_SIZE};

/// The README's Rust examples, compiled and run as doctests so the README
/// stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
pub use channel::{
    ChannelConfig, Delivery, Loan, Message, Overflow, Publisher, Receiver, RecvError,
    RecvTimeoutError, SendError, SendTimeoutError, Sender, Subscriber, TryRecvError, TrySendError,
};
#[cfg(all(feature = "async", not(loom)))]
pub use channel::{RecvFuture, RecvStream, SendFuture};
#[cfg(not(loom))]
pub use channel::{Select, Selectable};
pub use config::{BackendMode, Config};
pub use error::{BlobError, Result};
pub use handle::{BlobHandle, OverflowHandle};
pub use lifecycle::{BlobStoreLifecycleExt, CleanupHandle, LifecycleManager, Maintain};
pub use os::{SHM_DIR, SHM_DIR_ENV};
pub use profiling::{ProfileSnapshot, ProfileStats, Profiler};
pub use stats::{BlobStats, StoreStats};
pub use store::PinnedBlobStore;

/// The store under the original crate's module path (`page::PinnedBlobStore`,
/// `page::BlobStats`).
pub mod page {
    pub use crate::stats::BlobStats;
    pub use crate::store::PinnedBlobStore;
}

/// The handle, configuration and error types under the original crate's
/// module path, with its `now_ms`.
pub mod types {
    pub use crate::config::{BackendMode, Config};
    pub use crate::error::{BlobError, Result};
    pub use crate::handle::{BlobHandle, OverflowHandle};

    /// Milliseconds since the Unix epoch (the original crate's clock).
    /// Handles carry this crate's own clock, the host's coarse monotonic
    /// nanoseconds: compare handle times with
    /// [`OverflowHandle::age_ms`], not with this.
    pub fn now_ms() -> u64 {
        crate::clock::unix_ms()
    }
}
pub use view::BlobView;
pub use writer::Writer;
