//! The per-thread `Writer`: single and batch appends, single and batch
//! acknowledgements, across chunks and processes, and what a batch leaves
//! behind when it fails part-way.

mod common;

use common::{cfg, env, hex, payload, say, spawn_peer, unhex, Ns};
use stable_fragmented_buffer::{BlobError, Config, OverflowHandle, PinnedBlobStore};
use std::collections::HashSet;
use std::io::{BufRead, Write};

const ENTRY: &str = "peer_process_entry_point";
const CHUNK: usize = 64 << 10;

/// Not a test of its own: the entry point of peer processes. Without
/// `SFB_PEER_ROLE` (a normal test run) it has nothing to do.
#[test]
#[ignore = "not a test: the entry point of this file's peer processes (common::spawn_peer runs it)"]
fn peer_process_entry_point() {
    let Some(role) = common::peer_role() else {
        return;
    };
    match role.as_str() {
        "consumer" => role_consumer(),
        other => panic!("unknown role {other}"),
    }
}

/// Reads `handle seed len` lines, checks each blob's bytes, acknowledges
/// it with a writer of its own (in batches of up to 16), and reports.
fn role_consumer() {
    let store = PinnedBlobStore::attach_shared(Config::default(), &env("SFB_NS")).unwrap();
    let mut w = store.writer().unwrap();
    say("attached");
    let (mut verified, mut acked, mut batch) = (0, 0, Vec::new());
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let mut parts = line.split(' ');
        let h = unhex(parts.next().unwrap());
        let seed: u64 = parts.next().unwrap().parse().unwrap();
        let len: usize = parts.next().unwrap().parse().unwrap();
        assert_eq!(store.resolve(&h), Some(payload(seed, len)), "blob {seed}");
        verified += 1;
        batch.push(h);
        if batch.len() == 16 {
            acked += w.acknowledge_all(&batch);
            batch.clear();
        }
    }
    acked += w.acknowledge_all(&batch);
    say(format!("verified {verified} acked {acked}"));
}

/// Blobs of varied sizes (seeded), some larger than a standard chunk.
fn blobs(n: u64, oversized_every: u64) -> Vec<(u64, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let len = if oversized_every > 0 && i % oversized_every == oversized_every - 1 {
                CHUNK + 1000
            } else {
                1 + (i as usize * 977) % 3000
            };
            (i, payload(i, len))
        })
        .collect()
}

#[test]
fn writer_handles_resolve_in_another_process_and_count_once() {
    let ns = Ns::new("wxproc");
    let store = PinnedBlobStore::new_shared(cfg(0, 30_000), ns.as_str(), CHUNK).unwrap();
    let mut w = store.writer().unwrap();
    let all = blobs(400, 97);
    // The first half one by one, the rest in batches of 25.
    let mut handles: Vec<OverflowHandle> = all[..200]
        .iter()
        .map(|(_, b)| w.append(b).unwrap())
        .collect();
    for run in all[200..].chunks(25) {
        let refs: Vec<&[u8]> = run.iter().map(|(_, b)| b.as_slice()).collect();
        w.append_all(&refs, &mut handles).unwrap();
    }
    assert_eq!(handles.len(), all.len());
    let chunks: HashSet<u32> = handles.iter().map(|h| h.page_id).collect();
    assert!(chunks.len() >= 10, "the blobs span many chunks: {chunks:?}");

    let mut peer = spawn_peer(ENTRY, "consumer", &[("SFB_NS", ns.as_str().to_owned())]);
    peer.expect("attached");
    {
        let stdin = peer.child.stdin.as_mut().unwrap();
        for (h, (seed, b)) in handles.iter().zip(&all) {
            writeln!(stdin, "{} {seed} {}", hex(h), b.len()).unwrap();
        }
    }
    drop(peer.child.stdin.take());
    peer.expect(&format!("verified {0} acked {0}", all.len()));
    peer.wait_ok();
    // Counted once, in the other process: none counts again here.
    assert_eq!(w.acknowledge_all(&handles), 0);
    assert!(!w.acknowledge(&handles[0]));
    drop(w);
    drop(store);
}

