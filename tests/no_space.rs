//! A full shm file system (ENOSPC) is an error at chunk creation, or at the
//! step of a large chunk that no longer finds memory, never a SIGBUS later,
//! and the store keeps serving what it holds. Runs on a 1 MiB
//! tmpfs mounted for the test (as root, or as root of a user namespace of
//! its own when user namespaces are allowed); this binary holds
//! one test because it points `SFB_SHM_DIR` at that mount for the process.

mod common;

use common::{payload, Ns};
use stable_fragmented_buffer::layout::PREPARE_STEP;
use stable_fragmented_buffer::{
    BlobError, ChannelConfig, Config, OverflowHandle, PinnedBlobStore, SendError, TrySendError,
};
use std::os::unix::fs::FileExt;
use std::process::Command;

/// Set in the copy of this test that runs in its own user namespace.
const IN_USERNS: &str = "SFB_NOSPACE_IN_USERNS";

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn full_shm_returns_no_space_and_keeps_serving() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let force_userns = std::env::var_os("SFB_NOSPACE_FORCE_USERNS").is_some();
    if (!root || force_userns) && std::env::var_os(IN_USERNS).is_none() {
        // Not root: run this test again as root of a user namespace of its
        // own (`unshare -Urm`), where it may mount a tmpfs.
        let userns = Command::new("unshare")
            .args(["-Urm", "true"])
            .status()
            .is_ok_and(|s| s.success());
        if userns {
            let status = Command::new("unshare")
                .args(["-Urm"])
                .arg(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "full_shm_returns_no_space_and_keeps_serving",
                    "--nocapture",
                ])
                .env(IN_USERNS, "1")
                .env_remove("SFB_NOSPACE_FORCE_USERNS")
                .status()
                .unwrap();
            assert!(status.success(), "the test failed in its user namespace");
            return;
        }
        // CI sets SFB_REQUIRE_ROOT_TESTS, so there a skip is a failure.
        assert!(
            std::env::var_os("SFB_REQUIRE_ROOT_TESTS").is_none(),
            "this test needs root or user namespaces (it mounts a tmpfs), and SFB_REQUIRE_ROOT_TESTS says it must run"
        );
        eprintln!("SKIPPED: mounting a small tmpfs needs root or user namespaces");
        return;
    }
    let dir = std::env::temp_dir().join(format!("sfbt-nospace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=1777", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "mount of a test tmpfs failed");
    let _mount = Mount(dir.clone());
    std::env::set_var("SFB_SHM_DIR", &dir);

    let ns = Ns::new("nospace");
    let cfg = Config {
        decay_timeout_ms: 0,
        ..Config::default()
    };
    let store = PinnedBlobStore::new_shared(cfg, ns.as_str(), 256 << 10).unwrap();
    let mut held = Vec::new();
    let err = fill(&store, &mut held, || {});
    match &err {
        BlobError::NoSpace { file } => assert!(file.starts_with(&dir), "{}", file.display()),
        other => panic!("expected NoSpace, got {other}"),
    }
    assert!(err.to_string().contains("no space"), "{err}");
    assert!(held.len() > 50, "{}", held.len());
    // Everything already stored is still served, from this and other processes' views.
    let reader = PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap();
    for (h, data) in &held {
        assert_eq!(reader.resolve(h).as_ref(), Some(data));
    }
    // Consumers catch up, space comes back, appends flow again.
    for (h, _) in &held {
        assert!(reader.acknowledge_shared(h));
    }
    assert!(store.cleanup_shared() >= 1);
    let h = store.append_shared(&payload(1, 10_000)).unwrap();
    assert_eq!(store.resolve(&h), Some(payload(1, 10_000)));
    drop(reader);
    drop(store);
    drop(ns);

    // A chunk larger than the file system, backed in steps: the appends
    // that fit run, the step that finds no memory is an error (not a
    // SIGBUS on the write past it), and the store keeps serving.
    let ns = Ns::new("nospace-steps");
    let chunk = 4 << 20;
    assert!(chunk > 4 * PREPARE_STEP);
    let store = PinnedBlobStore::new_shared(cfg, ns.as_str(), chunk).unwrap();
    let mut held = Vec::new();
    let err = fill(&store, &mut held, || {});
    assert!(matches!(err, BlobError::NoSpace { .. }), "{err}");
    assert!(
        held.len() * 10_000 > PREPARE_STEP,
        "appends went past the first step: {}",
        held.len()
    );
    assert_eq!(
        held.iter()
            .map(|(h, _)| h.page_id)
            .collect::<std::collections::HashSet<_>>()
            .len(),
        1,
        "all in the one large chunk"
    );
    for (h, data) in &held {
        assert_eq!(store.resolve(h).as_ref(), Some(data));
    }
    for (h, _) in &held {
        assert!(store.acknowledge_shared(h));
    }
    assert!(store.cleanup_shared() >= 1);
    let h = store.append_shared(&payload(2, 10_000)).unwrap();
    assert_eq!(store.resolve(&h), Some(payload(2, 10_000)));
    drop(store);
    drop(ns);

    // Another process's stray write sets a large chunk's shared `ready` to
    // "all backed" (0): this process still writes only where it backed the
    // memory itself, so the full file system is NoSpace again, not SIGBUS.
    let ns = Ns::new("nospace-scribbled");
    let store = PinnedBlobStore::new_shared(cfg, ns.as_str(), chunk).unwrap();
    let first = store.append_shared(&payload(0, 10_000)).unwrap();
    let path = dir.join(format!("{}_data_{}", ns.as_str(), first.page_id));
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let scribble = || file.write_all_at(&0u32.to_le_bytes(), 32).unwrap();
    scribble();
    let mut held = vec![(first, payload(0, 10_000))];
    let err = fill(&store, &mut held, scribble);
    assert!(matches!(err, BlobError::NoSpace { .. }), "{err}");
    for (h, data) in &held {
        assert_eq!(store.resolve(h).as_ref(), Some(data));
    }
    drop(file);
    drop(store);
    drop(ns);

    // A rollover whose pass the reclamation gate skipped (nothing was
    // acknowledged since the last pass, which ran while the now sealed
    // target was still the target) and whose creation finds no space
    // runs that pass after all: the fully acknowledged chunk is recycled,
    // not `NoSpace` answered.
    let ns = Ns::new("nospace-gate");
    let store = PinnedBlobStore::new_shared(cfg, ns.as_str(), 256 << 10).unwrap();
    let handles: Vec<_> = (0..12)
        .map(|i| store.append_shared(&payload(i, 10_000)).unwrap())
        .collect();
    assert!(handles.iter().all(|h| h.page_id == handles[0].page_id));
    for h in &handles {
        assert!(store.acknowledge_shared(h));
    }
    std::thread::sleep(std::time::Duration::from_millis(30));
    store.cleanup_shared();
    let filler = Filler::fill(&dir);
    let big = store.append_shared(&payload(99, 150_000));
    assert!(big.is_ok(), "NoSpace with a reclaimable chunk: {big:?}");
    drop(filler);
    drop(store);
    drop(ns);

    // Channels on a full file system: a small message takes a free slot
    // that is already backed (the slot it would prefer is not), and a
    // message that needs new memory is `NoSpace`, also when another process
    // scribbled "all backed" over the shared `backed` words (each endpoint
    // backs what it writes into itself: never a SIGBUS).
    let ns = Ns::new("nospace-chan");
    let store = PinnedBlobStore::new_shared(cfg, ns.as_str(), 256 << 10).unwrap();
    let ring = ChannelConfig::for_messages(64 << 10, 16);
    let rx = store.receiver_with("q", ring).unwrap();
    let tx = store.sender_with("q", ring).unwrap();
    for i in 0..4u8 {
        tx.send(&[i; 100]).unwrap();
        assert_eq!(&*rx.recv().unwrap(), &[i; 100][..]);
    }
    let path = dir.join(format!("{}_chan+q", ns.as_str()));
    let chan = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let filler = Filler::fill(&dir);
    for i in 0..40u8 {
        tx.try_send(&[i; 100])
            .expect("a small message on a full file system, backed slots free");
        assert_eq!(&*rx.recv().unwrap(), &[i; 100][..]);
    }
    // Every slot header's `backed` word (offset 20) scribbled to "all".
    let headers = (5120 + 16 * 16usize).next_multiple_of(64);
    for b in 0..(16 + 32 * 17 + 64) {
        chan.write_all_at(&u32::MAX.to_le_bytes(), (headers + 64 * b + 20) as u64)
            .unwrap();
    }
    match tx.try_send(&vec![7u8; 60 << 10]) {
        Err(TrySendError::Send(SendError::Store(BlobError::NoSpace { .. }))) => {}
        other => panic!("expected NoSpace, got {other:?}"),
    }
    drop(filler);
    tx.send(&vec![7u8; 60 << 10]).unwrap();
    assert_eq!(rx.recv().unwrap().len(), 60 << 10);
    drop((chan, rx, tx, store));
    drop(ns);
}

/// A file that fills the file system at `dir` until dropped.
struct Filler(std::path::PathBuf);

impl Filler {
    fn fill(dir: &std::path::Path) -> Self {
        use std::io::Write;
        let path = dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        while f.write_all(&[1u8; 4096]).is_ok() {}
        Self(path)
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Appends 10 000-byte payloads until an append fails (calling `before`
/// ahead of each); keeps what was stored in `held`; returns the error.
fn fill(
    store: &PinnedBlobStore,
    held: &mut Vec<(OverflowHandle, Vec<u8>)>,
    before: impl Fn(),
) -> BlobError {
    loop {
        before();
        let data = payload(held.len() as u64, 10_000);
        match store.append_shared(&data) {
            Ok(h) => held.push((h, data)),
            Err(e) => return e,
        }
    }
}
