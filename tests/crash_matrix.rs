//! Crash matrix: real processes — a creator (running reclamation), an
//! attached producer and an attached consumer (holding views) — and one of
//! them SIGKILLed at a random moment in each round, with a recorded seed.
//! After each round: every payload a consumer received resolved to exactly
//! the appended bytes or to nothing, no process hung, and after the
//! survivors exit `cleanup_namespace` leaves nothing in the shm directory.
//!
//! Bounded by default (CI); the long run is
//! `SFB_CRASH_ROUNDS=500 cargo test --release --test crash_matrix -- --nocapture`
//! and `SFB_CRASH_SEED=N` replays one round.

mod common;

use common::{env, hex, payload, say, spawn_peer, unhex, Ns, Peer};
use stable_fragmented_buffer::{
    BlobError, BlobStoreLifecycleExt, BlobView, Config, PinnedBlobStore, SharedBackend,
};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENTRY: &str = "peer_process_entry_point";

fn store_config() -> Config {
    Config {
        decay_timeout_ms: 0,
        default_ttl_ms: 1_500,
        ..Config::default()
    }
}

/// Not a test of its own: the entry point of peer processes.
#[test]
fn peer_process_entry_point() {
    let Some(role) = common::peer_role() else {
        return;
    };
    match role.as_str() {
        "creator" => creator(),
        "producer" => producer(),
        "consumer" => consumer(),
        other => panic!("unknown role {other}"),
    }
}

/// Creates the namespace and reclaims every 5 ms until stdin closes.
fn creator() {
    let store = Arc::new(
        PinnedBlobStore::new_shared_with_limit(store_config(), &env("SFB_NS"), 64 << 10, Some(48))
            .unwrap(),
    );
    let _cleaner = store.start_cleanup(Duration::from_millis(5));
    say("ready");
    let mut s = String::new();
    let _ = std::io::stdin().read_line(&mut s);
}

/// Appends seeded payloads and reports each handle until stdin closes.
fn producer() {
    let store = PinnedBlobStore::attach_shared(store_config(), &env("SFB_NS")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        s.store(true, Ordering::Relaxed);
    });
    let base: u64 = env("SFB_SEED").parse().unwrap();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let seed = base.wrapping_mul(1_000_003).wrapping_add(n);
        let len = 1 + (seed as usize).wrapping_mul(7919) % 6000;
        match store.append_shared(&payload(seed, len)) {
            Ok(h) => {
                writeln!(out, "SFB h {} {seed} {len}", hex(&h)).unwrap();
                n += 1;
                if n % 4 == 0 {
                    out.flush().unwrap();
                }
            }
            // Backpressure, or the namespace went away with its creator.
            Err(BlobError::StoreFull { .. }) | Err(BlobError::Closed { .. }) => {
                out.flush().unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("append: {e}"),
        }
    }
    out.flush().unwrap();
}

/// Resolves, verifies and acknowledges handles from stdin, holding some as
/// views for a while; reports counts at EOF.
fn consumer() {
    let store = PinnedBlobStore::attach_shared(store_config(), &env("SFB_NS")).unwrap();
    let (mut ok, mut gone, mut bad) = (0u64, 0u64, 0u64);
    let mut held: Vec<(BlobView, u64, usize)> = Vec::new();
    say("ready");
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let p: Vec<&str> = line.split(' ').collect();
        let (Some(h), Some(seed), Some(len)) = (
            p.first(),
            p.get(1).and_then(|s| s.parse::<u64>().ok()),
            p.get(2).and_then(|s| s.parse::<usize>().ok()),
        ) else {
            continue;
        };
        let h = unhex(h);
        if seed % 2 == 0 {
            match store.resolve(&h) {
                Some(d) if d == payload(seed, len) => ok += 1,
                Some(_) => bad += 1,
                None => gone += 1,
            }
        } else {
            match store.resolve_ref(&h) {
                Some(v) if v[..] == payload(seed, len)[..] => {
                    ok += 1;
                    held.push((v, seed, len));
                }
                Some(_) => bad += 1,
                None => gone += 1,
            }
        }
        store.acknowledge_shared(&h);
        if held.len() > 16 {
            let (v, seed, len) = held.remove(0);
            if v[..] != payload(seed, len)[..] {
                bad += 1;
            }
        }
    }
    for (v, seed, len) in held {
        if v[..] != payload(seed, len)[..] {
            bad += 1;
        }
    }
    say(format!("done {ok} {gone} {bad}"));
}

