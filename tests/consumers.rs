//! No consumer can stall the others: slow, stopped (SIGSTOP), holding and
//! killed (SIGKILL) consumers between real processes, under each overflow
//! policy and delivery mode; liveness across `fork`; wake-ups after a
//! repair; a scribbled ring. Each test is one line of the README's table of
//! guarantees. This binary re-executes itself as the peer processes through
//! `peer_process_entry_point`.

mod common;

use common::{env, payload, say, spawn_peer, Ns, Peer};
use stable_fragmented_buffer::{
    ChannelConfig, Config, Delivery, Message, Overflow, PinnedBlobStore, RecvError,
    RecvTimeoutError, TryRecvError, TrySendError,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
        "holder" => role_holder(),
        "worker" => role_worker(),
        "fork-subscriber" => role_fork_subscriber(),
        other => panic!("unknown role {other}"),
    }
}

/// The channel configuration a test and its peers share, from a name.
fn config(which: &str) -> ChannelConfig {
    let small = ChannelConfig::for_messages(200, 16);
    match which {
        "drop" => small.overflow(Overflow::DropOldest),
        "block" => small.overflow(Overflow::Block),
        "stall" => small
            .overflow(Overflow::Block)
            .stall_timeout(Duration::from_millis(200)),
        "held" => small.overflow(Overflow::Block).max_held(3),
        "held-drop" => small.overflow(Overflow::DropOldest).max_held(3),
        "queue" => small,
        "alo" => small.delivery(Delivery::AtLeastOnce).max_held(4),
        other => panic!("unknown config {other}"),
    }
}

/// Message `seq` of `len` bytes (at least 8): its sequence, then bytes
/// derived from it.
fn message(seq: u64, len: usize) -> Vec<u8> {
    let mut m = payload(seq, len);
    m[..8].copy_from_slice(&seq.to_le_bytes());
    m
}

/// The sequence of a received message, after checking every byte.
fn check(m: &[u8]) -> u64 {
    let seq = u64::from_le_bytes(m[..8].try_into().unwrap());
    assert!(
        m == &message(seq, m.len())[..],
        "wrong bytes in message {seq}"
    );
    seq
}

fn attach() -> PinnedBlobStore {
    PinnedBlobStore::attach_shared(Config::default(), &env("SFB_NS")).unwrap()
}

fn peer(role: &str, ns: &Ns, cfg: &str, extra: &[(&str, String)]) -> Peer {
    let mut env = vec![
        ("SFB_NS", ns.0.clone()),
        ("SFB_CHAN", "c".to_owned()),
        ("SFB_CFG", cfg.to_owned()),
    ];
    env.extend(extra.iter().cloned());
    spawn_peer(ENTRY, role, &env)
}

