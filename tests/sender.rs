//! The sender's side: bounded sends and loans, one "full" for the ring and
//! the store, a broadcast nobody subscribes to, geometry that must match,
//! what endpoints report (len, capacity, subscribers, lag, memory bound),
//! the spin before sleeping, the closing rule and waiting for a namespace.
//! Consumers and late producers are real processes (this binary re-executes
//! itself through `peer_process_entry_point`), stopped with SIGSTOP and
//! killed with SIGKILL where the behaviour depends on it.

mod common;

use common::{env, payload, say, spawn_peer, thread_cpu_ns, thread_runnable_ns, Ns, Peer};
use stable_fragmented_buffer::{
    BlobError, ChannelConfig, Config, Overflow, PinnedBlobStore, RecvError, RecvTimeoutError,
    SendError, SendTimeoutError, TryRecvError, TrySendError,
};
use std::time::{Duration, Instant};

const ENTRY: &str = "peer_process_entry_point";

/// Not a test of its own: the entry point of peer processes. Without
/// `SFB_PEER_ROLE` (a normal test run) it has nothing to do.
#[test]
#[ignore = "not a test: the entry point of this file's peer processes (common::spawn_peer runs it)"]
fn peer_process_entry_point() {
    let Some(role) = common::peer_role() else {
        return;
    };
    match role.as_str() {
        "subscriber" => role_subscriber(),
        "creator" => role_creator(),
        "late-publisher" => role_late_publisher(),
        "waiter" => role_waiter(),
        other => panic!("unknown role {other}"),
    }
}

/// The configuration a test and its peers share, from a name.
fn config(which: &str) -> ChannelConfig {
    match which {
        // Four slots of 200 bytes inline: larger messages go to the store.
        "block" => ChannelConfig::for_messages(200, 4).overflow(Overflow::Block),
        "drop" => ChannelConfig::for_messages(200, 4).overflow(Overflow::DropOldest),
        "default" => ChannelConfig::default(),
        other => panic!("unknown config {other}"),
    }
}

fn attach() -> PinnedBlobStore {
    PinnedBlobStore::attach_shared(Config::default(), &env("SFB_NS")).unwrap()
}

fn peer(role: &str, ns: &Ns, cfg: &str) -> Peer {
    spawn_peer(
        ENTRY,
        role,
        &[
            ("SFB_NS", ns.0.clone()),
            ("SFB_CHAN", "c".to_owned()),
            ("SFB_CFG", cfg.to_owned()),
        ],
    )
}

