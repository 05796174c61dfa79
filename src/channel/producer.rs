//! The producer side: [`Publisher`] (broadcast) and [`Sender`] (work
//! queue) share one implementation, and [`Loan`] writes a message in place.

use super::error::{SendError, TrySendError};
use super::file::{ChanFile, Role};
use super::layout::*;
use super::wait::{self, Sleeper, Throttle};
use crate::backend::shared::{SharedReservation, StoreLink};
use crate::error::BlobError;
use crate::handle::OverflowHandle;
use crate::sync::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// State shared by a producer endpoint and its loans.
#[derive(Debug)]
pub(crate) struct Producer {
    chan: ChanFile,
    store: StoreLink,
    index: usize,
    sleeper: Sleeper,
    /// Paces its looks for dead participants.
    liveness: Throttle,
}

impl Producer {
    pub(crate) fn open(chan: ChanFile, store: StoreLink) -> crate::Result<Self> {
        let ack = |h: [u8; 24]| store.acknowledge_bytes(h);
        let index = chan.register(Role::Producer, &ack)?;
        // A new producer reconnects consumers that saw the channel disconnected.
        wake_consumers(&chan, true);
        Ok(Self {
            chan,
            store,
            index,
            sleeper: Sleeper::new(index),
            liveness: Throttle::new(),
        })
    }

    fn me(&self) -> u32 {
        self.index as u32
    }

    /// Frees what consumers released; wakes producers waiting for space.
    fn help_release(&self) -> u64 {
        let freed = self.chan.ring.release(|h| self.store.acknowledge_bytes(h));
        if freed > 0 {
            wake_producers(&self.chan);
        }
        freed
    }

    /// Evicts dead consumers (which may hold the ring full) and dead
    /// producers (whose unpublished claim may stop the frontier).
    fn evict_dead(&self) -> usize {
        let ack = |h: [u8; 24]| self.store.acknowledge_bytes(h);
        let n = self.chan.evict_dead(Role::Consumer, None, &ack)
            + self.chan.evict_dead(Role::Producer, Some(self.index), &ack);
        if n > 0 {
            self.help_release();
        }
        n
    }

    /// Claims a slot, waiting for space unless `block` is false.
    fn claim(&self, block: bool) -> Result<u64, TrySendError> {
        let ring = &self.chan.ring;
        let h = ring.header();
        let mut spins = 0u32;
        loop {
            if let super::ring::Claim::Claimed(seq) = ring.try_claim(self.me()) {
                return Ok(seq);
            }
            if self.help_release() > 0 {
                continue;
            }
            if self.store.is_closed() {
                return Err(TrySendError::Send(SendError::Store(BlobError::Closed {
                    namespace: self.store.namespace().to_owned(),
                })));
            }
            if !block {
                // A dead participant may be what holds the ring full (looked
                // for at most once per tick: it costs a system call each).
                if self.liveness.due() && self.evict_dead() > 0 {
                    continue;
                }
                return Err(TrySendError::Full);
            }
            if spins < wait::SPINS {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            if self.liveness.due() && self.evict_dead() > 0 {
                continue;
            }
            self.sleeper
                .park(&h.space_seq, &h.space_waiters, wait::LIVENESS_TICK, || {
                    ring.has_space()
                });
        }
    }

    /// The error of a blocking send: a blocking claim waits instead of
    /// reporting `Full`, so that arm is only reachable on a ring that a
    /// scribbler keeps from ever freeing a slot.
    fn blocking_error(&self, e: TrySendError) -> SendError {
        match e {
            TrySendError::Send(e) => e,
            TrySendError::Full => SendError::Store(BlobError::Corrupt {
                file: self.chan.path.clone(),
                detail: "the ring never frees a slot".into(),
            }),
        }
    }

    /// Claims, writes and publishes one message.
    pub(crate) fn send(&self, data: &[u8], block: bool) -> Result<(), TrySendError> {
        let ring = &self.chan.ring;
        if data.len() <= ring.geometry().inline_capacity() {
            let seq = self.claim(block)?;
            // SAFETY: we hold the claim of `seq`; the length fits inline.
            unsafe { ring.write_inline(seq, data) };
            ring.publish(seq, self.me(), data.len() as u32, 0);
            self.sent();
        } else {
            // Into the store first, so the slot is never held during the copy.
            let handle = self.append(data, block)?;
            self.publish_handle(&handle, data.len(), block)?;
        }
        Ok(())
    }

    /// Appends to the store; a blocking send waits while the store is full
    /// (`max_chunks` reached), running reclamation passes, so a full store
    /// is backpressure like a full ring.
    fn append(&self, data: &[u8], block: bool) -> Result<OverflowHandle, TrySendError> {
        let mut pause = Duration::from_micros(20);
        loop {
            match self.store.append(data) {
                Ok(h) => return Ok(h),
                Err(BlobError::StoreFull { .. }) if block => {
                    // A dead consumer may be what keeps entries unacknowledged.
                    if self.liveness.due() {
                        self.evict_dead();
                    }
                    self.help_release();
                    if self.store.maintain() == 0 {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(5));
                    }
                }
                Err(e) => return Err(TrySendError::Send(SendError::Store(e))),
            }
        }
    }

