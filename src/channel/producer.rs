//! The producer side: [`Publisher`] (broadcast) and [`Sender`] (work
//! queue) share one implementation, and [`Loan`] writes a message in place.

use super::error::{SendError, SendTimeoutError, TrySendError};
use super::file::{ChanFile, Role};
use super::layout::*;
use super::ring::{Claim, NoSlot};
use super::wait::{self, Sleeper, Source, Throttle, WordKey};
use crate::backend::shared::{SharedReservation, StoreLink};
use crate::error::BlobError;
use crate::handle::OverflowHandle;
use crate::sync::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a producer call may wait for room.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Not at all (`try_` calls).
    Never,
    /// Until this instant (`_timeout` calls).
    Until(Instant),
    /// As long as it takes (blocking calls).
    Forever,
}

impl Wait {
    /// A wait of `timeout` from now (an overflowing instant waits forever).
    pub(crate) fn timeout(timeout: Duration) -> Self {
        Instant::now()
            .checked_add(timeout)
            .map_or(Self::Forever, Self::Until)
    }

    /// Whether the call must give up now rather than wait.
    fn over(self) -> bool {
        match self {
            Self::Never => true,
            Self::Until(d) => Instant::now() >= d,
            Self::Forever => false,
        }
    }

    /// Shortens `tick` to what is left of the wait.
    fn cap(self, tick: Duration) -> Duration {
        match self {
            Self::Until(d) => tick.min(d.saturating_duration_since(Instant::now())),
            _ => tick,
        }
    }
}

/// Messages from this size on take a warm slot (see `Producer::alloc`).
const WARM_FROM: usize = 16 << 10;
/// Slots of recent messages a large message tries before its own.
const WARM_CANDIDATES: usize = 4;
/// Bytes of a store handle in a slot.
const HANDLE_LEN: usize = 24;

/// What was full the last time a call of this producer gave up or waited.
const FULL_NONE: u32 = 0;
/// No ring entry was free.
const FULL_RING: u32 = 1;
/// No pool slot was free.
const FULL_POOL: u32 = 2;
/// The store had no room.
const FULL_STORE: u32 = 3;

/// State shared by a producer endpoint and its loans.
#[derive(Debug)]
pub(crate) struct Producer {
    pub(super) chan: ChanFile,
    store: StoreLink,
    index: usize,
    sleeper: Sleeper,
    /// How long a wait spins before it sleeps, adapted to the traffic.
    spin: wait::SpinPolicy,
    /// Paces its looks for dead participants.
    liveness: Throttle,
    /// Inline loans outstanding (each holds a pool slot).
    loans: AtomicU32,
    /// `FULL_*`: what was full when a call last found no room.
    last_full: AtomicU32,
    /// Threads of this endpoint waiting for room now.
    waiting: AtomicU32,
}

thread_local! {
    /// Whether this thread's producer call (a thread is in at most one at a
    /// time) counts among its endpoint's waiting threads.
    static WAITING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Ends a producer call's part in its record's waiting mark (for
/// operators: `sfb stat` shows how long a producer has been blocked). The
/// mark is cleared when the last of the endpoint's waiting threads returns,
/// so a thread whose `try_send` fails at once does not hide one blocked.
struct WaitMark<'a>(&'a Producer);

impl Drop for WaitMark<'_> {
    fn drop(&mut self) {
        // The count first: a thread that marked keeps it above 0 until it
        // returns, so a send that never waited (the hot path) skips the
        // thread-local.
        if self.0.waiting.load(Ordering::Relaxed) != 0
            && WAITING.with(|w| w.replace(false))
            && self.0.waiting.fetch_sub(1, Ordering::Relaxed) == 1
        {
            let rec = self.0.chan.ring.record(self.0.index);
            rec.waiting_since_ms.store(0, Ordering::Relaxed);
        }
    }
}

impl Producer {
    pub(crate) fn open(chan: ChanFile, store: StoreLink, spin: Duration) -> crate::Result<Self> {
        let ack = |h: [u8; 24]| store.acknowledge_bytes(h);
        let index = chan.register(Role::Producer, &ack)?;
        // A new producer reconnects consumers that saw the channel disconnected.
        chan.wake_consumers(true);
        Ok(Self {
            chan,
            store,
            index,
            sleeper: Sleeper::new(index),
            spin: wait::SpinPolicy::new(spin),
            liveness: Throttle::new(),
            loans: AtomicU32::new(0),
            last_full: AtomicU32::new(FULL_NONE),
            waiting: AtomicU32::new(0),
        })
    }

