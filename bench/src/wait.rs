//! `--scenario wait`: what a blocked receiver costs, against a Unix socket.
//!
//! The parent process sends 4 KiB messages at a paced rate (absolute
//! deadlines, a plain sleep until each) to one receiver process (this
//! binary, re-executed) that blocks in `recv()`. Each message carries its
//! sequence number, the number of messages of the run and its send time
//! (CLOCK_MONOTONIC, shared by the processes of one host); the receiver
//! takes the time as soon as `recv()` returns, then reads every byte of the
//! message. Over the measured window (every message after the first 10 %,
//! up to the last), the receiver reports the one-way latency percentiles
//! and its own CPU time (user + system, `getrusage(RUSAGE_SELF)`) and
//! voluntary context switches (sleeps in the kernel), per message, and how
//! many messages it got on the CPU the sender sent them from. The sender
//! times each `send`, and the run notes what the rest of the machine used
//! meanwhile (`/proc/stat` less both processes): on a shared 2-vCPU guest
//! that decides much of the outcome.
//!
//! Two transports, interleaved run by run (the host is noisy):
//!
//! * **channel**: a broadcast `Publisher` / `Subscriber` of
//!   `ChannelConfig::default().spin(s)` (inline 4 KiB slots), for each spin
//!   `s` of the sweep: a blocked `recv` spins for `s`, then sleeps on a
//!   futex;
//! * **socket**: a Unix `SOCK_SEQPACKET` socket pair, one blocking `recv`
//!   per message (the kernel's own wait), after each channel run.
//!
//! Every figure is the median over the runs (`--repeat`); a channel row
//! meets the goal at a rate if its median CPU per message is at most the
//! socket's and its median p50 is below the socket's.

use super::channel::touch;
use super::cross::mono_ns;
use super::scenario::{await_line, NsGuard, Peers};
use super::stats::{percentile, Latency};
use super::workloads::bench_namespace;
use stable_fragmented_buffer::{
    ChannelConfig, Config, PinnedBlobStore, RecvError, DEFAULT_CHUNK_SIZE,
};
use std::io::{BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ChildStdout;
use std::time::{Duration, Instant};

/// Bytes per message (inline in a slot of `ChannelConfig::default()`).
pub const MESSAGE: usize = 4096;

/// How far behind its schedule the sender may fall and still catch up.
pub const MAX_BEHIND: Duration = Duration::from_millis(1);

const CHANNEL: &str = "wait";
const ROLE: &str = "wait-receiver";

/// What `--scenario wait` runs.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitOptions {
    /// Messages per second, one table each.
    pub rates: Vec<u32>,
    /// Seconds of sending per run, one per rate.
    pub seconds: Vec<f64>,
    /// Spins of the channel's receiver, one channel run each.
    pub spins: Vec<Duration>,
    /// Rounds of the whole sweep; every figure is the median over them.
    pub repeat: usize,
}

impl Default for WaitOptions {
    fn default() -> Self {
        Self {
            rates: vec![1_000, 10_000],
            seconds: vec![3.0, 2.0],
            spins: [0, 2, 5, 20, 100]
                .into_iter()
                .map(Duration::from_micros)
                .collect(),
            repeat: 3,
        }
    }
}

