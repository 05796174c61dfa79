//! Channels (broadcast and work queue) between real processes: this test
//! binary re-executes itself as publishers, subscribers, senders and
//! receivers through `peer_process_entry_point`.

mod common;

use common::{env, monotonic_ns, payload, say, spawn_peer, Ns, Peer};
use stable_fragmented_buffer::{
    BlobError, ChannelConfig, Config, PinnedBlobStore, RecvError, RecvTimeoutError, SendError,
    TryRecvError, TrySendError,
};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

const ENTRY: &str = "peer_process_entry_point";
const CHUNK: usize = 1 << 20;

/// Not a test of its own: the entry point of peer processes. Without
/// `SFB_PEER_ROLE` (a normal test run) it has nothing to do.
#[test]
#[ignore = "not a test: the entry point of this file's peer processes (common::spawn_peer runs it)"]
fn peer_process_entry_point() {
    let Some(role) = common::peer_role() else {
        return;
    };
    match role.as_str() {
        "publisher" => role_producer(false),
        "sender" => role_producer(true),
        "subscriber" => role_consumer(false),
        "receiver" => role_consumer(true),
        "idle-receiver" => role_idle_receiver(),
        "hold" => role_hold(),
        "creator" => role_creator(),
        "abandon" => role_abandon(),
        other => panic!("unknown role {other}"),
    }
}

/// A message of `len` bytes (at least 12) from producer `p`, number `seq`:
/// its first 12 bytes say who and which, the rest is derived from them.
fn message(p: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&p.to_le_bytes());
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&payload((p as u64) << 40 | seq, len - 12));
    m
}

/// Checks every byte of a received message; returns (producer, seq).
fn check(m: &[u8]) -> (u32, u64) {
    assert!(m.len() >= 12, "short message of {} bytes", m.len());
    let p = u32::from_le_bytes(m[0..4].try_into().unwrap());
    let seq = u64::from_le_bytes(m[4..12].try_into().unwrap());
    assert!(
        m[12..] == payload((p as u64) << 40 | seq, m.len() - 12)[..],
        "wrong bytes in message {seq} of producer {p}"
    );
    (p, seq)
}

/// Sizes that cross the default inline capacity (4096) and the chunk size.
fn size_of(seq: u64) -> usize {
    const SIZES: [usize; 7] = [12, 64, 4096, 4097, 9000, 70_000, CHUNK + 1000];
    SIZES[(seq % SIZES.len() as u64) as usize]
}

fn attach() -> PinnedBlobStore {
    PinnedBlobStore::attach_shared(Config::default(), &env("SFB_NS")).unwrap()
}

/// Sends SFB_COUNT messages as producer SFB_ID, then says "done".
fn role_producer(queue: bool) {
    let store = attach();
    let id: u32 = env("SFB_ID").parse().unwrap();
    let count: u64 = env("SFB_COUNT").parse().unwrap();
    let name = env("SFB_CHAN");
    if queue {
        let tx = store.sender(&name).unwrap();
        say("ready");
        for seq in 0..count {
            tx.send(&message(id, seq, size_of(seq))).unwrap();
        }
        if std::env::var("SFB_LINGER").is_ok() {
            say("done");
            std::thread::sleep(Duration::from_secs(600));
        }
    } else {
        let tx = store.publisher_with(&name, common::lossless()).unwrap();
        say("ready");
        // Wait for the go (every subscriber is subscribed).
        let mut s = String::new();
        std::io::stdin().read_line(&mut s).unwrap();
        for seq in 0..count {
            tx.send(&message(id, seq, size_of(seq))).unwrap();
        }
    }
    say("done");
    if std::env::var("SFB_LINGER").is_ok() {
        // Stay alive (producer registered) until killed.
        std::thread::sleep(Duration::from_secs(600));
    }
}

/// Receives until disconnected, checking every byte and per-producer
/// order; reports "got N" and each producer's count.
fn role_consumer(queue: bool) {
    let store = attach();
    let name = env("SFB_CHAN");
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    let mut seen = Vec::new();
    let mut on = |m: &[u8]| {
        let (p, seq) = check(m);
        let n = next.entry(p).or_insert(0);
        if queue {
            assert!(seq >= *n, "producer {p}: {seq} after {n}");
        } else {
            assert_eq!(seq, *n, "producer {p}: lost or reordered");
        }
        *n = seq + 1;
        seen.push((p, seq));
    };
    if queue {
        let rx = store.receiver(&name).unwrap();
        say("ready");
        for m in rx.iter() {
            on(&m);
        }
    } else {
        let rx = store.subscriber_with(&name, common::lossless()).unwrap();
        say("ready");
        for m in rx.iter() {
            on(&m);
        }
    }
    say(format!("got {}", seen.len()));
    for (p, seq) in seen {
        say(format!("m {p} {seq}"));
    }
    say("end");
}

/// Blocks in `recv` on a channel whose producer stays alive and silent.
fn role_idle_receiver() {
    let store = attach();
    let rx = store.receiver(&env("SFB_CHAN")).unwrap();
    say("ready");
    // Each message carries the monotonic time it was sent at: report how
    // long after that this receiver had it.
    for _ in 0..WAKE_ROUNDS {
        let m = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let sent = u64::from_le_bytes(m[..8].try_into().unwrap());
        say(format!(
            "woke {}",
            monotonic_ns().saturating_sub(sent) / 1000
        ));
    }
}

