//! Points 4-7 of the store's contract: typed errors, namespace rules, file
//! creation and checks, and the documented byte layout.

mod common;

use common::{payload, Ns};
use stable_fragmented_buffer::layout::*;
use stable_fragmented_buffer::{BlobError, Config, OverflowHandle, PinnedBlobStore, SharedBackend};
use std::os::unix::fs::PermissionsExt;

const CHUNK: usize = 64 << 10;

#[test]
fn errors_are_typed_and_distinct() {
    let ns = Ns::new("errors");
    let missing = Ns::new("errors-missing");
    let cfg = Config::default();

    let e = PinnedBlobStore::new_shared(cfg, "bad/name", CHUNK).unwrap_err();
    assert!(matches!(e, BlobError::InvalidNamespace { .. }), "{e}");

    let e = PinnedBlobStore::new_shared(cfg, ns.as_str(), 100).unwrap_err();
    assert!(matches!(e, BlobError::InvalidConfig { .. }), "{e}");
    let e = PinnedBlobStore::new_shared_with_limit(cfg, ns.as_str(), CHUNK, Some(0)).unwrap_err();
    assert!(matches!(e, BlobError::InvalidConfig { .. }), "{e}");

    let e = PinnedBlobStore::attach_shared(cfg, missing.as_str()).unwrap_err();
    assert!(matches!(e, BlobError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("new_shared"), "says what to do: {e}");

    let store = PinnedBlobStore::new_shared_with_limit(cfg, ns.as_str(), 8192, Some(1)).unwrap();
    let e = PinnedBlobStore::new_shared(cfg, ns.as_str(), CHUNK).unwrap_err();
    assert!(matches!(e, BlobError::AlreadyExists { .. }), "{e}");
    let e = SharedBackend::cleanup_namespace(ns.as_str()).unwrap_err();
    assert!(matches!(e, BlobError::InUse { .. }), "{e}");

    let e = loop {
        if let Err(e) = store.append_shared(&[1u8; 3000]) {
            break e;
        }
    };
    assert!(matches!(e, BlobError::StoreFull { .. }), "{e}");

    assert!(matches!(
        store.append_shared(&[]),
        Err(BlobError::EmptyBlob)
    ));

    // A slice past the u32 limit: calloc'd and never touched, so it costs
    // address space only.
    let huge = vec![0u8; (u32::MAX as usize) + 1];
    let e = store.append_shared(&huge).unwrap_err();
    assert!(matches!(e, BlobError::BlobTooLarge { .. }), "{e}");
    drop(huge);
    drop(store);

    // An OS failure carries the operation, the file and the errno.
    let dir = common::shm_dir().join(format!("{}_ctrl", missing.as_str()));
    std::fs::create_dir(&dir).unwrap();
    let e = PinnedBlobStore::attach_shared(cfg, missing.as_str()).unwrap_err();
    std::fs::remove_dir(&dir).unwrap();
    match &e {
        BlobError::Os { op, file, source } => {
            assert_eq!(*op, "open");
            assert_eq!(file, &dir);
            assert_eq!(source.raw_os_error(), Some(libc::EISDIR));
        }
        other => panic!("expected Os, got {other}"),
    }
    assert_eq!(e.raw_os_error(), Some(libc::EISDIR));
    assert!(e.to_string().contains("open failed on"), "{e}");

    // Corrupt and IncompatibleFormat are covered byte by byte in
    // invariants.rs; Closed in invariant_9; NoSpace in no_space.rs.
}

#[test]
fn invalid_namespaces_are_refused_by_every_call_with_a_typed_error() {
    for bad in [
        "",
        ".",
        "..",
        "../../etc/passwd",
        "a/b",
        "a b",
        "-x",
        ".x",
        "ü",
        &"x".repeat(65),
    ] {
        for result in [
            PinnedBlobStore::new_shared(Config::default(), bad, CHUNK).map(|_| ()),
            PinnedBlobStore::attach_shared(Config::default(), bad).map(|_| ()),
            SharedBackend::cleanup_namespace(bad).map(|_| ()),
            SharedBackend::cleanup_namespace_forced(bad).map(|_| ()),
            SharedBackend::creator_status(bad).map(|_| ()),
        ] {
            assert!(
                matches!(result, Err(BlobError::InvalidNamespace { .. })),
                "{bad:?}: {result:?}"
            );
        }
    }
    // 64 bytes of the documented set is fine.
    let ns = Ns::new(&"A-b.c_".repeat(8)[..40]);
    assert!(ns.as_str().len() <= 64);
    PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK).unwrap();
}

