//! The original crate's public API, called with its own module paths and
//! signatures: code written against stable-fragmented-buffer 0.1.0 compiles
//! against this crate unchanged. The signature checks are compile-time
//! (`let _: fn(..) -> .. = path;`): a changed signature fails the build.
//! The behaviour tests use the original's small chunks and explicit
//! `cleanup_chunks(ttl, decay)` calls; the last section shows the
//! differences the README lists, one test each.

mod common;

use common::{files_of, Ns};
use stable_fragmented_buffer::backend::shared::{
    SharedBackend, CHUNK_HEADER_SIZE, DEFAULT_CHUNK_SIZE,
};
use stable_fragmented_buffer::lifecycle::{BlobStoreLifecycleExt, LifecycleManager};
use stable_fragmented_buffer::page::{BlobStats, PinnedBlobStore};
use stable_fragmented_buffer::profiling::{ProfileStats, Profiler};
use stable_fragmented_buffer::types::{
    now_ms, BackendMode, BlobError, BlobHandle, Config, OverflowHandle, Result,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn the_original_signatures_compile() {
    // The root re-exports of the original.
    use stable_fragmented_buffer as root;
    let _: fn(&str, usize, Option<u32>) -> Result<root::SharedBackend> = SharedBackend::create;
    let _: fn(&str, Option<u32>) -> Result<SharedBackend> = SharedBackend::attach;
    let _: fn(&str) -> Result<()> = SharedBackend::cleanup_namespace;
    let _: fn(&SharedBackend, &[u8]) -> Result<OverflowHandle> = SharedBackend::append;
    let _: fn(&SharedBackend, &OverflowHandle, u64) -> Option<Vec<u8>> = SharedBackend::resolve;
    let _: fn(&SharedBackend, &OverflowHandle) -> bool = SharedBackend::acknowledge;
    let _: fn(&SharedBackend, u64, u64) -> usize = SharedBackend::cleanup_chunks;
    let _: fn(&SharedBackend) -> usize = SharedBackend::chunk_count;
    let _: fn(&SharedBackend) -> usize = SharedBackend::data_capacity;
    let _: fn(&SharedBackend) = SharedBackend::debug_chunks;
    let _: usize = CHUNK_HEADER_SIZE + DEFAULT_CHUNK_SIZE;

    let _: fn(u32, u32, u32, u32) -> OverflowHandle = OverflowHandle::new;
    let _: for<'a> fn(&'a OverflowHandle) -> &'a [u8] = OverflowHandle::as_bytes;
    let _: fn(&[u8]) -> Option<OverflowHandle> = OverflowHandle::from_bytes;
    let _: fn(&OverflowHandle, u64) -> bool = OverflowHandle::is_expired;
    let _: fn(&OverflowHandle) -> u64 = OverflowHandle::age_ms;

    let _: fn(&BlobHandle) -> u32 = BlobHandle::page_id;
    let _: fn(&BlobHandle) -> u32 = BlobHandle::offset;
    let _: fn(&BlobHandle) -> u32 = BlobHandle::size;
    let _: fn(&BlobHandle) -> u32 = BlobHandle::generation;
    let _: fn(&BlobHandle) -> u32 = BlobHandle::end_page_id;
    let _: fn(&BlobHandle) -> u64 = BlobHandle::total_size;
    let _: fn(&BlobHandle) -> u64 = BlobHandle::timestamp;
    let _: fn(&BlobHandle) -> u64 = BlobHandle::age_ms;

    let _: fn(Config) -> Result<PinnedBlobStore> = PinnedBlobStore::new;
    let _: fn() -> Result<PinnedBlobStore> = PinnedBlobStore::with_defaults;
    let _: fn(Config, &str, usize) -> Result<PinnedBlobStore> = PinnedBlobStore::new_shared;
    let _: fn(Config, &str, usize, Option<u32>) -> Result<PinnedBlobStore> =
        PinnedBlobStore::new_shared_with_limit;
    let _: fn(Config, &str) -> Result<PinnedBlobStore> = PinnedBlobStore::attach_shared;
    let _: fn(&PinnedBlobStore) -> BlobStats = PinnedBlobStore::stats;
    let _: fn(&PinnedBlobStore) -> &Profiler = PinnedBlobStore::profiler;
    let _: fn(&PinnedBlobStore) = PinnedBlobStore::debug_chunks;
    let _: fn(&PinnedBlobStore) -> usize = PinnedBlobStore::cleanup_acknowledged;
    let _: fn(&PinnedBlobStore) -> usize = PinnedBlobStore::cleanup_shared;
    let _: fn(&PinnedBlobStore) -> bool = PinnedBlobStore::is_shared;

    let _: fn(&Arc<PinnedBlobStore>) -> LifecycleManager = LifecycleManager::new;
    let _: fn(&LifecycleManager) -> usize = LifecycleManager::maintenance_cycle;
    let _: fn(LifecycleManager, Duration) = LifecycleManager::start_background_cleanup;
    let _: fn(&Arc<PinnedBlobStore>, Duration) =
        <Arc<PinnedBlobStore> as BlobStoreLifecycleExt>::start_cleanup;

    let _: fn() -> Profiler = Profiler::new;
    let _: fn(&Profiler) -> ProfileStats = Profiler::stats;
    let _: fn(&Profiler, usize) = Profiler::record_append;
    let _: fn(&Profiler, usize) = Profiler::record_read;
    let _: fn(&Profiler, usize) = Profiler::record_page_allocated;
    let _: fn(&Profiler, usize, usize) = Profiler::record_page_cleanup;
    let _: fn(&Profiler) = Profiler::record_cleanup;
    let _: fn(&Profiler) = Profiler::record_multi_page_span;
    let _: fn(&ProfileStats) -> u64 = ProfileStats::avg_append_size;
    let _: fn(&ProfileStats) -> u64 = ProfileStats::avg_read_size;
    let _: fn() -> u64 = now_ms;

    let _ = (
        root::BlobStats::default(),
        root::PinnedBlobStore::with_defaults,
        BackendMode::default(),
    );
    let _: Option<root::BlobError> = None::<BlobError>;
    let _: Option<(
        root::LifecycleManager,
        root::OverflowHandle,
        root::BlobHandle,
    )> = None;
    let _: Option<root::Config> = Some(Config::performance());
}

