//! The original crate's API, written the original way (its module paths,
//! its signatures): heap mode with the profiler, then a shared namespace
//! with small chunks, handles sent as bytes, explicit cleanup, and a
//! lifecycle manager.
//!
//! ```sh
//! cargo run --example original_api
//! ```

use stable_fragmented_buffer::backend::shared::{SharedBackend, CHUNK_HEADER_SIZE};
use stable_fragmented_buffer::lifecycle::{BlobStoreLifecycleExt, LifecycleManager};
use stable_fragmented_buffer::page::PinnedBlobStore;
use stable_fragmented_buffer::types::{Config, OverflowHandle, Result};
use std::sync::Arc;
use std::time::Duration;

fn main() -> Result<()> {
    heap_mode()?;
    shared_mode()?;
    Ok(())
}

fn heap_mode() -> Result<()> {
    let store = Arc::new(PinnedBlobStore::new(Config {
        page_size: 1024,
        decay_timeout_ms: 0,
        ..Config::memory_efficient()
    })?);
    store.profiler().enable();
    let handles = (0..10u8)
        .map(|i| store.append(&[i; 512]))
        .collect::<Result<Vec<_>>>()?;
    for h in &handles {
        assert_eq!(store.get(h).map(|b| b.len()), Some(512));
        store.acknowledge(h);
    }
    let freed = LifecycleManager::new(&store).maintenance_cycle();
    let stats = store.stats();
    let profile = store.profiler().stats();
    println!(
        "heap: {} appends of {} B on 1 KiB pages; {} pages now (current {}), {freed} reclaimed, {} allocated in all",
        profile.total_appends,
        profile.avg_append_size(),
        stats.page_count,
        stats.current_page_id,
        profile.total_pages_allocated,
    );
    Ok(())
}

fn shared_mode() -> Result<()> {
    let ns = format!("sfb-example-original-{}", std::process::id());
    // Crash recovery at startup: removes a dead creator's files, if any.
    SharedBackend::cleanup_namespace(&ns)?;

    // 128 data bytes per chunk: each 100-byte blob fills one.
    let backend = SharedBackend::create(&ns, CHUNK_HEADER_SIZE + 128, Some(16))?;
    let handles = [
        backend.append(&[0xAA; 100])?,
        backend.append(&[0xBB; 100])?,
        backend.append(&[0xCC; 100])?,
    ];
    // A handle travels as 24 bytes (a pipe, a socket, a ring-buffer slot).
    let wire: Vec<u8> = handles[0].as_bytes().to_vec();
    let received = OverflowHandle::from_bytes(&wire).expect("24 bytes");
    let reader = SharedBackend::attach(&ns, None)?;
    assert_eq!(reader.resolve(&received, 30_000), Some(vec![0xAA; 100]));
    for h in &handles {
        reader.acknowledge(h);
    }
    let before = backend.chunk_count();
    let freed = backend.cleanup_chunks(30_000, 0);
    println!(
        "shared: chunks {:?}, data capacity {} B; cleanup_chunks freed {freed} of {before} (the append target stays)",
        handles.map(|h| h.page_id),
        backend.data_capacity(),
    );
    drop(reader);
    drop(backend); // the creator removes the namespace

    // The store facade, with a background lifecycle thread.
    let store = Arc::new(PinnedBlobStore::new_shared(
        Config {
            decay_timeout_ms: 0,
            ..Config::default()
        },
        &ns,
        CHUNK_HEADER_SIZE + 128,
    )?);
    store.start_cleanup(Duration::from_millis(10));
    let h = store.append_shared(&[0xDD; 100])?;
    store.append_shared(&[0xEE; 100])?;
    store.acknowledge_shared(&h);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store.resolve(&h).is_some() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "store: the lifecycle thread reclaimed the acknowledged chunk: {}",
        store.resolve(&h).is_none()
    );
    Ok(())
}