/// Subscribes, says "ready", and on a line on stdin receives until
/// disconnected, checking every byte; reports "got <n> expired <e>".
fn role_subscriber() {
    let store = attach();
    let rx = store
        .subscriber_with(&env("SFB_CHAN"), config(&env("SFB_CFG")))
        .unwrap();
    say("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let (mut got, mut expired) = (0u64, 0u64);
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(m) => {
                let seq = u64::from_le_bytes(m[..8].try_into().unwrap());
                assert!(*m == message(seq, m.len())[..], "bytes of {seq}");
                got += 1;
            }
            Err(RecvTimeoutError::Expired) => expired += 1,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    say(format!("got {got} expired {expired}"));
}

/// Creates the namespace and a channel with the plain opener (default
/// geometry) and keeps both until a line on stdin.
fn role_creator() {
    let store = PinnedBlobStore::new_shared(Config::default(), &env("SFB_NS"), 1 << 20).unwrap();
    let tx = store.publisher(&env("SFB_CHAN")).unwrap();
    let q = store.sender("q").unwrap();
    say("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    drop((tx, q));
}

/// Attaches and opens a publisher, says "ready"; on a line on stdin sends
/// once and reports "sent" or "closed" (the namespace was removed).
fn role_late_publisher() {
    let store = attach();
    let tx = store.publisher(&env("SFB_CHAN")).unwrap();
    say("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    match tx.send(b"after the close") {
        Ok(()) => say("sent"),
        Err(SendError::Store(BlobError::Closed { .. })) => say("closed"),
        Err(e) => panic!("{e}"),
    }
}

/// Waits for the namespace to appear, then receives one message and
/// reports it.
fn role_waiter() {
    say("waiting");
    let store =
        PinnedBlobStore::attach_shared_wait(Config::default(), &env("SFB_NS"), PEER_WAIT).unwrap();
    let rx = store.receiver(&env("SFB_CHAN")).unwrap();
    say("attached");
    let m = rx.recv().unwrap();
    say(format!("got {}", String::from_utf8_lossy(&m)));
}

const PEER_WAIT: Duration = Duration::from_secs(30);

/// Message `seq` of `len` bytes (at least 8): its sequence, then bytes
/// derived from it.
fn message(seq: u64, len: usize) -> Vec<u8> {
    let mut m = payload(seq, len);
    m[..8].copy_from_slice(&seq.to_le_bytes());
    m
}

/// A stopped subscriber of a `Block` channel holds the ring full: a send
/// with a timeout returns `Timeout` (not before the timeout, and not much
/// after), `try_send` says `Full`, the reason names the stopped process, and
/// the same publisher sends again once it runs. Nothing the subscriber had
/// not read is lost.
#[test]
fn a_send_with_a_timeout_is_bounded_while_a_stopped_subscriber_holds_the_ring() {
    let ns = Ns::new("sendto");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 1 << 20).unwrap();
    let tx = store.publisher_with("c", config("block")).unwrap();
    let mut sub = peer("subscriber", &ns, "block");
    sub.expect("ready");
    assert_eq!(tx.subscriber_count(), 1);
    assert_eq!(tx.capacity(), 4);
    sub.signal(libc::SIGSTOP);
    for seq in 0..4 {
        tx.send(&message(seq, 100)).unwrap();
    }
    assert_eq!(tx.len(), 4);
    assert!(tx.full_reason().is_none(), "nothing was full yet");
    for timeout in [
        Duration::ZERO,
        Duration::from_millis(30),
        Duration::from_millis(250),
    ] {
        let t = Instant::now();
        match tx.send_timeout(&message(4, 100), timeout) {
            Err(SendTimeoutError::Timeout) => {}
            other => panic!("{other:?}"),
        }
        let took = t.elapsed();
        assert!(
            took >= timeout,
            "gave up after {took:?}, before {timeout:?}"
        );
        assert!(took < timeout + Duration::from_secs(2), "{took:?}");
    }
    assert!(matches!(
        tx.try_send(&message(4, 100)),
        Err(TrySendError::Full)
    ));
    let why = tx.full_reason().unwrap();
    let pid = sub.child.id().to_string();
    assert!(why.contains("ring") && why.contains(&pid), "{why}");
    // A loan with a timeout: the slot is there (the pool has spares), the
    // entry is not.
    let mut loan = tx.loan_timeout(100, Duration::from_millis(20)).unwrap();
    loan.copy_from_slice(&message(4, 100));
    assert!(matches!(
        loan.send_timeout(Duration::from_millis(20)),
        Err(SendTimeoutError::Timeout)
    ));
    sub.signal(libc::SIGCONT);
    sub.go();
    tx.send_timeout(&message(4, 100), Duration::from_secs(30))
        .unwrap();
    let mut loan = tx.try_loan(100).or_else(|_| tx.loan(100)).unwrap();
    loan.copy_from_slice(&message(5, 100));
    loan.send_timeout(Duration::from_secs(30)).unwrap();
    drop(tx);
    assert_eq!(sub.line().as_deref(), Some("got 6 expired 0"));
    sub.wait_ok();
}

/// A full store is `Full` to `try_send` like a full ring (never
/// `Send(Store(StoreFull))`), a timeout to `send_timeout`; a subscriber
/// killed holding the store's messages is evicted by the sender itself,
/// which then sends.
#[test]
fn a_full_store_is_full_and_a_killed_holder_is_evicted_by_the_sender() {
    let ns = Ns::new("storefull");
    // Two chunks of 1 MiB, and a ring of four: messages of 600 KiB (one
    // to a chunk) fill the store before the ring.
    let store = PinnedBlobStore::new_shared_with_limit(
        common::cfg(0, 600_000),
        ns.as_str(),
        1 << 20,
        Some(2),
    )
    .unwrap();
    let tx = store.publisher_with("c", config("block")).unwrap();
    let mut sub = peer("subscriber", &ns, "block");
    sub.expect("ready");
    let big = |seq| message(seq, 600 << 10);
    let mut sent = 0u64;
    let full = loop {
        match tx.try_send(&big(sent)) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 10, "the store never filled");
    };
    assert!(matches!(full, TrySendError::Full), "{full:?}");
    assert!(sent < 4, "the ring filled first: {sent}");
    let why = tx.full_reason().unwrap();
    assert!(why.contains("store"), "{why}");
    let t = Instant::now();
    assert!(matches!(
        tx.send_timeout(&big(sent), Duration::from_millis(150)),
        Err(SendTimeoutError::Timeout)
    ));
    assert!(t.elapsed() >= Duration::from_millis(150));
    sub.kill9();
    // The sender looks for dead participants once per 100 ms tick: within
    // a few, the dead subscriber is evicted and its messages released.
    let t = Instant::now();
    tx.send_timeout(&big(sent), Duration::from_secs(20))
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(20));
    // And try_send goes on working once room was made.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tx.try_send(&big(sent + 1)).is_err() {
        assert!(Instant::now() < deadline, "{:?}", tx.full_reason());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A broadcast with no subscriber keeps nothing: each message is released