#[test]
fn files_are_created_0600_exclusively_and_never_through_a_link() {
    let ns = Ns::new("files");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK).unwrap();
    store.append_shared(&payload(1, 200_000)).unwrap(); // a dedicated chunk too
    let files = ns.files();
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        let meta = std::fs::metadata(common::shm_dir().join(f)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f}");
    }
    // Symlinks planted where the next chunk files go are not followed
    // (the background prefetch may try an id first, so plant several).
    let target = common::shm_dir().join(format!("{}_target", ns.as_str()));
    let planted: Vec<_> = (2..12)
        .map(|id| common::shm_dir().join(format!("{}_data_{id}", ns.as_str())))
        .collect();
    for p in &planted {
        std::os::unix::fs::symlink(&target, p).unwrap();
    }
    // A creation that meets a link fails with an OS error (or, in the
    // prefetch worker, quietly), and the name is skipped: its registry
    // slot moves on to its next id.
    let mut errors = Vec::new();
    for _ in 0..1000 {
        if let Err(e) = store.append_shared(&[0u8; 4000]) {
            errors.push(e);
        }
    }
    for p in &planted {
        assert!(
            std::fs::symlink_metadata(p)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{p:?} left alone"
        );
        std::fs::remove_file(p).unwrap();
    }
    assert!(
        errors.iter().all(|e| matches!(e, BlobError::Os { .. })),
        "{errors:?}"
    );
    assert!(!target.exists(), "nothing was created through the link");
    // The failure lost nothing and the store recovers.
    let h = store.append_shared(b"after").unwrap();
    assert_eq!(store.resolve(&h).as_deref(), Some(&b"after"[..]));
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

