//! Channel endpoints (`Publisher`, `Subscriber`, `Sender`, `Receiver`) and
//! `Message`.
//!
//! Blocking waits release the GIL and run in slices; between slices the
//! thread takes the GIL back and runs Python's signal handlers, so Ctrl-C
//! interrupts a blocked `recv` (and a `send` waiting for room in the ring).

use crate::buffer::{self, Input};
use crate::errors::{self, Exc};
use crate::pinned::Pinned;
use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use stable_fragmented_buffer as sfb;
use stable_fragmented_buffer::{
    BlobError, ChannelConfig, Delivery, Loan, Overflow, PinnedBlobStore, RecvTimeoutError,
    SendError, TryRecvError, TrySendError,
};
use std::ffi::c_int;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest wait without looking at Python's signals.
const SLICE: Duration = Duration::from_millis(50);

/// What a channel opener was asked for (its keyword arguments).
pub(crate) struct Options<'a> {
    pub max_message: Option<usize>,
    pub in_flight: Option<u32>,
    pub overflow: Option<&'a str>,
    pub stall_timeout: Option<f64>,
    pub delivery: Option<&'a str>,
    pub max_held: Option<i64>,
}

impl Options<'_> {
    /// Whether any keyword was given: then the channel is opened with the
    /// library's `_with` opener, and an existing channel must match (else
    /// `ChannelMismatchError`); without keywords the plain opener adopts
    /// what exists.
    pub(crate) fn given(&self) -> bool {
        self.max_message.is_some()
            || self.in_flight.is_some()
            || self.overflow.is_some()
            || self.stall_timeout.is_some()
            || self.delivery.is_some()
            || self.max_held.is_some()
    }
}

/// The channel configuration asked for: the library's default ring, or one
/// sized to `max_message` bytes with `in_flight` messages in flight, and
/// the policy given (the defaults for the keywords not given). A channel
/// that exists must have this geometry and policy.
pub(crate) fn config(py: Python<'_>, o: &Options<'_>) -> PyResult<ChannelConfig> {
    let invalid = |reason: String| errors::from_blob(py, &BlobError::InvalidConfig { reason });
    let mut cfg = match (o.max_message, o.in_flight) {
        (None, None) => ChannelConfig::default(),
        (m, n) => {
            let d = ChannelConfig::default();
            ChannelConfig::for_messages(m.unwrap_or(d.inline_capacity()), n.unwrap_or(d.slots))
        }
    };
    if let Some(overflow) = o.overflow {
        cfg = cfg.overflow(match overflow {
            "block" => Overflow::Block,
            "drop-oldest" => Overflow::DropOldest,
            other => {
                return Err(invalid(format!(
                    "overflow must be \"block\" or \"drop-oldest\", got {other:?}"
                )))
            }
        });
    }
    if let Some(delivery) = o.delivery {
        cfg = cfg.delivery(match delivery {
            "at-most-once" => Delivery::AtMostOnce,
            "at-least-once" => Delivery::AtLeastOnce,
            other => {
                return Err(invalid(format!(
                    "delivery must be \"at-most-once\" or \"at-least-once\", got {other:?}"
                )))
            }
        });
    }
    if let Some(t) = o.stall_timeout {
        if !(t.is_finite() && t >= 0.0) {
            return Err(invalid(format!(
                "stall_timeout must be a finite number of seconds >= 0 or None, got {t}"
            )));
        }
        cfg = cfg.stall_timeout(Duration::from_secs_f64(t.min(1e9)));
    }
    if let Some(n) = o.max_held {
        // The library checks the range; this keeps the value from wrapping
        // on its way there.
        let n = u32::try_from(n)
            .map_err(|_| invalid(format!("max_held {n}: must be between 1 and 1024")))?;
        cfg = cfg.max_held(n);
    }
    Ok(cfg)
}

/// An endpoint until `close`, with the store it came from (kept alive, so
/// that a creator's namespace outlives a `Store` object dropped early).
struct Open<T> {
    slot: Mutex<Option<(Arc<T>, Arc<PinnedBlobStore>)>>,
    what: &'static str,
    name: String,
}

impl<T> Open<T> {
    fn new(endpoint: T, store: Arc<PinnedBlobStore>, what: &'static str, name: &str) -> Self {
        Open {
            slot: Mutex::new(Some((Arc::new(endpoint), store))),
            what,
            name: name.to_owned(),
        }
    }

