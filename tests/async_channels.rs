//! Async receive and send (feature `async`) and `Select`, with producers
//! and consumers in other processes: under tokio (multi-thread and
//! current-thread) and smol, cancellation, a producer killed while a
//! future waits, 1000 idle async subscribers, and a `Select` over a queue
//! and a broadcast.

mod common;

use common::{env, payload, say, spawn_peer, Ns, Peer};
use smol::stream::StreamExt;
use stable_fragmented_buffer::{
    ChannelConfig, Config, Overflow, PinnedBlobStore, RecvError, Select, TryRecvError,
};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};
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
        "publisher" => role_producer(false),
        "sender" => role_producer(true),
        "slow-receiver" => role_slow_receiver(),
        "idle-thousand" => role_idle_thousand(),
        other => panic!("unknown role {other}"),
    }
}

/// A small lossless ring: four slots of 256 bytes inline.
fn small() -> ChannelConfig {
    ChannelConfig::for_messages(256, 4).overflow(Overflow::Block)
}

fn attach() -> PinnedBlobStore {
    PinnedBlobStore::attach_shared(Config::default(), &env("SFB_NS")).unwrap()
}

fn store(ns: &Ns) -> PinnedBlobStore {
    PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 1 << 20).unwrap()
}

fn peer(role: &str, ns: &Ns, chan: &str, extra: &[(&str, String)]) -> Peer {
    let mut e = vec![("SFB_NS", ns.0.clone()), ("SFB_CHAN", chan.to_owned())];
    e.extend(extra.iter().cloned());
    spawn_peer(ENTRY, role, &e)
}

/// Message `seq`: its sequence number, then bytes derived from it.
fn message(seq: u64, len: usize) -> Vec<u8> {
    let mut m = payload(seq, len.max(8));
    m[..8].copy_from_slice(&seq.to_le_bytes());
    m
}

fn seq_of(m: &[u8]) -> u64 {
    u64::from_le_bytes(m[..8].try_into().unwrap())
}

/// Opens a producer (a sender if `queue`), says "ready", waits for a line,
/// then sends `SFB_COUNT` messages of `SFB_LEN` bytes, one every
/// `SFB_PACE_US` microseconds; says "sent", then waits for a line before
/// it exits (or is killed).
fn role_producer(queue: bool) {
    let store = attach();
    let chan = env("SFB_CHAN");
    let count: u64 = env("SFB_COUNT").parse().unwrap();
    let len: usize = env("SFB_LEN").parse().unwrap();
    let pace = Duration::from_micros(env("SFB_PACE_US").parse().unwrap());
    type SendFn = Box<dyn Fn(&[u8])>;
    let send: SendFn = if queue {
        let tx = store.sender_with(&chan, small()).unwrap();
        Box::new(move |d| tx.send(d).unwrap())
    } else {
        let tx = store.publisher_with(&chan, small()).unwrap();
        Box::new(move |d| tx.send(d).unwrap())
    };
    say("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    for seq in 0..count {
        send(&message(seq, len));
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
    }
    say("sent");
    line.clear();
    std::io::stdin().read_line(&mut line).unwrap();
}

/// Opens a receiver, says "ready", and on a line receives `SFB_COUNT`
/// messages, checking each, then reports "got <n>".
fn role_slow_receiver() {
    let store = attach();
    let rx = store.receiver_with(&env("SFB_CHAN"), small()).unwrap();
    let count: u64 = env("SFB_COUNT").parse().unwrap();
    say("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    for seq in 0..count {
        let m = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(*m, message(seq, m.len())[..], "bytes of {seq}");
    }
    say(format!("got {count}"));
}

/// Producers started and told to go, for `count` messages of `len` bytes.
fn start_producer(role: &str, ns: &Ns, chan: &str, count: u64, len: usize, pace_us: u64) -> Peer {
    let mut p = peer(
        role,
        ns,
        chan,
        &[
            ("SFB_COUNT", count.to_string()),
            ("SFB_LEN", len.to_string()),
            ("SFB_PACE_US", pace_us.to_string()),
        ],
    );
    p.expect("ready");
    p
}

