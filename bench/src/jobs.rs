//! `--scenario jobs`: a work queue with at-least-once delivery, under
//! worker crashes.
//!
//! The parent process sends N jobs (200 k by default) of log-uniform random
//! sizes from 32 B to 256 KiB (a fixed seed: every run sends the same jobs)
//! through a work queue created with
//! `ChannelConfig::default().delivery(Delivery::AtLeastOnce)`, each written
//! in place with `Sender::loan`. A job carries its id and a checksum of its
//! id, length and body. Four worker processes (this binary, re-executed)
//! verify each job and report `done <id> <redelivered>` on stdout; a normal
//! worker holds up to 8 jobs and writes their reports in one batch *before*
//! dropping them, so a report is never lost with its job's acknowledgement.
//!
//! In the chaos run, one worker is the victim: it announces each job
//! (`hold <id>`), holds it 10 ms, reports it, holds it 10 ms more, drops it
//! and says `dropped <id>`. Every 2 s the parent SIGKILLs it, alternately
//! while it holds an unreported job and while it holds a reported one, and
//! starts a replacement victim. Another worker holds one job aside for 3 s,
//! once, while it goes on with the others. The parent checks that no job
//! is lost (every id reported at least once), that every duplicate is
//! flagged (at most one report of an id says `redelivered == 0`), that
//! each job a killed victim held was redelivered, and measures the
//! throughput. A calm run (four normal
//! workers, no kills, no hold) gives the ratio.

use super::cross::mono_ns;
use super::scenario::{await_line, mib, signal, NsGuard, Peers, ShmSampler};
use super::workloads::bench_namespace;
use stable_fragmented_buffer::{
    ChannelConfig, Config, Delivery, Message, PinnedBlobStore, Receiver, RecvError,
    RecvTimeoutError, TryRecvError, DEFAULT_CHUNK_SIZE,
};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::ChildStdout;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Smallest job, bytes (id and checksum, and 16 bytes of body).
pub const MIN_JOB: usize = 32;
/// Largest job, bytes.
pub const MAX_JOB: usize = 256 << 10;
/// Seed of the job sizes and bodies.
pub const SEED: u64 = 0x5EED_0F10_B5EE_D000;
/// Worker processes.
pub const WORKERS: usize = 4;
/// How often the victim is killed.
pub const KILL_EVERY: Duration = Duration::from_secs(2);
/// How long the victim holds each job.
pub const VICTIM_HOLD: Duration = Duration::from_millis(20);
/// How long the holder holds its one job aside.
pub const LONG_HOLD: Duration = Duration::from_secs(3);
/// When the holder sets its job aside: this long after its first job.
pub const LONG_HOLD_AFTER: Duration = Duration::from_millis(500);
/// Jobs a normal worker holds before it writes their reports and drops them.
pub const BATCH: usize = 8;

const CHANNEL: &str = "jobs";

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Size of job `id`: log-uniform in `MIN_JOB..=MAX_JOB`, from the seed.
pub fn job_size(id: u64) -> usize {
    let u = (splitmix(SEED ^ id.wrapping_mul(0xA24B_AED4_963E_E407)) >> 11) as f64
        / (1u64 << 53) as f64;
    let (lo, hi) = ((MIN_JOB as f64).ln(), (MAX_JOB as f64).ln());
    ((lo + u * (hi - lo)).exp().round() as usize).clamp(MIN_JOB, MAX_JOB)
}

/// Checksum of job `id`'s body (its length included).
fn checksum(id: u64, body: &[u8]) -> u64 {
    const M: u64 = 0x9FB2_1C65_1E98_DF25;
    let mut h = [
        id ^ 0x243F_6A88_85A3_08D3,
        body.len() as u64 ^ 0x1319_8A2E_0370_7344,
        0xA409_3822_299F_31D0,
        0x082E_FA98_EC4E_6C89,
    ];
    let mut chunks = body.chunks_exact(32);
    for c in &mut chunks {
        for (l, w) in c.chunks_exact(8).enumerate() {
            let w = u64::from_le_bytes(w.try_into().unwrap_or_default());
            h[l] = (h[l] ^ w).wrapping_mul(M).rotate_left(29);
        }
    }
    for (j, &b) in chunks.remainder().iter().enumerate() {
        h[j % 4] = (h[j % 4] ^ b as u64).wrapping_mul(M).rotate_left(29);
    }
    splitmix(h[0] ^ h[1].rotate_left(16) ^ h[2].rotate_left(32) ^ h[3].rotate_left(48))
}