impl WaitOptions {
    /// From the command line: `--rates 1000,10000` (Hz), `--seconds 3,2`
    /// (one per rate, or one for all), `--spins 0,2,5,20,100` (µs; `us`,
    /// `µs` or `ns` suffixes accepted), `--repeat N`.
    pub fn from_args(args: &[String]) -> Result<Self, String> {
        let mut o = Self::default();
        let list = |flag: &str| -> Option<Vec<String>> {
            let i = args.iter().position(|a| a == flag)?;
            Some(
                args.get(i + 1)
                    .map(|v| {
                        v.split(',')
                            .filter(|x| !x.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        };
        if let Some(v) = list("--rates") {
            o.rates = v
                .iter()
                .map(|x| x.parse::<u32>().ok().filter(|r| *r > 0))
                .collect::<Option<_>>()
                .filter(|r: &Vec<u32>| !r.is_empty())
                .ok_or("--rates: positive messages per second, comma-separated")?;
        }
        if let Some(v) = list("--seconds") {
            o.seconds = v
                .iter()
                .map(|x| x.parse::<f64>().ok().filter(|s| s.is_finite() && *s > 0.0))
                .collect::<Option<_>>()
                .filter(|s: &Vec<f64>| !s.is_empty())
                .ok_or("--seconds: positive seconds per run, one per rate, comma-separated")?;
        }
        if o.seconds.len() == 1 {
            o.seconds = vec![o.seconds[0]; o.rates.len()];
        }
        if o.seconds.len() != o.rates.len() {
            // The defaults belong to the default rates.
            if list("--seconds").is_none() {
                o.seconds = vec![2.0; o.rates.len()];
            } else {
                return Err("--seconds: one value, or one per rate".into());
            }
        }
        if let Some(v) = list("--spins") {
            o.spins = v
                .iter()
                .map(|x| parse_spin(x))
                .collect::<Option<_>>()
                .filter(|s: &Vec<Duration>| !s.is_empty())
                .ok_or("--spins: microseconds (or 500ns, 2us), comma-separated")?;
        }
        if args.iter().any(|a| a == "--repeat") {
            o.repeat = super::scenario::flag_value(args, "--repeat")
                .filter(|n: &usize| *n > 0)
                .ok_or("--repeat: a positive number of rounds")?;
        }
        Ok(o)
    }

    /// Seconds the sweep sends for (spawning and draining add a little).
    pub fn sending_seconds(&self) -> f64 {
        let per_round: f64 = self.seconds.iter().sum::<f64>() * 2.0 * self.spins.len() as f64;
        per_round * self.repeat as f64
    }
}

fn parse_spin(x: &str) -> Option<Duration> {
    let x = x.trim();
    if let Some(n) = x.strip_suffix("ns") {
        return n.trim().parse().ok().map(Duration::from_nanos);
    }
    let us = x
        .strip_suffix("us")
        .or_else(|| x.strip_suffix("µs"))
        .unwrap_or(x);
    let us: f64 = us.trim().parse().ok()?;
    (us.is_finite() && us >= 0.0).then(|| Duration::from_nanos((us * 1e3).round() as u64))
}

/// Human form of a spin: `0`, `500 ns`, `2 µs`.
pub fn spin_label(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        "0".into()
    } else if ns % 1_000 == 0 {
        format!("{} µs", ns / 1_000)
    } else {
        format!("{ns} ns")
    }
}

/// The transport of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A broadcast channel whose subscriber spins this long before it sleeps.
    Channel(Duration),
    /// A Unix `SOCK_SEQPACKET` socket pair.
    Socket,
}

/// One run: one transport, one rate.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitRun {
    /// Round of the sweep (0-based).
    pub round: usize,
    /// Messages per second asked for.
    pub rate: u32,
    /// What carried the messages.
    pub transport: Transport,
    /// Messages sent.
    pub sent: u64,
    /// Seconds the sending took.
    pub send_secs: f64,
    /// Median time of one `send` in the sender (from the stamp to its
    /// return), ns.
    pub send_p50: u64,
    /// Messages the receiver got.
    pub received: u64,
    /// Messages the receiver missed (the sum of `Lagged(n)`).
    pub lagged: u64,
    /// Messages of the measured window.
    pub measured: u64,
    /// Receiver CPU time (user + system) over the window, ns.
    pub cpu_ns: u64,
    /// Receiver voluntary context switches (sleeps) over the window.
    pub sleeps: u64,
    /// Receiver involuntary context switches (preemptions) over the window.
    pub preemptions: u64,
    /// One-way latency over the window, ns: p50, p99, p99.9, max.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// The receiver's CPU time over its whole life, ns.
    pub receiver_total_ns: u64,
    /// Messages of the window the receiver got on the CPU the sender sent
    /// them from (a wake-up that moved it there, as a Unix socket's
    /// synchronous wake-up may, or a shared CPU).
    pub same_cpu: u64,
    /// Cores the rest of the machine kept busy meanwhile, on average
    /// (neither this process nor the receiver): the noise of a shared host.
    pub others: f64,
    /// Cores stolen by the hypervisor meanwhile, on average.
    pub steal: f64,
}

impl WaitRun {
    /// Receiver CPU per message of the window, ns.
    pub fn cpu_per_msg(&self) -> f64 {
        self.cpu_ns as f64 / self.measured.max(1) as f64
    }

