//! Cross-process full cycle: a producer process appends and sends handles
//! through a shared-memory ring; a consumer process resolves each by view,
//! reads it, and acknowledges. The Unix-domain-socket baseline moves the
//! same payloads through the kernel. Both report one-way latency from a
//! timestamp taken just before the producer's append (or write).

use super::ring::Ring;
use super::stats::{Cell, Latency};
use super::workloads::{bench_namespace, ops_for};
use super::Options;
use stable_fragmented_buffer::{BlobStoreLifecycleExt, Config, OverflowHandle, PinnedBlobStore};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Environment variable naming the role of a benchmark peer process.
pub const PEER_ENV: &str = "SFB_BENCH_PEER";

/// Precise monotonic nanoseconds, comparable between processes.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub(crate) fn spawn_peer(
    role: &str,
    env: &[(&str, String)],
) -> std::io::Result<(Child, BufReader<std::process::ChildStdout>)> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(PEER_ENV, role)
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let out = BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?,
    );
    Ok((child, out))
}

pub(crate) fn expect_line(out: &mut BufReader<std::process::ChildStdout>, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("benchmark peer ended before saying {prefix}");
        }
        if let Some(rest) = line.trim_end().strip_prefix(prefix) {
            return rest.to_owned();
        }
    }
}

pub(crate) fn parse_result(rest: &str) -> (u64, Latency) {
    let v: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    (
        v[0],
        Latency {
            p50: v[1],
            p99: v[2],
            max: v[3],
        },
    )
}

pub(crate) fn report(count: u64, lat: &mut [u64]) {
    let l = Latency::from_samples(lat).unwrap_or_default();
    println!("RESULT {count} {} {} {}", l.p50, l.p99, l.max);
}

/// Messages in flight between producer and consumer (the iceoryx2
/// comparison uses a queue of the same depth).
pub const IN_FLIGHT: u64 = 32;

/// Chunk size of the full-cycle cells: 64 payloads per chunk, between
/// 2 MiB and 32 MiB, so recycling keeps the working set small.
pub fn cycle_chunk(size: usize) -> usize {
    (size * 64).clamp(2 << 20, 32 << 20)
}

/// Producer side of the store's full cycle.
pub fn store_cycle(opts: &Options, size: usize) -> Cell {
    let ops = ops_for(opts, size);
    let ns = bench_namespace();
    let config = Config {
        decay_timeout_ms: 0,
        ..Config::default()
    };
    let store = Arc::new(
        PinnedBlobStore::new_shared_with_limit(config, &ns, cycle_chunk(size), Some(64))
            .expect("store"),
    );
    let cleaner = store.start_cleanup_thread(Duration::from_millis(1));
    let ring_path = stable_fragmented_buffer::inspect::shm_dir().join(format!("{ns}-ring"));
    let ring = Ring::create(&ring_path, IN_FLIGHT).expect("ring");
    let (mut child, mut out) = spawn_peer(
        "store-consumer",
        &[
            ("SFB_BENCH_NS", ns.clone()),
            ("SFB_BENCH_RING", ring_path.display().to_string()),
        ],
    )
    .expect("consumer process");
    expect_line(&mut out, "READY");
    let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let start = Instant::now();
    for _ in 0..ops {
        let ts = mono_ns();
        let h = loop {
            match store.append_shared(&data) {
                Ok(h) => break h,
                Err(stable_fragmented_buffer::BlobError::StoreFull { .. }) => {
                    std::thread::yield_now()
                }
                Err(e) => panic!("append: {e}"),
            }
        };
        let b = h.as_bytes();
        let w = |i: usize| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        ring.push([w(0), w(1), w(2), ts]);
    }
    ring.close();
    let (count, lat) = parse_result(&expect_line(&mut out, "RESULT "));
    let secs = start.elapsed().as_secs_f64();
    let _ = child.wait();
    let peak = store.stats().chunks;
    cleaner.stop();
    assert_eq!(count, ops, "the consumer received every message");
    Cell {
        workload: "full cycle, 2 processes".into(),
        payload: size,
        copies: true,
        bound: None,
        threads: 1,
        state: "steady",
        ops,
        secs,
        latency: Some(lat),
        note: format!(
            "view + ack in the consumer; {IN_FLIGHT} in flight; {} chunks, {peak} at the end",
            super::stats::size_label(cycle_chunk(size))
        ),
    }
}