    pub(super) fn me(&self) -> u32 {
        self.index as u32
    }

    fn ack(&self, h: [u8; 24]) {
        self.store.acknowledge_bytes(h);
    }

    /// Frees what consumers released; wakes producers waiting for space.
    fn help_release(&self) -> u64 {
        self.chan.release(&|h| self.ack(h))
    }

    /// Evicts dead consumers (which may hold the ring full) and dead
    /// producers (whose unpublished claim may stop the frontier).
    fn evict_dead(&self) -> usize {
        let ack = |h: [u8; 24]| self.ack(h);
        let n = self.chan.evict_dead(Role::Consumer, None, &ack)
            + self.chan.evict_dead(Role::Producer, Some(self.index), &ack);
        if n > 0 {
            self.help_release();
        }
        n
    }

    /// At most once per liveness tick (each look costs a system call per
    /// participant record): evicts dead participants, and sweeps what a
    /// scribbler left owned by nobody. Returns whether that freed anything.
    fn look_for_dead(&self) -> bool {
        self.liveness.due()
            && (self.evict_dead() > 0 || self.chan.ring.sweep_orphans(&mut |x| self.ack(x)) > 0)
    }

    /// The closed store's error, if it is closed: the namespace was removed
    /// (its creator's store and endpoints are gone, or `sfb rm`), and
    /// nothing may be sent into its files any more.
    fn closed(&self) -> Option<TrySendError> {
        self.store.is_closed().then(|| {
            TrySendError::Send(SendError::Store(BlobError::Closed {
                namespace: self.store.namespace().to_owned(),
            }))
        })
    }

    /// Notes that `what` was full and the call gives up: `TrySendError::Full`.
    fn full(&self, what: u32) -> TrySendError {
        self.last_full.store(what, Ordering::Relaxed);
        TrySendError::Full
    }

    /// Marks the record as waiting (for operators), from now if no other
    /// thread of this endpoint waits already.
    fn mark_waiting(&self, what: u32) {
        self.last_full.store(what, Ordering::Relaxed);
        if !WAITING.with(|w| w.replace(true)) && self.waiting.fetch_add(1, Ordering::Relaxed) == 0 {
            let rec = self.chan.ring.record(self.index);
            rec.waiting_since_ms
                .store(crate::clock::now_ms().max(1), Ordering::Relaxed);
        }
    }

    /// One step of waiting for space (entries or pool slots): a look for
    /// dead participants when due, a spin, then a sleep on the space word
    /// until `ready`, a tick (shorter if a stall timeout is due sooner) or
    /// the end of the wait.
    fn wait_for_space(
        &self,
        spin: &mut wait::Spin,
        wait: Wait,
        what: u32,
        ready: impl FnOnce() -> bool,
    ) {
        if spin.again() {
            return;
        }
        self.mark_waiting(what);
        if self.look_for_dead() {
            return;
        }
        let h = self.chan.ring.header();
        let mut tick = wait.cap(wait::LIVENESS_TICK);
        let stall = h.stall_timeout_ms.load(Ordering::Relaxed);
        let since = h.full_since_ms.load(Ordering::Relaxed);
        if stall > 0 && since > 0 {
            let due = since.saturating_add(stall);
            let left = due.saturating_sub(crate::clock::now_ms()) + 1;
            tick = tick.min(Duration::from_millis(left));
        }
        self.sleeper
            .park(&h.space_seq, &h.space_waiters, tick, ready);
    }

