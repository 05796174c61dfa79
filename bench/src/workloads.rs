//! In-process workloads: append (cold and steady), resolve by copy and by
//! view, acknowledge, and the memcpy bound they are compared with.

use super::bound::Bound;
use super::stats::{Cell, Latency};
use super::Options;
use stable_fragmented_buffer::{
    BlobStoreLifecycleExt, Config, OverflowHandle, PinnedBlobStore, Writer,
};
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

/// Slices each append cell alternates with slices of its bound.
const SLICES: u64 = 16;

/// Appends to a fresh store through a [`Writer`], nothing acknowledged:
/// every chunk is new, so this pays for backing it with memory. Timed in
/// one stretch, not in slices: the worker backs chunks ahead of the
/// appender in the background, and pauses between slices would give it
/// time the appender does not have. The bound is measured in slices just
/// before and just after.
pub fn append_cold(opts: &Options, size: usize) -> Cell {
    let ops = ops_for(opts, size);
    let data = payload(size);
    let s = store(Config::default(), None);
    let mut bound = Bound::new(&data);
    let mut w = s.writer().expect("writer");
    let per = (ops / SLICES).max(1);
    for _ in 0..SLICES / 2 {
        bound.slice(per);
    }
    let t = Instant::now();
    for _ in 0..ops {
        w.append(&data).expect("append");
    }
    let spent = t.elapsed();
    for _ in 0..SLICES / 2 {
        bound.slice(per);
    }
    drop(w);
    drop(s);
    let s = store(Config::default(), None);
    let mut w = s.writer().expect("writer");
    let lat = latencies(ops.min(opts.latency_samples), |_| {
        w.append(&data).expect("append");
    });
    Cell {
        workload: "append".into(),
        payload: size,
        copies: true,
        bound: Some(bound.rate()),
        threads: 1,
        state: "cold",
        ops,
        secs: spent.as_secs_f64(),
        latency: lat,
        note: String::new(),
    }
}

/// Appends while acknowledging and reclaiming: `threads` producers, each
/// with its own [`Writer`], append a batch, then acknowledge it, both
/// timed (one call per blob, or with `batched` one call per batch); a lifecycle thread reclaims every millisecond; chunks recycle
/// through the warm pool. Each producer alternates slices of this with
/// slices of its bound; the cell's bound is the sum of theirs. The note
/// gives the peak chunk count (resident memory).
pub fn append_steady(opts: &Options, size: usize, threads: usize, batched: bool) -> Cell {
    let ops = ops_for(opts, size).max((3 * CHUNK / size) as u64);
    let s = store(steady_config(), None);
    let cleaner = s.start_cleanup_thread(Duration::from_millis(1));
    // Warm-up: cycle a few chunks so the pool holds faulted chunks.
    run_appenders(&s, size, 1, (3 * CHUNK / size) as u64, 0, false, batched);
    let run = run_appenders(
        &s,
        size,
        threads,
        ops,
        ops.min(opts.latency_samples),
        true,
        batched,
    );
    let st = s.stats();
    cleaner.stop();
    let note = format!(
        "{} chunks of 32 MiB at the end; {} recycled, {} unlinked",
        st.chunks, st.recycled, st.retired
    );
    let total = ops * threads as u64;
    Cell {
        workload: if batched {
            format!("append+ack, batches of {}", batch(size))
        } else {
            "append+ack".into()
        },
        payload: size,
        copies: true,
        bound: Some(run.bound),
        threads,
        state: "steady",
        ops: total,
        secs: total as f64 / run.ops_per_sec,
        latency: run.latency,
        note,
    }
}

/// What [`run_appenders`] measured.
struct Appenders {
    /// Sum over the producers of their appends+acknowledgements per second.
    ops_per_sec: f64,
    /// Sum over the producers of their bounds, bytes per second.
    bound: f64,
    /// Producer 0's append latencies.
    latency: Option<Latency>,
}

/// `threads` producers append `ops` each in batches of [`BATCH`], each
/// batch acknowledged after it, timing both: with `batched`, one
/// `append_all` and one `acknowledge_all` per batch, else one call per
/// blob for each. With `bounded`, slices of this alternate with slices of
/// the bound. Then producer 0 times `samples` appends one by one.
fn run_appenders(
    s: &Arc<PinnedBlobStore>,
    size: usize,
    threads: usize,
    ops: u64,
    samples: u64,
    bounded: bool,
    batched: bool,
) -> Appenders {
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let s = Arc::clone(s);
            std::thread::spawn(move || {
                let data = payload(size);
                let blobs: Vec<&[u8]> = vec![&data[..]; BATCH];
                let mut bound = bounded.then(|| Bound::new(&data));
                let mut w = s.writer().expect("writer");
                let mut handles: Vec<OverflowHandle> = Vec::with_capacity(BATCH);
                let mut spent = Duration::ZERO;
                let per = (ops / SLICES).max(1);
                let mut done = 0;
                while done < ops {
                    let slice = per.min(ops - done);
                    let mut left = slice;
                    let start = Instant::now();
                    while left > 0 {
                        let n = batch(size).min(left as usize);
                        if batched {
                            append_all_retrying(&mut w, &blobs[..n], &mut handles);
                            w.acknowledge_all(&handles);
                        } else {
                            for _ in 0..n {
                                handles.push(append_retrying(&mut w, &data));
                            }
                            for h in &handles {
                                w.acknowledge(h);
                            }
                        }
                        handles.clear();
                        left -= n as u64;
                    }
                    spent += start.elapsed();
                    done += slice;
                    if let Some(b) = bound.as_mut() {
                        b.slice(slice);
                    }
                }
                let mut lat = Vec::new();
                if t == 0 {
                    for i in 0..samples {
                        let one = Instant::now();
                        handles.push(append_retrying(&mut w, &data));
                        lat.push(one.elapsed().as_nanos() as u64);
                        if i % batch(size) as u64 == 0 {
                            for h in handles.drain(..) {
                                w.acknowledge(&h);
                            }
                        }
                    }
                }
                for h in handles.drain(..) {
                    w.acknowledge(&h);
                }
                (
                    ops as f64 / spent.as_secs_f64(),
                    bound.map_or(0.0, |b| b.rate()),
                    Latency::from_samples(&mut lat),
                )
            })
        })
        .collect();
    let results: Vec<_> = workers
        .into_iter()
        .map(|w| w.join().expect("appender"))
        .collect();
    Appenders {
        ops_per_sec: results.iter().map(|r| r.0).sum(),
        bound: results.iter().map(|r| r.1).sum(),
        latency: results.into_iter().next().and_then(|r| r.2),
    }
}