/// Writes job `id` into `buf` (its whole length): id, checksum, body.
fn write_job(buf: &mut [u8], id: u64) {
    let mut x = splitmix(SEED.wrapping_add(id)) | 1;
    let body = &mut buf[16..];
    let mut words = body.chunks_exact_mut(8);
    for w in &mut words {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    for b in words.into_remainder() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let sum = checksum(id, &buf[16..]);
    buf[0..8].copy_from_slice(&id.to_le_bytes());
    buf[8..16].copy_from_slice(&sum.to_le_bytes());
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(u64::MAX)
}

/// A job's id and whether it is intact (length and checksum).
fn verify(m: &[u8]) -> (u64, bool) {
    let id = u64_at(m, 0);
    let ok =
        m.len() >= MIN_JOB && m.len() == job_size(id) && checksum(id, &m[16..]) == u64_at(m, 8);
    (id, ok)
}

/// Where the victim was with its job when it was killed, from what it
/// had written before it died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillPhase {
    /// Holding the job, not reported: it must be redelivered.
    Unreported,
    /// Reported, not yet dropped: it must be redelivered, and that
    /// duplicate report flagged.
    ReportedHeld,
    /// Already dropped: the kill came too late, nothing is owed.
    Dropped,
}

/// One kill of the victim.
#[derive(Debug, Clone)]
pub struct Kill {
    /// Seconds after the first send.
    pub at: f64,
    /// The job it held.
    pub job: u64,
    /// Where it was with the job.
    pub phase: KillPhase,
    /// Whether another worker reported the job with `redelivered > 0`.
    pub redelivered: bool,
}

impl Kill {
    /// Whether the queue did what at-least-once delivery owes.
    pub fn ok(&self) -> bool {
        self.redelivered || self.phase == KillPhase::Dropped
    }
}

/// One run of the scenario.
#[derive(Debug, Clone, Default)]
pub struct JobsRun {
    /// What ran.
    pub label: String,
    /// Whether it was the chaos run (kills and the 3 s hold).
    pub chaos: bool,
    /// Jobs sent.
    pub jobs: u64,
    /// Bytes of jobs sent.
    pub bytes: u64,
    /// Seconds from the first send to the last job's first report.
    pub secs: f64,
    /// Seconds the sending took.
    pub send_secs: f64,
    /// Worker processes started (replacements included).
    pub workers: usize,
    /// The kills.
    pub kills: Vec<Kill>,
    /// Ids never reported.
    pub lost: u64,
    /// Ids reported more than once.
    pub duplicated: u64,
    /// Ids reported more than once as a first delivery (`redelivered == 0`):
    /// duplicates that were not flagged.
    pub unflagged: u64,
    /// Reports that said `redelivered > 0`.
    pub redelivered_reports: u64,
    /// Largest `redelivered` reported.
    pub max_redelivered: u32,
    /// Jobs whose length or checksum was wrong.
    pub bad: u64,
    /// Reports of ids that were never sent.
    pub unknown: u64,
    /// Receive errors the workers reported.
    pub errors: Vec<String>,
    /// The job held for 3 s: id, and seconds from set aside to reported.
    pub long_hold: Option<(u64, f64)>,
    /// The job whose first report came last (it ends the measured time).
    pub last_job: u64,
    /// Peak /dev/shm use of the namespace, bytes.
    pub shm_peak: u64,
    /// Worker processes that had not exited 60 s after the sender left.
    pub stuck: Vec<u32>,
    /// Worker processes that exited with a failure (not the killed ones).
    pub failed: Vec<(u32, String)>,
}

impl JobsRun {
    /// Jobs per second.
    pub fn jobs_per_sec(&self) -> f64 {
        self.jobs as f64 / self.secs.max(1e-9)
    }

