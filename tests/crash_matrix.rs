//! Crash matrix: real processes — a creator (running reclamation), an
//! attached producer (some of its blobs larger than a chunk, so it creates
//! chunk files all the time), an attached consumer (holding views) and an
//! attached reclaimer (running passes back to back) — and one of them
//! SIGKILLed at a random moment in each round, with a recorded seed.
//! After each round: every payload a consumer received resolved to exactly
//! the appended bytes or to nothing, no process hung; then, before anything
//! removes the namespace, reclamation past the TTL brings it back to its
//! steady state — every chunk file registered and every registered chunk a
//! file, no creation or claim left unfinished, no more files than the
//! append target and the warm pool — and `cleanup_namespace` leaves nothing
//! in the shm directory.
//!
//! Bounded by default (CI); the long run is
//! `SFB_CRASH_ROUNDS=500 cargo test --release --test crash_matrix -- --nocapture`
//! and `SFB_CRASH_SEED=N` replays one round.

mod common;

use common::{env, hex, payload, say, spawn_peer, unhex, Ns, Peer};
use stable_fragmented_buffer::hooks::{Point, STOP_AT_ENV};
use stable_fragmented_buffer::inspect::{inspect_namespace, ChunkState};
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
#[ignore = "not a test: the entry point of this file's peer processes (common::spawn_peer runs it)"]
fn peer_process_entry_point() {
    let Some(role) = common::peer_role() else {
        return;
    };
    match role.as_str() {
        "creator" => creator(),
        "producer" => producer(),
        "consumer" => consumer(),
        "reclaimer" => reclaimer(),
        other => panic!("unknown role {other}"),
    }
}

/// Creates the namespace and reclaims every 5 ms until stdin closes.
fn creator() {
    let store = Arc::new(
        PinnedBlobStore::new_shared_with_limit(store_config(), &env("SFB_NS"), 64 << 10, Some(48))
            .unwrap(),
    );
    let _cleaner = store.start_cleanup_thread(Duration::from_millis(5));
    say("ready");
    let mut s = String::new();
    let _ = std::io::stdin().read_line(&mut s);
}

/// A flag raised when stdin gives a line or closes (the parent's stop).
fn stop_on_stdin() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        s.store(true, Ordering::Relaxed);
    });
    stop
}