    /// Receiver sleeps per message of the window.
    pub fn sleeps_per_msg(&self) -> f64 {
        self.sleeps as f64 / self.measured.max(1) as f64
    }
}

/// The whole sweep: per round, per rate, per spin, a channel run then a
/// socket run.
pub fn wait(opts: &WaitOptions) -> Result<Vec<WaitRun>, Box<dyn std::error::Error>> {
    // The sender's sleeps end within ~1 µs of their deadline rather than the
    // default 50 µs timer slack (this process only sends during a run).
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes a plain integer and touches no
    // memory of ours.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) };
    let mut runs = Vec::new();
    let total = opts.repeat * opts.rates.len() * opts.spins.len() * 2;
    let mut n = 0;
    for round in 0..opts.repeat {
        for (&rate, &secs) in opts.rates.iter().zip(&opts.seconds) {
            for &spin in &opts.spins {
                for transport in [Transport::Channel(spin), Transport::Socket] {
                    n += 1;
                    eprintln!(
                        "[{n}/{total}] round {}, {rate} Hz, {}",
                        round + 1,
                        match transport {
                            Transport::Channel(s) => format!("channel, spin {}", spin_label(s)),
                            Transport::Socket => "unix socket".into(),
                        }
                    );
                    let mut r = run(rate, secs, transport)?;
                    r.round = round;
                    // Every run, not only the medians.
                    eprintln!(
                        "    p50 {:.1} µs, p99 {:.1} µs, CPU {:.2} µs/msg, {:.2} sleeps/msg, {:.0} % on the sender's CPU, others {:.0} %",
                        r.p50 as f64 / 1e3,
                        r.p99 as f64 / 1e3,
                        r.cpu_per_msg() / 1e3,
                        r.sleeps_per_msg(),
                        r.same_cpu as f64 * 100.0 / r.measured.max(1) as f64,
                        r.others * 100.0
                    );
                    runs.push(r);
                }
            }
        }
    }
    Ok(runs)
}

/// Sends `rate` messages per second for `secs` through `send`: message `i`
/// at `i` periods after the start (a sleep until then; a sender that woke
/// late catches up, unless it fell more than [`MAX_BEHIND`] behind, when
/// the schedule starts again from now rather than send a long burst).
/// Returns the messages sent, the seconds it took and the time each `send`
/// took (ns, from the stamp to its return).
fn pace(
    rate: u32,
    secs: f64,
    mut send: impl FnMut(&[u8]) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<(u64, f64, Vec<u64>), Box<dyn std::error::Error>> {
    let total = ((rate as f64 * secs).round() as u64).max(1);
    let period = Duration::from_nanos(1_000_000_000 / rate as u64);
    let mut msg: Vec<u8> = (0..MESSAGE).map(|i| i as u8).collect();
    msg[8..16].copy_from_slice(&total.to_le_bytes());
    let mut took = Vec::with_capacity(total as usize);
    let start = Instant::now();
    let mut next = start;
    for seq in 0..total {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        msg[0..8].copy_from_slice(&seq.to_le_bytes());
        msg[24..32].copy_from_slice(&this_cpu().to_le_bytes());
        let stamp = mono_ns();
        msg[16..24].copy_from_slice(&stamp.to_le_bytes());
        send(&msg)?;
        took.push(mono_ns().saturating_sub(stamp));
        next += period;
        let now = Instant::now();
        if next + MAX_BEHIND < now {
            next = now;
        }
    }
    Ok((total, start.elapsed().as_secs_f64(), took))
}

/// A socket pair of `SOCK_SEQPACKET` (both ends close-on-exec).
fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid, writable array of two ints.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded: both descriptors are open and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_cloexec(fd: &OwnedFd, on: bool) -> std::io::Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD on a descriptor we own; no memory is passed.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The CPU time of the whole machine, seconds: busy (user, nice, system,
/// irq, softirq) and stolen by the hypervisor, from `/proc/stat`.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (
        (at(0) + at(1) + at(2) + at(5) + at(6)) as f64 / hz,
        at(7) as f64 / hz,
    )
}

/// One run, with what the rest of the machine used meanwhile: the
/// machine's busy time less this process's and the receiver's.
fn run(rate: u32, secs: f64, transport: Transport) -> Result<WaitRun, Box<dyn std::error::Error>> {
    let (busy0, steal0) = machine_cpu();
    let mine0 = usage().0;
    let t0 = Instant::now();
    let mut r = run_once(rate, secs, transport)?;
    let wall = t0.elapsed().as_secs_f64().max(1e-9);
    let (busy1, steal1) = machine_cpu();
    let mine = usage().0.saturating_sub(mine0) as f64 / 1e9;
    let receiver = r.receiver_total_ns as f64 / 1e9;
    r.others = ((busy1 - busy0) - mine - receiver).max(0.0) / wall;
    r.steal = (steal1 - steal0).max(0.0) / wall;
    Ok(r)
}

/// One run: starts the receiver, sends, and collects its report.
fn run_once(
    rate: u32,
    secs: f64,
    transport: Transport,
) -> Result<WaitRun, Box<dyn std::error::Error>> {
    let expected = ((rate as f64 * secs).round() as u64).max(1);
    match transport {
        Transport::Channel(spin) => {
            let ns = bench_namespace();
            // Dropped last: whatever the store did not remove.
            let _guard = NsGuard::new(&ns);
            let store = PinnedBlobStore::new_shared(Config::default(), &ns, DEFAULT_CHUNK_SIZE)?;
            let publisher = store.publisher_with(CHANNEL, ChannelConfig::default().spin(spin))?;
            let peers = Peers::default();
            let (_, mut out) = peers.spawn(
                ROLE,
                &[
                    ("SFB_BENCH_NS", ns.clone()),
                    ("SFB_WAIT_SPIN_NS", spin.as_nanos().to_string()),
                    ("SFB_WAIT_EXPECTED", expected.to_string()),
                ],
            )?;
            await_line(&mut out, "READY")?;
            let sending = pace(rate, secs, |m| Ok(publisher.send(m)?))?;
            drop(publisher);
            finish(&peers, &mut out, rate, transport, sending)
        }
        Transport::Socket => {
            let (mine, theirs) = seqpacket_pair()?;
            let peers = Peers::default();
            // The receiver's end, inherited by it alone: no other process is
            // started meanwhile.
            set_cloexec(&theirs, false)?;
            let spawned = peers.spawn(
                ROLE,
                &[
                    ("SFB_WAIT_FD", theirs.as_raw_fd().to_string()),
                    ("SFB_WAIT_EXPECTED", expected.to_string()),
                ],
            );
            drop(theirs);
            let (_, mut out) = spawned?;
            await_line(&mut out, "READY")?;
            let sending = pace(rate, secs, |m| {
                // SAFETY: `m` is valid for `m.len()` bytes; `mine` is open.
                let n = unsafe {
                    libc::send(
                        mine.as_raw_fd(),
                        m.as_ptr().cast(),
                        m.len(),
                        libc::MSG_NOSIGNAL,
                    )
                };
                if n == m.len() as isize {
                    Ok(())
                } else {
                    Err(format!("socket send: {}", std::io::Error::last_os_error()).into())
                }
            })?;
            drop(mine);
            finish(&peers, &mut out, rate, transport, sending)
        }
    }
}

/// Waits for the receiver (disconnected now) and parses its report.
fn finish(
    peers: &Peers,
    out: &mut BufReader<ChildStdout>,
    rate: u32,
    transport: Transport,
    (sent, send_secs, mut took): (u64, f64, Vec<u64>),
) -> Result<WaitRun, Box<dyn std::error::Error>> {
    let (running, failed) = peers.wait_all(Duration::from_secs(10));
    if !running.is_empty() {
        return Err(format!(
            "the receiver {running:?} did not finish 10 s after the sender left: a hang"
        )
        .into());
    }
    if !failed.is_empty() {
        return Err(format!("the receiver failed: {failed:?}").into());
    }
    let line = await_line(out, "RESULT ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [received, lagged, measured, cpu_ns, sleeps, preemptions, p50, p99, p999, max, receiver_total_ns, same_cpu] =
        v[..]
    else {
        return Err(format!("a malformed report: {line}").into());
    };
    if measured == 0 {
        return Err(format!("the receiver measured no message ({line})").into());
    }
    let send = Latency::from_samples(&mut took).unwrap_or_default();
    Ok(WaitRun {
        round: 0,
        rate,
        transport,
        sent,
        send_secs,
        send_p50: send.p50,
        received,
        lagged,
        measured,
        cpu_ns,
        sleeps,
        preemptions,
        p50,
        p99,
        p999,
        max,
        receiver_total_ns,
        same_cpu,
        others: 0.0,
        steal: 0.0,
    })
}

/// This process's CPU time (user + system, ns), voluntary and involuntary
/// context switches.
fn usage() -> (u64, u64, u64) {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0, 0, 0);
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    (
        tv(ru.ru_utime) + tv(ru.ru_stime),
        ru.ru_nvcsw as u64,
        ru.ru_nivcsw as u64,
    )
}

/// The CPU this thread runs on (`u64::MAX` if unknown).
fn this_cpu() -> u64 {
    // SAFETY: sched_getcpu has no preconditions.
    u64::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(u64::MAX)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(u64::MAX)
}

/// What the receiver measures, message by message.
struct Meter {
    warmup: u64,
    lat: Vec<u64>,
    start: Option<(u64, u64, u64)>,
    end: Option<(u64, u64, u64)>,
    received: u64,
    same_cpu: u64,
    sink: u64,
}

impl Meter {
    fn new(expected: u64) -> Self {
        Self {
            warmup: expected.div_ceil(10),
            lat: Vec::with_capacity(expected as usize),
            start: None,
            end: None,
            received: 0,
            same_cpu: 0,
            sink: 0,
        }
    }

