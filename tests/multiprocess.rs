//! Real separate processes: this test binary re-executes itself as a peer
//! (creator, producer or consumer) through `peer_process_entry_point`.

mod common;

use common::{env, hex, payload, say, spawn_peer, unhex, Ns};
use stable_fragmented_buffer::{BlobError, Config, PinnedBlobStore, SharedBackend};
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

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
        "creator" => role_creator(),
        "producer" => role_producer(),
        "racer" => role_racer(),
        "filler" => role_filler(),
        other => panic!("unknown role {other}"),
    }
}

/// Attaches, then for each stdin line "HANDLE SEED LEN" resolves, checks
/// every byte and acknowledges.
fn role_consumer() {
    let store = PinnedBlobStore::attach_shared(Config::default(), &env("SFB_NS")).unwrap();
    say("attached");
    let (mut verified, mut acked) = (0, 0);
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let mut parts = line.split(' ');
        let h = unhex(parts.next().unwrap());
        let seed: u64 = parts.next().unwrap().parse().unwrap();
        let len: usize = parts.next().unwrap().parse().unwrap();
        let data = store
            .resolve(&h)
            .expect("a live handle resolves in another process");
        assert_eq!(data, payload(seed, len));
        verified += 1;
        if store.acknowledge_shared(&h) {
            acked += 1;
        }
    }
    say(format!("verified {verified} acked {acked}"));
}

/// Creates the namespace, appends one blob, reports, then waits forever.
fn role_creator() {
    let store = PinnedBlobStore::new_shared(Config::default(), &env("SFB_NS"), CHUNK).unwrap();
    let h = store.append_shared(&payload(7, 1000)).unwrap();
    say(format!("ready {}", hex(&h)));
    // Block until killed (stdin stays open).
    let mut s = String::new();
    let _ = std::io::stdin().read_line(&mut s);
    std::thread::sleep(Duration::from_secs(3600));
}

/// Waits for "go", tries to create the namespace, says "won" or "exists",
/// and (a winner) holds it until stdin closes.
fn role_racer() {
    say("ready");
    let mut s = String::new();
    std::io::stdin().read_line(&mut s).unwrap();
    match PinnedBlobStore::new_shared(Config::default(), &env("SFB_NS"), CHUNK) {
        Ok(store) => {
            let h = store.append_shared(b"winner").unwrap();
            say(format!("won {}", hex(&h)));
            let _ = std::io::stdin().read_line(&mut s);
        }
        Err(BlobError::AlreadyExists { .. }) => say("exists"),
        Err(e) => say(format!("error {e}")),
    }
}