#[test]
fn a_chunk_one_byte_larger_than_its_header_holds_a_one_byte_blob() {
    let ns = Ns::new("orig-min");
    for bad in [0, 32, CHUNK_HEADER_SIZE] {
        let e = SharedBackend::create(ns.as_str(), bad, None).unwrap_err();
        assert!(matches!(e, BlobError::InvalidConfig { .. }), "{e}");
        assert!(
            e.to_string().contains(&(CHUNK_HEADER_SIZE + 1).to_string()),
            "{e}"
        );
    }
    let b = SharedBackend::create(ns.as_str(), CHUNK_HEADER_SIZE + 1, None).unwrap();
    assert_eq!(b.data_capacity(), 8, "rounded up to whole 8-byte units");
    let h = b.append(b"x").unwrap();
    assert_eq!(h.page_id, 0);
    assert_eq!(b.resolve(&h, 30_000).as_deref(), Some(&b"x"[..]));
    let h = b.append(b"next chunk").unwrap();
    assert_ne!(h.page_id, 0);
}

#[test]
fn data_capacity_is_the_largest_blob_a_standard_chunk_holds() {
    let ns = Ns::new("orig-cap");
    let b = SharedBackend::create(ns.as_str(), CHUNK_HEADER_SIZE + 100, None).unwrap();
    let cap = b.data_capacity();
    assert_eq!(cap, 104, "rounded up to whole 8-byte units");
    let full = b.append(&vec![7u8; cap]).unwrap();
    assert_eq!(
        full.page_id, 0,
        "exactly data_capacity bytes fit the first chunk"
    );
    let bigger = b.append(&vec![8u8; cap + 1]).unwrap();
    assert_ne!(bigger.page_id, 0);
    assert_eq!(b.resolve(&full, 30_000).unwrap(), vec![7u8; cap]);
    assert_eq!(b.resolve(&bigger, 30_000).unwrap(), vec![8u8; cap + 1]);
}