/// Sends the idle receiver makes of waking up.
const WAKE_ROUNDS: usize = 6;

/// Subscribes (or receives), takes SFB_TAKE messages, holds them, says
/// "holding", and waits to be killed.
fn role_hold() {
    let store = attach();
    let name = env("SFB_CHAN");
    let take: usize = env("SFB_TAKE").parse().unwrap();
    let queue = env("SFB_QUEUE") == "1";
    let mut held = Vec::new();
    if queue {
        let rx = store.receiver(&name).unwrap();
        say("ready");
        while held.len() < take {
            held.push(rx.recv().unwrap());
        }
        say("holding");
        std::thread::sleep(Duration::from_secs(600));
    } else {
        let rx = store.subscriber(&name).unwrap();
        say("ready");
        while held.len() < take {
            held.push(rx.recv().unwrap());
        }
        say("holding");
        std::thread::sleep(Duration::from_secs(600));
    }
}

fn peer(role: &str, ns: &Ns, chan: &str, extra: &[(&str, String)]) -> Peer {
    let mut env = vec![("SFB_NS", ns.0.clone()), ("SFB_CHAN", chan.to_owned())];
    env.extend(extra.iter().cloned());
    spawn_peer(ENTRY, role, &env)
}

/// A ring of 4 KiB inline slots, for tests of messages through the store
/// (the default ring carries up to 1 MiB inline).
fn four_k() -> ChannelConfig {
    ChannelConfig::for_messages(4096, 256)
}

fn shared(ns: &Ns) -> PinnedBlobStore {
    PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK).unwrap()
}

/// Collects a consumer peer's report: the (producer, seq) pairs it got.
fn report(c: &mut Peer) -> Vec<(u32, u64)> {
    let got: usize = c
        .line()
        .unwrap()
        .strip_prefix("got ")
        .unwrap()
        .parse()
        .unwrap();
    let mut v = Vec::with_capacity(got);
    loop {
        let l = c.line().unwrap();
        if l == "end" {
            break;
        }
        let mut it = l.strip_prefix("m ").unwrap().split(' ');
        v.push((
            it.next().unwrap().parse().unwrap(),
            it.next().unwrap().parse().unwrap(),
        ));
    }
    assert_eq!(v.len(), got);
    v
}

#[test]
fn every_size_from_empty_to_more_than_a_chunk_arrives_whole() {
    let ns = Ns::new("chsizes");
    let store = shared(&ns);
    let rx = store.subscriber_with("sizes", common::lossless()).unwrap();
    let tx = store.publisher_with("sizes", common::lossless()).unwrap();
    let cap = tx.inline_capacity();
    assert_eq!(cap, ChannelConfig::default().inline_capacity());
    let sizes = [
        0,
        1,
        2,
        63,
        cap - 1,
        cap,
        cap + 1,
        4096,
        65_536,
        CHUNK,
        CHUNK + 1,
    ];
    for (i, &len) in sizes.iter().enumerate() {
        let data = payload(i as u64, len);
        tx.send(&data).unwrap();
        let m = rx.recv().unwrap();
        assert_eq!(&*m, &data[..], "size {len}");
        assert_eq!(m.is_overflow(), len > cap, "size {len}: inline iff it fits");
    }
}

#[test]
fn broadcast_n_publishers_m_subscribers_across_processes_lose_nothing() {
    let ns = Ns::new("chbcast");
    let _store = shared(&ns);
    let count = 300u64;
    let mut subs: Vec<Peer> = (0..2).map(|_| peer("subscriber", &ns, "b", &[])).collect();
    for s in &mut subs {
        s.expect("ready");
    }
    let mut pubs: Vec<Peer> = (0..2)
        .map(|i| {
            peer(
                "publisher",
                &ns,
                "b",
                &[("SFB_ID", i.to_string()), ("SFB_COUNT", count.to_string())],
            )
        })
        .collect();
    for p in &mut pubs {
        p.expect("ready");
    }
    for p in &mut pubs {
        use std::io::Write;
        writeln!(p.child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    for p in pubs {
        let mut p = p;
        p.expect("done");
        p.wait_ok();
    }
    for mut s in subs {
        let got = report(&mut s);
        // Every subscriber got every message of every publisher, once.
        let set: HashSet<_> = got.iter().copied().collect();
        assert_eq!(set.len(), got.len(), "duplicates");
        assert_eq!(got.len() as u64, 2 * count);
        s.wait_ok();
    }
}

#[test]
fn queue_n_senders_m_receivers_across_processes_deliver_each_message_once() {
    let ns = Ns::new("chqueue");
    let _store = shared(&ns);
    let count = 300u64;
    let mut rxs: Vec<Peer> = (0..3).map(|_| peer("receiver", &ns, "q", &[])).collect();
    for r in &mut rxs {
        r.expect("ready");
    }
    let txs: Vec<Peer> = (0..2)
        .map(|i| {
            peer(
                "sender",
                &ns,
                "q",
                &[("SFB_ID", i.to_string()), ("SFB_COUNT", count.to_string())],
            )
        })
        .collect();
    for t in txs {
        let mut t = t;
        t.expect("ready");
        t.expect("done");
        t.wait_ok();
    }
    let mut all = Vec::new();
    for mut r in rxs {
        all.extend(report(&mut r));
        r.wait_ok();
    }
    let set: HashSet<_> = all.iter().copied().collect();
    assert_eq!(set.len(), all.len(), "a message reached two receivers");
    assert_eq!(all.len() as u64, 2 * count, "a message was lost");
}

#[test]
fn recv_returns_disconnected_within_a_second_after_the_producer_is_killed() {
    let ns = Ns::new("chdisc");
    let store = shared(&ns);
    let rx = store.receiver("d").unwrap();
    let mut tx = peer(
        "sender",
        &ns,
        "d",
        &[
            ("SFB_ID", "0".into()),
            ("SFB_COUNT", "5".into()),
            ("SFB_LINGER", "1".into()),
        ],
    );
    tx.expect("ready");
    tx.expect("done");
    // Still registered as a producer: kill it.
    tx.kill9();
    for seq in 0..5 {
        let m = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(check(&m), (0, seq));
    }
    let t = Instant::now();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(3)).unwrap_err(),
        RecvTimeoutError::Disconnected
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(rx.recv().unwrap_err(), RecvError::Disconnected);
    assert!(rx.iter().next().is_none());
    // A producer that appears later reconnects the channel.
    let tx2 = store.sender("d").unwrap();
    tx2.send(b"again").unwrap();
    assert_eq!(&*rx.recv().unwrap(), b"again");
    drop(tx2);
    assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Disconnected);
}

