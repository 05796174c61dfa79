//! The consumer side: [`Subscriber`] (broadcast) and [`Receiver`] (work
//! queue) share one implementation; a [`Message`] holds its slot (or its
//! store entry) until dropped.

use super::error::{RecvError, RecvTimeoutError, TryRecvError};
use super::file::{ChanFile, Role};
use super::layout::*;
use super::ring::{Next, Read, Take};
use super::wait::{self, Sleeper, Source, Throttle, WordKey};
use crate::backend::shared::StoreLink;
use crate::handle::OverflowHandle;
use crate::sync::{AtomicU32, Ordering};
use crate::view::BlobView;
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
    /// How long a wait spins before it sleeps, adapted to the traffic.
    spin: wait::SpinPolicy,
    /// Paces its looks for dead producers.
    liveness: Throttle,
    /// Held-message budget (the file's).
    max_held: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Broadcast: next sequence to read.
    cursor: u64,
    /// Messages handed out and not dropped.
    held: u32,
    /// Messages passed over because their store entry had expired.
    expired: u64,
    /// Messages missed by lagging.
    lagged: u64,
}

/// What one attempt found.
enum Attempt {
    Got(Message),
    Empty,
    Expired,
    Lagged(u64),
    TooManyHeld,
}

impl Consumer {
    pub(crate) fn open(
        chan: ChanFile,
        store: StoreLink,
        spin: std::time::Duration,
    ) -> crate::Result<Arc<Self>> {
        let ack = |h: [u8; 24]| store.acknowledge_bytes(h);
        let index = chan.register(Role::Consumer, &ack)?;
        let cursor = chan.ring.join(index);
        Ok(Arc::new(Self {
            max_held: chan.policy.max_held,
            chan,
            store,
            index,
            sleeper: Sleeper::new(index),
            spin: wait::SpinPolicy::new(spin),
            liveness: Throttle::new(),
            state: Mutex::new(State {
                cursor,
                held: 0,
                expired: 0,
                lagged: 0,
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ack(&self, h: [u8; 24]) {
        self.store.acknowledge_bytes(h);
    }

    /// Publishes a subscriber's cursor as its `low`, then lets producers
    /// waiting for space know.
    fn moved(&self, st: &State) {
        let ring = &self.chan.ring;
        if !ring.is_queue() {
            // SeqCst: read by `Ring::bound` in reclaimers; with the SeqCst
            // load below, either a producer announcing it waits sees our
            // cursor, or we see its bit.
            ring.consumer(self.index)
                .low
                .store(st.cursor, Ordering::SeqCst);
        }
        if ring.header().space_waiters.load(Ordering::SeqCst) != 0 {
            self.chan.release(&|h| self.ack(h));
            self.chan.wake_producers();
        }
    }

    fn set_held(&self, st: &State) {
        self.chan
            .ring
            .consumer(self.index)
            .held
            .store(st.held, Ordering::Relaxed);
    }

    /// One non-blocking attempt to take the next message.
    fn attempt(self: &Arc<Self>) -> Attempt {
        let ring = &self.chan.ring;
        let rec = ring.consumer(self.index);
        let mut st = self.lock();
        rec.active_ms
            .store(crate::clock::now_ms(), Ordering::Relaxed);
        if st.held >= self.max_held {
            return Attempt::TooManyHeld;
        }
        let held = if ring.is_queue() {
            match ring.take(self.index) {
                Take::Taken(h) => h,
                Take::Wait(_) => return Attempt::Empty,
            }
        } else {
            let mut got = None;
            // Bounded: skipped entries are few unless the ring is scribbled.
            for _ in 0..(ring.geometry().slots as u64 * 4 + 1024) {
                match ring.next(self.index, st.cursor, &mut |h| self.ack(h)) {
                    Next::Wait => return Attempt::Empty,
                    Next::Pass => {
                        st.cursor = st.cursor.wrapping_add(1);
                        self.moved(&st);
                    }
                    Next::Lagged { at } => {
                        let at = at.max(st.cursor.wrapping_add(1));
                        let n = at.wrapping_sub(st.cursor);
                        st.cursor = at;
                        st.lagged += n;
                        rec.lagged.fetch_add(n, Ordering::Relaxed);
                        let h = ring.header();
                        h.lagged.fetch_add(n, Ordering::Relaxed);
                        if !ring.drops_oldest() {
                            h.let_go.fetch_add(1, Ordering::Relaxed);
                        }
                        self.moved(&st);
                        return Attempt::Lagged(n);
                    }
                    Next::Got(h) => {
                        st.cursor = h.seq.wrapping_add(1);
                        got = Some(h);
                        break;
                    }
                }
            }
            match got {
                Some(h) => h,
                None => return Attempt::Empty,
            }
        };
        rec.count.fetch_add(1, Ordering::Relaxed);
        let body = if held.flags & FLAG_OVERFLOW != 0 {
            let handle = OverflowHandle::from_array(&ring.read_handle(held.slot));
            match self.store.resolve_ref(&handle) {
                Some(view) if view.len() == held.len as usize => Body::Store(view),
                _ => {
                    st.expired += 1;
                    self.chan
                        .ring
                        .header()
                        .expired
                        .fetch_add(1, Ordering::Relaxed);
                    ring.unhold(held.slot, self.index, &mut |h| self.ack(h));
                    self.moved(&st);
                    return Attempt::Expired;
                }
            }
        } else {
            let len = (held.len as usize).min(ring.geometry().inline_capacity());
            Body::Inline {
                ptr: NonNull::new(ring.payload(held.slot)).unwrap_or(NonNull::dangling()),
                len,
            }
        };
        st.held += 1;
        self.set_held(&st);
        self.moved(&st);
        Attempt::Got(Message {
            body,
            release: Release {
                consumer: Arc::clone(self),
                seq: held.seq,
                slot: held.slot,
                delivered: held.delivered,
                producer: held.producer,
            },
        })
    }

    /// A message handed out is dropped: its slot is let go (and freed, if
    /// nobody else holds it).
    fn done(&self, slot: u32) {
        if self.chan.inherited() {
            return; // The parent still holds it.
        }
        let ring = &self.chan.ring;
        ring.unhold(slot, self.index, &mut |h| self.ack(h));
        {
            let mut st = self.lock();
            st.held = st.held.saturating_sub(1);
            self.set_held(&st);
        }
        // SeqCst, with the SeqCst CAS that freed the slot: a producer that
        // announced it waits for a slot is seen here, or sees the slot.
        if ring.header().space_waiters.load(Ordering::SeqCst) != 0 {
            self.chan.wake_producers();
        }
    }

    /// Evicts dead participants: producers (whose unpublished claims are
    /// skipped) and the other consumers (which may gate a `Block` ring, or
    /// hold work-queue jobs to give back). Returns how many.
    fn evict_dead(&self) -> usize {
        let ack = |h: [u8; 24]| self.ack(h);
        let n = self.chan.evict_dead(Role::Producer, None, &ack)
            + self.chan.evict_dead(Role::Consumer, Some(self.index), &ack);
        if n > 0 {
            self.chan.release(&ack);
        }
        n
    }

    /// Whether the channel counts as disconnected: it has had a producer,
    /// and none is alive now.
    fn no_producer(&self) -> bool {
        let h = self.chan.ring.header();
        h.producers_ever.load(Ordering::SeqCst) > 0
            && h.producer_mask.load(Ordering::SeqCst) & MASK_BITS == 0
    }

    fn ready(&self) -> bool {
        let ring = &self.chan.ring;
        let h = ring.header();
        let seq = if ring.is_queue() {
            if h.requeued.load(Ordering::SeqCst) > 0 {
                return true;
            }
            h.tail.load(Ordering::SeqCst)
        } else {
            self.lock().cursor
        };
        // Entries whose producer died unpublished are passed over by a
        // receive: what decides is the first entry after them.
        let mut seq = seq;
        for _ in 0..ring.geometry().slots {
            match ring.read(seq) {
                Read::Skipped => seq = seq.wrapping_add(1),
                Read::Empty | Read::Pending { .. } => return false,
                Read::Ready { .. } | Read::Gone => return true,
            }
        }
        false
    }

    /// Whether `try_recv` would return something other than `Empty` now
    /// (a message, or an error to report): loads only, no system call.
    #[cfg_attr(loom, allow(dead_code))]
    fn would_not_wait(&self) -> bool {
        self.chan.inherited()
            || self.lock().held >= self.max_held
            || self.ready()
            || self.no_producer()
            || self.store.is_closed()
    }

    pub(crate) fn try_recv(self: &Arc<Self>) -> Result<Message, TryRecvError> {
        if self.chan.inherited() {
            // The parent's consumer: nothing to receive here.
            return Err(TryRecvError::Disconnected);
        }
        let once = |a: Attempt| match a {
            Attempt::Got(m) => Ok(Some(m)),
            Attempt::Expired => Err(TryRecvError::Expired),
            Attempt::Lagged(n) => Err(TryRecvError::Lagged(n)),
            Attempt::TooManyHeld => Err(TryRecvError::TooManyHeld),
            Attempt::Empty => Ok(None),
        };
        if let Some(m) = once(self.attempt())? {
            return Ok(m);
        }
        // Dead participants are looked for at most once per tick (a system
        // call per record): a dead receiver's jobs come back this way.
        let looked = self.liveness.due();
        if looked && self.evict_dead() > 0 {
            if let Some(m) = once(self.attempt())? {
                return Ok(m);
            }
        }
        // A closed namespace (removed by its creator or `sfb rm`) gets no
        // new message: drained, it is disconnected.
        if !self.no_producer() && !self.store.is_closed() {
            return Err(TryRecvError::Empty);
        }
        // Before saying disconnected: a message published just before the
        // last producer left, or jobs a dead receiver held.
        if !looked && self.chan.redelivers() {
            self.evict_dead();
        }
        once(self.attempt())?.ok_or(TryRecvError::Disconnected)
    }

    pub(crate) fn recv_deadline(
        self: &Arc<Self>,
        deadline: Option<Instant>,
    ) -> Result<Message, RecvTimeoutError> {
        let h = self.chan.ring.header();
        let mut spin = self.spin.start();
        loop {
            match self.try_recv() {
                Ok(m) => {
                    self.spin.settle(&spin);
                    return Ok(m);
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Expired) => return Err(RecvTimeoutError::Expired),
                Err(TryRecvError::Lagged(n)) => return Err(RecvTimeoutError::Lagged(n)),
                Err(TryRecvError::TooManyHeld) => return Err(RecvTimeoutError::TooManyHeld),
                Err(_) => return Err(RecvTimeoutError::Disconnected),
            }
            let mut tick = wait::LIVENESS_TICK;
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    return Err(RecvTimeoutError::Timeout);
                }
                tick = tick.min(d - now);
            }
            if spin.again() {
                continue;
            }
            self.sleeper
                .park(&h.data_seq, &h.data_waiters, tick, || self.ready());
        }
    }

    pub(crate) fn expired(&self) -> u64 {
        self.lock().expired
    }

    pub(crate) fn lagged(&self) -> u64 {
        self.lock().lagged
    }

    pub(crate) fn held(&self) -> u32 {
        self.lock().held
    }

    /// Messages published that this consumer has not received: a
    /// subscriber's distance to the head (those it will miss by lagging
    /// included), a receiver's the queue's (what no receiver has taken).
    pub(crate) fn lag(&self) -> u64 {
        let h = self.chan.ring.header();
        let head = h.head.load(Ordering::SeqCst);
        let from = if self.chan.ring.is_queue() {
            h.tail.load(Ordering::SeqCst)
        } else {
            self.lock().cursor
        };
        head.saturating_sub(from)
    }

    pub(crate) fn name(&self) -> &str {
        &self.chan.name
    }
}

/// A consumer inherited through fork announces nothing: the mask bit is
/// the parent's (and its wait ends at once: `ready` holds).
impl Source for Consumer {
    fn announce(&self) -> u32 {
        let h = self.chan.ring.header();
        if self.chan.inherited() {
            return h.data_seq.load(Ordering::SeqCst);
        }
        self.sleeper.announce(&h.data_seq, &h.data_waiters)
    }

    fn withdraw(&self) {
        if !self.chan.inherited() {
            self.sleeper.withdraw(&self.chan.ring.header().data_waiters);
        }
    }

    fn word(&self) -> &AtomicU32 {
        &self.chan.ring.header().data_seq
    }

    fn key(&self) -> WordKey {
        (self.chan.identity.0, self.chan.identity.1, false)
    }

    fn ready(&self) -> bool {
        self.would_not_wait()
    }

    /// A waiting consumer needs dead producers found (their unpublished
    /// entries skipped, the last one's death a disconnection) and, on a
    /// queue that redelivers, dead receivers (their jobs come back). Other
    /// dead consumers only hold producers back, which producers see to:
    /// many idle async subscribers of one channel do not each look at all
    /// the others every tick.
    fn tick(&self) {
        if self.liveness.due() {
            let ack = |h: [u8; 24]| self.ack(h);
            let mut n = self.chan.evict_dead(Role::Producer, None, &ack);
            if self.chan.redelivers() {
                n += self.chan.evict_dead(Role::Consumer, Some(self.index), &ack);
            }
            if n > 0 {
                self.chan.release(&ack);
            }
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.chan.inherited() {
            return; // The record is the parent's.
        }
        self.chan.unregister(Role::Consumer, self.index);
        // What only we gated can go now.
        self.chan.release(&|h| self.store.acknowledge_bytes(h));
    }
}

enum Body {
    /// In the pool slot, which is not freed while held.
    Inline { ptr: NonNull<u8>, len: usize },
    /// In the store, pinned by the view.
    Store(BlobView),
}

/// Gives the message's slot back when the message is dropped (whoever
/// lets go of a slot last acknowledges the store entry it refers to).
struct Release {
    consumer: Arc<Consumer>,
    seq: u64,
    slot: u32,
    /// Times the message was handed out before.
    delivered: u32,
    /// Producer record that published it (`NO_PRODUCER`: not known).
    producer: u32,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.consumer.done(self.slot);
    }
}

/// A received message: `Deref<Target = [u8]>`, zero-copy.
///
/// Small messages are read in place in their pool slot, large ones through
/// a pinned view of the store; either way its bytes never change while it
/// lives, even after its producer exits or dies. A held message keeps its
/// own slot, never the ring: producers and other consumers go on. Each
/// consumer may hold at most
/// [`max_held`](crate::ChannelConfig::max_held) at once. Dropping it lets
/// go of the slot; whoever lets go of it last (the last subscriber, or the
/// ring) acknowledges the store entry.
pub struct Message {
    // Field order: the view unpins before the slot is released.
    body: Body,
    release: Release,
}

// SAFETY: the inline bytes are immutable while the message holds its slot
// (its bit in the owners word keeps the slot from being freed, so no
// producer rewrites it) and the consumer (in `release`) keeps the file
// mapped; BlobView is Send + Sync.
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

    /// How many times this message was handed out before (work queue
    /// under [`Delivery::AtLeastOnce`](crate::Delivery::AtLeastOnce): its
    /// earlier receivers died holding it). 0 for a first delivery.
    pub fn redelivered(&self) -> u32 {
        self.release.delivered
    }

    /// The participant record of the producer that published it, as
    /// [`Publisher::record`](crate::Publisher::record) and `sfb stat` number
    /// them (0 to 31); `None` for a job redelivered after its receiver
    /// died (its publisher is no longer recorded). A process that both
    /// produces and consumes on one channel (a bridge to another host)
    /// tells its own messages from others' with it.
    pub fn producer_record(&self) -> Option<u32> {
        (self.release.producer != super::ring::NO_PRODUCER).then_some(self.release.producer)
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
            #[cfg(all(feature = "async", not(loom)))]
            async_part: super::reactor::AsyncPart,
        }

        impl $name {
            pub(crate) fn new(inner: Arc<Consumer>) -> Self {
                Self {
                    inner,
                    #[cfg(all(feature = "async", not(loom)))]
                    async_part: Default::default(),
                }
            }

            #[cfg_attr(loom, allow(dead_code))]
            pub(crate) fn inner(&self) -> &Arc<Consumer> {
                &self.inner
            }

            #[cfg(all(feature = "async", not(loom)))]
            pub(crate) fn async_part(&self) -> &super::reactor::AsyncPart {
                &self.async_part
            }

            /// Waits for the next message. [`RecvError::Disconnected`] once
            /// no producer is alive and everything sent was received (a
            /// channel that never had a producer waits for one).
            pub fn recv(&self) -> Result<Message, RecvError> {
                self.inner.recv_deadline(None).map_err(|e| match e {
                    RecvTimeoutError::Expired => RecvError::Expired,
                    RecvTimeoutError::Lagged(n) => RecvError::Lagged(n),
                    RecvTimeoutError::TooManyHeld => RecvError::TooManyHeld,
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

            /// A blocking iterator over messages; it ends at disconnection,
            /// or when this consumer holds its whole
            /// [`max_held`](crate::ChannelConfig::max_held) budget. Expired
            /// messages are passed over and counted in
            /// [`expired`](Self::expired), missed ones in
            /// [`lagged`](Self::lagged).
            pub fn iter(&self) -> Iter<'_> {
                Iter { inner: &self.inner }
            }

            /// Messages passed over because their store entry had expired.
            pub fn expired(&self) -> u64 {
                self.inner.expired()
            }

            /// Messages this consumer missed by falling a ring behind
            /// (the sum of the [`RecvError::Lagged`] it returned).
            pub fn lagged(&self) -> u64 {
                self.inner.lagged()
            }

            /// Messages this consumer holds now (received, not dropped).
            pub fn held(&self) -> u32 {
                self.inner.held()
            }

            /// Messages published that this consumer has not received yet.
            /// A subscriber counts from its own place (those it will miss
            /// by lagging included); a receiver of a work queue counts what
            /// no receiver has taken. A message a producer is still writing
            /// counts too.
            pub fn lag(&self) -> u64 {
                self.inner.lag()
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
                Err(RecvTimeoutError::Expired | RecvTimeoutError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }
}
