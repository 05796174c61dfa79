//! Zero-copy views in shared mode: stable bytes under reclamation, pins from
//! other processes (alive and SIGKILLed), mappings that outlive unlinks.

mod common;

use common::{env, hex, payload, say, spawn_peer, unhex, Ns};
use stable_fragmented_buffer::{BlobView, Config, OverflowHandle, PinnedBlobStore};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ENTRY: &str = "peer_process_entry_point";

/// Not a test of its own: the entry point of peer processes (see common).
#[test]
#[ignore = "not a test: the entry point of this file's peer processes (common::spawn_peer runs it)"]
fn peer_process_entry_point() {
    let Some(role) = common::peer_role() else {
        return;
    };
    assert_eq!(role, "viewer");
    // Reads "HANDLE SEED LEN" lines until an empty line, pins a view of each,
    // then answers "check" lines by re-verifying every view.
    let store = PinnedBlobStore::attach_shared(Config::default(), &env("SFB_NS")).unwrap();
    let mut views: Vec<(BlobView, Vec<u8>)> = Vec::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.is_empty() {
            break;
        }
        let p: Vec<&str> = line.split(' ').collect();
        let want = payload(p[1].parse().unwrap(), p[2].parse().unwrap());
        let view = store.resolve_ref(&unhex(p[0])).expect("live handle");
        assert_eq!(&view[..], &want[..]);
        views.push((view, want));
    }
    say(format!("pinned {}", views.len()));
    for line in lines {
        if line.unwrap() == "check" {
            let ok = views.iter().all(|(v, want)| v[..] == want[..]);
            say(format!(
                "still {} {}",
                views.len(),
                if ok { "equal" } else { "CHANGED" }
            ));
        }
    }
}

fn cfg0() -> Config {
    Config {
        decay_timeout_ms: 0,
        ..Config::default()
    }
}

/// Appends until the chunk changes: the handles (with seed, len) of the
/// first chunk, which is then sealed.
fn fill_chunk(store: &PinnedBlobStore, seed0: u64) -> Vec<(OverflowHandle, u64, usize)> {
    let mut out: Vec<(OverflowHandle, u64, usize)> = Vec::new();
    for seed in seed0.. {
        let h = store.append_shared(&payload(seed, 700)).unwrap();
        if out.first().is_some_and(|f| f.0.page_id != h.page_id) {
            // The handle that moved on belongs to the next chunk: ack it now.
            store.acknowledge_shared(&h);
            return out;
        }
        out.push((h, seed, 700));
    }
    unreachable!()
}

fn chunk_file(ns: &Ns, id: u32) -> std::path::PathBuf {
    common::shm_dir().join(format!("{}_data_{id}", ns.as_str()))
}

fn start_viewer(ns: &Ns, handles: &[(OverflowHandle, u64, usize)]) -> common::Peer {
    let mut peer = spawn_peer(ENTRY, "viewer", &[("SFB_NS", ns.0.clone())]);
    let stdin = peer.child.stdin.as_mut().unwrap();
    for (h, seed, len) in handles {
        writeln!(stdin, "{} {seed} {len}", hex(h)).unwrap();
    }
    writeln!(stdin).unwrap();
    stdin.flush().unwrap();
    peer.expect(&format!("pinned {}", handles.len()));
    peer
}

#[test]
fn a_view_in_another_process_keeps_its_bytes_while_the_chunk_is_reclaimed() {
    let ns = Ns::new("views-other");
    let store = PinnedBlobStore::new_shared(cfg0(), ns.as_str(), 8192).unwrap();
    let first = fill_chunk(&store, 0);
    let chunk = first[0].0.page_id;
    let mut viewer = start_viewer(&ns, &first);
    for (h, _, _) in &first {
        assert!(store.acknowledge_shared(h));
    }
    assert_eq!(store.cleanup_shared(), 1);
    let stats = store.stats();
    assert_eq!(
        (stats.recycled, stats.retired),
        (0, 1),
        "pinned elsewhere: retired, not recycled in place"
    );
    assert!(
        !chunk_file(&ns, chunk).exists(),
        "the chunk file is unlinked"
    );
    assert_eq!(store.resolve(&first[0].0), None);
    // Lots of new traffic, recycled through the pool, must not touch the view.
    for round in 0..20 {
        for (h, _, _) in fill_chunk(&store, 1000 * (round + 1)) {
            store.acknowledge_shared(&h);
        }
        store.cleanup_shared();
    }
    assert!(store.stats().recycled > 0);
    writeln!(viewer.child.stdin.as_mut().unwrap(), "check").unwrap();
    viewer.expect(&format!("still {} equal", first.len()));
    drop(viewer.child.stdin.take());
    viewer.wait_ok();
}

