//! Channel crash matrix: real processes — 2 publishers and 2 subscribers on
//! a broadcast channel, 2 senders and 2 receivers on a work queue — and one
//! of them SIGKILLed at a seeded random moment in each round. Survivors
//! verify every byte and per-producer order as they go; after the round:
//! every surviving subscriber got every message of every surviving
//! publisher (and a gap-free prefix of a killed one's), the queue delivered
//! each message of a surviving sender exactly once (at most one lost, if a
//! receiver was killed holding it), every consumer saw the channel
//! disconnected within seconds, the store's chunks came back to the warm
//! bound after the TTL, and nothing is left in the shm directory.
//!
//! Bounded by default; the long run is
//! `SFB_CHANNEL_CRASH_ROUNDS=100 cargo test --release --test channel_crashes -- --nocapture`,
//! and `SFB_CHANNEL_CRASH_SEED=N` replays one round.

mod common;

use common::{env, payload, say, spawn_peer, Ns, Peer};
use stable_fragmented_buffer::{Config, PinnedBlobStore, RecvTimeoutError};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant};

const ENTRY: &str = "peer_process_entry_point";
const TTL_MS: u64 = 800;

fn config() -> Config {
    Config {
        default_ttl_ms: TTL_MS,
        ..Config::default()
    }
}

/// Not a test of its own: the entry point of peer processes.
#[test]
#[ignore = "not a test: the entry point of this file's peer processes (common::spawn_peer runs it)"]
fn peer_process_entry_point() {
    let Some(role) = common::peer_role() else {
        return;
    };
    match role.as_str() {
        "producer" => producer(),
        "consumer" => consumer(),
        other => panic!("unknown role {other}"),
    }
}

fn message(p: u32, seq: u64) -> Vec<u8> {
    // Inline and through the store (the default ring carries 4 KiB inline).
    const SIZES: [usize; 5] = [16, 700, 4096, 9000, 70_000];
    let len = SIZES[(seq.wrapping_mul(7) % SIZES.len() as u64) as usize];
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&p.to_le_bytes());
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&payload((p as u64) << 40 | seq, len - 12));
    m
}

/// Sends until stdin closes, then reports how many.
fn producer() {
    let store = PinnedBlobStore::attach_shared(config(), &env("SFB_NS")).unwrap();
    let id: u32 = env("SFB_ID").parse().unwrap();
    let queue = env("SFB_QUEUE") == "1";
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = std::sync::Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        s.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    type Send = Box<dyn Fn(&[u8])>;
    let send: Send = if queue {
        let tx = store.sender("q").unwrap();
        Box::new(move |m| tx.send(m).unwrap())
    } else {
        let tx = store.publisher_with("b", common::lossless()).unwrap();
        Box::new(move |m| tx.send(m).unwrap())
    };
    say("ready");
    let mut seq = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        send(&message(id, seq));
        seq += 1;
    }
    drop(send);
    say(format!("sent {seq}"));
}

