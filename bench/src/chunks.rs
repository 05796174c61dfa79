//! `--scenario chunks`: what one chunk costs when the namespace holds 100,
//! 1,000 or 4,000 of them.
//!
//! A store of 64 KiB chunks (`PinnedBlobStore::new_shared`, decay 0, a TTL
//! of an hour so nothing expires meanwhile, prefetch threshold 1.0) gets N
//! blobs of `data_capacity() - 64` bytes: one blob per chunk, the next one
//! never fits, so every append but the first rolls over into a new chunk,
//! and none crosses the prefetch threshold, so the append itself creates
//! the chunk (nothing is prepared in the background). Per chunk:
//!
//! - **create**: each such append, timed alone (it includes the copy of
//!   the 64 KiB blob and its page faults);
//! - **first resolve**: a second process attaches and resolves
//!   (`resolve_ref`, a view) one blob of each chunk, in creation order,
//!   each timed alone; then all of them again (**again**: the chunk
//!   already mapped);
//! - **reclaim**: after that process has exited, every blob is
//!   acknowledged, then `cleanup_shared()` passes run until one reclaims
//!   nothing; their total time (the last, empty pass excluded) divided by
//!   the chunks reclaimed.
//!
//! Each round does every N in turn (100, 1,000, 4,000); each N gets its
//! own namespace, removed at its end.

use super::bare_ring::Reaped;
use super::cross::PEER_ENV;
use super::scenario::{await_line, NsGuard};
use super::workloads::bench_namespace;
use stable_fragmented_buffer::{Config, OverflowHandle, PinnedBlobStore};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Chunk size of the scenario.
pub const CHUNK: usize = 64 << 10;

/// Chunk counts measured.
pub const COUNTS: [usize; 3] = [100, 1_000, 4_000];

/// The target of issue 24: the cost per chunk at 4,000 chunks within this
/// factor of the cost at 100.
pub const TARGET_RATIO: f64 = 1.5;

/// One N of one round.
#[derive(Debug, Clone, Default)]
pub struct ChunksRun {
    /// Chunks in the namespace (one blob each).
    pub chunks: usize,
    /// Nanoseconds of each append that created a chunk.
    pub create: Vec<u64>,
    /// Nanoseconds of each first resolve in the attached process.
    pub first_resolve: Vec<u64>,
    /// Nanoseconds of each second resolve there.
    pub again: Vec<u64>,
    /// Nanoseconds the attached process took to attach.
    pub attach_ns: u64,
    /// Nanoseconds of the reclamation passes that reclaimed something.
    pub reclaim_ns: u64,
    /// Chunks they reclaimed.
    pub reclaimed: usize,
    /// Passes run (the last, empty one included).
    pub passes: usize,
    /// Chunk files before the reclamation (the store's count).
    pub files: usize,
}

impl ChunksRun {
    /// Nanoseconds of reclamation per chunk reclaimed.
    pub fn reclaim_per_chunk(&self) -> f64 {
        self.reclaim_ns as f64 / self.reclaimed.max(1) as f64
    }
}

/// Runs `rounds` rounds over the chunk counts `counts` (e.g. [`COUNTS`];
/// each at least 2, at most 4,095: the registry holds 4,096 chunks).
pub fn chunks(rounds: usize, counts: &[usize]) -> Result<Vec<ChunksRun>, String> {
    if let Some(n) = counts.iter().find(|n| !(2..4096).contains(*n)) {
        return Err(format!("{n} chunks: from 2 to 4095"));
    }
    let mut runs = Vec::new();
    for r in 0..rounds {
        for &n in counts {
            eprintln!("[round {}/{rounds}] {n} chunks", r + 1);
            runs.push(one(n)?);
        }
    }
    Ok(runs)
}

