//! Heap mode and heap views. No OS shared memory: this file also runs
//! under Miri (`cargo +nightly miri test --test heap`), with smaller counts.

mod common;

use common::payload;
use stable_fragmented_buffer::{
    BlobError, BlobHandle, BlobStoreLifecycleExt, BlobView, Config, PinnedBlobStore,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Iterations, scaled down under Miri (which runs ~1000x slower).
const fn scaled(n: u64) -> u64 {
    if cfg!(miri) {
        n / 200 + 2
    } else {
        n
    }
}

fn cfg(page: usize, decay_ms: u64, ttl_ms: u64) -> Config {
    Config {
        page_size: page,
        decay_timeout_ms: decay_ms,
        default_ttl_ms: ttl_ms,
        ..Config::default()
    }
}

fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Appends until the page changes; returns the handles of the first page.
fn fill_page(store: &PinnedBlobStore, size: usize) -> Vec<BlobHandle> {
    let mut out: Vec<BlobHandle> = Vec::new();
    for seed in 0.. {
        let h = store.append(&payload(seed, size)).unwrap();
        if out.first().is_some_and(|f| f.page_id() != h.page_id()) {
            return out;
        }
        out.push(h);
    }
    unreachable!()
}

#[test]
fn heap_api_round_trip_and_handle_getters() {
    let store = PinnedBlobStore::with_defaults().unwrap();
    assert!(!store.is_shared());
    let h = store.append(b"hello heap").unwrap();
    assert_eq!(store.get(&h).as_deref(), Some(&b"hello heap"[..]));
    assert_eq!(h.size(), 10);
    assert_eq!(h.total_size(), 10);
    assert_eq!(h.end_page_id(), h.page_id());
    assert_eq!(h.offset(), 128);
    assert!(h.timestamp() > 0);
    assert!(h.age_ms() < 60_000);
    let h2 = store.append(b"second").unwrap();
    assert_eq!(h2.page_id(), h.page_id());
    assert_eq!(h2.generation(), h.generation());
    assert!(h2.offset() > h.offset());
    assert!(matches!(store.append(b""), Err(BlobError::EmptyBlob)));
    assert!(matches!(
        PinnedBlobStore::new(cfg(100, 0, 0)),
        Err(BlobError::InvalidConfig { .. })
    ));
}

#[test]
fn heap_and_shared_calls_on_the_wrong_mode_are_clear() {
    let store = PinnedBlobStore::with_defaults().unwrap();
    assert!(matches!(
        store.append_shared(b"x"),
        Err(BlobError::WrongMode {
            expected: "shared",
            ..
        })
    ));
    let h = store.append(b"x").unwrap();
    let fake = stable_fragmented_buffer::OverflowHandle {
        page_id: 0,
        offset: 128,
        size: 1,
        generation: h.generation(),
        timestamp: h.timestamp(),
    };
    assert_eq!(store.resolve(&fake), None);
    assert!(store.resolve_ref(&fake).is_none());
    assert!(!store.acknowledge_shared(&fake));
    assert_eq!(store.cleanup_shared(), 0);
}

#[test]
fn heap_blobs_larger_than_a_page_get_a_dedicated_page() {
    let store = PinnedBlobStore::new(cfg(4096, 0, 60_000)).unwrap();
    let small = store.append(b"small").unwrap();
    let big = payload(3, 20_000);
    let h = store.append(&big).unwrap();
    assert_ne!(h.page_id(), small.page_id());
    assert_eq!(h.total_size(), 20_000);
    assert_eq!(store.get(&h), Some(big.clone()));
    assert_eq!(store.get_ref(&h).as_deref(), Some(&big[..]));
    assert!(store.acknowledge(&h));
    assert_eq!(store.cleanup_acknowledged(), 1);
    assert_eq!(store.get(&h), None);
}

#[test]
fn heap_reclamation_is_idempotent_recycles_at_once_and_reuses_page_ids() {
    let store = PinnedBlobStore::new(cfg(4096, 100, 60_000)).unwrap();
    let first = fill_page(&store, 300);
    let page = first[0].page_id();
    for h in &first {
        assert!(store.acknowledge(h));
        assert!(
            !store.acknowledge(h),
            "a second acknowledgement counts nothing"
        );
    }
    // Fully acknowledged and the warm pool has room: recycled at once (the
    // decay governs only when pages go back to the allocator).
    assert_eq!(store.cleanup_acknowledged(), 1);
    assert_eq!(store.cleanup_acknowledged(), 0, "reclaimed once");
    for h in &first {
        assert_eq!(store.get(h), None, "stale handles resolve to nothing");
    }
    // The page (and so its id) is reused for new data; old handles still
    // see nothing, never the new bytes.
    let mut reused = None;
    for seed in 1000..1100 {
        let h = store.append(&payload(seed, 300)).unwrap();
        if h.page_id() == page && h.offset() == first[0].offset() {
            reused = Some((h, seed));
            break;
        }
    }
    let (h, seed) = reused.expect("page id reused");
    assert_ne!(h.generation(), first[0].generation());
    assert_eq!(store.get(&first[0]), None);
    assert_eq!(store.get(&h), Some(payload(seed, 300)));
    let stats = store.stats();
    assert_eq!(stats.recycled, 1);
}

#[test]
fn heap_ttl_reclaims_unacknowledged_pages() {
    let store = PinnedBlobStore::new(cfg(4096, 60_000, 50)).unwrap();
    let first = fill_page(&store, 300);
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(store.cleanup_acknowledged(), 1);
    assert_eq!(store.get(&first[0]), None);
    assert_eq!(store.stats().expired, 1);
}

#[test]
fn heap_view_bytes_never_change_while_the_page_is_reclaimed_and_reused() {
    let store = PinnedBlobStore::new(cfg(4096, 0, 60_000)).unwrap();
    let first = fill_page(&store, 300);
    let view = store.get_ref(&first[0]).unwrap();
    let before = view.to_vec();
    for h in &first {
        store.acknowledge(h);
    }
    assert_eq!(store.cleanup_acknowledged(), 1);
    // The pinned page was retired, not recycled: new data goes elsewhere.
    assert_eq!(store.stats().recycled, 0);
    assert_eq!(store.stats().retired, 1);
    for seed in 0..scaled(200) {
        let h = store.append(&payload(seed + 7777, 300)).unwrap();
        store.acknowledge(&h);
        store.cleanup_acknowledged();
    }
    assert_eq!(&view[..], &before[..]);
    assert_eq!(
        store.get(&first[0]),
        None,
        "new lookups see the reclamation"
    );
    drop(view);
}

#[test]
fn views_are_send_sync_and_readable_from_another_thread() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<BlobView>();
    let store = Arc::new(PinnedBlobStore::new(cfg(4096, 0, 60_000)).unwrap());
    let big = payload(9, if cfg!(miri) { 10_000 } else { 1 << 20 });
    let h = store.append(&big).unwrap();
    let view = store.get_ref(&h).unwrap();
    let sum = std::thread::spawn(move || checksum(view.as_ref()))
        .join()
        .unwrap();
    assert_eq!(sum, checksum(&big));
}

