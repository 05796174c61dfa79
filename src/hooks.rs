//! Named points inside the protocol where a test can act: run code in the
//! middle of an operation (another process's step, staged in one thread),
//! or stop this process there so that a parent can kill it at a known step.
//!
//! Compiled to nothing unless the crate is built for its own unit tests or
//! with the `test-hooks` feature (which the integration tests turn on).
//! Nothing here is part of the public API's promises.

/// A step of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Point {
    /// An append reserved its entry and has not written it yet.
    Reserved,
    /// An append is copying its payload into its entry (inside the copy:
    /// the entry must not be committed yet).
    Copying,
    /// An append committed its entry and has not checked that its chunk is
    /// still in the same life.
    Committed,
    /// A rollover activated a chunk and has not published it in `active`.
    Activated,
    /// A chunk creation claimed its registry slot and has not made the file.
    CreationClaimed,
    /// A chunk creation sized and mapped its file and has not published it.
    CreationSized,
    /// A reclamation pass claimed a chunk and has not recycled or retired it.
    Claimed,
    /// A retirement marked a chunk RETIRED and has not released it.
    Retired,
    /// A namespace removal locked the control file it opened and has not
    /// checked that the name still names that file.
    RemovalLocked,
    /// A channel endpoint announced itself as a sleeper and has not yet
    /// checked whether it may sleep (a message or space that arrives now
    /// must be seen by that check).
    Parking,
}

impl Point {
    /// Every point, for tools that iterate over them.
    pub const ALL: [Point; 10] = [
        Point::Reserved,
        Point::Copying,
        Point::Committed,
        Point::Activated,
        Point::CreationClaimed,
        Point::CreationSized,
        Point::Claimed,
        Point::Retired,
        Point::RemovalLocked,
        Point::Parking,
    ];

    /// The point's name, as `SFB_TEST_STOP_AT` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Point::Reserved => "reserved",
            Point::Copying => "copying",
            Point::Committed => "committed",
            Point::Activated => "activated",
            Point::CreationClaimed => "creation-claimed",
            Point::CreationSized => "creation-sized",
            Point::Claimed => "claimed",
            Point::Retired => "retired",
            Point::RemovalLocked => "removal-locked",
            Point::Parking => "parking",
        }
    }
}

/// Environment variable: the name of a point at which this process stops
/// itself (`SIGSTOP`) the first time any thread reaches it, so that a parent
/// watching it can kill it exactly there.
pub const STOP_AT_ENV: &str = "SFB_TEST_STOP_AT";

#[cfg(any(test, feature = "test-hooks"))]
mod imp {
    use super::{Point, STOP_AT_ENV};
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::OnceLock;

    type Hook = Box<dyn FnMut(Point)>;

    thread_local! {
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Called by the protocol at `p`.
    pub(crate) fn at(p: Point) {
        // Taken out while it runs, so that the protocol steps it runs reach
        // points without re-entering it.
        if let Some(mut hook) = HOOK.with(|h| h.borrow_mut().take()) {
            hook(p);
            HOOK.with(|h| {
                let mut slot = h.borrow_mut();
                if slot.is_none() {
                    *slot = Some(hook);
                }
            });
        }
        stop_if_asked(p);
    }

    fn stop_if_asked(p: Point) {
        static WANTED: OnceLock<Option<String>> = OnceLock::new();
        static STOPPED: AtomicBool = AtomicBool::new(false);
        let wanted = WANTED.get_or_init(|| std::env::var(STOP_AT_ENV).ok());
        if wanted.as_deref() == Some(p.name()) && !STOPPED.swap(true, Ordering::SeqCst) {
            // SAFETY: raise has no memory-safety preconditions.
            unsafe { libc::raise(libc::SIGSTOP) };
        }
    }

    /// Runs `hook` at every point this thread reaches until [`clear`] (or
    /// the thread ends).
    pub fn set(hook: impl FnMut(Point) + 'static) {
        HOOK.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
    }

    /// Removes this thread's hook.
    pub fn clear() {
        HOOK.with(|h| *h.borrow_mut() = None);
    }
}

#[cfg(any(test, feature = "test-hooks"))]
pub use imp::{clear, set};

#[cfg(any(test, feature = "test-hooks"))]
pub(crate) use imp::at;

/// Called by the protocol at `p` (nothing in this build).
#[cfg(not(any(test, feature = "test-hooks")))]
#[inline(always)]
pub(crate) fn at(_p: Point) {}
