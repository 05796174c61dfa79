//! In-process workloads: append (cold and steady), resolve by copy and by
//! view, acknowledge, and the memcpy bound they are compared with.

use super::stats::{Cell, Latency};
use super::Options;
use stable_fragmented_buffer::{BlobStoreLifecycleExt, Config, OverflowHandle, PinnedBlobStore};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Chunk size of every benchmark store (the library default).
pub const CHUNK: usize = stable_fragmented_buffer::DEFAULT_CHUNK_SIZE;

/// Operations timed together when measuring throughput (timing each one
/// would cost more than a small append).
const BATCH: usize = 64;

/// Appends between acknowledgements in the steady workloads: [`BATCH`], or
/// fewer so that a batch holds at most 256 KiB (consumers acknowledge as
/// they go, not in 64 MiB bursts).
fn batch(size: usize) -> usize {
    BATCH.min((256 << 10) / size).max(1)
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A namespace for one benchmark store.
pub fn bench_namespace() -> String {
    format!(
        "sfbbench-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Operations for a payload size within the byte budget.
pub fn ops_for(opts: &Options, payload: usize) -> u64 {
    (opts.bytes_per_cell / payload as u64).clamp(opts.min_ops, opts.max_ops)
}

fn steady_config() -> Config {
    Config {
        decay_timeout_ms: 0,
        ..Config::default()
    }
}

fn store(config: Config, max_chunks: Option<usize>) -> Arc<PinnedBlobStore> {
    match PinnedBlobStore::new_shared_with_limit(
        config,
        &bench_namespace(),
        CHUNK,
        max_chunks.map(|n| n as u32),
    ) {
        Ok(s) => Arc::new(s),
        Err(e) => panic!("benchmark store: {e}"),
    }
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// Times `op` per call for `n` calls (latency pass).
fn latencies(n: u64, mut op: impl FnMut(u64)) -> Option<Latency> {
    let mut samples = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        op(i);
        samples.push(t.elapsed().as_nanos() as u64);
    }
    Latency::from_samples(&mut samples)
}

/// Appends to a fresh store, nothing acknowledged: every chunk is new, so
/// this pays the page faults of first touch.
pub fn append_cold(opts: &Options, size: usize) -> Cell {
    let ops = ops_for(opts, size);
    let data = payload(size);
    let s = store(Config::default(), None);
    let t = Instant::now();
    for _ in 0..ops {
        s.append_shared(&data).expect("append");
    }
    let secs = t.elapsed().as_secs_f64();
    drop(s);
    let s = store(Config::default(), None);
    let lat = latencies(ops.min(opts.latency_samples), |_| {
        s.append_shared(&data).expect("append");
    });
    Cell {
        workload: "append".into(),
        payload: size,
        copies: true,
        threads: 1,
        state: "cold",
        ops,
        secs,
        latency: lat,
        note: String::new(),
    }
}

/// Appends while acknowledging and reclaiming: `threads` producers each
/// append a batch, then acknowledge it; a lifecycle thread reclaims every
/// millisecond; chunks recycle through the warm pool. Throughput counts
/// append time only; the note gives the peak chunk count (resident memory).
pub fn append_steady(opts: &Options, size: usize, threads: usize) -> Cell {
    let ops = ops_for(opts, size).max((3 * CHUNK / size) as u64);
    let s = store(steady_config(), None);
    let cleaner = s.start_cleanup_thread(Duration::from_millis(1));
    // Warm-up: cycle a few chunks so the pool holds faulted chunks.
    run_appenders(&s, size, 1, (3 * CHUNK / size) as u64, 0);
    let (secs, lat) = run_appenders(&s, size, threads, ops, ops.min(opts.latency_samples));
    let st = s.stats();
    cleaner.stop();
    let note = format!(
        "{} chunks of 32 MiB at the end; {} recycled, {} unlinked",
        st.chunks, st.recycled, st.retired
    );
    Cell {
        workload: "append+ack".into(),
        payload: size,
        copies: true,
        threads,
        state: "steady",
        ops: ops * threads as u64,
        secs,
        latency: lat,
        note,
    }
}

/// `threads` producers append `ops` each in batches of [`BATCH`], timing
/// only the appends and acknowledging each batch after it; then producer 0
/// times `samples` appends one by one. Returns the append seconds of the
/// slowest producer, and the latency summary.
fn run_appenders(
    s: &Arc<PinnedBlobStore>,
    size: usize,
    threads: usize,
    ops: u64,
    samples: u64,
) -> (f64, Option<Latency>) {
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let s = Arc::clone(s);
            std::thread::spawn(move || {
                let data = payload(size);
                let mut handles: Vec<OverflowHandle> = Vec::with_capacity(BATCH);
                let mut spent = Duration::ZERO;
                let mut done = 0;
                while done < ops {
                    let n = batch(size).min((ops - done) as usize);
                    let start = Instant::now();
                    for _ in 0..n {
                        handles.push(append_retrying(&s, &data));
                    }
                    spent += start.elapsed();
                    for h in handles.drain(..) {
                        s.acknowledge_shared(&h);
                    }
                    done += n as u64;
                }
                let mut lat = Vec::new();
                if t == 0 {
                    for i in 0..samples {
                        let one = Instant::now();
                        handles.push(append_retrying(&s, &data));
                        lat.push(one.elapsed().as_nanos() as u64);
                        if i % batch(size) as u64 == 0 {
                            for h in handles.drain(..) {
                                s.acknowledge_shared(&h);
                            }
                        }
                    }
                }
                (spent, Latency::from_samples(&mut lat))
            })
        })
        .collect();
    let results: Vec<_> = workers
        .into_iter()
        .map(|w| w.join().expect("appender"))
        .collect();
    let secs = results
        .iter()
        .map(|r| r.0.as_secs_f64())
        .fold(0.0, f64::max);
    (secs, results.into_iter().next().and_then(|r| r.1))
}

fn append_retrying(s: &PinnedBlobStore, data: &[u8]) -> OverflowHandle {
    loop {
        match s.append_shared(data) {
            Ok(h) => return h,
            Err(stable_fragmented_buffer::BlobError::StoreFull { .. }) => std::thread::yield_now(),
            Err(e) => panic!("append: {e}"),
        }
    }
}

/// Pre-appends a working set, then resolves it cyclically by copy or view.
pub fn resolve(opts: &Options, size: usize, view: bool) -> Cell {
    let ops = ops_for(opts, size);
    let set = (opts.bytes_per_cell.min(256 << 20) / size as u64).clamp(1, 100_000);
    let s = store(Config::default(), None);
    let data = payload(size);
    let handles: Vec<_> = (0..set)
        .map(|_| s.append_shared(&data).expect("append"))
        .collect();
    let mut sink = 0u64;
    let mut one = |i: u64| {
        let h = &handles[(i % set) as usize];
        if view {
            let v = s.resolve_ref(h).expect("view");
            sink = sink.wrapping_add(v[0] as u64 + v[v.len() - 1] as u64);
        } else {
            let v = s.resolve(h).expect("copy");
            sink = sink.wrapping_add(v[0] as u64 + v[v.len() - 1] as u64);
        }
    };
    let t = Instant::now();
    for i in 0..ops {
        one(i);
    }
    let secs = t.elapsed().as_secs_f64();
    let lat = latencies(ops.min(opts.latency_samples), &mut one);
    std::hint::black_box(sink);
    let workload = if view {
        "resolve (view)"
    } else {
        "resolve (copy)"
    };
    Cell {
        workload: workload.into(),
        payload: size,
        // A view is O(1): it moves no payload.
        copies: !view,
        threads: 1,
        state: "-",
        ops,
        secs,
        latency: lat,
        note: String::new(),
    }
}

/// Acknowledges pre-appended blobs, each once.
pub fn acknowledge(opts: &Options, size: usize) -> Cell {
    let ops = ops_for(opts, size).min((opts.bytes_per_cell.min(512 << 20) / size as u64).max(1));
    let s = store(Config::default(), None);
    let data = payload(size);
    let handles: Vec<_> = (0..ops)
        .map(|_| s.append_shared(&data).expect("append"))
        .collect();
    let half = handles.len() / 2;
    let t = Instant::now();
    for h in &handles[..half] {
        assert!(s.acknowledge_shared(h));
    }
    let secs = t.elapsed().as_secs_f64();
    let rest = &handles[half..];
    let lat = latencies(rest.len() as u64, |i| {
        s.acknowledge_shared(&rest[i as usize]);
    });
    Cell {
        workload: "acknowledge".into(),
        payload: size,
        copies: false,
        threads: 1,
        state: "-",
        ops: half as u64,
        secs,
        latency: lat,
        note: String::new(),
    }
}

/// The bound: memcpy of the payload into already-faulted memory, moving
/// sequentially through a 256 MiB buffer (larger than any cache).
pub fn memcpy_bound(opts: &Options, size: usize) -> Cell {
    let ops = ops_for(opts, size);
    let data = payload(size);
    let len = (256usize << 20).max(size * 2);
    let mut buf = vec![1u8; len];
    let slots = len / size;
    let t = Instant::now();
    for i in 0..ops as usize {
        let at = (i % slots) * size;
        buf[at..at + size].copy_from_slice(&data);
    }
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(&buf);
    Cell {
        workload: "memcpy bound".into(),
        payload: size,
        copies: true,
        threads: 1,
        state: "faulted",
        ops,
        secs,
        latency: None,
        note: String::new(),
    }
}