#[test]
fn small_chunks_overflow_in_order_and_max_chunks_refuses_the_third() {
    let ns = Ns::new("orig-max");
    let b = SharedBackend::create(ns.as_str(), CHUNK_HEADER_SIZE + 64, Some(2)).unwrap();
    let h0 = b.append(&[0xAA; 60]).unwrap();
    let h1 = b.append(&[0xBB; 60]).unwrap();
    assert_eq!((h0.page_id, h1.page_id), (0, 1));
    let e = b.append(&[0xCC; 60]).unwrap_err();
    assert!(
        matches!(e, BlobError::StoreFull { max_chunks: 2, .. }),
        "{e}"
    );
    // An attacher sees the creator's limit whatever it passes.
    let other = SharedBackend::attach(ns.as_str(), Some(100)).unwrap();
    assert!(matches!(
        other.append(&[0xDD; 60]),
        Err(BlobError::StoreFull { .. })
    ));
    assert_eq!(other.resolve(&h1, 30_000).unwrap(), vec![0xBB; 60]);
}

#[test]
fn resolve_with_a_ttl_refuses_handles_older_than_it() {
    let ns = Ns::new("orig-ttl");
    let b = SharedBackend::create(ns.as_str(), 4096, None).unwrap();
    let h = b.append(b"aging").unwrap();
    assert_eq!(b.resolve(&h, 30_000).as_deref(), Some(&b"aging"[..]));
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(b.resolve(&h, 1), None, "older than a 1 ms TTL");
    assert_eq!(b.resolve_copy(&h).as_deref(), Some(&b"aging"[..]));
}

/// Fills three small chunks with one 100-byte blob each (the third is the
/// append target).
fn three_chunks(b: &SharedBackend) -> [OverflowHandle; 3] {
    let h = [
        b.append(&[0xAA; 100]).unwrap(),
        b.append(&[0xBB; 100]).unwrap(),
        b.append(&[0xCC; 100]).unwrap(),
    ];
    // Each 100-byte blob (120 bytes with its entry header) fills a chunk
    // of 128 data bytes.
    assert!(
        h[0].page_id != h[1].page_id && h[1].page_id != h[2].page_id,
        "{h:?}"
    );
    h
}

#[test]
fn explicit_cleanup_chunks_unlinks_what_it_frees_and_spares_the_target() {
    let ns = Ns::new("orig-clean");
    let b = SharedBackend::create(ns.as_str(), CHUNK_HEADER_SIZE + 128, None).unwrap();
    let h = three_chunks(&b);
    let data_file = |id: u32| format!("{}_data_{id}", ns.as_str());
    // Wait for the prefetch worker to finish (it may add a chunk).
    std::thread::sleep(Duration::from_millis(50));
    let before = b.chunk_count();
    for x in &h {
        assert!(b.acknowledge(x));
    }
    let freed = b.cleanup_chunks(30_000, 0);
    assert!(freed >= 2, "freed {freed}");
    assert_eq!(b.chunk_count(), before - freed);
    let files = files_of(ns.as_str());
    for x in &h[..2] {
        assert!(!files.contains(&data_file(x.page_id)), "{files:?}");
        assert_eq!(b.resolve(x, 30_000), None);
    }
    assert!(files.contains(&data_file(h[2].page_id)), "the target stays");
    let fresh = b.append(b"fresh data after cleanup").unwrap();
    assert_eq!(
        b.resolve(&fresh, 30_000).as_deref(),
        Some(&b"fresh data after cleanup"[..])
    );
}

#[test]
fn explicit_cleanup_chunks_frees_unacknowledged_chunks_past_its_ttl_only() {
    let ns = Ns::new("orig-cttl");
    let b = SharedBackend::create(ns.as_str(), CHUNK_HEADER_SIZE + 128, None).unwrap();
    let h0 = b.append(&[0xAA; 100]).unwrap();
    let _h1 = b.append(&[0xBB; 100]).unwrap();
    assert_eq!(b.cleanup_chunks(30_000, 0), 0, "fresh and unacknowledged");
    std::thread::sleep(Duration::from_millis(5));
    assert!(b.cleanup_chunks(1, 0) >= 1);
    assert_eq!(b.resolve(&h0, 30_000), None);
}

