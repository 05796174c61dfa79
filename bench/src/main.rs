//! `cargo run --release -p sfb-bench -- [--quick] [--repeat N] [--only TEXT...]`
//! (or `--stream [rounds]`, or `--tail [seconds]`): the
//! performance table of stable-fragmented-buffer with its baselines (memcpy
//! into faulted memory, a Unix-domain socket, iceoryx2), in one run.

mod iceoryx;

use sfb_bench::{self as bench, Options, PAYLOADS};

fn main() {
    if bench::run_peer_if_asked() || iceoryx::run_peer_if_asked() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
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
    let only: Vec<&String> = args.iter().skip_while(|a| *a != "--only").skip(1).collect();
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
