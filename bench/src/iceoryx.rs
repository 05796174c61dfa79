//! The iceoryx2 baseline: publish-subscribe of `[u8]` slices between two
//! processes, configured so that nothing is dropped or overwritten (safe
//! overflow off, the publisher retries until delivered) and the subscriber
//! attached before the first send. The publisher copies each payload into
//! a loaned sample; the subscriber borrows it, reads it, and releases it —
//! the same work as the store's full cycle (view, read, acknowledge).

use iceoryx2::prelude::*;
use sfb_bench::{mono_ns, touch, warm_up_ops, Cell, Latency, Options, PEER_ENV};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Paced messages after the stream (one-way latency of a waiting
/// subscriber, as in the channel cells).
fn paced(opts: &Options, size: usize) -> (u64, Duration) {
    // A gap longer than the transfer itself, so the figure is latency.
    let transfer = Duration::from_nanos((size as u64) / 2);
    (
        opts.latency_samples.clamp(100, 2_000),
        Duration::from_micros(20).max(transfer * 4),
    )
}

pub(crate) const QUEUE: usize = 32;

fn ops_for(opts: &Options, size: usize) -> u64 {
    (opts.bytes_per_cell / size as u64).clamp(opts.min_ops, opts.max_ops)
}

/// The publish-subscribe service of byte slices every iceoryx2 row uses:
/// queue 32 per subscriber, no overflow, no history, one publisher and
/// `subscribers` subscribers.
pub(crate) fn service(
    node: &Node<ipc::Service>,
    name: &str,
    subscribers: usize,
) -> Result<
    iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, [u8], ()>,
    Box<dyn std::error::Error>,
> {
    Ok(node
        .service_builder(&ServiceName::new(name)?)
        .publish_subscribe::<[u8]>()
        .enable_safe_overflow(false)
        .subscriber_max_buffer_size(QUEUE)
        .history_size(0)
        .max_subscribers(subscribers)
        .max_publishers(1)
        .open_or_create()?)
}

/// Producer side of one iceoryx2 cell.
pub fn cycle(opts: &Options, size: usize) -> Result<Cell, Box<dyn std::error::Error>> {
    let ops = ops_for(opts, size);
    let name = format!("sfbbench-iox-{}-{size}", std::process::id());
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let svc = service(&node, &name, 1)?;
    let publisher = svc
        .publisher_builder()
        .initial_max_slice_len(size)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()?;
    let warm = warm_up_ops(ops);
    let mut child = Command::new(std::env::current_exe()?)
        .env(PEER_ENV, "iceoryx-consumer")
        .env("SFB_BENCH_IOX", &name)
        .env("SFB_BENCH_OPS", (warm + ops).to_string())
        .env("SFB_BENCH_WARM", warm.to_string())
        .env("SFB_BENCH_PACED", paced(opts, size).0.to_string())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    while !line.starts_with("READY") {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            return Err("iceoryx2 consumer ended early".into());
        }
    }
    let mut data: Vec<u8> = (0..size).map(|i| i as u8).collect();
    // Untimed, as in the channel rows: every sample's first touch.
    for _ in 0..warm {
        let sample = publisher.loan_slice_uninit(size)?;
        sample.write_from_slice(&data).send()?;
    }
    line.clear();
    while !line.starts_with("WARM") {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            return Err("iceoryx2 consumer ended early".into());
        }
    }
    let start = Instant::now();
    for _ in 0..ops {
        let ts = mono_ns();
        if size >= 8 {
            data[..8].copy_from_slice(&ts.to_le_bytes());
        }
        let sample = publisher.loan_slice_uninit(size)?;
        sample.write_from_slice(&data).send()?;
    }
    line.clear();
    while !line.starts_with("STREAMED") {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            return Err("iceoryx2 consumer ended early".into());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let (n_paced, gap) = paced(opts, size);
    let mut next = Instant::now();
    for _ in 0..n_paced {
        next += gap;
        while Instant::now() < next {
            std::hint::spin_loop();
        }
        if size >= 8 {
            data[..8].copy_from_slice(&mono_ns().to_le_bytes());
        }
        let sample = publisher.loan_slice_uninit(size)?;
        sample.write_from_slice(&data).send()?;
    }
    line.clear();
    while !line.starts_with("RESULT") {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            return Err("iceoryx2 consumer ended without a result".into());
        }
    }
    child.wait()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.first() != Some(&(warm + ops + n_paced)) {
        return Err(format!("iceoryx2 delivered {:?} of {ops} messages", v.first()).into());
    }
    Ok(Cell {
        workload: "iceoryx2 pub/sub, 2 processes".into(),
        payload: size,
        copies: true,
        bound: None,
        threads: 1,
        state: "-",
        ops,
        secs,
        latency: Some(Latency {
            p50: v[1],
            p99: v[2],
            max: v[3],
        }),
        note: format!(
            "baseline: iceoryx2 0.10, queue {QUEUE}, no overflow, busy-polling subscriber reads every byte; {warm} messages untimed first; latency of {n_paced} paced messages, one per {} us",
            gap.as_micros()
        ),
    })
}

/// The consumer process, if this process is one.
pub fn run_peer_if_asked() -> bool {
    if std::env::var(PEER_ENV).as_deref() != Ok("iceoryx-consumer") {
        return false;
    }
    if let Err(e) = consume() {
        eprintln!("iceoryx2 consumer: {e}");
        std::process::exit(1);
    }
    true
}

fn consume() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::var("SFB_BENCH_IOX")?;
    let ops: u64 = std::env::var("SFB_BENCH_OPS")?.parse()?;
    let total = ops + std::env::var("SFB_BENCH_PACED")?.parse::<u64>()?;
    let warm: u64 = std::env::var("SFB_BENCH_WARM")?.parse()?;
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let svc = service(&node, &name, 1)?;
    let subscriber = svc.subscriber_builder().buffer_size(QUEUE).create()?;
    println!("READY");
    let mut lat = Vec::with_capacity(ops as usize);
    let mut count = 0u64;
    let mut sink = 0u64;
    while count < total {
        if let Some(sample) = subscriber.receive()? {
            let p = sample.payload();
            let now = mono_ns();
            if count >= ops && p.len() >= 8 {
                let ts = u64::from_le_bytes(p[..8].try_into()?);
                lat.push(now.saturating_sub(ts));
            }
            sink = sink.wrapping_add(touch(p));
            drop(sample);
            count += 1;
            if count == warm && warm > 0 {
                println!("WARM");
            }
            if count == ops {
                println!("STREAMED");
            }
        } else {
            std::hint::spin_loop();
        }
    }
    std::hint::black_box(sink);
    let l = Latency::from_samples(&mut lat).unwrap_or_default();
    println!("RESULT {count} {} {} {}", l.p50, l.p99, l.max);
    Ok(())
}