/// The decay counts from the last acknowledgement, not the first, and
/// from the acknowledgement itself, not from the pass that first sees the
/// chunk acknowledged. Chunk A's two blobs are acknowledged 250 ms apart,
/// with a 200 ms decay: a pass right after the second keeps A. Chunk B's
/// blobs are acknowledged after that pass; 250 ms later one pass frees
/// both (a store that stamped only at the pass would free A alone).
fn the_decay_counts_from_the_last_acknowledgement_via(
    tag: &str,
    ack: impl Fn(&PinnedBlobStore, &[OverflowHandle]),
) {
    let ns = Ns::new(tag);
    // Room for two 100-byte blobs (each 120 bytes with its header) per chunk.
    let store =
        PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK_HEADER_SIZE + 256)
            .unwrap();
    let b = store.shared_backend().unwrap();
    let h: Vec<OverflowHandle> = (0..4u8)
        .map(|i| store.append_shared(&[i; 100]).unwrap())
        .collect();
    assert_eq!(h[0].page_id, h[1].page_id, "chunk A");
    assert_eq!(h[2].page_id, h[3].page_id, "chunk B");
    assert_ne!(h[0].page_id, h[2].page_id);
    store.append_shared(&[9; 200]).unwrap(); // B is sealed too
    ack(&store, &h[0..1]);
    std::thread::sleep(Duration::from_millis(250));
    ack(&store, &h[1..2]);
    assert_eq!(
        b.cleanup_chunks(60_000, 200),
        0,
        "acknowledged just now: the decay runs from the last acknowledgement"
    );
    ack(&store, &h[2..4]);
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(
        b.cleanup_chunks(60_000, 200),
        2,
        "the decay has passed since each chunk's last acknowledgement: one pass frees both"
    );
    assert_eq!(store.resolve(&h[0]), None);
    assert_eq!(store.resolve(&h[3]), None);
}

#[test]
fn the_decay_counts_from_the_last_acknowledgement() {
    the_decay_counts_from_the_last_acknowledgement_via("orig-decay", |s, hs| {
        for h in hs {
            assert!(s.acknowledge_shared(h));
        }
    });
}

#[test]
fn the_decay_counts_from_the_last_acknowledgement_of_a_batch() {
    the_decay_counts_from_the_last_acknowledgement_via("orig-decay-all", |s, hs| {
        assert_eq!(s.writer().unwrap().acknowledge_all(hs), hs.len());
    });
}

#[test]
fn the_store_path_decay_also_counts_from_the_last_acknowledgement() {
    // Fill the warm pool (so reuse waits for the decay), then acknowledge
    // the blobs of one chunk 250 ms apart: with a 200 ms decay, a pass just
    // after the last acknowledgement keeps the chunk, and one pass after
    // the decay reclaims it.
    let ns = Ns::new("orig-sdecay");
    let config = Config {
        decay_timeout_ms: 200,
        ..Config::default()
    };
    let store = PinnedBlobStore::new_shared(config, ns.as_str(), CHUNK_HEADER_SIZE + 256).unwrap();
    let mut handles = Vec::new();
    for i in 0..28u8 {
        handles.push(store.append_shared(&[i; 100]).unwrap());
    }
    // Let the prefetch worker finish: its chunks wait in the pool too.
    std::thread::sleep(Duration::from_millis(100));
    let backend = store.shared_backend().unwrap();
    let mut next = 0;
    while backend.pooled_chunks() < 4 {
        assert_eq!(handles[next].page_id, handles[next + 1].page_id);
        assert!(store.acknowledge_shared(&handles[next]));
        assert!(store.acknowledge_shared(&handles[next + 1]));
        next += 2;
        assert_eq!(
            store.cleanup_shared(),
            1,
            "recycled at once while the pool has room"
        );
    }
    // The pool is full: now the decay governs.
    let (first, second) = (&handles[next], &handles[next + 1]);
    assert_eq!(first.page_id, second.page_id, "one chunk");
    assert!(store.acknowledge_shared(first));
    std::thread::sleep(Duration::from_millis(250));
    assert!(store.acknowledge_shared(second));
    assert_eq!(
        store.cleanup_shared(),
        0,
        "acknowledged just now: the decay runs from the last acknowledgement"
    );
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(
        store.cleanup_shared(),
        1,
        "past the decay since the last acknowledgement: one pass reclaims"
    );
    assert_eq!(store.resolve(first), None);
}

