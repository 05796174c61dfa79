//! Waiting on several consumers at once in blocking code: [`Select`].
//!
//! It uses the wake-up of a blocking receive (see `wait.rs`): each
//! endpoint is announced in its channel's waiter mask, so producers bump
//! the channel's futex word, and the thread sleeps on all the words at
//! once with `futex_waitv`. Nothing polls, but for the liveness tick that
//! a blocking receive has too (a killed producer announces nothing).

use super::consumer::Consumer;
use super::consumer::{Receiver, Subscriber};
use super::wait::{self, Source, WordKey, LIVENESS_TICK};
use crate::sync::AtomicU32;
use std::time::{Duration, Instant};

/// An endpoint a [`Select`] can wait on: a [`Subscriber`] or a
/// [`Receiver`]. Sealed.
pub trait Selectable: sealed::Sealed {
    #[doc(hidden)]
    fn waitable(&self) -> Waitable<'_>;
}

/// What a [`Select`] waits on (opaque).
#[doc(hidden)]
#[derive(Debug)]
pub struct Waitable<'a>(&'a Consumer);

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::channel::consumer::Subscriber {}
    impl Sealed for crate::channel::consumer::Receiver {}
}

impl Selectable for Subscriber {
    fn waitable(&self) -> Waitable<'_> {
        Waitable(self.inner())
    }
}

impl Selectable for Receiver {
    fn waitable(&self) -> Waitable<'_> {
        Waitable(self.inner())
    }
}

/// Waits until one of several subscribers and receivers has something to
/// receive, in the manner of `crossbeam_channel::Select`.
///
/// Add endpoints with [`add`](Self::add), which numbers them from 0, then
/// wait with [`ready`](Self::ready), [`try_ready`](Self::try_ready) or
/// [`ready_timeout`](Self::ready_timeout). The index returned is of an
/// endpoint whose next `try_recv` will not return `Empty`: it has a
/// message, or an error to report (disconnected, lagged, expired, or too
/// many held). For a work queue, another receiver (in this process or
/// another) may take the message first; a subscriber's messages are its
/// own. Endpoints that are ready at once are taken in turn, so a busy one
/// does not hide the others.
///
/// ```
/// # use stable_fragmented_buffer::*;
/// # let ns = format!("sfbdoc-select-{}", std::process::id());
/// let store = PinnedBlobStore::new_shared(Config::default(), &ns, 1 << 20)?;
/// let jobs = store.receiver("jobs")?;
/// let news = store.subscriber("news")?;
/// store.publisher("news")?.send(b"hello")?;
///
/// let mut select = Select::new();
/// let j = select.add(&jobs);
/// let n = select.add(&news);
/// let i = select.ready();
/// assert_eq!(i, n);
/// assert_eq!(&*news.try_recv()?, b"hello");
/// # let _ = j;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct Select<'a> {
    sources: Vec<&'a Consumer>,
    /// Where the next look starts (turns, for fairness).
    next: usize,
}

impl<'a> Select<'a> {
    /// An empty selection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an endpoint; returns its index (0 for the first one added).
    pub fn add<E: Selectable>(&mut self, endpoint: &'a E) -> usize {
        self.sources.push(endpoint.waitable().0);
        self.sources.len() - 1
    }

    /// The index of an endpoint that is ready now, if one is (dead
    /// participants are looked for once per tick, as `try_recv` does).
    pub fn try_ready(&mut self) -> Option<usize> {
        self.first_ready().or_else(|| {
            for s in &self.sources {
                s.tick();
            }
            self.first_ready()
        })
    }

    /// Waits until an endpoint is ready and returns its index. With no
    /// endpoint added it waits forever, as a `select!` with no arm.
    pub fn ready(&mut self) -> usize {
        loop {
            if let Some(i) = self.ready_until(None) {
                return i;
            }
        }
    }

    /// Waits at most `timeout` for an endpoint to be ready; `None` if none
    /// was.
    pub fn ready_timeout(&mut self, timeout: Duration) -> Option<usize> {
        match Instant::now().checked_add(timeout) {
            Some(d) => self.ready_until(Some(d)),
            None => Some(self.ready()),
        }
    }

    fn first_ready(&mut self) -> Option<usize> {
        let n = self.sources.len();
        let start = self.next;
        let i = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.sources[i].ready())?;
        self.next = (i + 1) % n;
        Some(i)
    }

    /// One round: ready now, or announced, asleep on every word until one
    /// moves, the tick or the deadline, then ready or `None`.
    fn ready_until(&mut self, deadline: Option<Instant>) -> Option<usize> {
        loop {
            if let Some(i) = self.try_ready() {
                return Some(i);
            }
            let mut tick = LIVENESS_TICK;
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    return None;
                }
                tick = tick.min(d - now);
            }
            let seen: Vec<u32> = self.sources.iter().map(|s| s.announce()).collect();
            let found = self.first_ready();
            if found.is_none() {
                // One wait per channel: its endpoints here map one word at
                // several addresses.
                let mut keys: Vec<WordKey> = Vec::with_capacity(seen.len());
                let mut words: Vec<(&AtomicU32, u32)> = Vec::with_capacity(seen.len());
                for (s, v) in self.sources.iter().zip(&seen) {
                    if !keys.contains(&s.key()) {
                        keys.push(s.key());
                        words.push((s.word(), *v));
                    }
                }
                wait::wait_any(&words, tick);
            }
            for s in &self.sources {
                s.withdraw();
            }
            if found.is_some() {
                return found;
            }
            if deadline.is_none() {
                // `ready` loops; give it a chance to look again first.
                return self.try_ready();
            }
        }
    }
}
