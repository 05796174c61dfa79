//! The lifecycle thread: runs reclamation passes at an interval, holds its
//! target weakly (so it never keeps a store alive), stops by itself when the
//! store is dropped, and can be stopped and joined explicitly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// Something whose chunks a lifecycle thread can reclaim.
pub trait Maintain: Send + Sync {
    /// One reclamation pass; returns the number of chunks reclaimed.
    fn maintain(&self) -> usize;
}

/// Runs maintenance passes and counts what they did.
#[derive(Debug, Default)]
pub struct LifecycleManager {
    cycles: AtomicU64,
    reclaimed: AtomicU64,
}

impl LifecycleManager {
    /// A manager with zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs one pass on `target`; returns the chunks it reclaimed.
    pub fn maintenance_cycle(&self, target: &dyn Maintain) -> usize {
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

    /// Starts a thread that runs a pass every `interval` until the target is
    /// dropped or [`CleanupHandle::stop`] is called.
    pub fn start_background_cleanup(
        self,
        target: Weak<dyn Maintain>,
        interval: Duration,
    ) -> CleanupHandle {
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
                match target.upgrade() {
                    Some(t) => {
                        m.maintenance_cycle(&*t);
                    }
                    None => return,
                }
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
        let h = LifecycleManager::new()
            .start_background_cleanup(Arc::downgrade(&target), Duration::from_millis(1));
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
        let h = LifecycleManager::new()
            .start_background_cleanup(Arc::downgrade(&target), Duration::from_millis(1));
        drop(target);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while h.is_running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!h.is_running());
    }
}