#[test]
fn layout_matches_the_documented_offsets() {
    let ns = Ns::new("layout");
    let cfg = Config {
        decay_timeout_ms: 1234,
        default_ttl_ms: 56789,
        ..Config::default()
    };
    let store = PinnedBlobStore::new_shared_with_limit(cfg, ns.as_str(), CHUNK, Some(7)).unwrap();
    let h = store.append_shared(b"layout!").unwrap();
    let dir = common::shm_dir();

    let ctrl = std::fs::read(dir.join(format!("{}_ctrl", ns.as_str()))).unwrap();
    assert_eq!(ctrl.len(), CTRL_SIZE);
    assert_eq!(&ctrl[0..8], b"SFB_CTL2");
    assert_eq!(u32_at(&ctrl, 8), 5, "format version 5");
    assert_eq!(u32_at(&ctrl, 12), CTRL_SIZE as u32);
    assert_eq!(u32_at(&ctrl, 16), CHUNK as u32);
    assert_eq!(u32_at(&ctrl, 20), 7);
    assert_eq!(u32_at(&ctrl, 24), std::process::id());
    assert_eq!(u64_at(&ctrl, 48), 1234);
    assert_eq!(u64_at(&ctrl, 56), 56789);
    let active = u64_at(&ctrl, 64);
    assert_eq!(active as u32, h.page_id);
    assert_eq!((active >> 32) as u32, h.generation);
    assert_eq!(u64_at(&ctrl, 72), 0, "reserved");
    assert_eq!(u32_at(&ctrl, 84), 0, "not closed");
    assert_eq!(h.page_id, 0, "the first chunk is slot 0 at epoch 0");
    assert_eq!(u64_at(&ctrl, CTRL_HEADER_SIZE), 2, "registry slot 0: READY");
    assert_eq!(
        u64_at(&ctrl, CTRL_HEADER_SIZE + 8),
        0,
        "registry slot 1: FREE"
    );

    let read_chunk =
        || std::fs::read(dir.join(format!("{}_data_{}", ns.as_str(), h.page_id))).unwrap();
    let chunk = read_chunk();
    assert_eq!(&chunk[0..8], b"SFB_CHK2");
    assert_eq!(u32_at(&chunk, 8), h.page_id);
    assert_eq!(u32_at(&chunk, 12), CHUNK as u32);
    let alloc = u64_at(&chunk, 16);
    assert_eq!(
        alloc as u32,
        (CHUNK_HEADER_SIZE + 16 + 8) as u32,
        "next free offset"
    );
    assert_eq!((alloc >> 32) & 0x7FFF_FFFF, 0, "bits 32-62 are 0");
    assert_eq!(alloc >> 63, 0, "not sealed");
    let sg = u64_at(&chunk, 24);
    assert_eq!(sg as u32, STATE_IN_USE);
    assert_eq!((sg >> 32) as u32, h.generation);
    assert_eq!(
        u32_at(&chunk, 32),
        0,
        "ready: all of it (a chunk no larger than one step is backed at once)"
    );
    assert_eq!(u64_at(&chunk, 88), 0, "walked: nothing walked yet");
    assert_eq!(u32_at(&chunk, 36), 0, "reserved");
    assert_eq!(u32_at(&chunk, 64), 0, "pins");
    let e = h.offset as usize;
    assert_eq!(e, CHUNK_HEADER_SIZE);
    assert_eq!(u32_at(&chunk, e), 7, "entry len");
    assert_eq!(
        u32_at(&chunk, e + 4),
        (h.generation << 2) | ENTRY_COMMITTED,
        "state: generation and kind"
    );
    assert_ne!(u64_at(&chunk, e + 8), 0, "tag");
    assert_eq!(&chunk[e + 16..e + 23], b"layout!");

    assert!(store.acknowledge_shared(&h));
    let chunk = read_chunk();
    assert_eq!(u32_at(&chunk, e + 4), (h.generation << 2) | ENTRY_ACKED);
    assert_eq!(
        u32_at(&chunk, 36),
        0,
        "reserved: no shared counter of acknowledgements"
    );
}

/// Hands a file to another user (root only: CI runs as root).
fn chown_to_stranger(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; chown has no other precondition.
    let rc = unsafe { libc::chown(c.as_ptr(), 4242, 4242) };
    assert_eq!(rc, 0, "chown: {}", std::io::Error::last_os_error());
}

#[test]
fn files_of_another_user_under_our_names_are_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: handing a file to another user needs root (CI runs as root)");
        return;
    }
    let ns = Ns::new("foreign");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK).unwrap();
    let dir = common::shm_dir();
    // A channel file.
    drop(store.publisher("c").unwrap());
    let chan = dir.join(format!("{}_chan+c", ns.as_str()));
    chown_to_stranger(&chan);
    let e = store.subscriber("c").unwrap_err();
    assert!(
        matches!(e, BlobError::ForeignOwner { uid: 4242, .. }),
        "{e}"
    );
    // A chunk file squatted under the next chunk id: creation refuses it.
    let next = stable_fragmented_buffer::inspect::inspect_namespace(ns.as_str())
        .unwrap()
        .control
        .unwrap()
        .next_chunk_id;
    let squat = dir.join(format!("{}_data_{next}", ns.as_str()));
    std::fs::write(&squat, b"not yours").unwrap();
    chown_to_stranger(&squat);
    let e = store.append_shared(&payload(1, 2 * CHUNK)).unwrap_err();
    assert!(
        matches!(e, BlobError::ForeignOwner { uid: 4242, .. }),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&squat).unwrap(),
        b"not yours",
        "left untouched"
    );
    std::fs::remove_file(&squat).unwrap();
    // The control block: attaching refuses it.
    let ctrl = dir.join(format!("{}_ctrl", ns.as_str()));
    chown_to_stranger(&ctrl);
    let e = PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap_err();
    assert!(
        matches!(e, BlobError::ForeignOwner { uid: 4242, .. }),
        "{e}"
    );
    let c = std::ffi::CString::new(ctrl.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: as above; back to root so the creator's drop removes it.
    assert_eq!(unsafe { libc::chown(c.as_ptr(), 0, 0) }, 0);
}