    /// Claims an entry, waiting for space as `wait` allows.
    fn claim(&self, wait: Wait) -> Result<u64, TrySendError> {
        let ring = &self.chan.ring;
        let h = ring.header();
        let mut spin = self.spin.start();
        loop {
            match ring.try_claim(self.me(), &crate::clock::now_ms, &mut |x| self.ack(x)) {
                Claim::Claimed(seq) => {
                    self.spin.settle(&spin);
                    if h.full_since_ms.load(Ordering::Relaxed) != 0 {
                        h.full_since_ms.store(0, Ordering::Relaxed);
                    }
                    // The claim may have freed more entries than it took:
                    // other producers asleep for space get their chance.
                    if h.space_waiters.load(Ordering::SeqCst) & !(1 << (self.index & 31)) != 0 {
                        self.chan.wake_producers();
                    }
                    return Ok(seq);
                }
                Claim::Full => {
                    // The stall timeout measures from the first producer
                    // that found the ring full.
                    let _ = h.full_since_ms.compare_exchange(
                        0,
                        crate::clock::now_ms(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            }
            if self.help_release() > 0 {
                continue;
            }
            if let Some(e) = self.closed() {
                return Err(e);
            }
            if !ring.consistent() {
                return Err(TrySendError::Send(SendError::Store(BlobError::Corrupt {
                    file: self.chan.path.clone(),
                    detail: "the ring's head and frontier are out of order".into(),
                })));
            }
            if wait.over() {
                // A dead participant may be what holds the ring full (looked
                // for at most once per tick: it costs a system call each).
                if self.look_for_dead() {
                    continue;
                }
                return Err(self.full(FULL_RING));
            }
            self.wait_for_space(&mut spin, wait, FULL_RING, || ring.has_space());
        }
    }

    /// Takes a pool slot for a message of `need` bytes at sequence `seq`
    /// (or the head, for a loan), waiting for one as `wait` allows. Under
    /// DropOldest the oldest message makes room.
    ///
    /// Which slot: for a small message, the one its entry held last lap
    /// (its cache lines are as good as any). For a large one, what decides
    /// the speed is whether its bytes are still in cache, and the slot of
    /// last lap is a whole ring of messages old: the entries consumers have
    /// passed are released first, and the slots of the last few messages —
    /// read and let go of a moment ago — are tried before it, so a steady
    /// stream cycles through a few warm slots, not the whole ring.
    fn alloc(&self, seq: u64, need: usize, wait: Wait) -> Result<u32, TrySendError> {
        let ring = &self.chan.ring;
        let mut prefer = [0u32; WARM_CANDIDATES + 1];
        let prefer: &[u32] = if need >= WARM_FROM {
            self.help_release();
            ring.recent_slots(seq, &mut prefer[..WARM_CANDIDATES]);
            prefer[WARM_CANDIDATES] = ring.previous_slot(seq);
            &prefer
        } else {
            prefer[0] = ring.previous_slot(seq);
            &prefer[..1]
        };
        let mut spin = self.spin.start();
        loop {
            match ring.alloc(self.me(), prefer, need, &self.chan) {
                Ok(b) => {
                    self.spin.settle(&spin);
                    return Ok(b);
                }
                Err(NoSlot::NoSpace) => {
                    return Err(TrySendError::Send(SendError::Store(BlobError::NoSpace {
                        file: self.chan.path.clone(),
                    })))
                }
                Err(NoSlot::Exhausted) => {}
            }
            if ring.drops_oldest() {
                let f = frontier_seq(ring.header().frontier.load(Ordering::SeqCst));
                if ring.advance(f + 1, &mut |x| self.ack(x)) > 0 {
                    continue;
                }
            }
            if self.help_release() > 0 {
                continue;
            }
            if let Some(e) = self.closed() {
                return Err(e);
            }
            if self.look_for_dead() {
                continue;
            }
            if wait.over() {
                return Err(self.full(FULL_POOL));
            }
            self.wait_for_space(&mut spin, wait, FULL_POOL, || ring.any_free_slot());
        }
    }

    /// The error of a producer inherited through fork, or of a closed
    /// namespace, if either holds.
    fn usable(&self) -> Result<(), TrySendError> {
        if self.chan.inherited() {
            return Err(TrySendError::Send(SendError::Store(
                self.chan.inherited_error("producer"),
            )));
        }
        match self.closed() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Claims, writes and publishes one message.
    pub(crate) fn send(&self, data: &[u8], wait: Wait) -> Result<(), TrySendError> {
        self.usable()?;
        let _mark = WaitMark(self);
        let ring = &self.chan.ring;
        if data.len() <= ring.geometry().inline_capacity() {
            let seq = self.claim(wait)?;
            let b = match self.alloc(seq, data.len(), wait) {
                Ok(b) => b,
                Err(e) => {
                    ring.skip(seq, self.me());
                    return Err(e);
                }
            };
            // SAFETY: we are the slot's writer; the length fits inline.
            unsafe { ring.write_inline(b, data) };
            ring.publish(seq, self.me(), b, data.len() as u32, 0);
            self.sent();
        } else {
            // Into the store first, so the entry is never held during the copy.
            let handle = self.in_store(wait, || self.store.append(data))?;
            self.publish_handle(&handle, data.len(), wait)?;
        }
        Ok(())
    }

    /// Runs a store operation (an append or a reservation); while the store
    /// is full (`max_chunks` chunks hold messages not yet released), it
    /// releases what consumers let go of, evicts dead participants, runs a
    /// reclamation pass and retries, as `wait` allows: a full store is
    /// backpressure like a full ring, and `TrySendError::Full` like it.
    fn in_store<T>(
        &self,
        wait: Wait,
        mut op: impl FnMut() -> crate::Result<T>,
    ) -> Result<T, TrySendError> {
        let mut pause = Duration::from_micros(20);
        loop {
            match op() {
                Ok(x) => return Ok(x),
                Err(BlobError::StoreFull { .. }) => {
                    let freed = self.help_release() > 0;
                    let dead = self.look_for_dead();
                    if self.store.maintain() > 0 || freed || dead {
                        if let Ok(x) = op() {
                            return Ok(x);
                        }
                    }
                    if let Some(e) = self.closed() {
                        return Err(e);
                    }
                    if wait.over() {
                        return Err(self.full(FULL_STORE));
                    }
                    self.mark_waiting(FULL_STORE);
                    std::thread::sleep(wait.cap(pause));
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
                Err(e) => return Err(TrySendError::Send(SendError::Store(e))),
            }
        }
    }

    fn publish_handle(
        &self,
        handle: &OverflowHandle,
        len: usize,
        wait: Wait,
    ) -> Result<(), TrySendError> {
        self.place_handle(handle, len, wait).inspect_err(|_| {
            // Not sent: the entry is nobody's, give it back.
            self.store.acknowledge(handle);
        })
    }

    /// Publishes the handle of a message of `len` bytes in the store; on an
    /// error the store entry is still the caller's.
    fn place_handle(
        &self,
        handle: &OverflowHandle,
        len: usize,
        wait: Wait,
    ) -> Result<(), TrySendError> {
        let ring = &self.chan.ring;
        let seq = self.claim(wait)?;
        let b = match self.alloc(seq, HANDLE_LEN, wait) {
            Ok(b) => b,
            Err(e) => {
                ring.skip(seq, self.me());
                return Err(e);
            }
        };
        ring.write_handle(b, &handle.to_array());
        ring.publish(seq, self.me(), b, len as u32, FLAG_OVERFLOW);
        self.sent();
        Ok(())
    }

    /// One attempt of an async send, waiting for nothing. A message over
    /// the inline capacity is appended to the store on the first attempt
    /// only, into `staged`; later attempts place just its handle (so a
    /// wait for room does not copy the message again at each wake-up). A
    /// caller that gives up hands `staged` to [`unstage`](Self::unstage).
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) fn try_send_staged(
        &self,
        data: &[u8],
        staged: &mut Option<OverflowHandle>,
    ) -> Result<(), TrySendError> {
        if data.len() <= self.chan.ring.geometry().inline_capacity() {
            return self.send(data, Wait::Never);
        }
        self.usable()?;
        let handle = match *staged {
            Some(h) => h,
            None => {
                let h = self.in_store(Wait::Never, || self.store.append(data))?;
                *staged = Some(h);
                h
            }
        };
        self.place_handle(&handle, data.len(), Wait::Never)?;
        *staged = None;
        Ok(())
    }

    /// Gives back a message [`try_send_staged`](Self::try_send_staged)
    /// appended and never sent.
    #[cfg(all(feature = "async", not(loom)))]
    pub(crate) fn unstage(&self, handle: OverflowHandle) {
        self.store.acknowledge(&handle);
    }

    fn sent(&self) {
        let h = self.chan.ring.header();
        self.chan
            .ring
            .record(self.index)
            .count
            .fetch_add(1, Ordering::Relaxed);
        // A broadcast nobody subscribes to: nobody can ever receive the
        // message (a subscriber receives what is sent after it joined), so
        // it is released now, not when the ring wraps. The release judges by
        // the subscribers' records, so one that joined meanwhile keeps it.
        // Pairs with the SeqCst mask update of `register`.
        if !self.chan.ring.is_queue() && h.consumer_mask.load(Ordering::SeqCst) == 0 {
            let n = self.help_release();
            if n > 0 {
                h.unheard.fetch_add(n, Ordering::Relaxed);
            }
            return;
        }
        // A waiter bit of a consumer killed while asleep would make every
        // send a system call: look for dead ones now and then.
        if self.chan.wake_consumers(false) {
            self.look_for_dead();
        }
    }

    pub(crate) fn loan(self: &Arc<Self>, len: usize, wait: Wait) -> Result<Loan, TrySendError> {
        self.usable()?;
        let _mark = WaitMark(self);
        let ring = &self.chan.ring;
        // Inline: a pool slot of the ring, while this endpoint has few out.
        if len <= ring.geometry().inline_capacity() {
            if self.loans.fetch_add(1, Ordering::Relaxed) < SLOTS_PER_PRODUCER {
                let head = ring.header().head.load(Ordering::Relaxed);
                return match self.alloc(head, len, wait) {
                    Ok(slot) => Ok(Loan {
                        producer: Arc::clone(self),
                        body: LoanBody::Slot { slot, len },
                    }),
                    Err(e) => {
                        self.loans.fetch_sub(1, Ordering::Relaxed);
                        Err(e)
                    }
                };
            }
            self.loans.fetch_sub(1, Ordering::Relaxed);
        }
        let reservation = self.in_store(wait, || self.store.reserve(len))?;
        Ok(Loan {
            producer: Arc::clone(self),
            body: LoanBody::Store(reservation),
        })
    }

    /// The error of a blocking call: a blocking claim waits instead of
    /// reporting `Full`, so that arm is only reachable on a ring that a
    /// scribbler keeps from ever freeing an entry.
    pub(super) fn blocking_error(&self, e: TrySendError) -> SendError {
        match e {
            TrySendError::Send(e) => e,
            TrySendError::Full => SendError::Store(BlobError::Corrupt {
                file: self.chan.path.clone(),
                detail: "the ring never frees an entry".into(),
            }),
        }
    }

    /// The error of a call with a timeout.
    pub(super) fn timeout_error(e: TrySendError) -> SendTimeoutError {
        match e {
            TrySendError::Send(e) => SendTimeoutError::Send(e),
            TrySendError::Full => SendTimeoutError::Timeout,
        }
    }

    /// What was full when a call of this endpoint last found no room, and
    /// who holds it, as `sfb stat` would say it; `None` if no call has.
    pub(crate) fn full_reason(&self) -> Option<String> {
        let ring = &self.chan.ring;
        let h = ring.header();
        let what = match self.last_full.load(Ordering::Relaxed) {
            FULL_RING => {
                let head = h.head.load(Ordering::Relaxed);
                if ring.is_queue() {
                    let tail = h.tail.load(Ordering::Relaxed);
                    format!(
                        "the ring: receivers have not taken {} of its {} messages",
                        head.saturating_sub(tail),
                        ring.geometry().slots
                    )
                } else {
                    match self.slowest_consumer() {
                        Some((pid, low)) => format!(
                            "the ring: subscriber pid {pid} is {} messages behind (ring of {})",
                            head.saturating_sub(low),
                            ring.geometry().slots
                        ),
                        None => "the ring: entries not yet released".to_owned(),
                    }
                }
            }
            FULL_POOL => {
                let holders: Vec<String> = (MAX_PRODUCERS..RECORDS)
                    .map(|i| ring.record(i))
                    .filter(|r| {
                        r.in_use.load(Ordering::Relaxed) != 0 && r.held.load(Ordering::Relaxed) > 0
                    })
                    .map(|r| {
                        format!(
                            "pid {} holds {}",
                            r.pid.load(Ordering::Relaxed),
                            r.held.load(Ordering::Relaxed)
                        )
                    })
                    .collect();
                format!(
                    "the pool: every slot is in the ring or held ({})",
                    if holders.is_empty() {
                        "by producers' loans".to_owned()
                    } else {
                        holders.join(", ")
                    }
                )
            }
            FULL_STORE => format!(
                "the store: its {} chunks of {} bytes hold messages not yet released or expired",
                self.store.max_chunks(),
                self.store.chunk_size()
            ),
            _ => return None,
        };
        Some(what)
    }

    /// The subscriber furthest behind among those the ring waits for (not
    /// let go: at or past the frontier): its pid and next sequence.
    fn slowest_consumer(&self) -> Option<(u32, u64)> {
        let ring = &self.chan.ring;
        let frontier = frontier_seq(ring.header().frontier.load(Ordering::Relaxed));
        (MAX_PRODUCERS..RECORDS)
            .map(|i| ring.record(i))
            .filter(|r| r.in_use.load(Ordering::Relaxed) != 0)
            .map(|r| (r.pid.load(Ordering::Relaxed), r.low.load(Ordering::Relaxed)))
            .filter(|&(_, low)| low != LOW_NONE && low >= frontier)
            .min_by_key(|&(_, low)| low)
    }

    /// Messages published (or being written) and not yet released.
    pub(crate) fn len(&self) -> usize {
        let h = self.chan.ring.header();
        let f = frontier_seq(h.frontier.load(Ordering::SeqCst));
        let head = h.head.load(Ordering::SeqCst);
        head.saturating_sub(f)
            .min(self.chan.ring.geometry().slots as u64) as usize
    }

    /// Consumers registered now.
    pub(crate) fn consumer_count(&self) -> usize {
        self.chan
            .ring
            .header()
            .consumer_mask
            .load(Ordering::SeqCst)
            .count_ones() as usize
    }

    /// Worst-case `/dev/shm` bytes of this channel (see `Geometry::memory_bound`).
    pub(crate) fn memory_bound(&self) -> u64 {
        self.chan
            .ring
            .geometry()
            .memory_bound(self.store.chunk_size(), self.store.max_chunks())
    }

    pub(crate) fn name(&self) -> &str {
        &self.chan.name
    }

    pub(crate) fn inline_capacity(&self) -> usize {
        self.chan.ring.geometry().inline_capacity()
    }
}

/// A producer inherited through fork announces nothing: the mask bit is
/// the parent's (and its wait ends at once: `ready` holds).
impl Source for Producer {
    fn announce(&self) -> u32 {
        let h = self.chan.ring.header();
        if self.chan.inherited() {
            return h.space_seq.load(Ordering::SeqCst);
        }
        self.sleeper.announce(&h.space_seq, &h.space_waiters)
    }

    fn withdraw(&self) {
        if !self.chan.inherited() {
            self.sleeper
                .withdraw(&self.chan.ring.header().space_waiters);
        }
    }

    fn word(&self) -> &AtomicU32 {
        &self.chan.ring.header().space_seq
    }

    fn key(&self) -> WordKey {
        (self.chan.identity.0, self.chan.identity.1, true)
    }

    fn ready(&self) -> bool {
        let ring = &self.chan.ring;
        self.chan.inherited()
            || self.store.is_closed()
            || (ring.has_space() && ring.any_free_slot())
    }

    /// Dead participants evicted, and a release: a stall timeout lets a
    /// subscriber go only in a release, and nothing else would run one
    /// while every producer waits.
    fn tick(&self) {
        self.look_for_dead();
        self.help_release();
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if self.chan.inherited() {
            // The record is the parent's: leave it alone.
            return;
        }
        self.chan.unregister(Role::Producer, self.index);
        // Consumers learn at once that this producer is gone.
        self.chan.wake_consumers(true);
    }
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
            #[cfg(all(feature = "async", not(loom)))]
            async_part: super::reactor::AsyncPart,
        }

        impl $name {
            pub(crate) fn new(inner: Producer) -> Self {
                Self {
                    inner: Arc::new(inner),
                    #[cfg(all(feature = "async", not(loom)))]
                    async_part: Default::default(),
                }
            }

            #[cfg(all(feature = "async", not(loom)))]
            pub(crate) fn async_parts(&self) -> (&Arc<Producer>, &super::reactor::AsyncPart) {
                (&self.inner, &self.async_part)
            }


            /// This producer's participant record in the channel (0 to 31):
            /// what [`Message::producer_record`](crate::Message::producer_record)
            /// says of the messages it sent.
            pub fn record(&self) -> u32 {
                self.inner.me()
            }

            /// Sends `data`, blocking while the channel is full. Messages up
            /// to [`inline_capacity`](Self::inline_capacity) bytes travel in
            /// the ring slot; larger ones are appended to the store and
            /// their handle travels instead. An empty message is delivered
            /// as an empty message.
            pub fn send(&self, data: &[u8]) -> Result<(), SendError> {
                self.inner
                    .send(data, Wait::Forever)
                    .map_err(|e| self.inner.blocking_error(e))
            }

            /// Sends `data` if the channel has room now; otherwise
            #[doc = concat!("[`TrySendError::Full`]: every ring entry holds a message some ", $peer, " has not received,")]
            /// every pool slot is held, or the store is full. Before it says
            /// so, it releases what consumers let go of and evicts dead
            /// participants; [`full_reason`](Self::full_reason) says what
            /// was full and who held it.
            pub fn try_send(&self, data: &[u8]) -> Result<(), TrySendError> {
                self.inner.send(data, Wait::Never)
            }

            /// Sends `data`, waiting at most `timeout` for room (in the
            /// ring, the pool or the store). On
            /// [`SendTimeoutError::Timeout`] nothing was sent.
            pub fn send_timeout(&self, data: &[u8], timeout: Duration) -> Result<(), SendTimeoutError> {
                self.inner
                    .send(data, Wait::timeout(timeout))
                    .map_err(Producer::timeout_error)
            }

            /// A writable buffer of `len` bytes in shared memory: fill it,
            /// then [`Loan::send`] publishes it without a copy. A loan that
            /// fits [`inline_capacity`](Self::inline_capacity) is a ring slot
            /// (waiting for one if none is free); a larger one (or more than
            /// two at once) is store space (waiting while the store is
            /// full). A loan dropped unsent is discarded and its space given
            /// back (by repair or the TTL if the process dies holding it).
            /// Its initial bytes are unspecified.
            pub fn loan(&self, len: usize) -> Result<Loan, SendError> {
                self.inner
                    .loan(len, Wait::Forever)
                    .map_err(|e| self.inner.blocking_error(e))
            }

            /// A loan if there is room now; otherwise [`TrySendError::Full`].
            pub fn try_loan(&self, len: usize) -> Result<Loan, TrySendError> {
                self.inner.loan(len, Wait::Never)
            }

            /// A loan, waiting at most `timeout` for room.
            pub fn loan_timeout(&self, len: usize, timeout: Duration) -> Result<Loan, SendTimeoutError> {
                self.inner
                    .loan(len, Wait::timeout(timeout))
                    .map_err(Producer::timeout_error)
            }

            /// Messages published (or being written) and not yet released
            /// by every consumer, at most [`capacity`](Self::capacity).
            pub fn len(&self) -> usize {
                self.inner.len()
            }

            /// Whether no message is in flight (see [`len`](Self::len)).
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            /// Messages in flight before producers wait (or, under
            /// [`Overflow::DropOldest`](crate::Overflow::DropOldest), drop
            /// the oldest): the ring's slots.
            pub fn capacity(&self) -> usize {
                self.inner.chan.ring.geometry().slots as usize
            }

            #[doc = concat!("The ", $peer, "s registered now.")]
            pub fn subscriber_count(&self) -> usize {
                self.inner.consumer_count()
            }

            /// Worst-case bytes of `/dev/shm` this channel can take: its
            /// file with every pool slot backed, and one store chunk pinned
            /// by each message that can be in flight through the store (at
            /// most the store's `max_chunks`). It holds for messages that fit
            /// a store chunk (a larger one pins a chunk of its own size), and
            /// does not count store loans not yet sent or sends still waiting
            /// for a ring entry (each pins at most one chunk meanwhile).
            /// `sfb stat` shows it too.
            pub fn memory_bound(&self) -> u64 {
                self.inner.memory_bound()
            }

            /// What was full when a send or loan of this endpoint last found
            /// no room (the ring, the pool or the store), and who held it,
            /// e.g. `"the ring: subscriber pid 4242 is 256 messages behind
            /// (ring of 256)"`. `None` if none has.
            pub fn full_reason(&self) -> Option<String> {
                self.inner.full_reason()
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
                    self.inner.chan.ring.try_claim(
                        self.inner.me(),
                        &crate::clock::now_ms,
                        &mut |_| {}
                    ),
                    Claim::Claimed(_)
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
    body: LoanBody,
}

enum LoanBody {
    /// A pool slot of the ring, written by this producer.
    Slot { slot: u32, len: usize },
    /// Store space.
    Store(SharedReservation),
    /// Sent or discarded.
    Gone,
}

// SAFETY: the loan's bytes are reserved for it alone until it is sent or
// dropped (a pool slot whose owners word names this producer, or a store
// reservation), and the producer (slot) or the reservation's chunk keeps
// them mapped; Producer is Send + Sync.
unsafe impl Send for Loan {}
// SAFETY: shared references only give `&[u8]` of bytes nobody else writes.
unsafe impl Sync for Loan {}

impl Loan {
    /// Publishes the loaned bytes, blocking while the channel is full.
    pub fn send(mut self) -> Result<(), SendError> {
        self.publish(Wait::Forever)
            .map_err(|e| self.producer.blocking_error(e))
    }

    /// Publishes the loaned bytes if the channel has room now; otherwise
    /// [`TrySendError::Full`] (the loan's bytes are then discarded).
    pub fn try_send(mut self) -> Result<(), TrySendError> {
        self.publish(Wait::Never)
    }

    /// Publishes the loaned bytes, waiting at most `timeout` for room; on
    /// [`SendTimeoutError::Timeout`] the loan's bytes are discarded.
    pub fn send_timeout(mut self, timeout: Duration) -> Result<(), SendTimeoutError> {
        self.publish(Wait::timeout(timeout))
            .map_err(Producer::timeout_error)
    }

    /// Whether the loan is a ring slot (it fits inline) rather than store
    /// space.
    pub fn is_inline(&self) -> bool {
        matches!(self.body, LoanBody::Slot { .. })
    }

    fn publish(&mut self, wait: Wait) -> Result<(), TrySendError> {
        let p = &self.producer;
        p.usable()?;
        let _mark = WaitMark(p);
        match std::mem::replace(&mut self.body, LoanBody::Gone) {
            LoanBody::Gone => Ok(()),
            LoanBody::Slot { slot, len } => {
                let ring = &p.chan.ring;
                // The loan keeps counting against the endpoint's budget
                // while it waits for an entry: it still holds its slot.
                let r = match p.claim(wait) {
                    Ok(seq) => {
                        ring.publish(seq, p.me(), slot, len as u32, 0);
                        p.sent();
                        Ok(())
                    }
                    Err(e) => {
                        ring.unalloc(slot, p.me());
                        Err(e)
                    }
                };
                p.loans.fetch_sub(1, Ordering::Relaxed);
                r
            }
            LoanBody::Store(r) => {
                let handle = p
                    .store
                    .commit(&r)
                    .map_err(|e| TrySendError::Send(SendError::Store(e)))?;
                p.publish_handle(&handle, r.loc.size as usize, wait)
            }
        }
    }

    fn bytes(&self) -> (*mut u8, usize) {
        match &self.body {
            LoanBody::Slot { slot, len } => (self.producer.chan.ring.payload(*slot), *len),
            LoanBody::Store(r) => (r.ptr, r.loc.size as usize),
            LoanBody::Gone => (std::ptr::NonNull::dangling().as_ptr(), 0),
        }
    }
}

impl std::ops::Deref for Loan {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let (ptr, len) = self.bytes();
        // SAFETY: `len` bytes at `ptr` (at most the slot's inline capacity,
        // or the reservation), initialised (file or zeroed memory), written
        // only through this loan, kept mapped by the producer's channel
        // file or the reservation's chunk.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

impl std::ops::DerefMut for Loan {
    fn deref_mut(&mut self) -> &mut [u8] {
        let (ptr, len) = self.bytes();
        // SAFETY: as in Deref; `&mut self` makes this the only reference,
        // and no other writer or reader touches a slot or entry that is not
        // published.
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
        f.debug_struct("Loan")
            .field("len", &self.len())
            .field("inline", &self.is_inline())
            .finish()
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        let p = &self.producer;
        if p.chan.inherited() {
            return; // The parent's to give back.
        }
        match std::mem::replace(&mut self.body, LoanBody::Gone) {
            LoanBody::Slot { slot, .. } => {
                p.loans.fetch_sub(1, Ordering::Relaxed);
                p.chan.ring.unalloc(slot, p.me());
            }
            // Unsent: commit it and acknowledge it at once, so its chunk can
            // be reclaimed as soon as the rest of it is.
            LoanBody::Store(r) => {
                if let Ok(handle) = p.store.commit(&r) {
                    p.store.acknowledge(&handle);
                }
            }
            LoanBody::Gone => {}
        }
    }
}
