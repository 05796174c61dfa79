//! Errors of channel operations, shaped after `std::sync::mpsc` and
//! crossbeam-channel.

use crate::error::BlobError;

/// Why a blocking send failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The store refused the message (it is full, closed, or the message
    /// is larger than the largest blob).
    #[error("the store refused the message: {0}")]
    Store(#[from] BlobError),
}

/// Why a non-blocking send failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrySendError {
    /// The message cannot be placed now: the ring has no free entry (a
    /// consumer has not received a ring's worth), the pool has no free
    /// slot (consumers hold messages), or the store has no room (its
    /// `max_chunks` are full of messages not yet released). The sender
    /// released what consumers let go of and evicted dead participants
    /// before it said so. The endpoint's `full_reason()` says which, and
    /// who holds it; try again later, or use `send` or `send_timeout`.
    #[error("the channel is full: its ring, its pool or the store has no room now (full_reason() says which and who holds it)")]
    Full,
    /// The send failed for another reason.
    #[error(transparent)]
    Send(#[from] SendError),
}

/// Why a send with a timeout failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendTimeoutError {
    /// The channel stayed full (its ring, its pool or the store) until the
    /// timeout; the message was not sent. The endpoint's `full_reason()`
    /// says what held it.
    #[error("timed out waiting for room in the channel (full_reason() says what held it)")]
    Timeout,
    /// The send failed for another reason; the message was not sent.
    #[error(transparent)]
    Send(#[from] SendError),
}

/// Why a blocking receive failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// No producer of the channel is alive and everything sent was received.
    #[error("the channel is disconnected: no producer is alive and it is drained")]
    Disconnected,
    /// The next message's bytes in the store were reclaimed (its TTL ran
    /// out before it was received). It is passed over; receive again.
    #[error("a message expired in the store before it was received")]
    Expired,
    /// This subscriber fell a whole ring behind and jumped ahead: it missed
    /// this many messages. The next receive returns the next message.
    #[error("lagged: missed {0} messages by falling a ring behind")]
    Lagged(u64),
    /// This consumer already holds as many messages as its budget
    /// ([`ChannelConfig::max_held`](crate::ChannelConfig::max_held)); drop
    /// one to receive more.
    #[error("this consumer holds as many messages as it may (max_held); drop one to receive more")]
    TooManyHeld,
}

/// Why a non-blocking receive returned no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryRecvError {
    /// No message is ready now.
    #[error("no message is ready")]
    Empty,
    /// No producer of the channel is alive and everything sent was received.
    #[error("the channel is disconnected: no producer is alive and it is drained")]
    Disconnected,
    /// See [`RecvError::Expired`].
    #[error("a message expired in the store before it was received")]
    Expired,
    /// This subscriber fell a whole ring behind and jumped ahead: it missed
    /// this many messages. The next receive returns the next message.
    #[error("lagged: missed {0} messages by falling a ring behind")]
    Lagged(u64),
    /// This consumer already holds as many messages as its budget
    /// ([`ChannelConfig::max_held`](crate::ChannelConfig::max_held)); drop
    /// one to receive more.
    #[error("this consumer holds as many messages as it may (max_held); drop one to receive more")]
    TooManyHeld,
}

/// Why a receive with a timeout returned no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// No message arrived in time.
    #[error("timed out waiting for a message")]
    Timeout,
    /// No producer of the channel is alive and everything sent was received.
    #[error("the channel is disconnected: no producer is alive and it is drained")]
    Disconnected,
    /// See [`RecvError::Expired`].
    #[error("a message expired in the store before it was received")]
    Expired,
    /// This subscriber fell a whole ring behind and jumped ahead: it missed
    /// this many messages. The next receive returns the next message.
    #[error("lagged: missed {0} messages by falling a ring behind")]
    Lagged(u64),
    /// This consumer already holds as many messages as its budget
    /// ([`ChannelConfig::max_held`](crate::ChannelConfig::max_held)); drop
    /// one to receive more.
    #[error("this consumer holds as many messages as it may (max_held); drop one to receive more")]
    TooManyHeld,
}