#[test]
fn a_pin_left_by_a_sigkilled_reader_does_not_block_reclamation() {
    let ns = Ns::new("views-killed");
    let store = PinnedBlobStore::new_shared(cfg0(), ns.as_str(), 8192).unwrap();
    let first = fill_chunk(&store, 0);
    let chunk = first[0].0.page_id;
    let mut viewer = start_viewer(&ns, &first);
    viewer.kill9();
    // The dead reader's pins are still counted in the chunk header...
    let pins = u32::from_le_bytes(
        std::fs::read(chunk_file(&ns, chunk)).unwrap()[64..68]
            .try_into()
            .unwrap(),
    );
    assert_eq!(pins as usize, first.len());
    // ...yet the chunk is reclaimed as soon as it is acknowledged: retired
    // (unlinked) instead of recycled, so the leaked pins cannot matter.
    for (h, _, _) in &first {
        assert!(store.acknowledge_shared(h));
    }
    assert_eq!(store.cleanup_shared(), 1);
    assert!(!chunk_file(&ns, chunk).exists());
    assert_eq!(store.stats().retired, 1);
}

#[test]
fn a_view_keeps_its_mapping_after_the_chunk_file_is_unlinked() {
    let ns = Ns::new("views-unlink");
    let store = PinnedBlobStore::new_shared(cfg0(), ns.as_str(), 8192).unwrap();
    let reader = PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap();
    let first = fill_chunk(&store, 0);
    let views: Vec<_> = first
        .iter()
        .map(|(h, _, _)| reader.resolve_ref(h).unwrap())
        .collect();
    for (h, _, _) in &first {
        store.acknowledge_shared(h);
    }
    store.cleanup_shared();
    assert!(!chunk_file(&ns, first[0].0.page_id).exists());
    // The reader's worker drops retired mappings, but not the ones views hold.
    std::thread::sleep(Duration::from_millis(300));
    for ((_, seed, len), v) in first.iter().zip(&views) {
        assert_eq!(&v[..], &payload(*seed, *len)[..]);
    }
    // Even removing the whole namespace leaves the views readable.
    drop(store);
    assert!(ns.files().is_empty());
    for ((_, seed, len), v) in first.iter().zip(&views) {
        assert_eq!(&v[..], &payload(*seed, *len)[..]);
    }
}

#[test]
fn shared_stress_views_held_across_reclamation_from_two_attachments() {
    let ns = Ns::new("views-stress");
    let producer = Arc::new(PinnedBlobStore::new_shared(cfg0(), ns.as_str(), 32 << 10).unwrap());
    let consumer =
        Arc::new(PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let cleaner = {
        let (c, stop) = (Arc::clone(&consumer), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                c.cleanup_shared();
                std::thread::yield_now();
            }
        })
    };
    let (tx, rx) = std::sync::mpsc::channel::<(OverflowHandle, Vec<u8>)>();
    let writer = {
        let p = Arc::clone(&producer);
        std::thread::spawn(move || {
            for i in 0..20_000u64 {
                let data = payload(i, 16 + (i as usize * 37) % 2000);
                tx.send((p.append_shared(&data).unwrap(), data)).unwrap();
            }
        })
    };
    let checked = AtomicU64::new(0);
    let mut held: Vec<(BlobView, Vec<u8>)> = Vec::new();
    for (h, data) in rx {
        let v = consumer.resolve_ref(&h).expect("unacknowledged data stays");
        assert_eq!(&v[..], &data[..]);
        assert!(consumer.acknowledge_shared(&h));
        held.push((v, data));
        if held.len() > 64 {
            let (v, d) = held.remove(0);
            assert_eq!(&v[..], &d[..], "a view's bytes changed under it");
            checked.fetch_add(1, Ordering::Relaxed);
        }
    }
    for (v, d) in held.drain(..) {
        assert_eq!(&v[..], &d[..]);
        checked.fetch_add(1, Ordering::Relaxed);
    }
    writer.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    cleaner.join().unwrap();
    assert_eq!(checked.load(Ordering::Relaxed), 20_000);
    let s = producer.stats();
    assert!(s.recycled + s.retired > 10, "{s:?}");
}
