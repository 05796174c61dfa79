//! Futures and streams of the endpoints (feature `async`): receive, send
//! and a `Stream`, for any executor.
//!
//! A future tries its operation; if it would wait, it announces itself in
//! the channel's waiter mask (as a blocking waiter does), checks once
//! more, and registers with the process's async helper (`reactor.rs`),
//! which wakes it when the channel's futex word moves or its liveness tick
//! finds it ready. A wake-up only makes the future try again, so a
//! dropped future has taken nothing: a receive that returned `Pending`
//! received nothing, and a send either returned `Ready` having sent, or
//! sent nothing.

use super::consumer::{Message, Receiver, Subscriber};
use super::error::SendError;
use super::error::{RecvError, TryRecvError, TrySendError};
use super::producer::{Publisher, Sender};
use super::reactor::{AsyncPart, Registration};
use super::wait::Source;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A future's wait: announced in the mask, and registered with the helper.
#[derive(Debug)]
struct Waiting {
    src: Arc<dyn Source>,
    reg: Option<Registration>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // Out of the helper first, then out of the mask.
        self.reg = None;
        self.src.withdraw();
    }
}

/// One poll of an operation that may wait: `op` is tried; if it would
/// wait, the task is announced and registered (after one more look, so a
/// message or room that came meanwhile is not slept through).
fn poll_op<T>(
    waiting: &mut Option<Waiting>,
    src: &Arc<dyn Source>,
    cx: &mut Context<'_>,
    mut op: impl FnMut() -> Option<T>,
) -> Poll<T> {
    // Polled while still registered (by a `select!`, or a join that polls
    // everything it holds): the helper will wake the task when the word
    // moves, so there is nothing to look at yet.
    if let Some(Waiting { reg: Some(r), .. }) = waiting.as_ref() {
        if r.renew(cx.waker()) {
            return Poll::Pending;
        }
    }
    // The wait is over (woken): look afresh.
    *waiting = None;
    for look in 0..2 {
        if let Some(x) = op() {
            return Poll::Ready(x);
        }
        let seen = src.announce();
        let mut w = Waiting {
            src: Arc::clone(src),
            reg: None,
        };
        // Ready after announcing: something came between the try and the
        // announcement; try again (once: a source that says ready while
        // its operation still waits, such as a full store, is then left to
        // the tick).
        if look == 0 && src.ready() {
            continue;
        }
        match Registration::new(Arc::clone(src), seen, cx.waker()) {
            Some(r) => w.reg = Some(r),
            // No helper thread could be started: poll again later.
            None => cx.waker().wake_by_ref(),
        }
        *waiting = Some(w);
        return Poll::Pending;
    }
    Poll::Pending
}

/// Maps what a receive found to the async result (`None`: wait).
fn received(r: Result<Message, TryRecvError>) -> Option<Result<Message, RecvError>> {
    match r {
        Ok(m) => Some(Ok(m)),
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Expired) => Some(Err(RecvError::Expired)),
        Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
        Err(TryRecvError::TooManyHeld) => Some(Err(RecvError::TooManyHeld)),
        Err(_) => Some(Err(RecvError::Disconnected)),
    }
}

/// The future of `recv_async` on a [`Subscriber`] or a
/// [`Receiver`]. Cancel-safe: dropped before it is ready,
/// it has received nothing. Once it returned `Ready`, polling it again
/// returns `Pending` (it never receives twice).
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
///
/// It holds its own reference to the endpoint's state (it does not borrow
/// the endpoint), so it can be moved to another task or kept in a struct.
pub struct RecvFuture {
    consumer: Arc<super::consumer::Consumer>,
    waiting: Option<Waiting>,
    /// Returned `Ready` (as a future: a stream goes on).
    done: bool,
}