    fn publish_handle(
        &self,
        handle: &OverflowHandle,
        len: usize,
        block: bool,
    ) -> Result<(), TrySendError> {
        let ring = &self.chan.ring;
        let seq = match self.claim(block) {
            Ok(seq) => seq,
            Err(e) => {
                // Not sent: the entry is nobody's, give it back.
                self.store.acknowledge(handle);
                return Err(e);
            }
        };
        ring.write_handle(seq, &handle.to_array());
        ring.publish(seq, self.me(), len as u32, FLAG_OVERFLOW);
        self.sent();
        Ok(())
    }

    fn sent(&self) {
        self.chan
            .ring
            .record(self.index)
            .count
            .fetch_add(1, Ordering::Relaxed);
        // A waiter bit of a consumer killed while asleep would make every
        // send a system call: look for dead ones now and then.
        if wake_consumers(&self.chan, false) && self.liveness.due() {
            self.evict_dead();
        }
    }

    pub(crate) fn loan(self: &Arc<Self>, len: usize) -> Result<Loan, SendError> {
        let reservation = self.store.reserve(len).map_err(SendError::Store)?;
        Ok(Loan {
            producer: Arc::clone(self),
            reservation: Some(reservation),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.chan.name
    }

    pub(crate) fn inline_capacity(&self) -> usize {
        self.chan.ring.geometry().inline_capacity()
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.chan.unregister(Role::Producer, self.index);
        // Consumers learn at once that this producer is gone.
        wake_consumers(&self.chan, true);
    }
}

/// Wakes consumers sleeping on the ring, if any announced itself (or
/// always); returns whether it made the system call.
fn wake_consumers(chan: &ChanFile, always: bool) -> bool {
    let h = chan.ring.header();
    wait::wake(&h.data_seq, &h.data_waiters, always)
}

/// Wakes producers waiting for space, if any announced itself.
pub(crate) fn wake_producers(chan: &ChanFile) {
    let h = chan.ring.header();
    wait::wake(&h.space_seq, &h.space_waiters, false);
}

macro_rules! producer_endpoint {
    ($name:ident, $what:literal, $peer:literal) => {
        #[doc = concat!("The producing end of a ", $what, " (see the [module docs](crate::channel)).")]
        ///
        /// Cheap to share between threads (`Send + Sync`); dropping it (or
        /// the process dying) disconnects it.
        #[derive(Debug)]
        pub struct $name {
            inner: Arc<Producer>,
        }

        impl $name {
            pub(crate) fn new(inner: Producer) -> Self {
                Self {
                    inner: Arc::new(inner),
                }
            }

            /// Sends `data`, blocking while the channel is full. Messages up
            /// to [`inline_capacity`](Self::inline_capacity) bytes travel in
            /// the ring slot; larger ones are appended to the store and
            /// their handle travels instead. An empty message is delivered
            /// as an empty message.
            pub fn send(&self, data: &[u8]) -> Result<(), SendError> {
                self.inner
                    .send(data, true)
                    .map_err(|e| self.inner.blocking_error(e))
            }

            /// Sends `data` if the channel has room now; otherwise
            #[doc = concat!("[`TrySendError::Full`] (every ", $peer, " holds or has not read a full ring).")]
            pub fn try_send(&self, data: &[u8]) -> Result<(), TrySendError> {
                self.inner.send(data, false)
            }

            /// A writable buffer of `len` bytes in shared memory: fill it,
            /// then [`Loan::send`] publishes it without a copy. A loan
            /// dropped unsent is discarded and its space reclaimed (by the
            /// TTL if the process dies holding it).
            pub fn loan(&self, len: usize) -> Result<Loan, SendError> {
                self.inner.loan(len)
            }

            /// The channel's name.
            pub fn name(&self) -> &str {
                self.inner.name()
            }

            /// Test hook, not part of the API: claims a slot and never
            /// publishes it, as a producer killed right after its claim
            /// leaves it. Returns whether a slot was claimed.
            #[doc(hidden)]
            pub fn claim_and_abandon_for_tests(&self) -> bool {
                matches!(
                    self.inner.chan.ring.try_claim(self.inner.me()),
                    super::ring::Claim::Claimed(_)
                )
            }

            /// Largest message carried inline in a ring slot.
            pub fn inline_capacity(&self) -> usize {
                self.inner.inline_capacity()
            }
        }
    };
}

producer_endpoint!(Publisher, "broadcast channel", "subscriber");
producer_endpoint!(Sender, "work queue", "receiver");

/// A message being written in place, in shared memory
/// (`DerefMut<Target = [u8]>`); see [`Publisher::loan`].
pub struct Loan {
    producer: Arc<Producer>,
    reservation: Option<SharedReservation>,
}

// SAFETY: the loan's bytes are reserved for it alone until it is sent or
// dropped, and the chunk it holds keeps them mapped; Producer is Send + Sync.
unsafe impl Send for Loan {}
// SAFETY: shared references only give `&[u8]` of bytes nobody else writes.
unsafe impl Sync for Loan {}

impl Loan {
    /// Publishes the loaned bytes, blocking while the channel is full.
    pub fn send(mut self) -> Result<(), SendError> {
        self.publish(true)
            .map_err(|e| self.producer.blocking_error(e))
    }

    /// Publishes the loaned bytes if the channel has room now; otherwise
    /// [`TrySendError::Full`] (the loan's bytes are then discarded).
    pub fn try_send(mut self) -> Result<(), TrySendError> {
        self.publish(false)
    }

    fn publish(&mut self, block: bool) -> Result<(), TrySendError> {
        let Some(r) = self.reservation.take() else {
            return Ok(());
        };
        let handle = self
            .producer
            .store
            .commit(&r)
            .map_err(|e| TrySendError::Send(SendError::Store(e)))?;
        self.producer
            .publish_handle(&handle, r.loc.size as usize, block)
    }

    fn bytes(&self) -> (*mut u8, usize) {
        match &self.reservation {
            Some(r) => (r.ptr, r.loc.size as usize),
            None => (std::ptr::NonNull::dangling().as_ptr(), 0),
        }
    }
}

impl std::ops::Deref for Loan {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let (ptr, len) = self.bytes();
        // SAFETY: `len` reserved bytes at `ptr`, initialised (file or
        // zeroed memory), written only through this loan, kept mapped by
        // the reservation's chunk.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

impl std::ops::DerefMut for Loan {
    fn deref_mut(&mut self) -> &mut [u8] {
        let (ptr, len) = self.bytes();
        // SAFETY: as in Deref; `&mut self` makes this the only reference,
        // and no other writer or reader touches an uncommitted entry.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }
}

impl AsRef<[u8]> for Loan {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for Loan {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl std::fmt::Debug for Loan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loan").field("len", &self.len()).finish()
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        // Unsent: commit it and acknowledge it at once, so its chunk can
        // be reclaimed as soon as the rest of it is.
        if let Some(r) = self.reservation.take() {
            if let Ok(handle) = self.producer.store.commit(&r) {
                self.producer.store.acknowledge(&handle);
            }
        }
    }
}