/// when sent, so the store does not grow and a late subscriber receives
/// only what is sent after it subscribed.
#[test]
fn a_broadcast_with_no_subscriber_releases_each_message_at_once() {
    let ns = Ns::new("unheard");
    let store = PinnedBlobStore::new_shared(common::cfg(0, 600_000), ns.as_str(), 1 << 20).unwrap();
    let tx = store.publisher_with("c", config("block")).unwrap();
    let chunk_files = || {
        ns.files()
            .iter()
            .filter(|f| !f.contains("chan") && !f.ends_with("_ctrl"))
            .count()
    };
    for seq in 0..64 {
        // 300 KiB: through the store, three to a chunk.
        tx.send(&message(seq, 300 << 10)).unwrap();
        assert_eq!(tx.len(), 0, "message {seq} is held for nobody");
        store.cleanup_shared();
        assert!(chunk_files() <= 3, "{:?}", ns.files());
    }
    let mut sub = peer("subscriber", &ns, "block");
    sub.expect("ready");
    sub.go();
    for seq in 100..103 {
        tx.send(&message(seq, 300 << 10)).unwrap();
    }
    drop(tx);
    assert_eq!(sub.line().as_deref(), Some("got 3 expired 0"));
    sub.wait_ok();
}

/// A `_with` opener that asks for another geometry or policy than the
/// existing channel's is an error naming both; the plain opener adopts
/// what exists; the same config opens.
#[test]
fn a_with_opener_that_differs_is_refused_and_the_plain_one_adopts() {
    let ns = Ns::new("mismatch");
    let mut creator = peer("creator", &ns, "default");
    creator.expect("ready");
    let store = PinnedBlobStore::attach_shared(Config::default(), ns.as_str()).unwrap();
    match store.publisher_with("c", ChannelConfig::for_messages(2 << 20, 8)) {
        Err(e @ BlobError::ChannelMismatch { .. }) => {
            let text = e.to_string();
            assert!(text.contains("256 slots of 1048640 bytes"), "{text}");
            assert!(text.contains("8 slots of 2097216 bytes"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    match store.subscriber_with("c", ChannelConfig::default().overflow(Overflow::Block)) {
        Err(BlobError::ChannelMismatch {
            existing,
            requested,
            ..
        }) => {
            assert!(existing.contains("drop-oldest"), "{existing}");
            assert!(requested.contains("block"), "{requested}");
        }
        other => panic!("{other:?}"),
    }
    match store.receiver_with(
        "q",
        ChannelConfig::default().delivery(stable_fragmented_buffer::Delivery::AtLeastOnce),
    ) {
        Err(BlobError::ChannelMismatch { .. }) => {}
        other => panic!("{other:?}"),
    }
    // A work queue has no overflow policy to differ in; spin is the
    // endpoint's own.
    store
        .sender_with(
            "q",
            ChannelConfig::default()
                .overflow(Overflow::Block)
                .spin(Duration::ZERO),
        )
        .unwrap();
    let adopted = store
        .publisher_with(
            "c",
            ChannelConfig::default().spin(Duration::from_micros(50)),
        )
        .unwrap();
    assert_eq!(adopted.inline_capacity(), 1 << 20);
    let plain = store.publisher("c").unwrap();
    assert_eq!(plain.inline_capacity(), 1 << 20);
    drop((adopted, plain, store));
    creator.go();
    creator.wait_ok();
}

/// `lag()` counts what a consumer has not received: a subscriber from its
/// own place, a receiver the queue's; `memory_bound()` covers what the
/// channel's files and chunks take on the tmpfs when it is full.
#[test]
fn lag_and_memory_bound_are_what_the_channel_holds() {
    let ns = Ns::new("lag");
    let store = PinnedBlobStore::new_shared(common::cfg(0, 600_000), ns.as_str(), 1 << 20).unwrap();
    let rx = store.subscriber_with("c", config("block")).unwrap();
    let mut late = peer("late-publisher", &ns, "block");
    late.expect("ready");
    let tx = store.publisher("c").unwrap();
    assert_eq!((rx.lag(), tx.len()), (0, 0));
    for seq in 0..3 {
        tx.send(&message(seq, 600 << 10)).unwrap();
    }
    late.go();
    assert_eq!(late.line().as_deref(), Some("sent"));
    late.wait_ok();
    assert_eq!(rx.lag(), 4);
    assert_eq!(tx.len(), 4);
    let held = rx.recv().unwrap();
    assert_eq!(rx.lag(), 3);
    // Full now: four messages, three through the store (each pinning a
    // chunk) and one in the ring; all of it within the bound.
    let on_tmpfs: u64 = ns
        .files()
        .iter()
        .map(|f| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(common::shm_dir().join(f))
                .unwrap()
                .blocks()
                * 512
        })
        .sum();
    let bound = tx.memory_bound();
    assert!(on_tmpfs <= bound, "{on_tmpfs} > {bound}");
    // The bound: a fully backed file of the pool, and a chunk per pool slot.
    let g = config("block");
    let pool = 4 + 32 * (g.max_held as u64 + 1) + 64;
    assert!(bound >= pool * (1 << 20), "{bound}");
    assert!(
        bound <= pool * ((1 << 20) + g.slot_size as u64 + 64) + (1 << 20),
        "{bound}"
    );
    drop(held);

    let q = store.sender("q").unwrap();
    let r = store.receiver("q").unwrap();
    for i in 0..5u8 {
        q.send(&[i]).unwrap();
    }
    assert_eq!(r.lag(), 5);
    drop(r.recv().unwrap());
    assert_eq!(r.lag(), 4);
}

/// A subscriber overrun under `DropOldest`: `lag()` counts from its own
/// place (the messages it will miss included), `Lagged(n)` is exactly what
/// it missed, its cursor lands on the oldest message kept, and `lagged()`
/// is the sum of its `Lagged` counts.
#[test]
fn an_overrun_subscriber_lags_by_exactly_what_it_missed() {
    let ns = Ns::new("overrun");
    let store = PinnedBlobStore::new_shared(common::cfg(0, 600_000), ns.as_str(), 1 << 20).unwrap();
    let rx = store.subscriber_with("c", config("drop")).unwrap();
    let tx = store.publisher_with("c", config("drop")).unwrap();
    for seq in 0..20 {
        tx.send(&message(seq, 16)).unwrap();
    }
    assert_eq!(rx.lag(), 20, "the four kept and the sixteen it will miss");
    match rx.try_recv() {
        Err(TryRecvError::Lagged(n)) => assert_eq!(n, 16),
        other => panic!("{other:?}"),
    }
    assert_eq!((rx.lagged(), rx.lag()), (16, 4));
    // The channel's counts: lagged, but nobody let go (that is `Block`'s).
    let report = stable_fragmented_buffer::inspect::inspect_namespace(ns.as_str()).unwrap();
    let ch = report.channels.iter().find(|c| c.name == "c").unwrap();
    assert_eq!((ch.lagged, ch.let_go), (16, 0), "{ch:?}");
    assert_eq!(
        (ch.kind, ch.overflow, ch.delivery),
        ("broadcast channel", "drop-oldest", "at-most-once")
    );
    for seq in 16..20 {
        let m = rx.try_recv().unwrap();
        assert_eq!(m.sequence(), seq);
        assert_eq!(m[..8], seq.to_le_bytes());
    }
    assert_eq!(rx.lag(), 0);
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(rx.lagged(), 16);
    drop((tx, rx, store));
}

/// What a message and an endpoint say of themselves: the bytes through
/// `Deref`, `AsRef` and `as_slice`, inline or through the store, the
/// sequence, a first delivery, and the `Debug` lines.
#[test]
fn a_message_and_an_endpoint_describe_themselves() {
    let ns = Ns::new("describe");
    let store = PinnedBlobStore::new_shared(common::cfg(0, 600_000), ns.as_str(), 1 << 20).unwrap();
    let rx = store.subscriber_with("c", config("block")).unwrap();
    let tx = store.publisher_with("c", config("block")).unwrap();
    let big = message(1, 1000);
    tx.send(b"small").unwrap();
    tx.send(&big).unwrap();
    let (a, b) = (rx.try_recv().unwrap(), rx.try_recv().unwrap());
    assert_eq!(
        (&*a, a.as_ref(), a.as_slice()),
        (&b"small"[..], &b"small"[..], &b"small"[..])
    );
    assert_eq!(
        (a.is_overflow(), a.sequence(), a.redelivered()),
        (false, 0, 0)
    );
    assert_eq!(
        (
            *b == big[..],
            b.as_ref() == &big[..],
            b.is_overflow(),
            b.sequence()
        ),
        (true, true, true, 1)
    );
    assert_eq!(
        format!("{a:?}"),
        "Message { seq: 0, len: 5, overflow: false }"
    );
    assert_eq!(
        format!("{b:?}"),
        "Message { seq: 1, len: 1000, overflow: true }"
    );
    assert_eq!(rx.name(), "c");
    assert!(
        format!("{rx:?}").contains("ChanFile { name: \"c\", ring: "),
        "{rx:?}"
    );
    drop((a, b, tx, rx, store));
}

/// A publisher asleep on a full `Block` ring is woken by the receive that
/// makes room (the subscriber's cursor move), not by its own liveness tick
/// (100 ms): the receive comes 10 ms into its sleep, and in at least 4 of 5
/// rounds the send returns within 40 ms of it. The message received is
/// held meanwhile, so only the cursor's move can wake the publisher.
#[test]
fn a_receive_wakes_a_publisher_asleep_on_a_full_ring() {
    let ns = Ns::new("wakepub");
    let store = PinnedBlobStore::new_shared(common::cfg(0, 600_000), ns.as_str(), 1 << 20).unwrap();
    let rx = store.subscriber_with("c", config("block")).unwrap();
    let tx = store
        .publisher_with("c", config("block").spin(Duration::ZERO))
        .unwrap();
    let mut quick = 0;
    for round in 0..5u64 {
        while tx.try_send(&message(round, 16)).is_ok() {}
        let (held, late) = std::thread::scope(|s| {
            let t = s.spawn(|| {
                tx.send(&message(round, 16)).unwrap();
                Instant::now()
            });
            std::thread::sleep(Duration::from_millis(10));
            let m = rx.recv().unwrap();
            let received = Instant::now();
            (m, t.join().unwrap().saturating_duration_since(received))
        });
        if late < Duration::from_millis(40) {
            quick += 1;
        }
        drop(held);
        while rx.try_recv().is_ok() {}
    }
    assert!(
        quick >= 4,
        "only {quick} of 5 sends were woken by the receive"
    );
}

/// A timed send on a full ring sleeps for what is left of its timeout (not
/// a whole 100 ms liveness tick, and not in a busy loop), and a producer
/// that has returned is no longer shown waiting.
#[test]
fn a_timed_send_sleeps_for_what_is_left_of_its_timeout() {
    let ns = Ns::new("timedsend");
    let store = PinnedBlobStore::new_shared(common::cfg(0, 600_000), ns.as_str(), 1 << 20).unwrap();
    let rx = store.subscriber_with("c", config("block")).unwrap();
    let tx = store
        .publisher_with("c", config("block").spin(Duration::ZERO))
        .unwrap();
    while tx.try_send(&message(0, 16)).is_ok() {}
    let mut prompt = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let r = tx.send_timeout(&message(0, 16), Duration::from_millis(10));
        assert!(matches!(r, Err(SendTimeoutError::Timeout)), "{r:?}");
        if t.elapsed() < Duration::from_millis(60) {
            prompt += 1;
        }
    }
    assert!(prompt >= 4, "only {prompt} of 5 gave up within 60 ms");
    let (cpu, t) = (thread_cpu_ns(), Instant::now());
    let r = tx.send_timeout(&message(0, 16), Duration::from_millis(300));
    assert!(matches!(r, Err(SendTimeoutError::Timeout)), "{r:?}");
    let (cpu, wall) = (thread_cpu_ns() - cpu, t.elapsed());
    assert!(cpu < 60_000_000, "{cpu} ns of CPU in {wall:?}");
    let report = stable_fragmented_buffer::inspect::inspect_namespace(ns.as_str()).unwrap();
    let ch = report.channels.iter().find(|c| c.name == "c").unwrap();
    let p = ch
        .participants
        .iter()
        .find(|p| p.role == "producer")
        .unwrap();
    assert_eq!(p.waiting_ms, None, "{p:?}");
    drop((tx, rx, store));
}

/// A dropped subscriber leaves at once: the publisher counts it out, and
/// under `Block` the messages only it had not read stop holding the ring
/// (a full ring takes a send again without waiting). `held()` counts the
/// messages a consumer holds.
#[test]
fn a_dropped_subscriber_leaves_at_once_and_held_counts_what_is_held() {
    let ns = Ns::new("dropsub");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 1 << 20).unwrap();
    let tx = store.publisher_with("c", config("block")).unwrap();
    let keeps = store.subscriber_with("c", config("block")).unwrap();
    let lags = store.subscriber_with("c", config("block")).unwrap();
    assert_eq!(tx.subscriber_count(), 2);
    for seq in 0..4 {
        tx.send(&message(seq, 100)).unwrap();
    }
    let (a, b) = (keeps.recv().unwrap(), keeps.recv().unwrap());
    assert_eq!(keeps.held(), 2);
    drop((a, b));
    assert_eq!(keeps.held(), 0);
    while keeps.try_recv().is_ok() {}
    // The ring is full of what `lags` has not read.
    assert!(matches!(tx.try_send(b"x"), Err(TrySendError::Full)));
    drop(lags);
    assert_eq!(tx.subscriber_count(), 1);
    tx.try_send(b"after")
        .expect("the dropped subscriber no longer holds the ring");
    assert_eq!(&*keeps.try_recv().unwrap(), b"after");
}

/// The spin before sleeping is the endpoint's `ChannelConfig::spin`: with
/// none, a receive that waits 300 ms is runnable next to none of it (asleep
/// in the kernel); with 200 ms of spin, it is runnable for the 200 ms. The
/// time runnable (on a CPU or queued for one) is the measure, not CPU time:
/// on a loaded machine a spinning thread gets a fraction of a CPU but stays
/// runnable throughout.
#[test]
fn a_blocked_receive_spins_as_configured_then_sleeps() {
    let ns = Ns::new("spin");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 1 << 20).unwrap();
    let _tx = store.publisher("c").unwrap();
    let runnable_in_wait = |spin: Duration| {
        let rx = store
            .subscriber_with("c", ChannelConfig::default().spin(spin))
            .unwrap();
        let t = thread_runnable_ns();
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(300)),
            Err(RecvTimeoutError::Timeout)
        ));
        Duration::from_nanos(thread_runnable_ns() - t)
    };
    let asleep = runnable_in_wait(Duration::ZERO);
    assert!(asleep < Duration::from_millis(50), "{asleep:?}");
    let spinning = runnable_in_wait(Duration::from_millis(200));
    assert!(spinning > Duration::from_millis(170), "{spinning:?}");
}

