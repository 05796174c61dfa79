//! The original description's Quick Start, unchanged: creator and attacher
//! parts, `use` lines included (the attacher here runs in the same process;
//! `multiprocess.rs` runs it in another one).

mod common;

/// Removes this run's shm directory.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn process(data: &[u8]) {
    assert_eq!(data, b"hello world");
}

#[test]
fn quick_start_compiles_and_runs_unchanged() -> Result<(), Box<dyn std::error::Error>> {
    // The Quick Start's namespace is the fixed "myapp": in a directory of
    // this run's own on the same tmpfs (the only test of this binary, so the process-wide
    // variable is ours), two overlapping test runs, or a real "myapp" on
    // the host, cannot collide with it.
    let dir = common::shm_dir().join(format!("sfbt-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::env::set_var("SFB_SHM_DIR", &dir);
    let _remove = RemoveDir(dir.clone());
    // "Call this at application startup" (Crash Recovery section).
    {
        use stable_fragmented_buffer::SharedBackend;

        // Unlinks all /dev/shm files for this namespace (safe if they don't exist)
        SharedBackend::cleanup_namespace("myapp").unwrap();
    }

    // ---- Quick Start, creator part, verbatim ----
    use stable_fragmented_buffer::backend::shared::DEFAULT_CHUNK_SIZE;
    use stable_fragmented_buffer::{BlobStoreLifecycleExt, Config, PinnedBlobStore};
    use std::sync::Arc;
    use std::time::Duration;

    // Creator process
    let store = Arc::new(PinnedBlobStore::new_shared(
        Config::default(),
        "myapp",            // namespace -> /dev/shm/myapp_ctrl, /dev/shm/myapp_data_0, ...
        DEFAULT_CHUNK_SIZE, // 32 MB per chunk
    )?);

    // Start background cleanup (recycles acked + TTL-expired chunks)
    store.start_cleanup(Duration::from_millis(100));

    // Write data — returns a 24-byte handle (not a pointer)
    let handle = store.append_shared(b"hello world")?;

    // Read data — returns an owned copy safe from concurrent cleanup
    let data = store.resolve(&handle).unwrap();
    assert_eq!(data, b"hello world");

    // Mark as consumed — enables cleanup
    store.acknowledge_shared(&handle);
    // ---- end of creator part ----

    assert!(dir.join("myapp_ctrl").exists());
    assert!(dir.join("myapp_data_0").exists());
    let creator = Arc::clone(&store);

    {
        // ---- Quick Start, attacher part, verbatim ----
        // Attacher process (any number of processes can attach)
        let store = PinnedBlobStore::attach_shared(Config::default(), "myapp")?;

        // Resolve the same handle (received via ring buffer, pipe, etc.)
        if let Some(data) = store.resolve(&handle) {
            process(&data);
            store.acknowledge_shared(&handle);
        }
        // ---- end of attacher part ----

        assert_eq!(store.resolve(&handle).as_deref(), Some(&b"hello world"[..]));
        assert!(
            !store.acknowledge_shared(&handle),
            "already acknowledged by the creator"
        );
    }

    drop(store);
    drop(creator);
    assert!(
        common::files_of("myapp").is_empty(),
        "the creator removes its files on drop"
    );
    Ok(())
}
