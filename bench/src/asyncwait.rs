//! `--scenario async`: the one-way latency of paced 4 KiB messages to a
//! receiver process that waits for each one, by how it waits: the
//! blocking `recv`, `recv_async` under tokio's current-thread runtime, and
//! under its multi-thread runtime. The modes take turns in each round, on a
//! fresh channel each, and iceoryx2's pub/sub cell of the same size (which
//! has no async receive: a busy-polling subscriber) runs in the same round.

use crate::iceoryx;
use sfb_bench::{bench_namespace, mono_ns, percentile, touch, Options, PEER_ENV};
use stable_fragmented_buffer::{ChannelConfig, Config, PinnedBlobStore, DEFAULT_CHUNK_SIZE};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Message size.
pub const SIZE: usize = 4096;
/// Paced messages per run, one per [`GAP`] (long enough for the receiver
/// to have gone to sleep in the kernel before each).
const MESSAGES: u64 = 1000;
const GAP: Duration = Duration::from_millis(1);

const ROLE: &str = "async-receiver";

/// How the receiver waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `Receiver::recv` (a spin of the default budget, then a futex).
    Blocking,
    /// `recv_async` on tokio's current-thread runtime.
    TokioCurrentThread,
    /// `recv_async` on tokio's multi-thread runtime (2 workers).
    TokioMultiThread,
    /// The bound of any design that waits in one thread and runs the task
    /// in another: a thread blocked in `recv` hands each message to a
    /// second thread blocked on a `std::sync::mpsc` channel (two wake-ups
    /// per message, as a helper thread and an executor's thread make).
    HandOff,
}

impl Mode {
    const ALL: [Mode; 4] = [
        Mode::Blocking,
        Mode::HandOff,
        Mode::TokioCurrentThread,
        Mode::TokioMultiThread,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Blocking => "blocking recv",
            Mode::TokioCurrentThread => "recv_async, tokio current-thread",
            Mode::TokioMultiThread => "recv_async, tokio multi-thread",
            Mode::HandOff => "blocking recv, handed to a second thread (bound: two wake-ups)",
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Mode::Blocking => "blocking",
            Mode::TokioCurrentThread => "tokio-ct",
            Mode::TokioMultiThread => "tokio-mt",
            Mode::HandOff => "hand-off",
        }
    }
}

/// One run's latencies (ns).
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub p50: u64,
    pub p99: u64,
}

/// Rounds of every mode, and iceoryx2's cell, in turn.
pub fn run(rounds: usize) -> Result<Vec<(String, Vec<Run>)>, String> {
    let mut out: Vec<(String, Vec<Run>)> = Mode::ALL
        .iter()
        .map(|m| (m.name().to_owned(), Vec::new()))
        .collect();
    out.push((
        "iceoryx2 0.10 pub/sub (busy-polling subscriber)".to_owned(),
        Vec::new(),
    ));
    for round in 0..rounds {
        for (i, mode) in Mode::ALL.iter().enumerate() {
            eprintln!("[round {}/{rounds}] {}", round + 1, mode.name());
            out[i].1.push(one(*mode)?);
        }
        eprintln!("[round {}/{rounds}] iceoryx2", round + 1);
        let cell = iceoryx::cycle(&Options::quick(), SIZE).map_err(|e| e.to_string())?;
        let lat = cell.latency.ok_or("iceoryx2 cell without latency")?;
        out[Mode::ALL.len()].1.push(Run {
            p50: lat.p50,
            p99: lat.p99,
        });
    }
    Ok(out)
}