/// Attaches and appends 2000-byte blobs until the store is full; reports
/// how many it appended and the error's limit.
fn role_filler() {
    let store = PinnedBlobStore::attach_shared(Config::default(), &env("SFB_NS")).unwrap();
    let mut n = 0;
    loop {
        match store.append_shared(&[1u8; 2000]) {
            Ok(_) => n += 1,
            Err(BlobError::StoreFull { max_chunks, .. }) => {
                say(format!("full {n} {max_chunks}"));
                return;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Attaches and appends checksummable blobs as fast as it can, reporting
/// each handle, until killed.
fn role_producer() {
    let store = PinnedBlobStore::attach_shared(Config::default(), &env("SFB_NS")).unwrap();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for seed in 0u64.. {
        let len = 16 + (seed as usize * 97) % 3000;
        let h = match store.append_shared(&payload(seed, len)) {
            Ok(h) => h,
            Err(BlobError::StoreFull { .. }) => {
                out.flush().unwrap();
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        writeln!(out, "SFB h {} {seed} {len}", hex(&h)).unwrap();
        if seed % 8 == 0 {
            out.flush().unwrap();
        }
    }
}

#[test]
fn cross_process_attach_resolve_and_acknowledge() {
    let ns = Ns::new("mp-attach");
    let cfg = Config {
        decay_timeout_ms: 0,
        ..Config::default()
    };
    let store = PinnedBlobStore::new_shared(cfg, ns.as_str(), CHUNK).unwrap();
    let mut sent = Vec::new();
    for seed in 0..500u64 {
        // Mostly small blobs, some larger than a chunk (dedicated chunks).
        let len = if seed % 100 == 99 {
            200_000
        } else {
            1 + (seed as usize * 53) % 4000
        };
        sent.push((store.append_shared(&payload(seed, len)).unwrap(), seed, len));
    }
    let mut peer = spawn_peer(ENTRY, "consumer", &[("SFB_NS", ns.0.clone())]);
    peer.expect("attached");
    {
        let mut stdin = peer.child.stdin.take().unwrap();
        for (h, seed, len) in &sent {
            writeln!(stdin, "{} {seed} {len}", hex(h)).unwrap();
        }
    }
    peer.expect("verified 500 acked 500");
    peer.wait_ok();
    // The other process's acknowledgements count here: everything but the
    // active chunk is reclaimable.
    assert!(
        !store.acknowledge_shared(&sent[0].0),
        "already acknowledged over there"
    );
    let reclaimed = store.cleanup_shared();
    assert!(reclaimed >= 5, "{reclaimed}");
    let dedicated = sent.iter().find(|(_, _, len)| *len == 200_000).unwrap();
    assert_eq!(store.resolve(&dedicated.0), None);
}

#[test]
fn creator_killed_with_sigkill_then_cleanup_namespace_from_another_process() {
    let ns = Ns::new("mp-kill-creator");
    let mut creator = spawn_peer(ENTRY, "creator", &[("SFB_NS", ns.0.clone())]);
    let line = creator.line().unwrap();
    let h = unhex(line.strip_prefix("ready ").unwrap());
    let pid = creator.child.id();
    let reader = PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap();
    assert_eq!(reader.resolve(&h), Some(payload(7, 1000)));
    assert_eq!(
        SharedBackend::creator_status(ns.as_str()).unwrap(),
        (true, pid)
    );
    assert!(
        matches!(SharedBackend::cleanup_namespace(ns.as_str()), Err(BlobError::InUse { pid: p, .. }) if p == pid)
    );
    assert!(matches!(
        PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK),
        Err(BlobError::AlreadyExists { pid: p, .. }) if p == pid
    ));

    creator.kill9();
    // Orphans: Drop never ran.
    assert!(ns.files().len() >= 2, "{:?}", ns.files());
    assert_eq!(
        SharedBackend::creator_status(ns.as_str()).unwrap(),
        (false, pid)
    );
    // Survivors keep their data.
    assert_eq!(reader.resolve(&h), Some(payload(7, 1000)));
    let removed = SharedBackend::remove_namespace(ns.as_str()).unwrap();
    assert!(removed >= 2);
    assert!(ns.files().is_empty());
    // The existing mapping stays valid after the unlink.
    assert_eq!(reader.resolve(&h), Some(payload(7, 1000)));
}

#[test]
fn creating_over_a_dead_creator_takes_the_namespace_over() {
    let ns = Ns::new("mp-takeover");
    let mut creator = spawn_peer(ENTRY, "creator", &[("SFB_NS", ns.0.clone())]);
    let line = creator.line().unwrap();
    let old = unhex(line.strip_prefix("ready ").unwrap());
    let dead = creator.child.id();
    creator.kill9();
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK).unwrap();
    // The take-over is reported, for the application to log.
    let r = store
        .recovered()
        .expect("a dead creator's files were removed");
    assert_eq!(r.dead_pid, Some(dead));
    assert!(r.files_removed >= 2, "{r:?}");
    assert_eq!(store.resolve(&old), None);
    let h = store.append_shared(b"new owner").unwrap();
    assert_eq!(store.resolve(&h).as_deref(), Some(&b"new owner"[..]));
    assert_eq!(
        SharedBackend::creator_status(ns.as_str()).unwrap(),
        (true, std::process::id())
    );
}

#[test]
fn producer_killed_mid_stream_while_a_consumer_keeps_resolving() {
    let ns = Ns::new("mp-kill-producer");
    let cfg = Config {
        decay_timeout_ms: 0,
        default_ttl_ms: 500,
        ..Config::default()
    };
    let store = PinnedBlobStore::new_shared_with_limit(cfg, ns.as_str(), CHUNK, Some(16)).unwrap();
    let mut producer = spawn_peer(ENTRY, "producer", &[("SFB_NS", ns.0.clone())]);
    let (mut verified, mut gone) = (0u64, 0u64);
    let mut killed = false;
    while let Some(line) = producer.line() {
        let parts: Vec<&str> = line.split(' ').collect();
        // The last line may be cut short by the kill.
        if parts.len() != 4 || parts[1].len() != 48 {
            continue;
        }
        let (Ok(seed), Ok(len)) = (parts[2].parse::<u64>(), parts[3].parse::<usize>()) else {
            continue;
        };
        let h = unhex(parts[1]);
        match store.resolve(&h) {
            Some(data) => {
                assert_eq!(data, payload(seed, len), "seed {seed}: wrong bytes");
                verified += 1;
                store.acknowledge_shared(&h);
            }
            None => gone += 1,
        }
        if verified % 64 == 0 {
            store.cleanup_shared();
        }
        if !killed && verified >= 5_000 {
            producer.kill9();
            killed = true;
        }
    }
    assert!(killed && verified >= 5_000, "verified {verified}");
    assert_eq!(gone, 0, "every reported handle was resolvable");
    // The survivors keep working.
    for seed in 0..1000u64 {
        let h = store.append_shared(&payload(seed, 500)).unwrap();
        assert_eq!(store.resolve(&h), Some(payload(seed, 500)));
        store.acknowledge_shared(&h);
    }
    // Whatever the dead producer left (sealed or half-written chunks) goes
    // within the TTL.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        store.cleanup_shared();
        if store.shared_backend().unwrap().chunk_count() <= 1 + 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chunks stuck: {}",
            store.shared_backend().unwrap().chunk_count()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn creating_a_free_name_reports_no_recovery() {
    let ns = Ns::new("mp-fresh");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK).unwrap();
    assert_eq!(store.recovered(), None);
    let attached = PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap();
    assert_eq!(attached.recovered(), None);
}

/// Invariant 10 across processes: four processes race to create one
/// namespace at the same moment; exactly one wins, the others are told
/// `AlreadyExists`, and the winner's store works for an attached process.
#[test]
fn concurrent_creator_processes_exactly_one_wins() {
    let ns = Ns::new("race");
    let mut racers: Vec<_> = (0..4)
        .map(|_| spawn_peer(ENTRY, "racer", &[("SFB_NS", ns.0.clone())]))
        .collect();
    for r in &mut racers {
        r.expect("ready");
    }
    for r in &mut racers {
        writeln!(r.child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let said: Vec<String> = racers.iter_mut().map(|r| r.line().unwrap()).collect();
    let won: Vec<&String> = said.iter().filter(|l| l.starts_with("won ")).collect();
    assert_eq!(won.len(), 1, "{said:?}");
    assert_eq!(
        said.iter().filter(|l| *l == "exists").count(),
        3,
        "{said:?}"
    );
    let h = unhex(won[0].strip_prefix("won ").unwrap());
    let other = PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap();
    assert_eq!(other.resolve(&h).as_deref(), Some(&b"winner"[..]));
    drop(other);
    for r in racers {
        let mut r = r;
        drop(r.child.stdin.take());
        r.wait_ok();
    }
}

/// Invariant 8 across processes: a limit set by the creator stops an
/// attached process's appends, and the creator's count agrees.
#[test]
fn max_chunks_stops_every_process() {
    let ns = Ns::new("limit");
    let store =
        PinnedBlobStore::new_shared_with_limit(Config::default(), ns.as_str(), 8192, Some(3))
            .unwrap();
    let mut filler = spawn_peer(ENTRY, "filler", &[("SFB_NS", ns.0.clone())]);
    let said = filler.line().unwrap();
    filler.wait_ok();
    let v: Vec<usize> = said
        .strip_prefix("full ")
        .unwrap_or_else(|| panic!("{said}"))
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(v[1], 3, "the limit as the other process saw it");
    assert!(v[0] >= 6, "{} appends before the limit", v[0]);
    assert_eq!(store.shared_backend().unwrap().chunk_count(), 3);
    assert!(matches!(
        store.append_shared(&[1u8; 2000]),
        Err(BlobError::StoreFull { max_chunks: 3, .. })
    ));
}
