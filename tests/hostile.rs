//! Hostile input, by property: arbitrary handles against a live store,
//! arbitrary bytes as control and chunk files. Expected: a clear error or
//! nothing, never a crash, a SIGBUS, a hang, or bytes that were not appended.
//! (The coverage-guided fuzz targets in `fuzz/` explore the same surfaces.)

mod common;

use common::{payload, Ns};
use proptest::prelude::*;
use stable_fragmented_buffer::layout::{CHUNK_HEADER_SIZE, CTRL_MAGIC, CTRL_SIZE, FORMAT_VERSION};
use stable_fragmented_buffer::{BlobError, Config, OverflowHandle, PinnedBlobStore};
use std::collections::HashMap;

fn cfg() -> Config {
    Config {
        decay_timeout_ms: 0,
        ..Config::default()
    }
}

/// A live store with known contents: handle -> bytes.
fn live(ns: &Ns) -> (PinnedBlobStore, HashMap<OverflowHandle, Vec<u8>>) {
    let store = PinnedBlobStore::new_shared(cfg(), ns.as_str(), 8192).unwrap();
    let mut known = HashMap::new();
    for i in 0..40u64 {
        let data = payload(i, 1 + (i as usize * 97) % 3000);
        known.insert(store.append_shared(&data).unwrap(), data);
    }
    (store, known)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_handles_resolve_to_nothing_or_to_exactly_what_was_appended(
        raw in proptest::collection::vec(any::<[u8; 24]>(), 64),
        tweaks in proptest::collection::vec((0usize..40, 0usize..5, any::<u32>()), 64),
    ) {
        let ns = Ns::new("prop-handles");
        let (store, known) = live(&ns);
        let handles: Vec<OverflowHandle> = known.keys().copied().collect();
        // Fully random handles, and real handles with one field changed.
        let mut candidates: Vec<OverflowHandle> = raw.iter().map(OverflowHandle::from_array).collect();
        for (i, field, v) in tweaks {
            let mut h = handles[i % handles.len()];
            match field {
                0 => h.page_id = v,
                1 => h.offset = v,
                2 => h.size = v,
                3 => h.generation = v,
                _ => h.timestamp = v as u64,
            }
            candidates.push(h);
        }
        // An entry is named by (chunk, offset, size, generation); the
        // timestamp is informational (format 3 does not key the tag on it).
        let at = |h: &OverflowHandle| {
            known
                .iter()
                .find(|(k, _)| {
                    (k.page_id, k.offset, k.size, k.generation)
                        == (h.page_id, h.offset, h.size, h.generation)
                })
                .map(|(_, v)| v)
        };
        let candidates_kept = candidates.clone();
        for h in candidates {
            match store.resolve(&h) {
                None => {}
                Some(bytes) => prop_assert_eq!(Some(&bytes), at(&h), "resolved to bytes never appended under {:?}", h),
            }
            if let Some(view) = store.resolve_ref(&h) {
                prop_assert_eq!(Some(&view.to_vec()), at(&h));
            }
        }
        // Acknowledgement of garbage never counts; the real ones still do,
        // once each.
        for h in &candidates_kept {
            if at(h).is_none() {
                prop_assert!(!store.acknowledge_shared(h), "a forged handle acknowledged {:?}", h);
            }
        }
        for (h, data) in &known {
            let got = store.resolve(h);
            prop_assert_eq!(got.as_ref(), Some(data));
            prop_assert!(store.acknowledge_shared(h), "a real handle acknowledges");
            prop_assert!(!store.acknowledge_shared(h), "exactly once");
        }
    }

    #[test]
    fn arbitrary_control_files_are_refused_with_a_clear_error(
        body in proptest::collection::vec(any::<u8>(), 0..20_000),
        with_magic in any::<bool>(),
        exact_size in any::<bool>(),
    ) {
        let ns = Ns::new("prop-ctrl");
        let mut bytes = body;
        if with_magic && bytes.len() >= 12 {
            bytes[0..8].copy_from_slice(&CTRL_MAGIC.to_le_bytes());
            bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        }
        if exact_size {
            bytes.resize(CTRL_SIZE, 0xA5);
        }
        let path = common::shm_dir().join(format!("{}_ctrl", ns.as_str()));
        std::fs::write(&path, &bytes).unwrap();
        match PinnedBlobStore::attach_shared(Config::default(), ns.as_str()) {
            Err(BlobError::Corrupt { .. }) | Err(BlobError::IncompatibleFormat { .. }) | Err(BlobError::Closed { .. }) => {}
            // Right magic, version and size with random fields: attaching
            // may succeed; then every operation must stay safe.
            Ok(store) => {
                // A made-up handle names nothing.
                let h = OverflowHandle { page_id: 0, offset: 128, size: 5, generation: 1, timestamp: 1 };
                prop_assert_eq!(store.resolve(&h), None);
                prop_assert!(!store.acknowledge_shared(&h));
                // An append either fails with a typed error or stores bytes
                // that read back and acknowledge once.
                match store.append_shared(b"hello") {
                    Ok(got) => {
                        prop_assert_eq!(store.resolve(&got), Some(b"hello".to_vec()));
                        prop_assert!(store.acknowledge_shared(&got));
                        prop_assert!(!store.acknowledge_shared(&got));
                    }
                    Err(e) => prop_assert!(!e.to_string().is_empty()),
                }
                store.cleanup_shared();
            }
            Err(e) => prop_assert!(false, "unexpected error kind: {e}"),
        }
        // Removal copes with whatever is there.
        let _ = stable_fragmented_buffer::SharedBackend::cleanup_namespace_forced(ns.as_str());
    }

    /// Part of one chunk file scribbled on (any bytes, anywhere, the file
    /// never shortened): entries it touched resolve to nothing or to bytes
    /// of their own length (never a crash, never past the entry), and every
    /// entry it did not touch — in that chunk, with its
    /// header intact, or in any other chunk — still resolves to exactly its
    /// bytes, in the process that had the chunk mapped and in one that maps
    /// it after the scribble.
    #[test]
    fn arbitrary_chunk_contents_never_crash_a_reader_or_yield_other_bytes(
        body in proptest::collection::vec(any::<u8>(), 1..4096),
        at in 0usize..8192,
    ) {
        let ns = Ns::new("prop-chunk");
        let (store, known) = live(&ns);
        let first = *known.keys().min_by_key(|h| (h.page_id, h.offset)).unwrap();
        let path = common::shm_dir().join(format!("{}_data_{}", ns.as_str(), first.page_id));
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        let start = at % len;
        let end = (start + body.len()).min(len);
        // In place, never truncating (a same-user process truncating a mapped
        // file is outside what any mmap-based store can defend against).
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &body[..end - start], start as u64).unwrap();
        let reader = PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap();
        for (h, data) in &known {
            let entry = h.offset as usize..h.offset as usize + 16 + h.size as usize;
            let touched = h.page_id == first.page_id
                && (start < CHUNK_HEADER_SIZE || (start < entry.end && entry.start < end));
            for who in [&reader, &store] {
                match who.resolve(h) {
                    Some(got) if !touched => prop_assert_eq!(&got, data, "bytes that were not appended under {:?}", h),
                    // Payload bytes carry no checksum (headers are checked,
                    // payloads cannot be): a scribble on them alone reads
                    // back, at the entry's length.
                    Some(got) => prop_assert_eq!(got.len(), data.len()),
                    None => prop_assert!(touched, "an entry the scribble did not touch no longer resolves: {:?} (scribbled {}..{})", h, start, end),
                }
            }
            if !touched {
                prop_assert!(reader.acknowledge_shared(h));
                prop_assert!(!store.acknowledge_shared(h));
            }
        }
        reader.cleanup_shared();
        store.cleanup_shared();
    }
}
