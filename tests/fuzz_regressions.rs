//! Replays every input kept under `fuzz/regressions/` (inputs the fuzz
//! targets found interesting or failing) through the same checks.

use stable_fragmented_buffer::fuzzing::{channel_file, chunk_file, control_file, handles, Live};
use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn fuzz_regressions_handles() {
    let live = Live::new();
    let cases = inputs("handles");
    assert!(
        !cases.is_empty(),
        "fuzz/regressions/handles holds the seed corpus"
    );
    for (name, data) in cases {
        handles(&live, &data).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn fuzz_regressions_files() {
    let cases = inputs("files");
    assert!(
        !cases.is_empty(),
        "fuzz/regressions/files holds the seed corpus"
    );
    for (name, data) in cases {
        let Some((&which, rest)) = data.split_first() else {
            continue;
        };
        let r = if which % 2 == 0 {
            control_file(rest)
        } else {
            chunk_file(rest)
        };
        r.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // One of them declares 4 GiB chunks: the store must not back (and map
    // into this process) more of a chunk than its appends need plus the
    // worker's window, as libFuzzer's memory limit found.
    let peak = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap();
    assert!(peak < 1 << 20, "peak resident size {peak} kB");
}

#[test]
fn fuzz_regressions_channels() {
    let cases = inputs("channels");
    assert!(
        !cases.is_empty(),
        "fuzz/regressions/channels holds the seed corpus"
    );
    for (name, data) in cases {
        channel_file(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