/// Each reason a resolve can fail, named by the checked variant; the plain
/// `resolve` says `None` for all of them.
#[test]
fn resolve_checked_says_why_a_handle_does_not_resolve() {
    let ns = Ns::new("why");
    let cfg = Config {
        decay_timeout_ms: 0,
        default_ttl_ms: 300,
        ..Config::default()
    };
    let store = PinnedBlobStore::new_shared(cfg, ns.as_str(), CHUNK).unwrap();
    let fill = |store: &PinnedBlobStore| {
        // Enough to seal the chunk the handles are in, acknowledged.
        for _ in 0..(CHUNK / 4096 + 2) {
            let h = store.append_shared(&[7u8; 4000]).unwrap();
            store.acknowledge_shared(&h);
        }
    };

    // Resolves: the same bytes as `resolve`.
    let live = store.append_shared(b"alive").unwrap();
    assert_eq!(store.resolve_checked(&live).unwrap(), b"alive");
    assert_eq!(&store.resolve_ref_checked(&live).unwrap()[..], b"alive");

    // Forged in the handle's own chunk and generation: invalid, and why.
    for (forged, why) in [
        (
            OverflowHandle { size: 6, ..live },
            "does not match the entry",
        ),
        (
            OverflowHandle {
                offset: live.offset + 8,
                ..live
            },
            "no entry was written",
        ),
        (
            OverflowHandle {
                offset: (CHUNK - 16) as u32,
                ..live
            },
            "past the end",
        ),
        (OverflowHandle { offset: 3, ..live }, "not an entry offset"),
    ] {
        assert_eq!(store.resolve(&forged), None);
        match store.resolve_checked(&forged) {
            Err(BlobError::InvalidHandle { reason }) => {
                assert!(reason.contains(why), "{forged:?}: {reason}")
            }
            other => panic!("{forged:?}: {other:?}"),
        }
    }

    // Acknowledged and reclaimed: gone, and not for the TTL.
    assert!(store.acknowledge_shared(&live));
    fill(&store);
    store.cleanup_shared();
    let mut acked = store.append_shared(b"acked").unwrap();
    assert!(store.acknowledge_shared(&acked));
    fill(&store);
    for _ in 0..3 {
        store.cleanup_shared();
    }
    assert_eq!(store.resolve(&acked), None);
    match store.resolve_checked(&acked) {
        Err(BlobError::Reclaimed {
            chunk,
            older_than_ttl: false,
            ..
        }) => assert_eq!(chunk, acked.page_id),
        other => panic!("{other:?}"),
    }

    // Never acknowledged, reclaimed by the TTL: gone, older than the TTL.
    let expired = store.append_shared(b"unread").unwrap();
    fill(&store);
    std::thread::sleep(std::time::Duration::from_millis(400));
    store.cleanup_shared();
    store.cleanup_shared();
    assert_eq!(store.resolve(&expired), None);
    assert!(
        matches!(
            store.resolve_ref_checked(&expired),
            Err(BlobError::Reclaimed {
                older_than_ttl: true,
                ..
            })
        ),
        "{:?}",
        store.resolve_checked(&expired)
    );

    // A chunk id that is not live: gone (a made-up id reads the same).
    acked.page_id = 4000;
    assert!(matches!(
        store.resolve_checked(&acked),
        Err(BlobError::Reclaimed { .. })
    ));

    // The creator dropped the namespace under an attached process.
    let attached = PinnedBlobStore::attach_shared(cfg, ns.as_str()).unwrap();
    // (An oversized blob: a chunk file the attached process never mapped.)
    let h = store.append_shared(&payload(3, 2 * CHUNK)).unwrap();
    drop(store);
    assert_eq!(attached.resolve(&h), None);
    assert!(
        matches!(attached.resolve_checked(&h), Err(BlobError::Closed { .. })),
        "{:?}",
        attached.resolve_checked(&h)
    );

    // Heap mode has no such call.
    let heap = PinnedBlobStore::new(Config::default()).unwrap();
    assert!(matches!(
        heap.resolve_checked(&h),
        Err(BlobError::WrongMode { .. })
    ));
}

