//! asyncio: `recv_async`, `async for` and `send_async`.
//!
//! Each call returns an `asyncio.Future` of the running loop, driven by the
//! library's Rust future of the same operation. The Rust future is polled
//! on the loop's thread (with the GIL: a poll only tries the operation,
//! it never waits); when it would wait, the library's async helper thread
//! sleeps on the channel's futex word for it, and its waker schedules the
//! next poll with `loop.call_soon_threadsafe`. So no thread waits per call,
//! the GIL is free while the receive waits, and the loop never blocks.
//!
//! A cancelled (or finished) asyncio future drops its Rust future from its
//! done callback: a receive cancelled before it completed took nothing.

use crate::errors::{self, Exc};
use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;
use stable_fragmented_buffer::{RecvError, RecvStream, SendError, SendFuture};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// A Rust future an asyncio future waits on.
pub(crate) enum Op {
    /// `recv_async`: the message, or the receive's error (expired
    /// messages passed over, as `recv` does).
    Recv(RecvStream),
    /// `__anext__`: like `Recv`, but lagged messages are passed over too
    /// (as iteration does) and disconnection ends the iteration.
    Next(RecvStream),
    /// `send_async` of a message that did not fit at once.
    Send(SendFuture<'static>, String),
}

impl Op {
    fn poll(&mut self, py: Python<'_>, cx: &mut Context<'_>) -> Poll<PyResult<Py<PyAny>>> {
        let iterating = matches!(self, Op::Next(_));
        match self {
            Op::Recv(f) | Op::Next(f) => loop {
                let r = match futures_core::Stream::poll_next(Pin::new(&mut *f), cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                };
                return Poll::Ready(match r {
                    Some(Ok(m)) => Py::new(py, crate::channel::Message::new(m)).map(Py::into_any),
                    Some(Err(RecvError::Expired)) => continue,
                    Some(Err(RecvError::Lagged(_))) if iterating => continue,
                    Some(Err(RecvError::Lagged(n))) => Err(errors::lagged(py, n)),
                    Some(Err(RecvError::TooManyHeld)) => Err(errors::too_many_held(py)),
                    None if iterating => Err(PyStopAsyncIteration::new_err(())),
                    Some(Err(RecvError::Disconnected)) | None => {
                        Err(crate::channel::disconnected(py))
                    }
                    Some(Err(e)) => Err(errors::new(py, Exc::Blob, e.to_string())),
                });
            },
            Op::Send(f, channel) => match Pin::new(f).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(())) => Poll::Ready(Ok(py.None())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(send_error(py, e, channel))),
            },
        }
    }
}

fn send_error(py: Python<'_>, e: SendError, channel: &str) -> PyErr {
    match e {
        SendError::Store(e) => errors::from_blob(py, &e),
        other => errors::new(py, Exc::Blob, format!("channel \"{channel}\": {other}")),
    }
}

/// Drives one `Op` for one asyncio future: called (as `__call__`) on the
/// loop's thread to poll, and as the future's done callback to let go.
#[pyclass(module = "stable_fragmented_buffer")]
pub(crate) struct Driver {
    op: Mutex<Option<Op>>,
    event_loop: Py<PyAny>,
    future: Py<PyAny>,
}

#[pymethods]
impl Driver {
    /// Polls the operation (scheduled by its waker), or, once the asyncio
    /// future is done (finished or cancelled), drops it.
    #[pyo3(signature = (*_args))]
    fn __call__(slf: Bound<'_, Self>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<()> {
        step(&slf)
    }
}

/// Wakes a driver: schedules its next poll on its loop.
struct PyWaker(Py<Driver>);

impl Wake for PyWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        Python::attach(|py| {
            let d = self.0.bind(py);
            // A closed loop has nobody to deliver to: its futures are gone.
            let _ = d
                .borrow()
                .event_loop
                .bind(py)
                .call_method1("call_soon_threadsafe", (d,));
        });
    }
}

/// One poll, with the GIL, on the loop's thread.
fn step(d: &Bound<'_, Driver>) -> PyResult<()> {
    let py = d.py();
    let this = d.borrow();
    let future = this.future.bind(py);
    let mut op = this.op.lock().unwrap_or_else(|e| e.into_inner());
    if future.call_method0("done")?.is_truthy()? {
        // Cancelled, or this is the done callback: the Rust future goes
        // (a receive not completed took nothing).
        let gone = op.take();
        drop(op);
        py.detach(move || drop(gone));
        return Ok(());
    }
    let Some(o) = op.as_mut() else {
        return Ok(());
    };
    let waker = Waker::from(Arc::new(PyWaker(d.clone().unbind())));
    let r = o.poll(py, &mut Context::from_waker(&waker));
    drop(op);
    match r {
        Poll::Pending => Ok(()),
        Poll::Ready(Ok(v)) => future.call_method1("set_result", (v,)).map(drop),
        Poll::Ready(Err(e)) => future
            .call_method1("set_exception", (e.value(py),))
            .map(drop),
    }
}

/// An asyncio future of the running loop that `op` completes.
pub(crate) fn drive(py: Python<'_>, op: Op) -> PyResult<Bound<'_, PyAny>> {
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let future = event_loop.call_method0("create_future")?;
    let d = Bound::new(
        py,
        Driver {
            op: Mutex::new(Some(op)),
            event_loop: event_loop.unbind(),
            future: future.clone().unbind(),
        },
    )?;
    future.call_method1("add_done_callback", (&d,))?;
    step(&d)?;
    Ok(future)
}

/// An asyncio future of the running loop that is already done.
pub(crate) fn done(py: Python<'_>, value: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let future = event_loop.call_method0("create_future")?;
    future.call_method1("set_result", (value,))?;
    Ok(future)
}