    /// One message, received at `got` (ns) on CPU `cpu`: reads it whole;
    /// the window opens after the first message past the warm-up and
    /// closes after the last message of the run.
    fn message(&mut self, m: &[u8], got: u64, cpu: u64) {
        let (seq, total, sent) = (u64_at(m, 0), u64_at(m, 8), u64_at(m, 16));
        self.sink = self.sink.wrapping_add(touch(m));
        self.received += 1;
        if seq >= self.warmup && self.end.is_none() {
            if self.start.is_some() {
                self.lat.push(got.saturating_sub(sent));
                self.same_cpu += u64::from(cpu == u64_at(m, 24));
            } else {
                self.start = Some(usage());
            }
        }
        if seq.saturating_add(1) >= total && self.end.is_none() {
            self.end = Some(usage());
        }
    }

    fn report(mut self, lagged: u64) {
        std::hint::black_box(self.sink);
        let end = self.end.unwrap_or_else(usage);
        let (c0, v0, i0) = self.start.unwrap_or(end);
        let measured = self.lat.len() as u64;
        let l = Latency::from_samples(&mut self.lat).unwrap_or_default();
        let p999 = percentile(&self.lat, 0.999);
        println!(
            "RESULT {} {lagged} {measured} {} {} {} {} {} {p999} {} {} {}",
            self.received,
            end.0.saturating_sub(c0),
            end.1.saturating_sub(v0),
            end.2.saturating_sub(i0),
            l.p50,
            l.p99,
            l.max,
            usage().0,
            self.same_cpu
        );
        let _ = std::io::stdout().flush();
    }
}

fn env_u64(name: &str) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{name}"))
}