/// Receives until disconnected, checking order and bytes; reports
/// "end <received> <lagged> <last>". With SFB_SLEEP_MS it sleeps that long
/// per message (a slow subscriber).
fn role_subscriber() {
    let store = attach();
    let rx = store
        .subscriber_with(&env("SFB_CHAN"), config(&env("SFB_CFG")))
        .unwrap();
    let pause = std::env::var("SFB_SLEEP_MS")
        .ok()
        .map(|v| Duration::from_millis(v.parse().unwrap()));
    say("ready");
    let (mut got, mut lagged, mut next) = (0u64, 0u64, 0u64);
    loop {
        match rx.recv() {
            Ok(m) => {
                let seq = check(&m);
                assert_eq!(seq, next, "a gap without Lagged, or a reorder");
                next = seq + 1;
                got += 1;
                if let Some(p) = pause {
                    std::thread::sleep(p);
                }
            }
            Err(RecvError::Lagged(n)) => {
                assert!(n > 0);
                lagged += n;
                next += n;
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(rx.lagged(), lagged);
    say(format!("end {got} {lagged} {next}"));
}

/// Takes the first message and holds it; with SFB_READ=1 goes on receiving
/// (and dropping) the rest, else stops receiving. On a line on stdin,
/// checks the held message and reports "held <seq> intact".
fn role_holder() {
    let store = attach();
    let name = env("SFB_CHAN");
    let cfg = config(&env("SFB_CFG"));
    let read_on = env("SFB_READ") == "1";
    let queue = env("SFB_QUEUE") == "1";
    type Recv = Arc<dyn Fn() -> Result<Message, RecvTimeoutError> + Send + Sync>;
    let recv: Recv = if queue {
        let rx = store.receiver_with(&name, cfg).unwrap();
        Arc::new(move || rx.recv_timeout(Duration::from_millis(50)))
    } else {
        let rx = store.subscriber_with(&name, cfg).unwrap();
        Arc::new(move || rx.recv_timeout(Duration::from_millis(50)))
    };
    say("ready");
    let held = loop {
        if let Ok(m) = recv() {
            break m;
        }
    };
    let seq = check(&held);
    say(format!("holding {seq}"));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = read_on.then(|| {
        let stop = Arc::clone(&stop);
        let recv = Arc::clone(&recv);
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                match recv() {
                    Ok(m) => {
                        check(&m);
                        n += 1;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(_) => {}
                }
            }
            n
        })
    });
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    stop.store(true, Ordering::SeqCst);
    let n = reader.map_or(0, |r| r.join().unwrap());
    assert_eq!(check(&held), seq);
    say(format!("held {seq} intact, read {n} more"));
}

/// A work-queue receiver that reports each job ("m <seq> <redelivered>")
/// before dropping it (or keeping it, per SFB_HOLD), until disconnected.
fn role_worker() {
    let store = attach();
    let rx = store
        .receiver_with(&env("SFB_CHAN"), config(&env("SFB_CFG")))
        .unwrap();
    // 0: drop each job; 1: keep jobs until the budget, then let them go;
    // 2: keep them for ever (until killed).
    let hold = env("SFB_HOLD");
    let keep = hold != "0";
    say("ready");
    let mut kept = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(m) => {
                let seq = check(&m);
                say(format!("m {seq} {}", m.redelivered()));
                if keep {
                    kept.push(m);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // A holder at its budget lets go of what it kept (done with it).
            Err(RecvTimeoutError::TooManyHeld) if hold == "2" => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(RecvTimeoutError::TooManyHeld) => kept.clear(),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    say("end");
}

/// Subscribes, then forks. The child attaches on its own, subscribes,
/// receives one message and reports it, then lives on. The parent says
/// "ready <child pid>" and never receives (it is killed).
fn role_fork_subscriber() {
    let store = attach();
    let name = env("SFB_CHAN");
    let _rx = store.subscriber_with(&name, config("block")).unwrap();
    // SAFETY: fork in this single-threaded peer (libtest runs it with one
    // test thread); the child only attaches, receives and sleeps.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let own = attach();
        let rx = own.subscriber_with(&name, config("block")).unwrap();
        say("child ready");
        let m = rx.recv().unwrap();
        say(format!("child got {}", check(&m)));
        drop(m);
        std::thread::sleep(Duration::from_secs(120));
        // SAFETY: leave the fork child without running the parent's exit
        // handlers.
        unsafe { libc::_exit(0) };
    }
    say(format!("ready {pid}"));
    std::thread::sleep(Duration::from_secs(600));
}

fn shared(ns: &Ns) -> PinnedBlobStore {
    PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 1 << 20).unwrap()
}

/// Parses "end <got> <lagged> <next>".
fn end_of(p: &mut Peer) -> (u64, u64, u64) {
    let l = p.line().unwrap();
    let v: Vec<u64> = l
        .strip_prefix("end ")
        .unwrap_or_else(|| panic!("{l}"))
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1], v[2])
}

