//! The benchmark suite of stable-fragmented-buffer, behind `sfb bench` and
//! the `sfb-bench` comparison
//! binary: every workload of the performance table, the memcpy bound and
//! the Unix-socket baseline, measured in one run.
//!
//! Four multi-process scenarios stand beside the table:
//! [`fanout`] (2 MiB frames at 120 fps to subscribers of different speeds),
//! [`jobs`] (a work queue with at-least-once delivery under worker
//! crashes), [`wait`] (the latency and CPU per message of a blocked
//! receiver at a paced rate, per spin, against a Unix socket) and
//! [`chunks`] (the cost per chunk of creating, reclaiming and first
//! resolving from another process, at 100, 1,000 and 4,000 chunks).
//!
//! A binary that runs the suite must call [`run_peer_if_asked`] first thing
//! in `main`: the cross-process cells re-execute the binary as their
//! consumer process.

mod bare_ring;
mod bound;
mod channel;
mod chunks;
mod cross;
mod fanout;
mod jobs;
mod ring;
mod scenario;
mod stats;
mod stream;
mod wait;
mod workloads;

pub use channel::{touch, warm_up_ops};
pub use chunks::{chunks, chunks_markdown, ChunksRun, COUNTS as CHUNK_COUNTS};
pub use cross::{mono_ns, run_peer_if_asked, PEER_ENV};
pub use fanout::{fanout, fanout_markdown, FanoutRun, SubscriberResult};
pub use jobs::{job_size, jobs, jobs_markdown, JobsRun, Kill, KillPhase};
pub use ring::Ring;
pub use scenario::flag_value;
pub use stats::{markdown_table, percentile, rate, size_label, Cell, Latency};
pub use stream::{compare as stream_compare, stream, StreamRun};
pub use wait::{
    spin_label, spins_meeting, summarize as wait_summary, wait, wait_markdown, Transport,
    WaitOptions, WaitRun, WaitSummary, MESSAGE as WAIT_MESSAGE,
};
pub use workloads::{bench_namespace, tail};

use std::rc::Rc;

/// The bare ring's throughput of one size in one run (payload bytes per
/// second), shared by the channel rows of that size.
type RingBound = Rc<std::cell::Cell<Option<f64>>>;

/// Payload sizes of the table.
pub const PAYLOADS: [usize; 4] = [64, 4096, 64 << 10, 1 << 20];

/// How much work each cell does.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Payload bytes moved per cell (before clamping the op count).
    pub bytes_per_cell: u64,
    /// Fewest operations per cell.
    pub min_ops: u64,
    /// Most operations per cell.
    pub max_ops: u64,
    /// Operations timed one by one for the latency columns.
    pub latency_samples: u64,
}

impl Options {
    /// The full run (a few minutes on two cores).
    pub fn full() -> Self {
        Self {
            bytes_per_cell: 1 << 30,
            min_ops: 2_000,
            max_ops: 4_000_000,
            latency_samples: 200_000,
        }
    }

    /// A quick run (well under 30 s): smaller cells, same workloads.
    pub fn quick() -> Self {
        Self {
            bytes_per_cell: 96 << 20,
            min_ops: 300,
            max_ops: 400_000,
            latency_samples: 20_000,
        }
    }
}

/// One workload of the suite, for progress reporting.
pub struct Step {
    /// What it measures.
    pub label: String,
    run: Box<dyn FnOnce() -> Cell>,
}

impl Step {
    /// Runs it.
    pub fn run(self) -> Cell {
        (self.run)()
    }
}

/// Every cell of the table, in order, not yet run.
pub fn plan(opts: Options) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut add = |label: String, f: Box<dyn FnOnce() -> Cell>| steps.push(Step { label, run: f });
    for size in PAYLOADS {
        let l = size_label(size);
        add(
            format!("memcpy bound {l}"),
            Box::new(move || workloads::memcpy_bound(&opts, size)),
        );
        add(
            format!("append cold {l}"),
            Box::new(move || workloads::append_cold(&opts, size)),
        );
        add(
            format!("append steady {l}"),
            Box::new(move || workloads::append_steady(&opts, size, 1, false)),
        );
        add(
            format!("append steady {l}, 2 threads"),
            Box::new(move || workloads::append_steady(&opts, size, 2, false)),
        );
        if size <= 4096 {
            add(
                format!("append steady {l}, batches"),
                Box::new(move || workloads::append_steady(&opts, size, 1, true)),
            );
            add(
                format!("append steady {l}, batches, 2 threads"),
                Box::new(move || workloads::append_steady(&opts, size, 2, true)),
            );
        }
        add(
            format!("resolve copy {l}"),
            Box::new(move || workloads::resolve(&opts, size, false)),
        );
        add(
            format!("resolve view {l}"),
            Box::new(move || workloads::resolve(&opts, size, true)),
        );
        add(
            format!("acknowledge {l}"),
            Box::new(move || workloads::acknowledge(&opts, size)),
        );
        add(
            format!("full cycle {l}"),
            Box::new(move || cross::store_cycle(&opts, size)),
        );
        // The channel rows' bound, measured once per run and size: by its
        // own row, or by the first channel row of the size if that row was
        // left out (`--only`).
        let ring: RingBound = Rc::new(std::cell::Cell::new(None));
        {
            let ring = Rc::clone(&ring);
            add(
                format!("bare ring {l}"),
                Box::new(move || {
                    let c = bare_ring::bare_ring_cycle(&opts, size);
                    ring.set(c.bound);
                    c
                }),
            );
        }
        for (label, blocking, sized) in [
            ("channel busy-poll", false, false),
            ("channel blocking", true, false),
            ("channel busy-poll, ring sized", false, true),
        ] {
            if sized && size <= 4096 {
                continue;
            }
            let ring = Rc::clone(&ring);
            add(
                format!("{label} {l}"),
                Box::new(move || {
                    let (bound, whose) = match ring.get() {
                        Some(b) => (b, "the bare ring row of this size and run"),
                        None => {
                            let b = bare_ring::bare_ring_cycle(&opts, size).bound;
                            ring.set(b);
                            (
                                b.unwrap_or(0.0),
                                "a bare ring of this size measured for this row",
                            )
                        }
                    };
                    let mut c = channel::channel_cycle(&opts, size, blocking, sized);
                    c.bound = Some(bound);
                    c.note.push_str(&format!("; of bound: {whose}"));
                    c
                }),
            );
        }
        add(
            format!("unix socket {l}"),
            Box::new(move || cross::socket_cycle(&opts, size)),
        );
    }
    steps
}

/// Per cell, the run with the median throughput (runs of the same plan,
/// cell for cell): shared machines drift from run to run.
pub fn median(mut runs: Vec<Vec<Cell>>) -> Vec<Cell> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    let cells = first.len();
    (0..cells)
        .map(|i| {
            let mut column: Vec<Cell> = runs.iter_mut().filter_map(|r| r.get(i).cloned()).collect();
            column.sort_by(|a, b| a.ops_per_sec().total_cmp(&b.ops_per_sec()));
            let mid = column.len() / 2;
            column.swap_remove(mid)
        })
        .collect()
}

/// A one-line description of the machine for the table's caption.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}
