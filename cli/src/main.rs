//! `sfb`: operator CLI of stable-fragmented-buffer — see, clean up and
//! demonstrate shared-memory stores.
//!
//! Everything it reads goes through the library's read-only inspection API
//! (`stable_fragmented_buffer::inspect`): `list` and `stat` never modify a
//! store. Exit codes: 0 success, 1 operation failed, 2 usage error.

use clap::{ArgGroup, CommandFactory, Parser, Subcommand};
use comfy_table::{presets, CellAlignment, Table};
use serde_json::{json, Value};
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
    /// The control block and a table of the chunks of one namespace.
    Stat {
        /// The namespace.
        namespace: String,
        /// One JSON object instead of tables (one per line with --watch).
        #[arg(long)]
        json: bool,
        /// Refresh in place until interrupted (or --count frames).
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

fn bench(quick: bool, only: &[String]) -> AnyResult {
    use sfb_bench::{self as bench, Options};
    let opts = if quick {
        Options::quick()
    } else {
        Options::full()
    };
    let steps: Vec<_> = bench::plan(opts)
        .into_iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| s.label.contains(o.as_str())))
        .collect();
    if steps.is_empty() {
        return Err(
            "no benchmark cell matches --only; labels look like \"append steady 4 KiB\"".into(),
        );
    }
    let bar = indicatif::ProgressBar::new(steps.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")?
            .progress_chars("=> "),
    );
    let mut cells = Vec::new();
    for step in steps {
        bar.set_message(step.label.clone());
        cells.push(step.run());
        bar.inc(1);
    }
    bar.finish_and_clear();
    emit(&format!(
        "Machine: {}\n\n{}",
        bench::machine(),
        bench::markdown_table(&cells)
    ))
}

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

// ---------------------------------------------------------------- formats

/// Bytes for humans: `512 B`, `64.0 KiB`, `32.0 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Milliseconds for humans: `850ms`, `12.3s`, `5m12s`, `2h03m`, `3d04h`.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", s / 60, s % 60),
        3_600_000..=86_399_999 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn opt_duration(ms: Option<u64>) -> String {
    ms.map(duration).unwrap_or_else(|| "-".into())
}