/// A subscriber in this process that receives on a thread and counts what
/// it got; the test paces its sends by it, so it never lags.
struct Fast {
    got: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl Fast {
    fn start(store: &PinnedBlobStore, cfg: ChannelConfig) -> Self {
        let rx = store.subscriber_with("c", cfg).unwrap();
        let got = Arc::new(AtomicU64::new(0));
        let g = Arc::clone(&got);
        let thread = std::thread::spawn(move || {
            let (mut next, mut lagged) = (0u64, 0u64);
            loop {
                match rx.recv() {
                    Ok(m) => {
                        assert_eq!(check(&m), next);
                        next += 1;
                        g.store(next, Ordering::SeqCst);
                    }
                    Err(RecvError::Lagged(n)) => lagged += n,
                    Err(RecvError::Disconnected) => return (next, lagged),
                    Err(e) => panic!("{e}"),
                }
            }
        });
        Self { got, thread }
    }

    /// Waits (bounded) until it has received `n` messages.
    fn wait_for(&self, n: u64) {
        let t = Instant::now();
        while self.got.load(Ordering::SeqCst) < n {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "fast subscriber stuck"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

#[test]
fn a_stopped_subscriber_under_drop_oldest_costs_the_publisher_and_the_others_nothing() {
    let ns = Ns::new("cdropstop");
    let store = shared(&ns);
    let cfg = config("drop");
    let tx = store.publisher_with("c", cfg).unwrap();
    let fast = Fast::start(&store, cfg);
    let mut stopped = peer("subscriber", &ns, "drop", &[]);
    stopped.expect("ready");
    stopped.signal(libc::SIGSTOP);
    // 50 rings' worth while it is stopped: the publisher never finds the
    // channel full, and the fast subscriber gets every message.
    let n = 16 * 50;
    for seq in 0..n {
        match tx.try_send(&message(seq, 100)) {
            Ok(()) => {}
            Err(TrySendError::Full) => panic!("message {seq}: full under DropOldest"),
            Err(e) => panic!("{e}"),
        }
        if seq % 8 == 7 {
            fast.wait_for(seq + 1);
        }
    }
    stopped.signal(libc::SIGCONT);
    // After it resumes it learns what it missed, then gets what follows.
    std::thread::sleep(Duration::from_millis(200));
    for seq in n..n + 10 {
        tx.send(&message(seq, 100)).unwrap();
        fast.wait_for(seq + 1);
    }
    drop(tx);
    let (got, lagged, next) = end_of(&mut stopped);
    assert_eq!(next, n + 10, "it ends at the last message");
    assert!(lagged >= n - 16, "it lagged a ring behind: {lagged}");
    assert_eq!(
        got + lagged,
        n + 10,
        "each message received or counted lost"
    );
    assert!(got >= 10, "it received what came after it resumed: {got}");
    assert_eq!(fast.thread.join().unwrap(), (n + 10, 0));
    stopped.wait_ok();
}

#[test]
fn a_stopped_subscriber_under_block_holds_publishers_until_the_stall_timeout_lets_it_go() {
    let ns = Ns::new("cblockstall");
    let store = shared(&ns);
    let cfg = config("stall");
    let tx = store.publisher_with("c", cfg).unwrap();
    let fast = Fast::start(&store, cfg);
    let mut stopped = peer("subscriber", &ns, "stall", &[]);
    stopped.expect("ready");
    stopped.signal(libc::SIGSTOP);
    let n = 200u64;
    let mut longest = Duration::ZERO;
    let t0 = Instant::now();
    for seq in 0..n {
        let t = Instant::now();
        tx.send(&message(seq, 100)).unwrap();
        longest = longest.max(t.elapsed());
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "publisher held for ever"
        );
    }
    // Held while the ring filled (lossless up to the timeout), then let go.
    assert!(
        longest >= Duration::from_millis(150),
        "never held: {longest:?}"
    );
    stopped.signal(libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(100));
    for seq in n..n + 5 {
        tx.send(&message(seq, 100)).unwrap();
    }
    fast.wait_for(n + 5);
    drop(tx);
    let (got, lagged, next) = end_of(&mut stopped);
    assert_eq!(next, n + 5);
    assert!(lagged > 0, "let go: it lagged");
    assert_eq!(got + lagged, n + 5);
    assert_eq!(
        fast.thread.join().unwrap(),
        (n + 5, 0),
        "the others lose nothing"
    );
    stopped.wait_ok();
}

#[test]
fn block_without_a_stall_timeout_is_lossless_and_holds_publishers_while_a_subscriber_is_stopped() {
    let ns = Ns::new("cblockstop");
    let store = shared(&ns);
    let cfg = config("block");
    let tx = store.publisher_with("c", cfg).unwrap();
    let mut stopped = peer("subscriber", &ns, "block", &[]);
    stopped.expect("ready");
    stopped.signal(libc::SIGSTOP);
    let mut seq = 0;
    while tx.try_send(&message(seq, 100)).is_ok() {
        seq += 1;
        assert!(seq <= 16, "more than a ring past a stopped subscriber");
    }
    assert_eq!(seq, 16, "a ring's worth, then full");
    let sent = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&sent);
    let tx = Arc::new(tx);
    let tx2 = Arc::clone(&tx);
    let blocked = std::thread::spawn(move || {
        tx2.send(&message(16, 100)).unwrap();
        s2.store(true, Ordering::SeqCst);
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !sent.load(Ordering::SeqCst),
        "sent past a stopped subscriber"
    );
    stopped.signal(libc::SIGCONT);
    blocked.join().unwrap();
    drop(tx);
    assert_eq!(end_of(&mut stopped), (17, 0, 17), "nothing lost");
    stopped.wait_ok();
}

/// A subscriber holding one message (and going on reading, as Block needs)
/// stops nobody: many rings' worth pass, the held bytes never change.
#[test]
fn a_held_message_costs_its_own_slot_not_the_ring_on_a_broadcast() {
    for (cfg, read_on) in [("block", "1"), ("drop", "0")] {
        let ns = Ns::new("cheldb");
        let store = shared(&ns);
        let c = config(cfg);
        let tx = store.publisher_with("c", c).unwrap();
        let fast = Fast::start(&store, c);
        let mut holder = peer(
            "holder",
            &ns,
            cfg,
            &[("SFB_READ", read_on.into()), ("SFB_QUEUE", "0".into())],
        );
        holder.expect("ready");
        tx.send(&message(0, 150)).unwrap();
        holder.expect("holding 0");
        fast.wait_for(1);
        let n = 16 * 40;
        let t = Instant::now();
        for seq in 1..n {
            if read_on == "0" {
                // Never full, whatever the holder does.
                assert!(
                    tx.try_send(&message(seq, 150)).is_ok(),
                    "{cfg}: full at {seq}"
                );
            } else {
                tx.send(&message(seq, 150)).unwrap();
            }
            if seq % 8 == 0 {
                fast.wait_for(seq + 1);
            }
            assert!(t.elapsed() < Duration::from_secs(20), "{cfg}: stalled");
        }
        fast.wait_for(n);
        holder.go();
        let l = holder.line().unwrap();
        assert!(l.starts_with("held 0 intact"), "{cfg}: {l}");
        drop(tx);
        assert_eq!(fast.thread.join().unwrap(), (n, 0));
        holder.wait_ok();
    }
}

/// A worker holding a job does not stop the dispatcher or the other
/// workers, and its job's bytes never change.
#[test]
fn a_held_job_costs_its_own_slot_not_the_queue() {
    let ns = Ns::new("cheldq");
    let store = shared(&ns);
    let cfg = config("queue");
    let tx = store.sender_with("c", cfg).unwrap();
    let mut holder = peer(
        "holder",
        &ns,
        "queue",
        &[("SFB_READ", "0".into()), ("SFB_QUEUE", "1".into())],
    );
    holder.expect("ready");
    tx.send(&message(0, 150)).unwrap();
    holder.expect("holding 0");
    let rx = store.receiver_with("c", cfg).unwrap();
    let n = 16 * 40;
    let t = Instant::now();
    for seq in 1..n {
        // The other worker takes each job; the dispatcher never waits.
        assert!(tx.try_send(&message(seq, 150)).is_ok(), "full at {seq}");
        let m = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(check(&m), seq);
        assert!(t.elapsed() < Duration::from_secs(20), "stalled");
    }
    holder.go();
    assert!(holder.line().unwrap().starts_with("held 0 intact"));
    drop(tx);
    holder.wait_ok();
}

/// Receiving beyond the held budget is an error at once, on every receive
/// call and both kinds, and stalls nobody; dropping one frees the budget.
#[test]
fn receiving_beyond_max_held_is_an_error_not_a_stall() {
    let ns = Ns::new("cmaxheld");
    let store = shared(&ns);
    for queue in [false, true] {
        let name = if queue { "q" } else { "b" };
        let cfg = config("held");
        let (tx_b, tx_q);
        let send: &dyn Fn(&[u8]) = if queue {
            tx_q = store.sender_with(name, cfg).unwrap();
            &|m| tx_q.send(m).unwrap()
        } else {
            tx_b = store.publisher_with(name, cfg).unwrap();
            &|m| tx_b.send(m).unwrap()
        };
        let (rb, rq);
        type Rx<'a> = (
            &'a dyn Fn() -> Result<Message, RecvError>,
            &'a dyn Fn() -> Result<Message, TryRecvError>,
            &'a dyn Fn() -> Result<Message, RecvTimeoutError>,
        );
        let rx: Rx = if queue {
            rq = store.receiver_with(name, cfg).unwrap();
            (&|| rq.recv(), &|| rq.try_recv(), &|| {
                rq.recv_timeout(Duration::from_secs(5))
            })
        } else {
            rb = store.subscriber_with(name, cfg).unwrap();
            (&|| rb.recv(), &|| rb.try_recv(), &|| {
                rb.recv_timeout(Duration::from_secs(5))
            })
        };
        for seq in 0..6 {
            send(&message(seq, 50));
        }
        let held: Vec<Message> = (0..3).map(|_| (rx.0)().unwrap()).collect();
        let t = Instant::now();
        assert_eq!((rx.0)().unwrap_err(), RecvError::TooManyHeld);
        assert_eq!((rx.1)().unwrap_err(), TryRecvError::TooManyHeld);
        assert_eq!((rx.2)().unwrap_err(), RecvTimeoutError::TooManyHeld);
        assert!(t.elapsed() < Duration::from_secs(1), "it waited");
        // Producers are not held back by it: the ring fills with unread
        // messages only (3 held ones are out of it).
        for seq in 6..19 {
            send(&message(seq, 50));
        }
        drop(held);
        assert_eq!(check(&(rx.0)().unwrap()), 3, "queue={queue}");
    }
}

/// At least once: receivers are SIGKILLed at random moments, some while
/// holding jobs; every job is delivered, and a job delivered twice is
/// flagged as redelivered the second time.
#[test]
fn at_least_once_loses_nothing_when_receivers_are_killed_holding_jobs() {
    let ns = Ns::new("calo");
    let store = shared(&ns);
    let cfg = config("alo");
    let tx = store.sender_with("c", cfg).unwrap();
    let n = 3000u64;
    let mut seed = 0x9e37_79b9_u64 ^ std::process::id() as u64;
    let mut rng = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // (seq, redelivered) of every report, from every worker.
    let mut reports: Vec<(u64, u32)> = Vec::new();
    let collect = |p: &mut Peer, reports: &mut Vec<(u64, u32)>, until_end: bool| loop {
        let line = if until_end {
            p.line()
        } else {
            p.line_timeout(Duration::from_millis(1)).flatten()
        };
        match line.as_deref() {
            Some("end") | None => return,
            Some(l) => {
                let mut it = l.strip_prefix("m ").unwrap().split(' ');
                reports.push((
                    it.next().unwrap().parse().unwrap(),
                    it.next().unwrap().parse().unwrap(),
                ));
            }
        }
    };
    let start = |hold: bool| {
        let mut p = peer(
            "worker",
            &ns,
            "alo",
            &[("SFB_HOLD", (hold as u8).to_string())],
        );
        p.expect("ready");
        p
    };
    let mut survivor = start(false);
    let mut victim = start(true);
    let mut kills = 0;
    for seq in 0..n {
        tx.send(&message(seq, 32 + (seq as usize * 97) % 3000))
            .unwrap();
        if rng() % 400 == 0 {
            collect(&mut victim, &mut reports, false);
            victim.kill9();
            collect(&mut victim, &mut reports, true);
            kills += 1;
            victim = start(rng() % 2 == 0);
        }
        collect(&mut survivor, &mut reports, false);
    }
    drop(tx);
    collect(&mut survivor, &mut reports, true);
    collect(&mut victim, &mut reports, true);
    survivor.wait_ok();
    victim.wait_ok();
    let mut seen: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (seq, r) in reports {
        seen.entry(seq).or_default().push(r);
    }
    for seq in 0..n {
        let r = seen
            .get(&seq)
            .unwrap_or_else(|| panic!("job {seq} lost ({kills} kills)"));
        let mut r = r.clone();
        r.sort();
        for (i, x) in r.iter().enumerate() {
            assert!(
                i == 0 || *x > 0,
                "job {seq} delivered twice without the flag: {r:?}"
            );
        }
    }
    assert!(kills > 0);
}

/// The killed receiver's held jobs go to the other receiver, flagged.
#[test]
fn at_least_once_redelivers_exactly_the_jobs_a_killed_receiver_held() {
    let ns = Ns::new("calo2");
    let store = shared(&ns);
    let cfg = config("alo");
    let tx = store.sender_with("c", cfg).unwrap();
    let mut victim = peer("worker", &ns, "alo", &[("SFB_HOLD", "2".into())]);
    victim.expect("ready");
    for seq in 0..4 {
        tx.send(&message(seq, 64)).unwrap();
    }
    let mut held = vec![];
    for _ in 0..4 {
        let l = victim.line().unwrap();
        held.push(l);
    }
    assert_eq!(held, ["m 0 0", "m 1 0", "m 2 0", "m 3 0"]);
    // What the channel file says: the victim's record holds the four.
    let (held, redelivered) = held_and_redelivered(&ns);
    assert_eq!((held, redelivered), (4, 0));
    let rx = store.receiver_with("c", cfg).unwrap();
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    victim.kill9();
    // The survivor's receive finds the victim dead (liveness tick) and
    // gets its jobs back, each flagged once, in some order.
    let t = Instant::now();
    let mut again = vec![];
    while again.len() < 4 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "not redelivered: {again:?}"
        );
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(m) => {
                again.push((check(&m), m.redelivered()));
                drop(m);
            }
            // The receiver itself looks for dead receivers while it waits.
            Err(RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("{e}"),
        }
    }
    again.sort();
    assert_eq!(again, [(0, 1), (1, 1), (2, 1), (3, 1)]);
    assert_eq!(
        held_and_redelivered(&ns).1,
        4,
        "the channel counts the four requeued"
    );
}

