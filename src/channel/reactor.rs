//! The async helper: one thread per process that sleeps on the futex words
//! of every async endpoint waiting in the process, and wakes their tasks.
//!
//! A waiting future announces itself in its channel's waiter mask (as a
//! blocking waiter does), reads the word, checks once more, and then
//! registers here with the value it read. The helper sleeps in
//! `futex_waitv` on the registered words plus a word of its own (bumped
//! when a registration arrives); when a word moves from the value a
//! registration read, that registration's waker is woken and the
//! registration removed. Once per [`LIVENESS_TICK`] it runs each waited
//! channel's liveness work and wakes the registrations that became ready
//! without a word moving (a killed producer, a dead receiver's jobs).
//!
//! The helper starts with the first registration and stops when the last
//! endpoint that used async is dropped (endpoints hold a [`User`] token);
//! an idle process with async endpoints has a helper asleep with no
//! timeout. Wakers are woken after the helper's lock is released, so a
//! waker that takes another lock (Python's GIL) cannot deadlock with a
//! task that registers while holding it.

use super::wait::{self, Source, WordKey, LIVENESS_TICK};
use crate::sync::{AtomicU32, Ordering};
use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, Ordering as SyncOrdering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant};

/// The process's helper.
struct Reactor {
    state: Mutex<State>,
    /// Bumped (and woken) when the registrations or users change.
    control: AtomicU32,
    /// The fork epoch it belongs to (see [`reactor`]).
    epoch: u32,
}

#[derive(Default)]
struct State {
    /// The registrations, by channel word.
    groups: HashMap<WordKey, Group>,
    next_id: u64,
    /// Endpoints that used async and live.
    users: usize,
    /// Whether the helper thread runs.
    running: bool,
}

/// The registrations on one channel word (at most one per endpoint, so
/// few: a channel has at most 32 consumers and 32 producers).
struct Group {
    /// Whose mapping of the word the helper waits on, and whose liveness
    /// work it runs once per tick for the whole group: a registered one's.
    src: Arc<dyn Source>,
    regs: Vec<Reg>,
}

struct Reg {
    id: u64,
    src: Arc<dyn Source>,
    seen: u32,
    waker: Waker,
}

/// This process's reactor. A fork child gets a fresh one: it has no helper
/// thread, the parent's registrations are the parent's, and the parent's
/// lock may have been held by another thread at the fork (so the child
/// never touches it).
fn reactor() -> &'static Reactor {
    static CURRENT: AtomicPtr<Reactor> = AtomicPtr::new(std::ptr::null_mut());
    let epoch = crate::fork::epoch();
    let p = CURRENT.load(SyncOrdering::Acquire);
    // SAFETY: a non-null pointer in CURRENT came from `Box::leak` below
    // and is never freed.
    if let Some(r) = unsafe { p.as_ref() } {
        if r.epoch == epoch {
            return r;
        }
    }
    let fresh: &'static Reactor = Box::leak(Box::new(Reactor {
        state: Mutex::new(State::default()),
        control: AtomicU32::new(0),
        epoch,
    }));
    // AcqRel: publishes the fresh reactor (Release) and sees a winner's
    // (Acquire); pairs with the Acquire load above.
    match CURRENT.compare_exchange(
        p,
        fresh as *const Reactor as *mut Reactor,
        SyncOrdering::AcqRel,
        SyncOrdering::Acquire,
    ) {
        Ok(_) => fresh,
        // SAFETY: as above; another thread installed it first (and of this
        // epoch: fork leaves one thread, so both ran after the fork).
        Err(winner) => unsafe { &*winner },
    }
}

impl Reactor {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this is the reactor of the running process (a fork child
    /// inherits its parent's tokens and registrations: those leave the
    /// parent's reactor alone).
    fn current(&self) -> bool {
        self.epoch == crate::fork::epoch()
    }

    /// Lets the helper look again (a registration or a user changed).
    fn poke(&self) {
        self.control.fetch_add(1, Ordering::SeqCst);
        crate::os::futex_wake_all(&self.control);
    }
}

/// An endpoint's part in async: its token for the helper, taken on first
/// use.
#[derive(Debug, Default)]
pub(crate) struct AsyncPart {
    user: OnceLock<User>,
}

impl AsyncPart {
    pub(crate) fn enter(&self) {
        self.user.get_or_init(User::new);
    }
}

/// Held by an endpoint that used async: while any lives, the helper may
/// keep running (asleep when nothing waits).
pub(crate) struct User(&'static Reactor);

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("User")
    }
}

impl User {
    pub(crate) fn new() -> Self {
        let r = reactor();
        r.lock().users += 1;
        User(r)
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let r = self.0;
        if !r.current() {
            return; // Inherited through fork: the parent's count.
        }
        let mut st = r.lock();
        st.users = st.users.saturating_sub(1);
        let last = st.users == 0;
        drop(st);
        if last {
            r.poke();
        }
    }
}

/// A registration: dropping it removes it (the future was cancelled or
/// has been woken and polls again).
pub(crate) struct Registration {
    reactor: &'static Reactor,
    id: u64,
    key: WordKey,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .finish()
    }
}

