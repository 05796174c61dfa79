//! The invariants of the design (docs/design.md), one or more tests each.
//! Crash-related ones that need real separate processes are in
//! `multiprocess.rs`.

mod common;

use common::{cfg, payload, Ns};
use stable_fragmented_buffer::layout::CHUNK_HEADER_SIZE;
use stable_fragmented_buffer::{BlobError, Config, OverflowHandle, PinnedBlobStore, SharedBackend};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CHUNK: usize = 64 << 10;

#[test]
fn invariant_1_stale_handle_after_recycling_resolves_to_nothing_not_new_bytes() {
    let ns = Ns::new("inv1-stale");
    let store = PinnedBlobStore::new_shared(cfg(0, 60_000), ns.as_str(), 8192).unwrap();
    let old: Vec<_> = (0..4)
        .map(|i| store.append_shared(&payload(i, 1500)).unwrap())
        .collect();
    let chunk = old[0].page_id;
    // Seal the chunk by moving to the next one, acknowledge, reclaim.
    let mut all = old.clone();
    while all.last().unwrap().page_id == chunk {
        all.push(store.append_shared(&payload(99, 1500)).unwrap());
    }
    for o in all.iter().filter(|o| o.page_id == chunk) {
        assert!(store.acknowledge_shared(o));
    }
    assert_eq!(store.cleanup_shared(), 1);
    // The recycled chunk is reused in place for new data at the same offsets.
    let mut reused = None;
    for i in 100..200 {
        let n = store.append_shared(&payload(i, 1500)).unwrap();
        if n.page_id == chunk && n.offset == old[0].offset {
            reused = Some((n, payload(i, 1500)));
            break;
        }
    }
    let (new, data) = reused.expect("the warm chunk was reused in place");
    assert_ne!(new.generation, old[0].generation);
    assert_eq!(
        store.resolve(&old[0]),
        None,
        "old handle must not see the new bytes"
    );
    assert_eq!(store.resolve(&new), Some(data));
    // The other old handles name offsets the new life has not written yet
    // (or has written differently): none resolves, none acknowledges, and
    // none disturbs the new life.
    for (i, o) in old.iter().enumerate() {
        assert_eq!(store.resolve(o), None, "old handle {i}");
        assert!(store.resolve_checked(o).is_err(), "old handle {i} checked");
        assert!(!store.acknowledge_shared(o), "old handle {i} acknowledged");
    }
    assert_eq!(store.resolve(&new).map(|b| b.len()), Some(1500));
    assert!(store.acknowledge_shared(&new), "the new entry's own ack");
}

#[test]
fn invariant_1_forged_handles_resolve_to_nothing_and_ack_false() {
    let ns = Ns::new("inv1-forged");
    let store = PinnedBlobStore::new_shared(cfg(0, 60_000), ns.as_str(), CHUNK).unwrap();
    let good = store.append_shared(&payload(1, 300)).unwrap();
    let _more = store.append_shared(&payload(2, 300)).unwrap();
    let variants = [
        OverflowHandle {
            page_id: good.page_id + 1,
            ..good
        },
        OverflowHandle {
            page_id: u32::MAX,
            ..good
        },
        OverflowHandle {
            offset: good.offset + 8,
            ..good
        },
        OverflowHandle {
            offset: good.offset + 1,
            ..good
        },
        OverflowHandle { offset: 0, ..good },
        OverflowHandle {
            offset: u32::MAX - 7,
            ..good
        },
        OverflowHandle {
            size: good.size - 1,
            ..good
        },
        OverflowHandle {
            size: good.size + 1,
            ..good
        },
        OverflowHandle {
            size: u32::MAX,
            ..good
        },
        OverflowHandle {
            generation: good.generation + 1,
            ..good
        },
    ];
    for v in variants {
        assert_eq!(store.resolve(&v), None, "{v:?}");
        assert!(!store.acknowledge_shared(&v), "{v:?}");
    }
    // The timestamp is informational (format 3 keys the tag on what the
    // reclaimers' walk knows): a handle differing only there names the
    // same entry and resolves to exactly its bytes, never to others.
    let retimed = OverflowHandle {
        timestamp: good.timestamp + 1,
        ..good
    };
    assert_eq!(store.resolve(&retimed), store.resolve(&good));
    // Random bytes.
    let mut x = 0x1234_5678_9abc_def1u64;
    for _ in 0..20_000 {
        let mut b = [0u8; 24];
        for byte in b.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        // Keep the chunk id plausible half the time so the entry checks run.
        if x & 1 == 0 {
            b[0..4].copy_from_slice(&good.page_id.to_le_bytes());
        }
        let h = OverflowHandle::from_array(&b);
        assert_eq!(store.resolve(&h), None);
    }
    assert_eq!(store.resolve(&good), Some(payload(1, 300)));
}