#[test]
fn dropping_the_last_producer_wakes_a_blocked_receiver() {
    let ns = Ns::new("chdrop");
    let store = shared(&ns);
    // The receiver sleeps on the futex for up to a tick (100 ms) between
    // its looks; the producer's drop is 10 ms into that sleep. Woken, it
    // returns within a few ms; only at its tick, about 90 ms later. A
    // descheduled guest may delay one trial: four of five must be quick.
    let quick = (0..5)
        .filter(|trial| {
            let name = format!("w{trial}");
            let rx = store.subscriber_with(&name, common::lossless()).unwrap();
            let tx = store.publisher_with(&name, common::lossless()).unwrap();
            let t = std::thread::spawn(move || {
                let r = rx.recv();
                (r.map(|m| m.to_vec()), Instant::now())
            });
            std::thread::sleep(Duration::from_millis(10));
            let dropped = Instant::now();
            drop(tx);
            let (r, returned) = t.join().unwrap();
            assert_eq!(r.unwrap_err(), RecvError::Disconnected);
            returned.duration_since(dropped) < Duration::from_millis(40)
        })
        .count();
    assert!(
        quick >= 4,
        "only {quick} of 5 receivers were woken by the drop"
    );
}

#[test]
fn a_receiver_never_connected_waits_instead_of_reporting_disconnection() {
    let ns = Ns::new("chnever");
    let store = shared(&ns);
    let rx = store.receiver("n").unwrap();
    assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(150)).unwrap_err(),
        RecvTimeoutError::Timeout
    );
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_blocked_receiver_sleeps_in_the_kernel() {
    let ns = Ns::new("chidle");
    let store = shared(&ns);
    let tx = store.sender("i").unwrap();
    let mut rx = peer("idle-receiver", &ns, "i", &[]);
    rx.expect("ready");
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(rx.child.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(rx.child.id()) - before;
    // 2 s is 200 ticks at 100 Hz: a spinning receiver burns ~200.
    assert!(used <= 4, "idle receiver used {used} ticks in 2 s");
    // And a send wakes it at once: not at its next look, a tick (100 ms)
    // after it went to sleep. Each send comes about 10 ms into a sleep;
    // one trial delayed by the guest is allowed.
    let mut quick = 0;
    for _ in 0..WAKE_ROUNDS {
        std::thread::sleep(Duration::from_millis(10));
        tx.send(&monotonic_ns().to_le_bytes()).unwrap();
        let line = rx.line().unwrap();
        let us: u64 = line.strip_prefix("woke ").unwrap().parse().unwrap();
        quick += usize::from(us < 30_000);
    }
    assert!(
        quick + 1 >= WAKE_ROUNDS,
        "only {quick} of {WAKE_ROUNDS} sends woke it at once"
    );
}

#[test]
fn a_killed_subscriber_stops_gating_publishers_and_its_entries_are_acknowledged() {
    let ns = Ns::new("chdeadsub");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 64 << 10).unwrap();
    let small = ChannelConfig {
        slots: 4,
        slot_size: 128,
        ..common::lossless()
    };
    let tx = store.publisher_with("g", small).unwrap();
    let mut sub = peer(
        "hold",
        &ns,
        "g",
        &[("SFB_TAKE", "2".into()), ("SFB_QUEUE", "0".into())],
    );
    sub.expect("ready");
    // Each message (8 KiB) goes through the store; the subscriber holds 2.
    for i in 0..2 {
        tx.send(&payload(i, 8192)).unwrap();
    }
    sub.expect("holding");
    // Held messages keep their own slots; four unread ones fill the ring.
    for i in 2..6 {
        tx.send(&payload(i, 8192)).unwrap();
    }
    assert!(
        matches!(tx.try_send(&payload(9, 8192)), Err(TrySendError::Full)),
        "a live subscriber that has not read a ring's worth fills it (Block)"
    );
    sub.kill9();
    // Sends go through again once the dead subscriber is evicted.
    let t = Instant::now();
    for i in 6..40 {
        while let Err(e) = tx.try_send(&payload(i, 8192)) {
            assert!(matches!(e, TrySendError::Full), "{e}");
            assert!(t.elapsed() < Duration::from_secs(5), "still full after 5 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Its entries (and the rest, with no subscriber left) were
    // acknowledged: the store reclaims down to its warm chunks.
    drop(tx);
    store.cleanup_shared();
    let st = store.stats();
    // Everything but the append target is back in the warm pool (or
    // gone): a chunk with an entry nobody acknowledged would stay.
    let live = st.chunks - st.pooled;
    assert!(live <= 1, "{live} chunks still held: {st:?}");
}

#[test]
fn a_queue_receiver_killed_holding_messages_loses_them_at_most_once() {
    let ns = Ns::new("chdeadrx");
    let store = shared(&ns);
    let tx = store.sender("q").unwrap();
    let mut dead = peer(
        "hold",
        &ns,
        "q",
        &[("SFB_TAKE", "3".into()), ("SFB_QUEUE", "1".into())],
    );
    dead.expect("ready");
    for seq in 0..3 {
        tx.send(&message(0, seq, 5000)).unwrap();
    }
    dead.expect("holding");
    dead.kill9();
    let rx = store.receiver("q").unwrap();
    for seq in 3..10 {
        tx.send(&message(0, seq, 5000)).unwrap();
    }
    // The survivor gets exactly the messages the dead one never took.
    for seq in 3..10 {
        assert_eq!(check(&rx.recv().unwrap()), (0, seq));
    }
    assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
}

#[test]
fn a_message_outlives_its_killed_producer_unchanged() {
    let ns = Ns::new("choutlive");
    let store = shared(&ns);
    let rx = store.subscriber_with("o", common::lossless()).unwrap();
    let mut tx = peer(
        "publisher",
        &ns,
        "o",
        &[
            ("SFB_ID", "7".into()),
            ("SFB_COUNT", "7".into()),
            ("SFB_LINGER", "1".into()),
        ],
    );
    tx.expect("ready");
    {
        use std::io::Write;
        writeln!(tx.child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    tx.expect("done");
    tx.kill9();
    let held: Vec<_> = (0..7).map(|_| rx.recv().unwrap()).collect();
    // Churn the store and the ring from this process meanwhile.
    let tx2 = store.publisher_with("o", common::lossless()).unwrap();
    let rx2 = store.subscriber_with("o", common::lossless()).unwrap();
    for i in 0..50 {
        tx2.send(&payload(i, 100_000)).unwrap();
        drop(rx2.recv().unwrap());
        store.cleanup_shared();
    }
    for (seq, m) in held.iter().enumerate() {
        assert_eq!(check(m), (7, seq as u64));
    }
}

/// On the defaults a message up to 1 MiB travels inline, a larger one
/// through the store; and a stream of large messages cycles through a few
/// slots a consumer has just let go of (still in cache), not through the
/// whole ring: the channel file backs a handful of 256 KiB slots after 200
/// messages, where taking each entry's own slot would back 200 of them
/// (50 MiB).
#[test]
fn large_messages_on_the_defaults_travel_inline_through_a_few_warm_slots() {
    use std::os::unix::fs::MetadataExt;
    let ns = Ns::new("chwarm");
    let store = shared(&ns);
    let rx = store.subscriber("w").unwrap();
    let tx = store.publisher("w").unwrap();
    for (len, overflow) in [(1 << 20, false), ((1 << 20) + 1, true)] {
        tx.send(&payload(len as u64, len)).unwrap();
        let m = rx.recv().unwrap();
        assert_eq!(m.is_overflow(), overflow, "{len}");
        assert_eq!(&*m, &payload(len as u64, len)[..]);
    }
    let file = common::shm_dir().join(format!("{}_chan+w", ns.as_str()));
    let backed = || std::fs::metadata(&file).unwrap().blocks() * 512;
    let before = backed();
    for i in 0..200u64 {
        tx.send(&payload(i, 256 << 10)).unwrap();
        let m = rx.recv().unwrap();
        assert!(!m.is_overflow());
        assert_eq!(&*m, &payload(i, 256 << 10)[..]);
    }
    let grown = backed() - before;
    assert!(
        grown <= 8 * (256 << 10),
        "200 messages of 256 KiB backed {grown} more bytes of the channel file"
    );
}

/// A message published while a blocked receiver is between announcing
/// itself as a sleeper and sleeping (the hook point `Parking`) is seen by
/// its readiness check: the receive returns at once, not at its next
/// liveness tick (100 ms). Both kinds, with no spin.
#[test]
fn a_message_published_as_a_receiver_goes_to_sleep_is_received_at_once() {
    use stable_fragmented_buffer::hooks::{self, Point};
    for queue in [false, true] {
        let ns = Ns::new("chparking");
        let store = shared(&ns);
        let cfg = ChannelConfig::default().spin(Duration::ZERO);
        type Recv = Box<dyn Fn() -> Result<Vec<u8>, RecvTimeoutError>>;
        let (tx, recv): (_, Recv) = if queue {
            let rx = store.receiver_with("p", cfg).unwrap();
            let tx = std::sync::Arc::new(store.sender("p").unwrap());
            let t = std::sync::Arc::clone(&tx);
            (
                Box::new(move |d: &[u8]| t.send(d).unwrap()) as Box<dyn Fn(&[u8])>,
                Box::new(move || rx.recv_timeout(Duration::from_secs(2)).map(|m| m.to_vec())),
            )
        } else {
            let rx = store.subscriber_with("p", cfg).unwrap();
            let tx = store.publisher("p").unwrap();
            (
                Box::new(move |d: &[u8]| tx.send(d).unwrap()) as Box<dyn Fn(&[u8])>,
                Box::new(move || rx.recv_timeout(Duration::from_secs(2)).map(|m| m.to_vec())),
            )
        };
        let tx = std::rc::Rc::new(tx);
        for round in 0..5u8 {
            let (t, mut sent) = (std::rc::Rc::clone(&tx), false);
            hooks::set(move |p| {
                if p == Point::Parking && !sent {
                    sent = true;
                    t(&[round]);
                }
            });
            let started = Instant::now();
            let got = recv();
            let took = started.elapsed();
            hooks::clear();
            assert_eq!(got.unwrap(), vec![round], "queue={queue}");
            assert!(
                took < Duration::from_millis(50),
                "queue={queue} round {round}: received after {took:?}"
            );
        }
    }
}

/// A message whose store entry expired (its chunk reclaimed past the TTL)
/// while it waited in the ring is reported `Expired` and counted, by the
/// subscriber and in the channel's report.
#[test]
fn a_message_expired_in_the_store_is_reported_and_counted() {
    let ns = Ns::new("chexpired");
    let store = PinnedBlobStore::new_shared(common::cfg(0, 200), ns.as_str(), 1 << 20).unwrap();
    let rx = store.subscriber_with("e", four_k()).unwrap();
    let tx = store.publisher_with("e", four_k()).unwrap();
    tx.send(&payload(1, 10_000)).unwrap(); // through the store
    tx.send(b"inline, after it").unwrap();
    assert_eq!(rx.expired(), 0);
    // Past the TTL, the chunk is sealed and reclaimed under the message.
    std::thread::sleep(Duration::from_millis(300));
    store.append_shared(&vec![0u8; (1 << 20) - 4096]).unwrap(); // rolls over: seals
    std::thread::sleep(Duration::from_millis(300));
    store.cleanup_shared();
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Expired)));
    assert_eq!(rx.expired(), 1);
    assert_eq!(&*rx.try_recv().unwrap(), b"inline, after it");
    let report = stable_fragmented_buffer::inspect::inspect_namespace(ns.as_str()).unwrap();
    let ch = report.channels.iter().find(|c| c.name == "e").unwrap();
    assert_eq!(ch.expired, 1);
}

#[test]
fn loans_publish_in_place_and_unsent_loans_give_their_space_back() {
    let ns = Ns::new("chloan");
    let store = shared(&ns);
    let rx = store.receiver_with("l", four_k()).unwrap();
    let tx = store.sender_with("l", four_k()).unwrap();
    let mut loan = tx.loan(10_000).unwrap();
    loan.copy_from_slice(&payload(3, 10_000));
    loan.send().unwrap();
    let m = rx.recv().unwrap();
    assert!(m.is_overflow());
    assert_eq!(&*m, &payload(3, 10_000)[..]);
    drop(m);
    // Unsent loans are discarded: the stream of them never fills the store
    // (decay 0: a fully acknowledged chunk is reusable at once).
    let bounded = PinnedBlobStore::new_shared_with_limit(
        common::cfg(0, 30_000),
        &format!("{}-b", ns.as_str()),
        64 << 10,
        Some(3),
    )
    .unwrap();
    let tx = bounded.sender_with("l", four_k()).unwrap();
    for _ in 0..200 {
        let mut l = tx.loan(30_000).unwrap();
        l[0] = 1;
        drop(l);
        bounded.cleanup_shared();
    }
    // Loans that fit a slot are slots of the ring, an empty one too.
    let rx = bounded.receiver_with("l", four_k()).unwrap();
    for len in [0, 100, 4096] {
        let mut l = tx.loan(len).unwrap();
        assert!(l.is_inline(), "{len}");
        l.copy_from_slice(&payload(len as u64, len));
        l.send().unwrap();
        let m = rx.recv().unwrap();
        assert!(!m.is_overflow());
        assert_eq!(&*m, &payload(len as u64, len)[..]);
    }
    // Unsent inline loans give their slot back: a stream of them never
    // runs the pool dry.
    for _ in 0..5_000 {
        drop(tx.loan(64).unwrap());
    }
    assert!(!tx.loan(4097).unwrap().is_inline());
    drop(rx);
    drop(tx);
    drop(bounded);
    assert!(common::files_of(&format!("{}-b", ns.as_str())).is_empty());
}

#[test]
fn append_shared_with_writes_in_place() {
    let ns = Ns::new("chappendwith");
    let store = shared(&ns);
    let h = store
        .append_shared_with(5000, |b| b.copy_from_slice(&payload(5, 5000)))
        .unwrap();
    assert_eq!(store.resolve(&h).unwrap(), payload(5, 5000));
    let heap = PinnedBlobStore::with_defaults().unwrap();
    assert!(matches!(
        heap.append_shared_with(10, |_| {}),
        Err(BlobError::WrongMode { .. })
    ));
}

#[test]
fn opening_a_name_as_the_other_kind_or_in_heap_mode_is_a_clear_error() {
    let ns = Ns::new("chkind");
    let store = shared(&ns);
    let _p = store.publisher_with("x", common::lossless()).unwrap();
    assert!(matches!(
        store.receiver("x"),
        Err(BlobError::ChannelKind { .. })
    ));
    assert!(matches!(
        store.sender("x"),
        Err(BlobError::ChannelKind { .. })
    ));
    assert!(matches!(
        store.publisher_with("a/b", common::lossless()),
        Err(BlobError::InvalidChannel { .. })
    ));
    assert!(matches!(
        store.publisher_with(
            "y",
            ChannelConfig {
                slots: 3,
                slot_size: 64,
                ..ChannelConfig::default()
            }
        ),
        Err(BlobError::InvalidConfig { .. })
    ));
    let heap = PinnedBlobStore::with_defaults().unwrap();
    assert!(matches!(
        heap.subscriber("x"),
        Err(BlobError::WrongMode { .. })
    ));
}

#[test]
fn hostile_channel_files_are_typed_errors_on_open() {
    let ns = Ns::new("chhostile");
    let store = shared(&ns);
    let path = common::shm_dir().join(format!("{}_chan+h", ns.as_str()));
    drop(store.publisher_with("h", common::lossless()).unwrap());
    let good = std::fs::read(&path).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated", good[..100].to_vec()),
        ("short ring", good[..good.len() - 64].to_vec()),
        ("foreign magic", {
            let mut b = good.clone();
            b[0] ^= 0xff;
            b
        }),
        ("bad slots", {
            let mut b = good.clone();
            b[16..20].copy_from_slice(&3u32.to_le_bytes());
            b
        }),
        ("huge slots", {
            let mut b = good.clone();
            b[16..20].copy_from_slice(&(1u32 << 30).to_le_bytes());
            b
        }),
        ("bad kind", {
            let mut b = good.clone();
            b[12..16].copy_from_slice(&9u32.to_le_bytes());
            b
        }),
        ("other incarnation", {
            let mut b = good.clone();
            b[24] ^= 1;
            b
        }),
    ];
    for (what, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        for r in [
            store.publisher_with("h", common::lossless()).err(),
            store.subscriber_with("h", common::lossless()).err(),
        ] {
            match r {
                Some(BlobError::Corrupt { .. }) | Some(BlobError::IncompatibleFormat { .. }) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_scribbled_ring_never_hangs_or_panics_a_receiver() {
    // Three scribbles (never the 64-byte identity): everything, the header
    // words only, the ring and the slots only. Each leaves a different mix
    // of waits, errors and deliveries.
    let mut all = BTreeMap::<String, usize>::new();
    for (tag, from, to) in [
        ("all", 64, usize::MAX),
        ("header", 64, 1024),
        ("ring", 5120, usize::MAX),
    ] {
        let ns = Ns::new(&format!("chscribble-{tag}"));
        let store = shared(&ns);
        let path = common::shm_dir().join(format!("{}_chan+s", ns.as_str()));
        let rx = store.receiver("s").unwrap();
        let tx = store.sender("s").unwrap();
        for i in 0..20 {
            tx.send(&payload(i, if i % 2 == 0 { 100 } else { 5000 }))
                .unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let to = to.min(bytes.len());
        for (i, b) in bytes.iter_mut().enumerate().take(to).skip(from) {
            *b = (i as u8).wrapping_mul(31) ^ 0x5a;
        }
        std::fs::write(&path, &bytes).unwrap();
        // A watchdog: the calls run in a thread that must finish (a panic
        // in it fails the join), and every result is one the API documents.
        let (done, finished) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let mut outcomes = BTreeMap::<String, usize>::new();
            for _ in 0..30 {
                let r = match rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(m) => format!("recv ok {}", m.len().min(1)),
                    Err(e) => format!("recv {e:?}"),
                };
                *outcomes.entry(r).or_default() += 1;
                let s = match tx.try_send(b"x") {
                    Ok(()) => "send ok".to_owned(),
                    Err(TrySendError::Full) => "send full".to_owned(),
                    Err(TrySendError::Send(SendError::Store(BlobError::Corrupt { .. }))) => {
                        "send corrupt".to_owned()
                    }
                    Err(e) => panic!("an undocumented send error on a scribbled ring: {e}"),
                };
                *outcomes.entry(s).or_default() += 1;
            }
            let _ = done.send(());
            outcomes
        });
        if finished.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("a receiver or sender hung on a ring scribbled over its {tag}");
        }
        let outcomes = worker.join().expect("a call panicked on a scribbled ring");
        assert_eq!(outcomes.values().sum::<usize>(), 60, "{outcomes:?}");
        for (k, v) in outcomes {
            *all.entry(k).or_default() += v;
        }
    }
    // The scribbles did reach the paths they are meant to: some calls
    // waited out their timeout, some were refused.
    assert!(all.contains_key("recv Timeout"), "{all:?}");
    assert!(
        all.keys().any(|k| k == "send corrupt" || k == "send full"),
        "{all:?}"
    );
}

#[test]
fn channel_files_go_with_the_namespace() {
    let ns = Ns::new("chclean");
    {
        let store = shared(&ns);
        let _a = store.publisher_with("a", common::lossless()).unwrap();
        let _b = store.receiver("b").unwrap();
        assert_eq!(
            ns.files().iter().filter(|f| f.contains("_chan+")).count(),
            2
        );
    }
    // The creator's drop removed them.
    assert!(ns.files().is_empty(), "{:?}", ns.files());
    // cleanup_namespace removes those of a creator killed with SIGKILL.
    let mut creator = spawn_peer(ENTRY, "creator", &[("SFB_NS", ns.0.clone())]);
    creator.expect("ready");
    assert!(ns.files().iter().any(|f| f.ends_with("_chan+c")));
    creator.kill9();
    let removed = stable_fragmented_buffer::SharedBackend::remove_namespace(ns.as_str()).unwrap();
    assert!(removed >= 3, "removed {removed}");
    assert!(ns.files().is_empty(), "{:?}", ns.files());
}

/// Creates the namespace and a work queue "c" with one message in it,
/// then waits to be killed.
fn role_creator() {
    let store = PinnedBlobStore::new_shared(Config::default(), &env("SFB_NS"), CHUNK).unwrap();
    let tx = store.sender("c").unwrap();
    tx.send(&payload(1, 10_000)).unwrap();
    say("ready");
    std::thread::sleep(Duration::from_secs(600));
}

/// Opens a publisher (or sender), claims a slot as if killed right after
/// the claim, says "claimed", and waits to be killed.
fn role_abandon() {
    let store = attach();
    let name = env("SFB_CHAN");
    let claimed = if env("SFB_QUEUE") == "1" {
        store.sender(&name).unwrap().claim_and_abandon_for_tests()
    } else {
        // The test made the channel: adopt its geometry and policy.
        let p = store.publisher(&name).unwrap();
        let c = p.claim_and_abandon_for_tests();
        std::mem::forget(p);
        c
    };
    assert!(claimed);
    say("claimed");
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_producer_killed_after_its_claim_wedges_nothing() {
    let ns = Ns::new("chabandon");
    let store = shared(&ns);
    let small = ChannelConfig {
        slots: 4,
        slot_size: 128,
        ..common::lossless()
    };
    // With a subscriber: it receives everything after the dead slot.
    // (The live publisher registers first, so the dead one's record is
    // not simply reused and repaired by a newcomer.)
    let sub = store.subscriber_with("a", small).unwrap();
    let tx = store.publisher("a").unwrap();
    let mut dead = peer("abandon", &ns, "a", &[("SFB_QUEUE", "0".into())]);
    dead.expect("claimed");
    dead.kill9();
    let t = Instant::now();
    for i in 0..20u8 {
        while let Err(e) = tx.try_send(&[i; 10]) {
            assert!(matches!(e, TrySendError::Full), "{e}");
            // The subscriber drains what it can; the dead slot blocks it
            // until the producer is found dead.
            while let Ok(m) = sub.try_recv() {
                drop(m);
            }
            assert!(t.elapsed() < Duration::from_secs(5), "wedged");
        }
        let m = sub.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(&*m, &[i; 10]);
    }
    // Without any subscriber: a lone publisher gets past the dead slot too.
    let tx = store.publisher_with("b", small).unwrap();
    let mut dead = peer("abandon", &ns, "b", &[("SFB_QUEUE", "0".into())]);
    dead.expect("claimed");
    dead.kill9();
    let t = Instant::now();
    for i in 0..20u8 {
        while tx.try_send(&[i; 10]).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "a lone publisher is wedged"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn a_blocking_send_on_a_full_store_evicts_a_killed_subscriber() {
    let ns = Ns::new("chstorefull");
    // Four 256 KiB chunks: a subscriber holding two 100 KiB messages and
    // never releasing them keeps the store full.
    let store = PinnedBlobStore::new_shared_with_limit(
        common::cfg(0, 60_000),
        ns.as_str(),
        256 << 10,
        Some(4),
    )
    .unwrap();
    let tx = store.publisher_with("f", common::lossless()).unwrap();
    let mut sub = peer(
        "hold",
        &ns,
        "f",
        &[("SFB_TAKE", "2".into()), ("SFB_QUEUE", "0".into())],
    );
    sub.expect("ready");
    for i in 0..2 {
        tx.send(&payload(i, 100_000)).unwrap();
    }
    sub.expect("holding");
    sub.kill9();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&done);
    let sender = std::thread::spawn(move || {
        for i in 2..40 {
            tx.send(&payload(i, 100_000)).unwrap();
        }
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let t = Instant::now();
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the blocking send waits for a dead subscriber"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    sender.join().unwrap();
}

#[test]
fn a_receiver_killed_while_asleep_leaves_no_waiter_bit_behind() {
    let ns = Ns::new("chwaiter");
    let store = shared(&ns);
    let path = common::shm_dir().join(format!("{}_chan+w", ns.as_str()));
    let tx = store.sender("w").unwrap();
    let mut rx = peer("idle-receiver", &ns, "w", &[]);
    rx.expect("ready");
    // The header word only (the file is the default ring's, hundreds of
    // MiB of address space: reading it whole took seconds under load).
    let waiters = || {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 4];
        std::fs::File::open(&path)
            .unwrap()
            .read_exact_at(&mut b, 260)
            .unwrap();
        u32::from_le_bytes(b)
    };
    let t = Instant::now();
    while waiters() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the receiver never slept"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    rx.kill9();
    // Sends look for dead waiters at most once per liveness tick.
    let t = Instant::now();
    while waiters() != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the dead receiver's bit stays"
        );
        tx.send(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_send_makes_no_wake_call_while_no_consumer_sleeps() {
    let ns = Ns::new("chnosyscall");
    let store = shared(&ns);
    let path = common::shm_dir().join(format!("{}_chan+n", ns.as_str()));
    let rx = store.subscriber_with("n", common::lossless()).unwrap();
    let tx = store.publisher_with("n", common::lossless()).unwrap();
    // The futex word a sender bumps (and wakes) only when a consumer sleeps.
    let data_seq = || {
        let b = std::fs::read(&path).unwrap();
        u32::from_le_bytes(b[256..260].try_into().unwrap())
    };
    let before = data_seq();
    for i in 0..2_000u32 {
        tx.send(&i.to_le_bytes()).unwrap();
        // A busy-polling consumer never announces itself as asleep.
        loop {
            match rx.try_recv() {
                Ok(m) => {
                    assert_eq!(&*m, &i.to_le_bytes());
                    break;
                }
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(
        data_seq(),
        before,
        "a send woke nobody, so made no system call"
    );
    // A consumer asleep in recv is woken by the next send.
    let t = std::thread::spawn(move || rx.recv().map(|m| m.to_vec()));
    std::thread::sleep(Duration::from_millis(300));
    tx.send(b"wake").unwrap();
    assert_eq!(t.join().unwrap().unwrap(), b"wake");
    assert_ne!(data_seq(), before);
}

#[test]
fn a_queue_message_acknowledges_its_entry_when_dropped_even_behind_a_held_one() {
    let ns = Ns::new("chackdrop");
    let store = shared(&ns);
    let a = store.receiver_with("a", four_k()).unwrap();
    let b = store.receiver_with("a", four_k()).unwrap();
    let tx = store.sender_with("a", four_k()).unwrap();
    tx.send(&payload(1, 10_000)).unwrap();
    tx.send(&payload(2, 10_000)).unwrap();
    let acknowledged = || -> u32 {
        stable_fragmented_buffer::inspect::inspect_namespace(ns.as_str())
            .unwrap()
            .chunks
            .iter()
            .filter_map(|c| c.header.as_ref())
            .map(|h| h.acknowledged)
            .sum()
    };
    let held = a.recv().unwrap(); // message 0, held
    let m = b.recv().unwrap();
    assert_eq!(&*m, &payload(2, 10_000)[..]);
    assert_eq!(acknowledged(), 0);
    drop(m);
    assert_eq!(acknowledged(), 1, "dropped: acknowledged at once");
    drop(held);
    assert_eq!(acknowledged(), 2);
}

#[test]
fn endpoints_are_send_and_sync_and_messages_are_send() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<stable_fragmented_buffer::Publisher>();
    send_sync::<stable_fragmented_buffer::Subscriber>();
    send_sync::<stable_fragmented_buffer::Sender>();
    send_sync::<stable_fragmented_buffer::Receiver>();
    send_sync::<stable_fragmented_buffer::Message>();
    send_sync::<stable_fragmented_buffer::Loan>();
    // And used so: one receiver shared by threads, messages moved across.
    let ns = Ns::new("chsendsync");
    let store = shared(&ns);
    let rx = std::sync::Arc::new(store.receiver("s").unwrap());
    let tx = store.sender("s").unwrap();
    for i in 0..8u8 {
        tx.send(&[i; 5000]).unwrap();
    }
    let got: Vec<stable_fragmented_buffer::Message> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let rx = std::sync::Arc::clone(&rx);
                s.spawn(move || (0..4).map(|_| rx.recv().unwrap()).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut firsts: Vec<u8> = got.iter().map(|m| m[0]).collect();
    firsts.sort_unstable();
    assert_eq!(firsts, (0..8).collect::<Vec<u8>>());
}

/// A message names the producer record that published it: two publishers
/// of one channel are told apart (a bridge drops what its own imports put
/// in), and `record()` is what the message says.
#[test]
fn a_message_names_the_producer_record_that_published_it() {
    let ns = Ns::new("chrecord");
    let store = shared(&ns);
    let sub = store.subscriber("r").unwrap();
    let (a, b) = (store.publisher("r").unwrap(), store.publisher("r").unwrap());
    assert_ne!(a.record(), b.record());
    a.send(b"a").unwrap();
    b.send(b"b").unwrap();
    a.send(b"a").unwrap();
    for want in [&a, &b, &a] {
        let m = sub.recv().unwrap();
        assert_eq!(m.producer_record(), Some(want.record()), "{:?}", &*m);
    }
}