    /// Megabytes (1e6) of jobs per second.
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs.max(1e-9)
    }

    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.unflagged == 0
            && self.bad == 0
            && self.unknown == 0
            && self.stuck.is_empty()
            && self.failed.is_empty()
            && self.kills.iter().all(Kill::ok)
    }
}

/// What the workers reported, gathered by the parent's reader threads.
struct Tally {
    jobs: u64,
    reports: Vec<u32>,
    firsts: Vec<u32>,
    max_red: Vec<u32>,
    unique: u64,
    last_unique_ns: u64,
    last_id: u64,
    redelivered_reports: u64,
    bad: u64,
    unknown: u64,
    errors: Vec<String>,
    victims: HashSet<usize>,
    /// Each live victim's job in hand, and whether it reported it yet.
    holding: HashMap<usize, (u64, bool)>,
    victim_done: HashMap<usize, HashSet<u64>>,
    victim_dropped: HashMap<usize, HashSet<u64>>,
    stashed: Option<(u64, u64)>,
    stash_done_ns: Option<u64>,
}

impl Tally {
    fn new(jobs: u64) -> Self {
        Self {
            jobs,
            reports: vec![0; jobs as usize],
            firsts: vec![0; jobs as usize],
            max_red: vec![0; jobs as usize],
            unique: 0,
            last_unique_ns: 0,
            last_id: u64::MAX,
            redelivered_reports: 0,
            bad: 0,
            unknown: 0,
            errors: Vec::new(),
            victims: HashSet::new(),
            holding: HashMap::new(),
            victim_done: HashMap::new(),
            victim_dropped: HashMap::new(),
            stashed: None,
            stash_done_ns: None,
        }
    }

    fn done(&mut self, worker: usize, id: u64, red: u32) {
        if id >= self.jobs {
            self.unknown += 1;
            return;
        }
        let i = id as usize;
        if self.reports[i] == 0 {
            self.unique += 1;
            self.last_unique_ns = mono_ns();
            self.last_id = id;
        }
        self.reports[i] += 1;
        if red == 0 {
            self.firsts[i] += 1;
        } else {
            self.redelivered_reports += 1;
        }
        self.max_red[i] = self.max_red[i].max(red);
        if self.victims.contains(&worker) {
            self.victim_done.entry(worker).or_default().insert(id);
            if let Some(h) = self.holding.get_mut(&worker).filter(|h| h.0 == id) {
                h.1 = true;
            }
        }
        if matches!(self.stashed, Some((s, _)) if s == id) {
            self.stash_done_ns = Some(mono_ns());
        }
    }

    fn line(&mut self, worker: usize, line: &str) -> bool {
        let mut f = line.split_whitespace();
        let tag = f.next().unwrap_or("");
        let mut num = || f.next().and_then(|x| x.parse::<u64>().ok());
        match tag {
            "done" => {
                if let (Some(id), Some(red)) = (num(), num()) {
                    self.done(worker, id, red.min(u32::MAX as u64) as u32);
                    return self.victims.contains(&worker);
                }
            }
            "hold" => {
                if let Some(id) = num() {
                    self.holding.insert(worker, (id, false));
                    return true;
                }
            }
            "dropped" => {
                if let Some(id) = num() {
                    self.victim_dropped.entry(worker).or_default().insert(id);
                    if self.holding.get(&worker).is_some_and(|h| h.0 == id) {
                        self.holding.remove(&worker);
                    }
                }
            }
            "stash" => {
                if let Some(id) = num() {
                    self.stashed = Some((id, mono_ns()));
                }
            }
            "bad" => self.bad += 1,
            "err" => self.errors.push(format!("worker {worker}: {line}")),
            _ => {}
        }
        false
    }
}

type Shared = Arc<(Mutex<Tally>, Condvar)>;

fn lock(t: &Shared) -> MutexGuard<'_, Tally> {
    t.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a run's threads share.
struct Ctx {
    ns: String,
    peers: Peers,
    tally: Shared,
    readers: Mutex<Vec<JoinHandle<()>>>,
    workers: AtomicUsize,
}