#[test]
fn heap_stats_and_profiler_count() {
    let store = PinnedBlobStore::with_defaults().unwrap();
    store.profiler().enable();
    let h = store.append(&[1; 100]).unwrap();
    store.get(&h);
    store.get_ref(&h);
    store.acknowledge(&h);
    store.acknowledge(&h);
    let p = store.profiler().snapshot();
    assert_eq!(
        (p.appends, p.appended_bytes, p.reads, p.acks),
        (1, 100, 2, 1)
    );
    store.profiler().disable();
    store.append(&[1; 100]).unwrap();
    assert_eq!(store.profiler().snapshot().appends, 1);
    assert_eq!(store.stats().chunks, 1);
}

#[test]
fn heap_background_cleanup_thread_works_and_stops() {
    let store = Arc::new(PinnedBlobStore::new(cfg(4096, 0, 60_000)).unwrap());
    let cleaner = store.start_cleanup_thread(Duration::from_millis(1));
    let first = fill_page(&store, 300);
    for h in &first {
        store.acknowledge(h);
    }
    let mut spins = 0;
    while store.get(&first[0]).is_some() {
        std::thread::sleep(Duration::from_millis(1));
        spins += 1;
        assert!(spins < 10_000, "background reclamation never ran");
    }
    cleaner.stop();
}

