//! Every feature of the original, one test each (single process; the
//! cross-process ones are in `multiprocess.rs`).

mod common;

use common::{cfg, payload, Ns};
use stable_fragmented_buffer::{
    BlobError, BlobStoreLifecycleExt, Config, LifecycleManager, OverflowHandle, PinnedBlobStore,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHUNK: usize = 64 << 10;

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Fills the current chunk and seals it by appending until the chunk id
/// changes; returns the handles of the first chunk.
fn fill_first_chunk(store: &PinnedBlobStore, size: usize) -> Vec<(OverflowHandle, Vec<u8>)> {
    let mut out = Vec::new();
    let mut seed = 0;
    loop {
        let data = payload(seed, size);
        seed += 1;
        let h = store.append_shared(&data).unwrap();
        if let Some((first, _)) = out.first() {
            let first: &OverflowHandle = first;
            if h.page_id != first.page_id {
                return out;
            }
        }
        out.push((h, data));
    }
}

#[test]
fn feature_pointer_stability_data_never_moves_as_the_store_grows() {
    let ns = Ns::new("stable");
    let store = PinnedBlobStore::new_shared(cfg(5_000, 30_000), ns.as_str(), CHUNK).unwrap();
    let mut written = Vec::new();
    for i in 0..2_000u64 {
        let data = payload(i, 1 + (i as usize * 37) % 700);
        written.push((store.append_shared(&data).unwrap(), data));
    }
    let chunks: std::collections::BTreeSet<u32> = written.iter().map(|(h, _)| h.page_id).collect();
    assert!(
        chunks.len() > 5,
        "the test must span several chunks, got {chunks:?}"
    );
    // Everything written early is still where its handle says, byte for byte.
    for (h, data) in &written {
        assert_eq!(store.resolve(h).as_ref(), Some(data));
    }
}

#[test]
fn feature_lock_free_appends_from_many_threads() {
    let ns = Ns::new("threads");
    let store =
        Arc::new(PinnedBlobStore::new_shared(cfg(5_000, 30_000), ns.as_str(), CHUNK).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                (0..2_000u64)
                    .map(|i| {
                        let data = payload(t << 32 | i, 1 + (i as usize * 13) % 300);
                        (store.append_shared(&data).unwrap(), data)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let mut places: Vec<(u32, u32)> = all.iter().map(|(h, _)| (h.page_id, h.offset)).collect();
    places.sort_unstable();
    places.dedup();
    assert_eq!(places.len(), all.len(), "two appends got the same place");
    for (h, data) in &all {
        assert_eq!(store.resolve(h).as_ref(), Some(data));
    }
}

#[test]
fn feature_prefetch_prepares_the_next_chunk_off_the_append_path() {
    let ns = Ns::new("prefetch");
    let config = Config {
        prefetch_threshold: 0.5,
        ..cfg(5_000, 30_000)
    };
    let store = PinnedBlobStore::new_shared(config, ns.as_str(), CHUNK).unwrap();
    let backend = store.shared_backend().unwrap();
    assert_eq!(backend.pooled_chunks(), 0);
    // Below the threshold: nothing is prepared.
    let first = store.append_shared(&[1u8; 1000]).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(backend.pooled_chunks(), 0);
    assert_eq!(backend.chunk_count(), 1);
    // Past 50 %: the worker prepares one in the background.
    while store.append_shared(&[2u8; 1000]).unwrap().offset < (CHUNK / 2) as u32 {}
    wait_until("a prefetched chunk", || backend.pooled_chunks() == 1);
    assert_eq!(backend.chunk_count(), 2);
    store.cleanup_shared();
    assert_eq!(
        backend.pooled_chunks(),
        1,
        "a fresh prepared chunk is not idle"
    );
    // The rollover takes the prepared chunk instead of creating one.
    let mut h = first;
    while h.page_id == first.page_id {
        h = store.append_shared(&[3u8; 1000]).unwrap();
    }
    assert_eq!(
        backend.pooled_chunks(),
        0,
        "the prepared chunk became the append target"
    );
    assert!(backend.chunk_count() <= 3);
}

#[test]
fn feature_ack_reclamation_recycles_at_once_and_the_decay_governs_release() {
    let ns = Ns::new("decay");
    let store = PinnedBlobStore::new_shared(cfg(300, 60_000), ns.as_str(), CHUNK).unwrap();
    let backend = store.shared_backend().unwrap();
    let first = fill_first_chunk(&store, 500);
    assert_eq!(store.cleanup_shared(), 0, "nothing acknowledged yet");
    let (last, rest) = first.split_last().unwrap();
    for (h, _) in rest {
        assert!(store.acknowledge_shared(h));
    }
    assert_eq!(store.cleanup_shared(), 0, "one entry still unacknowledged");
    assert_eq!(
        store.resolve(&last.0).as_ref(),
        Some(&last.1),
        "unacknowledged data stays"
    );
    assert!(store.acknowledge_shared(&last.0));
    // Fully acknowledged: recycled into the warm pool at once, no decay
    // wait (the pool has room)...
    let files = backend.chunk_count();
    let recycled = store.stats().recycled;
    assert_eq!(store.cleanup_shared(), 1);
    assert_eq!(
        store.resolve(&last.0),
        None,
        "reclaimed: the handle resolves to nothing"
    );
    assert_eq!(store.stats().recycled, recycled + 1);
    assert_eq!(
        backend.chunk_count(),
        files,
        "recycled in place, not unlinked"
    );
    // ...and the decay governs when memory goes back: an idle pooled chunk
    // is unlinked after max(decay, 1 s).
    std::thread::sleep(Duration::from_millis(1_200));
    store.cleanup_shared();
    assert!(
        backend.chunk_count() < files,
        "idle pooled chunks are released after the decay"
    );
}

#[test]
fn feature_ttl_reclaims_when_consumers_crash() {
    let ns = Ns::new("ttl");
    // A TTL long enough that filling a chunk on a loaded two-core machine
    // cannot outlast it before the first pass.
    let store = PinnedBlobStore::new_shared(cfg(5_000, 1_500), ns.as_str(), CHUNK).unwrap();
    let first = fill_first_chunk(&store, 500);
    assert_eq!(store.cleanup_shared(), 0);
    std::thread::sleep(Duration::from_millis(1_600));
    assert_eq!(
        store.cleanup_shared(),
        1,
        "nobody acknowledged, the TTL reclaims"
    );
    assert!(first.iter().all(|(h, _)| store.resolve(h).is_none()));
    assert!(!store.acknowledge_shared(&first[0].0));
}

#[test]
fn feature_backpressure_through_max_chunks() {
    let ns = Ns::new("full");
    let store =
        PinnedBlobStore::new_shared_with_limit(cfg(0, 60_000), ns.as_str(), 8192, Some(2)).unwrap();
    let mut handles = Vec::new();
    let err = loop {
        match store.append_shared(&[7u8; 1000]) {
            Ok(h) => handles.push(h),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, BlobError::StoreFull { max_chunks: 2, .. }),
        "{err}"
    );
    assert_eq!(store.shared_backend().unwrap().chunk_count(), 2);
    // Consumers catch up: acknowledge, reclaim, and appends flow again.
    for h in &handles {
        assert!(store.acknowledge_shared(h));
    }
    assert!(store.cleanup_shared() >= 1);
    let h = store.append_shared(&[8u8; 1000]).unwrap();
    assert_eq!(store.resolve(&h), Some(vec![8u8; 1000]));
}

#[test]
fn feature_background_lifecycle_thread_reclaims_stops_and_joins() {
    let ns = Ns::new("lifecycle");
    // No prefetch (it also reclaims, on the worker thread): only the
    // lifecycle thread may reclaim here.
    let config = Config {
        prefetch_threshold: 1.0,
        ..cfg(0, 60_000)
    };
    let store = Arc::new(PinnedBlobStore::new_shared(config, ns.as_str(), CHUNK).unwrap());
    let handle = store.start_cleanup_thread(Duration::from_millis(5));
    let first = fill_first_chunk(&store, 500);
    for (h, _) in &first {
        store.acknowledge_shared(h);
    }
    wait_until("background reclamation", || {
        store.resolve(&first[0].0).is_none()
    });
    assert!(handle.manager().reclaimed() >= 1);
    assert!(handle.is_running());
    handle.stop();

    // A thread whose store is dropped ends by itself.
    let handle = store.start_cleanup_thread(Duration::from_millis(5));
    drop(store);
    wait_until("the lifecycle thread to end", || !handle.is_running());
    assert!(ns.files().is_empty());
}

#[test]
fn feature_lifecycle_manager_runs_cycles_on_a_backend() {
    let ns = Ns::new("manager");
    let store = PinnedBlobStore::new_shared(cfg(0, 60_000), ns.as_str(), CHUNK).unwrap();
    let first = fill_first_chunk(&store, 500);
    for (h, _) in &first {
        store.acknowledge_shared(h);
    }
    let manager =
        LifecycleManager::for_target(store.shared_backend().unwrap().maintenance_target());
    let mut total = 0;
    for _ in 0..3 {
        total += manager.maintenance_cycle();
    }
    assert_eq!(total, 1);
    assert_eq!(manager.cycles(), 3);
}

#[test]
fn oversized_blob_gets_a_dedicated_chunk_and_empty_blob_is_an_error() {
    let ns = Ns::new("big");
    let store = PinnedBlobStore::new_shared(cfg(0, 60_000), ns.as_str(), 8192).unwrap();
    let small = store.append_shared(b"small").unwrap();
    let big = payload(1, 100_000);
    let h = store.append_shared(&big).unwrap();
    assert_ne!(h.page_id, small.page_id);
    assert_eq!(h.as_bytes().len(), 24);
    assert_eq!(store.resolve(&h), Some(big));
    assert_eq!(store.shared_backend().unwrap().chunk_count(), 2);
    // Reclaimed like any chunk, but unlinked rather than pooled.
    assert!(store.acknowledge_shared(&h));
    assert_eq!(store.cleanup_shared(), 1);
    assert_eq!(store.shared_backend().unwrap().chunk_count(), 1);
    assert_eq!(store.shared_backend().unwrap().pooled_chunks(), 0);
    assert_eq!(store.resolve(&h), None);
    assert!(matches!(
        store.append_shared(b""),
        Err(BlobError::EmptyBlob)
    ));
}

#[test]
fn a_fully_acknowledged_chunk_is_reused_at_once_on_the_default_decay() {
    // Two chunks at most and the default 5 s decay: a stream that
    // acknowledges as it goes must never wait for the decay (it used to end
    // in StoreFull with every chunk acknowledged).
    let ns = Ns::new("reuse");
    let store =
        PinnedBlobStore::new_shared_with_limit(Config::default(), ns.as_str(), CHUNK, Some(2))
            .unwrap();
    assert!(Config::default().decay_timeout_ms >= 1_000);
    let start = Instant::now();
    for i in 0..200 {
        let data = payload(i, 20_000);
        let h = loop {
            match store.append_shared(&data) {
                Ok(h) => break h,
                Err(BlobError::StoreFull { .. }) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(2),
                        "append {i} waits on acknowledged chunks"
                    );
                    store.cleanup_shared();
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(store.resolve(&h).unwrap(), data);
        assert!(store.acknowledge_shared(&h));
    }
    assert!(store.stats().recycled > 0);
    assert!(store.stats().chunks <= 2);
}

#[test]
fn store_full_says_what_holds_the_chunks() {
    let ns = Ns::new("fullcause");
    let store =
        PinnedBlobStore::new_shared_with_limit(cfg(0, 60_000), ns.as_str(), 8192, Some(3)).unwrap();
    let mut handles = Vec::new();
    let err = loop {
        match store.append_shared(&[7u8; 1000]) {
            Ok(h) => handles.push(h),
            Err(e) => break e,
        }
    };
    let text = err.to_string();
    // It used to say only "acknowledge data", also when all of it was.
    assert!(text.contains("hold unacknowledged entries"), "{text}");
    assert!(text.contains("the append target"), "{text}");
    assert!(
        text.contains("the TTL (60000 ms) frees the oldest in"),
        "{text}"
    );
    // Acknowledged, the same chunks are reused at once.
    for h in &handles {
        assert!(store.acknowledge_shared(h));
    }
    assert!(store.append_shared(&[1u8; 1000]).is_ok());
}

#[test]
fn a_dedicated_write_that_outlives_the_ttl_never_returns_a_dead_handle() {
    // A blob larger than a chunk gets a dedicated chunk; a writer that takes
    // longer than max(decay, 1 s) + the TTL to fill it finds it sealed and
    // reclaimed by a pass. It must get an error, not a handle that resolves
    // to nothing.
    let ns = Ns::new("dedlate");
    let store = Arc::new(PinnedBlobStore::new_shared(cfg(0, 100), ns.as_str(), CHUNK).unwrap());
    let cleaner = store.start_cleanup_thread(Duration::from_millis(20));
    let r = store.append_shared_with(2 * CHUNK, |buf| {
        std::thread::sleep(Duration::from_millis(2_000));
        buf.fill(7);
    });
    cleaner.stop();
    match r {
        Err(BlobError::Expired { .. }) => {}
        Ok(h) => panic!(
            "a handle came back: resolves to {:?}",
            store.resolve(&h).map(|v| v.len())
        ),
        Err(e) => panic!("{e}"),
    }
    // A prompt writer is unaffected.
    let h = store
        .append_shared_with(2 * CHUNK, |buf| buf.fill(8))
        .unwrap();
    assert_eq!(store.resolve(&h).map(|v| v.len()), Some(2 * CHUNK));
}