/// Under tokio's multi-thread runtime: a subscriber's `recv_async` and a
/// receiver's `stream` in two tasks get every message of producers in two
/// other processes, byte-exact and in order, and the stream ends when its
/// producer is gone.
#[test]
fn tokio_multi_thread_receives_every_message_from_other_processes() {
    let ns = Ns::new("async-mt");
    let store = store(&ns);
    let sub = store.subscriber_with("news", small()).unwrap();
    let rx = store.receiver_with("jobs", small()).unwrap();
    let mut p1 = start_producer("publisher", &ns, "news", 300, 100, 200);
    let mut p2 = start_producer("sender", &ns, "jobs", 300, 200, 0);
    p1.go();
    p2.go();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let a = async {
            for seq in 0..300 {
                let m = sub.recv_async().await.unwrap();
                assert_eq!(*m, message(seq, 100)[..]);
            }
        };
        let b = async {
            let mut s = rx.stream();
            let mut seq = 0;
            while seq < 300 {
                let m = s.next().await.expect("a message").unwrap();
                assert_eq!(*m, message(seq, 200)[..]);
                seq += 1;
            }
            p2.expect("sent");
            p2.go();
            p2.wait_ok();
            // Drained and no producer left: the stream ends.
            let end = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
            assert!(matches!(end, Ok(None)), "{end:?}");
        };
        tokio::join!(a, b);
    });
    p1.expect("sent");
    p1.go();
    p1.wait_ok();
}

/// Under tokio's current-thread runtime, several channels in one task set
/// while a timer task runs: the waits never block the runtime's one thread.
#[test]
fn tokio_current_thread_waits_without_blocking_the_runtime() {
    let ns = Ns::new("async-ct");
    let store = store(&ns);
    let subs: Vec<_> = (0..3)
        .map(|i| store.subscriber_with(&format!("c{i}"), small()).unwrap())
        .collect();
    let mut peers: Vec<Peer> = (0..3)
        .map(|i| start_producer("publisher", &ns, &format!("c{i}"), 50, 64, 2000))
        .collect();
    for p in &mut peers {
        p.go();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ticks = rt.block_on(async {
        let ticker = tokio::spawn(async {
            let mut n = 0u32;
            let mut iv = tokio::time::interval(Duration::from_millis(5));
            loop {
                iv.tick().await;
                n += 1;
                if n == 1_000_000 {
                    return n;
                }
            }
        });
        let recvs = subs.iter().map(|s| async move {
            for seq in 0..50 {
                let m = s.recv_async().await.unwrap();
                assert_eq!(seq_of(&m), seq);
            }
        });
        let started = Instant::now();
        futures_join_all(recvs).await;
        let took = started.elapsed();
        ticker.abort();
        took
    });
    // 50 messages 2 ms apart take 100 ms or more: the timer task ran
    // meanwhile (the runtime's only thread was never blocked), which the
    // join above could not have finished without.
    assert!(ticks >= Duration::from_millis(90), "{ticks:?}");
    for mut p in peers {
        p.expect("sent");
        p.go();
        p.wait_ok();
    }
}

/// A waker that does nothing (for a poll by hand).
fn noop() -> std::task::Waker {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: std::sync::Arc<Self>) {}
    }
    std::task::Waker::from(std::sync::Arc::new(Noop))
}