/// Appends seeded payloads and reports each handle until stdin closes.
fn producer() {
    let store = PinnedBlobStore::attach_shared(store_config(), &env("SFB_NS")).unwrap();
    let stop = stop_on_stdin();
    let base: u64 = env("SFB_SEED").parse().unwrap();
    let big = env("SFB_BIG") == "1";
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut n = 0u64;
    // In "big" rounds every blob is larger than a 64 KiB chunk: a dedicated
    // chunk file is made for each, so a kill often lands inside a creation.
    // Four payloads made once, so that making them takes no time. Otherwise
    // one blob in eight is larger than a chunk.
    let bigs: Vec<(u64, Vec<u8>)> = (0..4u64)
        .map(|i| {
            (
                base ^ i,
                payload(base ^ i, (65 << 10) + (i as usize) * (60 << 10)),
            )
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let mut seed = base.wrapping_mul(1_000_003).wrapping_add(n);
        let made;
        let data = if big {
            let (s, p) = &bigs[n as usize % bigs.len()];
            seed = *s;
            p
        } else {
            let len = if seed % 8 == 3 {
                (64 << 10) + (seed as usize).wrapping_mul(7919) % (200 << 10)
            } else {
                1 + (seed as usize).wrapping_mul(7919) % 6000
            };
            made = payload(seed, len);
            &made
        };
        let len = data.len();
        match store.append_shared(data) {
            Ok(h) => {
                // In big rounds the blobs are acknowledged at once and one
                // in 64 goes to the consumer (which finds it gone or
                // intact), so that neither the store's limit nor the relay
                // holds the producer back: most of its time goes to making
                // chunk files.
                if big {
                    store.acknowledge_shared(&h);
                }
                if !big || n % 64 == 0 {
                    writeln!(out, "SFB h {} {seed} {len}", hex(&h)).unwrap();
                }
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

/// Runs reclamation passes back to back until stdin closes, so a kill is
/// likely to land inside one.
fn reclaimer() {
    let store = PinnedBlobStore::attach_shared(store_config(), &env("SFB_NS")).unwrap();
    let stop = stop_on_stdin();
    say("ready");
    while !stop.load(Ordering::Relaxed) {
        store.cleanup_shared();
    }
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
    /// Seeds from a round's seed, scrambled (splitmix64) so that rounds
    /// with consecutive seeds get unrelated schedules.
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

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
    kills: [u64; 4],
    verified: u64,
    gone: u64,
    /// Kills that left a chunk creation unfinished (seen in the registry
    /// right after the kill).
    creations_cut: u64,
    /// Kills that left a reclamation claim unfinished.
    claims_cut: u64,
    /// Passes the namespace took to settle, summed over rounds.
    settle_passes: u64,
    /// Kills at each named step.
    points: std::collections::BTreeMap<&'static str, u64>,
}

/// The named steps a round can kill a peer at: (step, victim — 1 producer,
/// 3 reclaimer —, whether every blob gets its own chunk file).
const POINTS: [(Point, u64, bool); 7] = [
    (Point::Reserved, 1, false),
    (Point::Committed, 1, false),
    (Point::Activated, 1, false),
    (Point::CreationClaimed, 1, true),
    (Point::CreationSized, 1, true),
    (Point::Claimed, 3, true),
    (Point::Retired, 3, true),
];

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

/// Collects the consumer's report. Outside "big" rounds (where the producer
/// acknowledges its blobs at once) every handle must resolve: nothing in
/// a round waits past the TTL, so none may be gone.
fn finish_consumer(mut k: Peer, t: &mut Totals, seed: u64, big: bool) {
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
    if !big {
        assert_eq!(v[1], 0, "seed {seed}: handles resolved to nothing");
    }
    t.verified += v[0];
    t.gone += v[1];
    k.wait_ok();
}

fn round(seed: u64, t: &mut Totals) {
    let ns = Ns::new("crash");
    let mut rng = Rng::new(seed);
    // Odd seeds stop one peer at a named step and kill it there, cycling
    // through the steps with consecutive seeds; even seeds kill at random.
    let pointed = (seed % 2 == 1).then(|| POINTS[(seed / 2 % POINTS.len() as u64) as usize]);
    let big = match pointed {
        Some((_, _, big)) => big,
        None => rng.next(2) == 1,
    };
    let stop_at = |role: u64| -> Vec<(&str, String)> {
        match pointed {
            Some((point, victim, _)) if victim == role => {
                vec![(STOP_AT_ENV, point.name().to_owned())]
            }
            _ => Vec::new(),
        }
    };
    let mut c = spawn_peer(ENTRY, "creator", &[("SFB_NS", ns.0.clone())]);
    c.expect("ready");
    let mut env = vec![
        ("SFB_NS", ns.0.clone()),
        ("SFB_SEED", seed.to_string()),
        ("SFB_BIG", u8::from(big).to_string()),
    ];
    env.extend(stop_at(1));
    let mut p = spawn_peer(ENTRY, "producer", &env);
    let mut k = start_consumer(&ns);
    let mut env = vec![("SFB_NS", ns.0.clone())];
    env.extend(stop_at(3));
    let mut r = spawn_peer(ENTRY, "reclaimer", &env);
    r.expect("ready");
    let victim = match pointed {
        Some((point, victim, _)) => {
            // Traffic until the victim stops itself at the step.
            let until = Instant::now() + Duration::from_secs(20);
            loop {
                relay(&mut p, &mut k, Duration::from_millis(10));
                let stopped = if victim == 1 {
                    p.is_stopped()
                } else {
                    r.is_stopped()
                };
                if stopped {
                    break;
                }
                assert!(
                    Instant::now() < until,
                    "seed {seed}: no peer reached step {}",
                    point.name()
                );
            }
            *t.points.entry(point.name()).or_default() += 1;
            victim
        }
        None => {
            relay(&mut p, &mut k, Duration::from_millis(50 + rng.next(300)));
            rng.next(4)
        }
    };
    t.kills[victim as usize] += 1;
    match victim {
        0 => c.kill9(),
        1 => p.kill9(),
        2 => {
            k.kill9();
            k = start_consumer(&ns);
        }
        _ => r.kill9(),
    }
    // What the kill interrupted, as the registry and the chunk headers show
    // it (another process may finish the same steps meanwhile, so this
    // undercounts; it is a record, not an assertion).
    if let Ok(report) = inspect_namespace(ns.as_str()) {
        if victim == 1
            && report
                .control
                .as_ref()
                .is_some_and(|c| !c.creating.is_empty())
        {
            t.creations_cut += 1;
        }
        if victim == 3
            && report.chunks.iter().any(|c| {
                c.header
                    .as_ref()
                    .is_some_and(|h| h.state == ChunkState::Reclaiming)
            })
        {
            t.claims_cut += 1;
        }
    }
    // The survivors keep working.
    relay(&mut p, &mut k, Duration::from_millis(300));
    if victim != 1 {
        drop(p.child.stdin.take());
        relay(&mut p, &mut k, Duration::from_secs(5));
        p.wait_ok();
    }
    finish_consumer(k, t, seed, big);
    if victim != 3 {
        drop(r.child.stdin.take());
        r.wait_ok();
    }
    // Before anything removes the namespace: reclamation past the TTL (and
    // the grace period of unfinished claims and creations) settles it.
    t.settle_passes += settle(ns.as_str(), seed);
    if victim != 0 {
        drop(c.child.stdin.take());
        c.wait_ok();
    }
    // Whatever the dead left behind goes with the namespace.
    SharedBackend::cleanup_namespace(ns.as_str())
        .unwrap_or_else(|e| panic!("seed {seed}: cleanup after the round: {e}"));
    assert!(
        ns.files().is_empty(),
        "seed {seed}: files left: {:?}",
        ns.files()
    );
    t.rounds += 1;
}

/// Runs reclamation passes from this process until the namespace is in its
/// steady state (see the module documentation); panics with what is left
/// if it is not within TTL + grace + margin. Returns the passes it took.
fn settle(ns: &str, seed: u64) -> u64 {
    let store = SharedBackend::attach_with_config(ns, &store_config())
        .unwrap_or_else(|e| panic!("seed {seed}: attach to settle: {e}"));
    let deadline = Instant::now() + Duration::from_millis(2 * 1_500 + 3_000);
    let mut passes = 0;
    loop {
        store.reclaim_pass();
        passes += 1;
        let report = inspect_namespace(ns).unwrap();
        let control = report.control.as_ref().expect("control block");
        let files = report.chunks.iter().filter(|c| c.file.is_some()).count();
        let unsettled: Vec<String> = report
            .chunks
            .iter()
            .filter(|c| {
                !c.registered
                    || c.file.is_none()
                    || !c
                        .header
                        .as_ref()
                        .is_some_and(|h| matches!(h.state, ChunkState::Free | ChunkState::InUse))
            })
            .map(|c| format!("{c:?}"))
            .collect();
        let settled = unsettled.is_empty()
            && control.creating.is_empty()
            && control.live_chunks as usize == files
            && files <= 1 + control.pool_capacity as usize;
        if settled {
            return passes;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the namespace did not settle: {files} chunk files, {} counted, creations {:?}, {} pooled of {}; unsettled chunks: {unsettled:#?}",
            control.live_chunks,
            control.creating,
            control.pool.len(),
            control.pool_capacity,
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
        "crash matrix: {} rounds in {:.1} s; killed creator {}, producer {} ({} inside a chunk creation), consumer {}, reclaimer {} ({} inside a claim); {} payloads verified byte for byte, {} already reclaimed, 0 wrong; settled every round before removal ({:.1} passes on average)",
        t.rounds,
        started.elapsed().as_secs_f64(),
        t.kills[0],
        t.kills[1],
        t.creations_cut,
        t.kills[2],
        t.kills[3],
        t.claims_cut,
        t.verified,
        t.gone,
        t.settle_passes as f64 / t.rounds.max(1) as f64
    );
    println!("kills at named steps: {:?}", t.points);
    assert!(t.verified > 0);
    if fixed.is_none() && rounds >= 2 * POINTS.len() as u64 {
        for (point, _, _) in POINTS {
            assert!(
                t.points.get(point.name()).is_some_and(|&n| n > 0),
                "no kill at step {}: {:?}",
                point.name(),
                t.points
            );
        }
    }
}