    fn get(&self, py: Python<'_>) -> PyResult<Arc<T>> {
        let guard = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some((e, _)) => Ok(Arc::clone(e)),
            None => Err(errors::new(
                py,
                Exc::Closed,
                format!("the {} of channel \"{}\" is closed", self.what, self.name),
            )),
        }
    }

    fn closed(&self) -> bool {
        self.slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    fn close(&self, py: Python<'_>)
    where
        T: Send + Sync,
    {
        let taken = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        py.detach(move || drop(taken));
    }
}

/// What `Publisher` and `Sender` have in common.
trait Produce: Send + Sync {
    fn send(&self, data: &[u8]) -> Result<(), SendError>;
    fn try_send(&self, data: &[u8]) -> Result<(), TrySendError>;
    fn loan(&self, len: usize) -> Result<Loan, SendError>;
    fn inline_capacity(&self) -> usize;
}

/// What `Subscriber` and `Receiver` have in common.
trait Consume: Send + Sync {
    fn try_recv(&self) -> Result<sfb::Message, TryRecvError>;
    fn recv_timeout(&self, timeout: Duration) -> Result<sfb::Message, RecvTimeoutError>;
}

macro_rules! produce {
    ($t:ty) => {
        impl Produce for $t {
            fn send(&self, data: &[u8]) -> Result<(), SendError> {
                <$t>::send(self, data)
            }
            fn try_send(&self, data: &[u8]) -> Result<(), TrySendError> {
                <$t>::try_send(self, data)
            }
            fn loan(&self, len: usize) -> Result<Loan, SendError> {
                <$t>::loan(self, len)
            }
            fn inline_capacity(&self) -> usize {
                <$t>::inline_capacity(self)
            }
        }
    };
}
produce!(sfb::Publisher);
produce!(sfb::Sender);

macro_rules! consume {
    ($t:ty) => {
        impl Consume for $t {
            fn try_recv(&self) -> Result<sfb::Message, TryRecvError> {
                <$t>::try_recv(self)
            }
            fn recv_timeout(&self, timeout: Duration) -> Result<sfb::Message, RecvTimeoutError> {
                <$t>::recv_timeout(self, timeout)
            }
        }
    };
}
consume!(sfb::Subscriber);
consume!(sfb::Receiver);

fn send_error(py: Python<'_>, e: SendError) -> PyErr {
    match e {
        SendError::Store(e) => errors::from_blob(py, &e),
        other => errors::new(py, Exc::Blob, other.to_string()),
    }
}

/// Waits, GIL released, until `attempt` stops answering `Full` or a slice
/// is over; spins, then yields, then sleeps, so a ring that frees a slot
/// within microseconds costs no system call.
fn retry_full(attempt: impl Fn() -> Result<(), TrySendError>) -> Result<(), TrySendError> {
    let until = Instant::now() + SLICE;
    let mut round = 0u32;
    loop {
        match attempt() {
            Err(TrySendError::Full) => {}
            other => return other,
        }
        round += 1;
        if round < 64 {
            std::hint::spin_loop();
        } else if round < 512 {
            std::thread::yield_now();
        } else {
            if Instant::now() >= until {
                return Err(TrySendError::Full);
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Sends the bytes of `obj`; `block` waits for room, else `Ok(false)` when
/// the channel is full.
fn send_obj(
    py: Python<'_>,
    p: &dyn Produce,
    obj: &Bound<'_, PyAny>,
    block: bool,
) -> PyResult<bool> {
    let input = Input::new(obj)?;
    let len = input.len();
    let gathered: Vec<u8>;
    let data: Option<&[u8]> = match input.contiguous() {
        Some(d) => Some(d),
        None if len <= p.inline_capacity() || !block => {
            // Small (or a non-blocking try): gathered first, then copied
            // into the ring slot (or the store).
            let mut tmp = vec![0u8; len];
            // SAFETY: `input` holds the export for the whole call.
            unsafe { buffer::gather(input.layout(), &mut tmp) };
            gathered = tmp;
            Some(&gathered)
        }
        None => None,
    };
    let result = match data {
        Some(data) if data.len() <= p.inline_capacity() => {
            // Inline in the ring: a cheap copy, so a full ring is waited on
            // by retrying, in slices, interruptibly.
            let mut r = p.try_send(data);
            while block && matches!(r, Err(TrySendError::Full)) {
                r = py.detach(|| retry_full(|| p.try_send(data)));
                if matches!(r, Err(TrySendError::Full)) {
                    py.check_signals()?;
                }
            }
            r
        }
        Some(data) if !block => py.detach(|| p.try_send(data)),
        Some(data) if data.len() >= buffer::PARALLEL_MIN => {
            // Very large: into a loan, the copy split between threads.
            match p.loan(data.len()) {
                Ok(mut loan) => py
                    .detach(|| {
                        buffer::copy_large(&mut loan, data);
                        loan.send()
                    })
                    .map_err(TrySendError::Send),
                // A full store: the blocking send waits for room.
                Err(SendError::Store(BlobError::StoreFull { .. })) => {
                    py.detach(|| p.send(data)).map_err(TrySendError::Send)
                }
                Err(e) => Err(TrySendError::Send(e)),
            }
        }
        Some(data) => py.detach(|| p.send(data)).map_err(TrySendError::Send),
        None => {
            // Strided and larger than a slot: gathered straight into a
            // loan in shared memory (one copy), then published.
            let layout = input.layout();
            match p.loan(len) {
                Ok(mut loan) => py
                    .detach(|| {
                        // SAFETY: `input` holds the export for the whole call.
                        unsafe { buffer::gather(layout, &mut loan) };
                        loan.send()
                    })
                    .map_err(TrySendError::Send),
                Err(SendError::Store(BlobError::StoreFull { .. })) => {
                    // A full store: the blocking send waits for room (and
                    // evicts dead consumers); it needs the bytes in one piece.
                    let mut tmp = vec![0u8; len];
                    py.detach(|| {
                        // SAFETY: `input` holds the export for the whole call.
                        unsafe { buffer::gather(layout, &mut tmp) };
                        p.send(&tmp)
                    })
                    .map_err(TrySendError::Send)
                }
                Err(e) => Err(TrySendError::Send(e)),
            }
        }
    };
    drop(input);
    match result {
        Ok(()) => Ok(true),
        Err(TrySendError::Full) => Ok(false),
        Err(TrySendError::Send(e)) => Err(send_error(py, e)),
        Err(e) => Err(errors::new(py, Exc::Blob, e.to_string())),
    }
}

/// Receives the next message: at once if one is ready, else waiting with
/// the GIL released, in slices, running signal handlers between them.
/// Messages whose store entry expired are passed over. Having lagged raises
/// `LaggedError`, unless `iterating` (iteration passes over it, as the
/// library's iterator does; the endpoint's `lagged` counts it either way).
/// `None` at disconnection.
fn recv_msg(
    py: Python<'_>,
    c: &dyn Consume,
    timeout: Option<f64>,
    iterating: bool,
) -> PyResult<Option<Message>> {
    let deadline = match timeout {
        None => None,
        Some(t) if t.is_finite() && t >= 0.0 => {
            Some(Instant::now() + Duration::from_secs_f64(t.min(1e9)))
        }
        Some(t) => {
            return Err(PyValueError::new_err(format!(
                "timeout must be a finite number of seconds >= 0 or None, got {t}"
            )))
        }
    };
    loop {
        match c.try_recv() {
            Ok(m) => return Ok(Some(Message::new(m))),
            Err(TryRecvError::Expired) => continue,
            Err(TryRecvError::Lagged(_)) if iterating => continue,
            Err(TryRecvError::Lagged(n)) => return Err(errors::lagged(py, n)),
            Err(TryRecvError::TooManyHeld) => return Err(errors::too_many_held(py)),
            Err(TryRecvError::Disconnected) => return Ok(None),
            Err(TryRecvError::Empty) => break,
            Err(e) => return Err(errors::new(py, Exc::Blob, e.to_string())),
        }
    }
    loop {
        let slice = match deadline {
            None => SLICE,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Err(errors::new(
                        py,
                        Exc::ChannelTimeout,
                        "timed out waiting for a message",
                    ));
                }
                (d - now).min(SLICE)
            }
        };
        match py.detach(|| c.recv_timeout(slice)) {
            Ok(m) => return Ok(Some(Message::new(m))),
            Err(RecvTimeoutError::Timeout) => py.check_signals()?,
            Err(RecvTimeoutError::Expired) => {}
            Err(RecvTimeoutError::Lagged(_)) if iterating => {}
            Err(RecvTimeoutError::Lagged(n)) => return Err(errors::lagged(py, n)),
            Err(RecvTimeoutError::TooManyHeld) => return Err(errors::too_many_held(py)),
            Err(RecvTimeoutError::Disconnected) => return Ok(None),
            Err(e) => return Err(errors::new(py, Exc::Blob, e.to_string())),
        }
    }
}

fn disconnected(py: Python<'_>) -> PyErr {
    errors::new(
        py,
        Exc::Disconnected,
        "the channel is disconnected: no producer is alive and everything sent was received",
    )
}

macro_rules! producer_class {
    ($name:ident, $lib:ty, $what:literal) => {
        #[doc = concat!("The producing end of a ", $what, ".")]
        #[pyclass(frozen, module = "stable_fragmented_buffer")]
        pub(crate) struct $name {
            open: Open<$lib>,
        }

        impl $name {
            pub(crate) fn open(endpoint: $lib, store: Arc<PinnedBlobStore>, name: &str) -> Self {
                $name {
                    open: Open::new(endpoint, store, stringify!($name), name),
                }
            }
        }

        #[pymethods]
        impl $name {
            /// Sends the bytes of `obj` (anything with the buffer
            /// protocol), waiting while the channel is full.
            fn send(&self, py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<()> {
                let p = self.open.get(py)?;
                send_obj(py, &*p, obj, true).map(|_| ())
            }

            /// Sends if the channel has room now; `False` if it is full.
            fn try_send(&self, py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<bool> {
                let p = self.open.get(py)?;
                send_obj(py, &*p, obj, false)
            }

            /// Largest message carried inline in a ring slot; larger ones
            /// go through the store.
            #[getter]
            fn inline_capacity(&self, py: Python<'_>) -> PyResult<usize> {
                Ok(self.open.get(py)?.inline_capacity())
            }

            /// The channel's name.
            #[getter]
            fn name(&self) -> &str {
                &self.open.name
            }

            /// Whether `close` was called.
            #[getter]
            fn closed(&self) -> bool {
                self.open.closed()
            }

            /// Leaves the channel; consumers see it disconnected once no
            /// producer is left and it is drained.
            fn close(&self, py: Python<'_>) {
                self.open.close(py);
            }

            fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
                slf
            }

            fn __exit__(
                &self,
                py: Python<'_>,
                _exc_type: &Bound<'_, PyAny>,
                _exc: &Bound<'_, PyAny>,
                _tb: &Bound<'_, PyAny>,
            ) {
                self.close(py);
            }

            fn __repr__(&self) -> String {
                format!("{}({:?})", stringify!($name), self.open.name)
            }
        }
    };
}

macro_rules! consumer_class {
    ($name:ident, $lib:ty, $what:literal) => {
        #[doc = concat!("The consuming end of a ", $what, "; iterating receives until disconnection.")]
        #[pyclass(frozen, module = "stable_fragmented_buffer")]
        pub(crate) struct $name {
            open: Open<$lib>,
        }

        impl $name {
            pub(crate) fn open(endpoint: $lib, store: Arc<PinnedBlobStore>, name: &str) -> Self {
                $name {
                    open: Open::new(endpoint, store, stringify!($name), name),
                }
            }
        }

        #[pymethods]
        impl $name {
            /// The next message, waiting at most `timeout` seconds (None:
            /// no limit). Raises `ChannelTimeout` (a `TimeoutError`),
            /// `DisconnectedError` once no producer is alive and the
            /// channel is drained, `LaggedError` once after this
            /// subscriber fell a ring behind (then receive again), and
            /// `TooManyHeldError` at once while it holds `max_held`
            /// messages.
            #[pyo3(signature = (timeout = None))]
            fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Message> {
                let c = self.open.get(py)?;
                recv_msg(py, &*c, timeout, false)?.ok_or_else(|| disconnected(py))
            }

            /// The next message if one is ready now, else `None`; raises as
            /// `recv` does (but never `ChannelTimeout`).
            fn try_recv(&self, py: Python<'_>) -> PyResult<Option<Message>> {
                let c = self.open.get(py)?;
                loop {
                    match c.try_recv() {
                        Ok(m) => return Ok(Some(Message::new(m))),
                        Err(TryRecvError::Empty) => return Ok(None),
                        Err(TryRecvError::Expired) => continue,
                        Err(TryRecvError::Lagged(n)) => return Err(errors::lagged(py, n)),
                        Err(TryRecvError::TooManyHeld) => return Err(errors::too_many_held(py)),
                        Err(TryRecvError::Disconnected) => return Err(disconnected(py)),
                        Err(e) => return Err(errors::new(py, Exc::Blob, e.to_string())),
                    }
                }
            }

            /// Messages passed over because their store entry had expired.
            #[getter]
            fn expired(&self, py: Python<'_>) -> PyResult<u64> {
                Ok(self.open.get(py)?.expired())
            }

            /// Messages this consumer missed by falling a ring behind: the
            /// sum of the `LaggedError.missed` raised, and of those
            /// iteration passed over.
            #[getter]
            fn lagged(&self, py: Python<'_>) -> PyResult<u64> {
                Ok(self.open.get(py)?.lagged())
            }

            /// Messages this consumer holds now (received, not released).
            #[getter]
            fn held(&self, py: Python<'_>) -> PyResult<u32> {
                Ok(self.open.get(py)?.held())
            }

            /// The channel's name.
            #[getter]
            fn name(&self) -> &str {
                &self.open.name
            }

            /// Whether `close` was called.
            #[getter]
            fn closed(&self) -> bool {
                self.open.closed()
            }

            /// Leaves the channel (messages already received stay valid).
            fn close(&self, py: Python<'_>) {
                self.open.close(py);
            }

            fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
                slf
            }

            fn __next__(&self, py: Python<'_>) -> PyResult<Option<Message>> {
                let c = self.open.get(py)?;
                recv_msg(py, &*c, None, true)
            }

            fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
                slf
            }

            fn __exit__(
                &self,
                py: Python<'_>,
                _exc_type: &Bound<'_, PyAny>,
                _exc: &Bound<'_, PyAny>,
                _tb: &Bound<'_, PyAny>,
            ) {
                self.close(py);
            }

            fn __repr__(&self) -> String {
                format!("{}({:?})", stringify!($name), self.open.name)
            }
        }
    };
}

producer_class!(Publisher, sfb::Publisher, "broadcast channel");
producer_class!(Sender, sfb::Sender, "work queue");
consumer_class!(Subscriber, sfb::Subscriber, "broadcast channel");
consumer_class!(Receiver, sfb::Receiver, "work queue");

/// A received message (buffer protocol, zero-copy, read-only). It holds its
/// ring slot, or its pinned store entry, until released: by `release()`, by
/// leaving its `with` block (which raises `BufferError` while memoryviews
/// or arrays made from it are alive), or when it and every such export are
/// gone. Releasing a work-queue message acknowledges it.
#[pyclass(frozen, module = "stable_fragmented_buffer")]
pub(crate) struct Message {
    pinned: Pinned<sfb::Message>,
    sequence: u64,
    overflow: bool,
    redelivered: u32,
}

impl Message {
    fn new(m: sfb::Message) -> Self {
        Message {
            sequence: m.sequence(),
            overflow: m.is_overflow(),
            redelivered: m.redelivered(),
            pinned: Pinned::new(m),
        }
    }
}

#[pymethods]
impl Message {
    /// # Safety
    /// Called by Python's buffer protocol only.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        // SAFETY: `view` is this call's Py_buffer; `slf` owns the message
        // and the export takes a reference to it.
        unsafe {
            slf.get()
                .pinned
                .get_buffer("message", view, flags, slf.as_any())
        }
    }

    /// # Safety
    /// Called by Python's buffer protocol only.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.pinned.release_buffer();
    }

    /// Releases the message (acknowledges it, for a work queue). Raises
    /// `BufferError` while memoryviews or arrays made from it are alive; a
    /// second call does nothing.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        if self.pinned.exports() > 0 {
            return self.pinned.release("message");
        }
        py.detach(|| self.pinned.release("message"))
    }

    /// Whether `release` was called.
    #[getter]
    fn released(&self) -> bool {
        self.pinned.released()
    }

    /// Buffer exports alive (memoryviews, numpy arrays, ...).
    #[getter]
    fn exports(&self) -> usize {
        self.pinned.exports()
    }

    /// The message's sequence number in its channel.
    #[getter]
    fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Whether it travelled through the store (larger than a ring slot).
    #[getter]
    fn is_overflow(&self) -> bool {
        self.overflow
    }

    /// How many times this message was handed out before: on an
    /// at-least-once work queue, the receivers that died holding it. 0 for
    /// a first delivery.
    #[getter]
    fn redelivered(&self) -> u32 {
        self.redelivered
    }

    /// A copy of the bytes.
    fn tobytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.pinned
            .with("message", |m| PyBytes::new(py, m.as_slice()))
    }

    fn __len__(&self) -> usize {
        self.pinned.len()
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.release(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "Message(sequence={}, len={}{})",
            self.sequence,
            self.pinned.len(),
            if self.pinned.released() {
                ", released"
            } else {
                ""
            }
        )
    }
}