/// Awaits every future of `futs` on the current task.
async fn futures_join_all<F: Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    let mut futs: Vec<_> = futs.map(Box::pin).collect();
    std::future::poll_fn(move |cx| {
        futs.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futs.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Under smol: `send_async` into a full ring waits (the runtime's thread
/// free meanwhile) until a receiver in another process makes room; every
/// message arrives.
#[test]
fn smol_send_async_waits_for_room_made_by_another_process() {
    let ns = Ns::new("async-smol");
    let store = store(&ns);
    let tx = store.sender_with("q", small()).unwrap();
    let mut rx = peer("slow-receiver", &ns, "q", &[("SFB_COUNT", "40".into())]);
    rx.expect("ready");
    smol::block_on(async {
        // Four entries: the fifth send waits for the receiver.
        for seq in 0..4 {
            tx.send_async(&message(seq, 100)).await.unwrap();
        }
        let fifth = message(4, 100);
        let mut fut = pin!(tx.send_async(&fifth));
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(&noop()))
            .is_pending());
        rx.go();
        fut.await.unwrap();
        for seq in 5..40 {
            tx.send_async(&message(seq, 100)).await.unwrap();
        }
    });
    rx.expect("got 40");
    rx.wait_ok();
}

/// A receive future dropped while it waits has taken nothing: the message
/// sent after it is the next one received. And futures cancelled over and
/// over while messages arrive (a timeout racing each receive) lose none
/// and duplicate none.
#[test]
fn cancelled_receive_futures_lose_no_message() {
    let ns = Ns::new("async-cancel");
    let store = store(&ns);
    let sub = store.subscriber_with("c", small()).unwrap();
    let tx = store.publisher_with("c", small()).unwrap();
    {
        let mut fut = pin!(sub.recv_async());
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(&noop()))
            .is_pending());
        tx.send(b"after").unwrap();
        // Dropped without another poll, with the message there.
    }
    assert_eq!(&*sub.try_recv().unwrap(), b"after");
    drop(tx);

    let mut p = start_producer("publisher", &ns, "c", 2000, 64, 20);
    p.go();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cancelled = rt.block_on(async {
        let (mut next, mut cancelled) = (0u64, 0u32);
        while next < 2000 {
            match tokio::time::timeout(Duration::from_micros(30), sub.recv_async()).await {
                Ok(m) => {
                    assert_eq!(seq_of(&m.unwrap()), next, "lost or duplicated");
                    next += 1;
                }
                Err(_) => cancelled += 1,
            }
        }
        cancelled
    });
    assert!(cancelled > 0, "no future was cancelled while waiting");
    p.expect("sent");
    p.go();
    p.wait_ok();
}

/// A producer killed (SIGKILL) while a receive future waits: the future
/// returns `Disconnected` within a second (the helper's liveness tick).
#[test]
fn a_producer_killed_while_a_future_waits_disconnects_it_within_a_second() {
    let ns = Ns::new("async-kill");
    let store = store(&ns);
    let rx = store.receiver_with("q", small()).unwrap();
    let mut p = start_producer("sender", &ns, "q", 1, 64, 0);
    p.go();
    p.expect("sent");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(seq_of(&rx.recv_async().await.unwrap()), 0);
        let waiting = tokio::spawn(async move {
            let r = rx.recv_async().await;
            (r.map(|_| ()), Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "returned with a producer alive");
        p.kill9();
        let killed = Instant::now();
        let (r, at) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("still waiting 5 s after the kill")
            .unwrap();
        assert!(matches!(r, Err(RecvError::Disconnected)), "{r:?}");
        let took = at.duration_since(killed);
        assert!(took < Duration::from_secs(1), "{took:?}");
    });
}

/// 1000 async subscribers (25 on each of 40 channels) waiting in one
/// process, idle: the process uses almost no CPU over 2 s (every wait is in
/// the kernel), one message still wakes the right ones, and the helper
/// thread is gone once the endpoints are dropped. In a process of its own,
/// so that no other test's endpoints share the helper.
#[test]
fn a_thousand_idle_async_subscribers_use_no_measurable_cpu() {
    let ns = Ns::new("async-idle");
    // The peer's subscribers create the channels: none has had a producer,
    // so they wait rather than report `Disconnected`.
    let _store = store(&ns);
    let mut p = peer("idle-thousand", &ns, "-", &[]);
    let line = p.line().unwrap();
    let cpu_ms: u64 = line
        .strip_prefix("idle cpu ms ")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    eprintln!("1000 idle async subscribers: {cpu_ms} ms of CPU over 2 s");
    // Generous: asleep, it is near 0; a poll of each subscriber every tick
    // would be several times this.
    assert!(cpu_ms < 100, "idle CPU {cpu_ms} ms over 2 s");
    p.expect("woken 25");
    p.expect("helper gone");
    p.wait_ok();
}

