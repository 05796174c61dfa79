//! Arbitrary channel-file contents (replaced whole, or scribbled in place
//! after the identity), then every endpoint opened and used.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stable_fragmented_buffer::fuzzing::channel_file;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = channel_file(data) {
        panic!("{e}");
    }
});
