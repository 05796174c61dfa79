//! `--scenario fanout`: camera frames to subscribers of different speeds.
//!
//! The parent process publishes 2 MiB frames at 120 fps for a fixed time,
//! each written in place with [`Publisher::loan`](stable_fragmented_buffer::Publisher::loan)
//! (zero-copy), on a broadcast channel of
//! `ChannelConfig::for_messages(2 MiB, 8)` under the policy under test.
//! Three subscriber processes (this binary, re-executed) receive them: a
//! fast one; a slow one that holds each frame for 50 ms before checking
//! and dropping it; and one that the parent stops (SIGSTOP) for 5 s,
//! starting 3 s in, then continues (SIGCONT). Every frame carries its
//! sequence number, its send time (CLOCK_MONOTONIC) and a pattern derived
//! from the sequence in every other word; each subscriber checks the whole
//! frame and reports, per frame, the sequence, the send and receive times
//! and the first wrong byte (if any) on stdout, and each `Lagged(n)` it got.
//! A parent thread samples the namespace's use of /dev/shm every 10 ms.
//!
//! Run once under `Overflow::DropOldest`, once under `Overflow::Block` with
//! a 200 ms stall timeout.

use super::cross::mono_ns;
use super::scenario::{await_line, mib, ms, signal, NsGuard, Peers, ShmSampler};
use super::stats::Latency;
use super::workloads::bench_namespace;
use stable_fragmented_buffer::channel::channel_file_name;
use stable_fragmented_buffer::{
    ChannelConfig, Config, Overflow, PinnedBlobStore, RecvError, DEFAULT_CHUNK_SIZE,
};
use std::io::{BufRead, BufReader, Write};
use std::process::ChildStdout;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes per frame.
pub const FRAME: usize = 2 << 20;
/// Frames per second the publisher aims at.
pub const FPS: u32 = 120;
/// Messages in flight of the channel (`for_messages(FRAME, IN_FLIGHT)`).
pub const IN_FLIGHT: u32 = 8;
/// How long the slow subscriber holds each frame.
pub const SLOW_HOLD: Duration = Duration::from_millis(50);
/// Stall timeout of the `Overflow::Block` run.
pub const STALL_TIMEOUT: Duration = Duration::from_millis(200);
/// Targets printed beside the measurements (DropOldest run).
pub const TARGET_FPS: f64 = 119.0;
/// Target p99 latency of the fast subscriber, nanoseconds.
pub const TARGET_P99_NS: u64 = 2_000_000;
/// Target longest `loan` + `send`, nanoseconds.
pub const TARGET_SEND_NS: u64 = 1_000_000;

const CHANNEL: &str = "frames";
const KINDS: [&str; 3] = ["fast", "slow", "stopped"];

/// The pattern word `i` of frame `seq` (words 0 and 1 carry the sequence
/// and the send time). Every word differs from frame to frame, so a stale
/// or torn frame is caught wherever it is checked.
fn word(seq: u64, i: usize) -> u64 {
    seq.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

fn fill(frame: &mut [u8], seq: u64) {
    for (i, w) in frame.chunks_exact_mut(8).enumerate().skip(2) {
        w.copy_from_slice(&word(seq, i).to_le_bytes());
    }
}

/// Offset of the first wrong byte of frame `seq`, if any (a wrong length
/// is reported as the length).
fn check(frame: &[u8], seq: u64) -> Option<usize> {
    if frame.len() != FRAME {
        return Some(frame.len());
    }
    frame
        .chunks_exact(8)
        .enumerate()
        .skip(2)
        .find(|(i, w)| u64::from_le_bytes((*w).try_into().unwrap_or_default()) != word(seq, *i))
        .map(|(i, _)| i * 8)
}

/// What this thread has used so far: context switches (a voluntary one is
/// a wait in the kernel, an involuntary one a preemption), page faults,
/// and CPU time (ns).
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    waits: u64,
    preemptions: u64,
    faults: u64,
    cpu_ns: u64,
}

impl Usage {
    fn now() -> Self {
        // SAFETY: an all-zero rusage is a valid value of the plain C struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `ru` is a valid, writable rusage; RUSAGE_THREAD is
        // supported on Linux.
        if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
            return Self::default();
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Self {
            waits: ru.ru_nvcsw as u64,
            preemptions: ru.ru_nivcsw as u64,
            faults: (ru.ru_minflt + ru.ru_majflt) as u64,
            cpu_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        }
    }