#[test]
fn invariant_2_no_reclamation_under_a_writer_stress() {
    // Writers append, verify and acknowledge at once while a reclaimer with
    // decay 0 runs in a tight loop: a chunk recycled under an in-flight
    // append would lose or corrupt that append.
    let ns = Ns::new("inv2");
    let store =
        Arc::new(PinnedBlobStore::new_shared(cfg(0, 60_000), ns.as_str(), 16 << 10).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let reclaimed = Arc::new(AtomicU64::new(0));
    let reclaimer = {
        let (store, stop, reclaimed) = (
            Arc::clone(&store),
            Arc::clone(&stop),
            Arc::clone(&reclaimed),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                reclaimed.fetch_add(store.cleanup_shared() as u64, Ordering::Relaxed);
            }
        })
    };
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    let data = payload(t << 40 | i, 16 + (i as usize * 31) % 900);
                    let h = store.append_shared(&data).unwrap();
                    assert_eq!(
                        store.resolve(&h).as_ref(),
                        Some(&data),
                        "writer {t} append {i}"
                    );
                    assert!(store.acknowledge_shared(&h));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    reclaimer.join().unwrap();
    assert!(
        reclaimed.load(Ordering::Relaxed) > 10,
        "the reclaimer must actually have run"
    );
}

/// Invariant 2, deterministically: a writer stalls inside its payload copy
/// (the `Copying` hook) while its chunk is sealed and passes its TTL. The
/// pass that reclaims the chunk must not recycle it in place (its walk
/// stops at the uncommitted entry): the chunk is retired, and the stalled
/// copy lands in the dead life. Recycled in place, the copy would land on
/// the next life's entries, and their handles would read its bytes.
#[test]
fn invariant_2_a_writer_stalled_past_the_ttl_never_writes_into_the_next_life() {
    use stable_fragmented_buffer::hooks::{self, Point};
    let ns = Ns::new("inv2-stall");
    let store =
        Arc::new(PinnedBlobStore::new_shared(cfg(0, 1_000), ns.as_str(), 16 << 10).unwrap());
    let (parked_tx, parked) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    let stalled = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            let mut once = true;
            hooks::set(move |p| {
                if p == Point::Copying && std::mem::take(&mut once) {
                    parked_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                }
            });
            let h = store.append_shared(&[0xEE; 700]).unwrap();
            hooks::clear();
            h
        })
    };
    parked.recv().unwrap();
    // The stalled writer's chunk: fill it (sealing it) with committed
    // entries, then let its TTL pass and reclaim.
    let first = store.append_shared(&payload(1, 700)).unwrap();
    let chunk = first.page_id;
    while store.append_shared(&payload(2, 700)).unwrap().page_id == chunk {}
    std::thread::sleep(Duration::from_millis(1_050));
    store.cleanup_shared();
    // New data, the same size, until a new life of that chunk id is full
    // (recycled in place, it is the next target; retired, its id may not
    // come back at all).
    let mut fresh = Vec::new();
    let mut in_chunk = 0;
    for i in 0..300u64 {
        let data = payload(1000 + i, 700);
        let h = store.append_shared(&data).unwrap();
        if h.page_id == chunk {
            in_chunk += 1;
        } else if in_chunk > 0 {
            fresh.push((h, data));
            break;
        }
        fresh.push((h, data));
    }
    go.send(()).unwrap();
    let again = stalled.join().unwrap();
    assert_eq!(store.resolve(&again).as_deref(), Some(&[0xEE; 700][..]));
    // Written a moment ago, well within their TTL: each reads back whole
    // (an entry the stalled copy landed on reads as another's, or as
    // nothing once the stalled commit retagged it).
    for (i, (h, data)) in fresh.iter().enumerate() {
        assert!(
            store.resolve(h).as_ref() == Some(data),
            "entry {i} of the next life was overwritten by the stalled copy"
        );
    }
}

