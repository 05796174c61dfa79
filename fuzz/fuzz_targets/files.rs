//! Arbitrary control-file and chunk-file contents (first byte picks which).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stable_fragmented_buffer::fuzzing::{chunk_file, control_file};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let result = if which % 2 == 0 { control_file(rest) } else { chunk_file(rest) };
    if let Err(e) = result {
        panic!("{e}");
    }
});