/// An at-least-once queue "c" whose one job a worker process has taken
/// and holds; the sender is returned alive.
fn a_worker_holding_one_job(
    store: &PinnedBlobStore,
    ns: &Ns,
) -> (stable_fragmented_buffer::Sender, Peer) {
    let tx = store.sender_with("c", config("alo")).unwrap();
    let mut victim = peer("worker", ns, "alo", &[("SFB_HOLD", "1".into())]);
    victim.expect("ready");
    tx.send(&message(0, 64)).unwrap();
    assert_eq!(victim.line().unwrap(), "m 0 0");
    (tx, victim)
}

/// A `try_recv` that finds a dead receiver (its liveness look, once a
/// tick) takes back the jobs it held and returns one in the same call: it
/// does not answer `Empty` and leave the job for the next call.
#[test]
fn a_try_recv_that_evicts_a_dead_receiver_returns_its_job_at_once() {
    let ns = Ns::new("calo3");
    let store = shared(&ns);
    let (_tx, mut victim) = a_worker_holding_one_job(&store, &ns);
    let rx = store.receiver_with("c", config("alo")).unwrap();
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    victim.kill9();
    // Past a liveness tick since that look, and nobody else looks.
    std::thread::sleep(Duration::from_millis(250));
    let m = rx
        .try_recv()
        .expect("the call that evicts the dead receiver returns its job");
    assert_eq!((check(&m), m.redelivered()), (0, 1));
}

