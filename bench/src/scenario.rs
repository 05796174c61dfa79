//! Machinery shared by the multi-process scenarios (`--scenario fanout`,
//! `--scenario jobs`, `--scenario wait`): a namespace that is removed however the run ends,
//! peer processes that are killed and reaped however it ends, signals, and
//! a sampler of the namespace's shared-memory use.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Removes a namespace's files when dropped (after the store that created
/// it, which removes them itself: this catches whatever is left, e.g. when
/// the run failed before or after the store existed).
pub(crate) struct NsGuard {
    ns: String,
}

impl NsGuard {
    pub(crate) fn new(ns: &str) -> Self {
        Self { ns: ns.to_owned() }
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = stable_fragmented_buffer::SharedBackend::cleanup_namespace_forced(&self.ns);
        // Anything the library does not name as its own (it names them all,
        // but a leftover file here would be the scenario's fault).
        for p in ns_files(&self.ns) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The files of namespace `ns` in the shared-memory directory.
pub(crate) fn ns_files(ns: &str) -> Vec<PathBuf> {
    let dir = stable_fragmented_buffer::inspect::shm_dir();
    let prefix = format!("{ns}_");
    std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                name.starts_with(&prefix).then(|| e.path())
            })
            .collect()
        })
        .unwrap_or_default()
}

/// Bytes of shared memory the namespace's files occupy now
/// (`st_blocks * 512`, summed).
pub(crate) fn ns_bytes(ns: &str) -> u64 {
    ns_files(ns)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// A thread that samples [`ns_bytes`] every `every` and keeps the peak
/// (and when it was first reached).
pub(crate) struct ShmSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Sampled>>,
}

impl ShmSampler {
    pub(crate) fn start(ns: &str, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let ns = ns.to_owned();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut got = Sampled::default();
            let mut next = start;
            while !flag.load(Ordering::Relaxed) {
                let now = ns_bytes(&ns);
                if now > got.peak {
                    got.peak = now;
                    got.peak_at = start.elapsed().as_secs_f64();
                }
                got.samples += 1;
                next += every;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            got
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling.
    pub(crate) fn finish(mut self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ShmSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a [`ShmSampler`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sampled {
    /// Largest use, bytes.
    pub peak: u64,
    /// Seconds after the start when it was first reached.
    pub peak_at: f64,
    /// Samples taken.
    pub samples: u64,
}

/// Sends `sig` to process `pid`.
pub(crate) fn signal(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is one of
    // our own children (not yet reaped, so the pid is not reused).
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The peer processes of a run. Dropping it continues (SIGCONT), kills
/// (SIGKILL) and reaps every one still running, so no peer outlives a run
/// that failed.
#[derive(Default)]
pub(crate) struct Peers {
    children: Mutex<Vec<Child>>,
}

impl Peers {
    /// Starts peer `role` (see [`crate::cross::spawn_peer`]); returns its
    /// pid and stdout.
    pub(crate) fn spawn(
        &self,
        role: &str,
        env: &[(&str, String)],
    ) -> std::io::Result<(u32, BufReader<ChildStdout>)> {
        let (child, out) = crate::cross::spawn_peer(role, env)?;
        let pid = child.id();
        self.lock().push(child);
        Ok((pid, out))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Child>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until every peer has exited, at most `timeout`; returns the
    /// pids of those still running then, and of those that exited with a
    /// failure (as `(pid, status)`; a peer this run killed on purpose
    /// counts too: callers filter it out).
    pub(crate) fn wait_all(&self, timeout: Duration) -> (Vec<u32>, Vec<(u32, String)>) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut running = Vec::new();
            let mut failed = Vec::new();
            for c in self.lock().iter_mut() {
                match c.try_wait() {
                    Ok(Some(st)) if !st.success() => failed.push((c.id(), st.to_string())),
                    Ok(Some(_)) => {}
                    _ => running.push(c.id()),
                }
            }
            if running.is_empty() || Instant::now() >= deadline {
                return (running, failed);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        for c in self.lock().iter_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = signal(c.id(), libc::SIGCONT);
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Reads lines from a peer until one starts with `prefix`; returns the
/// rest of it.
pub(crate) fn await_line(
    out: &mut BufReader<ChildStdout>,
    prefix: &str,
) -> std::io::Result<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other(format!(
                "a peer process ended before saying {prefix}"
            )));
        }
        if let Some(rest) = line.trim_end().strip_prefix(prefix) {
            return Ok(rest.to_owned());
        }
    }
}

/// `--flag VALUE` of the command line, parsed.
pub fn flag_value<T: std::str::FromStr>(args: &[String], flag: &str) -> Option<T> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// Human form of nanoseconds.
pub(crate) fn ms(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} us", ns as f64 / 1e3)
    }
}

/// Human form of a byte count: MiB with one decimal.
pub(crate) fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}
