//! Helpers shared by the integration tests: a namespace per test that is
//! removed (and checked removed) on drop, and peer processes made by
//! re-executing the test binary.
#![allow(dead_code)]

use stable_fragmented_buffer::{OverflowHandle, SharedBackend};
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Prefix of every namespace the test suite creates (CI checks none is left).
pub const PREFIX: &str = "sfbt";

/// A namespace unique to this test (pid + counter), removed on drop.
pub struct Ns(pub String);

impl Ns {
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Ns(format!("{PREFIX}-{}-{n}-{tag}", std::process::id()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Files of this namespace in the shm directory.
    pub fn files(&self) -> Vec<String> {
        files_of(&self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = SharedBackend::cleanup_namespace_forced(&self.0);
        let left = self.files();
        if !std::thread::panicking() {
            assert!(left.is_empty(), "namespace {} left files: {left:?}", self.0);
        }
    }
}

pub fn shm_dir() -> std::path::PathBuf {
    std::env::var_os("SFB_SHM_DIR")
        .filter(|d| !d.is_empty())
        .map(Into::into)
        .unwrap_or_else(|| "/dev/shm".into())
}

pub fn files_of(ns: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(shm_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{ns}_")))
        .collect();
    v.sort();
    v
}

/// Default configuration with the given decay and TTL (milliseconds).
pub fn cfg(decay_ms: u64, ttl_ms: u64) -> stable_fragmented_buffer::Config {
    stable_fragmented_buffer::Config {
        decay_timeout_ms: decay_ms,
        default_ttl_ms: ttl_ms,
        ..stable_fragmented_buffer::Config::default()
    }
}

/// Deterministic payload for (seed, len): the consumer can check every byte.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn hex(h: &OverflowHandle) -> String {
    h.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> OverflowHandle {
    let mut b = [0u8; 24];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    OverflowHandle::from_array(&b)
}

/// Starts this test binary again, running only the test `entry`, with
/// `SFB_PEER_ROLE=role` and extra environment. The peer talks on stdout in
/// lines starting with "SFB " (libtest's own lines are skipped).
pub fn spawn_peer(entry: &str, role: &str, env: &[(&str, String)]) -> Peer {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        entry,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("SFB_PEER_ROLE", role)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || read_lines(out, tx));
    Peer { child, lines }
}

/// Forwards protocol lines; libtest may print its own text before ours on
/// the same line, so the marker is searched, not anchored.
fn read_lines(mut out: BufReader<ChildStdout>, tx: mpsc::Sender<String>) {
    let mut s = String::new();
    loop {
        s.clear();
        match out.read_line(&mut s) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if let Some(at) = s.find("SFB ") {
            if tx.send(s[at + 4..].trim_end().to_owned()).is_err() {
                return;
            }
        }
    }
}

/// Longest wait for a peer's next line before the test fails (no hangs).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Peer {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Peer {
    /// Next protocol line (without the "SFB " marker), or None at EOF.
    /// Panics if the peer says nothing for [`PEER_TIMEOUT`].
    pub fn line(&mut self) -> Option<String> {
        match self.lines.recv_timeout(PEER_TIMEOUT) {
            Ok(l) => Some(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("peer silent for {PEER_TIMEOUT:?}"),
        }
    }

    /// Like [`line`](Self::line) but gives up after `d`: `None` on timeout,
    /// `Some(None)` at EOF.
    pub fn line_timeout(&mut self, d: Duration) -> Option<Option<String>> {
        match self.lines.recv_timeout(d) {
            Ok(l) => Some(Some(l)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(None),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
        }
    }

    /// Waits for a line equal to `want`; panics with what came instead.
    pub fn expect(&mut self, want: &str) {
        let got = self.line();
        assert_eq!(got.as_deref(), Some(want));
    }

    /// Sends `sig` to the peer; after SIGSTOP, waits until it has really
    /// stopped (the signal is asynchronous).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        if sig == libc::SIGSTOP {
            let t = std::time::Instant::now();
            while !self.is_stopped() {
                assert!(t.elapsed() < Duration::from_secs(10), "never stopped");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Writes the line "go" to the peer's stdin (peers wait for it).
    pub fn go(&mut self) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    pub fn kill9(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Waits for the peer to exit successfully; a peer still running after
    /// [`PEER_TIMEOUT`] fails the test (and is killed by `Drop`) instead of
    /// hanging the suite.
    pub fn wait_ok(mut self) {
        let until = std::time::Instant::now() + PEER_TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "peer failed: {st}");
                return;
            }
            assert!(
                std::time::Instant::now() < until,
                "peer {} still running after {PEER_TIMEOUT:?}",
                self.child.id()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the peer has stopped itself (`SIGSTOP` at a hook point, see
    /// `hooks::STOP_AT_ENV`).
    pub fn is_stopped(&self) -> bool {
        let stat = format!("/proc/{}/stat", self.child.id());
        // The state follows the parenthesised command name.
        std::fs::read_to_string(stat).is_ok_and(|s| {
            s.rsplit_once(") ")
                .and_then(|(_, r)| r.chars().next())
                .is_some_and(|c| c == 'T' || c == 't')
        })
    }
}

/// The role this process plays if it was started by `spawn_peer`.
pub fn peer_role() -> Option<String> {
    std::env::var("SFB_PEER_ROLE").ok()
}

pub fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("peer needs {k}"))
}

/// Writes a protocol line for the parent.
pub fn say(msg: impl AsRef<str>) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    writeln!(o, "SFB {}", msg.as_ref()).unwrap();
    o.flush().unwrap();
}

/// A lossless broadcast (`Overflow::Block`), for tests that count every
/// message; otherwise the defaults.
pub fn lossless() -> stable_fragmented_buffer::ChannelConfig {
    stable_fragmented_buffer::ChannelConfig::default()
        .overflow(stable_fragmented_buffer::Overflow::Block)
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time of the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Nanoseconds this thread has been runnable: on a CPU plus waiting on a
/// run queue (`/proc/thread-self/schedstat`'s first two fields). A thread
/// that spins is runnable all along even on a loaded machine, where its CPU
/// time alone may be a fraction of the spin; a thread asleep in the kernel
/// is neither.
pub fn thread_runnable_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    s.split_whitespace()
        .take(2)
        .map(|f| f.parse::<u64>().expect("schedstat field"))
        .sum()
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
