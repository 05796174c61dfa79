//! Channels: deliver messages between processes, not only store them.
//!
//! Two kinds, opened by name on a shared-mode
//! [`PinnedBlobStore`](crate::PinnedBlobStore):
//!
//! * **broadcast** — [`publisher`](crate::PinnedBlobStore::publisher) /
//!   [`subscriber`](crate::PinnedBlobStore::subscriber): every subscriber
//!   receives every message sent after it subscribed, in each publisher's
//!   order;
//! * **work queue** — [`sender`](crate::PinnedBlobStore::sender) /
//!   [`receiver`](crate::PinnedBlobStore::receiver): each message goes to
//!   exactly one receiver.
//!
//! A channel is one file of the namespace, `{ns}_chan+{name}`, holding a
//! ring of slots. A message up to a slot's inline capacity (1 MiB by
//! default; [`ChannelConfig::for_messages`] sizes it to yours) is copied
//! into the slot; a larger one is appended to the store and its 24-byte
//! handle travels in the slot. A slot's memory is backed as far as the
//! messages written into it reach, and a large message takes a slot a
//! consumer has just let go of, so a stream of large messages cycles
//! through a few slots that are still in cache. Receiving is zero-copy either
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
//! publisher.send(&vec![7u8; 2 << 20])?;       // over 1 MiB: through the store
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
#[cfg(all(feature = "async", not(loom)))]
mod future;
mod inspect;
pub(crate) mod layout;
mod producer;
#[cfg(all(feature = "async", not(loom)))]
mod reactor;
mod ring;
#[cfg(not(loom))]
mod select;
mod wait;

pub use consumer::{Iter, Message, Receiver, Subscriber};
pub use error::{
    RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
// `Overflow`, `Delivery` and `ChannelConfig` are defined below.
#[cfg(all(feature = "async", not(loom)))]
pub use future::{RecvFuture, RecvStream, SendFuture};
pub use layout::{channel_file_name, parse_channel_file_name};
pub use producer::{Loan, Publisher, Sender};
#[cfg(not(loom))]
pub use select::{Select, Selectable};

pub(crate) use inspect::inspect_channel;
pub use inspect::{ChannelReport, Eviction, HeldBack, ParticipantReport};

use crate::backend::shared::StoreLink;
use crate::error::{BlobError, Result};
use file::ChanFile;
use layout::{Geometry, Policy, KIND_BROADCAST, KIND_QUEUE};
use std::time::Duration;

/// What a broadcast channel does when a subscriber falls a whole ring
/// behind. Fixed by the channel's creator. A work queue always blocks: a job
/// is never dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Lossless: publishers wait for the slowest live subscriber. With a
    /// [`stall_timeout`](ChannelConfig::stall_timeout), a subscriber that
    /// has not received for that long while publishers wait is let go: it
    /// lags, as under `DropOldest`, instead of holding them.
    Block,
    /// Publishers never wait for subscribers: they overwrite the oldest
    /// message. A subscriber that fell a ring behind jumps ahead, and its
    /// next receive returns [`RecvError::Lagged`] with the number of
    /// messages it missed (as tokio's broadcast and iceoryx2's default
    /// "safe overflow" do). The default.
    #[default]
    DropOldest,
}

/// What a work queue does with a message whose receiver dies holding it.
/// Fixed by the channel's creator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// The message is lost with its receiver. The default.
    #[default]
    AtMostOnce,
    /// The message goes back to the queue and is delivered to another
    /// receiver; [`Message::redelivered`] counts how many times it was
    /// handed out before. Nothing is lost while a live receiver remains;
    /// a redelivered message may have been partly processed.
    AtLeastOnce,
}