impl RecvFuture {
    pub(crate) fn new(consumer: &Arc<super::consumer::Consumer>, part: &AsyncPart) -> Self {
        part.enter();
        Self {
            consumer: Arc::clone(consumer),
            waiting: None,
            done: false,
        }
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Message, RecvError>> {
        let src: Arc<dyn Source> = Arc::clone(&self.consumer) as Arc<dyn Source>;
        let c = &self.consumer;
        poll_op(&mut self.waiting, &src, cx, || received(c.try_recv()))
    }
}

impl Future for RecvFuture {
    type Output = Result<Message, RecvError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.done {
            return Poll::Pending;
        }
        let r = this.poll_recv(cx);
        if r.is_ready() {
            this.done = true;
        }
        r
    }
}

/// The stream of `stream()` on a [`Subscriber`] or a
/// [`Receiver`]: each message as it comes, the errors
/// that do not end a receive (`Lagged`, `Expired`, `TooManyHeld`) as `Err`
/// items, and the end when the channel is disconnected and drained.
#[derive(Debug)]
#[must_use = "streams do nothing unless polled"]
pub struct RecvStream {
    fut: RecvFuture,
    done: bool,
}

impl RecvStream {
    pub(crate) fn new(consumer: &Arc<super::consumer::Consumer>, part: &AsyncPart) -> Self {
        Self {
            fut: RecvFuture::new(consumer, part),
            done: false,
        }
    }
}

impl futures_core::Stream for RecvStream {
    type Item = Result<Message, RecvError>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.fut.poll_recv(cx) {
            Poll::Ready(Err(RecvError::Disconnected)) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures_core::FusedStream for RecvStream {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

/// The future of `send_async` on a [`Publisher`] or a
/// [`Sender`]. Cancel-safe: dropped before it is ready, it
/// has sent nothing. A message larger than the ring's inline capacity is
/// appended to the store once, on the first try; if the future is dropped
/// before it is placed, the store entry is given back.
///
/// Once it returned `Ready`, polling it again returns `Pending` (it never
/// sends twice).
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct SendFuture<'a> {
    producer: Arc<super::producer::Producer>,
    data: std::borrow::Cow<'a, [u8]>,
    waiting: Option<Waiting>,
    /// The message in the store, not yet placed in the ring.
    staged: Option<crate::handle::OverflowHandle>,
    done: bool,
}

impl<'a> SendFuture<'a> {
    pub(crate) fn new(
        producer: &Arc<super::producer::Producer>,
        data: std::borrow::Cow<'a, [u8]>,
        part: &AsyncPart,
    ) -> Self {
        part.enter();
        Self {
            producer: Arc::clone(producer),
            data,
            waiting: None,
            staged: None,
            done: false,
        }
    }
}

impl Future for SendFuture<'_> {
    type Output = Result<(), SendError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.done {
            return Poll::Pending;
        }
        let src: Arc<dyn Source> = Arc::clone(&this.producer) as Arc<dyn Source>;
        let (p, data, staged) = (&this.producer, &this.data, &mut this.staged);
        let r = poll_op(&mut this.waiting, &src, cx, || {
            match p.try_send_staged(data, staged) {
                Ok(()) => Some(Ok(())),
                Err(TrySendError::Full) => None,
                Err(TrySendError::Send(e)) => {
                    if let Some(h) = staged.take() {
                        p.unstage(h);
                    }
                    Some(Err(e))
                }
            }
        });
        if r.is_ready() {
            this.done = true;
            this.waiting = None;
        }
        r
    }
}

impl Drop for SendFuture<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.staged.take() {
            self.producer.unstage(h);
        }
    }
}

// The endpoints' async methods (here, so that the endpoints' files know
// nothing of futures).

