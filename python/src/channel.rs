//! Channel endpoints (`Publisher`, `Subscriber`, `Sender`, `Receiver`) and
//! `Message`.
//!
//! Blocking waits release the GIL and run in slices; between slices the
//! thread takes the GIL back and runs Python's signal handlers, so Ctrl-C
//! interrupts a blocked `recv` (and a `send` waiting for room in the ring).

use crate::array::{self, NotArray};
use crate::buffer::{self, Input, Layout};
use crate::errors::{self, Exc};
use crate::pinned::Pinned;
use pyo3::exceptions::{PyBufferError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use stable_fragmented_buffer as sfb;
use stable_fragmented_buffer::{
    BlobError, ChannelConfig, Delivery, Overflow, PinnedBlobStore, RecvTimeoutError, SendError,
    SendTimeoutError, TryRecvError, TrySendError,
};
use std::ffi::c_int;
use std::sync::{Arc, Mutex, MutexGuard};
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
    fn send_timeout(&self, data: &[u8], timeout: Duration) -> Result<(), SendTimeoutError>;
    fn try_loan(&self, len: usize) -> Result<sfb::Loan, TrySendError>;
    fn loan_timeout(&self, len: usize, timeout: Duration) -> Result<sfb::Loan, SendTimeoutError>;
    fn inline_capacity(&self) -> usize;
    fn full_reason(&self) -> Option<String>;
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
            fn send_timeout(&self, data: &[u8], timeout: Duration) -> Result<(), SendTimeoutError> {
                <$t>::send_timeout(self, data, timeout)
            }
            fn try_loan(&self, len: usize) -> Result<sfb::Loan, TrySendError> {
                <$t>::try_loan(self, len)
            }
            fn loan_timeout(
                &self,
                len: usize,
                timeout: Duration,
            ) -> Result<sfb::Loan, SendTimeoutError> {
                <$t>::loan_timeout(self, len, timeout)
            }
            fn inline_capacity(&self) -> usize {
                <$t>::inline_capacity(self)
            }
            fn full_reason(&self) -> Option<String> {
                <$t>::full_reason(self)
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

/// The instant `t` seconds from now; `ValueError` unless `t` is a finite
/// number >= 0.
fn deadline(t: f64) -> PyResult<Instant> {
    if t.is_finite() && t >= 0.0 {
        Ok(Instant::now() + Duration::from_secs_f64(t.min(1e9)))
    } else {
        Err(PyValueError::new_err(format!(
            "timeout must be a finite number of seconds >= 0 or None, got {t}"
        )))
    }
}

/// How long a send or a loan may wait for room (in the ring, the pool or
/// the store).
#[derive(Clone, Copy, Debug)]
enum Wait {
    /// Not at all (`try_` calls): a full channel is `False` or `None`.
    Never,
    /// Until this instant (`timeout=`), then `ChannelTimeout`.
    Until(Instant),
    /// As long as it takes.
    Forever,
}

impl Wait {
    /// `timeout` seconds from now; forever for `None`.
    fn from_timeout(timeout: Option<f64>) -> PyResult<Self> {
        match timeout {
            None => Ok(Wait::Forever),
            Some(t) => deadline(t).map(Wait::Until),
        }
    }

    /// Whether the wait is over.
    fn over(self) -> bool {
        match self {
            Wait::Never => true,
            Wait::Until(d) => Instant::now() >= d,
            Wait::Forever => false,
        }
    }

    /// The next stretch of waiting: at most a slice, between two looks at
    /// Python's signals.
    fn slice(self) -> Duration {
        match self {
            Wait::Never => Duration::ZERO,
            Wait::Until(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
            Wait::Forever => SLICE,
        }
    }
}

/// Why a send or a loan gave up.
enum Failed {
    /// No room (in time).
    Full,
    Send(SendError),
    /// A failure added to the library's non-exhaustive enums later.
    Other(String),
}

impl Failed {
    fn from_try(e: TrySendError) -> Self {
        match e {
            TrySendError::Full => Failed::Full,
            TrySendError::Send(e) => Failed::Send(e),
            e => Failed::Other(e.to_string()),
        }
    }

    fn from_timeout(e: SendTimeoutError) -> Self {
        match e {
            SendTimeoutError::Timeout => Failed::Full,
            SendTimeoutError::Send(e) => Failed::Send(e),
            e => Failed::Other(e.to_string()),
        }
    }

    /// The Python exception: `Full` is a wait that ran out
    /// (`ChannelTimeout`, `then` appended to its message).
    fn raise(self, py: Python<'_>, p: &dyn Produce, channel: &str, then: &str) -> PyErr {
        match self {
            Failed::Full => {
                let why = p
                    .full_reason()
                    .map_or_else(String::new, |r| format!(" (full: {r})"));
                errors::new(
                    py,
                    Exc::ChannelTimeout,
                    format!("timed out waiting for room in channel \"{channel}\"{why}{then}"),
                )
            }
            Failed::Send(e) => send_error(py, e),
            Failed::Other(m) => errors::new(py, Exc::Blob, m),
        }
    }
}

/// The bytes of one message: `header`, then the bytes of an export.
struct Payload<'a> {
    header: &'a [u8],
    body: &'a Layout,
    /// The whole message as one slice, when it is one (no header, a
    /// C-contiguous export).
    whole: Option<&'a [u8]>,
}

impl<'a> Payload<'a> {
    /// The bytes of `input`.
    fn of(input: &'a Input) -> Self {
        Payload {
            header: &[],
            body: input.layout(),
            whole: input.contiguous(),
        }
    }

    /// `header`, then the bytes of `input` in C order.
    fn with_header(header: &'a [u8], input: &'a Input) -> Self {
        Payload {
            header,
            body: input.layout(),
            whole: None,
        }
    }

    fn len(&self) -> usize {
        self.header.len() + self.body.len()
    }

    /// Writes the message into `dst`, exactly [`len`](Self::len) bytes.
    ///
    /// # Safety
    /// The export `body` came from must be alive for the whole call.
    unsafe fn write(&self, dst: &mut [u8]) {
        let (head, rest) = dst.split_at_mut(self.header.len());
        head.copy_from_slice(self.header);
        // SAFETY: the caller's contract.
        unsafe { buffer::gather(self.body, rest) };
    }
}

/// Publishes a filled loan as `wait` allows.
fn publish(loan: sfb::Loan, wait: Wait) -> Result<(), Failed> {
    match wait {
        Wait::Never => loan.try_send().map_err(Failed::from_try),
        Wait::Until(d) => loan
            .send_timeout(d.saturating_duration_since(Instant::now()))
            .map_err(Failed::from_timeout),
        Wait::Forever => loan.send().map_err(Failed::Send),
    }
}

/// A loan of `len` bytes as `wait` allows: `None` if the channel is full
/// and `wait` is `Never`; a wait that runs out raises `ChannelTimeout`.
/// Tried once at first, with the GIL held for a ring slot (cheap), released
/// for store space (which may map a chunk); then waited for with the GIL
/// released, in slices, running signal handlers between them.
fn take_loan(
    py: Python<'_>,
    p: &dyn Produce,
    channel: &str,
    len: usize,
    wait: Wait,
) -> PyResult<Option<sfb::Loan>> {
    let mut r = if len <= p.inline_capacity() {
        p.try_loan(len)
    } else {
        py.detach(|| p.try_loan(len))
    }
    .map_err(Failed::from_try);
    loop {
        match r {
            Ok(loan) => return Ok(Some(loan)),
            Err(Failed::Full) if matches!(wait, Wait::Never) => return Ok(None),
            Err(Failed::Full) if !wait.over() => {}
            Err(f) => return Err(f.raise(py, p, channel, "")),
        }
        r = py
            .detach(|| p.loan_timeout(len, wait.slice()))
            .map_err(Failed::from_timeout);
        if matches!(r, Err(Failed::Full)) {
            py.check_signals()?;
        }
    }
}

/// Sends one message as `wait` allows: `Ok(false)` if the channel is full
/// and `wait` is `Never`; a wait that runs out raises `ChannelTimeout`.
///
/// A message that fits a ring slot is copied there (a cheap copy: tried
/// once with the GIL held, then waited for with the GIL released, in
/// slices, running signal handlers between them). A larger one in one
/// piece, below [`buffer::PARALLEL_MIN`], goes to the library's own send,
/// with the GIL released: it streams the copy into large chunks
/// (non-temporal stores), twice as fast at 1 MiB as a loan filled by
/// `memcpy`. Its wait is one call, not slices (a retry would append the
/// bytes again). Any other (a header before it, strided, or so large that
/// the copy is split between threads) is written straight into a loan of
/// store space with the GIL released, the loan waited for in slices, then
/// published.
/// Largest message copied into a slot with the GIL held (a few
/// microseconds of copy).
const GIL_HELD_MAX: usize = 64 << 10;

fn send_payload(
    py: Python<'_>,
    p: &dyn Produce,
    channel: &str,
    msg: &Payload<'_>,
    wait: Wait,
) -> PyResult<bool> {
    let len = msg.len();
    // Small inline messages are sent with the GIL held (letting go of it
    // costs more than their copy); a larger one, inline or not, is copied
    // with the GIL released, so other Python threads run meanwhile.
    let result = if len <= p.inline_capacity().min(GIL_HELD_MAX) {
        let gathered: Vec<u8>;
        let data: &[u8] = match msg.whole {
            Some(data) => data,
            None => {
                let mut tmp = vec![0u8; len];
                // SAFETY: the caller holds the export for the whole call.
                unsafe { msg.write(&mut tmp) };
                gathered = tmp;
                &gathered
            }
        };
        let mut r = p.try_send(data).map_err(Failed::from_try);
        while matches!(r, Err(Failed::Full)) && !wait.over() {
            r = py
                .detach(|| p.send_timeout(data, wait.slice()))
                .map_err(Failed::from_timeout);
            if matches!(r, Err(Failed::Full)) {
                py.check_signals()?;
            }
        }
        r
    } else if let Some(data) = msg.whole.filter(|d| d.len() < buffer::PARALLEL_MIN) {
        py.detach(|| match wait {
            Wait::Never => p.try_send(data).map_err(Failed::from_try),
            Wait::Until(d) => p
                .send_timeout(data, d.saturating_duration_since(Instant::now()))
                .map_err(Failed::from_timeout),
            Wait::Forever => p.send(data).map_err(Failed::Send),
        })
    } else {
        let Some(mut loan) = take_loan(py, p, channel, len, wait)? else {
            return Ok(false);
        };
        py.detach(|| {
            // SAFETY: the caller holds the export for the whole call.
            unsafe { msg.write(&mut loan) };
            publish(loan, wait)
        })
    };
    match result {
        Ok(()) => Ok(true),
        Err(Failed::Full) if matches!(wait, Wait::Never) => Ok(false),
        Err(f) => Err(f.raise(py, p, channel, "")),
    }
}

/// `send_array`: the array's header (see `array.rs`), then its elements in
/// C order, gathered on the way if it is not C-contiguous.
fn send_array(
    py: Python<'_>,
    p: &dyn Produce,
    channel: &str,
    arr: &Bound<'_, PyAny>,
    wait: Wait,
) -> PyResult<bool> {
    let not_array = |_| {
        PyTypeError::new_err(format!(
            "send_array takes a numpy array (with dtype and shape), got {}",
            arr.get_type()
        ))
    };
    let dtype_str: String = arr
        .getattr("dtype")
        .and_then(|d| d.getattr("str"))
        .and_then(|s| s.extract())
        .map_err(not_array)?;
    let shape: Vec<usize> = arr
        .getattr("shape")
        .and_then(|s| s.extract())
        .map_err(not_array)?;
    let Some(dtype) = array::dtype(&dtype_str) else {
        return Err(PyTypeError::new_err(format!(
            "send_array carries arrays of bool, int8 to int64, uint8 to uint64, float16/32/64 \
             and complex64/128, not of dtype {dtype_str:?}; send its bytes with send()"
        )));
    };
    let input = Input::new(arr)?;
    let header = array::header(dtype, &shape, input.len()).map_err(PyValueError::new_err)?;
    send_payload(py, p, channel, &Payload::with_header(&header, &input), wait)
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
    let deadline = timeout.map(deadline).transpose()?;
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

pub(crate) fn disconnected(py: Python<'_>) -> PyErr {
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
                let input = Input::new(obj)?;
                send_payload(
                    py,
                    &*p,
                    &self.open.name,
                    &Payload::of(&input),
                    Wait::Forever,
                )?;
                Ok(())
            }

            /// Sends if the channel has room now; `False` if it is full.
            fn try_send(&self, py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<bool> {
                let p = self.open.get(py)?;
                let input = Input::new(obj)?;
                send_payload(py, &*p, &self.open.name, &Payload::of(&input), Wait::Never)
            }

            /// Sends the bytes of `obj`, waiting at most `timeout` seconds
            /// for room; then raises `ChannelTimeout` (nothing was sent).
            fn send_timeout(
                &self,
                py: Python<'_>,
                obj: &Bound<'_, PyAny>,
                timeout: f64,
            ) -> PyResult<()> {
                let wait = Wait::Until(deadline(timeout)?);
                let p = self.open.get(py)?;
                let input = Input::new(obj)?;
                send_payload(py, &*p, &self.open.name, &Payload::of(&input), wait)?;
                Ok(())
            }

            /// Sends the bytes of `obj` from a coroutine: awaitable, done
            /// when the message is sent. A message that fits now is sent at
            /// once; otherwise it is copied, and the wait for room leaves
            /// the event loop and the GIL free. Cancelled, it sent nothing.
            fn send_async<'py>(
                &self,
                py: Python<'py>,
                obj: &Bound<'py, PyAny>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let p = self.open.get(py)?;
                let input = Input::new(obj)?;
                let msg = Payload::of(&input);
                if send_payload(py, &*p, &self.open.name, &msg, Wait::Never)? {
                    return crate::aio::done(py, py.None());
                }
                let mut data = vec![0u8; msg.len()];
                // SAFETY: `input` holds the export for the whole call.
                unsafe { msg.write(&mut data) };
                let fut = p.send_async_owned(data);
                crate::aio::drive(py, crate::aio::Op::Send(fut, self.open.name.clone()))
            }

            /// Sends numpy array `arr` with its dtype and shape, for
            /// `Message.array()` to view on receipt; waits for room at most
            /// `timeout` seconds (None: no limit), then raises
            /// `ChannelTimeout`.
            #[pyo3(signature = (arr, timeout = None))]
            fn send_array(
                &self,
                py: Python<'_>,
                arr: &Bound<'_, PyAny>,
                timeout: Option<f64>,
            ) -> PyResult<()> {
                let wait = Wait::from_timeout(timeout)?;
                let p = self.open.get(py)?;
                send_array(py, &*p, &self.open.name, arr, wait)?;
                Ok(())
            }

            /// A writable buffer of `nbytes` in shared memory, published
            /// without a copy by `Loan.send()`; waits for room at most
            /// `timeout` seconds (None: no limit), then raises
            /// `ChannelTimeout`.
            #[pyo3(signature = (nbytes, timeout = None))]
            fn loan(&self, py: Python<'_>, nbytes: usize, timeout: Option<f64>) -> PyResult<Loan> {
                let wait = Wait::from_timeout(timeout)?;
                let p = self.open.get(py)?;
                match take_loan(py, &*p, &self.open.name, nbytes, wait)? {
                    Some(loan) => Ok(Loan::new(loan, p, &self.open.name)),
                    None => Err(errors::new(py, Exc::Blob, "no loan from a blocking call")),
                }
            }

            /// A loan if the channel has room now, else `None`.
            fn try_loan(&self, py: Python<'_>, nbytes: usize) -> PyResult<Option<Loan>> {
                let p = self.open.get(py)?;
                let loan = take_loan(py, &*p, &self.open.name, nbytes, Wait::Never)?;
                Ok(loan.map(|loan| Loan::new(loan, p, &self.open.name)))
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

            /// The next message, from a coroutine: awaitable; raises as
            /// `recv` does (without a timeout: wrap it in
            /// `asyncio.wait_for`). The wait leaves the event loop and the
            /// GIL free; cancelled, it received nothing.
            fn recv_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                let c = self.open.get(py)?;
                crate::aio::drive(py, crate::aio::Op::Recv(c.stream()))
            }

            fn __aiter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
                slf
            }

            /// `async for`: the next message, passing over expired and
            /// lagged ones as iteration does; the end at disconnection.
            fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                let c = self.open.get(py)?;
                crate::aio::drive(py, crate::aio::Op::Next(c.stream()))
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
    pub(crate) fn new(m: sfb::Message) -> Self {
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

    /// The numpy array `send_array` sent, zero-copy and read-only: it views
    /// the message's memory and keeps the message alive (and unreleasable)
    /// while it lives. `NotAnArrayError` if the message was not sent by
    /// `send_array`.
    fn array<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let meta = slf
            .get()
            .pinned
            .with("message", |m| array::read(m.as_slice()))?
            .map_err(|e| match e {
                NotArray::NoHeader => errors::new(
                    py,
                    Exc::NotAnArray,
                    "the message was not sent by send_array (it has no array header); read its \
                     bytes with numpy.frombuffer(msg, dtype) or memoryview(msg)",
                ),
                NotArray::Bad(why) => errors::new(
                    py,
                    Exc::NotAnArray,
                    format!("the message's array header is inconsistent: {why}"),
                ),
            })?;
        let numpy = py.import("numpy")?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("dtype", meta.dtype)?;
        kwargs.set_item("count", meta.count)?;
        kwargs.set_item("offset", meta.offset)?;
        // Zero-copy: the array's base is an export of the message.
        let flat = numpy.call_method("frombuffer", (slf,), Some(&kwargs))?;
        flat.call_method1("reshape", (PyTuple::new(py, &meta.shape)?,))
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

/// How a loan ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Sent,
    Discarded,
    /// Its send failed (or timed out): discarded.
    Failed,
}

impl End {
    fn describe(self) -> &'static str {
        match self {
            End::Sent => "the loan was sent: its bytes belong to the channel now",
            End::Discarded => "the loan was discarded (closed, or its with block raised)",
            End::Failed => "sending the loan failed, and it was discarded",
        }
    }
}

struct LoanState {
    /// The library's loan, and the endpoint it came from (for the message
    /// of a timeout); `None` once sent, or once discarded with no export
    /// left: a loan that ended keeps neither the endpoint nor its channel
    /// registration alive.
    loan: Option<(sfb::Loan, Arc<dyn Produce>)>,
    /// Buffer exports alive (memoryviews, numpy arrays, ...).
    exports: usize,
    /// `None` while open.
    end: Option<End>,
}

/// A message being written in place, in shared memory: a writable buffer
/// (buffer protocol) of a fixed length, published without a copy by
/// `send()` or by leaving its `with` block without an exception. Closing
/// it, an exception in its `with` block, or dropping it unsent discards it.
/// It cannot be sent while memoryviews or arrays made from it are alive
/// (`BufferError`): they would write into a message already published.
#[pyclass(frozen, module = "stable_fragmented_buffer")]
pub(crate) struct Loan {
    state: Mutex<LoanState>,
    channel: String,
    len: usize,
    inline: bool,
}

impl Loan {
    fn new(loan: sfb::Loan, producer: Arc<dyn Produce>, channel: &str) -> Self {
        Loan {
            len: loan.len(),
            inline: loan.is_inline(),
            state: Mutex::new(LoanState {
                loan: Some((loan, producer)),
                exports: 0,
                end: None,
            }),
            channel: channel.to_owned(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LoanState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the loan unsent (if it is open): the library's loan is dropped,
    /// giving its space back, now or at the release of the last export.
    fn discard(&self) {
        let dropped = {
            let mut st = self.lock();
            if st.end.is_none() {
                st.end = Some(End::Discarded);
            }
            if st.exports == 0 {
                st.loan.take()
            } else {
                None
            }
        };
        drop(dropped);
    }
}

#[pymethods]
impl Loan {
    /// # Safety
    /// Called by Python's buffer protocol only.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        let mut st = this.lock();
        let open = if st.end.is_none() {
            st.loan.as_mut()
        } else {
            None
        };
        let Some((loan, _)) = open else {
            let why = st.end.map_or("the loan is gone", End::describe);
            return Err(PyBufferError::new_err(format!(
                "{why}; it cannot be written"
            )));
        };
        let (buf, len) = (loan.as_mut_ptr(), loan.len());
        // SAFETY: `view` is this call's Py_buffer. The loan's bytes stay
        // mapped and reserved for it (written by no one else) while the
        // library's loan is held, and it is held while the count below is
        // non-zero: `send` refuses to publish it, and a discard leaves the
        // drop to the last `__releasebuffer__`. The export holds a
        // reference to `slf`, which owns the loan.
        unsafe { buffer::export_writable(view, flags, buf, len, slf.as_any())? };
        st.exports += 1;
        Ok(())
    }

    /// # Safety
    /// Called by Python's buffer protocol only.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        let dropped = {
            let mut st = self.lock();
            st.exports = st.exports.saturating_sub(1);
            if st.exports == 0 && st.end.is_some() {
                st.loan.take()
            } else {
                None
            }
        };
        drop(dropped);
    }

    /// Publishes the loaned bytes, waiting for room in the channel at most
    /// `timeout` seconds (None: no limit); a timeout raises
    /// `ChannelTimeout` and discards the loan. Raises `BufferError` while
    /// exports of the loan are alive (delete them, then send), and
    /// `ClosedError` once the loan was sent or discarded.
    #[pyo3(signature = (timeout = None))]
    fn send(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let wait = Wait::from_timeout(timeout)?;
        let loan = {
            let mut st = self.lock();
            if let Some(end) = st.end {
                return Err(errors::new(
                    py,
                    Exc::Closed,
                    format!("cannot send: {}", end.describe()),
                ));
            }
            if st.exports > 0 {
                return Err(PyBufferError::new_err(format!(
                    "cannot send the loan: {} exported buffer(s) (memoryview, numpy array, ...) \
                     still write into its memory; delete them first",
                    st.exports
                )));
            }
            st.end = Some(End::Sent);
            st.loan.take()
        };
        let Some((loan, producer)) = loan else {
            return Err(errors::new(
                py,
                Exc::Closed,
                "cannot send: the loan is gone",
            ));
        };
        py.detach(|| publish(loan, wait)).map_err(|f| {
            self.lock().end = Some(End::Failed);
            f.raise(py, &*producer, &self.channel, "; the loan was discarded")
        })
    }

    /// Discards the loan unless it was sent (its bytes are given back once
    /// no export of it is left); a second call does nothing.
    fn close(&self) {
        self.discard();
    }

    /// Whether `send` published it.
    #[getter]
    fn sent(&self) -> bool {
        self.lock().end == Some(End::Sent)
    }

    /// Whether it was sent or discarded.
    #[getter]
    fn closed(&self) -> bool {
        self.lock().end.is_some()
    }

    /// Whether it is a ring slot (it fits `inline_capacity`) rather than
    /// store space.
    #[getter]
    fn is_inline(&self) -> bool {
        self.inline
    }

    /// Buffer exports alive (memoryviews, numpy arrays, ...).
    #[getter]
    fn exports(&self) -> usize {
        self.lock().exports
    }

    fn __len__(&self) -> usize {
        self.len
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// Sends the loan if the block ended without an exception (unless it
    /// was sent or closed in the block), else discards it. Exports alive at
    /// that point discard it and raise `BufferError`.
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if !exc_type.is_none() {
            self.discard();
            return Ok(());
        }
        let exports = {
            let st = self.lock();
            if st.end.is_some() {
                return Ok(());
            }
            st.exports
        };
        if exports > 0 {
            self.discard();
            return Err(PyBufferError::new_err(format!(
                "cannot send the loan on leaving its with block: {exports} exported buffer(s) \
                 (memoryview, numpy array, ...) still write into its memory (delete them inside \
                 the block); the loan was discarded"
            )));
        }
        self.send(py, None)
    }

    fn __repr__(&self) -> String {
        let state = match self.lock().end {
            None => "open",
            Some(End::Sent) => "sent",
            Some(End::Discarded | End::Failed) => "discarded",
        };
        format!(
            "Loan(channel={:?}, len={}, {}, {state})",
            self.channel,
            self.len,
            if self.inline { "inline" } else { "store" }
        )
    }
}