/// Geometry and policy of a channel, fixed by whoever creates the channel
/// file (later openers adopt the file's).
///
/// The ring is the memory a channel reuses message after message, so it
/// stays in cache: messages that fit a slot are copied into it and read in
/// place. Size it to your messages with [`for_messages`](Self::for_messages)
/// (as one sizes iceoryx2's slices and queue); larger messages go through
/// the store. Build the rest with the methods:
///
/// ```
/// use stable_fragmented_buffer::{ChannelConfig, Delivery, Overflow};
/// use std::time::Duration;
/// let frames = ChannelConfig::for_messages(2 << 20, 8)
///     .overflow(Overflow::Block)
///     .stall_timeout(Duration::from_millis(200))
///     .max_held(4);
/// let jobs = ChannelConfig::default().delivery(Delivery::AtLeastOnce);
/// # let _ = (frames, jobs);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Number of ring slots: messages in flight before producers wait (or,
    /// under [`Overflow::DropOldest`], before the oldest is dropped). A
    /// power of two, 2 to 2^20. Default 256.
    pub slots: u32,
    /// Bytes per slot, a multiple of 64 from 128 to 16 MiB + 64 (and at most
    /// 1 GiB for the whole ring); messages up to `slot_size - 64` bytes
    /// travel inline. Default 1 MiB + 64 (1 MiB inline). This is address
    /// space, not memory: a slot is backed (in 4 KiB pages) as far as the
    /// longest message it has carried, so a stream of 64-byte messages
    /// backs a page per slot in use.
    pub slot_size: u32,
    /// Broadcast overflow policy. Default [`Overflow::DropOldest`].
    pub overflow: Overflow,
    /// Work-queue delivery. Default [`Delivery::AtMostOnce`].
    pub delivery: Delivery,
    /// Messages one consumer may hold (received and not dropped) at once,
    /// 1 to 1024. Default 16. Each held message keeps its own slot (the
    /// pool has that many spare slots per consumer), never the ring.
    pub max_held: u32,
    /// Under [`Overflow::Block`], how long a subscriber may go without
    /// receiving while publishers wait before it is let go. `None` (the
    /// default): never.
    pub stall_timeout: Option<Duration>,
    /// How long a blocked send or receive of this endpoint spins before it
    /// sleeps on a futex. Not part of the channel file: each endpoint
    /// chooses its own. Default 5 µs, chosen from the measurement of
    /// wake-up latency against CPU per message in `BENCHMARKS.md`. The spin
    /// adapts: while waits outlast it, the endpoint sleeps at once (but for
    /// one wait in 16, which spins to see whether traffic sped up), so a
    /// longer spin costs little CPU at low rates and saves a sleep and a
    /// wake-up per message in a stream.
    pub spin: Duration,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            slots: 256,
            slot_size: (1 << 20) + 64,
            overflow: Overflow::DropOldest,
            delivery: Delivery::AtMostOnce,
            max_held: 16,
            stall_timeout: None,
            spin: wait::DEFAULT_SPIN,
        }
    }
}

impl ChannelConfig {
    /// A ring whose slots carry messages of up to `max_message` bytes
    /// inline, with `in_flight` of them (rounded up to a power of two) in
    /// flight before producers wait. Larger messages still work (through
    /// the store). Capped at the largest slot and ring.
    pub fn for_messages(max_message: usize, in_flight: u32) -> Self {
        let slot = (max_message.saturating_add(layout::SLOT_HEADER_SIZE + 63) / 64 * 64).clamp(
            layout::MIN_SLOT_SIZE as usize,
            layout::MAX_SLOT_SIZE as usize,
        ) as u32;
        let most = (layout::MAX_RING_BYTES / slot as u64).max(1) as u32;
        let slots = in_flight
            .clamp(layout::MIN_SLOTS, layout::MAX_SLOTS)
            .checked_next_power_of_two()
            .unwrap_or(layout::MAX_SLOTS);
        let slots = if slots > most {
            // The largest power of two that fits.
            1 << (31 - most.leading_zeros())
        } else {
            slots
        };
        Self {
            slots: slots.max(layout::MIN_SLOTS),
            slot_size: slot,
            ..Self::default()
        }
    }

    /// Sets the broadcast overflow policy (ignored by work queues, which
    /// always block).
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Sets the stall timeout of an [`Overflow::Block`] channel.
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = Some(timeout);
        self
    }

    /// Sets the work-queue delivery (ignored by broadcast channels).
    pub fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// Sets how many messages one consumer may hold at once.
    pub fn max_held(mut self, n: u32) -> Self {
        self.max_held = n;
        self
    }

    /// Sets how long a blocked send or receive spins before it sleeps
    /// ([`Duration::ZERO`]: sleep at once).
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Largest message carried inline in a slot.
    pub fn inline_capacity(&self) -> usize {
        (self.slot_size as usize).saturating_sub(layout::SLOT_HEADER_SIZE)
    }

    fn policy(&self) -> Policy {
        Policy {
            max_held: self.max_held,
            overflow: match self.overflow {
                Overflow::Block => layout::OVERFLOW_BLOCK,
                Overflow::DropOldest => layout::OVERFLOW_DROP_OLDEST,
            },
            delivery: match self.delivery {
                Delivery::AtMostOnce => layout::DELIVERY_AT_MOST_ONCE,
                Delivery::AtLeastOnce => layout::DELIVERY_AT_LEAST_ONCE,
            },
            stall_timeout_ms: self
                .stall_timeout
                .map_or(0, |d| (d.as_millis().min(u64::MAX as u128) as u64).max(1)),
        }
    }
}

