//! `cargo run --release -p sfb-bench [-- --quick] [-- --only TEXT...]`: the
//! performance table of stable-fragmented-buffer with its baselines (memcpy
//! into faulted memory, a Unix-domain socket, iceoryx2), in one run.

mod iceoryx;

use stable_fragmented_buffer::bench::{self, Options, PAYLOADS};

fn main() {
    if bench::run_peer_if_asked() || iceoryx::run_peer_if_asked() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = if args.iter().any(|a| a == "--quick") {
        Options::quick()
    } else {
        Options::full()
    };
    let only: Vec<&String> = args.iter().skip_while(|a| *a != "--only").skip(1).collect();
    let wanted = |label: &str| only.is_empty() || only.iter().any(|o| label.contains(o.as_str()));
    let steps: Vec<_> = bench::plan(opts)
        .into_iter()
        .filter(|s| wanted(&s.label))
        .collect();
    let iox: Vec<usize> = PAYLOADS
        .into_iter()
        .filter(|s| wanted(&format!("iceoryx2 {}", bench::size_label(*s))))
        .collect();
    let total = steps.len() + iox.len();
    let started = std::time::Instant::now();
    let mut cells = Vec::new();
    let mut n = 0;
    for step in steps {
        n += 1;
        eprintln!("[{n}/{total}] {}", step.label);
        cells.push(step.run());
    }
    for size in iox {
        n += 1;
        eprintln!("[{n}/{total}] iceoryx2 {}", bench::size_label(size));
        match iceoryx::cycle(&opts, size) {
            Ok(c) => cells.push(c),
            Err(e) => eprintln!("iceoryx2 {}: {e}", bench::size_label(size)),
        }
    }
    cells.sort_by_key(|c| c.payload);
    println!("Machine: {}\n", bench::machine());
    println!("{}", bench::markdown_table(&cells));
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
}