#[test]
fn invariant_3_acknowledgement_is_idempotent() {
    let ns = Ns::new("inv3");
    let store = PinnedBlobStore::new_shared(cfg(0, 60_000), ns.as_str(), 8192).unwrap();
    let a = store.append_shared(&payload(1, 3000)).unwrap();
    let b = store.append_shared(&payload(2, 3000)).unwrap();
    let c = store.append_shared(&payload(3, 3000)).unwrap(); // seals the first chunk
    assert_eq!(a.page_id, b.page_id);
    assert_ne!(c.page_id, a.page_id);
    assert!(store.acknowledge_shared(&a));
    assert!(!store.acknowledge_shared(&a));
    assert!(!store.acknowledge_shared(&a));
    // Two acks of `a` must not count as the ack of `b`.
    assert_eq!(store.cleanup_shared(), 0);
    assert_eq!(store.resolve(&b), Some(payload(2, 3000)));
    assert!(store.acknowledge_shared(&b));
    assert_eq!(store.cleanup_shared(), 1);
    assert!(!store.acknowledge_shared(&b), "stale after reclamation");
}

#[test]
fn invariant_5_corrupt_or_foreign_control_files_are_clear_errors() {
    use std::io::Write;
    let ns = Ns::new("inv5-ctrl");
    let path = common::shm_dir().join(format!("{}_ctrl", ns.as_str()));
    let good = {
        let s = PinnedBlobStore::new_shared(cfg(0, 60_000), ns.as_str(), CHUNK).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        drop(s);
        bytes
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated header", good[..10].to_vec()),
        (
            "foreign magic",
            b"NOTOURS!"
                .iter()
                .copied()
                .chain(good[8..].iter().copied())
                .collect(),
        ),
        ("other version", {
            let mut v = good.clone();
            v[8] = 9;
            v
        }),
        ("truncated body", good[..4096].to_vec()),
        (
            "too long",
            good.iter().copied().chain([0u8; 4096]).collect(),
        ),
        ("zero chunk size", {
            let mut v = good.clone();
            v[16..20].copy_from_slice(&0u32.to_le_bytes());
            v
        }),
    ];
    for (what, bytes) in cases {
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&bytes).unwrap();
        drop(f);
        let err = PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap_err();
        match what {
            "foreign magic" | "other version" => {
                assert!(
                    matches!(err, BlobError::IncompatibleFormat { .. }),
                    "{what}: {err}"
                )
            }
            _ => assert!(matches!(err, BlobError::Corrupt { .. }), "{what}: {err}"),
        }
        assert!(
            err.to_string().contains(&format!("{}_ctrl", ns.as_str())),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn invariant_5_truncated_or_scribbled_chunk_files_never_crash_a_reader() {
    let ns = Ns::new("inv5-chunk");
    let store = PinnedBlobStore::new_shared(cfg(0, 60_000), ns.as_str(), CHUNK).unwrap();
    let h = store.append_shared(&payload(1, 100)).unwrap();
    let reader = PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap();
    let path = common::shm_dir().join(format!("{}_data_{}", ns.as_str(), h.page_id));
    // The file shrinks under us before the reader first maps it: the size
    // check refuses it (no SIGBUS from touching pages past the end).
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(CHUNK_HEADER_SIZE as u64 + 8).unwrap();
    assert_eq!(reader.resolve(&h), None);
    f.set_len(100).unwrap();
    assert_eq!(reader.resolve(&h), None);
    assert!(!reader.acknowledge_shared(&h));
    // Garbage header of the right size.
    f.set_len(CHUNK as u64).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xAB; 128], 0).unwrap();
    assert_eq!(reader.resolve(&h), None);
    let reader2 = PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap();
    assert_eq!(reader2.resolve(&h), None);
}