#[test]
fn overflow_handles_have_the_original_byte_api() {
    let h = OverflowHandle::new(42, 1024, 512, 7);
    let bytes = h.as_bytes();
    assert_eq!(bytes.len(), 24);
    assert_eq!(OverflowHandle::from_bytes(bytes), Some(h));
    assert_eq!(OverflowHandle::from_bytes(&bytes[..23]), None);
    assert_eq!(OverflowHandle::from_bytes(&[0u8; 25]), None);
    assert!(!h.is_expired(30_000));
    assert!(h.age_ms() < 1_000);
    std::thread::sleep(Duration::from_millis(2));
    assert!(h.is_expired(0));
    // A handle rebuilt from a real one's fields names the same blob; a
    // made-up one resolves to nothing.
    let ns = Ns::new("orig-forged");
    let b = SharedBackend::create(ns.as_str(), 4096, None).unwrap();
    let real = b.append(b"real").unwrap();
    let rebuilt = OverflowHandle::new(real.page_id, real.offset, real.size, real.generation);
    assert_eq!(b.resolve(&rebuilt, 30_000).as_deref(), Some(&b"real"[..]));
    for forged in [
        OverflowHandle::new(real.page_id, real.offset, real.size + 1, real.generation),
        OverflowHandle::new(real.page_id, real.offset + 8, real.size, real.generation),
        OverflowHandle::new(real.page_id, real.offset, real.size, real.generation + 1),
        OverflowHandle::new(real.page_id + 1, real.offset, real.size, real.generation),
    ] {
        assert_eq!(b.resolve(&forged, 30_000), None, "{forged:?}");
        assert!(!b.acknowledge(&forged));
    }
}

#[test]
fn heap_pages_of_one_kib_and_blob_handle_accessors() {
    let store = PinnedBlobStore::new(Config {
        page_size: 1024,
        ..Config::default()
    })
    .unwrap();
    let mut handles = Vec::new();
    for i in 0..10u8 {
        let h = store.append(&[i; 512]).unwrap();
        assert_eq!(store.get(&h).unwrap(), vec![i; 512]);
        handles.push(h);
    }
    assert!(store.stats().page_count > 1);
    let h = handles[9];
    assert_eq!(h.size(), 512);
    assert_eq!(h.total_size(), 512u64);
    assert_eq!(h.end_page_id(), h.page_id());
    assert_eq!(store.stats().current_page_id, h.page_id());
    assert!(h.offset() > 0 && h.timestamp() > 0 && h.age_ms() < 10_000);
    assert_ne!(handles[0].page_id(), h.page_id());
    assert_eq!(store.backend_mode(), BackendMode::Heap);
}

#[test]
fn with_defaults_returns_a_result() -> Result<()> {
    let store = PinnedBlobStore::with_defaults()?;
    let h = store.append(b"Hello, World!")?;
    assert_eq!(store.get(&h).as_deref(), Some(&b"Hello, World!"[..]));
    assert_eq!(store.stats().page_count, 1);
    Ok(())
}