/// The README's promise for `get`/`resolve`: an owned copy safe from
/// concurrent cleanup. A reader copies blobs that are already acknowledged
/// while the writer keeps appending, acknowledging and reclaiming, so
/// their pages are recycled and rewritten around the copies: every copy is
/// the appended bytes or nothing, never a mix (the copy holds a pin). A
/// race, so it catches a copy without a pin only some of the time (one run
/// in three here); `engine::tests::a_copy_holds_its_pin_until_it_is_done`
/// stages the same interleaving deterministically.
#[test]
fn heap_copies_of_acknowledged_blobs_are_never_torn_by_recycling() {
    let store = Arc::new(PinnedBlobStore::new(cfg(8192, 0, 60_000)).unwrap());
    let (tx, rx) = std::sync::mpsc::sync_channel::<(BlobHandle, u64)>(4);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let data = payload(i, 2000 + (i as usize * 131) % 1900);
                let h = store.append(&data).unwrap();
                let _ = tx.try_send((h, checksum(&data)));
                // Acknowledged at once: the reader copies acknowledged
                // blobs whose pages the next passes recycle.
                assert!(store.acknowledge(&h));
                if i % 2 == 0 {
                    store.cleanup_acknowledged();
                }
                i += 1;
            }
        })
    };
    let deadline = std::time::Instant::now()
        + if cfg!(miri) {
            Duration::from_millis(200)
        } else {
            Duration::from_millis(2_500)
        };
    let (mut copies, mut torn) = (0u64, 0u64);
    while std::time::Instant::now() < deadline {
        let Ok((h, sum)) = rx.recv_timeout(Duration::from_secs(5)) else {
            break;
        };
        if let Some(copy) = store.get(&h) {
            copies += 1;
            if checksum(&copy) != sum {
                torn += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    writer.join().unwrap();
    assert_eq!(torn, 0, "{torn} of {copies} copies were torn by recycling");
    assert!(copies > 0, "some copies were made");
}

#[test]
fn heap_stress_writers_readers_with_views_and_cleanup_in_a_loop() {
    // Writers append checksummed blobs and publish handles; readers take
    // views, hold them while cleanup runs continuously, and check the
    // checksum again just before dropping them.
    let store = Arc::new(PinnedBlobStore::new(cfg(8192, 0, 60_000)).unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<(BlobHandle, u64)>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicU64::new(0));
    let cleaner = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                store.cleanup_acknowledged();
                std::thread::yield_now();
            }
        })
    };
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (store, tx) = (Arc::clone(&store), tx.clone());
            std::thread::spawn(move || {
                for i in 0..scaled(3_000) {
                    let data = payload(w << 32 | i, 8 + (i as usize * 61) % 1500);
                    let h = store.append(&data).unwrap();
                    tx.send((h, checksum(&data))).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, rx, checked) = (Arc::clone(&store), Arc::clone(&rx), Arc::clone(&checked));
            std::thread::spawn(move || {
                let mut held: Vec<(BlobView, u64)> = Vec::new();
                loop {
                    let next = rx.lock().unwrap().recv();
                    let Ok((h, sum)) = next else { break };
                    let view = store
                        .get_ref(&h)
                        .expect("unacknowledged data is never reclaimed");
                    assert_eq!(checksum(&view), sum);
                    // Acknowledge at once: the page may be reclaimed while we hold the view.
                    assert!(store.acknowledge(&h));
                    held.push((view, sum));
                    if held.len() > 16 {
                        let (v, s) = held.remove(0);
                        assert_eq!(checksum(&v), s, "a view's bytes changed under it");
                        checked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                for (v, s) in held {
                    assert_eq!(checksum(&v), s, "a view's bytes changed under it");
                    checked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    for r in readers {
        r.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    cleaner.join().unwrap();
    assert_eq!(checked.load(Ordering::Relaxed), 2 * scaled(3_000));
    assert!(
        store.stats().recycled + store.stats().retired > 0,
        "cleanup must have reclaimed pages"
    );
}

/// A heap handle names a blob of its own store only: on another store it
/// resolves to nothing and acknowledges nothing, even where that store has
/// an entry at the same page and offset.
#[test]
fn a_heap_handle_on_another_store_names_nothing() {
    let a = PinnedBlobStore::new(cfg(4096, 0, 60_000)).unwrap();
    let b = PinnedBlobStore::new(cfg(4096, 0, 60_000)).unwrap();
    let ha = a.append(b"from a").unwrap();
    let hb = b.append(b"from b").unwrap();
    assert_eq!((ha.page_id(), ha.offset()), (hb.page_id(), hb.offset()));
    assert_eq!(b.get(&ha), None);
    assert!(b.get_ref(&ha).is_none());
    assert!(!b.acknowledge(&ha));
    assert_eq!(
        b.get(&hb).as_deref(),
        Some(&b"from b"[..]),
        "b's own entry untouched"
    );
    assert!(b.acknowledge(&hb));
    assert_eq!(a.get(&ha).as_deref(), Some(&b"from a"[..]));
}

/// A dropped view releases its pin: the page is then recycled in place
/// (kept warm) rather than retired, which is what a pin forces.
#[test]
fn a_dropped_view_lets_its_page_be_recycled_in_place() {
    let store = PinnedBlobStore::new(cfg(4096, 0, 60_000)).unwrap();
    let h = store.append(&[1; 3000]).unwrap();
    store.append(&[2; 3000]).unwrap(); // seals the first page
    let view = store.get_ref(&h).unwrap();
    assert_eq!(view.len(), 3000);
    drop(view);
    assert!(store.acknowledge(&h));
    let before = store.stats();
    assert_eq!(store.cleanup_acknowledged(), 1);
    let after = store.stats();
    assert_eq!(after.recycled, before.recycled + 1, "recycled in place");
    assert_eq!(after.retired, before.retired, "not retired");
}