#[test]
fn invariant_7_memory_really_returns() {
    let ns = Ns::new("inv7");
    let store = PinnedBlobStore::new_shared(cfg(0, 60_000), ns.as_str(), 8192).unwrap();
    let reader = PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap();
    let handles: Vec<_> = (0..60)
        .map(|i| store.append_shared(&payload(i, 2000)).unwrap())
        .collect();
    for h in &handles {
        assert!(reader.resolve(h).is_some()); // the reader maps every chunk
    }
    let before = ns.files().len();
    assert!(before >= 10, "{before}");
    assert!(reader.shared_backend().unwrap().mapped_chunks() >= 10);
    for h in &handles {
        assert!(reader.acknowledge_shared(h));
    }
    reader.cleanup_shared(); // any process may reclaim
                             // Beyond the warm pool, reclaimed chunks are unlinked...
    let files = ns.files();
    assert!(
        files.len() <= 1 + 1 + 4,
        "ctrl + active + warm pool (4) at most, got {files:?}"
    );
    // ...and every attached process drops its mappings within a tick
    // (100 ms; waited for up to 5 s on a loaded machine).
    let mapped = || {
        (
            store.shared_backend().unwrap().mapped_chunks(),
            reader.shared_backend().unwrap().mapped_chunks(),
        )
    };
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while mapped().0.max(mapped().1) > 5 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(mapped().0 <= 5 && mapped().1 <= 5, "{:?}", mapped());
    // The pool itself decays when idle for max(decay, 1 s): only ctrl + active stay.
    std::thread::sleep(Duration::from_millis(1100));
    store.cleanup_shared();
    assert_eq!(ns.files().len(), 2, "{:?}", ns.files());
}

#[test]
fn invariant_8_max_chunks_is_shared_by_every_attached_store() {
    let ns = Ns::new("inv8");
    let store =
        PinnedBlobStore::new_shared_with_limit(cfg(0, 60_000), ns.as_str(), 8192, Some(3)).unwrap();
    let other = PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap();
    assert_eq!(other.shared_backend().unwrap().max_chunks(), Some(3));
    let mut n = 0;
    let err = loop {
        match other.append_shared(&[1u8; 2000]) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, BlobError::StoreFull { max_chunks: 3, .. }),
        "{err}"
    );
    assert!(n >= 6);
    // The creator's process hits the same limit (a chunk the background
    // prefetch was still preparing may take a few more appends first).
    let mut extra = 0;
    let err = loop {
        match store.append_shared(&[1u8; 2000]) {
            Ok(_) => extra += 1,
            Err(e) => break e,
        }
    };
    assert!(extra <= 4, "{extra} appends past the limit");
    assert!(matches!(err, BlobError::StoreFull { .. }));
    assert!(
        err.to_string().contains("acknowledge"),
        "the message says what to do: {err}"
    );
    assert_eq!(store.shared_backend().unwrap().chunk_count(), 3);
}

#[test]
fn invariant_9_cleanup_refuses_a_live_creator_unless_forced() {
    let ns = Ns::new("inv9");
    let store = PinnedBlobStore::new_shared(cfg(0, 60_000), ns.as_str(), CHUNK).unwrap();
    let h = store.append_shared(b"keep me").unwrap();
    let err = SharedBackend::cleanup_namespace(ns.as_str()).unwrap_err();
    match &err {
        BlobError::InUse { pid, .. } => assert_eq!(*pid, std::process::id()),
        other => panic!("expected InUse, got {other}"),
    }
    assert!(err.to_string().contains("force"), "{err}");
    assert_eq!(
        store.resolve(&h).as_deref(),
        Some(&b"keep me"[..]),
        "a refused cleanup loses nothing"
    );
    assert_eq!(
        SharedBackend::creator_status(ns.as_str()).unwrap(),
        (true, std::process::id())
    );
    // Forced: files go, the live store keeps its mappings and learns it is closed.
    assert!(SharedBackend::cleanup_namespace_forced(ns.as_str()).unwrap() >= 2);
    assert!(ns.files().is_empty());
    assert_eq!(store.resolve(&h).as_deref(), Some(&b"keep me"[..]));
    let mut err = None;
    for _ in 0..100 {
        if let Err(e) = store.append_shared(&[0u8; 4000]) {
            err = Some(e);
            break;
        }
    }
    assert!(matches!(err, Some(BlobError::Closed { .. })), "{err:?}");
    assert!(ns.files().is_empty(), "a closed store creates no file");
    // Cleaning a namespace that does not exist is fine.
    assert_eq!(SharedBackend::remove_namespace(ns.as_str()).unwrap(), 0);
}