/// The receiver process: a channel subscriber (`SFB_BENCH_NS`) or the
/// receiving end of a socket pair (`SFB_WAIT_FD`), blocking in `recv`
/// until the sender leaves.
fn receiver() {
    let mut meter = Meter::new(env_u64("SFB_WAIT_EXPECTED"));
    let mut lagged = 0u64;
    if let Ok(fd) = std::env::var("SFB_WAIT_FD") {
        let fd: RawFd = fd.parse().expect("SFB_WAIT_FD");
        // SAFETY: the parent left this end of its socket pair open for this
        // process alone (close-on-exec off), and nothing else here owns it.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        set_cloexec(&sock, true).expect("FD_CLOEXEC");
        let mut buf = vec![0u8; MESSAGE + 64];
        println!("READY");
        let _ = std::io::stdout().flush();
        loop {
            // SAFETY: `buf` is valid and writable for `buf.len()` bytes.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let got = mono_ns();
            let cpu = this_cpu();
            match n {
                0 => break,
                n if n > 0 => meter.message(&buf[..n as usize], got, cpu),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        panic!("socket recv: {e}");
                    }
                }
            }
        }
    } else {
        let ns = std::env::var("SFB_BENCH_NS").expect("SFB_BENCH_NS");
        let spin = Duration::from_nanos(env_u64("SFB_WAIT_SPIN_NS"));
        let store = PinnedBlobStore::attach_shared(Config::default(), &ns).expect("attach");
        let sub = store
            .subscriber_with(CHANNEL, ChannelConfig::default().spin(spin))
            .expect("subscriber");
        println!("READY");
        let _ = std::io::stdout().flush();
        loop {
            match sub.recv() {
                Ok(m) => {
                    let got = mono_ns();
                    let cpu = this_cpu();
                    meter.message(&m, got, cpu);
                }
                Err(RecvError::Lagged(n)) => lagged += n,
                Err(RecvError::Disconnected) => break,
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
    meter.report(lagged);
}

/// Runs the wait scenario's peer role, if this process is one.
pub(crate) fn run_peer(role: &str) -> bool {
    if role != ROLE {
        return false;
    }
    receiver();
    true
}

/// Median of `v` (the mean of the middle two for an even count); 0 if empty.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The medians of one transport at one rate.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitSummary {
    /// What carried the messages.
    pub transport: Transport,
    /// Runs summarised.
    pub runs: usize,
    /// Median p50, p99, p99.9 latency, µs.
    pub p50_us: f64,
    /// Median p99, µs.
    pub p99_us: f64,
    /// Median p99.9, µs.
    pub p999_us: f64,
    /// Median receiver CPU per message, µs.
    pub cpu_us: f64,
    /// Median receiver sleeps per message.
    pub sleeps: f64,
    /// Median fraction of messages received on the sender's CPU.
    pub same_cpu: f64,
    /// Median messages received per run.
    pub received: f64,
    /// Median messages sent per second.
    pub send_rate: f64,
    /// Median of the sender's median `send` time, µs.
    pub send_us: f64,
    /// Median cores the rest of the machine kept busy.
    pub others: f64,
    /// Median cores stolen by the hypervisor.
    pub steal: f64,
    /// Messages lagged, all runs together.
    pub lagged: u64,
    /// Channel runs that beat the socket run right after them on both
    /// counts (CPU at most, p50 below), of `runs`.
    pub pairs_won: usize,
}

/// Per rate, the socket's medians first, then each spin's.
pub fn summarize(opts: &WaitOptions, runs: &[WaitRun]) -> Vec<(u32, Vec<WaitSummary>)> {
    opts.rates
        .iter()
        .map(|&rate| {
            let of = |t: Transport| -> Vec<&WaitRun> {
                runs.iter()
                    .filter(|r| r.rate == rate && r.transport == t)
                    .collect()
            };
            let summary = |t: Transport| {
                let rs = of(t);
                let med = |f: &dyn Fn(&WaitRun) -> f64| median(rs.iter().map(|r| f(r)).collect());
                let pairs_won = match t {
                    Transport::Socket => 0,
                    Transport::Channel(_) => rs
                        .iter()
                        .filter(|c| {
                            runs.iter()
                                .position(|r| std::ptr::eq(r, **c))
                                .and_then(|i| runs.get(i + 1))
                                .filter(|s| s.transport == Transport::Socket && s.rate == rate)
                                .is_some_and(|s| {
                                    c.cpu_per_msg() <= s.cpu_per_msg() && c.p50 < s.p50
                                })
                        })
                        .count(),
                };
                WaitSummary {
                    transport: t,
                    runs: rs.len(),
                    p50_us: med(&|r| r.p50 as f64 / 1e3),
                    p99_us: med(&|r| r.p99 as f64 / 1e3),
                    p999_us: med(&|r| r.p999 as f64 / 1e3),
                    cpu_us: med(&|r| r.cpu_per_msg() / 1e3),
                    sleeps: med(&|r| r.sleeps_per_msg()),
                    same_cpu: med(&|r| r.same_cpu as f64 / r.measured.max(1) as f64),
                    received: med(&|r| r.received as f64),
                    send_rate: med(&|r| r.sent as f64 / r.send_secs.max(1e-9)),
                    send_us: med(&|r| r.send_p50 as f64 / 1e3),
                    others: med(&|r| r.others),
                    steal: med(&|r| r.steal),
                    lagged: rs.iter().map(|r| r.lagged).sum(),
                    pairs_won,
                }
            };
            let mut rows = vec![summary(Transport::Socket)];
            rows.extend(opts.spins.iter().map(|&s| summary(Transport::Channel(s))));
            (rate, rows)
        })
        .collect()
}

/// Whether a channel row meets the goal against the socket row of its rate.
pub fn meets(channel: &WaitSummary, socket: &WaitSummary) -> bool {
    channel.cpu_us <= socket.cpu_us && channel.p50_us < socket.p50_us
}

/// The spins that meet the goal at every rate.
pub fn spins_meeting(opts: &WaitOptions, runs: &[WaitRun]) -> Vec<Duration> {
    let sums = summarize(opts, runs);
    opts.spins
        .iter()
        .copied()
        .filter(|&s| {
            sums.iter().all(|(_, rows)| {
                rows.iter()
                    .find(|r| r.transport == Transport::Channel(s))
                    .is_some_and(|c| meets(c, &rows[0]))
            })
        })
        .collect()
}

fn rate_label(rate: u32) -> String {
    if rate % 1000 == 0 {
        format!("{} kHz", rate / 1000)
    } else {
        format!("{rate} Hz")
    }
}

/// The runs as Markdown: one table per rate, then the verdict.
pub fn wait_markdown(opts: &WaitOptions, runs: &[WaitRun]) -> String {
    let mut s = String::new();
    let sums = summarize(opts, runs);
    for ((rate, rows), secs) in sums.iter().zip(&opts.seconds) {
        let socket = &rows[0];
        s.push_str(&format!(
            "**{}** ({secs} s per run; medians of {} runs per channel row, {} socket runs):\n\n",
            rate_label(*rate),
            opts.repeat,
            socket.runs,
        ));
        s.push_str(
            "| transport | spin | p50 µs | p99 µs | p99.9 µs | CPU µs/msg | sleeps/msg | on sender's CPU | send µs | sent/s | received | others' CPU | CPU ≤ socket and p50 < socket | pairs won |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n",
        );
        for r in rows {
            let (name, spin, verdict, pairs) = match r.transport {
                Transport::Socket => (
                    "Unix socket (SEQPACKET)",
                    "-".to_owned(),
                    "(baseline)".to_owned(),
                    "-".to_owned(),
                ),
                Transport::Channel(sp) => (
                    "channel",
                    spin_label(sp),
                    if meets(r, socket) {
                        "yes".to_owned()
                    } else {
                        let mut why = Vec::new();
                        if r.cpu_us > socket.cpu_us {
                            why.push("CPU");
                        }
                        if r.p50_us >= socket.p50_us {
                            why.push("p50");
                        }
                        format!("**no** ({})", why.join(", "))
                    },
                    format!("{}/{}", r.pairs_won, r.runs),
                ),
            };
            s.push_str(&format!(
                "| {name} | {spin} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.0} % | {:.1} | {:.0} | {:.0}{} | {:.0} %{} | {verdict} | {pairs} |\n",
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.cpu_us,
                r.sleeps,
                r.same_cpu * 100.0,
                r.send_us,
                r.send_rate,
                r.received,
                if r.lagged > 0 {
                    format!(" ({} lagged)", r.lagged)
                } else {
                    String::new()
                },
                r.others * 100.0,
                if r.steal >= 0.005 {
                    format!(", steal {:.0} %", r.steal * 100.0)
                } else {
                    String::new()
                }
            ));
        }
        s.push('\n');
    }
    // Each spin against the socket, rate by rate (medians).
    s.push_str(
        "Against the socket (medians, CPU per message as a ratio, p50 as a difference):\n\n",
    );
    for &sp in &opts.spins {
        let parts: Vec<String> = sums
            .iter()
            .filter_map(|(rate, rows)| {
                let c = rows
                    .iter()
                    .find(|r| r.transport == Transport::Channel(sp))?;
                let k = &rows[0];
                Some(format!(
                    "{} CPU {:.2}×, p50 {:+.1} µs",
                    rate_label(*rate),
                    c.cpu_us / k.cpu_us.max(1e-9),
                    c.p50_us - k.p50_us
                ))
            })
            .collect();
        s.push_str(&format!(
            "* spin {}: {}\n",
            spin_label(sp),
            parts.join("; ")
        ));
    }
    s.push('\n');
    let ok = spins_meeting(opts, runs);
    if ok.is_empty() {
        s.push_str("Goal (CPU per message at most the socket's, p50 below it, at every rate): met by no spin.\n");
    } else {
        // Of those, the one with the least CPU per message relative to the
        // socket, summed over the rates.
        let cost = |sp: Duration| -> f64 {
            sums.iter()
                .map(|(_, rows)| {
                    rows.iter()
                        .find(|r| r.transport == Transport::Channel(sp))
                        .map_or(f64::INFINITY, |c| c.cpu_us / rows[0].cpu_us.max(1e-9))
                })
                .sum()
        };
        let best = ok
            .iter()
            .copied()
            .min_by(|a, b| cost(*a).total_cmp(&cost(*b)))
            .unwrap_or_default();
        s.push_str(&format!(
            "Goal (CPU per message at most the socket's, p50 below it, at every rate): met by spin {}; the least CPU of those: {}.\n",
            ok.iter().map(|d| spin_label(*d)).collect::<Vec<_>>().join(", "),
            spin_label(best)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_labels() {
        let a = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let o = WaitOptions::from_args(&a("--scenario wait")).unwrap();
        assert_eq!(o, WaitOptions::default());
        let o = WaitOptions::from_args(&a(
            "--scenario wait --rates 500 --seconds 1.5 --spins 0,2us,500ns --repeat 2",
        ))
        .unwrap();
        assert_eq!(o.rates, vec![500]);
        assert_eq!(o.seconds, vec![1.5]);
        assert_eq!(
            o.spins,
            vec![
                Duration::ZERO,
                Duration::from_micros(2),
                Duration::from_nanos(500)
            ]
        );
        assert_eq!(o.repeat, 2);
        assert!(WaitOptions::from_args(&a("--rates 1,2,3 --seconds 1,2")).is_err());
        assert!(WaitOptions::from_args(&a("--spins x")).is_err());
        assert_eq!(spin_label(Duration::ZERO), "0");
        assert_eq!(spin_label(Duration::from_micros(20)), "20 µs");
        assert_eq!(spin_label(Duration::from_nanos(1500)), "1500 ns");
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn verdicts() {
        let opts = WaitOptions {
            rates: vec![1000],
            seconds: vec![1.0],
            spins: vec![Duration::ZERO, Duration::from_micros(100)],
            repeat: 1,
        };
        let run = |transport, cpu_ns, p50| WaitRun {
            round: 0,
            rate: 1000,
            transport,
            sent: 1000,
            send_secs: 1.0,
            received: 1000,
            lagged: 0,
            measured: 1000,
            cpu_ns,
            sleeps: 1000,
            preemptions: 0,
            p50,
            p99: p50 * 2,
            p999: p50 * 3,
            max: p50 * 4,
            send_p50: 1_000,
            receiver_total_ns: cpu_ns,
            same_cpu: 0,
            others: 0.0,
            steal: 0.0,
        };
        let runs = vec![
            run(Transport::Channel(Duration::ZERO), 5_000_000, 10_000),
            run(Transport::Socket, 8_000_000, 15_000),
            run(
                Transport::Channel(Duration::from_micros(100)),
                90_000_000,
                2_000,
            ),
            run(Transport::Socket, 8_000_000, 15_000),
        ];
        let sums = summarize(&opts, &runs);
        assert_eq!(sums[0].1[0].runs, 2);
        assert_eq!(sums[0].1[1].pairs_won, 1);
        assert_eq!(sums[0].1[2].pairs_won, 0);
        assert_eq!(spins_meeting(&opts, &runs), vec![Duration::ZERO]);
        let md = wait_markdown(&opts, &runs);
        assert!(
            md.contains("| channel | 0 | 10.0 | 20.0 | 30.0 | 5.00 |"),
            "{md}"
        );
        assert!(md.contains("**no** (CPU)"), "{md}");
        assert!(md.contains("met by spin 0;"), "{md}");
        assert!(
            md.contains("* spin 0: 1 kHz CPU 0.62×, p50 -5.0 µs\n"),
            "{md}"
        );
    }
}