#[test]
fn append_all_keeps_order_across_chunks_and_oversized_blobs() {
    let ns = Ns::new("wrun");
    let store = PinnedBlobStore::new_shared(cfg(0, 30_000), ns.as_str(), CHUNK).unwrap();
    let mut w = store.writer().unwrap();
    let all = blobs(300, 40);
    let refs: Vec<&[u8]> = all.iter().map(|(_, b)| b.as_slice()).collect();
    let mut handles = vec![w.append(b"before").unwrap()];
    w.append_all(&refs, &mut handles).unwrap();
    assert_eq!(
        handles.len(),
        all.len() + 1,
        "one handle per blob, pushed after"
    );
    assert_eq!(store.resolve(&handles[0]).as_deref(), Some(&b"before"[..]));
    for (h, (_, b)) in handles[1..].iter().zip(&all) {
        assert_eq!(h.size as usize, b.len());
        assert_eq!(store.resolve(h).as_ref(), Some(b));
    }
    // Runs fill each chunk: consecutive blobs of one run share chunks, and
    // no two handles point at the same entry.
    let places: HashSet<(u32, u32)> = handles.iter().map(|h| (h.page_id, h.offset)).collect();
    assert_eq!(places.len(), handles.len());
    let mut chunks: Vec<u32> = handles.iter().map(|h| h.page_id).collect();
    chunks.dedup();
    assert!(
        chunks.len() < handles.len() / 4,
        "runs share chunks: {} chunk changes for {} blobs",
        chunks.len(),
        handles.len()
    );
    drop(w);
    drop(store);
}

