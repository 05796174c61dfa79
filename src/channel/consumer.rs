//! The consumer side: [`Subscriber`] (broadcast) and [`Receiver`] (work
//! queue) share one implementation; a [`Message`] holds its slot (or its
//! store entry) until dropped.

use super::error::{RecvError, RecvTimeoutError, TryRecvError};
use super::file::{ChanFile, Role};
use super::layout::*;
use super::producer::wake_producers;
use super::ring::{Read, Take};
use super::wait::{self, Sleeper, Throttle};
use crate::backend::shared::StoreLink;
use crate::handle::OverflowHandle;
use crate::sync::Ordering;
use crate::view::BlobView;
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// State shared by a consumer endpoint and the messages it handed out.
#[derive(Debug)]
pub(crate) struct Consumer {
    chan: ChanFile,
    store: StoreLink,
    index: usize,
    sleeper: Sleeper,
    /// Paces its looks for dead producers.
    liveness: Throttle,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Broadcast: next sequence to read.
    cursor: u64,
    /// Sequences handed out, in order, with whether each was dropped.
    held: VecDeque<(u64, bool)>,
    /// Messages passed over because their store entry had expired.
    expired: u64,
}

/// What one attempt found.
enum Attempt {
    Got(Message),
    Empty,
    Expired,
}