/// A `try_recv` about to say `Disconnected` (no producer left, nothing in
/// the queue) first takes back what a dead receiver held, even between
/// liveness ticks: the last job of a killed worker is not lost to a
/// receiver that drains and stops.
#[test]
fn a_receiver_draining_a_disconnected_queue_takes_back_a_dead_receivers_job() {
    // The check holds only if the draining call comes within the tick of
    // the look before it (else its own look evicts, whatever the code
    // under test does): a round that took longer is run again.
    for round in 0..5 {
        let ns = Ns::new("calo4");
        let store = shared(&ns);
        let (tx, mut victim) = a_worker_holding_one_job(&store, &ns);
        let rx = store.receiver_with("c", config("alo")).unwrap();
        // This call looks for dead receivers (none yet); the next, within
        // the same tick, does not look on its own account.
        let looked = Instant::now();
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        victim.kill9();
        drop(tx);
        let got = rx.try_recv();
        if looked.elapsed() >= Duration::from_millis(80) {
            eprintln!("round {round}: past the tick, again");
            continue;
        }
        let m = got.expect("the dead receiver's job, before Disconnected");
        assert_eq!((check(&m), m.redelivered()), (0, 1));
        drop(m);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
        return;
    }
    panic!("five rounds past the liveness tick: the machine is too loaded to check this");
}

