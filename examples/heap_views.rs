//! Heap mode: blobs in this process's memory. A writer thread appends while
//! a reader thread takes zero-copy views and acknowledges them; the
//! lifecycle thread recycles pages whose blobs are all acknowledged. A view
//! keeps its bytes stable for as long as it lives, even across reclamation.
//!
//! ```sh
//! cargo run --release --example heap_views
//! ```

use stable_fragmented_buffer::{BlobStoreLifecycleExt, Config, PinnedBlobStore};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(PinnedBlobStore::new(Config {
        page_size: 64 << 10,
        decay_timeout_ms: 0,
        ..Config::default()
    })?);
    let cleaner = store.start_cleanup_thread(Duration::from_millis(1));
    let (tx, rx) = mpsc::sync_channel(64);

    let writer = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || -> Result<(), String> {
            for i in 0u32..50_000 {
                let data = [i.to_le_bytes(); 64].concat(); // 256 bytes
                let h = store.append(&data).map_err(|e| e.to_string())?;
                tx.send((i, h)).map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    };

    // Keep one view alive across the whole run: its bytes never change,
    // though everything around it is reclaimed and reused.
    let (first, h0) = rx.recv()?;
    let kept = store.get_ref(&h0).ok_or("the first blob is gone")?;
    store.acknowledge(&h0);
    let mut seen = 1;
    for (i, h) in rx {
        let view = store.get_ref(&h).ok_or("an unacknowledged blob is gone")?;
        if view[..4] != i.to_le_bytes() {
            return Err(format!("blob {i} differs").into());
        }
        drop(view);
        store.acknowledge(&h);
        seen += 1;
    }
    writer.join().map_err(|_| "writer panicked")??;
    if kept[..4] != first.to_le_bytes() {
        return Err("a held view changed".into());
    }
    drop(kept);
    cleaner.stop();
    let stats = store.stats();
    println!(
        "heap: {seen} blobs viewed zero-copy and acknowledged; {} pages now, {} recycled in place, {} released",
        stats.page_count, stats.recycled, stats.retired
    );
    Ok(())
}
