//! `sfb`: operator CLI of stable-fragmented-buffer — see, clean up and
//! demonstrate shared-memory stores.
//!
//! Everything it reads goes through the library's read-only inspection API
//! (`stable_fragmented_buffer::inspect`): `list` and `stat` never modify a
//! store. Exit codes: 0 success, 1 operation failed, 2 usage error.

use clap::{ArgGroup, CommandFactory, Parser, Subcommand};
use comfy_table::{presets, CellAlignment, Table};
use serde_json::json;
use stable_fragmented_buffer::inspect::{
    self, ChunkReport, Creator, Health, Listing, NamespaceInfo, NamespaceReport,
};
use stable_fragmented_buffer::{
    BlobError, BlobStoreLifecycleExt, Config, PinnedBlobStore, SharedBackend,
};
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod bench;
mod cleanup;
mod completions;
mod demo;
mod export;
mod format;
mod list;
mod stat;

use bench::*;
use cleanup::*;
use completions::*;
use demo::*;
use export::*;
use format::*;
use list::*;
use stat::*;

#[derive(Parser)]
#[command(
    name = "sfb",
    version,
    about = "Inspect, clean up and demonstrate stable-fragmented-buffer shared-memory stores",
    after_help = "The shm directory is /dev/shm, or $SFB_SHM_DIR if set.\n\
                  Exit codes: 0 success, 1 operation failed, 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every namespace in the shm directory: creator alive or dead, chunk
    /// files, bytes on tmpfs, age, format version, health; other programs'
    /// files are listed too and never touched.
    List {
        /// One JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// The control block, a table of the chunks, and each channel of one
    /// namespace: its policy, counters, memory bound, participants (pid,
    /// liveness, lag, held, waiting), and who holds its producers back.
    Stat {
        /// The namespace.
        namespace: String,
        /// One JSON object instead of tables (one per line with --watch).
        #[arg(long)]
        json: bool,
        /// Refresh in place until interrupted (or --count frames); on a
        /// terminal, the channels whose producers are held back stand out.
        #[arg(long)]
        watch: bool,
        /// Time between refreshes with --watch: `500ms`, `2s`, or seconds (`0.5`).
        #[arg(long, default_value = "1s", value_parser = parse_interval, requires = "watch")]
        interval: Duration,
        /// Stop after N frames with --watch.
        #[arg(long, value_name = "N", requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Removes a namespace whose creator is dead (refuses a live one unless
    /// --force), or with --dead every dead namespace. Files that are not
    /// stable-fragmented-buffer's are never removed.
    #[command(group(ArgGroup::new("what").required(true).args(["namespace", "dead"])))]
    Cleanup {
        /// The namespace.
        namespace: Option<String>,
        /// Remove every namespace whose creator is dead (and chunk files
        /// left without a control block).
        #[arg(long, conflicts_with = "namespace")]
        dead: bool,
        /// Remove the namespace even if its creator is alive (its processes
        /// lose the store).
        #[arg(long, conflicts_with = "dead")]
        force: bool,
        /// Print what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
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
        max_chunks: u32,
    },
    /// Runs the benchmark suite (append, resolve, acknowledge, full cycle
    /// between two processes; memcpy and Unix-socket baselines) and prints
    /// the table. The iceoryx2 comparison is `cargo run --release -p sfb-bench`.
    Bench {
        /// Smaller cells: finishes in well under 30 s.
        #[arg(long)]
        quick: bool,
        /// Only the cells whose label contains one of these words.
        #[arg(long, num_args = 1..)]
        only: Vec<String>,
    },
    /// Prints every namespace's gauges and counters (chunk files, tmpfs
    /// bytes, creator liveness, health, pool, recycled, retired, expired,
    /// channels' depths, counters, memory bounds and participants: lag,
    /// held, waiting, alive) in the Prometheus text format, for
    /// node_exporter's textfile collector.
    #[command(group(ArgGroup::new("format").required(true).args(["prometheus"])))]
    Export {
        /// The Prometheus text exposition format.
        #[arg(long)]
        prometheus: bool,
    },
    /// Prints a shell completion script, e.g. `sfb completions bash >
    /// /etc/bash_completion.d/sfb`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// The consumer half of `demo` (started by `demo` itself).
    #[command(hide = true)]
    DemoConsumer {
        #[arg(long)]
        namespace: String,
    },
}

fn main() -> ExitCode {
    // The benchmark's cross-process cells re-run this binary as their consumer.
    if sfb_bench::run_peer_if_asked() {
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::List { json } => list(json),
        Cmd::Stat {
            namespace,
            json,
            watch,
            interval,
            count,
        } => stat(&namespace, json, watch.then_some((interval, count))),
        Cmd::Cleanup {
            namespace,
            dead,
            force,
            dry_run,
        } => match namespace {
            Some(ns) if !dead => cleanup(&ns, force, dry_run),
            _ => cleanup_dead(dry_run),
        },
        Cmd::Demo {
            messages,
            size,
            chunk_size,
            max_chunks,
        } => demo(messages, size, chunk_size, max_chunks),
        Cmd::DemoConsumer { namespace } => demo_consumer(&namespace),
        Cmd::Completions { shell } => completions(shell),
        Cmd::Export { prometheus: _ } => export_prometheus(),
        Cmd::Bench { quick, only } => bench(quick, &only),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `sfb list | head`: the reader left; that is not a failure.
        Err(e) if is_broken_pipe(&*e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sfb: error: {e}");
            ExitCode::from(1)
        }
    }
}

type AnyResult = Result<(), Box<dyn std::error::Error>>;

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Writes to stdout, reporting a closed pipe as an error (not a panic).
fn emit(text: &str) -> AnyResult {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// A library error, reworded for the command line where the library's
/// advice names an API call.
fn explain(e: BlobError) -> Box<dyn std::error::Error> {
    let dir = inspect::shm_dir();
    match e {
        BlobError::NotFound { namespace } => format!(
            "namespace \"{namespace}\" has no files in {}; run `sfb list` to see the namespaces there (or set SFB_SHM_DIR if the store lives elsewhere)",
            dir.display()
        )
        .into(),
        BlobError::InUse { namespace, pid } => format!(
            "namespace \"{namespace}\" is in use: its creator (pid {pid}) is alive; stop that process first, or run `sfb cleanup --force {namespace}` (its processes lose the store)"
        )
        .into(),
        BlobError::Corrupt { file, detail } => format!(
            "corrupt store file {}: {detail}; run `sfb stat` on its namespace for details, and `sfb cleanup` to remove it",
            file.display()
        )
        .into(),
        other => other.into(),
    }
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let (number, unit) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(secs) = s.strip_suffix('s') {
        (secs, 1.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; write e.g. 500ms, 2s or 0.5"))?;
    let secs = value * unit;
    if !(0.01..=3600.0).contains(&secs) {
        return Err(format!("{s} is out of range; use between 10ms and 3600s"));
    }
    Ok(Duration::from_secs_f64(secs))
}