impl Consumer {
    pub(crate) fn open(chan: ChanFile, store: StoreLink) -> crate::Result<Arc<Self>> {
        let ack = |h: [u8; 24]| store.acknowledge_bytes(h);
        let index = chan.register(Role::Consumer, &ack)?;
        let cursor = chan.ring.join(index);
        Ok(Arc::new(Self {
            chan,
            store,
            index,
            sleeper: Sleeper::new(index),
            liveness: Throttle::new(),
            state: Mutex::new(State {
                cursor,
                held: VecDeque::new(),
                expired: 0,
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes this consumer's `low`: the oldest message it holds, else
    /// (broadcast) its cursor, else nothing.
    fn publish_low(&self, st: &State) {
        let low = match st.held.front() {
            Some(&(seq, _)) => seq,
            None if self.chan.ring.is_queue() => LOW_NONE,
            None => st.cursor,
        };
        // SeqCst: read by `Ring::bound` in reclaimers.
        self.chan
            .ring
            .consumer(self.index)
            .low
            .store(low, Ordering::SeqCst);
    }

    fn release_ring(&self) {
        if self.chan.ring.release(|h| self.store.acknowledge_bytes(h)) > 0 {
            wake_producers(&self.chan);
        }
    }

    /// One non-blocking attempt to take the next message.
    fn attempt(self: &Arc<Self>) -> Attempt {
        let ring = &self.chan.ring;
        let mut st = self.lock();
        // Bounded: skipped and passed slots are few unless the ring is scribbled.
        for _ in 0..(ring.geometry().slots as u64 * 4 + 1024) {
            let (seq, read) = if ring.is_queue() {
                match ring.take(self.index, !st.held.is_empty()) {
                    Take::Taken { seq, read } => (seq, read),
                    Take::Wait(_) => return Attempt::Empty,
                }
            } else {
                let seq = st.cursor;
                match ring.read(seq) {
                    Read::Empty | Read::Pending { .. } => return Attempt::Empty,
                    Read::Gone => {
                        // Passed while we were joining: resume at the frontier.
                        let f = frontier_seq(ring.header().frontier.load(Ordering::SeqCst));
                        st.cursor = f.max(seq.wrapping_add(1));
                        self.publish_low(&st);
                        continue;
                    }
                    read => {
                        st.cursor = seq.wrapping_add(1);
                        (seq, read)
                    }
                }
            };
            let Read::Ready { len, flags } = read else {
                // Skipped (its producer died): nothing to hand out.
                self.publish_low(&st);
                continue;
            };
            ring.consumer(self.index)
                .count
                .fetch_add(1, Ordering::Relaxed);
            let mut owned = None;
            let body = if flags & FLAG_OVERFLOW != 0 {
                let handle = OverflowHandle::from_array(&ring.read_handle(seq));
                // A queue message has one receiver: its entry is
                // acknowledged when the message is dropped. (A broadcast
                // entry, when every subscriber has released it.)
                if ring.is_queue() {
                    owned = Some(handle);
                }
                match self.store.resolve_ref(&handle) {
                    Some(view) if view.len() == len as usize => Body::Store(view),
                    _ => {
                        st.expired += 1;
                        self.publish_low(&st);
                        drop(st);
                        self.release_ring();
                        return Attempt::Expired;
                    }
                }
            } else {
                let len = (len as usize).min(ring.geometry().inline_capacity());
                Body::Inline {
                    ptr: NonNull::new(ring.payload(seq)).unwrap_or(NonNull::dangling()),
                    len,
                }
            };
            st.held.push_back((seq, false));
            self.publish_low(&st);
            return Attempt::Got(Message {
                body,
                release: Release {
                    consumer: Arc::clone(self),
                    seq,
                    owned,
                },
            });
        }
        Attempt::Empty
    }

    /// A message handed out is dropped.
    fn done(&self, seq: u64) {
        {
            let mut st = self.lock();
            if let Ok(i) = st.held.binary_search_by_key(&seq, |&(s, _)| s) {
                st.held[i].1 = true;
            }
            while st.held.front().is_some_and(|&(_, done)| done) {
                st.held.pop_front();
            }
            self.publish_low(&st);
        }
        self.release_ring();
    }

    /// Whether the channel counts as disconnected: it has had a producer,
    /// and none is alive now. Producers found dead are evicted first (at
    /// most once per liveness tick).
    fn disconnected(&self) -> bool {
        let h = self.chan.ring.header();
        if h.producers_ever.load(Ordering::SeqCst) == 0 {
            return false;
        }
        if h.producer_mask.load(Ordering::SeqCst) & MASK_BITS != 0 {
            if !self.liveness.due() {
                return false;
            }
            let ack = |h: [u8; 24]| self.store.acknowledge_bytes(h);
            if self.chan.evict_dead(Role::Producer, None, &ack) > 0 {
                // Slots a dead producer left pending are skipped now.
                self.release_ring();
            }
        }
        h.producer_mask.load(Ordering::SeqCst) & MASK_BITS == 0
    }

    fn ready(&self) -> bool {
        let ring = &self.chan.ring;
        let seq = if ring.is_queue() {
            ring.header().tail.load(Ordering::SeqCst)
        } else {
            self.lock().cursor
        };
        !matches!(ring.read(seq), Read::Empty | Read::Pending { .. })
    }

    pub(crate) fn try_recv(self: &Arc<Self>) -> Result<Message, TryRecvError> {
        match self.attempt() {
            Attempt::Got(m) => Ok(m),
            Attempt::Expired => Err(TryRecvError::Expired),
            Attempt::Empty => {
                if self.disconnected() {
                    // A message published just before the last producer left.
                    match self.attempt() {
                        Attempt::Got(m) => Ok(m),
                        Attempt::Expired => Err(TryRecvError::Expired),
                        Attempt::Empty => Err(TryRecvError::Disconnected),
                    }
                } else {
                    Err(TryRecvError::Empty)
                }
            }
        }
    }

    pub(crate) fn recv_deadline(
        self: &Arc<Self>,
        deadline: Option<Instant>,
    ) -> Result<Message, RecvTimeoutError> {
        let h = self.chan.ring.header();
        let mut spins = 0u32;
        loop {
            match self.try_recv() {
                Ok(m) => return Ok(m),
                Err(TryRecvError::Expired) => return Err(RecvTimeoutError::Expired),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            let mut tick = wait::LIVENESS_TICK;
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    return Err(RecvTimeoutError::Timeout);
                }
                tick = tick.min(d - now);
            }
            if spins < wait::SPINS {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            self.sleeper
                .park(&h.data_seq, &h.data_waiters, tick, || self.ready());
        }
    }

    pub(crate) fn expired(&self) -> u64 {
        self.lock().expired
    }

    pub(crate) fn name(&self) -> &str {
        &self.chan.name
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.chan.unregister(Role::Consumer, self.index);
        // What only we held can go now.
        self.release_ring();
    }
}

enum Body {
    /// In the ring slot, which the frontier does not pass while held.
    Inline { ptr: NonNull<u8>, len: usize },
    /// In the store, pinned by the view.
    Store(BlobView),
}

/// Gives the message's slot back when the message is dropped.
struct Release {
    consumer: Arc<Consumer>,
    seq: u64,
    /// The store entry this message alone owns (work queue), acknowledged
    /// at drop; the frontier's acknowledgement of it later counts nothing.
    owned: Option<OverflowHandle>,
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(h) = &self.owned {
            self.consumer.store.acknowledge(h);
        }
        self.consumer.done(self.seq);
    }
}

/// A received message: `Deref<Target = [u8]>`, zero-copy.
///
/// Small messages are read in place in the ring slot, large ones through a
/// pinned view of the store; either way its bytes never change while it
/// lives, even after its producer exits or dies. Dropping it releases the
/// slot and acknowledges the store entry — at once for a work-queue
/// message (it has one receiver), once every subscriber has released it
/// for a broadcast one. While held it also holds its ring slot, so a
/// consumer that keeps a whole ring's worth of messages stops the producers.
pub struct Message {
    // Field order: the view unpins before the slot is released.
    body: Body,
    release: Release,
}

// SAFETY: the inline bytes are immutable while the message holds its slot
// (the frontier cannot pass it, so no producer rewrites it) and the
// consumer (in `release`) keeps the ring mapped; BlobView is Send + Sync.
unsafe impl Send for Message {}
// SAFETY: see Send; a message only hands out `&[u8]`.
unsafe impl Sync for Message {}

impl Message {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.body {
            // SAFETY: `len` bytes of the slot's payload, held (see Send).
            Body::Inline { ptr, len } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *len) },
            Body::Store(view) => view,
        }
    }

    /// Whether the message travelled through the store (larger than a
    /// slot's inline capacity) rather than inline in the ring.
    pub fn is_overflow(&self) -> bool {
        matches!(self.body, Body::Store(_))
    }

    /// The sequence number of the message in its channel.
    pub fn sequence(&self) -> u64 {
        self.release.seq
    }
}

impl std::ops::Deref for Message {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Message {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("seq", &self.release.seq)
            .field("len", &self.len())
            .field("overflow", &self.is_overflow())
            .finish()
    }
}

macro_rules! consumer_endpoint {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The consuming end of a ", $what, " (see the [module docs](crate::channel)).")]
        ///
        /// `Send + Sync`; dropping it (or the process dying) leaves the
        /// channel, and whatever it held is released.
        #[derive(Debug)]
        pub struct $name {
            inner: Arc<Consumer>,
        }

        impl $name {
            pub(crate) fn new(inner: Arc<Consumer>) -> Self {
                Self { inner }
            }

            /// Waits for the next message. [`RecvError::Disconnected`] once
            /// no producer is alive and everything sent was received (a
            /// channel that never had a producer waits for one).
            pub fn recv(&self) -> Result<Message, RecvError> {
                self.inner.recv_deadline(None).map_err(|e| match e {
                    RecvTimeoutError::Expired => RecvError::Expired,
                    _ => RecvError::Disconnected,
                })
            }

            /// The next message if one is ready now.
            pub fn try_recv(&self) -> Result<Message, TryRecvError> {
                self.inner.try_recv()
            }

            /// Waits at most `timeout` for the next message.
            pub fn recv_timeout(&self, timeout: Duration) -> Result<Message, RecvTimeoutError> {
                self.inner
                    .recv_deadline(Instant::now().checked_add(timeout))
            }

            /// A blocking iterator over messages; it ends at disconnection
            /// (expired messages are passed over and counted in
            /// [`expired`](Self::expired)).
            pub fn iter(&self) -> Iter<'_> {
                Iter { inner: &self.inner }
            }

            /// Messages passed over because their store entry had expired.
            pub fn expired(&self) -> u64 {
                self.inner.expired()
            }

            /// The channel's name.
            pub fn name(&self) -> &str {
                self.inner.name()
            }
        }

        impl<'a> IntoIterator for &'a $name {
            type Item = Message;
            type IntoIter = Iter<'a>;
            fn into_iter(self) -> Iter<'a> {
                self.iter()
            }
        }
    };
}

consumer_endpoint!(Subscriber, "broadcast channel");
consumer_endpoint!(Receiver, "work queue");

/// Blocking iterator over the messages of a [`Subscriber`] or [`Receiver`].
#[derive(Debug)]
pub struct Iter<'a> {
    inner: &'a Arc<Consumer>,
}

impl Iterator for Iter<'_> {
    type Item = Message;
    fn next(&mut self) -> Option<Message> {
        loop {
            match self.inner.recv_deadline(None) {
                Ok(m) => return Some(m),
                Err(RecvTimeoutError::Expired) => continue,
                Err(_) => return None,
            }
        }
    }
}