#[test]
fn the_profiler_reports_the_original_fields() {
    let store = PinnedBlobStore::new(Config {
        page_size: 4096,
        decay_timeout_ms: 0,
        ..Config::default()
    })
    .unwrap();
    // Chunk totals are exact from the start; operations count once enabled.
    store.append(&[1; 100]).unwrap();
    let s = store.profiler().stats();
    assert_eq!((s.total_appends, s.total_pages_allocated), (0, 1));
    store.profiler().enable();
    let mut hs = Vec::new();
    for _ in 0..100 {
        hs.push(store.append(&[2; 1000]).unwrap());
    }
    for h in &hs[..10] {
        store.get(h).unwrap();
    }
    let s = store.profiler().stats();
    assert_eq!(s.total_appends, 100);
    assert_eq!(s.total_bytes_written, 100_000);
    assert_eq!(s.avg_append_size(), 1_000);
    assert_eq!((s.total_reads, s.avg_read_size()), (10, 1_000));
    assert_eq!(s.active_pages, store.stats().page_count);
    assert_eq!(
        s.total_pages_allocated,
        s.active_pages + s.total_pages_freed
    );
    assert_eq!(
        s.total_capacity_allocated,
        s.total_pages_allocated as u64 * 4096
    );
    assert!(s.fragmentation_ratio >= 0.0 && s.fragmentation_ratio <= 1.0);
    for h in &hs {
        store.acknowledge(h);
    }
    store.cleanup_acknowledged();
    assert_eq!(store.profiler().stats().total_cleanups, 1);

    // A standalone profiler counts what it is told.
    let p = Profiler::new();
    p.record_page_allocated(1000);
    p.record_page_allocated(1000);
    p.record_append(300);
    p.record_read(100);
    p.record_page_cleanup(1000, 300);
    p.record_cleanup();
    let s = p.stats();
    assert_eq!(
        (s.total_pages_allocated, s.total_pages_freed, s.active_pages),
        (2, 1, 1)
    );
    assert_eq!((s.active_capacity_bytes, s.active_data_bytes), (1000, 0));
    assert_eq!((s.free_space_bytes, s.fragmentation_ratio), (1000, 1.0));
    assert_eq!(
        (s.total_appends, s.total_reads, s.total_cleanups),
        (1, 1, 1)
    );
}

#[test]
fn the_lifecycle_manager_takes_the_store() {
    let ns = Ns::new("orig-lm");
    let config = Config {
        decay_timeout_ms: 0,
        ..Config::default()
    };
    let store = Arc::new(
        PinnedBlobStore::new_shared(config, ns.as_str(), CHUNK_HEADER_SIZE + 128).unwrap(),
    );
    let h0 = store.append_shared(&[0xAA; 100]).unwrap();
    store.append_shared(&[0xBB; 100]).unwrap();
    store.acknowledge_shared(&h0);
    let manager = LifecycleManager::new(&store);
    assert!(manager.maintenance_cycle() >= 1);
    assert_eq!(store.resolve(&h0), None);

    // In the background, through the extension trait.
    let h2 = store.append_shared(&[0xCC; 100]).unwrap();
    store.append_shared(&[0xDD; 100]).unwrap();
    store.acknowledge_shared(&h2);
    store.start_cleanup(Duration::from_millis(5));
    wait_until("the background pass", || store.resolve(&h2).is_none());

    let weak_manager = LifecycleManager::new(&store);
    LifecycleManager::new(&store).start_background_cleanup(Duration::from_millis(5));
    drop(store);
    assert_eq!(weak_manager.maintenance_cycle(), 0, "the store is gone");
    assert!(files_of(ns.as_str()).is_empty());
}

