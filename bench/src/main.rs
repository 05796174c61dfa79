//! `cargo run --release -p sfb-bench -- [--quick] [--repeat N] [--only TEXT...]`
//! (or `--stream [rounds]`, or `--tail [seconds]`, or
//! `--scenario fanout [--seconds N]`, or `--scenario jobs [--jobs N]`, or
//! `--scenario wait [--repeat N] [--rates 1000,10000] [--seconds 3,2]
//! [--spins 0,2,5,20,100]`, or `--scenario chunks [--rounds N] [--counts 100,1000,4000]`,
//! or `--scenario curve [--rounds N]`, or `--scenario async [--rounds N]`): the performance table of stable-fragmented-buffer with its baselines (memcpy
//! into faulted memory, a Unix-domain socket, iceoryx2), in one run.

mod asyncwait;
mod curve;
mod iceoryx;

use sfb_bench::{self as bench, Options, PAYLOADS};

fn main() {
    if bench::run_peer_if_asked()
        || iceoryx::run_peer_if_asked()
        || curve::run_peer_if_asked()
        || asyncwait::run_peer_if_asked()
    {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `--scenario fanout [--seconds N]` / `--scenario jobs [--jobs N]` /
    // `--scenario wait [...]`: the multi-process scenarios (see the
    // library's `fanout`, `jobs` and `wait`).
    if let Some(i) = args.iter().position(|a| a == "--scenario") {
        std::process::exit(scenario(args.get(i + 1).map(String::as_str), &args));
    }
    // `--stream [rounds]`: camera-sized frames on the documented defaults,
    // against the same with no decay, alternating.
    if let Some(i) = args.iter().position(|a| a == "--stream") {
        let rounds = args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(5usize)
            .max(1);
        println!(
            "Machine: {}
",
            bench::machine()
        );
        println!(
            "{}",
            bench::stream_compare(rounds, std::time::Duration::from_secs(3))
        );
        return;
    }
    // `--tail [seconds]`: the latency of every steady 4 KiB append.
    if let Some(i) = args.iter().position(|a| a == "--tail") {
        let secs = args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(10.0f64);
        println!("Machine: {}\n", bench::machine());
        println!("{}", bench::markdown_table(&bench::tail(4096, secs)));
        return;
    }
    let opts = if args.iter().any(|a| a == "--quick") {
        Options::quick()
    } else {
        Options::full()
    };
    let repeat: usize = args
        .iter()
        .position(|a| a == "--repeat")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    // `--only A B --only C`: every word after an `--only` up to the next
    // `--flag`.
    let mut only: Vec<&String> = Vec::new();
    let mut listing = false;
    for a in &args {
        if a.starts_with("--") {
            listing = a == "--only";
        } else if listing {
            only.push(a);
        }
    }
    let wanted = |label: &str| only.is_empty() || only.iter().any(|o| label.contains(o.as_str()));
    let iox: Vec<usize> = PAYLOADS
        .into_iter()
        .filter(|s| wanted(&format!("iceoryx2 {}", bench::size_label(*s))))
        .collect();
    let started = std::time::Instant::now();
    let before = shm_names();
    let mut runs = Vec::new();
    for r in 0..repeat {
        let steps: Vec<_> = bench::plan(opts)
            .into_iter()
            .filter(|s| wanted(&s.label))
            .collect();
        let total = steps.len() + iox.len();
        let mut cells = Vec::new();
        for (n, step) in steps.into_iter().enumerate() {
            eprintln!(
                "[run {}/{repeat}] [{}/{total}] {}",
                r + 1,
                n + 1,
                step.label
            );
            cells.push(step.run());
        }
        for &size in &iox {
            eprintln!(
                "[run {}/{repeat}] iceoryx2 {}",
                r + 1,
                bench::size_label(size)
            );
            match iceoryx::cycle(&opts, size) {
                Ok(c) => cells.push(c),
                Err(e) => eprintln!("iceoryx2 {}: {e}", bench::size_label(size)),
            }
        }
        // iceoryx2 keeps a management segment in /dev/shm: remove what it added.
        for name in shm_names().difference(&before) {
            if name.starts_with("iox2_") {
                let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(name));
            }
        }
        cells.sort_by_key(|c| c.payload);
        runs.push(cells);
    }
    let cells = bench::median(runs);
    let runs = if repeat > 1 {
        format!("; each cell the median of {repeat} runs")
    } else {
        String::new()
    };
    println!("Machine: {}{runs}\n", bench::machine());
    println!("{}", bench::markdown_table(&cells));
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
}

