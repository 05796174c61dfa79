//! Channels: deliver messages between processes, not only store them.
//!
//! Two kinds, opened by name on a shared-mode [`PinnedBlobStore`]:
//!
//! * **broadcast** — [`PinnedBlobStore::publisher`] /
//!   [`PinnedBlobStore::subscriber`]: every subscriber receives every
//!   message sent after it subscribed, in each publisher's order;
//! * **work queue** — [`PinnedBlobStore::sender`] /
//!   [`PinnedBlobStore::receiver`]: each message goes to exactly one
//!   receiver.
//!
//! A channel is one file of the namespace, `{ns}_chan+{name}`, holding a
//! ring of slots. A message up to a slot's inline capacity (240 bytes by
//! default) is copied into the slot; a larger one is appended to the store
//! and its 24-byte handle travels in the slot. Receiving is zero-copy either
//! way: a [`Message`] reads the slot or a pinned view of the store in place.
//! [`Publisher::loan`] makes sending zero-copy too.
//!
//! * A producer publishes with one Release store and makes no system call
//!   unless a consumer sleeps; an idle consumer sleeps on a futex.
//! * Every participant holds an OFD lock on its own byte of the channel
//!   file, so a participant killed with SIGKILL is detected (within
//!   100 ms of someone needing it gone) and its place repaired: a dead
//!   producer's unpublished slot is skipped, a dead consumer stops gating
//!   producers and what it held is released (acknowledged on its behalf).
//! * Work-queue delivery is **at most once** across a crash: a message a
//!   receiver took and had not finished with when it died is not
//!   delivered again.
//! * `recv` returns `Disconnected` once no producer is alive and the
//!   channel is drained; a producer that appears later reconnects it.
//!
//! ```
//! use stable_fragmented_buffer::{Config, PinnedBlobStore};
//! # let ns = format!("sfbdoc-chan-{}", std::process::id());
//! let store = PinnedBlobStore::new_shared(Config::default(), &ns, 1 << 20)?;
//! let sub = store.subscriber("frames")?;      // any attached process may do this
//! let publisher = store.publisher("frames")?;
//! publisher.send(b"small: travels in the ring slot")?;
//! publisher.send(&vec![7u8; 100_000])?;       // large: through the store
//! assert_eq!(&*sub.recv()?, b"small: travels in the ring slot");
//! let big = sub.recv()?;
//! assert!(big.is_overflow() && big.iter().all(|&b| b == 7));
//! drop(publisher);
//! drop(big);
//! assert!(sub.recv().is_err()); // disconnected: no publisher left, drained
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The ring layout is in `docs/design.md`, byte by byte.

mod consumer;
mod error;
mod file;
pub(crate) mod layout;
mod producer;
mod ring;
mod wait;

pub use consumer::{Iter, Message, Receiver, Subscriber};
pub use error::{RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};
pub use layout::{channel_file_name, parse_channel_file_name};
pub use producer::{Loan, Publisher, Sender};

pub use file::ChannelReport;
pub(crate) use file::{inspect_channel, remove_channel_files};

use crate::backend::shared::StoreLink;
use crate::error::{BlobError, Result};
use file::ChanFile;
use layout::{Geometry, KIND_BROADCAST, KIND_QUEUE};

/// Geometry of a channel's ring, fixed by whoever creates the channel file
/// (later openers adopt the file's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Number of slots: messages in flight before producers wait. A power
    /// of two, 2 to 2^20. Default 256.
    pub slots: u32,
    /// Bytes per slot, a multiple of 64 from 64 to 65536; messages up to
    /// `slot_size - 16` bytes travel inline. Default 256.
    pub slot_size: u32,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            slots: 256,
            slot_size: 256,
        }
    }
}

impl ChannelConfig {
    /// Largest message carried inline in a slot.
    pub fn inline_capacity(&self) -> usize {
        (self.slot_size as usize).saturating_sub(layout::SLOT_HEADER_SIZE)
    }
}

fn open(store: &StoreLink, name: &str, kind: u32, config: ChannelConfig) -> Result<ChanFile> {
    let geo = Geometry::new(config.slots, config.slot_size)
        .map_err(|reason| BlobError::InvalidConfig { reason })?;
    if store.is_closed() {
        return Err(BlobError::Closed {
            namespace: store.namespace().to_owned(),
        });
    }
    ChanFile::open_or_create(store.dir(), store.namespace(), store.key(), name, kind, geo)
}

pub(crate) fn publisher(store: StoreLink, name: &str, config: ChannelConfig) -> Result<Publisher> {
    let chan = open(&store, name, KIND_BROADCAST, config)?;
    Ok(Publisher::new(producer::Producer::open(chan, store)?))
}

pub(crate) fn sender(store: StoreLink, name: &str, config: ChannelConfig) -> Result<Sender> {
    let chan = open(&store, name, KIND_QUEUE, config)?;
    Ok(Sender::new(producer::Producer::open(chan, store)?))
}

pub(crate) fn subscriber(
    store: StoreLink,
    name: &str,
    config: ChannelConfig,
) -> Result<Subscriber> {
    let chan = open(&store, name, KIND_BROADCAST, config)?;
    Ok(Subscriber::new(consumer::Consumer::open(chan, store)?))
}

pub(crate) fn receiver(store: StoreLink, name: &str, config: ChannelConfig) -> Result<Receiver> {
    let chan = open(&store, name, KIND_QUEUE, config)?;
    Ok(Receiver::new(consumer::Consumer::open(chan, store)?))
}
