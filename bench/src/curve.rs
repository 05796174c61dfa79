//! `--scenario curve [--rounds N]`: the broadcast fan-out curve. One
//! publisher process, 1, 2, 4 and 8 subscriber processes, 4 KiB and 1 MiB
//! messages: this crate's broadcast channel (`ChannelConfig::default()`
//! with `Overflow::Block`, so every subscriber gets every message) next to
//! iceoryx2's publish-subscribe (queue 32 per subscriber, no overflow: the
//! publisher retries until delivered), the two taking turns. Every
//! subscriber busy-polls and reads every byte; 512 messages (or a tenth of
//! the cell) go untimed first; the clock runs from the first timed send
//! until the last subscriber has received the last message.

use iceoryx2::port::update_connections::UpdateConnections;
use iceoryx2::prelude::*;
use sfb_bench::{size_label, touch, PEER_ENV};
use stable_fragmented_buffer::{ChannelConfig, Config, Overflow, PinnedBlobStore, TryRecvError};
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Instant;

/// Subscriber counts of the curve.
pub const SUBSCRIBERS: [usize; 4] = [1, 2, 4, 8];
/// Message sizes of the curve.
pub const SIZES: [usize; 2] = [4 << 10, 1 << 20];

/// One point of one round.
#[derive(Debug, Clone)]
pub struct Point {
    /// "sfb" or "iceoryx2".
    pub transport: &'static str,
    /// Message size.
    pub size: usize,
    /// Subscriber processes.
    pub subscribers: usize,
    /// Messages each subscriber received in the timed part.
    pub messages: u64,
    /// Seconds of the timed part.
    pub secs: f64,
}

impl Point {
    /// Messages per second each subscriber received.
    pub fn per_subscriber(&self) -> f64 {
        self.messages as f64 / self.secs
    }
}

fn messages_for(size: usize) -> u64 {
    ((512u64 << 20) / size as u64).clamp(2_000, 200_000)
}

fn warm_for(messages: u64) -> u64 {
    (messages / 10).min(512)
}

/// Runs `rounds` rounds over every size and subscriber count.
pub fn curve(rounds: usize) -> Result<Vec<Point>, String> {
    let mut out = Vec::new();
    for r in 0..rounds {
        for size in SIZES {
            for n in SUBSCRIBERS {
                eprintln!(
                    "[round {}/{rounds}] {} x {n} subscribers",
                    r + 1,
                    size_label(size)
                );
                out.push(sfb_point(size, n)?);
                out.push(iox_point(size, n).map_err(|e| format!("iceoryx2: {e}"))?);
            }
        }
    }
    Ok(out)
}

struct Peers(Vec<(Child, BufReader<ChildStdout>)>);

impl Peers {
    fn spawn(n: usize, role: &str, env: &[(&str, String)]) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut peers = Vec::new();
        for _ in 0..n {
            let mut cmd = Command::new(&exe);
            cmd.env(PEER_ENV, role).stdout(Stdio::piped());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().map_err(|e| e.to_string())?;
            let out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
            peers.push((child, out));
        }
        Ok(Self(peers))
    }

    /// Waits for a line starting with `word` from every peer.
    fn all_say(&mut self, word: &str) -> Result<(), String> {
        for (_, out) in &mut self.0 {
            let mut line = String::new();
            while !line.starts_with(word) {
                line.clear();
                if out.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                    return Err(format!("a subscriber ended before saying {word}"));
                }
            }
        }
        Ok(())
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sfb_point(size: usize, n: usize) -> Result<Point, String> {
    let messages = messages_for(size);
    let warm = warm_for(messages);
    let ns = sfb_bench::bench_namespace();
    let store =
        PinnedBlobStore::new_shared(Config::default(), &ns, 32 << 20).map_err(|e| e.to_string())?;
    let cfg = ChannelConfig::default().overflow(Overflow::Block);
    let tx = store
        .publisher_with("curve", cfg)
        .map_err(|e| e.to_string())?;
    let mut peers = Peers::spawn(
        n,
        "curve-sfb",
        &[
            ("SFB_BENCH_NS", ns.clone()),
            ("SFB_BENCH_TOTAL", (warm + messages).to_string()),
            ("SFB_BENCH_WARM", warm.to_string()),
        ],
    )?;
    peers.all_say("READY")?;
    let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
    for _ in 0..warm {
        tx.send(&data).map_err(|e| e.to_string())?;
    }
    peers.all_say("WARM")?;
    let start = Instant::now();
    for _ in 0..messages {
        tx.send(&data).map_err(|e| e.to_string())?;
    }
    peers.all_say("DONE")?;
    let secs = start.elapsed().as_secs_f64();
    drop(peers);
    drop(tx);
    drop(store);
    Ok(Point {
        transport: "sfb",
        size,
        subscribers: n,
        messages,
        secs,
    })
}