impl Registration {
    /// Registers `src`, whose word read `seen` when it was announced, to
    /// wake `waker` when the word moves or the tick finds it ready. Starts
    /// the helper if it does not run. `None` if no thread could be started.
    pub(crate) fn new(src: Arc<dyn Source>, seen: u32, waker: &Waker) -> Option<Self> {
        let r = reactor();
        let mut st = r.lock();
        if !st.running {
            let spawned = std::thread::Builder::new()
                .name("sfb-async".into())
                .spawn(move || run(r))
                .is_ok();
            if !spawned {
                return None;
            }
            st.running = true;
        }
        let id = st.next_id;
        st.next_id += 1;
        let key = src.key();
        st.groups
            .entry(key)
            .or_insert_with(|| Group {
                src: Arc::clone(&src),
                regs: Vec::new(),
            })
            .regs
            .push(Reg {
                id,
                src,
                seen,
                waker: waker.clone(),
            });
        drop(st);
        r.poke();
        Some(Self {
            reactor: r,
            id,
            key,
        })
    }

    /// Whether the registration still waits (the helper has not woken it);
    /// if so, `waker` is now the one it wakes.
    pub(crate) fn renew(&self, waker: &Waker) -> bool {
        if !self.reactor.current() {
            return false;
        }
        let mut st = self.reactor.lock();
        let reg = st
            .groups
            .get_mut(&self.key)
            .and_then(|g| g.regs.iter_mut().find(|r| r.id == self.id));
        let old = match reg {
            None => return false,
            Some(r) if r.waker.will_wake(waker) => None,
            Some(r) => Some(std::mem::replace(&mut r.waker, waker.clone())),
        };
        drop(st);
        drop(old); // outside the lock: a waker's drop may take other locks
        true
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.reactor.current() {
            return; // Inherited through fork: the parent's.
        }
        // What leaves is dropped after the lock: it may hold the last
        // reference to an endpoint.
        let mut st = self.reactor.lock();
        let mut gone: (Option<Reg>, Option<Group>) = (None, None);
        // Whether the helper's wait holds the leaving endpoint (as its
        // group's source): then it must look again and let go of it, or
        // the endpoint would live on until the word next moves.
        let mut held = false;
        if let Some(g) = st.groups.get_mut(&self.key) {
            if let Some(i) = g.regs.iter().position(|r| r.id == self.id) {
                let reg = g.regs.swap_remove(i);
                held = Arc::ptr_eq(&g.src, &reg.src);
                if let (true, Some(next)) = (held, g.regs.first()) {
                    // The group's source must be a registered one: the
                    // leaving endpoint may be dropped next.
                    g.src = Arc::clone(&next.src);
                }
                gone.0 = Some(reg);
            }
            if g.regs.is_empty() {
                gone.1 = st.groups.remove(&self.key);
            }
        }
        drop(st);
        drop(gone);
        if held {
            self.reactor.poke();
        }
    }
}

/// The helper thread of reactor `r`.
fn run(r: &'static Reactor) {
    let mut next_tick = Instant::now() + LIVENESS_TICK;
    let mut woken: Vec<Reg> = Vec::new();
    let mut emptied: Vec<Group> = Vec::new();
    loop {
        let control = r.control.load(Ordering::SeqCst);
        let mut st = r.lock();
        if st.users == 0 && st.groups.is_empty() {
            st.running = false;
            return;
        }
        let now = Instant::now();
        let tick = now >= next_tick;
        if tick {
            next_tick = now + LIVENESS_TICK;
        }
        let mut words: Vec<(*const AtomicU32, u32)> = Vec::with_capacity(st.groups.len());
        let mut keep: Vec<Arc<dyn Source>> = Vec::with_capacity(st.groups.len());
        let mut empty: Vec<WordKey> = Vec::new();
        for (key, g) in st.groups.iter_mut() {
            // Once per channel word and tick: its liveness work; then (every
            // tick, whatever it found) a look at who is ready without the
            // word having moved, so that a wait that missed its wake-up in
            // some race ends within a tick all the same.
            if tick {
                g.src.tick();
            }
            let mut i = 0;
            while i < g.regs.len() {
                let reg = &g.regs[i];
                if reg.src.word().load(Ordering::SeqCst) != reg.seen || (tick && reg.src.ready()) {
                    woken.push(g.regs.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            match g.regs.first() {
                None => empty.push(*key),
                Some(first) => {
                    // If the word moved since `first` read it, the wait
                    // returns at once and the next look wakes whoever it
                    // concerns.
                    words.push((g.src.word() as *const AtomicU32, first.seen));
                    keep.push(Arc::clone(&g.src));
                }
            }
        }
        emptied.extend(empty.iter().filter_map(|k| st.groups.remove(k)));
        let idle = st.groups.is_empty();
        // The scan may have emptied the last group after the last endpoint
        // left: then nothing will poke the helper again, so it ends now
        // (the registrations it woke drop nothing of it).
        let end = idle && st.users == 0;
        if end {
            st.running = false;
        }
        drop(st);
        // Wakers and the last references of sources outside the lock: a
        // waker may take another lock, and a source may be the last
        // reference to its endpoint's state.
        for reg in woken.drain(..) {
            reg.waker.wake();
        }
        if end {
            return;
        }
        emptied.clear();
        let mut list: Vec<(&AtomicU32, u32)> = Vec::with_capacity(words.len() + 1);
        list.push((&r.control, control));
        for (p, v) in &words {
            // SAFETY: `p` is the word of a source in `keep`, which keeps
            // its channel mapped until after the wait.
            list.push((unsafe { &**p }, *v));
        }
        let timeout = if idle {
            Duration::from_secs(3600)
        } else {
            next_tick.saturating_duration_since(Instant::now())
        };
        wait::wait_any(&list, timeout);
        drop(keep);
    }
}
