//! `sfb`: operator CLI of stable-fragmented-buffer.

use clap::{Parser, Subcommand};
use stable_fragmented_buffer::{
    BlobError, BlobStoreLifecycleExt, Config, OverflowHandle, PinnedBlobStore, SharedBackend,
};
use std::io::{BufReader, BufWriter, Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "sfb",
    version,
    about = "Inspect, clean up and demonstrate stable-fragmented-buffer shared-memory stores"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A producer process and a consumer process exchange blobs through a
    /// shared store; every payload is verified; nothing is left behind.
    Demo {
        /// Messages to send.
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
        /// Payload size in bytes (at least 16).
        #[arg(long, default_value_t = 4096)]
        size: usize,
        /// Chunk size in bytes.
        #[arg(long, default_value_t = 32 << 20)]
        chunk_size: usize,
        /// Most chunk files at once (backpressure).
        #[arg(long, default_value_t = 8)]
        max_chunks: usize,
    },
    /// Removes a namespace whose creator is dead (refuses a live one unless --force).
    Cleanup {
        /// The namespace.
        namespace: String,
        /// Remove it even if its creator is alive.
        #[arg(long)]
        force: bool,
    },
    /// The consumer half of `demo` (started by `demo` itself).
    #[command(hide = true)]
    DemoConsumer {
        #[arg(long)]
        namespace: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Demo {
            messages,
            size,
            chunk_size,
            max_chunks,
        } => demo(messages, size, chunk_size, max_chunks),
        Cmd::DemoConsumer { namespace } => demo_consumer(&namespace),
        Cmd::Cleanup { namespace, force } => cleanup(&namespace, force),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sfb: {e}");
            ExitCode::from(1)
        }
    }
}

type AnyResult = Result<(), Box<dyn std::error::Error>>;

fn cleanup(ns: &str, force: bool) -> AnyResult {
    let removed = if force {
        SharedBackend::cleanup_namespace_forced(ns)?
    } else {
        SharedBackend::cleanup_namespace(ns)?
    };
    println!("removed {removed} file(s) of namespace {ns}");
    Ok(())
}

/// Precise monotonic nanoseconds, comparable between processes.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Deterministic payload of message `seq`: seq, send time, then bytes
/// derived from seq, so the consumer can check every byte.
fn fill(buf: &mut [u8], seq: u64) {
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for word in buf[16..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
    }
    buf[0..8].copy_from_slice(&seq.to_le_bytes());
}

fn demo(messages: u64, size: usize, chunk_size: usize, max_chunks: usize) -> AnyResult {
    if size < 16 {
        return Err("--size must be at least 16 bytes (sequence number and timestamp)".into());
    }
    let ns = format!("sfb-demo-{}", std::process::id());
    let config = Config {
        decay_timeout_ms: 5,
        ..Config::default()
    };
    let store = Arc::new(PinnedBlobStore::new_shared_with_limit(
        config,
        &ns,
        chunk_size,
        Some(max_chunks),
    )?);
    let cleaner = store.start_cleanup(Duration::from_millis(2));
    println!("namespace {ns}: chunk {chunk_size} B, at most {max_chunks} chunks; sending {messages} messages of {size} B");

    let mut child = Command::new(std::env::current_exe()?)
        .args(["demo-consumer", "--namespace", &ns])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut pipe =
        BufWriter::with_capacity(24 * 64, child.stdin.take().ok_or("no consumer stdin")?);
    let mut buf = vec![0u8; size];
    let mut full_waits = 0u64;
    let start = Instant::now();
    for seq in 0..messages {
        fill(&mut buf, seq);
        buf[8..16].copy_from_slice(&mono_ns().to_le_bytes());
        let handle = loop {
            match store.append_shared(&buf) {
                Ok(h) => break h,
                Err(BlobError::StoreFull { .. }) => {
                    // Backpressure: let the consumer catch up.
                    full_waits += 1;
                    pipe.flush()?;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => return Err(e.into()),
            }
        };
        pipe.write_all(&handle.as_bytes())?;
        if seq % 16 == 15 {
            pipe.flush()?;
        }
    }
    pipe.flush()?;
    drop(pipe);
    let mut report = String::new();
    child
        .stdout
        .take()
        .ok_or("no consumer stdout")?
        .read_to_string(&mut report)?;
    let status = child.wait()?;
    let elapsed = start.elapsed();
    cleaner.stop();
    let peak = store.stats().chunks;
    drop(store);
    let leftovers: Vec<String> = std::fs::read_dir("/dev/shm")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{ns}_")))
        .collect();
    print!("{report}");
    let secs = elapsed.as_secs_f64();
    let bytes = messages as f64 * size as f64;
    println!(
        "producer: {messages} messages, {:.1} MB in {:.3} s = {:.2} M msg/s, {:.2} GB/s; waited on a full store {full_waits} times; {peak} chunk(s) at the end",
        bytes / 1e6,
        secs,
        messages as f64 / secs / 1e6,
        bytes / secs / 1e9
    );
    if !status.success() {
        return Err(format!("consumer failed: {status}").into());
    }
    if !leftovers.is_empty() {
        return Err(format!("files left in /dev/shm: {leftovers:?}").into());
    }
    println!("nothing left in /dev/shm");
    Ok(())
}

fn demo_consumer(ns: &str) -> AnyResult {
    let store = PinnedBlobStore::attach_shared(Config::default(), ns)?;
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut raw = [0u8; 24];
    let mut expected = Vec::new();
    let (mut count, mut bytes, mut bad) = (0u64, 0u64, 0u64);
    let mut latencies = Vec::new();
    loop {
        match input.read_exact(&mut raw) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let handle = OverflowHandle::from_bytes(&raw);
        let Some(data) = store.resolve(&handle) else {
            bad += 1;
            continue;
        };
        let now = mono_ns();
        let seq = u64::from_le_bytes(data[0..8].try_into()?);
        let sent = u64::from_le_bytes(data[8..16].try_into()?);
        expected.resize(data.len(), 0);
        fill(&mut expected, seq);
        expected[8..16].copy_from_slice(&data[8..16]);
        if seq != count || expected != data {
            bad += 1;
        }
        latencies.push(now.saturating_sub(sent));
        store.acknowledge_shared(&handle);
        count += 1;
        bytes += data.len() as u64;
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1e3
    };
    println!(
        "consumer (pid {}): {count} messages verified byte for byte ({:.1} MB), {bad} bad; producer-to-consumer latency p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        std::process::id(),
        bytes as f64 / 1e6,
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    if bad > 0 {
        return Err(format!("{bad} messages did not verify").into());
    }
    Ok(())
}