fn sfb_subscriber() -> Result<(), Box<dyn std::error::Error>> {
    let ns = std::env::var("SFB_BENCH_NS")?;
    let total: u64 = std::env::var("SFB_BENCH_TOTAL")?.parse()?;
    let warm: u64 = std::env::var("SFB_BENCH_WARM")?.parse()?;
    let store = PinnedBlobStore::attach_shared(Config::default(), &ns)?;
    let rx = store.subscriber_with("curve", ChannelConfig::default().overflow(Overflow::Block))?;
    println!("READY");
    let (mut count, mut sink) = (0u64, 0u64);
    while count < total {
        match rx.try_recv() {
            Ok(m) => {
                sink = sink.wrapping_add(touch(&m));
                count += 1;
                if count == warm {
                    println!("WARM");
                }
            }
            Err(TryRecvError::Empty) => std::hint::spin_loop(),
            Err(e) => return Err(e.into()),
        }
    }
    std::hint::black_box(sink);
    println!("DONE");
    Ok(())
}

fn iox_point(size: usize, n: usize) -> Result<Point, Box<dyn std::error::Error>> {
    let messages = messages_for(size);
    let warm = warm_for(messages);
    let name = format!("sfbbench-curve-{}-{size}-{n}", std::process::id());
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let svc = crate::iceoryx::service(&node, &name, n)?;
    let publisher = svc
        .publisher_builder()
        .initial_max_slice_len(size)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()?;
    let mut peers = Peers::spawn(
        n,
        "curve-iox",
        &[
            ("SFB_BENCH_IOX", name.clone()),
            ("SFB_BENCH_SUBS", n.to_string()),
            ("SFB_BENCH_TOTAL", (warm + messages).to_string()),
            ("SFB_BENCH_WARM", warm.to_string()),
        ],
    )?;
    peers.all_say("READY")?;
    publisher.update_connections()?;
    let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let send = || -> Result<(), Box<dyn std::error::Error>> {
        let sample = publisher.loan_slice_uninit(size)?;
        sample.write_from_slice(&data).send()?;
        Ok(())
    };
    for _ in 0..warm {
        send()?;
    }
    peers.all_say("WARM")?;
    let start = Instant::now();
    for _ in 0..messages {
        send()?;
    }
    peers.all_say("DONE")?;
    let secs = start.elapsed().as_secs_f64();
    Ok(Point {
        transport: "iceoryx2",
        size,
        subscribers: n,
        messages,
        secs,
    })
}

fn iox_subscriber() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::var("SFB_BENCH_IOX")?;
    let n: usize = std::env::var("SFB_BENCH_SUBS")?.parse()?;
    let total: u64 = std::env::var("SFB_BENCH_TOTAL")?.parse()?;
    let warm: u64 = std::env::var("SFB_BENCH_WARM")?.parse()?;
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let svc = crate::iceoryx::service(&node, &name, n)?;
    let subscriber = svc
        .subscriber_builder()
        .buffer_size(crate::iceoryx::QUEUE)
        .create()?;
    println!("READY");
    let (mut count, mut sink) = (0u64, 0u64);
    while count < total {
        if let Some(sample) = subscriber.receive()? {
            sink = sink.wrapping_add(touch(sample.payload()));
            count += 1;
            if count == warm {
                println!("WARM");
            }
        } else {
            std::hint::spin_loop();
        }
    }
    std::hint::black_box(sink);
    println!("DONE");
    Ok(())
}

/// Runs this process as a subscriber of the curve, if it is one.
pub fn run_peer_if_asked() -> bool {
    let role = std::env::var(PEER_ENV).unwrap_or_default();
    let r = match role.as_str() {
        "curve-sfb" => sfb_subscriber(),
        "curve-iox" => iox_subscriber(),
        _ => return false,
    };
    if let Err(e) = r {
        eprintln!("{role}: {e}");
        std::process::exit(1);
    }
    true
}

/// The curve as a markdown table: per size and subscriber count, each
/// transport's median (over rounds) of messages per second per
/// subscriber, the deliveries per second in total, and the ratio.
pub fn markdown(points: &[Point]) -> String {
    let median = |t: &str, size: usize, n: usize| -> f64 {
        let mut v: Vec<f64> = points
            .iter()
            .filter(|p| p.transport == t && p.size == size && p.subscribers == n)
            .map(Point::per_subscriber)
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let mut s = String::from(
        "| size | subscribers | sfb msg/s per subscriber | sfb deliveries/s (GB/s) | iceoryx2 msg/s per subscriber | iceoryx2 deliveries/s (GB/s) | sfb / iceoryx2 |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for size in SIZES {
        for n in SUBSCRIBERS {
            let (a, b) = (median("sfb", size, n), median("iceoryx2", size, n));
            let gb = |x: f64| x * n as f64 * size as f64 / 1e9;
            s.push_str(&format!(
                "| {} | {n} | {} | {} ({:.2}) | {} | {} ({:.2}) | {:.2}x |\n",
                size_label(size),
                sfb_bench::rate(a),
                sfb_bench::rate(a * n as f64),
                gb(a),
                sfb_bench::rate(b),
                sfb_bench::rate(b * n as f64),
                gb(b),
                if b > 0.0 { a / b } else { 0.0 }
            ));
        }
    }
    s
}