macro_rules! consumer_async {
    ($name:ident, $open_pair:literal) => {
        impl $name {
            /// Waits for the next message without blocking the thread: the
            /// async form of [`recv`](Self::recv), for any executor (feature
            /// `async`). One helper thread per process sleeps on the futex
            /// words of every async endpoint waiting, and wakes their tasks.
            ///
            /// Cancel-safe: a future dropped before it is ready has received
            /// nothing, so no message is lost.
            ///
            /// ```
            /// # use stable_fragmented_buffer::*;
            #[doc = concat!("# let ns = format!(\"sfbdoc-ra-", stringify!($name), "-{}\", std::process::id());")]
            /// let store = PinnedBlobStore::new_shared(Config::default(), &ns, 1 << 20)?;
            #[doc = $open_pair]
            /// let waiter = std::thread::spawn(move || {
            ///     smol::block_on(async { rx.recv_async().await.map(|m| m.to_vec()) })
            /// });
            /// tx.send(b"hello")?;
            /// assert_eq!(waiter.join().unwrap()?, b"hello");
            /// # Ok::<(), Box<dyn std::error::Error>>(())
            /// ```
            pub fn recv_async(&self) -> RecvFuture {
                RecvFuture::new(self.inner(), self.async_part())
            }

            /// The messages as an async [`Stream`](futures_core::Stream)
            /// (feature `async`): each message as it comes; `Lagged`,
            /// `Expired` and `TooManyHeld` as `Err` items; the end once no
            /// producer is alive and everything sent was received.
            ///
            /// ```
            /// # use stable_fragmented_buffer::*;
            /// use smol::stream::StreamExt;
            #[doc = concat!("# let ns = format!(\"sfbdoc-st-", stringify!($name), "-{}\", std::process::id());")]
            /// let store = PinnedBlobStore::new_shared(Config::default(), &ns, 1 << 20)?;
            #[doc = $open_pair]
            /// for word in [&b"one"[..], b"two"] {
            ///     tx.send(word)?;
            /// }
            /// drop(tx); // the end of the stream, once drained
            /// let got: Vec<Vec<u8>> = smol::block_on(async {
            ///     rx.stream().map(|m| m.unwrap().to_vec()).collect().await
            /// });
            /// assert_eq!(got, [b"one".to_vec(), b"two".to_vec()]);
            /// # Ok::<(), Box<dyn std::error::Error>>(())
            /// ```
            pub fn stream(&self) -> RecvStream {
                RecvStream::new(self.inner(), self.async_part())
            }
        }
    };
}

consumer_async!(
    Subscriber,
    "let (rx, tx) = (store.subscriber(\"news\")?, store.publisher(\"news\")?);"
);
consumer_async!(
    Receiver,
    "let (rx, tx) = (store.receiver(\"jobs\")?, store.sender(\"jobs\")?);"
);

macro_rules! producer_async {
    ($name:ident, $open_pair:literal) => {
        impl $name {
            /// Sends `data`, waiting for room without blocking the thread:
            /// the async form of [`send`](Self::send), for any executor
            /// (feature `async`). The data is copied when the message is
            /// placed.
            ///
            /// Cancel-safe: a future dropped before it is ready has sent
            /// nothing; one that returned `Ok` has sent.
            ///
            /// ```
            /// # use stable_fragmented_buffer::*;
            #[doc = concat!("# let ns = format!(\"sfbdoc-sa-", stringify!($name), "-{}\", std::process::id());")]
            /// let store = PinnedBlobStore::new_shared(Config::default(), &ns, 1 << 20)?;
            #[doc = $open_pair]
            /// smol::block_on(tx.send_async(b"hello"))?;
            /// assert_eq!(&*rx.recv()?, b"hello");
            /// # Ok::<(), Box<dyn std::error::Error>>(())
            /// ```
            pub fn send_async<'a>(&self, data: &'a [u8]) -> SendFuture<'a> {
                {
                    let (p, part) = self.async_parts();
                    SendFuture::new(p, data.into(), part)
                }
            }

            /// [`send_async`](Self::send_async) of a buffer the future owns
            /// (for bindings whose buffers cannot be borrowed across a
            /// wait).
            #[doc(hidden)]
            pub fn send_async_owned(&self, data: Vec<u8>) -> SendFuture<'static> {
                {
                    let (p, part) = self.async_parts();
                    SendFuture::new(p, data.into(), part)
                }
            }
        }
    };
}

producer_async!(
    Publisher,
    "let (rx, tx) = (store.subscriber(\"news\")?, store.publisher(\"news\")?);"
);
producer_async!(
    Sender,
    "let (rx, tx) = (store.receiver(\"jobs\")?, store.sender(\"jobs\")?);"
);