#[test]
fn append_all_stops_at_the_first_failure_and_keeps_what_it_stored() {
    let ns = Ns::new("wfail");
    let store = PinnedBlobStore::new_shared(cfg(0, 30_000), ns.as_str(), CHUNK).unwrap();
    let mut w = store.writer().unwrap();
    let mut out = Vec::new();
    let empty: &[u8] = &[];
    let err = w
        .append_all(&[b"one", b"two", empty, b"four"], &mut out)
        .unwrap_err();
    assert!(matches!(err, BlobError::EmptyBlob), "{err}");
    assert_eq!(out.len(), 2, "the blobs before the empty one are stored");
    assert_eq!(store.resolve(&out[0]).as_deref(), Some(&b"one"[..]));
    assert_eq!(store.resolve(&out[1]).as_deref(), Some(&b"two"[..]));
    drop(w);
    drop(store);

    // At the chunk limit: the batch stops with StoreFull; everything it
    // reports stored is there, and the rest goes through once consumers
    // catch up, each blob exactly once.
    let ns = Ns::new("wfull");
    let store = PinnedBlobStore::new_shared_with_limit(cfg(0, 30_000), ns.as_str(), CHUNK, Some(2))
        .unwrap();
    let mut w = store.writer().unwrap();
    let all = blobs(200, 0);
    let refs: Vec<&[u8]> = all.iter().map(|(_, b)| b.as_slice()).collect();
    let mut out = Vec::new();
    let err = w.append_all(&refs, &mut out).unwrap_err();
    assert!(matches!(err, BlobError::StoreFull { .. }), "{err}");
    assert!(!out.is_empty() && out.len() < all.len(), "{}", out.len());
    for (h, (_, b)) in out.iter().zip(&all) {
        assert_eq!(store.resolve(h).as_ref(), Some(b));
    }
    let (mut rounds, mut acked) = (0, 0);
    while out.len() < all.len() {
        rounds += 1;
        assert!(rounds < 100, "no progress after the consumers caught up");
        assert_eq!(w.acknowledge_all(&out[acked..]), out.len() - acked);
        acked = out.len();
        store.cleanup_shared();
        let from = out.len();
        match w.append_all(&refs[from..], &mut out) {
            Ok(()) | Err(BlobError::StoreFull { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let places: HashSet<(u32, u32, u32)> = out
        .iter()
        .map(|h| (h.page_id, h.generation, h.offset))
        .collect();
    assert_eq!(places.len(), all.len(), "no blob stored twice");
    for (h, (_, b)) in out.iter().zip(&all).rev().take(10) {
        assert_eq!(store.resolve(h).as_ref(), Some(b));
    }
    drop(w);
    drop(store);
}

#[test]
fn acknowledge_all_counts_each_live_entry_once_and_refuses_the_rest() {
    let ns = Ns::new("wack");
    let store = PinnedBlobStore::new_shared(cfg(0, 30_000), ns.as_str(), CHUNK).unwrap();
    let mut w = store.writer().unwrap();
    let all = blobs(120, 0);
    let refs: Vec<&[u8]> = all.iter().map(|(_, b)| b.as_slice()).collect();
    let mut handles = Vec::new();
    w.append_all(&refs, &mut handles).unwrap();
    let forged = |h: &OverflowHandle, f: fn(&mut OverflowHandle)| {
        let mut h = *h;
        f(&mut h);
        h
    };
    let mut list = handles.clone();
    // Repeats (of the same run and of an earlier one), forged handles (an
    // offset, a size, a generation, a chunk that is not there).
    list.push(handles[3]);
    list.insert(10, handles[10]);
    list.push(forged(&handles[5], |h| h.offset += 8));
    list.push(forged(&handles[6], |h| h.size += 1));
    list.push(forged(&handles[7], |h| h.generation += 1));
    list.push(forged(&handles[8], |h| h.page_id = 4000));
    assert_eq!(w.acknowledge_all(&list), handles.len());
    assert_eq!(w.acknowledge_all(&list), 0, "nothing counts twice");
    assert!(!w.acknowledge(&handles[0]));
    // The acknowledged chunks are reclaimed (decay 0): their handles are
    // stale and never count.
    assert!(store.cleanup_shared() >= 1);
    assert_eq!(w.acknowledge_all(&handles), 0);
    drop(w);
    drop(store);
}

#[test]
fn a_heap_store_has_no_writer() {
    let heap = PinnedBlobStore::new(Config::default()).unwrap();
    let err = heap.writer().unwrap_err();
    assert!(matches!(err, BlobError::WrongMode { .. }), "{err}");
}

/// A batch that goes through more rollovers than one append may (one blob
/// per chunk here) is not mistaken for a corrupt store: the limit is on
/// tries without progress, and every stored run is progress.
#[test]
fn a_batch_longer_than_the_rollover_limit_is_stored_whole() {
    let ns = Ns::new("wlong");
    let store = PinnedBlobStore::new_shared(cfg(0, 1), ns.as_str(), 512).unwrap();
    let mut w = store.writer().unwrap();
    // Each blob names itself: a handle that resolves must give its own.
    let owned: Vec<Vec<u8>> = (0..12_000u32)
        .map(|i| {
            let mut b = vec![(i % 251) as u8; 300];
            b[..4].copy_from_slice(&i.to_le_bytes());
            b
        })
        .collect();
    let blobs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    let mut out = Vec::new();
    w.append_all(&blobs, &mut out).unwrap();
    assert_eq!(out.len(), blobs.len());
    drop(w);
    // More chunks than the namespace may hold at once went by (one blob a
    // chunk, 1 ms TTL): most are reclaimed by now. The handles are each a
    // different entry, in order; every one still readable is its own blob,
    // and the last (in the unsealed append target) is readable.
    let mut places = std::collections::HashSet::new();
    let mut readable = 0;
    for (i, h) in out.iter().enumerate() {
        assert!(
            places.insert((h.page_id, h.generation, h.offset)),
            "blob {i}: a handle given twice"
        );
        if let Some(bytes) = store.resolve(h) {
            assert_eq!(bytes, owned[i], "blob {i} resolves to another blob's bytes");
            readable += 1;
        }
    }
    assert_eq!(
        store.resolve(out.last().unwrap()).as_deref(),
        Some(&owned[11_999][..])
    );
    assert!(readable >= 1);
    drop(store);
}

/// A writer's appends and acknowledgements, single and batched, count in
/// the store's profiler once it is enabled, as the store's own calls do.
#[test]
fn a_writers_operations_count_in_the_profiler() {
    let ns = Ns::new("wprof");
    let store = PinnedBlobStore::new_shared(cfg(0, 30_000), ns.as_str(), CHUNK).unwrap();
    store.profiler().enable();
    let mut w = store.writer().unwrap();
    let one = w.append(&[1u8; 10]).unwrap();
    let mut batch = Vec::new();
    w.append_all(&[&[2u8; 20], &[3u8; 30], &[4u8; 40]], &mut batch)
        .unwrap();
    assert!(w.acknowledge(&one));
    assert_eq!(w.acknowledge_all(&batch), 3);
    assert_eq!(w.acknowledge_all(&batch), 0, "repeats do not count");
    let p = store.profiler().snapshot();
    assert_eq!((p.appends, p.appended_bytes, p.acks), (4, 100, 4));
    drop(w);
    drop(store);
}