/// The channel's `held` and `redelivered` counts, as `sfb stat` reads them.
fn held_and_redelivered(ns: &Ns) -> (u64, u64) {
    let report = stable_fragmented_buffer::inspect::inspect_namespace(ns.as_str()).unwrap();
    let ch = report.channels.iter().find(|c| c.name == "c").unwrap();
    assert_eq!(
        (ch.kind, ch.overflow, ch.delivery),
        ("work queue", "block", "at-least-once")
    );
    (ch.held, ch.redelivered)
}

/// R4: a producer asleep waiting for space while the subscriber holding
/// the ring is SIGKILLed: `repair` (after the victim's death) repairs its
/// record. Returns in how many of 5 rounds the sleeper was woken within
/// 50 ms of the repair (its own liveness tick is 100 ms).
fn rounds_woken_by_a_repair(tag: &str, repair: impl Fn(&PinnedBlobStore, ChannelConfig)) -> usize {
    let mut fast_rounds = 0;
    for _ in 0..5 {
        let ns = Ns::new(tag);
        let store = shared(&ns);
        let cfg = config("block");
        let tx = Arc::new(store.publisher_with("c", cfg).unwrap());
        let mut victim = peer("subscriber", &ns, "block", &[]);
        victim.expect("ready");
        victim.signal(libc::SIGSTOP);
        for seq in 0..16 {
            tx.send(&message(seq, 100)).unwrap();
        }
        let tx2 = Arc::clone(&tx);
        let sleeper = std::thread::spawn(move || {
            tx2.send(&message(16, 100)).unwrap();
            Instant::now()
        });
        // Asleep by now (its own liveness look just found everyone alive).
        std::thread::sleep(Duration::from_millis(30));
        victim.kill9();
        std::thread::sleep(Duration::from_millis(5));
        let t = Instant::now();
        repair(&store, cfg);
        let woke = sleeper.join().unwrap();
        if woke.saturating_duration_since(t) < Duration::from_millis(50) {
            fast_rounds += 1;
        }
    }
    fast_rounds
}