fn idle_cfg() -> ChannelConfig {
    ChannelConfig::for_messages(64, 16)
}

/// The process's threads named `sfb-async`.
fn helpers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "sfb-async")
        .count()
}

fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn role_idle_thousand() {
    let store = attach();
    let subs: Vec<Vec<_>> = (0..40)
        .map(|c| {
            (0..25)
                .map(|_| store.subscriber_with(&format!("c{c}"), idle_cfg()).unwrap())
                .collect()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let woken = std::cell::Cell::new(0u32);
        let waits = subs.iter().flatten().map(|s| {
            let woken = &woken;
            async move {
                if s.recv_async().await.is_ok() {
                    woken.set(woken.get() + 1);
                }
            }
        });
        let all = futures_join_all(waits);
        let measure = async {
            // Everyone registered, then 2 s idle.
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(helpers(), 1, "one helper thread");
            let cpu0 = process_cpu_ns();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let cpu = process_cpu_ns() - cpu0;
            say(format!("idle cpu ms {}", cpu / 1_000_000));
            // One message on channel 7 wakes its 25 subscribers only.
            store
                .publisher_with("c7", idle_cfg())
                .unwrap()
                .send(b"hi")
                .unwrap();
            let t = Instant::now();
            while woken.get() < 25 && t.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            say(format!("woken {}", woken.get()));
        };
        // The measure first: when its sleep ends, it reads the CPU clock
        // before the waits are polled again.
        tokio::select! {
            biased;
            _ = measure => {}
            _ = all => panic!("the waits ended"),
        }
    });
    drop(subs);
    let t = Instant::now();
    while helpers() > 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    if helpers() == 0 {
        say("helper gone");
    } else {
        say("helper still running");
    }
}

/// A `Select` over a work queue and a broadcast fed by other processes:
/// each `ready` names an endpoint whose `try_recv` then has a message, and
/// every message of both arrives; `ready_timeout` on idle endpoints times
/// out, and a message sent meanwhile wakes it well before the liveness
/// tick.
#[test]
fn select_over_a_queue_and_a_broadcast() {
    let ns = Ns::new("select");
    let store = store(&ns);
    let rx = store.receiver_with("jobs", small()).unwrap();
    let sub = store.subscriber_with("news", small()).unwrap();
    let mut sel = Select::new();
    assert_eq!(sel.add(&rx), 0);
    assert_eq!(sel.add(&sub), 1);
    assert_eq!(sel.try_ready(), None);
    let t = Instant::now();
    assert_eq!(sel.ready_timeout(Duration::from_millis(50)), None);
    assert!(t.elapsed() >= Duration::from_millis(50));

    let mut pq = start_producer("sender", &ns, "jobs", 200, 64, 100);
    let mut pb = start_producer("publisher", &ns, "news", 200, 64, 150);
    pq.go();
    pb.go();
    let (mut q, mut b) = (0u64, 0u64);
    while q < 200 || b < 200 {
        let i = sel
            .ready_timeout(Duration::from_secs(10))
            .expect("a message within 10 s");
        let m = match i {
            0 => rx.try_recv(),
            1 => sub.try_recv(),
            _ => unreachable!(),
        };
        let m = m.unwrap_or_else(|e| panic!("ready({i}) but try_recv: {e:?}"));
        let want = if i == 0 { &mut q } else { &mut b };
        assert_eq!(seq_of(&m), *want);
        *want += 1;
    }
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));

    // Woken by the word, not found by the tick: a message sent while
    // `ready` sleeps ends it at once.
    let tx = store.publisher_with("news", small()).unwrap();
    let mut lat = Vec::new();
    for _ in 0..5 {
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                let at = Instant::now();
                tx.send(b"wake").unwrap();
                at
            });
            assert_eq!(sel.ready(), 1);
            let woke = Instant::now();
            lat.push(woke.saturating_duration_since(h.join().unwrap()));
        });
        sub.try_recv().unwrap();
    }
    lat.sort();
    assert!(lat[2] < Duration::from_millis(50), "{lat:?}");
    for mut p in [pq, pb] {
        p.expect("sent");
        p.go();
        p.wait_ok();
    }
}