impl Ctx {
    /// Starts a worker of `role` and its reader thread; returns its index
    /// and pid once it has its receiver.
    fn start_worker(&self, role: &str) -> std::io::Result<(usize, u32)> {
        let w = self.workers.fetch_add(1, Ordering::Relaxed);
        if role == "victim" {
            lock(&self.tally).victims.insert(w);
        }
        let (pid, mut out) = self.peers.spawn(
            "jobs-worker",
            &[
                ("SFB_BENCH_NS", self.ns.clone()),
                ("SFB_JOBS_ROLE", role.into()),
            ],
        )?;
        await_line(&mut out, "READY")?;
        let tally = Arc::clone(&self.tally);
        let reader = std::thread::spawn(move || absorb(&tally, w, out));
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(reader);
        Ok((w, pid))
    }
}

fn absorb(tally: &Shared, worker: usize, out: BufReader<ChildStdout>) {
    for line in out.lines().map_while(Result::ok) {
        if lock(tally).line(worker, &line) {
            tally.1.notify_all();
        }
    }
}

/// The kills done: `(seconds in, worker, pid, job held)`, and the error
/// that stopped the killer, if any.
type KillLog = (Vec<(f64, usize, u32, u64)>, Option<String>);

/// Kills the victim every [`KILL_EVERY`] while it holds a job (alternately
/// before and after it reported the job), and starts a replacement;
/// dropping it stops it.
struct Killer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<KillLog>>,
}