/// A small deterministic generator (xorshift) for the schedule.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default, Debug)]
struct Totals {
    rounds: u64,
    kills: [u64; 3],
    verified: u64,
    gone: u64,
}

fn start_consumer(ns: &Ns) -> Peer {
    let mut k = spawn_peer(ENTRY, "consumer", &[("SFB_NS", ns.0.clone())]);
    k.expect("ready");
    k
}

/// Relays producer lines to the consumer (the "any channel").
fn relay(from: &mut Peer, to: &mut Peer, budget: Duration) {
    let until = Instant::now() + budget;
    let stdin = to.child.stdin.as_mut().unwrap();
    while Instant::now() < until {
        match from.line_timeout(Duration::from_millis(20)) {
            Some(Some(l)) => {
                // A line cut short by a kill is not forwarded.
                let whole =
                    l.split(' ').count() == 4 && l.split(' ').nth(1).is_some_and(|h| h.len() == 48);
                if let (Some(rest), true) = (l.strip_prefix("h "), whole) {
                    if writeln!(stdin, "{rest}").is_err() {
                        return;
                    }
                }
            }
            Some(None) => return, // producer gone
            None => {}            // nothing yet
        }
    }
}

fn finish_consumer(mut k: Peer, t: &mut Totals, seed: u64) {
    drop(k.child.stdin.take());
    let report = k
        .line()
        .unwrap_or_else(|| panic!("seed {seed}: consumer ended without a report"));
    let v: Vec<u64> = report
        .split(' ')
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(
        v[2], 0,
        "seed {seed}: a consumer saw bytes that were not appended"
    );
    t.verified += v[0];
    t.gone += v[1];
    k.wait_ok();
}

fn round(seed: u64, t: &mut Totals) {
    let ns = Ns::new("crash");
    let mut rng = Rng(seed | 1);
    let mut c = spawn_peer(ENTRY, "creator", &[("SFB_NS", ns.0.clone())]);
    c.expect("ready");
    let mut p = spawn_peer(
        ENTRY,
        "producer",
        &[("SFB_NS", ns.0.clone()), ("SFB_SEED", seed.to_string())],
    );
    let mut k = start_consumer(&ns);
    relay(&mut p, &mut k, Duration::from_millis(50 + rng.next(300)));
    let victim = rng.next(3);
    t.kills[victim as usize] += 1;
    match victim {
        0 => c.kill9(),
        1 => p.kill9(),
        _ => {
            k.kill9();
            k = start_consumer(&ns);
        }
    }
    // The survivors keep working.
    relay(&mut p, &mut k, Duration::from_millis(300));
    if victim != 1 {
        drop(p.child.stdin.take());
        relay(&mut p, &mut k, Duration::from_secs(5));
        p.wait_ok();
    }
    finish_consumer(k, t, seed);
    if victim != 0 {
        drop(c.child.stdin.take());
        c.wait_ok();
    }
    // Whatever the dead left behind goes with the namespace.
    let _ = SharedBackend::cleanup_namespace(ns.as_str())
        .unwrap_or_else(|e| panic!("seed {seed}: cleanup after the round: {e}"));
    assert!(
        ns.files().is_empty(),
        "seed {seed}: files left: {:?}",
        ns.files()
    );
    t.rounds += 1;
}

#[test]
fn crash_matrix_bounded() {
    let rounds: u64 = std::env::var("SFB_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let fixed: Option<u64> = std::env::var("SFB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let base = fixed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let mut t = Totals::default();
    let started = Instant::now();
    for i in 0..if fixed.is_some() { 1 } else { rounds } {
        let seed = base.wrapping_add(i);
        eprintln!("crash round {i} seed {seed}");
        round(seed, &mut t);
    }
    println!(
        "crash matrix: {} rounds in {:.1} s; killed creator {}, producer {}, consumer {}; {} payloads verified byte for byte, {} already reclaimed, 0 wrong",
        t.rounds,
        started.elapsed().as_secs_f64(),
        t.kills[0],
        t.kills[1],
        t.kills[2],
        t.verified,
        t.gone
    );
    assert!(t.verified > 0);
}
