//! Soak: two producer processes and two consumer processes, two threads
//! each, at full speed for a bounded time; every payload checksummed;
//! acknowledgements and TTL reclamation both exercised (consumers leave one
//! handle in fifty unacknowledged); `max_chunks` backpressure hit and
//! recovered from. Prints payloads moved, bytes, errors (must be 0), peak
//! and final shm usage (final must be 0 after cleanup).
//!
//! Bounded by default (CI); the long run is
//! `SFB_SOAK_SECS=600 cargo test --release --test soak -- --nocapture`.

mod common;

use common::{env, hex, payload, say, spawn_peer, unhex, Ns, Peer};
use stable_fragmented_buffer::{BlobError, BlobStoreLifecycleExt, Config, PinnedBlobStore};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const ENTRY: &str = "peer_process_entry_point";
const THREADS: u64 = 2;

fn config() -> Config {
    Config {
        decay_timeout_ms: 0,
        // Long enough that consumers slowed by a loaded machine read every
        // handle in time (the bound on handles gone relies on it), short
        // enough that the never-acknowledged ones expire many times a run.
        default_ttl_ms: 1_000,
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
        "channel-producer" => channel_producer(),
        "channel-consumer" => channel_consumer(),
        other => panic!("unknown role {other}"),
    }
}

fn producer() {
    let store = Arc::new(PinnedBlobStore::attach_shared(config(), &env("SFB_NS")).unwrap());
    let id: u64 = env("SFB_ID").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let full = Arc::new(AtomicU64::new(0));
    let out = Arc::new(Mutex::new(std::io::BufWriter::new(std::io::stdout())));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, stop, full, out) = (
                Arc::clone(&store),
                Arc::clone(&stop),
                Arc::clone(&full),
                Arc::clone(&out),
            );
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let seed = (id << 48) | (t << 40) | n;
                    let len = 1 + (seed.wrapping_mul(2_654_435_761) % 20_000) as usize;
                    match store.append_shared(&payload(seed, len)) {
                        Ok(h) => {
                            let mut o = out.lock().unwrap();
                            writeln!(o, "SFB h {} {seed} {len}", hex(&h)).unwrap();
                            n += 1;
                        }
                        Err(BlobError::StoreFull { .. }) => {
                            full.fetch_add(1, Ordering::Relaxed);
                            out.lock().unwrap().flush().unwrap();
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) => panic!("append: {e}"),
                    }
                }
                n
            })
        })
        .collect();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    out.lock().unwrap().flush().unwrap();
    say(format!("produced {sent} {}", full.load(Ordering::Relaxed)));
}

fn consumer() {
    let store = Arc::new(PinnedBlobStore::attach_shared(config(), &env("SFB_NS")).unwrap());
    let (tx, rx) = mpsc::channel::<String>();
    let rx = Arc::new(Mutex::new(rx));
    let totals = Arc::new([
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ]);
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (store, rx, totals) = (Arc::clone(&store), Arc::clone(&rx), Arc::clone(&totals));
            std::thread::spawn(move || loop {
                let Ok(line) = rx.lock().unwrap().recv() else {
                    return;
                };
                let p: Vec<&str> = line.split(' ').collect();
                let (h, seed, len) = (
                    unhex(p[0]),
                    p[1].parse::<u64>().unwrap(),
                    p[2].parse::<usize>().unwrap(),
                );
                match store.resolve_ref(&h) {
                    Some(v) if v[..] == payload(seed, len)[..] => {
                        totals[0].fetch_add(1, Ordering::Relaxed);
                        totals[3].fetch_add(len as u64, Ordering::Relaxed);
                    }
                    Some(_) => {
                        totals[2].fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        totals[1].fetch_add(1, Ordering::Relaxed);
                    }
                }
                // One in fifty is never acknowledged: the TTL reclaims those.
                if seed % 50 != 0 {
                    store.acknowledge_shared(&h);
                }
            })
        })
        .collect();
    say("ready");
    for line in std::io::stdin().lock().lines() {
        tx.send(line.unwrap()).unwrap();
    }
    drop(tx);
    for w in workers {
        w.join().unwrap();
    }
    let l = |i: usize| totals[i].load(Ordering::Relaxed);
    say(format!("consumed {} {} {} {}", l(0), l(1), l(2), l(3)));
}