fn table(header: &[&str], right_aligned: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING).set_header(header.to_vec());
    for &i in right_aligned {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// A table as text: no trailing blanks, no padding before the first column.
fn render(t: &Table) -> String {
    let mut s = String::new();
    for line in t.lines() {
        s.push_str(line.strip_prefix(' ').unwrap_or(&line).trim_end());
        s.push('\n');
    }
    s
}

fn creator_json(c: &Creator) -> Value {
    let state = match c {
        Creator::Alive { .. } => "alive",
        Creator::Dead { .. } => "dead",
        Creator::None => "none",
        Creator::Unknown => "unknown",
    };
    json!({ "state": state, "pid": c.pid() })
}

fn creator_text(c: &Creator) -> String {
    match c {
        Creator::None => "-".into(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------- list

/// Every namespace in the shm directory, or an error saying what to check.
fn read_listing() -> Result<inspect::Listing, String> {
    let dir = inspect::shm_dir();
    inspect::list_namespaces(&dir).map_err(|e| {
        format!(
            "cannot list {}: {e}; check that it exists and is readable (or set SFB_SHM_DIR)",
            dir.display()
        )
    })
}

fn list(as_json: bool) -> AnyResult {
    let listing = read_listing()?;
    if as_json {
        let mut v = serde_json::to_string_pretty(&listing_json(&listing))?;
        v.push('\n');
        return emit(&v);
    }
    emit(&listing_text(&listing))
}

fn info_json(i: &NamespaceInfo) -> Value {
    json!({
        "namespace": i.namespace,
        "health": i.health.as_str(),
        "creator": creator_json(&i.creator),
        "dead": i.dead,
        "chunk_files": i.chunk_files,
        "tmpfs_bytes": i.tmpfs_bytes,
        "age_ms": i.age_ms,
        "format_version": i.format_version,
        "files": i.files,
        "foreign_files": i.foreign_files,
        "problems": i.problems,
    })
}

fn listing_json(l: &Listing) -> Value {
    json!({
        "dir": l.dir.display().to_string(),
        "namespaces": l.namespaces.iter().map(info_json).collect::<Vec<_>>(),
        "other_files": l.other_files.iter().map(|f| json!({
            "name": f.name,
            "kind": f.kind,
            "bytes": f.bytes,
            "tmpfs_bytes": f.tmpfs_bytes,
        })).collect::<Vec<_>>(),
    })
}

fn listing_text(l: &Listing) -> String {
    let mut s = format!(
        "{}: {} namespace(s), {} other file(s)\n",
        l.dir.display(),
        l.namespaces.len(),
        l.other_files.len()
    );
    if !l.namespaces.is_empty() {
        let mut t = table(
            &[
                "NAMESPACE",
                "CREATOR",
                "CHUNKS",
                "TMPFS",
                "AGE",
                "VERSION",
                "HEALTH",
            ],
            &[2, 3, 4],
        );
        for i in &l.namespaces {
            t.add_row(vec![
                i.namespace.clone(),
                creator_text(&i.creator),
                i.chunk_files.to_string(),
                bytes(i.tmpfs_bytes),
                opt_duration(i.age_ms),
                i.format_version
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
                i.health.to_string(),
            ]);
        }
        s.push('\n');
        s.push_str(&render(&t));
    }
    let troubled: Vec<&NamespaceInfo> = l
        .namespaces
        .iter()
        .filter(|i| !i.problems.is_empty())
        .collect();
    if !troubled.is_empty() {
        s.push_str("\nproblems (see `sfb stat NAMESPACE`):\n");
        for i in troubled {
            for p in &i.problems {
                s.push_str(&format!("  {}: {p}\n", i.namespace));
            }
        }
    }
    if !l.other_files.is_empty() {
        s.push_str("\nother files (not stable-fragmented-buffer's; left alone):\n");
        let mut t = table(&["NAME", "KIND", "TMPFS"], &[2]);
        for f in &l.other_files {
            t.add_row(vec![f.name.clone(), f.kind.into(), bytes(f.tmpfs_bytes)]);
        }
        for line in render(&t).lines() {
            s.push_str(&format!("  {line}\n"));
        }
    }
    let dead = l.namespaces.iter().filter(|i| i.dead).count();
    if dead > 0 {
        s.push_str(&format!(
            "\n{dead} dead namespace(s): `sfb cleanup --dead --dry-run` shows what removing them would do, `sfb cleanup --dead` removes them\n"
        ));
    }
    s
}

// ---------------------------------------------------------------- stat

fn stat(ns: &str, as_json: bool, watch: Option<(Duration, Option<u64>)>) -> AnyResult {
    // The first look decides the exit code: a namespace that is not there
    // (or cannot be read) is an error, even with --watch.
    let first = inspect::inspect_namespace(ns).map_err(explain)?;
    let Some((interval, count)) = watch else {
        emit(&stat_frame(&first, as_json, false))?;
        return if first.health == Health::Foreign {
            Err(foreign_refusal(&first).into())
        } else {
            Ok(())
        };
    };
    let tty = std::io::stdout().is_terminal();
    let mut report: Result<NamespaceReport, String> = Ok(first);
    let mut frame = 0u64;
    loop {
        frame += 1;
        let mut text = match &report {
            Ok(r) => stat_frame(r, as_json, true),
            Err(e) if as_json => {
                format!("{}\n", json!({ "namespace": ns, "error": e.to_string() }))
            }
            Err(e) => format!("{e}\n"),
        };
        if tty && !as_json {
            // Home the cursor and clear the screen: refresh in place.
            text = format!("\x1b[H\x1b[2J{text}");
        } else if !as_json {
            text.push('\n');
        }
        emit(&text)?;
        if count.is_some_and(|c| frame >= c) {
            return Ok(());
        }
        std::thread::sleep(interval);
        report = inspect::inspect_namespace(ns).map_err(|e| explain(e).to_string());
    }
}

fn foreign_refusal(r: &NamespaceReport) -> String {
    let files: Vec<String> = r
        .foreign_files()
        .iter()
        .map(|f| r.dir.join(f).display().to_string())
        .collect();
    format!(
        "namespace \"{}\" holds files that are not stable-fragmented-buffer's ({}); sfb leaves them alone: if you are sure they are garbage, remove them yourself (rm {})",
        r.namespace,
        r.problems.first().map(String::as_str).unwrap_or("foreign content"),
        files.join(" ")
    )
}

fn stat_frame(r: &NamespaceReport, as_json: bool, watching: bool) -> String {
    if as_json {
        let v = report_json(r);
        // One object per line while watching (NDJSON), pretty otherwise.
        let mut s = if watching {
            v.to_string()
        } else {
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        };
        s.push('\n');
        s
    } else {
        report_text(r)
    }
}

fn report_json(r: &NamespaceReport) -> Value {
    let control = r.control.as_ref().map(|c| {
        json!({
            "version": c.version,
            "ctrl_size": c.ctrl_size,
            "chunk_size": c.chunk_size,
            "max_chunks": c.max_chunks,
            "creator_pid": c.creator_pid,
            "creator_start_ticks": c.creator_start_ticks,
            "pool_capacity": c.pool_capacity,
            "decay_ms": c.decay_ms,
            "ttl_ms": c.ttl_ms,
            "active": c.active.map(|a| json!({ "id": a.id, "generation": a.generation })),
            "next_chunk_id": c.next_chunk_id,
            "live_chunks": c.live_chunks,
            "generation": c.generation,
            "closed": c.closed,
            "created_unix_ms": c.created_unix_ms,
            "pool": c.pool,
            "recycled": c.recycled,
            "retired": c.retired,
            "expired": c.expired,
            "registry": c.registry,
            "creating": c.creating,
        })
    });
    json!({
        "namespace": r.namespace,
        "dir": r.dir.display().to_string(),
        "health": r.health.as_str(),
        "creator": creator_json(&r.creator),
        "dead": r.is_dead(),
        "format_version": r.format_version,
        "ctrl": { "present": r.ctrl_present, "bytes": r.ctrl_bytes, "tmpfs_bytes": r.ctrl_tmpfs_bytes },
        "control": control,
        "chunks": r.chunks.iter().map(chunk_json).collect::<Vec<_>>(),
        "channels": r.channels.iter().map(|c| json!({
            "name": c.name,
            "file": c.file,
            "kind": c.kind,
            "slots": c.slots,
            "slot_size": c.slot_size,
            "depth": c.depth,
            "published": c.published,
            "skipped": c.skipped,
            "evicted": c.evicted,
            "producers_alive": c.producers_alive,
            "producers_dead": c.producers_dead,
            "consumers_alive": c.consumers_alive,
            "consumers_dead": c.consumers_dead,
            "tmpfs_bytes": c.tmpfs_bytes,
            "problem": c.problem,
        })).collect::<Vec<_>>(),
        "chunk_files": r.chunk_files(),
        "tmpfs_bytes": r.tmpfs_bytes(),
        "age_ms": r.age_ms(),
        "problems": r.problems,
        "taken_unix_ms": r.taken_unix_ms,
    })
}

fn chunk_json(c: &ChunkReport) -> Value {
    let header = c.header.as_ref().map(|h| {
        json!({
            "chunk_id": h.chunk_id,
            "generation": h.generation,
            "state": h.state.as_str(),
            "size": h.size,
            "used": h.used,
            "capacity": h.capacity,
            "sealed": h.sealed,
            "entries": h.entries,
            "committed": h.committed(),
            "pending_bytes": h.pending_bytes,
            "walked": h.walked,
            "acknowledged": h.acknowledged,
            "pins": h.pins,
            "dedicated": h.dedicated,
            "activating": h.activating,
            "age_ms": h.age_ms(),
            "activated_ago_ms": h.activated_ago_ms,
            "first_write_ago_ms": h.first_write_ago_ms,
            "sealed_ago_ms": h.sealed_ago_ms,
            "empty_since_ago_ms": h.empty_since_ago_ms,
        })
    });
    json!({
        "id": c.id,
        "file": c.file,
        "file_bytes": c.file_bytes,
        "tmpfs_bytes": c.tmpfs_bytes,
        "registered": c.registered,
        "pooled": c.pooled,
        "active": c.active,
        "foreign": c.foreign,
        "header": header,
        "problem": c.problem,
        "note": c.note,
    })
}

fn report_text(r: &NamespaceReport) -> String {
    let mut s = format!(
        "namespace {} in {}: {}\n\n",
        r.namespace,
        r.dir.display(),
        r.health
    );
    let mut kv = table(&["FIELD", "VALUE"], &[]);
    let mut row = |k: &str, v: String| {
        kv.add_row(vec![k.to_owned(), v]);
    };
    row("creator", creator_text(&r.creator));
    row(
        "format version",
        r.format_version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    if let Some(c) = &r.control {
        row(
            "created",
            match r.age_ms() {
                Some(age) => format!("{} ago (unix ms {})", duration(age), c.created_unix_ms),
                None => "-".into(),
            },
        );
        row(
            "creator start",
            format!("{} clock ticks after boot", c.creator_start_ticks),
        );
        row(
            "chunk size",
            format!("{} ({} B)", bytes(c.chunk_size.into()), c.chunk_size),
        );
        row(
            "max chunks",
            if c.max_chunks == 0 {
                "unlimited".into()
            } else {
                c.max_chunks.to_string()
            },
        );
        row("decay", format!("{} ms", c.decay_ms));
        row("ttl", format!("{} ms", c.ttl_ms));
        row(
            "active",
            c.active
                .map(|a| format!("chunk {} (generation {})", a.id, a.generation))
                .unwrap_or_else(|| "none".into()),
        );
        row("live chunks", c.live_chunks.to_string());
        row("next chunk id", c.next_chunk_id.to_string());
        row("generation", c.generation.to_string());
        row(
            "warm pool",
            format!("{:?} of {} slot(s)", c.pool, c.pool_capacity),
        );
        row(
            "reclaimed",
            format!(
                "recycled {}, retired {}, expired {}",
                c.recycled, c.retired, c.expired
            ),
        );
        row(
            "closed",
            if c.closed {
                "yes (being removed)"
            } else {
                "no"
            }
            .into(),
        );
    }
    row(
        "tmpfs",
        format!("{} in {} file(s)", bytes(r.tmpfs_bytes()), r.files().len()),
    );
    s.push_str(&render_kv(&kv));
    if !r.chunks.is_empty() {
        let mut t = table(
            &[
                "ID",
                "GEN",
                "STATE",
                "USED / CAPACITY",
                "ENTRIES",
                "COMMITTED",
                "ACKED",
                "PINS",
                "AGE",
                "FLAGS",
            ],
            &[0, 1, 3, 4, 5, 6, 7, 8],
        );
        for c in &r.chunks {
            t.add_row(chunk_row(c));
        }
        s.push('\n');
        s.push_str(&render(&t));
    }
    let notes: Vec<String> = r
        .chunks
        .iter()
        .filter_map(|c| c.note.as_ref().map(|n| format!("  chunk {}: {n}\n", c.id)))
        .collect();
    if !notes.is_empty() {
        s.push_str("\nnotes:\n");
        s.extend(notes);
    }
    if !r.channels.is_empty() {
        let mut t = table(
            &[
                "NAME",
                "KIND",
                "SLOTS",
                "DEPTH",
                "PUBLISHED",
                "PRODUCERS",
                "CONSUMERS",
                "PROBLEM",
            ],
            &[3, 4],
        );
        for c in &r.channels {
            t.add_row(vec![
                c.name.clone(),
                if c.kind.is_empty() {
                    "-".into()
                } else {
                    c.kind.to_owned()
                },
                format!("{} x {} B", c.slots, c.slot_size),
                c.depth.to_string(),
                c.published.to_string(),
                format!("{} alive, {} dead", c.producers_alive, c.producers_dead),
                format!("{} alive, {} dead", c.consumers_alive, c.consumers_dead),
                c.problem.clone().unwrap_or_default(),
            ]);
        }
        s.push_str(&format!("\nchannels:\n{t}\n"));
    }
    if !r.problems.is_empty() {
        s.push_str("\nproblems:\n");
        for p in &r.problems {
            s.push_str(&format!("  {p}\n"));
        }
        match r.health {
            Health::Foreign => s.push_str(
                "sfb leaves files that are not its own alone; remove them yourself if they are garbage\n",
            ),
            _ if r.is_dead() => s.push_str(&format!(
                "its creator is dead: `sfb cleanup {}` removes it\n",
                r.namespace
            )),
            _ => {}
        }
    }
    s
}

/// The key/value table without its header line.
fn render_kv(t: &Table) -> String {
    render(t)
        .lines()
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect()
}

fn chunk_row(c: &ChunkReport) -> Vec<String> {
    let mut flags = Vec::new();
    for (on, name) in [
        (c.active, "active"),
        (c.pooled, "pooled"),
        (!c.registered && c.header.is_some(), "unregistered"),
        (c.foreign, "foreign"),
        (c.problem.is_some(), "CORRUPT"),
    ] {
        if on {
            flags.push(name.to_owned());
        }
    }
    let Some(h) = &c.header else {
        let state = if c.file.is_none() {
            "(no file)"
        } else if c.foreign {
            "(foreign)"
        } else if c.problem.is_some() {
            "(corrupt)"
        } else {
            "(unformatted)"
        };
        let dash = || "-".to_owned();
        return vec![
            c.id.to_string(),
            dash(),
            state.into(),
            format!("{} file", bytes(c.file_bytes)),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            flags.join(","),
        ];
    };
    if h.sealed {
        flags.push("sealed".into());
    }
    if h.activating {
        flags.push("activating".into());
    }
    if h.dedicated {
        flags.push("dedicated".into());
    }
    if h.pending_bytes > 0 {
        flags.push(format!(
            "pending={}",
            bytes(h.pending_bytes).replace(' ', "")
        ));
    }
    let pct = if h.capacity == 0 {
        0.0
    } else {
        h.used as f64 * 100.0 / h.capacity as f64
    };
    vec![
        c.id.to_string(),
        h.generation.to_string(),
        h.state.to_string(),
        format!("{} / {} ({pct:.0}%)", bytes(h.used), bytes(h.capacity)),
        h.entries.to_string(),
        h.committed().to_string(),
        h.acknowledged.to_string(),
        h.pins.to_string(),
        opt_duration(h.age_ms()),
        flags.join(","),
    ]
}

// ---------------------------------------------------------------- cleanup

fn cleanup(ns: &str, force: bool, dry_run: bool) -> AnyResult {
    let report = match inspect::inspect_namespace(ns) {
        Ok(r) => r,
        Err(BlobError::NotFound { .. }) => {
            return emit(&format!(
                "namespace {ns} has no files in {}; nothing to remove (run `sfb list` to see the namespaces there)\n",
                inspect::shm_dir().display()
            ))
        }
        Err(e) => return Err(explain(e)),
    };
    if !report.foreign_files().is_empty() {
        return Err(foreign_refusal(&report).into());
    }
    let alive = matches!(report.creator, Creator::Alive { .. });
    if dry_run {
        if alive && !force {
            return Err(explain(BlobError::InUse {
                namespace: ns.to_owned(),
                pid: report.creator.pid().unwrap_or(0),
            }));
        }
        return emit(&format!(
            "{}dry run: nothing was removed\n",
            would_remove(&report)
        ));
    }
    let mut removed = if force {
        SharedBackend::cleanup_namespace_forced(ns)
    } else {
        SharedBackend::remove_namespace(ns)
    }
    .map_err(explain)?;
    removed += remove_leftover_orphans(ns)?;
    emit(&format!("removed {removed} file(s) of namespace {ns}\n"))
}

/// The library removes the chunk files of the control block's own
/// incarnation; chunk files of this format made by an earlier one (or
/// with a scribbled incarnation) stay behind as orphans. They have no
/// control block any more, so one more pass removes them, unless the name
/// was taken meanwhile (the library refuses a live namespace) or they hold
/// foreign files.
fn remove_leftover_orphans(ns: &str) -> Result<usize, Box<dyn std::error::Error>> {
    match inspect::inspect_namespace(ns) {
        Ok(r) if r.health == Health::Orphaned && r.foreign_files().is_empty() => {
            match SharedBackend::remove_namespace(ns) {
                Ok(n) => Ok(n),
                Err(BlobError::InUse { .. }) => Ok(0),
                Err(e) => Err(explain(e)),
            }
        }
        _ => Ok(0),
    }
}

fn would_remove(r: &NamespaceReport) -> String {
    let files = r.files();
    format!(
        "would remove namespace {} (creator {}, {}): {} file(s), {}: {}\n",
        r.namespace,
        creator_text(&r.creator),
        r.health,
        files.len(),
        bytes(r.tmpfs_bytes()),
        files.join(" ")
    )
}

fn cleanup_dead(dry_run: bool) -> AnyResult {
    let dir = inspect::shm_dir();
    let listing = read_listing()?;
    let mut out = String::new();
    let (mut removed_ns, mut removed_files, mut freed, mut failed) = (0usize, 0usize, 0u64, 0usize);
    let mut live = 0usize;
    for info in &listing.namespaces {
        if !info.dead {
            if matches!(info.creator, Creator::Alive { .. }) {
                live += 1;
            }
            continue;
        }
        if !info.foreign_files.is_empty() {
            out.push_str(&format!(
                "skipped {}: it holds files that are not stable-fragmented-buffer's ({}); remove it with `sfb cleanup {}` after removing those by hand\n",
                info.namespace,
                info.foreign_files.join(" "),
                info.namespace
            ));
            continue;
        }
        if dry_run {
            let report = inspect::inspect_namespace_in(&dir, &info.namespace);
            match report {
                Ok(r) => out.push_str(&would_remove(&r)),
                // Gone meanwhile: nothing would go.
                Err(_) => continue,
            }
            removed_ns += 1;
            removed_files += info.files.len();
            freed += info.tmpfs_bytes;
            continue;
        }
        // The library takes the creator lock itself: a namespace whose
        // creator came back to life since the listing is refused, not removed.
        let removed = SharedBackend::remove_namespace(&info.namespace)
            .map(|n| n + remove_leftover_orphans(&info.namespace).unwrap_or(0));
        match removed {
            Ok(n) => {
                out.push_str(&format!(
                    "removed namespace {} (creator {}): {n} file(s), {}\n",
                    info.namespace,
                    creator_text(&info.creator),
                    bytes(info.tmpfs_bytes)
                ));
                removed_ns += 1;
                removed_files += n;
                freed += info.tmpfs_bytes;
            }
            Err(BlobError::InUse { pid, .. }) => {
                live += 1;
                out.push_str(&format!(
                    "skipped {}: its creator (pid {pid}) is alive now\n",
                    info.namespace
                ));
            }
            Err(e) => {
                failed += 1;
                out.push_str(&format!("failed {}: {}\n", info.namespace, explain(e)));
            }
        }
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    out.push_str(&format!(
        "{verb} {removed_ns} dead namespace(s), {removed_files} file(s), {} in {}; {live} live namespace(s) left alone\n",
        bytes(freed),
        dir.display()
    ));
    if dry_run {
        out.push_str("dry run: nothing was removed\n");
    }
    emit(&out)?;
    if failed > 0 {
        return Err(format!(
            "{failed} dead namespace(s) could not be removed (see above); fix the cause (permissions?) and run `sfb cleanup --dead` again"
        )
        .into());
    }
    Ok(())
}

// ---------------------------------------------------------------- completions

fn completions(shell: clap_complete::Shell) -> AnyResult {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "sfb", &mut buf);
    let mut out = std::io::stdout().lock();
    out.write_all(&buf)?;
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------- demo

// Precise monotonic nanoseconds, comparable between processes.
use sfb_bench::mono_ns;

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

/// Sequence bit of the paced (latency) messages of the demo.
const PACED: u64 = 1 << 63;
/// Paced messages the demo sends after the stream, one per interval.
const PACED_MESSAGES: u64 = 2_000;
const PACED_INTERVAL: Duration = Duration::from_micros(200);

fn demo(messages: u64, size: usize, chunk_size: usize, max_chunks: u32) -> AnyResult {
    if size < 16 {
        return Err("--size must be at least 16 bytes (sequence number and timestamp)".into());
    }
    let ns = format!("sfb-demo-{}", std::process::id());
    let store = Arc::new(PinnedBlobStore::new_shared_with_limit(
        Config::default(),
        &ns,
        chunk_size,
        Some(max_chunks),
    )?);
    let cleaner = store.start_cleanup_thread(Duration::from_millis(2));
    let tx = store.sender("demo")?;
    println!(
        "namespace {ns}: chunk {chunk_size} B, at most {max_chunks} chunks; work queue \"demo\" (messages up to {} B inline in the ring, larger through the store)",
        tx.inline_capacity()
    );
    println!("sending {messages} messages of {size} B as fast as they go, then {PACED_MESSAGES} one every {} us", PACED_INTERVAL.as_micros());

    let mut child = Command::new(std::env::current_exe()?)
        .args(["demo-consumer", "--namespace", &ns])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no consumer stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = child.kill();
        return Err(format!("consumer did not start: {line:?}").into());
    }
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    for seq in 0..messages {
        fill(&mut buf, seq);
        buf[8..16].copy_from_slice(&mono_ns().to_le_bytes());
        tx.send(&buf)?;
    }
    let elapsed = start.elapsed();
    for seq in 0..PACED_MESSAGES {
        std::thread::sleep(PACED_INTERVAL);
        fill(&mut buf, seq | PACED);
        buf[8..16].copy_from_slice(&mono_ns().to_le_bytes());
        tx.send(&buf)?;
    }
    // The consumer sees the channel disconnected once it has drained it.
    drop(tx);
    let mut report = String::new();
    out.read_to_string(&mut report)?;
    let status = child.wait()?;
    cleaner.stop();
    let peak = store.stats().chunks;
    drop(store);
    let shm = inspect::shm_dir();
    let leftovers: Vec<String> = std::fs::read_dir(&shm)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{ns}_")))
        .collect();
    print!("{report}");
    let secs = elapsed.as_secs_f64();
    let bytes = messages as f64 * size as f64;
    println!(
        "producer: {messages} messages, {:.1} MB in {:.3} s = {:.2} M msg/s, {:.2} GB/s; {peak} chunk(s) at the end",
        bytes / 1e6,
        secs,
        messages as f64 / secs / 1e6,
        bytes / secs / 1e9
    );
    if !status.success() {
        return Err(format!("consumer failed: {status}").into());
    }
    if !leftovers.is_empty() {
        return Err(format!(
            "files left in {}: {leftovers:?}; remove them with `sfb cleanup {ns}`",
            shm.display()
        )
        .into());
    }
    println!("nothing left in {}", shm.display());
    Ok(())
}

fn demo_consumer(ns: &str) -> AnyResult {
    let store = PinnedBlobStore::attach_shared(Config::default(), ns)?;
    let rx = store.receiver("demo")?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut expected = Vec::new();
    let (mut count, mut paced, mut bytes, mut bad) = (0u64, 0u64, 0u64, 0u64);
    let (mut stream_lat, mut paced_lat) = (Vec::new(), Vec::new());
    for m in rx.iter() {
        let now = mono_ns();
        let data: &[u8] = &m;
        if data.len() < 16 {
            bad += 1;
            continue;
        }
        let seq = u64::from_le_bytes(data[0..8].try_into()?);
        let sent = u64::from_le_bytes(data[8..16].try_into()?);
        expected.resize(data.len(), 0);
        fill(&mut expected, seq);
        expected[8..16].copy_from_slice(&data[8..16]);
        let (want, lat) = if seq & PACED != 0 {
            (paced | PACED, &mut paced_lat)
        } else {
            (count, &mut stream_lat)
        };
        if seq != want || expected != data {
            bad += 1;
        }
        lat.push(now.saturating_sub(sent));
        if seq & PACED != 0 {
            paced += 1;
        } else {
            count += 1;
        }
        bytes += data.len() as u64;
    }
    let pct = |v: &mut Vec<u64>, p: f64| {
        v.sort_unstable();
        v.get(((v.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1e3
    };
    println!(
        "consumer (pid {}): {} messages verified byte for byte ({:.1} MB), {bad} bad",
        std::process::id(),
        count + paced,
        bytes as f64 / 1e6,
    );
    println!(
        "one-way latency, paced messages (blocking receiver): p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        pct(&mut paced_lat, 0.5),
        pct(&mut paced_lat, 0.99),
        pct(&mut paced_lat, 1.0)
    );
    println!(
        "send-to-receive time while streaming (includes queueing in the ring): p50 {:.1} us, p99 {:.1} us",
        pct(&mut stream_lat, 0.5),
        pct(&mut stream_lat, 0.99),
    );
    if bad > 0 {
        return Err(format!("{bad} messages did not verify").into());
    }
    Ok(())
}