fn store_consumer() {
    let ns = std::env::var("SFB_BENCH_NS").expect("SFB_BENCH_NS");
    let ring = Ring::open(
        std::env::var("SFB_BENCH_RING")
            .expect("SFB_BENCH_RING")
            .as_ref(),
    )
    .expect("ring");
    let store = PinnedBlobStore::attach_shared(Config::default(), &ns).expect("attach");
    println!("READY");
    let mut lat = Vec::new();
    let mut count = 0u64;
    let mut sink = 0u64;
    while let Some(m) = ring.pop() {
        let mut b = [0u8; 24];
        for i in 0..3 {
            b[i * 8..i * 8 + 8].copy_from_slice(&m[i].to_ne_bytes());
        }
        let h = OverflowHandle::from_array(&b);
        let view = store.resolve_ref(&h).expect("a live handle resolves");
        sink = sink.wrapping_add(view[0] as u64 + view[view.len() - 1] as u64);
        drop(view);
        store.acknowledge_shared(&h);
        lat.push(mono_ns().saturating_sub(m[3]));
        count += 1;
    }
    std::hint::black_box(sink);
    report(count, &mut lat);
}

/// Producer side of the Unix-domain-socket baseline.
pub fn socket_cycle(opts: &Options, size: usize) -> Cell {
    let ops = ops_for(opts, size);
    let path = std::env::temp_dir().join(format!("{}.sock", bench_namespace()));
    let listener = UnixListener::bind(&path).expect("bind");
    let (mut child, mut out) = spawn_peer(
        "socket-consumer",
        &[
            ("SFB_BENCH_SOCK", path.display().to_string()),
            ("SFB_BENCH_SIZE", size.to_string()),
        ],
    )
    .expect("consumer process");
    let (mut stream, _) = listener.accept().expect("accept");
    let _ = std::fs::remove_file(&path);
    let mut frame = vec![0u8; 8 + size];
    for (i, b) in frame[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let start = Instant::now();
    for _ in 0..ops {
        frame[..8].copy_from_slice(&mono_ns().to_le_bytes());
        stream.write_all(&frame).expect("write");
    }
    drop(stream);
    let (count, lat) = parse_result(&expect_line(&mut out, "RESULT "));
    let secs = start.elapsed().as_secs_f64();
    let _ = child.wait();
    assert_eq!(count, ops);
    Cell {
        workload: "Unix socket, 2 processes".into(),
        payload: size,
        copies: true,
        bound: None,
        threads: 1,
        state: "-",
        ops,
        secs,
        latency: Some(lat),
        note: "baseline: copied through the kernel".into(),
    }
}

fn socket_consumer() {
    let path = std::env::var("SFB_BENCH_SOCK").expect("SFB_BENCH_SOCK");
    let size: usize = std::env::var("SFB_BENCH_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("SFB_BENCH_SIZE");
    let mut stream = UnixStream::connect(path).expect("connect");
    let mut frame = vec![0u8; 8 + size];
    let mut lat = Vec::new();
    let mut count = 0u64;
    while stream.read_exact(&mut frame).is_ok() {
        let ts = u64::from_le_bytes(frame[..8].try_into().unwrap_or_default());
        lat.push(mono_ns().saturating_sub(ts));
        count += 1;
    }
    report(count, &mut lat);
}

/// Runs the peer role named in [`PEER_ENV`], if any; returns whether it did.
pub fn run_peer_if_asked() -> bool {
    match std::env::var(PEER_ENV).as_deref() {
        Ok("store-consumer") => store_consumer(),
        Ok("socket-consumer") => socket_consumer(),
        Ok(role) => {
            return super::channel::run_peer(role)
                || super::bare_ring::run_peer(role)
                || super::chunks::run_peer(role)
                || super::fanout::run_peer(role)
                || super::jobs::run_peer(role)
                || super::wait::run_peer(role)
        }
        _ => return false,
    }
    true
}