/// R4: another producer finds the ring full and evicts the dead subscriber;
/// the producer asleep waiting for space is woken at once.
#[test]
fn a_repair_wakes_a_producer_asleep_waiting_for_space() {
    let fast = rounds_woken_by_a_repair("cwake", |store, cfg| {
        let other = store.publisher_with("c", cfg).unwrap();
        let _ = other.try_send(&message(17, 100));
    });
    assert!(fast >= 4, "woken at once in {fast} of 5 rounds");
}

/// R4, the repair itself: a subscriber that joins takes the dead
/// subscriber's record and repairs it on the way (no producer looks, no
/// release of its own follows); the sleeping producer is woken by that
/// repair.
#[test]
fn a_repair_by_a_joining_subscriber_wakes_a_producer_asleep_waiting_for_space() {
    let fast = rounds_woken_by_a_repair("cwakej", |store, cfg| {
        drop(store.subscriber_with("c", cfg).unwrap());
    });
    assert!(fast >= 4, "woken at once in {fast} of 5 rounds");
}

/// R1: a subscriber SIGKILLed while a fork child of it lives is still seen
/// dead (its lock does not live on in the child), and the fork child that
/// attached on its own works like any process.
#[test]
fn a_killed_subscriber_whose_fork_child_lives_is_evicted_and_the_child_works() {
    let ns = Ns::new("cfork");
    let store = shared(&ns);
    let cfg = config("block");
    let tx = store.publisher_with("c", cfg).unwrap();
    let mut parent = peer("fork-subscriber", &ns, "block", &[]);
    let mut child_pid = 0;
    let mut child_ready = false;
    while child_pid == 0 || !child_ready {
        let l = parent.line().unwrap();
        if let Some(p) = l.strip_prefix("ready ") {
            child_pid = p.parse::<i32>().unwrap();
        } else if l == "child ready" {
            child_ready = true;
        } else {
            panic!("{l}");
        }
    }
    let kill_child = KillOnDrop(child_pid);
    tx.send(&message(0, 100)).unwrap();
    assert_eq!(parent.line().as_deref(), Some("child got 0"));
    // The parent never receives: 15 more fill the ring (the child keeps up
    // by not reading any more... it gates too, until it reads). The child
    // read message 0 and sleeps: it gates from 1 on, as does the parent.
    parent.kill9();
    assert_eq!(
        // SAFETY: kill(2) with signal 0 only checks the pid exists.
        unsafe { libc::kill(child_pid, 0) },
        0,
        "the fork child lives on"
    );
    // The dead parent's record no longer gates: the sends stop at the
    // live child's unread ring, not before, and the dead one is evicted.
    let t = Instant::now();
    let mut sent = 1;
    while t.elapsed() < Duration::from_secs(3) && sent < 17 {
        if tx.try_send(&message(sent, 100)).is_ok() {
            sent += 1;
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert_eq!(sent, 17, "the child's ring fills at 16 unread");
    let report = stable_fragmented_buffer::inspect::inspect_namespace(ns.as_str()).unwrap();
    let ch = report.channels.iter().find(|c| c.name == "c").unwrap();
    assert_eq!((ch.consumers_alive, ch.consumers_dead), (1, 0), "{ch:?}");
    assert!(ch.evicted >= 1);
    drop(kill_child);
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) of a process this test made (through its peer);
        // it was reparented, so we cannot wait for it, but it dies.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// R5: one 8-byte write to the ring's head (or tail) in the file never
/// makes a blocking send or receive hang: it returns, and the channel
/// goes on.
#[test]
fn a_scribbled_head_or_tail_never_hangs_a_blocking_send() {
    use std::os::unix::fs::FileExt;
    for (queue, value) in [
        (false, u64::MAX / 4),
        (false, 4u64),
        (false, 1 << 40),
        (true, u64::MAX / 4),
        (true, 5u64),
    ] {
        let ns = Ns::new("cscribble");
        let store = shared(&ns);
        let cfg = config(if queue { "queue" } else { "block" });
        let path = common::shm_dir().join(format!("{}_chan+c", ns.as_str()));
        let (tx_b, rx_b, tx_q, rx_q);
        type Send = Box<dyn Fn(u64) -> bool + std::marker::Send + Sync>;
        let (send, recv): (Send, Box<dyn Fn() -> Option<u64>>);
        if queue {
            tx_q = Arc::new(store.sender_with("c", cfg).unwrap());
            rx_q = store.receiver_with("c", cfg).unwrap();
            let t = Arc::clone(&tx_q);
            send = Box::new(move |s| t.send(&message(s, 60)).is_ok());
            recv = Box::new(move || {
                rx_q.recv_timeout(Duration::from_millis(20))
                    .ok()
                    .map(|m| check(&m))
            });
        } else {
            tx_b = Arc::new(store.publisher_with("c", cfg).unwrap());
            rx_b = store.subscriber_with("c", cfg).unwrap();
            let t = Arc::clone(&tx_b);
            send = Box::new(move |s| t.send(&message(s, 60)).is_ok());
            recv = Box::new(move || {
                rx_b.recv_timeout(Duration::from_millis(20))
                    .ok()
                    .map(|m| check(&m))
            });
        }
        for s in 0..3 {
            assert!(send(s));
            assert_eq!(recv(), Some(s));
        }
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&value.to_le_bytes(), 64).unwrap(); // head
        if queue {
            f.write_all_at(&value.to_le_bytes(), 192).unwrap(); // tail
        }
        // 40 blocking sends (more than two rings) under a watchdog, each
        // received (or reported) by the consumer in between.
        let send = Arc::new(send);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let s2 = Arc::clone(&send);
        std::thread::spawn(move || {
            for s in 3..43 {
                let ok = s2(s);
                let _ = done_tx.send(ok);
            }
        });
        let mut received = 0;
        for _ in 3..43 {
            let r = done_rx.recv_timeout(Duration::from_secs(10));
            assert!(
                r.is_ok(),
                "queue={queue} head={value}: a blocking send hung"
            );
            while let Some(_s) = recv() {
                received += 1;
            }
        }
        assert!(
            received > 0,
            "queue={queue} head={value}: nothing arrives any more"
        );
    }
}
