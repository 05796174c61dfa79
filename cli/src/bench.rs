//! `sfb bench`: the benchmark suite (`sfb-bench`, without its iceoryx2 baseline).

use super::*;

pub(crate) fn bench(quick: bool, only: &[String]) -> AnyResult {
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