/// Receives until disconnected, checking every byte and per-producer order;
/// reports what it got per producer.
fn consumer() {
    let store = PinnedBlobStore::attach_shared(config(), &env("SFB_NS")).unwrap();
    let queue = env("SFB_QUEUE") == "1";
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    let mut got: Vec<(u32, u64)> = Vec::new();
    let mut on = |m: &[u8]| {
        let p = u32::from_le_bytes(m[0..4].try_into().unwrap());
        let seq = u64::from_le_bytes(m[4..12].try_into().unwrap());
        assert!(
            m[12..] == payload((p as u64) << 40 | seq, m.len() - 12)[..],
            "wrong bytes: producer {p} message {seq}"
        );
        let n = next.entry(p).or_insert(0);
        if queue {
            assert!(seq >= *n, "producer {p}: {seq} after {n}");
        } else {
            assert_eq!(seq, *n, "producer {p}: lost or reordered");
        }
        *n = seq + 1;
        got.push((p, seq));
        // Reported as it goes: a consumer killed later has told what it got.
        say(format!("m {p} {seq}"));
    };
    type Recv = Box<dyn Fn() -> Result<stable_fragmented_buffer::Message, RecvTimeoutError>>;
    let recv: Recv = if queue {
        let rx = store.receiver("q").unwrap();
        Box::new(move || rx.recv_timeout(Duration::from_millis(100)))
    } else {
        let rx = store.subscriber_with("b", common::lossless()).unwrap();
        Box::new(move || rx.recv_timeout(Duration::from_millis(100)))
    };
    say("ready");
    loop {
        match recv() {
            Ok(m) => on(&m),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    say(format!("end {}", got.len()));
}

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

struct Side {
    producers: Vec<Option<Peer>>,
    consumers: Vec<Option<Peer>>,
}

fn spawn(ns: &Ns, role: &str, queue: bool, id: u32) -> Peer {
    let mut p = spawn_peer(
        ENTRY,
        role,
        &[
            ("SFB_NS", ns.0.clone()),
            ("SFB_QUEUE", if queue { "1" } else { "0" }.into()),
            ("SFB_ID", id.to_string()),
        ],
    );
    p.expect("ready");
    p
}

/// Reads a consumer's report: the (producer, seq) pairs it got. A killed
/// consumer's report ends at its death (EOF).
fn report(c: &mut Peer) -> Vec<(u32, u64)> {
    let mut v = Vec::new();
    loop {
        let Some(l) = c.line() else {
            return v;
        };
        if let Some(n) = l.strip_prefix("end ") {
            assert_eq!(n.parse::<usize>().unwrap(), v.len());
            return v;
        }
        let mut it = l.strip_prefix("m ").unwrap().split(' ');
        v.push((
            it.next().unwrap().parse().unwrap(),
            it.next().unwrap().parse().unwrap(),
        ));
    }
}

fn round(seed: u64, victim: Option<usize>) {
    let ns = Ns::new("chcrash");
    let store = PinnedBlobStore::new_shared(config(), ns.as_str(), 1 << 20).unwrap();
    let mut r = seed | 1;
    let mut sides: Vec<Side> = Vec::new();
    for queue in [false, true] {
        // Consumers first: broadcast subscribers see every message.
        let consumers = (0..2)
            .map(|i| Some(spawn(&ns, "consumer", queue, i)))
            .collect();
        let producers = (0..2)
            .map(|i| Some(spawn(&ns, "producer", queue, i)))
            .collect();
        sides.push(Side {
            producers,
            consumers,
        });
    }
    // One participant (of 8) is killed at a random moment.
    let victim = victim.unwrap_or((rng(&mut r) % 8) as usize) % 8;
    eprintln!("  victim {victim}");
    let (side, kind, idx) = (victim / 4, (victim / 2) % 2, victim % 2);
    std::thread::sleep(Duration::from_millis(50 + rng(&mut r) % 400));
    let mut killed = {
        let list = if kind == 0 {
            &mut sides[side].producers
        } else {
            &mut sides[side].consumers
        };
        let mut p = list[idx].take().unwrap();
        p.kill9();
        Some((side, kind, p))
    };
    // Survivors keep going past the death, then producers stop.
    std::thread::sleep(Duration::from_millis(300));
    let mut sent: Vec<BTreeMap<u32, u64>> = vec![BTreeMap::new(), BTreeMap::new()];
    for (s, side) in sides.iter_mut().enumerate() {
        for (i, p) in side.producers.iter_mut().enumerate() {
            if let Some(p) = p.as_mut() {
                writeln!(p.child.stdin.as_mut().unwrap(), "stop").unwrap();
                let n: u64 = p
                    .line()
                    .unwrap()
                    .strip_prefix("sent ")
                    .unwrap()
                    .parse()
                    .unwrap();
                sent[s].insert(i as u32, n);
            }
        }
    }
    let stopped = Instant::now();
    for (s, side) in sides.iter_mut().enumerate() {
        let queue = s == 1;
        let mut all = Vec::new();
        for c in side.consumers.iter_mut() {
            let Some(c) = c.as_mut() else { continue };
            let got = report(c);
            if !queue {
                // Every message of every surviving publisher; a prefix of a
                // killed one's (the consumer checked it has no gap).
                for (p, n) in &sent[0] {
                    let count = got.iter().filter(|(q, _)| q == p).count() as u64;
                    assert_eq!(
                        count, *n,
                        "seed {seed}: subscriber missed messages of publisher {p}"
                    );
                }
            }
            all.extend(got);
        }
        if queue {
            // What a killed receiver got before it died was delivered too.
            if let Some((1, 1, victim)) = killed.as_mut() {
                all.extend(report(victim));
            }
            let set: HashSet<_> = all.iter().copied().collect();
            assert_eq!(
                set.len(),
                all.len(),
                "seed {seed}: a message reached two receivers"
            );
            let receiver_killed = side.consumers.iter().any(Option::is_none);
            for (p, n) in &sent[1] {
                let count = all.iter().filter(|(q, _)| q == p).count() as u64;
                let lost = n - count.min(*n);
                assert!(count <= *n, "seed {seed}: more than sent");
                if !(lost == 0 || (receiver_killed && lost <= 1)) {
                    let have: HashSet<u64> = all
                        .iter()
                        .filter(|(q, _)| q == p)
                        .map(|&(_, s)| s)
                        .collect();
                    let missing: Vec<u64> = (0..*n).filter(|s| !have.contains(s)).collect();
                    panic!(
                        "seed {seed}: sender {p} sent {n}, receivers got {count}; missing {:?}",
                        &missing[..missing.len().min(40)]
                    );
                }
            }
        }
    }
    assert!(
        stopped.elapsed() < Duration::from_secs(20),
        "seed {seed}: consumers took {:?} to see the channels disconnected",
        stopped.elapsed()
    );
    for side in sides {
        for p in side.producers.into_iter().chain(side.consumers).flatten() {
            p.wait_ok();
        }
    }
    // What a killed participant left (a reservation, a held message) goes
    // by the TTL: the store comes back to its warm bound.
    std::thread::sleep(Duration::from_millis(TTL_MS + 300));
    let t = Instant::now();
    loop {
        store.cleanup_shared();
        let chunks = store.stats().chunks;
        if chunks <= 6 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "seed {seed}: {chunks} chunk files remain after the TTL"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(store);
}

#[test]
fn channel_participants_killed_at_random_moments() {
    let victim = std::env::var("SFB_CHANNEL_CRASH_VICTIM")
        .ok()
        .and_then(|v| v.parse().ok());
    if let Ok(seed) = std::env::var("SFB_CHANNEL_CRASH_SEED") {
        round(seed.parse().unwrap(), victim);
        return;
    }
    let rounds: u64 = std::env::var("SFB_CHANNEL_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(4);
    let base = std::process::id() as u64 * 7919;
    // The first four rounds kill a publisher, a subscriber, a sender and a
    // receiver (victims 0..8: broadcast producers, broadcast consumers,
    // queue producers, queue consumers); later rounds pick at random.
    const KINDS: [usize; 4] = [0, 3, 5, 6];
    for i in 0..rounds {
        let seed = base + i * 104_729;
        let v = KINDS.get(i as usize).copied().or(victim);
        eprintln!(
            "channel crash round {i}: SFB_CHANNEL_CRASH_SEED={seed} SFB_CHANNEL_CRASH_VICTIM={v:?}"
        );
        round(seed, v);
    }
}