/// The spin adapts: a receiver of messages 15 ms apart with a 5 ms spin
/// would burn 5 ms a message spinning in vain; once its waits outlast the
/// spin it sleeps at once, and spins again only on a probe (one wait in
/// 16), so 32 messages cost a few spins, not 32.
#[test]
fn a_spin_that_never_pays_is_turned_off() {
    let ns = Ns::new("spinadapt");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 1 << 20).unwrap();
    let rx = store
        .subscriber_with("c", ChannelConfig::default().spin(Duration::from_millis(5)))
        .unwrap();
    let tx = store.publisher("c").unwrap();
    let sender = std::thread::spawn(move || {
        for i in 0..32u64 {
            std::thread::sleep(Duration::from_millis(15));
            tx.send(&i.to_le_bytes()).unwrap();
        }
    });
    let t = thread_cpu_ns();
    for i in 0..32u64 {
        assert_eq!(&*rx.recv().unwrap(), &i.to_le_bytes());
    }
    let cpu = Duration::from_nanos(thread_cpu_ns() - t);
    sender.join().unwrap();
    // Spinning every wait: 160 ms. Adapted: the first wait, two probes.
    assert!(cpu < Duration::from_millis(60), "{cpu:?}");
}

/// The closing rule: the creator's store dropped while an endpoint of its
/// lives keeps the namespace (the endpoint still sends and is received);
/// once that endpoint goes too, the files are removed, and a publisher in
/// another process gets `Closed` instead of sending into removed files.
#[test]
fn a_namespace_lives_while_an_endpoint_of_its_creator_does() {
    let ns = Ns::new("closing");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 1 << 20).unwrap();
    let tx = store.publisher_with("c", config("block")).unwrap();
    let mut sub = peer("subscriber", &ns, "block");
    sub.expect("ready");
    let mut late = peer("late-publisher", &ns, "block");
    late.expect("ready");
    drop(store);
    assert!(!ns.files().is_empty(), "removed under a live endpoint");
    tx.send(&message(0, 100)).unwrap();
    tx.send(&message(1, 150)).unwrap();
    sub.go();
    drop(tx);
    assert!(ns.files().is_empty(), "{:?}", ns.files());
    late.go();
    assert_eq!(late.line().as_deref(), Some("closed"));
    late.wait_ok();
    // The subscriber received what was sent, then saw the channel end.
    assert_eq!(sub.line().as_deref(), Some("got 2 expired 0"));
    sub.wait_ok();
}

