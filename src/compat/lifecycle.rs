//! The lifecycle thread: runs reclamation passes at an interval, holds its
//! target weakly (so it never keeps a store alive), stops by itself when the
//! store is dropped, and can be stopped and joined explicitly.

pub use crate::maintain::Maintain;
use crate::store::PinnedBlobStore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// Runs reclamation passes on one store (held weakly) and counts them.
pub struct LifecycleManager {
    target: Weak<dyn Maintain>,
    cycles: AtomicU64,
    reclaimed: AtomicU64,
}

impl std::fmt::Debug for LifecycleManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LifecycleManager")
            .field("cycles", &self.cycles())
            .field("reclaimed", &self.reclaimed())
            .finish_non_exhaustive()
    }
}

impl LifecycleManager {
    /// A manager of `store` (held weakly: it never keeps the store alive).
    pub fn new(store: &Arc<PinnedBlobStore>) -> Self {
        Self::for_target(store.maintenance_target())
    }

    /// A manager of any [`Maintain`] target, e.g. a backend's
    /// `maintenance_target()`.
    pub fn for_target(target: Weak<dyn Maintain>) -> Self {
        Self {
            target,
            cycles: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
        }
    }

    /// Runs one pass; returns the chunks it reclaimed (0 once the store is
    /// gone).
    pub fn maintenance_cycle(&self) -> usize {
        let Some(target) = self.target.upgrade() else {
            return 0;
        };
        let n = target.maintain();
        // `reclaimed` first: whoever sees a cycle counted sees its chunks.
        self.reclaimed.fetch_add(n as u64, Ordering::Release);
        // Release: pairs with the Acquire load in `cycles`.
        self.cycles.fetch_add(1, Ordering::Release);
        n
    }

    /// Passes run so far.
    pub fn cycles(&self) -> u64 {
        self.cycles.load(Ordering::Acquire)
    }

    /// Chunks reclaimed so far.
    pub fn reclaimed(&self) -> u64 {
        self.reclaimed.load(Ordering::Acquire)
    }

    /// Starts a thread that runs a pass every `interval` until the store is
    /// dropped (the original crate's signature; [`start`](Self::start)
    /// also returns a handle that can stop and join it).
    pub fn start_background_cleanup(self, interval: Duration) {
        let _detached = self.start(interval);
    }

    /// Starts a thread that runs a pass every `interval` until the store is
    /// dropped or [`CleanupHandle::stop`] is called. Dropping the handle
    /// leaves the thread running.
    pub fn start(self, interval: Duration) -> CleanupHandle {
        let manager = Arc::new(self);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (m, s) = (Arc::clone(&manager), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("sfb-lifecycle".into())
            .spawn(move || loop {
                {
                    let (lock, cv) = &*s;
                    let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                    if !*stopped {
                        stopped = cv
                            .wait_timeout(stopped, interval)
                            .map(|(g, _)| g)
                            .unwrap_or_else(|e| e.into_inner().0);
                    }
                    if *stopped {
                        return;
                    }
                }
                if m.target.strong_count() == 0 {
                    return;
                }
                m.maintenance_cycle();
            })
            .ok();
        CleanupHandle {
            manager,
            stop,
            thread,
        }
    }
}

/// Controls a lifecycle thread. Dropping the handle leaves the thread
/// running until its store is dropped; [`stop`](Self::stop) ends it now.
#[derive(Debug)]
pub struct CleanupHandle {
    manager: Arc<LifecycleManager>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl CleanupHandle {
    /// Stops the thread and waits for it to finish its current pass.
    pub fn stop(mut self) {
        self.signal_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Whether the thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// The manager (its counters).
    pub fn manager(&self) -> &LifecycleManager {
        &self.manager
    }

    fn signal_stop(&self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }
}

/// Background reclamation for a store held in an `Arc`.
pub trait BlobStoreLifecycleExt {
    /// Starts a thread that runs a reclamation pass every `interval`; it
    /// stops when the store is dropped (the original crate's signature).
    fn start_cleanup(&self, interval: Duration);

    /// Like [`start_cleanup`](Self::start_cleanup), returning a handle whose
    /// [`stop`](CleanupHandle::stop) ends the thread and joins it.
    fn start_cleanup_thread(&self, interval: Duration) -> CleanupHandle;
}

impl BlobStoreLifecycleExt for Arc<PinnedBlobStore> {
    fn start_cleanup(&self, interval: Duration) {
        LifecycleManager::new(self).start_background_cleanup(interval);
    }

    fn start_cleanup_thread(&self, interval: Duration) -> CleanupHandle {
        LifecycleManager::new(self).start(interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(AtomicU64);
    impl Maintain for Counter {
        fn maintain(&self) -> usize {
            self.0.fetch_add(1, Ordering::Relaxed);
            1
        }
    }

    #[test]
    fn runs_until_stopped_and_joins() {
        let target: Arc<dyn Maintain> = Arc::new(Counter(AtomicU64::new(0)));
        let h =
            LifecycleManager::for_target(Arc::downgrade(&target)).start(Duration::from_millis(1));
        while h.manager().cycles() < 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(h.is_running());
        assert!(h.manager().reclaimed() >= 3);
        h.stop();
    }

    #[test]
    fn exits_when_the_target_is_dropped() {
        let target: Arc<dyn Maintain> = Arc::new(Counter(AtomicU64::new(0)));
        let h =
            LifecycleManager::for_target(Arc::downgrade(&target)).start(Duration::from_millis(1));
        drop(target);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while h.is_running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!h.is_running());
    }
}