    /// What was used from `self` to `later`, added to `acc`.
    fn add_since(self, later: Self, acc: Self) -> Self {
        Self {
            waits: acc.waits + later.waits.saturating_sub(self.waits),
            preemptions: acc.preemptions + later.preemptions.saturating_sub(self.preemptions),
            faults: acc.faults + later.faults.saturating_sub(self.faults),
            cpu_ns: acc.cpu_ns + later.cpu_ns.saturating_sub(self.cpu_ns),
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(u64::MAX)
}

/// What one subscriber reported.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// A frame: its sequence, channel sequence, send and receive times,
    /// first wrong byte.
    Frame {
        seq: u64,
        chan_seq: u64,
        sent: u64,
        got: u64,
        bad: Option<u64>,
    },
    /// `RecvError::Lagged(n)`.
    Lagged(u64),
    /// Another receive error.
    Error,
    /// The subscriber's own count of lagged messages at the end.
    End { lagged: u64 },
}

fn parse(line: &str) -> Option<Event> {
    let mut f = line.split_whitespace();
    let tag = f.next()?;
    let mut num = || f.next().and_then(|x| x.parse::<u64>().ok());
    Some(match tag {
        "F" => {
            let (seq, chan_seq, sent, got) = (num()?, num()?, num()?, num()?);
            Event::Frame {
                seq,
                chan_seq,
                sent,
                got,
                bad: num(),
            }
        }
        "L" => Event::Lagged(num()?),
        "X" => Event::Error,
        "END" => {
            let _received = num()?;
            Event::End { lagged: num()? }
        }
        _ => return None,
    })
}

fn read_events(out: BufReader<ChildStdout>) -> Vec<Event> {
    out.lines()
        .map_while(Result::ok)
        .filter_map(|l| parse(&l))
        .collect()
}

/// One subscriber's results.
#[derive(Debug, Clone)]
pub struct SubscriberResult {
    /// `fast`, `slow` or `stopped`.
    pub kind: &'static str,
    /// Frames received.
    pub received: u64,
    /// Frames per second received, first to last.
    pub fps: f64,
    /// Send-to-receive latency of its frames.
    pub latency: Option<Latency>,
    /// Longest time between two consecutive frames received, ns.
    pub longest_gap_ns: u64,
    /// When the longest gap ended, seconds after the first frame was sent.
    pub longest_gap_at: f64,
    /// Sum of the `RecvError::Lagged(n)` it received.
    pub lagged: u64,
    /// `Subscriber::lagged()` at its end (should equal `lagged`).
    pub lagged_api: Option<u64>,
    /// Frames sent minus received minus lagged (0: every frame accounted for).
    pub unaccounted: i64,
    /// Frames whose sequence did not follow the previous one plus its lag.
    pub out_of_order: u64,
    /// Frames with a wrong byte.
    pub bad_frames: u64,
    /// Receive errors other than `Lagged`.
    pub errors: u64,
}

/// One run of the scenario under one overflow policy.
#[derive(Debug, Clone)]
pub struct FanoutRun {
    /// `DropOldest`, or `Block, stall 200 ms`.
    pub policy: String,
    /// Whether it ran under `Overflow::DropOldest`.
    pub drop_oldest: bool,
    /// Seconds of sending.
    pub secs: f64,
    /// Frames sent.
    pub sent: u64,
    /// Longest `loan` + `send` of a frame (not counting writing it), ns.
    pub longest_send_ns: u64,
    /// `loan` + `send` percentiles.
    pub send: Option<Latency>,
    /// The five longest `loan` + `send`, described: when, each call's time,
    /// and what the thread used meanwhile (waits in the kernel,
    /// preemptions, page faults, CPU time).
    pub longest_sends: Vec<String>,
    /// `loan` + `send` calls that took longer than 1 ms.
    pub sends_over_1ms: usize,
    /// `loan` alone.
    pub loan_only: Option<Latency>,
    /// `Loan::send` alone.
    pub send_only: Option<Latency>,
    /// Fast, slow, stopped.
    pub subs: Vec<SubscriberResult>,
    /// Peak bytes of /dev/shm the namespace's files used (sampled).
    pub shm_peak: u64,
    /// Seconds after the first frame when the peak was first reached.
    pub shm_peak_at: f64,
    /// Samples taken.
    pub shm_samples: u64,
    /// Size of the channel file.
    pub channel_file: u64,
    /// Pool slots of the channel: slots + 32 × (max_held + 1) + 32 × 2.
    pub pool_slots: u64,
    /// `pool_slots × slot_size`.
    pub bound: u64,
    /// Ring slots and slot size of the channel.
    pub geometry: (u32, u32, u32),
    /// The stopped subscriber was stopped from..to, seconds after the
    /// first frame.
    pub stopped: Option<(f64, f64)>,
}

impl FanoutRun {
    /// Whether every frame each subscriber got was intact and in order,
    /// and every frame sent was either received or reported lagged.
    pub fn ok(&self) -> bool {
        self.subs.iter().all(|x| {
            x.bad_frames == 0
                && x.unaccounted == 0
                && x.out_of_order == 0
                && x.errors == 0
                && x.lagged_api.is_none_or(|a| a == x.lagged)
        })
    }
}

/// Runs SIGSTOP / SIGCONT on one peer at given times; dropping it cancels
/// what is still to come (a stopped peer is continued first) and joins.
struct Stopper {
    cancel: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<Option<(u64, u64)>>>,
}

impl Stopper {
    fn start(pid: u32, at: Duration, length: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let sleep = |d| matches!(rx.recv_timeout(d), Err(mpsc::RecvTimeoutError::Timeout));
            if !sleep(at) {
                return None;
            }
            let a = mono_ns();
            signal(pid, libc::SIGSTOP).ok()?;
            let _ = sleep(length);
            let _ = signal(pid, libc::SIGCONT);
            Some((a, mono_ns()))
        });
        Self {
            cancel: Some(tx),
            thread: Some(thread),
        }
    }

    fn join(mut self) -> Option<(u64, u64)> {
        self.thread.take().and_then(|t| t.join().ok()).flatten()
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Both runs: `DropOldest`, then `Block` with a 200 ms stall timeout.
pub fn fanout(seconds: f64) -> Result<Vec<FanoutRun>, Box<dyn std::error::Error>> {
    let mut runs = Vec::new();
    for policy in [Overflow::DropOldest, Overflow::Block] {
        eprintln!("fanout: {policy:?}, {seconds} s");
        runs.push(run(policy, seconds)?);
    }
    Ok(runs)
}

fn run(policy: Overflow, seconds: f64) -> Result<FanoutRun, Box<dyn std::error::Error>> {
    let ns = bench_namespace();
    // Drop order (reverse of declaration): the stopper (a stopped peer is
    // continued), the sampler, the peers (killed and reaped if still
    // running), the publisher, the store (which removes the namespace),
    // then the guard (whatever is left).
    let _guard = NsGuard::new(&ns);
    let store = PinnedBlobStore::new_shared(Config::default(), &ns, DEFAULT_CHUNK_SIZE)?;
    let mut config = ChannelConfig::for_messages(FRAME, IN_FLIGHT).overflow(policy);
    if policy == Overflow::Block {
        config = config.stall_timeout(STALL_TIMEOUT);
    }
    let publisher = store.publisher_with(CHANNEL, config)?;
    let file = stable_fragmented_buffer::inspect::shm_dir().join(channel_file_name(&ns, CHANNEL));
    let channel_file = std::fs::metadata(&file)?.len();
    let pool_slots = config.slots as u64 + 32 * (config.max_held as u64 + 1) + 32 * 2;
    let peers = Peers::default();
    let mut readers = Vec::new();
    let mut pids = Vec::new();
    for kind in KINDS {
        let (pid, mut out) = peers.spawn(
            "fanout-subscriber",
            &[
                ("SFB_BENCH_NS", ns.clone()),
                ("SFB_FANOUT_KIND", kind.into()),
            ],
        )?;
        await_line(&mut out, "READY")?;
        pids.push(pid);
        readers.push(std::thread::spawn(move || read_events(out)));
    }
    // The stop: 3 s in for 5 s, or proportionally less in a short run.
    let stop_at = Duration::from_secs_f64(3.0f64.min(seconds * 0.15));
    let stop_for = Duration::from_secs_f64(5.0f64.min(seconds * 0.5));
    let period = Duration::from_secs_f64(1.0 / FPS as f64);
    let frames = (seconds * FPS as f64) as usize + 16;
    let mut send_ns = Vec::with_capacity(frames);
    let mut loan_ns = Vec::with_capacity(frames);
    let mut publish_ns = Vec::with_capacity(frames);
    let mut at_ns = Vec::with_capacity(frames);
    let mut csw = Vec::with_capacity(frames);
    let sampler = ShmSampler::start(&ns, Duration::from_millis(10));
    let t0 = Instant::now();
    let t0_ns = mono_ns();
    let stopper = Stopper::start(pids[2], stop_at, stop_for);
    let end = t0 + Duration::from_secs_f64(seconds);
    let mut next = t0;
    let mut seq = 0u64;
    while Instant::now() < end {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        let s0 = Usage::now();
        let a = mono_ns();
        let mut loan = publisher.loan(FRAME)?;
        let b = mono_ns();
        let s1 = Usage::now();
        fill(&mut loan, seq);
        loan[0..8].copy_from_slice(&seq.to_le_bytes());
        let s2 = Usage::now();
        let ts = mono_ns();
        loan[8..16].copy_from_slice(&ts.to_le_bytes());
        loan.send()?;
        let c = mono_ns();
        let s3 = Usage::now();
        csw.push(s2.add_since(s3, s0.add_since(s1, Usage::default())));
        send_ns.push((b - a) + (c - ts));
        at_ns.push(a - t0_ns);
        loan_ns.push(b - a);
        publish_ns.push(c - ts);
        seq += 1;
        next += period;
        // Behind (a blocking publisher): no burst to catch up.
        let now = Instant::now();
        if next < now {
            next = now;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let stopped = stopper.join();
    drop(publisher);
    let (running, failed) = peers.wait_all(Duration::from_secs(30));
    if !running.is_empty() {
        return Err(format!(
            "subscriber processes {running:?} did not finish 30 s after the publisher left \
             (they should see Disconnected once drained): a hang"
        )
        .into());
    }
    if !failed.is_empty() {
        return Err(format!("subscriber processes failed: {failed:?}").into());
    }
    let events: Vec<Vec<Event>> = readers
        .into_iter()
        .map(|r| r.join().unwrap_or_default())
        .collect();
    let shm = sampler.finish();
    let sent = seq;
    let subs = KINDS
        .iter()
        .zip(&events)
        .map(|(kind, ev)| summarize(kind, ev, sent, t0_ns))
        .collect();
    let rel = |t: u64| t.saturating_sub(t0_ns) as f64 / 1e9;
    let mut order: Vec<usize> = (0..send_ns.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(send_ns[i]));
    let longest_sends = order
        .iter()
        .take(5)
        .map(|&i| {
            let u: Usage = csw[i];
            format!(
                "{:.2} s: loan {} + send {} ({} waits, {} preemptions, {} page faults, {} on CPU)",
                at_ns[i] as f64 / 1e9,
                ms(loan_ns[i]),
                ms(publish_ns[i]),
                u.waits,
                u.preemptions,
                u.faults,
                ms(u.cpu_ns)
            )
        })
        .collect();
    let sends_over_1ms = send_ns.iter().filter(|&&n| n > 1_000_000).count();
    Ok(FanoutRun {
        policy: match policy {
            Overflow::Block => format!("Block, stall {} ms", STALL_TIMEOUT.as_millis()),
            Overflow::DropOldest => "DropOldest".into(),
        },
        drop_oldest: policy == Overflow::DropOldest,
        secs,
        sent,
        longest_send_ns: send_ns.iter().copied().max().unwrap_or(0),
        longest_sends,
        sends_over_1ms,
        send: Latency::from_samples(&mut send_ns),
        loan_only: Latency::from_samples(&mut loan_ns),
        send_only: Latency::from_samples(&mut publish_ns),
        subs,
        shm_peak: shm.peak,
        shm_peak_at: shm.peak_at,
        shm_samples: shm.samples,
        channel_file,
        pool_slots,
        bound: pool_slots * config.slot_size as u64,
        geometry: (config.slots, config.slot_size, config.max_held),
        stopped: stopped.map(|(a, b)| (rel(a), rel(b))),
    })
}

fn summarize(kind: &'static str, events: &[Event], sent: u64, t0: u64) -> SubscriberResult {
    let mut lat = Vec::new();
    let mut lagged = 0u64;
    let mut lagged_api = None;
    let mut errors = 0u64;
    let mut bad_frames = 0u64;
    let mut out_of_order = 0u64;
    let mut expected = 0u64;
    let mut offset = None;
    let mut prev_got: Option<u64> = None;
    let (mut gap, mut gap_at) = (0u64, 0u64);
    let (mut first, mut last) = (None, 0u64);
    for e in events {
        match *e {
            Event::Frame {
                seq,
                chan_seq,
                sent,
                got,
                bad,
            } => {
                lat.push(got.saturating_sub(sent));
                if bad.is_some() {
                    bad_frames += 1;
                }
                // One publisher that sends every loan: the channel's
                // sequence and ours differ by a constant.
                let off = chan_seq.wrapping_sub(seq);
                if seq != expected || *offset.get_or_insert(off) != off {
                    out_of_order += 1;
                }
                expected = seq + 1;
                if let Some(p) = prev_got {
                    if got.saturating_sub(p) > gap {
                        gap = got - p;
                        gap_at = got;
                    }
                }
                prev_got = Some(got);
                first.get_or_insert(got);
                last = got;
            }
            Event::Lagged(n) => {
                lagged += n;
                expected += n;
            }
            Event::Error => errors += 1,
            Event::End { lagged } => lagged_api = Some(lagged),
        }
    }
    let received = lat.len() as u64;
    let fps = match first {
        Some(f) if last > f => (received - 1) as f64 / ((last - f) as f64 / 1e9),
        _ => 0.0,
    };
    SubscriberResult {
        kind,
        received,
        fps,
        latency: Latency::from_samples(&mut lat),
        longest_gap_ns: gap,
        longest_gap_at: gap_at.saturating_sub(t0) as f64 / 1e9,
        lagged,
        lagged_api,
        unaccounted: sent as i64 - received as i64 - lagged as i64,
        out_of_order,
        bad_frames,
        errors,
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}

/// The runs as Markdown: the headline figures beside their targets, then
/// every subscriber and the publisher of each run.
pub fn fanout_markdown(runs: &[FanoutRun]) -> String {
    let mut s = String::new();
    let fast = |r: &FanoutRun| r.subs.iter().find(|x| x.kind == "fast").cloned();
    let sub = |r: &FanoutRun, k: &str| r.subs.iter().find(|x| x.kind == k).cloned();
    s.push_str("| run | measure | measured | target |\n|---|---|---:|---|\n");
    for r in runs {
        let Some(f) = fast(r) else { continue };
        let p = &r.policy;
        if r.drop_oldest {
            let p99 = f.latency.map_or(u64::MAX, |l| l.p99);
            s.push_str(&format!(
                "| {p} | fast subscriber fps | {:.1} | ≥ {TARGET_FPS:.0} ({}) |\n",
                f.fps,
                verdict(f.fps >= TARGET_FPS)
            ));
            s.push_str(&format!(
                "| {p} | fast subscriber latency p50 / p99 | {} / {} | p99 ≤ {} ({}) |\n",
                f.latency.map_or("-".into(), |l| ms(l.p50)),
                f.latency.map_or("-".into(), |l| ms(l.p99)),
                ms(TARGET_P99_NS),
                verdict(p99 <= TARGET_P99_NS)
            ));
            s.push_str(&format!(
                "| {p} | producer's longest loan + send | {} | ≤ {} ({}) |\n",
                ms(r.longest_send_ns),
                ms(TARGET_SEND_NS),
                verdict(r.longest_send_ns <= TARGET_SEND_NS)
            ));
            for k in ["slow", "stopped"] {
                if let Some(x) = sub(r, k) {
                    s.push_str(&format!(
                        "| {p} | {k} subscriber: lagged (sum of `Lagged(n)`) | {} | - |\n",
                        x.lagged
                    ));
                }
            }
            s.push_str(&format!(
                "| {p} | peak /dev/shm of the namespace (sampled every 10 ms) | {} (reached {:.1} s in) | - |\n",
                mib(r.shm_peak),
                r.shm_peak_at
            ));
            s.push_str(&format!(
                "| {p} | channel bound: pool {} slots × {} B | {} (file size {}) | - |\n",
                r.pool_slots,
                r.geometry.1,
                mib(r.bound),
                mib(r.channel_file)
            ));
        } else {
            s.push_str(&format!(
                "| {p} | fast subscriber's recovery (longest gap between frames) | {} (ending {:.2} s in) | - |\n",
                ms(f.longest_gap_ns),
                f.longest_gap_at
            ));
            s.push_str(&format!(
                "| {p} | producer's longest loan + send | {} | - (Block waits by design) |\n",
                ms(r.longest_send_ns)
            ));
            s.push_str(&format!(
                "| {p} | fast subscriber fps | {:.1} | - |\n",
                f.fps
            ));
            s.push_str(&format!(
                "| {p} | peak /dev/shm of the namespace | {} (reached {:.1} s in) | - |\n",
                mib(r.shm_peak),
                r.shm_peak_at
            ));
        }
    }
    s.push_str(
        "\n| run | subscriber | frames | fps | p50 | p99 | max | longest gap | lagged | unaccounted | out of order | bad frames | errors |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        for x in &r.subs {
            let l = |f: fn(&Latency) -> u64| x.latency.as_ref().map_or("-".into(), |l| ms(f(l)));
            s.push_str(&format!(
                "| {} | {} | {} | {:.1} | {} | {} | {} | {} | {}{} | {} | {} | {} | {} |\n",
                r.policy,
                x.kind,
                x.received,
                x.fps,
                l(|l| l.p50),
                l(|l| l.p99),
                l(|l| l.max),
                ms(x.longest_gap_ns),
                x.lagged,
                match x.lagged_api {
                    Some(a) if a != x.lagged => format!(" (lagged() says {a})"),
                    _ => String::new(),
                },
                x.unaccounted,
                x.out_of_order,
                x.bad_frames,
                x.errors
            ));
        }
    }
    s.push_str(
        "\n| run | seconds | frames sent | sent fps | loan+send p50 | p99 | max | loan p50 / p99 / max | send p50 / p99 / max | peak /dev/shm | stopped (s after start) | ring |\n|---|---:|---:|---:|---:|---:|---:|---|---|---:|---|---|\n",
    );
    for r in runs {
        let l = |f: fn(&Latency) -> u64| r.send.as_ref().map_or("-".into(), |l| ms(f(l)));
        let three = |x: &Option<Latency>| {
            x.as_ref().map_or("-".into(), |l| {
                format!("{} / {} / {}", ms(l.p50), ms(l.p99), ms(l.max))
            })
        };
        s.push_str(&format!(
            "| {} | {:.1} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} slots × {} B, max_held {} |\n",
            r.policy,
            r.secs,
            r.sent,
            r.sent as f64 / r.secs,
            l(|l| l.p50),
            l(|l| l.p99),
            l(|l| l.max),
            three(&r.loan_only),
            three(&r.send_only),
            mib(r.shm_peak),
            r.stopped
                .map_or("-".into(), |(a, b)| format!("{a:.2} to {b:.2}")),
            r.geometry.0,
            r.geometry.1,
            r.geometry.2
        ));
    }
    for r in runs {
        let list = &r.longest_sends;
        s.push_str(&format!(
            "\n{}: {} of {} loan + send over 1 ms; longest: {}.",
            r.policy,
            r.sends_over_1ms,
            r.sent,
            list.join("; ")
        ));
    }
    for r in runs {
        s.push_str(&format!(
            "\n{}: frames intact, in order and accounted for (received + lagged = sent): {}",
            r.policy,
            if r.ok() { "pass" } else { "**FAIL**" }
        ));
    }
    s.push('\n');
    s
}

/// A subscriber process: receives until disconnected, reporting each frame.
fn subscriber() {
    let ns = std::env::var("SFB_BENCH_NS").expect("SFB_BENCH_NS");
    let kind = std::env::var("SFB_FANOUT_KIND").unwrap_or_default();
    let store = PinnedBlobStore::attach_shared(Config::default(), &ns).expect("attach");
    let sub = store.subscriber(CHANNEL).expect("subscriber");
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = writeln!(out, "READY");
    let _ = out.flush();
    let mut received = 0u64;
    loop {
        match sub.recv() {
            Ok(m) => {
                let got = mono_ns();
                let (seq, sent) = (u64_at(&m, 0), u64_at(&m, 8));
                if kind == "slow" {
                    // Hold it while "processing": its bytes must not change.
                    std::thread::sleep(SLOW_HOLD);
                }
                let bad = check(&m, seq).map_or(String::new(), |o| format!(" {o}"));
                let _ = writeln!(out, "F {seq} {} {sent} {got}{bad}", m.sequence());
                drop(m);
                received += 1;
            }
            Err(RecvError::Lagged(n)) => {
                let _ = writeln!(out, "L {n}");
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => {
                let _ = writeln!(out, "X {e}");
                if e == RecvError::TooManyHeld {
                    break;
                }
            }
        }
        let _ = out.flush();
    }
    let _ = writeln!(out, "END {received} {}", sub.lagged());
    let _ = out.flush();
}

/// Runs the fan-out peer role, if this process is one.
pub(crate) fn run_peer(role: &str) -> bool {
    if role != "fanout-subscriber" {
        return false;
    }
    subscriber();
    true
}