/// Attaching to a namespace that is being removed (its `closed` flag set,
/// the files not yet gone) is refused with `Closed`.
#[test]
fn attaching_to_a_closed_namespace_is_refused() {
    let ns = Ns::new("closed");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK).unwrap();
    let ctrl = common::shm_dir().join(format!("{}_ctrl", ns.as_str()));
    let f = std::fs::OpenOptions::new().write(true).open(&ctrl).unwrap();
    let closed = std::mem::offset_of!(CtrlHeader, closed) as u64;
    std::os::unix::fs::FileExt::write_all_at(&f, &1u32.to_le_bytes(), closed).unwrap();
    let e = PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap_err();
    assert!(matches!(e, BlobError::Closed { .. }), "{e}");
    // The creator's own appends stop too once they need a new chunk.
    let e = store.append_shared(&payload(1, 2 * CHUNK)).unwrap_err();
    assert!(matches!(e, BlobError::Closed { .. }), "{e}");
}

/// A chunk larger than one step is backed by memory in steps (`ready`, at
/// offset 32, says how far; 0 once all of it): the worker backs the append
/// target a window ahead of its appenders — not all of it, a chunk may be
/// gigabytes — and appends fill the whole chunk, the worker keeping ahead.
#[test]
fn a_large_chunk_is_backed_in_steps_ahead_of_its_appenders() {
    use std::os::unix::fs::MetadataExt;
    let ns = Ns::new("steps");
    let chunk = 32 << 20;
    let window = 16 * PREPARE_STEP;
    assert!(chunk > 2 * window);
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), chunk).unwrap();
    let first = store.append_shared(&payload(0, 100)).unwrap();
    let path = common::shm_dir().join(format!("{}_data_{}", ns.as_str(), first.page_id));
    let ready = || u32_at(&std::fs::read(&path).unwrap()[..64], 32) as usize;
    let allocated = || std::fs::metadata(&path).unwrap().blocks() as usize * 512;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while ready() < window {
        assert!(
            std::time::Instant::now() < until,
            "the worker did not back the target ahead: ready {}",
            ready()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // It stops at the window: the rest is not backed yet.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        ready() != 0 && ready() <= window + 2 * PREPARE_STEP,
        "ready {}",
        ready()
    );
    assert!(allocated() < chunk / 2, "{} bytes allocated", allocated());
    // Backing the target ahead makes no chunk: the next one is made at the
    // prefetch threshold, not at the first append.
    let data_files = ns.files().iter().filter(|f| f.contains("_data_")).count();
    assert_eq!(data_files, 1, "{:?}", ns.files());
    // Operators see it (`sfb stat`: backed=SIZE).
    let backed = |id: u32| {
        let r = stable_fragmented_buffer::inspect::inspect_namespace(ns.as_str()).unwrap();
        r.chunks
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| c.header.as_ref())
            .map(|h| h.backed)
            .unwrap()
    };
    assert_eq!(backed(first.page_id), Some(ready() as u64));
    let mut handles = vec![(first, payload(0, 100))];
    loop {
        let data = payload(handles.len() as u64, 60_000);
        let h = store.append_shared(&data).unwrap();
        if h.page_id != first.page_id {
            break;
        }
        handles.push((h, data));
    }
    assert!(
        handles.len() * 60_000 > chunk - 2 * 60_000,
        "{}",
        handles.len()
    );
    assert_eq!(ready(), 0, "all of it backed once filled");
    assert_eq!(allocated(), chunk);
    assert_eq!(backed(first.page_id), None);
    for (h, data) in &handles {
        assert_eq!(store.resolve(h).as_ref(), Some(data));
    }
    drop(store);
}