/// Appends all of `blobs` to `out`, retrying the rest after `StoreFull`.
fn append_all_retrying(w: &mut Writer<'_>, blobs: &[&[u8]], out: &mut Vec<OverflowHandle>) {
    let start = out.len();
    while out.len() - start < blobs.len() {
        match w.append_all(&blobs[out.len() - start..], out) {
            Ok(()) => {}
            Err(stable_fragmented_buffer::BlobError::StoreFull { .. }) => std::thread::yield_now(),
            Err(e) => panic!("append: {e}"),
        }
    }
}

fn append_retrying(w: &mut Writer<'_>, data: &[u8]) -> OverflowHandle {
    loop {
        match w.append(data) {
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
        bound: None,
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
        bound: None,
        threads: 1,
        state: "-",
        ops: half as u64,
        secs,
        latency: lat,
        note: String::new(),
    }
}

/// The bound alone (see `bound.rs`): the faster of a plain and a
/// non-temporal copy into faulted memory larger than the last-level cache,
/// each the median of its slices; the note gives both.
pub fn memcpy_bound(opts: &Options, size: usize) -> Cell {
    let ops = ops_for(opts, size);
    let mut bound = Bound::new(&payload(size));
    let per = (ops / SLICES).max(1);
    for _ in 0..SLICES {
        bound.slice(per);
    }
    let (plain, streamed) = bound.medians();
    let rate = plain.max(streamed);
    Cell {
        workload: "memcpy bound".into(),
        payload: size,
        copies: true,
        bound: Some(rate),
        threads: 1,
        state: "faulted",
        ops,
        secs: (ops as usize * size) as f64 / rate,
        latency: None,
        note: format!(
            "1 GiB buffer; plain {:.2} GB/s, non-temporal {:.2} GB/s",
            plain / 1e9,
            streamed / 1e9
        ),
    }
}

/// The tail of steady appends: one producer with a [`Writer`] appends
/// `size`-byte blobs one call at a time for `secs` seconds, acknowledging
/// each batch after it, with the lifecycle thread reclaiming every
/// millisecond; every append is timed. Before it, its floor: the same loop
/// with a bare copy into 96 MiB of faulted memory instead of an append
/// (what the machine itself does to a thread that only copies: its
/// scheduler and hypervisor pauses). Notes give the p99.99 and how many
/// calls took over 50 µs.
pub fn tail(size: usize, secs: f64) -> Vec<Cell> {
    let data = payload(size);
    let mut buf = vec![1u8; 96 << 20];
    let slots = buf.len() / size;
    let mut at = 0;
    let bare = timed_for(secs, || {
        let to = (at % slots) * size;
        buf[to..to + size].copy_from_slice(&data);
        at += 1;
    });
    std::hint::black_box(&buf);
    drop(buf);

    let s = store(steady_config(), None);
    let cleaner = s.start_cleanup_thread(Duration::from_millis(1));
    run_appenders(&s, size, 1, (3 * CHUNK / size) as u64, 0, false, false);
    let mut w = s.writer().expect("writer");
    let mut handles = Vec::with_capacity(BATCH);
    let per = batch(size);
    let appends = timed_for(secs, || {
        handles.push(append_retrying(&mut w, &data));
        if handles.len() == per {
            w.acknowledge_all(&handles);
            handles.clear();
        }
    });
    drop(w);
    cleaner.stop();
    let run_for = secs;
    let cell = |workload: &str, (ops, secs, mut lat): (u64, f64, Vec<u64>)| {
        let over = lat.iter().filter(|&&l| l > 50_000).count();
        let latency = Latency::from_samples(&mut lat);
        let p9999 = lat
            .get(((lat.len().max(1) - 1) as f64 * 0.9999) as usize)
            .copied()
            .unwrap_or(0);
        Cell {
            workload: format!("{workload}, every call timed for {run_for:.0} s"),
            payload: size,
            copies: true,
            bound: None,
            threads: 1,
            state: "steady",
            ops,
            secs,
            latency,
            note: format!(
                "p99.99 {:.1} us; {over} calls over 50 us",
                p9999 as f64 / 1e3
            ),
        }
    };
    vec![
        cell("bare copy (the floor)", bare),
        cell("append (acknowledged in batches)", appends),
    ]
}

/// Calls `op` for `secs` seconds, timing each call: (calls, seconds spent
/// in them, each call's nanoseconds).
fn timed_for(secs: f64, mut op: impl FnMut()) -> (u64, f64, Vec<u64>) {
    let mut lat = Vec::with_capacity((secs * 4e6) as usize);
    let start = Instant::now();
    let mut spent = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..64 {
            let one = Instant::now();
            op();
            let ns = one.elapsed().as_nanos() as u64;
            spent += ns;
            lat.push(ns);
        }
    }
    (lat.len() as u64, spent as f64 / 1e9, lat)
}