/// `attach_shared_wait` waits for a namespace that does not exist yet
/// (a consumer started before its producer), and gives up with
/// `NotFound` after its timeout.
#[test]
fn attach_shared_wait_waits_for_the_namespace_to_appear() {
    let ns = Ns::new("wait");
    let t = Instant::now();
    match PinnedBlobStore::attach_shared_wait(
        Config::default(),
        ns.as_str(),
        Duration::from_millis(120),
    ) {
        Err(BlobError::NotFound { .. }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(t.elapsed() >= Duration::from_millis(120));
    let mut waiter = spawn_peer(
        ENTRY,
        "waiter",
        &[("SFB_NS", ns.0.clone()), ("SFB_CHAN", "jobs".to_owned())],
    );
    waiter.expect("waiting");
    std::thread::sleep(Duration::from_millis(200));
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 1 << 20).unwrap();
    let tx = store.sender("jobs").unwrap();
    waiter.expect("attached");
    tx.send(b"first job").unwrap();
    waiter.expect("got first job");
    waiter.wait_ok();
    assert!(matches!(
        PinnedBlobStore::attach_shared_wait(Config::default(), "bad/name", Duration::from_secs(5)),
        Err(BlobError::InvalidNamespace { .. })
    ));
}

/// A receive on a channel whose namespace is gone ends as disconnected
/// once drained (checked in-process: the last endpoint of the creator is
/// the subscriber's own store here).
#[test]
fn recv_after_the_store_is_dropped_drains_then_disconnects() {
    let ns = Ns::new("drain");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 1 << 20).unwrap();
    let rx = store.subscriber("c").unwrap();
    let tx = store.publisher("c").unwrap();
    tx.send(b"one").unwrap();
    drop(store);
    drop(tx);
    assert_eq!(&*rx.recv().unwrap(), b"one");
    assert_eq!(rx.recv().unwrap_err(), RecvError::Disconnected);
}
