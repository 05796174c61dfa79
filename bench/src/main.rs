//! `cargo run --release -p sfb-bench [-- --quick] [-- --only TEXT]`: the
//! performance table of stable-fragmented-buffer with its baselines.

use stable_fragmented_buffer::bench::{self, Options};

fn main() {
    if bench::run_peer_if_asked() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = if args.iter().any(|a| a == "--quick") {
        Options::quick()
    } else {
        Options::full()
    };
    let only: Vec<&String> = args.iter().skip_while(|a| *a != "--only").skip(1).collect();
    let steps: Vec<_> = bench::plan(opts)
        .into_iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| s.label.contains(o.as_str())))
        .collect();
    let total = steps.len();
    let started = std::time::Instant::now();
    let mut cells = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        eprintln!("[{}/{total}] {}", i + 1, step.label);
        cells.push(step.run());
    }
    println!("Machine: {}\n", bench::machine());
    println!("{}", bench::markdown_table(&cells));
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
}