fn shm_names() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `--scenario NAME`; returns the exit code (1 if it failed or a
/// check did not pass, 2 for a wrong command line).
fn scenario(name: Option<&str>, args: &[String]) -> i32 {
    let started = std::time::Instant::now();
    println!("Machine: {}\n", bench::machine());
    let code = match name {
        Some("fanout") => {
            let secs: f64 = bench::flag_value(args, "--seconds").unwrap_or(20.0);
            if !secs.is_finite() || secs <= 0.0 {
                eprintln!("--seconds: a positive number of seconds");
                return 2;
            }
            println!(
                "Scenario fanout: 2 MiB frames at 120 fps for {secs} s, loaned, to 3 subscriber processes (fast; 50 ms per frame; SIGSTOPped for 5 s from 3 s in)\n"
            );
            match bench::fanout(secs) {
                Ok(runs) => {
                    println!("{}", bench::fanout_markdown(&runs));
                    i32::from(!runs.iter().all(|r| r.ok()))
                }
                Err(e) => {
                    eprintln!("fanout failed: {e}");
                    1
                }
            }
        }
        Some("jobs") => {
            let n: u64 = bench::flag_value(args, "--jobs").unwrap_or(200_000);
            if n == 0 {
                eprintln!("--jobs: a positive number of jobs");
                return 2;
            }
            println!(
                "Scenario jobs: {n} jobs of 32 B to 256 KiB (log-uniform, fixed seed), loaned into a work queue with at-least-once delivery, 4 worker processes\n"
            );
            match bench::jobs(n) {
                Ok(runs) => {
                    println!("{}", bench::jobs_markdown(&runs));
                    i32::from(!runs.iter().all(|r| r.ok()))
                }
                Err(e) => {
                    eprintln!("jobs failed: {e}");
                    1
                }
            }
        }
        Some("wait") => {
            let opts = match bench::WaitOptions::from_args(args) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("{e}");
                    return 2;
                }
            };
            println!("Command: sfb-bench {}\n", args.join(" "));
            println!(
                "Scenario wait: {} B messages, paced (absolute deadlines, a sleep until each), from the parent to one receiver process blocked in recv(); channel (broadcast, ChannelConfig::default().spin(s)) for spin in {{{}}}, each run followed by a Unix SOCK_SEQPACKET socket run; {} rounds; about {:.0} s of sending\n",
                bench::WAIT_MESSAGE,
                opts.spins
                    .iter()
                    .map(|s| bench::spin_label(*s))
                    .collect::<Vec<_>>()
                    .join(", "),
                opts.repeat,
                opts.sending_seconds()
            );
            match bench::wait(&opts) {
                Ok(runs) => {
                    println!("{}", bench::wait_markdown(&opts, &runs));
                    0
                }
                Err(e) => {
                    eprintln!("wait failed: {e}");
                    1
                }
            }
        }
        Some("chunks") => {
            let rounds: usize = bench::flag_value(args, "--rounds").unwrap_or(3);
            if rounds == 0 {
                eprintln!("--rounds: a positive number of rounds");
                return 2;
            }
            let counts: Vec<usize> = match bench::flag_value::<String>(args, "--counts") {
                None => bench::CHUNK_COUNTS.to_vec(),
                Some(list) => match list.split(',').map(str::parse).collect() {
                    Ok(c) => c,
                    Err(_) => {
                        eprintln!("--counts: chunk counts separated by commas");
                        return 2;
                    }
                },
            };
            println!("Command: sfb-bench {}\n", args.join(" "));
            println!(
                "Scenario chunks: 64 KiB chunks holding one unacknowledged blob each, {} of them; per chunk: the append that creates it, reclaiming it (everything acknowledged, then cleanup_shared() passes), and its first resolve from an attached process; {rounds} rounds\n",
                counts
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            match bench::chunks(rounds, &counts) {
                Ok(runs) => {
                    println!("{}", bench::chunks_markdown(&runs, &counts));
                    0
                }
                Err(e) => {
                    eprintln!("chunks failed: {e}");
                    1
                }
            }
        }
        Some("curve") => {
            let rounds: usize = bench::flag_value(args, "--rounds").unwrap_or(3);
            if rounds == 0 {
                eprintln!("--rounds: a positive number of rounds");
                return 2;
            }
            println!("Command: sfb-bench {}\n", args.join(" "));
            println!(
                "Scenario curve: one publisher, 1, 2, 4 and 8 busy-polling subscriber processes reading every byte, 4 KiB and 1 MiB; this crate's broadcast (default ring, Block) and iceoryx2 (queue 32, no overflow) taking turns; medians of {rounds} rounds\n"
            );
            let before = shm_names();
            let result = curve::curve(rounds);
            // iceoryx2's management segment: removed if this run made it.
            for name in shm_names().difference(&before) {
                if name.starts_with("iox2_") {
                    let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(name));
                }
            }
            match result {
                Ok(points) => {
                    println!("{}", curve::markdown(&points));
                    0
                }
                Err(e) => {
                    eprintln!("curve failed: {e}");
                    1
                }
            }
        }
        Some("async") => {
            let rounds: usize = bench::flag_value(args, "--rounds").unwrap_or(3);
            if rounds == 0 {
                eprintln!("--rounds: a positive number of rounds");
                return 2;
            }
            println!("Command: sfb-bench {}\n", args.join(" "));
            println!(
                "Scenario async: {} B messages, one per ms, 1000 per run, from the parent to a receiver process on a work queue (ChannelConfig::default()); the receiver waits in recv(), in recv_async() under tokio current-thread, and under tokio multi-thread (2 workers), taking turns, then iceoryx2's pub/sub cell of the same size; {rounds} rounds\n",
                asyncwait::SIZE
            );
            let before = shm_names();
            let result = asyncwait::run(rounds);
            for name in shm_names().difference(&before) {
                if name.starts_with("iox2_") {
                    let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(name));
                }
            }
            match result {
                Ok(rows) => {
                    println!("{}", asyncwait::markdown(&rows));
                    0
                }
                Err(e) => {
                    eprintln!("async failed: {e}");
                    1
                }
            }
        }
        other => {
            eprintln!(
                "--scenario {}: expected fanout, jobs, wait, chunks, curve or async",
                other.unwrap_or("")
            );
            return 2;
        }
    };
    // Every run's namespace is `sfbbench-{pid}-{n}`: none may be left.
    let prefix = format!("sfbbench-{}-", std::process::id());
    let dir = stable_fragmented_buffer::inspect::shm_dir();
    let left: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "Files this run left in {}: {} {left:?}",
        dir.display(),
        left.len()
    );
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    if left.is_empty() {
        code
    } else {
        1
    }
}