/// Opens (creating if needed) channel `name` of `kind`. An `explicit`
/// config must match an existing channel's geometry and policy.
fn open(
    store: &StoreLink,
    name: &str,
    kind: u32,
    config: ChannelConfig,
    explicit: bool,
) -> Result<ChanFile> {
    let invalid = |reason| BlobError::InvalidConfig { reason };
    let policy = config.policy();
    policy.check().map_err(invalid)?;
    let geo = Geometry::new(config.slots, config.slot_size, config.max_held).map_err(invalid)?;
    if store.is_closed() {
        return Err(BlobError::Closed {
            namespace: store.namespace().to_owned(),
        });
    }
    let chan = ChanFile::open_or_create(
        store.dir(),
        store.namespace(),
        store.key(),
        name,
        kind,
        geo,
        policy,
    )?;
    if explicit {
        let found = describe(kind, chan.ring.geometry(), chan.policy);
        let asked = describe(kind, geo, policy);
        if found != asked {
            return Err(BlobError::ChannelMismatch {
                channel: name.to_owned(),
                existing: found,
                requested: asked,
            });
        }
    }
    Ok(chan)
}

/// The geometry and the policy words that matter to a channel of `kind`,
/// as an error message names them.
fn describe(kind: u32, geo: Geometry, policy: Policy) -> String {
    let mut s = format!(
        "{} slots of {} bytes, max_held {}",
        geo.slots, geo.slot_size, policy.max_held
    );
    if kind == KIND_QUEUE {
        s += &format!(", delivery {}", file::delivery_name(policy.delivery));
    } else {
        s += &format!(", overflow {}", file::overflow_name(policy.overflow));
        if policy.overflow == layout::OVERFLOW_BLOCK {
            match policy.stall_timeout_ms {
                0 => s += ", no stall timeout",
                ms => s += &format!(", stall timeout {ms} ms"),
            }
        }
    }
    s
}

pub(crate) fn publisher(
    store: StoreLink,
    name: &str,
    config: ChannelConfig,
    explicit: bool,
) -> Result<Publisher> {
    let chan = open(&store, name, KIND_BROADCAST, config, explicit)?;
    Ok(Publisher::new(producer::Producer::open(
        chan,
        store,
        config.spin,
    )?))
}

pub(crate) fn sender(
    store: StoreLink,
    name: &str,
    config: ChannelConfig,
    explicit: bool,
) -> Result<Sender> {
    let chan = open(&store, name, KIND_QUEUE, config, explicit)?;
    Ok(Sender::new(producer::Producer::open(
        chan,
        store,
        config.spin,
    )?))
}

pub(crate) fn subscriber(
    store: StoreLink,
    name: &str,
    config: ChannelConfig,
    explicit: bool,
) -> Result<Subscriber> {
    let chan = open(&store, name, KIND_BROADCAST, config, explicit)?;
    Ok(Subscriber::new(consumer::Consumer::open(
        chan,
        store,
        config.spin,
    )?))
}

pub(crate) fn receiver(
    store: StoreLink,
    name: &str,
    config: ChannelConfig,
    explicit: bool,
) -> Result<Receiver> {
    let chan = open(&store, name, KIND_QUEUE, config, explicit)?;
    Ok(Receiver::new(consumer::Consumer::open(
        chan,
        store,
        config.spin,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_messages_sizes_slots_to_the_message_and_the_ring_to_the_flight() {
        let c = ChannelConfig::for_messages(64 << 10, 32);
        assert_eq!((c.slots, c.slot_size), (32, (64 << 10) + 64));
        assert!(c.inline_capacity() >= 64 << 10);
        let c = ChannelConfig::for_messages(100, 3);
        assert_eq!((c.slots, c.slot_size), (4, 192));
        // Capped: the largest slot, and a ring of at most 1 GiB.
        let c = ChannelConfig::for_messages(usize::MAX, u32::MAX);
        assert_eq!(c.slot_size, layout::MAX_SLOT_SIZE);
        assert!(
            Geometry::new(c.slots, c.slot_size, c.max_held).is_ok(),
            "{c:?}"
        );
        for (m, n) in [(0, 0), (1, 1), (4096, 1 << 20), (1 << 20, 1024)] {
            let c = ChannelConfig::for_messages(m, n);
            assert!(
                Geometry::new(c.slots, c.slot_size, c.max_held).is_ok(),
                "{m} {n}: {c:?}"
            );
            assert!(c.inline_capacity() >= m.min(16 << 20), "{m} {n}: {c:?}");
        }
        let d = ChannelConfig::default();
        assert!(Geometry::new(d.slots, d.slot_size, d.max_held).is_ok());
        assert_eq!(d.inline_capacity(), 1 << 20);
    }
}