impl Killer {
    fn start(ctx: Arc<Ctx>, victim: (usize, u32), t0: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut kills = Vec::new();
            let (mut w, mut pid) = victim;
            let mut next = t0 + KILL_EVERY;
            loop {
                while Instant::now() < next {
                    if flag.load(Ordering::Relaxed) {
                        return (kills, None);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                let job = {
                    let mut t = lock(&ctx.tally);
                    loop {
                        if flag.load(Ordering::Relaxed) {
                            return (kills, None);
                        }
                        // Even kills before the report, odd ones after.
                        let reported = kills.len() % 2 == 1;
                        if let Some(&(j, r)) = t.holding.get(&w) {
                            if r == reported {
                                break j;
                            }
                        }
                        t = ctx
                            .tally
                            .1
                            .wait_timeout(t, Duration::from_millis(5))
                            .map(|r| r.0)
                            .unwrap_or_else(|e| e.into_inner().0);
                    }
                };
                if let Err(e) = signal(pid, libc::SIGKILL) {
                    return (kills, Some(format!("kill: {e}")));
                }
                kills.push((t0.elapsed().as_secs_f64(), w, pid, job));
                match ctx.start_worker("victim") {
                    Ok(v) => (w, pid) = v,
                    Err(e) => return (kills, Some(format!("replacement worker: {e}"))),
                }
                next += KILL_EVERY;
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> KillLog {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Killer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The chaos run (kills and a 3 s hold), then the calm one.
pub fn jobs(n: u64) -> Result<Vec<JobsRun>, Box<dyn std::error::Error>> {
    let mut runs = Vec::new();
    for chaos in [true, false] {
        eprintln!(
            "jobs: {n} jobs, {}",
            if chaos {
                "kills and a 3 s hold"
            } else {
                "calm"
            }
        );
        runs.push(run(n, chaos)?);
    }
    Ok(runs)
}

fn run(n: u64, chaos: bool) -> Result<JobsRun, Box<dyn std::error::Error>> {
    let ns = bench_namespace();
    // Dropped in reverse: the killer, the workers (killed and reaped if
    // still running), the sampler, the sender, the store, the guard.
    let _guard = NsGuard::new(&ns);
    let config = Config {
        decay_timeout_ms: 0,
        ..Config::default()
    };
    let store = PinnedBlobStore::new_shared(config, &ns, DEFAULT_CHUNK_SIZE)?;
    let tx = store.sender_with(
        CHANNEL,
        ChannelConfig::default().delivery(Delivery::AtLeastOnce),
    )?;
    let sampler = ShmSampler::start(&ns, Duration::from_millis(10));
    let ctx = Arc::new(Ctx {
        ns: ns.clone(),
        peers: Peers::default(),
        tally: Arc::new((Mutex::new(Tally::new(n)), Condvar::new())),
        readers: Mutex::new(Vec::new()),
        workers: AtomicUsize::new(0),
    });
    let roles: [&str; WORKERS] = if chaos {
        ["victim", "holder", "normal", "normal"]
    } else {
        ["normal"; WORKERS]
    };
    let mut first_victim = None;
    for role in roles {
        let v = ctx.start_worker(role)?;
        if role == "victim" {
            first_victim = Some(v);
        }
    }
    let t0 = Instant::now();
    let t0_ns = mono_ns();
    let killer = first_victim.map(|v| Killer::start(Arc::clone(&ctx), v, t0));
    let mut bytes = 0u64;
    for id in 0..n {
        let len = job_size(id);
        let mut loan = tx.loan(len)?;
        write_job(&mut loan, id);
        loan.send()?;
        bytes += len as u64;
    }
    let send_secs = t0.elapsed().as_secs_f64();
    let (kills, killer_error) = killer.map(Killer::finish).unwrap_or_default();
    drop(tx);
    let (stuck, failed) = ctx.peers.wait_all(Duration::from_secs(60));
    let readers: Vec<_> =
        std::mem::take(&mut *ctx.readers.lock().unwrap_or_else(|e| e.into_inner()));
    if stuck.is_empty() {
        for r in readers {
            let _ = r.join();
        }
    }
    let shm_peak = sampler.finish().peak;
    let t = lock(&ctx.tally);
    let dead_pids: HashSet<u32> = kills.iter().map(|k| k.2).collect();
    let mut errors = t.errors.clone();
    if let Some(e) = killer_error {
        errors.push(e);
    }
    let kills = kills
        .iter()
        .map(|&(at, w, _, job)| Kill {
            at,
            job,
            phase: if t.victim_dropped.get(&w).is_some_and(|d| d.contains(&job)) {
                KillPhase::Dropped
            } else if t.victim_done.get(&w).is_some_and(|d| d.contains(&job)) {
                KillPhase::ReportedHeld
            } else {
                KillPhase::Unreported
            },
            redelivered: t.max_red.get(job as usize).is_some_and(|&r| r > 0),
        })
        .collect();
    let run = JobsRun {
        label: if chaos {
            "victim SIGKILLed every 2 s + one job held 3 s".into()
        } else {
            "calm: 4 workers, no kills, no hold".into()
        },
        chaos,
        jobs: n,
        bytes,
        secs: t.last_unique_ns.saturating_sub(t0_ns) as f64 / 1e9,
        send_secs,
        workers: ctx.workers.load(Ordering::Relaxed),
        kills,
        lost: t.reports.iter().filter(|&&r| r == 0).count() as u64,
        duplicated: t.reports.iter().filter(|&&r| r > 1).count() as u64,
        unflagged: t.firsts.iter().filter(|&&f| f > 1).count() as u64,
        redelivered_reports: t.redelivered_reports,
        max_redelivered: t.max_red.iter().copied().max().unwrap_or(0),
        bad: t.bad,
        unknown: t.unknown,
        errors,
        long_hold: t.stashed.map(|(id, at)| {
            (
                id,
                t.stash_done_ns
                    .map_or(f64::NAN, |d| d.saturating_sub(at) as f64 / 1e9),
            )
        }),
        last_job: t.last_id,
        shm_peak,
        stuck,
        failed: failed
            .into_iter()
            .filter(|(pid, _)| !dead_pids.contains(pid))
            .collect(),
    };
    Ok(run)
}

/// The runs as Markdown: the checks and throughput of each, and the ratio
/// of the first run's throughput to the second's.
pub fn jobs_markdown(runs: &[JobsRun]) -> String {
    let mut s = String::from(
        "| run | jobs | MB sent | workers started | kills (held jobs redelivered of owed) | lost | ids reported twice | duplicates not flagged | redelivered reports | bad checksums | jobs/s | MB/s | seconds | peak /dev/shm | checks |\n|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in runs {
        let owed = r
            .kills
            .iter()
            .filter(|k| k.phase != KillPhase::Dropped)
            .count();
        let redelivered = r.kills.iter().filter(|k| k.redelivered).count();
        s.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} ({redelivered} of {owed}) | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.2} | {} | {} |\n",
            r.label,
            r.jobs,
            r.bytes as f64 / 1e6,
            r.workers,
            r.kills.len(),
            r.lost,
            r.duplicated,
            r.unflagged,
            r.redelivered_reports,
            r.bad,
            r.jobs_per_sec(),
            r.mb_per_sec(),
            r.secs,
            mib(r.shm_peak),
            if r.ok() { "pass" } else { "**FAIL**" }
        ));
    }
    if let [a, b] = runs {
        s.push_str(&format!(
            "\nThroughput ratio, {} / {}: {:.2} (jobs/s), {:.2} (MB/s)\n",
            a.label,
            b.label,
            a.jobs_per_sec() / b.jobs_per_sec().max(1e-9),
            a.mb_per_sec() / b.mb_per_sec().max(1e-9)
        ));
    }
    for r in runs {
        if r.chaos && r.kills.is_empty() {
            s.push_str(&format!(
                "\n{}: the sending took {:.2} s, less than the {} s before the first kill: no kill happened (send more jobs).",
                r.label,
                r.send_secs,
                KILL_EVERY.as_secs()
            ));
        }
        if r.chaos && r.long_hold.is_none() {
            s.push_str(&format!(
                "\n{}: the run ended before the holder set a job aside (it does {} ms after its first job).",
                r.label,
                LONG_HOLD_AFTER.as_millis()
            ));
        }
        if let Some((id, held)) = r.long_hold {
            s.push_str(&format!(
                "\n{}: job {id} was held aside for {held:.2} s before its report{}.",
                r.label,
                if r.last_job == id {
                    " (it was the last job reported: the run's time is the hold's)"
                } else {
                    ""
                }
            ));
        }
        if !r.kills.is_empty() {
            let list: Vec<String> = r
                .kills
                .iter()
                .map(|k| {
                    format!(
                        "{:.1} s: job {}{}",
                        k.at,
                        k.job,
                        match (k.phase, k.redelivered) {
                            (KillPhase::Unreported, true) => " held, unreported: redelivered",
                            (KillPhase::ReportedHeld, true) => {
                                " reported, not dropped: redelivered (a flagged duplicate)"
                            }
                            (KillPhase::Dropped, _) => " already dropped: nothing owed",
                            (_, false) => " **NOT redelivered**",
                        }
                    )
                })
                .collect();
            s.push_str(&format!("\n{}: kills: {}.", r.label, list.join("; ")));
        }
        if r.max_redelivered > 0 {
            s.push_str(&format!(
                "\n{}: largest redelivered count: {}.",
                r.label, r.max_redelivered
            ));
        }
        for e in r.errors.iter().take(10) {
            s.push_str(&format!("\n{}: {e}", r.label));
        }
        if !r.stuck.is_empty() {
            s.push_str(&format!(
                "\n{}: workers {:?} had not exited 60 s after the sender left.",
                r.label, r.stuck
            ));
        }
        if !r.failed.is_empty() {
            s.push_str(&format!("\n{}: workers failed: {:?}", r.label, r.failed));
        }
    }
    s.push('\n');
    s
}

/// A worker process.
fn worker() {
    let ns = std::env::var("SFB_BENCH_NS").expect("SFB_BENCH_NS");
    let role = std::env::var("SFB_JOBS_ROLE").unwrap_or_default();
    let store = PinnedBlobStore::attach_shared(Config::default(), &ns).expect("attach");
    let rx = store.receiver(CHANNEL).expect("receiver");
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = writeln!(out, "READY");
    let _ = out.flush();
    let count = if role == "victim" {
        victim(&rx, &mut out)
    } else {
        batched(&rx, &mut out, role == "holder")
    };
    let _ = writeln!(out, "END {count}");
    let _ = out.flush();
}

/// The victim: announces each job, holds it 10 ms, verifies and reports
/// it, holds it 10 ms more, drops it and says so.
fn victim(rx: &Receiver, out: &mut impl Write) -> u64 {
    let mut count = 0;
    loop {
        let m = match rx.recv() {
            Ok(m) => m,
            Err(RecvError::Disconnected) => return count,
            Err(e) => {
                let _ = writeln!(out, "err {e}");
                let _ = out.flush();
                continue;
            }
        };
        let _ = writeln!(out, "hold {}", u64_at(&m, 0));
        let _ = out.flush();
        std::thread::sleep(VICTIM_HOLD / 2);
        report(out, &m);
        let _ = out.flush();
        std::thread::sleep(VICTIM_HOLD / 2);
        let id = u64_at(&m, 0);
        drop(m);
        let _ = writeln!(out, "dropped {id}");
        let _ = out.flush();
        count += 1;
    }
}

fn report(out: &mut impl Write, m: &Message) {
    let (id, ok) = verify(m);
    if !ok {
        let _ = writeln!(out, "bad {id} {}", m.len());
    }
    let _ = writeln!(out, "done {id} {}", m.redelivered());
}

/// A normal worker (and the holder): holds up to [`BATCH`] jobs, writes
/// their reports, then drops them (acknowledges). The holder sets one job
/// aside for [`LONG_HOLD`], once, and goes on with the others.
fn batched(rx: &Receiver, out: &mut impl Write, holder: bool) -> u64 {
    let mut lines: Vec<u8> = Vec::with_capacity(BATCH * 32);
    let mut held: Vec<Message> = Vec::with_capacity(BATCH);
    let mut flush = |lines: &mut Vec<u8>, held: &mut Vec<Message>| {
        if !lines.is_empty() {
            let _ = out.write_all(lines);
            let _ = out.flush();
            lines.clear();
        }
        // Reported: now they may go.
        held.clear();
    };
    let mut stash: Option<(Message, Instant)> = None;
    let mut stashed = false;
    let mut first: Option<Instant> = None;
    let mut disconnected = false;
    let mut count = 0u64;
    loop {
        if stash
            .as_ref()
            .is_some_and(|(_, t)| t.elapsed() >= LONG_HOLD)
        {
            if let Some((m, _)) = stash.take() {
                report(&mut lines, &m);
                held.push(m);
                flush(&mut lines, &mut held);
            }
        }
        if disconnected {
            if stash.is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let m = match rx.try_recv() {
            Ok(m) => m,
            Err(TryRecvError::Empty) => {
                flush(&mut lines, &mut held);
                match rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => {
                        disconnected = true;
                        continue;
                    }
                    Err(e) => {
                        let _ = writeln!(lines, "err {e}");
                        continue;
                    }
                }
            }
            Err(TryRecvError::Disconnected) => {
                disconnected = true;
                continue;
            }
            Err(e) => {
                let _ = writeln!(lines, "err {e}");
                flush(&mut lines, &mut held);
                continue;
            }
        };
        count += 1;
        let now = Instant::now();
        let since_first = now - *first.get_or_insert(now);
        if holder && !stashed && since_first >= LONG_HOLD_AFTER {
            let _ = writeln!(lines, "stash {}", u64_at(&m, 0));
            stash = Some((m, now));
            stashed = true;
            continue;
        }
        report(&mut lines, &m);
        held.push(m);
        if held.len() >= BATCH {
            flush(&mut lines, &mut held);
        }
    }
    flush(&mut lines, &mut held);
    count
}

/// Runs the jobs peer role, if this process is one.
pub(crate) fn run_peer(role: &str) -> bool {
    if role != "jobs-worker" {
        return false;
    }
    worker();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_verify_and_sizes_span_the_range() {
        let mut small = 0;
        let mut large = 0;
        for id in 0..20_000u64 {
            let n = job_size(id);
            assert!((MIN_JOB..=MAX_JOB).contains(&n));
            small += usize::from(n < 1024);
            large += usize::from(n > 64 << 10);
        }
        // Log-uniform: 5 of 13 octaves below 1 KiB, 2 above 64 KiB.
        assert!(small > 6_000 && large > 2_000, "{small} {large}");
        for id in [0u64, 1, 7, 12_345] {
            let mut buf = vec![0u8; job_size(id)];
            write_job(&mut buf, id);
            assert_eq!(verify(&buf), (id, true));
            let last = buf.len() - 1;
            buf[last] ^= 1;
            assert_eq!(verify(&buf), (id, false));
        }
    }
}