/// Bytes the namespace's files hold on tmpfs.
fn shm_bytes(ns: &Ns) -> u64 {
    use std::os::unix::fs::MetadataExt;
    ns.files()
        .iter()
        .filter_map(|f| std::fs::metadata(common::shm_dir().join(f)).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

#[test]
fn soak_bounded() {
    let secs: u64 = std::env::var("SFB_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let ns = Ns::new("soak");
    let store = Arc::new(
        PinnedBlobStore::new_shared_with_limit(config(), ns.as_str(), 256 << 10, Some(24)).unwrap(),
    );
    let cleaner = store.start_cleanup_thread(Duration::from_millis(5));
    let mut consumers: Vec<Peer> = (0..2)
        .map(|_| spawn_peer(ENTRY, "consumer", &[("SFB_NS", ns.0.clone())]))
        .collect();
    for c in &mut consumers {
        c.expect("ready");
    }
    let mut producers: Vec<Peer> = (0..2u64)
        .map(|i| {
            spawn_peer(
                ENTRY,
                "producer",
                &[("SFB_NS", ns.0.clone()), ("SFB_ID", i.to_string())],
            )
        })
        .collect();
    let started = Instant::now();
    let mut peak = 0u64;
    let mut next = 0usize;
    let mut relay =
        |producers: &mut Vec<Peer>, consumers: &mut Vec<Peer>, until: Option<Instant>| {
            let mut open = producers.len();
            while open > 0 && until.is_none_or(|u| Instant::now() < u) {
                open = 0;
                for p in producers.iter_mut() {
                    for _ in 0..256 {
                        match p.line_timeout(Duration::from_millis(1)) {
                            Some(Some(l)) => {
                                open += 1;
                                if let Some(rest) = l.strip_prefix("h ") {
                                    let c = &mut consumers[next % 2];
                                    next += 1;
                                    writeln!(c.child.stdin.as_mut().unwrap(), "{rest}").unwrap();
                                } else if let Some(rest) = l.strip_prefix("produced ") {
                                    return Some(rest.to_owned());
                                }
                            }
                            Some(None) => break,
                            None => {
                                open += 1;
                                break;
                            }
                        }
                    }
                }
            }
            None
        };
    while started.elapsed() < Duration::from_secs(secs) {
        relay(
            &mut producers,
            &mut consumers,
            Some(Instant::now() + Duration::from_millis(50)),
        );
        peak = peak.max(shm_bytes(&ns));
    }
    // Stop the producers and drain everything they said.
    let mut produced = 0u64;
    let mut full_waits = 0u64;
    for p in producers.iter_mut() {
        drop(p.child.stdin.take());
    }
    for i in 0..producers.len() {
        let mut one = vec![producers.remove(0)];
        let report = relay(
            &mut one,
            &mut consumers,
            Some(Instant::now() + Duration::from_secs(30)),
        )
        .unwrap_or_else(|| panic!("producer {i} hung"));
        let v: Vec<u64> = report.split(' ').map(|x| x.parse().unwrap()).collect();
        produced += v[0];
        full_waits += v[1];
        one.remove(0).wait_ok();
    }
    let (mut ok, mut gone, mut bad, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    for mut c in consumers {
        drop(c.child.stdin.take());
        let r = c.line().expect("consumer report");
        let v: Vec<u64> = r.split(' ').skip(1).map(|x| x.parse().unwrap()).collect();
        (ok, gone, bad, bytes) = (ok + v[0], gone + v[1], bad + v[2], bytes + v[3]);
        c.wait_ok();
    }
    cleaner.stop();
    let elapsed = started.elapsed().as_secs_f64();
    let stats = store.stats();
    drop(store);
    let final_bytes = shm_bytes(&ns);
    println!(
        "soak: {elapsed:.1} s, 2 producers x {THREADS} threads, 2 consumers x {THREADS} threads: {produced} payloads produced, {ok} verified ({:.1} MB), {gone} reclaimed by TTL before they were read, {bad} errors; store full {full_waits} times (backpressure hit and recovered); chunks recycled {}, unlinked {}, reclaimed by TTL {}; shm peak {:.1} MB, final {final_bytes} B",
        bytes as f64 / 1e6,
        stats.recycled,
        stats.retired,
        stats.expired,
        peak as f64 / 1e6
    );
    assert!(stats.expired > 0, "the TTL path was exercised");
    assert_eq!(bad, 0, "wrong bytes");
    assert_eq!(ok + gone, produced, "every produced handle was consumed");
    // Only a chunk holding an entry the test left unacknowledged (one in
    // fifty) expires, and only a handle not yet read when its chunk
    // expired is gone: far fewer than the unacknowledged ones.
    assert!(
        gone <= produced / 50,
        "{gone} of {produced} handles were gone before they were read"
    );
    assert!(ok > 0);
    assert_eq!(final_bytes, 0);
    assert!(
        // 24 chunks of 256 KiB, and the 33 KiB control block in pages.
        peak <= (24 * 256 + 36) << 10,
        "peak {peak} B: max_chunks bounds the memory"
    );
}

// ---------------------------------------------------------------- channels

/// The soak's rings: 256 slots of 4 KiB inline, so its messages travel
/// both ways (the default ring carries up to 1 MiB inline).
fn soak_ring() -> stable_fragmented_buffer::ChannelConfig {
    stable_fragmented_buffer::ChannelConfig::for_messages(4096, 256)
}

/// Message `seq` of thread `t` of producer `p`: 16 B to 20 KB (inline in
/// the soak's rings up to 4 KiB, through the store above), its first 16
/// bytes saying whose it is, the rest derived from that.
fn channel_message(p: u64, t: u64, seq: u64) -> Vec<u8> {
    let key = (p << 48) | (t << 40) | seq;
    let len = 16 + (key.wrapping_mul(2_654_435_761) % 20_000) as usize;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&key.to_le_bytes());
    m.extend_from_slice(&(len as u64).to_le_bytes());
    m.extend_from_slice(&payload(key, len - 16));
    m
}

/// A 64-bit mix of a message key: summed over what was received, it
/// proves (with the counts) that each message arrived exactly once.
fn mix(key: u64) -> u64 {
    let mut x = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A publisher or sender process: THREADS threads share one endpoint and
/// send until stdin closes; reports each thread's count.
fn channel_producer() {
    let store = PinnedBlobStore::attach_shared(config(), &env("SFB_NS")).unwrap();
    let id: u64 = env("SFB_ID").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    type Send = Arc<dyn Fn(&[u8]) + std::marker::Send + Sync>;
    let send: Send = if env("SFB_QUEUE") == "1" {
        let tx = store.sender_with("q", soak_ring()).unwrap();
        Arc::new(move |m| tx.send(m).unwrap())
    } else {
        let tx = store
            .publisher_with(
                "b",
                soak_ring().overflow(stable_fragmented_buffer::Overflow::Block),
            )
            .unwrap();
        Arc::new(move |m| tx.send(m).unwrap())
    };
    say("ready");
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (send, stop) = (Arc::clone(&send), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    send(&channel_message(id, t, n));
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    stop.store(true, Ordering::Relaxed);
    let counts: Vec<String> = workers
        .into_iter()
        .map(|w| w.join().unwrap().to_string())
        .collect();
    drop(send);
    say(format!("sent {}", counts.join(" ")));
}

/// A subscriber or receiver process: THREADS threads share one endpoint
/// and receive until disconnected, checking every byte and, per receiving
/// thread, each source's order; reports count, bytes and the mix sum, and
/// (subscribers) the count per source.
fn channel_consumer() {
    let store = PinnedBlobStore::attach_shared(config(), &env("SFB_NS")).unwrap();
    let queue = env("SFB_QUEUE") == "1";
    type Recv = Arc<
        dyn Fn() -> Result<stable_fragmented_buffer::Message, stable_fragmented_buffer::RecvError>
            + std::marker::Send
            + Sync,
    >;
    let recv: Recv = if queue {
        let rx = store.receiver_with("q", soak_ring()).unwrap();
        Arc::new(move || rx.recv())
    } else {
        let rx = store
            .subscriber_with(
                "b",
                soak_ring().overflow(stable_fragmented_buffer::Overflow::Block),
            )
            .unwrap();
        Arc::new(move || rx.recv())
    };
    say("ready");
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let recv = Arc::clone(&recv);
            std::thread::spawn(move || {
                let mut last: std::collections::HashMap<u64, u64> = Default::default();
                let (mut count, mut bytes, mut sum) = (0u64, 0u64, 0u64);
                let mut per_source: std::collections::BTreeMap<u64, u64> = Default::default();
                loop {
                    let m = match recv() {
                        Ok(m) => m,
                        Err(stable_fragmented_buffer::RecvError::Disconnected) => break,
                        Err(e) => panic!("{e}"),
                    };
                    let key = u64::from_le_bytes(m[0..8].try_into().unwrap());
                    let len = u64::from_le_bytes(m[8..16].try_into().unwrap()) as usize;
                    assert_eq!(m.len(), len, "message {key:#x}: wrong length");
                    assert!(
                        m[16..] == payload(key, len - 16)[..],
                        "message {key:#x}: wrong bytes"
                    );
                    let (source, seq) = (key >> 40, key & ((1 << 40) - 1));
                    if let Some(&prev) = last.get(&source) {
                        assert!(seq > prev, "source {source:#x}: {seq} after {prev}");
                    }
                    last.insert(source, seq);
                    *per_source.entry(source).or_insert(0) += 1;
                    count += 1;
                    bytes += len as u64;
                    sum = sum.wrapping_add(mix(key));
                }
                (count, bytes, sum, per_source)
            })
        })
        .collect();
    let (mut count, mut bytes, mut sum) = (0u64, 0u64, 0u64);
    let mut per_source: std::collections::BTreeMap<u64, u64> = Default::default();
    for w in workers {
        let (c, b, s, p) = w.join().unwrap();
        (count, bytes, sum) = (count + c, bytes + b, sum.wrapping_add(s));
        for (k, v) in p {
            *per_source.entry(k).or_insert(0) += v;
        }
    }
    let sources: Vec<String> = per_source.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    say(format!("got {count} {bytes} {sum} {}", sources.join(",")));
}

#[test]
fn soak_channels_bounded() {
    let secs: u64 = std::env::var("SFB_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let ns = Ns::new("soakch");
    // The default configuration (a 30 s TTL: nothing expires in a ring).
    let store = Arc::new(
        PinnedBlobStore::new_shared_with_limit(Config::default(), ns.as_str(), 256 << 10, Some(24))
            .unwrap(),
    );
    let cleaner = store.start_cleanup_thread(Duration::from_millis(5));
    let spawn = |role: &str, queue: bool, id: u64| {
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
    };
    // Consumers first, so subscribers see everything published.
    let mut consumers: Vec<(bool, Peer)> = Vec::new();
    let mut producers: Vec<(bool, u64, Peer)> = Vec::new();
    for queue in [false, true] {
        for i in 0..2 {
            consumers.push((queue, spawn("channel-consumer", queue, i)));
        }
    }
    for queue in [false, true] {
        for i in 0..2u64 {
            producers.push((queue, i, spawn("channel-producer", queue, i)));
        }
    }
    let started = Instant::now();
    let mut peak = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(50));
        peak = peak.max(shm_bytes(&ns));
    }
    // Stop the producers; what each source sent, and the mix sum of it.
    let mut sent: [std::collections::BTreeMap<u64, u64>; 2] = Default::default();
    for (queue, id, p) in producers.iter_mut() {
        writeln!(p.child.stdin.as_mut().unwrap(), "stop").unwrap();
        let l = p.line().unwrap();
        for (t, n) in l.strip_prefix("sent ").unwrap().split(' ').enumerate() {
            sent[usize::from(*queue)].insert((*id << 8) | t as u64, n.parse().unwrap());
        }
    }
    let expected = |queue: bool| -> (u64, u64) {
        let mut count = 0u64;
        let mut sum = 0u64;
        for (&source, &n) in &sent[usize::from(queue)] {
            count += n;
            for seq in 0..n {
                sum = sum.wrapping_add(mix((source << 40) | seq));
            }
        }
        (count, sum)
    };
    let (mut queue_count, mut queue_sum, mut moved, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    for (queue, mut c) in consumers {
        let l = c.line().expect("consumer report");
        let v: Vec<&str> = l.strip_prefix("got ").unwrap().split(' ').collect();
        let (count, b, sum): (u64, u64, u64) = (
            v[0].parse().unwrap(),
            v[1].parse().unwrap(),
            v[2].parse().unwrap(),
        );
        moved += count;
        bytes += b;
        if queue {
            queue_count += count;
            queue_sum = queue_sum.wrapping_add(sum);
        } else {
            // Every subscriber got every message of every publisher thread.
            assert_eq!(
                (count, sum),
                expected(false),
                "a subscriber missed messages"
            );
        }
        c.wait_ok();
    }
    assert_eq!(
        (queue_count, queue_sum),
        expected(true),
        "the queue delivered each message exactly once"
    );
    for (_, _, p) in producers {
        p.wait_ok();
    }
    cleaner.stop();
    let elapsed = started.elapsed().as_secs_f64();
    let stats = store.stats();
    drop(store);
    let final_bytes = shm_bytes(&ns);
    println!(
        "channel soak: {elapsed:.1} s, 2 publishers + 2 senders x {THREADS} threads, 2 subscribers + 2 receivers x {THREADS} threads: {moved} messages received and verified ({:.1} MB), 0 errors; chunks recycled {}, unlinked {}; shm peak {:.1} MB, final {final_bytes} B",
        bytes as f64 / 1e6,
        stats.recycled,
        stats.retired,
        peak as f64 / 1e6
    );
    assert!(moved > 0);
    assert_eq!(final_bytes, 0);
    // Store chunks within max_chunks, plus the two channel files.
    assert!(
        peak <= ((24 * 256 + 36) << 10) + 2 * (2 << 20),
        "peak {peak} B: max_chunks and the rings bound the memory"
    );
}