fn one(mode: Mode) -> Result<Run, String> {
    let ns = bench_namespace();
    let store = PinnedBlobStore::new_shared(Config::default(), &ns, DEFAULT_CHUNK_SIZE)
        .map_err(|e| e.to_string())?;
    let tx = store
        .sender_with("async", ChannelConfig::default())
        .map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .env(PEER_ENV, ROLE)
        .env("SFB_BENCH_NS", &ns)
        .env("SFB_BENCH_MODE", mode.arg())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.trim() != "READY" {
        return Err(format!("receiver said {line:?}"));
    }
    let mut data = vec![7u8; SIZE];
    let mut next = Instant::now();
    for _ in 0..MESSAGES {
        next += GAP;
        while Instant::now() < next {
            std::thread::sleep(Duration::from_micros(50).min(next - Instant::now()));
        }
        data[..8].copy_from_slice(&mono_ns().to_le_bytes());
        tx.send(&data).map_err(|e| e.to_string())?;
    }
    drop(tx);
    line.clear();
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    let _ = child.wait();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    match v.as_slice() {
        [count, p50, p99] if *count == MESSAGES => Ok(Run {
            p50: *p50,
            p99: *p99,
        }),
        _ => Err(format!("receiver reported {line:?}")),
    }
}

/// The receiver process.
fn receiver() -> Result<(), Box<dyn std::error::Error>> {
    let ns = std::env::var("SFB_BENCH_NS")?;
    let mode = std::env::var("SFB_BENCH_MODE")?;
    let store = PinnedBlobStore::attach_shared(Config::default(), &ns)?;
    let rx = store.receiver("async")?;
    println!("READY");
    let mut lat = Vec::with_capacity(MESSAGES as usize);
    let mut sink = 0u64;
    let mut got = |m: stable_fragmented_buffer::Message| {
        let now = mono_ns();
        let ts = u64::from_le_bytes(m[..8].try_into().unwrap_or_default());
        lat.push(now.saturating_sub(ts));
        sink = sink.wrapping_add(touch(&m));
    };
    match mode.as_str() {
        "blocking" => {
            while let Ok(m) = rx.recv() {
                got(m);
            }
        }
        "hand-off" => {
            let (to, from) = std::sync::mpsc::channel();
            std::thread::scope(|s| {
                s.spawn(move || loop {
                    match rx.recv() {
                        Ok(m) => {
                            if to.send(m).is_err() {
                                break;
                            }
                        }
                        Err(stable_fragmented_buffer::RecvError::Disconnected) => break,
                        Err(e) => eprintln!("hand-off: {e}"),
                    }
                });
                while let Ok(m) = from.recv() {
                    got(m);
                }
            });
        }
        "tokio-ct" | "tokio-mt" => {
            let rt = if mode == "tokio-ct" {
                tokio::runtime::Builder::new_current_thread().build()?
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .build()?
            };
            rt.block_on(async {
                while let Ok(m) = rx.recv_async().await {
                    got(m);
                }
            });
        }
        other => return Err(format!("mode {other}").into()),
    }
    std::hint::black_box(sink);
    lat.sort_unstable();
    println!(
        "RESULT {} {} {}",
        lat.len(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99)
    );
    Ok(())
}

/// Runs the receiver role, if this process is one.
pub fn run_peer_if_asked() -> bool {
    if std::env::var(PEER_ENV).as_deref() != Ok(ROLE) {
        return false;
    }
    if let Err(e) = receiver() {
        eprintln!("async receiver: {e}");
        std::process::exit(1);
    }
    true
}

fn us(ns: u64) -> String {
    format!("{:.1} us", ns as f64 / 1000.0)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// The table: medians over rounds, and each async mode's p50 over the
/// blocking receive's p50 of the same round (the median of those ratios).
pub fn markdown(rows: &[(String, Vec<Run>)]) -> String {
    let blocking: Vec<u64> = rows[0].1.iter().map(|r| r.p50).collect();
    let mut s = String::from("| receiver waits by | p50 | p99 | p50 / blocking p50 (same round, median) |\n|---|---:|---:|---:|\n");
    for (name, runs) in rows {
        let ratio = {
            let mut r: Vec<f64> = runs
                .iter()
                .zip(&blocking)
                .map(|(a, b)| a.p50 as f64 / (*b).max(1) as f64)
                .collect();
            r.sort_by(f64::total_cmp);
            r.get(r.len() / 2).copied().unwrap_or(0.0)
        };
        s.push_str(&format!(
            "| {name} | {} | {} | {ratio:.2}x |\n",
            us(median(runs.iter().map(|r| r.p50).collect())),
            us(median(runs.iter().map(|r| r.p99).collect())),
        ));
    }
    s
}