#[test]
fn invariant_10_creation_is_exclusive() {
    let ns = Ns::new("inv10");
    let store = PinnedBlobStore::new_shared(cfg(0, 60_000), ns.as_str(), CHUNK).unwrap();
    let err = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK).unwrap_err();
    assert!(
        matches!(err, BlobError::AlreadyExists { pid, .. } if pid == std::process::id()),
        "{err}"
    );
    let h = store.append_shared(b"still here").unwrap();
    assert_eq!(store.resolve(&h).as_deref(), Some(&b"still here"[..]));
    // Once the creator is gone the name can be created again.
    drop(store);
    let again = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK).unwrap();
    assert_eq!(
        again.resolve(&h),
        None,
        "a new incarnation knows nothing of old handles"
    );
}

#[test]
fn invariant_10_concurrent_creator_threads_exactly_one_wins() {
    let ns = Ns::new("inv10-race");
    let name = ns.0.clone();
    let results: Vec<_> = (0..4)
        .map(|_| {
            let name = name.clone();
            std::thread::spawn(move || PinnedBlobStore::new_shared(cfg(0, 60_000), &name, CHUNK))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let winners: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(winners.len(), 1);
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, BlobError::AlreadyExists { .. }), "{e}");
        }
    }
    let store = results.into_iter().find_map(Result::ok).unwrap();
    let h = store.append_shared(b"winner").unwrap();
    let other = PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap();
    assert_eq!(other.resolve(&h).as_deref(), Some(&b"winner"[..]));
}

#[test]
fn invariant_10_orphan_chunk_files_do_not_block_creation() {
    let ns = Ns::new("inv10-orphans");
    // Junk where chunk 0 and 1 will go, and no control block.
    for id in 0..2 {
        let p = common::shm_dir().join(format!("{}_data_{id}", ns.as_str()));
        std::fs::write(&p, b"left by a crash long ago").unwrap();
    }
    let store = PinnedBlobStore::new_shared(cfg(0, 60_000), ns.as_str(), 8192).unwrap();
    let handles: Vec<_> = (0..10)
        .map(|i| store.append_shared(&payload(i, 2000)).unwrap())
        .collect();
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(store.resolve(h), Some(payload(i as u64, 2000)));
    }
}

#[test]
fn invariant_9_an_old_incarnation_never_touches_a_new_one() {
    let ns = Ns::new("inv9-incarnations");
    let old = PinnedBlobStore::new_shared(cfg(0, 0), ns.as_str(), 8192).unwrap();
    let old_reader = PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap();
    let stale = old.append_shared(&payload(1, 3000)).unwrap();
    // The namespace is removed under its live processes and created anew.
    SharedBackend::cleanup_namespace_forced(ns.as_str()).unwrap();
    let new = PinnedBlobStore::new_shared(cfg(0, 60_000), ns.as_str(), 8192).unwrap();
    let handles: Vec<_> = (0..10)
        .map(|i| new.append_shared(&payload(100 + i, 3000)).unwrap())
        .collect();
    let files = ns.files();
    // The old processes reclaim (TTL 0), resolve and drop: nothing of the
    // new incarnation may be unlinked or read as theirs.
    old_reader.cleanup_shared();
    old.cleanup_shared();
    for h in &handles {
        assert_eq!(
            old_reader.resolve(h),
            None,
            "an old attacher must not read new files as its own"
        );
    }
    drop(old_reader);
    drop(old);
    assert_eq!(ns.files(), files, "the new incarnation's files are intact");
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(new.resolve(h), Some(payload(100 + i as u64, 3000)));
    }
    assert_eq!(new.resolve(&stale), None);
}
