//! Streaming camera-sized frames on the documented defaults: one producer
//! thread appends frames of 1 KiB to 8 MiB (log-uniform, the same seeded
//! sequence for every configuration), one consumer thread takes each handle,
//! reads the frame through a view and acknowledges it; the Quick Start's
//! set-up (the default 32 MiB chunks, a cleanup thread every 100 ms).
//! Reported: frame bytes delivered per second, the peak of the namespace's
//! files in the shm directory, the p99 of append-to-acknowledge latency,
//! and how often the producer met `StoreFull`.

use super::channel::touch;
use super::workloads::bench_namespace;
use stable_fragmented_buffer::DEFAULT_CHUNK_SIZE;
use stable_fragmented_buffer::{BlobError, BlobStoreLifecycleExt, Config, PinnedBlobStore};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One run of the stream on one configuration.
#[derive(Debug, Clone)]
pub struct StreamRun {
    /// Frame bytes acknowledged per second.
    pub bytes_per_sec: f64,
    /// Frames acknowledged per second.
    pub frames_per_sec: f64,
    /// Peak bytes of the namespace's files in the shm directory.
    pub shm_peak: u64,
    /// 99th percentile of append-to-acknowledge latency, µs.
    pub p99_us: f64,
    /// Appends that met `StoreFull` and were retried.
    pub full: u64,
}

/// The frame sizes: log-uniform in [1 KiB, 8 MiB], from a fixed seed.
fn sizes(n: usize) -> Vec<usize> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            (1024.0 * 8192f64.powf(u)) as usize
        })
        .collect()
}

/// Bytes the files of `ns` take in the shm directory now.
fn shm_bytes(ns: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let prefix = format!("{ns}_");
    std::fs::read_dir(stable_fragmented_buffer::inspect::shm_dir())
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Streams for `duration` on `config`, with at most `max_chunks` chunk
/// files if given.
pub fn stream(config: Config, max_chunks: Option<usize>, duration: Duration) -> StreamRun {
    let ns = bench_namespace();
    let store = Arc::new(
        PinnedBlobStore::new_shared_with_limit(
            config,
            &ns,
            DEFAULT_CHUNK_SIZE,
            max_chunks.map(|n| n as u32),
        )
        .expect("create the store"),
    );
    let _cleanup = store.start_cleanup_thread(Duration::from_millis(100));
    let frames = sizes(4096);
    let source: Vec<u8> = (0..8 << 20).map(|i| (i * 31 + 7) as u8).collect();
    let (tx, rx) =
        std::sync::mpsc::sync_channel::<(stable_fragmented_buffer::OverflowHandle, Instant)>(64);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let store = Arc::clone(&store);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut full = 0u64;
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let size = frames[i % frames.len()];
                let start = Instant::now();
                match store.append_shared(&source[..size]) {
                    Ok(h) => {
                        if tx.send((h, start)).is_err() {
                            break;
                        }
                        i += 1;
                    }
                    Err(BlobError::StoreFull { .. }) => {
                        full += 1;
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    Err(e) => panic!("append: {e}"),
                }
            }
            full
        })
    };
    let sampler = {
        let stop = Arc::clone(&stop);
        let ns = ns.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = shm_bytes(&ns).max(peak);
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let started = Instant::now();
    let (mut bytes, mut count, mut lat) = (0u64, 0u64, Vec::new());
    let mut sink = 0u64;
    while started.elapsed() < duration {
        let Ok((h, t)) = rx.recv_timeout(Duration::from_secs(5)) else {
            break;
        };
        let view = store.resolve_ref(&h).expect("a live frame resolves");
        sink = sink.wrapping_add(touch(&view));
        bytes += view.len() as u64;
        drop(view);
        store.acknowledge_shared(&h);
        count += 1;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    // Drain so the producer's last send returns.
    while let Ok((h, _)) = rx.recv_timeout(Duration::from_millis(200)) {
        store.acknowledge_shared(&h);
    }
    drop(rx);
    let full = producer.join().expect("producer");
    let shm_peak = sampler.join().expect("sampler");
    std::hint::black_box(sink);
    lat.sort_unstable();
    let p99 = lat
        .get(lat.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or(0);
    StreamRun {
        bytes_per_sec: bytes as f64 / elapsed,
        frames_per_sec: count as f64 / elapsed,
        shm_peak,
        p99_us: p99 as f64 / 1e3,
        full,
    }
}

/// Streams on `Config::default()` and on the same with `decay_timeout_ms:
/// 0`, alternating `rounds` times, and reports each configuration's median
/// run as markdown.
pub fn compare(rounds: usize, per_run: Duration) -> String {
    let no_decay = Config {
        decay_timeout_ms: 0,
        ..Config::default()
    };
    // The bound (no decay) first and second: the ratio below compares them.
    let configs = [
        ("Config::default()", Config::default(), None),
        ("decay_timeout_ms: 0", no_decay, None),
        (
            "Config::default(), max_chunks 8",
            Config::default(),
            Some(8),
        ),
    ];
    let mut runs: Vec<Vec<StreamRun>> = vec![Vec::new(); configs.len()];
    for r in 0..rounds {
        for (i, (label, config, limit)) in configs.iter().enumerate() {
            eprintln!("[stream round {}/{rounds}] {label}", r + 1);
            runs[i].push(stream(*config, *limit, per_run));
        }
    }
    let mut out = String::from(
        "| config | GB/s | frames/s | shm peak | p99 latency | StoreFull retries |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut medians = Vec::new();
    for ((label, _, _), mut rs) in configs.iter().zip(runs) {
        rs.sort_by(|a, b| a.bytes_per_sec.total_cmp(&b.bytes_per_sec));
        let m = rs[rs.len() / 2].clone();
        let peak = rs.iter().map(|r| r.shm_peak).max().unwrap_or(0);
        out.push_str(&format!(
            "| {label} | {:.2} | {:.0} | {:.0} MiB | {:.0} µs | {} |\n",
            m.bytes_per_sec / 1e9,
            m.frames_per_sec,
            peak as f64 / (1 << 20) as f64,
            m.p99_us,
            m.full
        ));
        medians.push((m, peak));
    }
    if let [(d, dp), (z, zp), ..] = &medians[..] {
        out.push_str(&format!(
            "\nDefault vs decay 0: {:.0} % of the throughput, {:.2}x the shm peak (medians of {rounds} alternating runs of {:.0} s; peak is the highest of the runs).\n",
            100.0 * d.bytes_per_sec / z.bytes_per_sec,
            *dp as f64 / (*zp).max(1) as f64,
            per_run.as_secs_f64()
        ));
    }
    out
}
