//! The channel end to end: a producer process sends on a work queue, a
//! consumer process receives, reads every byte and drops. Two phases per
//! cell: a stream as fast as it goes (throughput), then paced messages
//! (one-way latency of a consumer that is waiting, not queueing delay).
//! The consumer either busy-polls (`try_recv`) or blocks (`recv`: a short
//! spin, then a futex).

use super::cross::{expect_line, mono_ns, parse_result, report, spawn_peer};
use super::stats::Cell;
use super::workloads::{bench_namespace, ops_for};
use super::Options;
use stable_fragmented_buffer::DEFAULT_CHUNK_SIZE;
use stable_fragmented_buffer::{ChannelConfig, Config, PinnedBlobStore, TryRecvError};
use std::time::{Duration, Instant};

/// Paced messages per cell, and their spacing, by consumer kind and size
/// (a gap longer than the transfer itself, so the figure is latency, not
/// queueing).
pub(crate) fn paced(opts: &Options, blocking: bool, size: usize) -> (u64, Duration) {
    let n = opts.latency_samples.clamp(100, 2_000);
    let transfer = Duration::from_nanos((size as u64) / 2); // 2 GB/s, pessimistic
    if blocking {
        // Long enough for the consumer to have parked in the kernel.
        (n / 4, Duration::from_millis(1).max(transfer * 4))
    } else {
        (n, Duration::from_micros(20).max(transfer * 4))
    }
}

/// In-flight messages of a ring sized to the message: 32 (the depth of
/// iceoryx2's queue in its cell), fewer for large messages so the ring
/// stays within 4 MiB, the L2 of the development machine (the memory a
/// stream cycles through is what decides whether it stays in cache; the
/// runs that compared 4 and 8 slots at 1 MiB are in BENCHMARKS.md, and did
/// not separate them beyond noise).
/// Messages sent untimed before a cross-process row's clock starts (the
/// first touch of every slot or sample the stream will use: page faults of
/// fresh mappings, not the steady state the row reports): 512, more than
/// the default ring's 256 slots, or all of them for a short cell.
pub fn warm_up_ops(ops: u64) -> u64 {
    ops.min(512)
}

pub fn sized_in_flight(size: usize) -> u32 {
    ((4usize << 20) / size.max(1)).clamp(4, 32) as u32
}

/// Waits until `t` without sleeping (sleep granularity would blur the pacing).
pub(crate) fn spin_until(t: Instant) {
    while Instant::now() < t {
        std::hint::spin_loop();
    }
}

/// Reads every byte of `b` (summing 8-byte words), so the consumer pays
/// for the data, as a real one would.
pub fn touch(b: &[u8]) -> u64 {
    let mut words = b.chunks_exact(8);
    let mut sum = 0u64;
    for w in &mut words {
        sum = sum.wrapping_add(u64::from_le_bytes(w.try_into().unwrap_or_default()));
    }
    for &x in words.remainder() {
        sum = sum.wrapping_add(x as u64);
    }
    sum
}

/// Producer side of one channel cell, on `Config::default()` and the
/// default chunk size; the ring is `ChannelConfig::default()`, or (`sized`)
/// `ChannelConfig::for_messages(size, sized_in_flight(size))`.
pub fn channel_cycle(opts: &Options, size: usize, blocking: bool, sized: bool) -> Cell {
    let ops = ops_for(opts, size);
    let (n_paced, gap) = paced(opts, blocking, size);
    let ns = bench_namespace();
    let store =
        PinnedBlobStore::new_shared(Config::default(), &ns, DEFAULT_CHUNK_SIZE).expect("store");
    let ring = if sized {
        ChannelConfig::for_messages(size, sized_in_flight(size))
    } else {
        ChannelConfig::default()
    };
    let tx = store.sender_with("bench", ring).expect("sender");
    let warm = warm_up_ops(ops);
    let (mut child, mut out) = spawn_peer(
        "channel-consumer",
        &[
            ("SFB_BENCH_NS", ns.clone()),
            ("SFB_BENCH_OPS", (warm + ops).to_string()),
            ("SFB_BENCH_WARM", warm.to_string()),
            ("SFB_BENCH_BLOCK", u8::from(blocking).to_string()),
        ],
    )
    .expect("consumer process");
    expect_line(&mut out, "READY");
    let mut data: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let stamp = |d: &mut Vec<u8>| {
        if d.len() >= 8 {
            d[..8].copy_from_slice(&mono_ns().to_le_bytes());
        }
    };
    // Untimed: every slot the stream will use gets its first touch (the
    // page faults of a fresh mapping) before the clock starts.
    for _ in 0..warm {
        stamp(&mut data);
        tx.send(&data).expect("send");
    }
    expect_line(&mut out, "WARM");
    let start = Instant::now();
    for _ in 0..ops {
        stamp(&mut data);
        tx.send(&data).expect("send");
    }
    expect_line(&mut out, "STREAMED");
    let secs = start.elapsed().as_secs_f64();
    let mut next = Instant::now();
    for _ in 0..n_paced {
        next += gap;
        spin_until(next);
        stamp(&mut data);
        tx.send(&data).expect("send");
    }
    drop(tx);
    let (count, lat) = parse_result(&expect_line(&mut out, "RESULT "));
    let _ = child.wait();
    let peak = store.stats().chunks;
    assert_eq!(
        count,
        warm + ops + n_paced,
        "the consumer received every message"
    );
    let path = if size <= ring.inline_capacity() {
        "inline"
    } else {
        "via store"
    };
    Cell {
        workload: format!(
            "channel, 2 processes, {}{}",
            if blocking { "blocking" } else { "busy-poll" },
            if sized { ", ring sized" } else { "" }
        ),
        payload: size,
        copies: true,
        bound: None,
        threads: 1,
        state: "steady",
        ops,
        secs,
        latency: Some(lat),
        note: format!(
            "{path}; ring {} x {} B; Config::default(), 32 MiB chunks ({peak} at the end); {warm} messages untimed first; latency of {n_paced} paced messages, one per {} us",
            ring.slots,
            ring.slot_size,
            gap.as_micros()
        ),
    }
}

fn channel_consumer() {
    let ns = std::env::var("SFB_BENCH_NS").expect("SFB_BENCH_NS");
    let ops: u64 = std::env::var("SFB_BENCH_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("SFB_BENCH_OPS");
    let warm: u64 = std::env::var("SFB_BENCH_WARM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let blocking = std::env::var("SFB_BENCH_BLOCK").as_deref() == Ok("1");
    let store = PinnedBlobStore::attach_shared(Config::default(), &ns).expect("attach");
    let rx = store.receiver("bench").expect("receiver");
    println!("READY");
    let mut lat = Vec::new();
    let mut count = 0u64;
    let mut sink = 0u64;
    loop {
        let m = if blocking {
            match rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            }
        } else {
            match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => {
                    std::hint::spin_loop();
                    continue;
                }
                Err(_) => break,
            }
        };
        let now = mono_ns();
        sink = sink.wrapping_add(touch(&m));
        if count >= ops && m.len() >= 8 {
            let ts = u64::from_le_bytes(m[..8].try_into().unwrap_or_default());
            lat.push(now.saturating_sub(ts));
        }
        drop(m);
        count += 1;
        if count == warm && warm > 0 {
            println!("WARM");
        }
        if count == ops {
            println!("STREAMED");
        }
    }
    std::hint::black_box(sink);
    report(count, &mut lat);
}

/// Runs the channel peer role, if this process is one.
pub(crate) fn run_peer(role: &str) -> bool {
    if role != "channel-consumer" {
        return false;
    }
    channel_consumer();
    true
}