fn one(n: usize) -> Result<ChunksRun, String> {
    let ns = bench_namespace();
    let _guard = NsGuard::new(&ns);
    let config = Config {
        decay_timeout_ms: 0,
        default_ttl_ms: 3_600_000,
        prefetch_threshold: 1.0,
        ..Config::default()
    };
    let store = PinnedBlobStore::new_shared(config, &ns, CHUNK).map_err(|e| e.to_string())?;
    let capacity = store
        .shared_backend()
        .map(|b| b.data_capacity())
        .ok_or("not a shared store")?;
    let blob: Vec<u8> = (0..capacity - 64).map(|i| (i * 7 + 1) as u8).collect();
    let mut run = ChunksRun {
        chunks: n,
        ..ChunksRun::default()
    };
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let h = store.append_shared(&blob).map_err(|e| e.to_string())?;
        let ns = t.elapsed().as_nanos() as u64;
        // The first blob goes into the chunk the store was created with.
        if i > 0 {
            run.create.push(ns);
        }
        handles.push(h);
    }
    run.files = store.stats().chunks;
    if run.files != n {
        return Err(format!("{n} blobs made {} chunks, not {n}", run.files));
    }

    // The attached process: one first resolve per chunk.
    let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .env(PEER_ENV, "chunks-resolver")
        .env("SFB_BENCH_NS", &ns)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let mut child = Reaped::new(child);
    {
        let mut input = stdin.ok_or("no stdin")?;
        let mut text = String::with_capacity(n * 49);
        for h in &handles {
            for b in h.as_bytes() {
                text.push_str(&format!("{b:02x}"));
            }
            text.push('\n');
        }
        input
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let mut out = BufReader::new(stdout.ok_or("no stdout")?);
    let numbers = |line: String| -> Vec<u64> {
        line.split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect()
    };
    run.attach_ns = numbers(await_line(&mut out, "ATTACH").map_err(|e| e.to_string())?)
        .first()
        .copied()
        .unwrap_or(0);
    run.first_resolve = numbers(await_line(&mut out, "FIRST").map_err(|e| e.to_string())?);
    run.again = numbers(await_line(&mut out, "AGAIN").map_err(|e| e.to_string())?);
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() || run.first_resolve.len() != n || run.again.len() != n {
        return Err(format!(
            "the attached process resolved {} of {n} ({status})",
            run.first_resolve.len()
        ));
    }

    // Reclamation: everything acknowledged, then passes until one is empty.
    for h in &handles {
        if !store.acknowledge_shared(h) {
            return Err("an acknowledgement did not count".into());
        }
    }
    loop {
        let t = Instant::now();
        let got = store.cleanup_shared();
        let ns = t.elapsed().as_nanos() as u64;
        run.passes += 1;
        if got == 0 || run.passes > 100 {
            break;
        }
        run.reclaim_ns += ns;
        run.reclaimed += got;
    }
    // The append target is never reclaimed under its appenders.
    if run.reclaimed + 1 < n {
        return Err(format!("reclaimed {} of {n} chunks", run.reclaimed));
    }
    drop(store);
    Ok(run)
}

/// The attached process: reads handles (hex, one a line) from stdin, then
/// resolves each once, then each again, timing each resolve.
fn resolver() {
    let ns = std::env::var("SFB_BENCH_NS").expect("SFB_BENCH_NS");
    let mut handles = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let mut b = [0u8; 24];
        for (i, x) in b.iter_mut().enumerate() {
            *x = u8::from_str_radix(line.get(2 * i..2 * i + 2).unwrap_or("zz"), 16)
                .expect("a handle in hex");
        }
        handles.push(OverflowHandle::from_array(&b));
    }
    let t = Instant::now();
    let store = PinnedBlobStore::attach_shared(Config::default(), &ns).expect("attach");
    println!("ATTACH {}", t.elapsed().as_nanos());
    let mut sink = 0u64;
    for label in ["FIRST", "AGAIN"] {
        let mut line = String::from(label);
        for h in &handles {
            let t = Instant::now();
            let v = store.resolve_ref(h).expect("a live blob resolves");
            sink = sink.wrapping_add(v[0] as u64);
            drop(v);
            line.push_str(&format!(" {}", t.elapsed().as_nanos()));
        }
        println!("{line}");
    }
    std::hint::black_box(sink);
}

/// Runs the resolver role, if this process is one.
pub(crate) fn run_peer(role: &str) -> bool {
    if role != "chunks-resolver" {
        return false;
    }
    resolver();
    true
}

