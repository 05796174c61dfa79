//! Arbitrary handles against a live store.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stable_fragmented_buffer::fuzzing::{handles, Live};
use std::sync::OnceLock;

static LIVE: OnceLock<Live> = OnceLock::new();

extern "C" fn remove_store() {
    if let Some(live) = LIVE.get() {
        if let Some(b) = live.store.shared_backend() {
            let _ = stable_fragmented_buffer::SharedBackend::cleanup_namespace_forced(b.namespace());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let live = LIVE.get_or_init(|| {
        // SAFETY: registering a plain extern "C" fn with no arguments.
        unsafe { libc_atexit(remove_store) };
        Live::new()
    });
    if let Err(e) = handles(live, data) {
        panic!("{e}");
    }
});

extern "C" {
    #[link_name = "atexit"]
    fn libc_atexit(f: extern "C" fn()) -> i32;
}
