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
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant};

/// The process's helper.
struct Reactor {
    state: Mutex<State>,
    /// Bumped (and woken) when the registrations or users change.
    control: AtomicU32,
}

#[derive(Default)]
struct State {
    /// The registrations, by channel word.
    groups: HashMap<WordKey, Group>,
    next_id: u64,
    /// Endpoints that used async and live.
    users: usize,
    /// Whether the helper thread runs (for this process: see `epoch`).
    running: bool,
    /// Fork epoch the state belongs to: a fork child has no helper thread,
    /// whatever the state it inherited says.
    epoch: u32,
}

/// The registrations on one channel word (at most one per endpoint, so
/// few: a channel has at most 32 consumers and 32 producers).
struct Group {
    /// Whose mapping of the word the helper waits on, and whose liveness
    /// work it runs once per tick for the whole group.
    src: Arc<dyn Source>,
    regs: Vec<Reg>,
}

struct Reg {
    id: u64,
    src: Arc<dyn Source>,
    seen: u32,
    waker: Waker,
}

fn reactor() -> &'static Reactor {
    static R: OnceLock<Reactor> = OnceLock::new();
    R.get_or_init(|| Reactor {
        state: Mutex::new(State::default()),
        control: AtomicU32::new(0),
    })
}

impl Reactor {
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = crate::fork::epoch();
        if st.epoch != epoch {
            // Inherited through fork: the parent's registrations are its
            // own (their wakers belong to its runtimes), and no helper runs
            // here.
            std::mem::forget(std::mem::take(&mut st.groups));
            *st = State {
                epoch,
                ..State::default()
            };
        }
        st
    }

    /// Lets the helper look again (a registration or a user changed).
    fn poke(&self) {
        self.control.fetch_add(1, Ordering::SeqCst);
        crate::os::futex_wake_all(&self.control);
    }
}

/// Held by an endpoint that used async: while any lives, the helper may
/// keep running (asleep when nothing waits).
#[derive(Debug)]
pub(crate) struct User(());

impl User {
    pub(crate) fn new() -> Self {
        reactor().lock().users += 1;
        User(())
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let r = reactor();
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
#[derive(Debug)]
pub(crate) struct Registration {
    id: u64,
    key: WordKey,
}

impl Registration {
    /// Registers `src`, whose word read `seen` when it was announced, to
    /// wake `waker` when the word moves or the tick finds it ready. Starts
    /// the helper if it does not run. `None` if no thread could be started
    /// (the caller then wakes itself after a tick).
    pub(crate) fn new(src: Arc<dyn Source>, seen: u32, waker: &Waker) -> Option<Self> {
        let r = reactor();
        let mut st = r.lock();
        if !st.running {
            let spawned = std::thread::Builder::new()
                .name("sfb-async".into())
                .spawn(run)
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
        Some(Self { id, key })
    }
}

impl Registration {
    /// Whether the registration still waits (the helper has not woken it);
    /// if so, `waker` is now the one it wakes.
    pub(crate) fn renew(&self, waker: &Waker) -> bool {
        let mut st = reactor().lock();
        let reg = st
            .groups
            .get_mut(&self.key)
            .and_then(|g| g.regs.iter_mut().find(|r| r.id == self.id));
        match reg {
            Some(r) => {
                if !r.waker.will_wake(waker) {
                    r.waker = waker.clone();
                }
                true
            }
            None => false,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Not poked: a registration the helper still waits on only makes
        // it look once more when its word moves.
        let mut st = reactor().lock();
        let mut gone = None;
        if let Some(g) = st.groups.get_mut(&self.key) {
            if let Some(i) = g.regs.iter().position(|r| r.id == self.id) {
                gone = Some(g.regs.swap_remove(i));
            }
            if g.regs.is_empty() {
                let g = st.groups.remove(&self.key);
                drop(st);
                drop(g); // outside the lock: it may hold the last reference
                drop(gone);
                return;
            }
        }
        drop(st);
        drop(gone);
    }
}

/// The helper thread.
fn run() {
    let r = reactor();
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
            // Once per channel word and tick: its liveness work, and if
            // that says so, a look at who is ready without the word having
            // moved.
            let look = tick && g.src.tick();
            let mut i = 0;
            while i < g.regs.len() {
                let reg = &g.regs[i];
                if reg.src.word().load(Ordering::SeqCst) != reg.seen || (look && reg.src.ready()) {
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
        drop(st);
        // Wakers and the last references of sources outside the lock: a
        // waker may take another lock, and a source may be the last
        // reference to its endpoint's state.
        for reg in woken.drain(..) {
            reg.waker.wake();
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