/// Median and mean of `v`, nanoseconds.
fn summary(v: &[u64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let median = s[s.len() / 2] as f64;
    let mean = s.iter().sum::<u64>() as f64 / s.len() as f64;
    (median, mean)
}

/// Per N, pooled over the rounds: (create, first resolve, again, reclaim
/// per chunk over the rounds, attach), each (median, mean).
type Summaries = [(f64, f64); 5];

fn summaries(runs: &[ChunksRun], n: usize) -> Summaries {
    let of = |f: &dyn Fn(&ChunksRun) -> Vec<u64>| {
        let v: Vec<u64> = runs.iter().filter(|r| r.chunks == n).flat_map(f).collect();
        summary(&v)
    };
    [
        of(&|r| r.create.clone()),
        of(&|r| r.first_resolve.clone()),
        of(&|r| r.again.clone()),
        of(&|r| vec![r.reclaim_per_chunk().round() as u64]),
        of(&|r| vec![r.attach_ns]),
    ]
}

fn us(ns: f64) -> String {
    format!("{:.1} us", ns / 1e3)
}

/// The results as Markdown: a row per chunk count (in the order of
/// `counts`), then the ratios of the last count's costs to the first's.
pub fn chunks_markdown(runs: &[ChunksRun], counts: &[usize]) -> String {
    let rounds = runs
        .iter()
        .filter(|r| Some(&r.chunks) == counts.first())
        .count();
    let mut s = format!(
        "Per chunk, nanoseconds pooled over {rounds} rounds (reclaim: one figure per round, total pass time / chunks reclaimed; its median and mean over the rounds).\n\n| chunks | create (append that rolls over), median | mean | reclaim per chunk, median | mean | first resolve (attached process), median | mean | resolve again, median | mean | attach, median | reclaimed / passes (first round) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    );
    let mut all = Vec::new();
    for &n in counts {
        let [c, f, a, r, at] = summaries(runs, n);
        let one = runs.iter().find(|x| x.chunks == n);
        s.push_str(&format!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            us(c.0),
            us(c.1),
            us(r.0),
            us(r.1),
            us(f.0),
            us(f.1),
            us(a.0),
            us(a.1),
            us(at.0),
            one.map_or_else(String::new, |x| format!("{} / {}", x.reclaimed, x.passes)),
        ));
        all.push([c, r, f, a]);
    }
    if let (Some(lo), Some(hi), Some(n_lo), Some(n_hi)) =
        (all.first(), all.last(), counts.first(), counts.last())
    {
        s.push_str(&format!(
            "\nRatio of the cost per chunk at {} chunks to the cost at {} (target: within {TARGET_RATIO}x):\n\n| cost | median ratio | mean ratio | target |\n|---|---:|---:|---|\n",
            n_hi, n_lo
        ));
        for (i, name) in [
            "create",
            "reclaim",
            "first resolve (attached)",
            "resolve again",
        ]
        .iter()
        .enumerate()
        {
            let med = hi[i].0 / lo[i].0.max(1.0);
            let mean = hi[i].1 / lo[i].1.max(1.0);
            s.push_str(&format!(
                "| {name} | {med:.2}x | {mean:.2}x | {} |\n",
                if med <= TARGET_RATIO && mean <= TARGET_RATIO {
                    "met"
                } else {
                    "**missed**"
                }
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_and_the_ratio_table() {
        assert_eq!(summary(&[3, 1, 2, 10]), (3.0, 4.0));
        assert_eq!(summary(&[]), (0.0, 0.0));
        let run = |chunks, ns| ChunksRun {
            chunks,
            create: vec![ns; 3],
            first_resolve: vec![ns; 3],
            again: vec![ns; 3],
            attach_ns: ns,
            reclaim_ns: ns * 10,
            reclaimed: 10,
            passes: 2,
            files: chunks,
        };
        let md = chunks_markdown(&[run(100, 1000), run(1000, 1500), run(4000, 2000)], &COUNTS);
        assert!(md.contains("| 100 | 1.0 us | 1.0 us | 1.0 us |"), "{md}");
        assert!(
            md.contains("| create | 2.00x | 2.00x | **missed** |"),
            "{md}"
        );
    }
}