#[test]
fn debug_chunks_and_backend_mode_in_shared_mode() {
    // `debug_chunks` prints to stderr, which the test harness captures in
    // its own process: a child copy of this test prints, and this one reads
    // what it printed.
    if let Ok(ns) = std::env::var("SFB_DEBUG_CHUNKS_NS") {
        let store = PinnedBlobStore::new_shared(Config::default(), &ns, 4096).unwrap();
        store.append_shared(b"x").unwrap();
        store.debug_chunks();
        store.shared_backend().unwrap().debug_chunks();
        return;
    }
    let ns = Ns::new("orig-dbg");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "debug_chunks_and_backend_mode_in_shared_mode",
            "--nocapture",
        ])
        .env("SFB_DEBUG_CHUNKS_NS", ns.as_str())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let head = format!("  [{}] write_head=0, chunks=1", ns.as_str());
    assert_eq!(err.matches(&head).count(), 2, "{err}");
    // One line per chunk after the summary: chunk 0, in use.
    let chunk_lines = err
        .lines()
        .filter(|l| l.starts_with(&format!("  [{}] ", ns.as_str())) && !l.contains("write_head"))
        .count();
    assert_eq!(chunk_lines, 2, "{err}");

    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 4096).unwrap();
    store.append_shared(b"x").unwrap();
    assert_eq!(
        store.backend_mode(),
        BackendMode::Shared {
            namespace: ns.as_str().to_owned(),
            chunk_size: 4096
        }
    );
    assert_eq!(store.stats().current_page_id, 0);
}

// ---- the differences the README lists, one test each ----

/// The warm pool: a store's own passes recycle acknowledged chunks in place,
/// so their files stay, and `chunk_count` counts the namespace's files as
/// every process sees them.
#[test]
fn difference_the_warm_pool_keeps_recycled_chunk_files() {
    let ns = Ns::new("orig-warm");
    let store =
        PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK_HEADER_SIZE + 128)
            .unwrap();
    let h0 = store.append_shared(&[0xAA; 100]).unwrap();
    store.append_shared(&[0xBB; 100]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let backend = store.shared_backend().unwrap();
    let (before, pooled) = (backend.chunk_count(), backend.pooled_chunks());
    store.acknowledge_shared(&h0);
    assert_eq!(store.cleanup_shared(), 1);
    assert_eq!(store.resolve(&h0), None, "its data is gone");
    assert_eq!(backend.chunk_count(), before, "its file is kept warm");
    assert_eq!(backend.pooled_chunks(), pooled + 1);
    let other = SharedBackend::attach(ns.as_str(), None).unwrap();
    assert_eq!(
        other.chunk_count(),
        before,
        "the same count in every process"
    );
}

/// Background prefetch: crossing the threshold asks a worker thread for the
/// next chunk; the append returns without waiting for it.
#[test]
fn difference_prefetch_runs_in_the_background() {
    let ns = Ns::new("orig-prefetch");
    let b = SharedBackend::create(ns.as_str(), CHUNK_HEADER_SIZE + 200, None).unwrap();
    b.append(&[0xAA; 100]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(b.chunk_count(), 1, "below the threshold: no prefetch");
    b.append(&[0xBB; 60]).unwrap();
    wait_until("the prefetched chunk", || b.chunk_count() == 2);
}

/// Acknowledgement is idempotent, and a stale one counts nothing.
#[test]
fn difference_acknowledging_twice_counts_once() {
    let ns = Ns::new("orig-ack");
    let b = SharedBackend::create(ns.as_str(), CHUNK_HEADER_SIZE + 128, None).unwrap();
    let h0 = b.append(&[0xAA; 50]).unwrap();
    let h1 = b.append(&[0xBB; 50]).unwrap();
    b.append(&[0xCC; 100]).unwrap();
    assert!(b.acknowledge(&h0));
    assert!(!b.acknowledge(&h0));
    assert!(!b.acknowledge(&h0));
    assert_eq!(b.cleanup_chunks(30_000, 0), 0, "h1 is still unread");
    assert_eq!(b.resolve(&h1, 30_000).unwrap(), vec![0xBB; 50]);
}

/// `cleanup_namespace` refuses a namespace whose creator is alive.
#[test]
fn difference_cleanup_namespace_refuses_a_live_namespace() {
    let ns = Ns::new("orig-live");
    let b = SharedBackend::create(ns.as_str(), 4096, None).unwrap();
    let h = b.append(b"kept").unwrap();
    assert!(matches!(
        SharedBackend::cleanup_namespace(ns.as_str()),
        Err(BlobError::InUse { .. })
    ));
    assert_eq!(b.resolve(&h, 30_000).as_deref(), Some(&b"kept"[..]));
    drop(b);
    SharedBackend::cleanup_namespace(ns.as_str()).unwrap();
}
