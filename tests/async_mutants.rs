//! The async waits and `Select`, tests from the mutation audit of that
//! code: each kills mutants the other async tests let live (masks left set,
//! readiness of closed and disconnected endpoints, turns in `Select`, a
//! kernel without `futex_waitv`, fork children, the helper's life).

mod common;

use common::Ns;
use stable_fragmented_buffer::{ChannelConfig, Config, Overflow, PinnedBlobStore, Select};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

fn store(ns: &Ns) -> PinnedBlobStore {
    PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 1 << 20).unwrap()
}

struct Flag(AtomicBool, AtomicU32);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.store(true, Ordering::SeqCst);
    }
}

fn flag() -> (Arc<Flag>, Waker) {
    let f = Arc::new(Flag(AtomicBool::new(false), AtomicU32::new(0)));
    (Arc::clone(&f), Waker::from(f))
}

fn woken_within(f: &Flag, d: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < d {
        if f.0.load(Ordering::SeqCst) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    f.0.load(Ordering::SeqCst)
}

/// A word of the channel file's header (260: data_waiters, 324:
/// space_waiters; docs/design.md), read through a mapping of our own.
struct Word(memmap2::Mmap, usize);

impl Word {
    fn of(ns: &Ns, chan: &str, off: usize) -> Self {
        let path = common::shm_dir().join(format!("{}_chan+{chan}", ns.as_str()));
        let f = std::fs::File::open(path).unwrap();
        // SAFETY: a read-only view of a file the test's channel keeps.
        Word(unsafe { memmap2::Mmap::map(&f).unwrap() }, off)
    }
    fn get(&self) -> u32 {
        // SAFETY: a 4-aligned offset inside the mapped header.
        let w = unsafe { &*(self.0.as_ptr().add(self.1) as *const AtomicU32) };
        w.load(Ordering::SeqCst)
    }
}

/// A `Select` names an endpoint whose `try_recv` reports `Disconnected`
/// (its producers all left): that is "ready" as much as a message is.
#[test]
fn select_names_a_disconnected_endpoint() {
    let ns = Ns::new("mk-seldisc");
    let store = store(&ns);
    let rx = store.receiver("q").unwrap();
    let sub = store.subscriber("n").unwrap();
    drop(store.sender("q").unwrap());
    drop(store.publisher("n").unwrap());
    let mut sel = Select::new();
    sel.add(&rx);
    sel.add(&sub);
    let got = sel.ready_timeout(Duration::from_millis(500));
    assert!(got.is_some(), "a disconnected endpoint was not ready");
    let i = got.unwrap();
    let r = if i == 0 {
        rx.try_recv().map(|m| m.to_vec())
    } else {
        sub.try_recv().map(|m| m.to_vec())
    };
    assert!(r.is_err(), "{r:?}");
}

/// Makes `futex_waitv` fail with ENOSYS in the calling thread (a kernel
/// before 5.16), through a seccomp filter on that thread only.
fn no_futex_waitv_in_this_thread() {
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if A == SYS_futex_waitv: next, else skip one
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: libc::SYS_futex_waitv as u32,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x0005_0000 | libc::ENOSYS as u32,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: prctl with a valid filter program that outlives the call.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog
            ),
            0
        );
    }
}

/// Without `futex_waitv` (ENOSYS), a `Select` waiting on idle endpoints
/// falls back to short sleeps: it does not spin.
#[test]
fn select_without_futex_waitv_sleeps_in_slices_rather_than_spinning() {
    let ns = Ns::new("mk-nowaitv");
    let store = store(&ns);
    let rx = store.receiver("q").unwrap();
    let _tx = store.sender("q").unwrap();
    let (cpu, runnable, wall, got) = std::thread::scope(|s| {
        s.spawn(|| {
            no_futex_waitv_in_this_thread();
            let mut sel = Select::new();
            sel.add(&rx);
            let (c0, r0, t) = (
                common::thread_cpu_ns(),
                common::thread_runnable_ns(),
                Instant::now(),
            );
            let got = sel.ready_timeout(Duration::from_millis(400));
            (
                common::thread_cpu_ns() - c0,
                common::thread_runnable_ns() - r0,
                t.elapsed(),
                got,
            )
        })
        .join()
        .unwrap()
    });
    assert_eq!(got, None);
    assert!(wall >= Duration::from_millis(400), "{wall:?}");
    eprintln!(
        "cpu {} ms runnable {} ms",
        cpu / 1_000_000,
        runnable / 1_000_000
    );
    assert!(
        cpu < 100_000_000,
        "spun: cpu {} ms, runnable {} ms of {wall:?}",
        cpu / 1_000_000,
        runnable / 1_000_000
    );
}

/// A `Select` names an endpoint that holds `max_held` messages: its
/// `try_recv` reports `TooManyHeld` at once, even with nothing to receive.
#[test]
fn select_names_an_endpoint_holding_too_many() {
    let ns = Ns::new("mk-selheld");
    let store = store(&ns);
    let cfg = ChannelConfig::default().max_held(2);
    let sub = store.subscriber_with("n", cfg).unwrap();
    let tx = store.publisher_with("n", cfg).unwrap();
    tx.send(b"a").unwrap();
    tx.send(b"b").unwrap();
    let held = (sub.try_recv().unwrap(), sub.try_recv().unwrap());
    let mut sel = Select::new();
    sel.add(&sub);
    assert_eq!(sel.ready_timeout(Duration::from_millis(300)), Some(0));
    assert!(matches!(
        sub.try_recv(),
        Err(stable_fragmented_buffer::TryRecvError::TooManyHeld)
    ));
    drop(held);
}

/// A receive and a send that waited leave nothing in their channel's
/// waiter masks once they are dropped or done (a bit left behind makes
/// every later send or release pay a wake-up system call).
#[test]
fn ended_async_waits_leave_no_bit_in_the_waiter_masks() {
    let ns = Ns::new("mk-mask");
    let store = store(&ns);
    let noop = flag().1;
    let mut cx = Context::from_waker(&noop);
    // Consumer side.
    let rx = store.receiver("q").unwrap();
    let tx = store.sender("q").unwrap();
    let data_mask = Word::of(&ns, "q", 260);
    {
        let mut fut = Box::pin(rx.recv_async());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_ne!(data_mask.get(), 0);
    }
    assert!(zero_within(&data_mask), "a dropped receive left its bit");
    let (f, w) = flag();
    let mut fut = Box::pin(rx.recv_async());
    assert!(fut.as_mut().poll(&mut Context::from_waker(&w)).is_pending());
    tx.send(b"x").unwrap();
    assert!(woken_within(&f, Duration::from_secs(1)));
    assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
    assert!(zero_within(&data_mask), "a completed receive left its bit");
    drop(fut);
    // Producer side: a full Block ring whose subscriber does not read.
    let cfg = ChannelConfig::for_messages(64, 4).overflow(Overflow::Block);
    let sub = store.subscriber_with("c", cfg).unwrap();
    let p = store.publisher_with("c", cfg).unwrap();
    let space_mask = Word::of(&ns, "c", 324);
    while p.try_send(b"fill").is_ok() {}
    {
        let mut send = Box::pin(p.send_async(b"more"));
        assert!(send.as_mut().poll(&mut cx).is_pending());
        assert_ne!(space_mask.get(), 0);
    }
    assert!(zero_within(&space_mask), "a dropped send left its bit");
    let (f, w) = flag();
    let mut send = Box::pin(p.send_async(b"more"));
    assert!(send
        .as_mut()
        .poll(&mut Context::from_waker(&w))
        .is_pending());
    drop(sub.try_recv().unwrap());
    assert!(woken_within(&f, Duration::from_secs(1)));
    assert!(matches!(send.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
    assert!(zero_within(&space_mask), "a completed send left its bit");
}

/// Polls `fut` again each time it is woken, for `d`; returns how many
/// times it was woken (it must stay pending).
fn wakes_over<F: Future + Unpin>(fut: &mut F, d: Duration) -> u32 {
    let (f, waker) = flag();
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut *fut).poll(&mut cx).is_pending());
    let t = Instant::now();
    while t.elapsed() < d {
        if f.0.swap(false, Ordering::SeqCst) {
            assert!(Pin::new(&mut *fut).poll(&mut cx).is_pending());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    f.1.load(Ordering::SeqCst)
}

use std::pin::Pin;

/// A send waiting for room on a ring that has none (a subscriber that does
/// not read) is not woken while nothing changes: not at once, not by the
/// liveness tick.
#[test]
fn an_idle_waiting_send_is_not_woken() {
    let ns = Ns::new("mk-idlesend");
    let store = store(&ns);
    let cfg = ChannelConfig::for_messages(64, 4).overflow(Overflow::Block);
    let _stuck = store.subscriber_with("c", cfg).unwrap();
    let p = store.publisher_with("c", cfg).unwrap();
    while p.try_send(b"fill").is_ok() {}
    let mut send = Box::pin(p.send_async(b"more"));
    let n = wakes_over(&mut send, Duration::from_millis(450));
    assert!(n <= 10, "woken {n} times while nothing changed");
}

/// Sends waiting for room on two channels: room made on the second wakes
/// its send at once (the helper waits on both channels' words).
#[test]
fn sends_waiting_on_two_channels_are_each_woken_by_their_own_room() {
    let ns = Ns::new("mk-twosends");
    let store = store(&ns);
    let cfg = ChannelConfig::for_messages(64, 4).overflow(Overflow::Block);
    let mut fast = 0;
    for round in 0..6 {
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        let _sa = store.subscriber_with(&a, cfg).unwrap();
        let sb = store.subscriber_with(&b, cfg).unwrap();
        let pa = store.publisher_with(&a, cfg).unwrap();
        let pb = store.publisher_with(&b, cfg).unwrap();
        while pa.try_send(b"fill").is_ok() {}
        while pb.try_send(b"fill").is_ok() {}
        let (fa, wa) = flag();
        let (fb, wb) = flag();
        let mut sa = Box::pin(pa.send_async(b"a"));
        let mut sbf = Box::pin(pb.send_async(b"b"));
        assert!(sa.as_mut().poll(&mut Context::from_waker(&wa)).is_pending());
        assert!(sbf
            .as_mut()
            .poll(&mut Context::from_waker(&wb))
            .is_pending());
        std::thread::sleep(Duration::from_millis(5));
        drop(sb.try_recv().unwrap());
        if woken_within(&fb, Duration::from_millis(20)) {
            fast += 1;
        }
        // (The first channel's send may be woken by a tick: not asserted.)
        let _ = &fa;
    }
    assert!(
        fast >= 5,
        "room on the second channel woke its send at once in {fast} of 6 rounds"
    );
}

/// A namespace removed while a receive and a send wait (forced cleanup):
/// both end, with an error, within a second (no word moves: the liveness
/// tick finds them ready).
#[test]
fn waits_end_when_the_namespace_is_closed() {
    let ns = Ns::new("mk-closed");
    let store = store(&ns);
    let rx = store.receiver("q").unwrap();
    let _tx = store.sender("q").unwrap();
    let cfg = ChannelConfig::for_messages(64, 4).overflow(Overflow::Block);
    let _stuck = store.subscriber_with("c", cfg).unwrap();
    let p = store.publisher_with("c", cfg).unwrap();
    while p.try_send(b"fill").is_ok() {}
    let (fr, wr) = flag();
    let (fs, ws) = flag();
    let mut recv = Box::pin(rx.recv_async());
    let mut send = Box::pin(p.send_async(b"more"));
    assert!(recv
        .as_mut()
        .poll(&mut Context::from_waker(&wr))
        .is_pending());
    assert!(send
        .as_mut()
        .poll(&mut Context::from_waker(&ws))
        .is_pending());
    stable_fragmented_buffer::SharedBackend::cleanup_namespace_forced(ns.as_str()).unwrap();
    assert!(
        woken_within(&fr, Duration::from_secs(1)),
        "receive not woken"
    );
    assert!(woken_within(&fs, Duration::from_secs(1)), "send not woken");
    let r = recv.as_mut().poll(&mut Context::from_waker(&wr));
    assert!(matches!(r, Poll::Ready(Err(_))), "{r:?}");
    let s = send.as_mut().poll(&mut Context::from_waker(&ws));
    assert!(matches!(s, Poll::Ready(Err(_))), "{s:?}");
}

/// A stream is terminated once it has ended (its channel disconnected and
/// drained), not before.
#[test]
fn a_stream_is_terminated_once_it_ended() {
    use futures_core::{FusedStream, Stream};
    let ns = Ns::new("mk-fused");
    let store = store(&ns);
    let rx = store.receiver("q").unwrap();
    let tx = store.sender("q").unwrap();
    tx.send(b"last").unwrap();
    drop(tx);
    let noop = flag().1;
    let mut cx = Context::from_waker(&noop);
    let mut s = Box::pin(rx.stream());
    assert!(!s.is_terminated());
    assert!(matches!(
        s.as_mut().poll_next(&mut cx),
        Poll::Ready(Some(Ok(_)))
    ));
    assert!(!s.is_terminated());
    assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(None)));
    assert!(s.is_terminated());
}

/// Large sends that waited for room and were dropped give their store
/// entries back: many of them do not fill the store.
#[test]
fn dropped_large_sends_give_their_store_entries_back() {
    let ns = Ns::new("mk-unstage");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 2 << 20).unwrap();
    let cfg = ChannelConfig::for_messages(4096, 64).overflow(Overflow::Block);
    let reader = store.subscriber_with("c", cfg).unwrap();
    let tx = store.publisher_with("c", cfg).unwrap();
    while tx.try_send(b"small").is_ok() {}
    let big = vec![7u8; 512 << 10];
    let noop = flag().1;
    let mut cx = Context::from_waker(&noop);
    for _ in 0..16 {
        let mut fut = Box::pin(tx.send_async(&big));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        drop(fut);
    }
    while reader.try_recv().is_ok() {}
    let r = tx.try_send(&big);
    assert!(r.is_ok(), "the store is full of dropped sends: {r:?}");
}

/// `try_ready` and `ready` name the endpoint that has a message, and
/// endpoints ready at once are named in turn.
#[test]
fn select_names_ready_endpoints_in_turn() {
    let ns = Ns::new("mk-selturn");
    let store = store(&ns);
    let a = store.subscriber("a").unwrap();
    let b = store.subscriber("b").unwrap();
    let c = store.subscriber("c").unwrap();
    let pa = store.publisher("a").unwrap();
    let pc = store.publisher("c").unwrap();
    let _pb = store.publisher("b").unwrap();
    let mut sel = Select::new();
    sel.add(&a);
    sel.add(&b);
    sel.add(&c);
    pa.send(b"x").unwrap();
    assert_eq!(sel.try_ready(), Some(0));
    assert_eq!(sel.ready(), 0);
    pc.send(b"y").unwrap();
    // Both 0 and 2 ready, nothing received: taken in turn.
    let order: Vec<usize> = (0..4).map(|_| sel.try_ready().unwrap()).collect();
    assert_eq!(order, [2, 0, 2, 0]);
}

fn zero_within(w: &Word) -> bool {
    let t = Instant::now();
    while w.get() != 0 && t.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(1));
    }
    w.get() == 0
}

fn fork_child(f: &mut dyn FnMut() -> i32) -> Option<i32> {
    // SAFETY: the child runs `f` then leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let code = f();
        // SAFETY: ends the child without running the parent's atexit work.
        unsafe { libc::_exit(code) };
    }
    let t = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(libc::WEXITSTATUS(status));
        }
        if t.elapsed() > Duration::from_secs(5) {
            // SAFETY: kill and reap our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn helpers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "sfb-async")
        .count()
}

/// In a process of its own (a fork child: a fresh helper): an endpoint
/// that used async keeps the helper (asleep) while it lives; a receive
/// future that outlives its endpoint is still woken; once both are gone
/// the helper leaves.
#[test]
fn the_helper_lives_while_endpoints_or_waits_do() {
    let ns = Ns::new("mk-users");
    let code = fork_child(&mut || {
        let cns = format!("{}-c{}", ns.as_str(), std::process::id());
        let s = PinnedBlobStore::new_shared(Config::default(), &cns, 1 << 20).unwrap();
        let sub = s.subscriber("c").unwrap();
        let tx = s.publisher("c").unwrap();
        let noop = flag().1;
        let mut f = Box::pin(sub.recv_async());
        if f.as_mut().poll(&mut Context::from_waker(&noop)).is_ready() {
            return 9;
        }
        drop(f);
        std::thread::sleep(Duration::from_millis(50));
        if helpers() != 1 {
            return 2;
        }
        let (fl, w) = flag();
        let mut f = Box::pin(sub.recv_async());
        if f.as_mut().poll(&mut Context::from_waker(&w)).is_ready() {
            return 9;
        }
        drop(sub);
        std::thread::sleep(Duration::from_millis(50));
        tx.send(b"x").unwrap();
        if !woken_within(&fl, Duration::from_millis(500)) {
            return 3;
        }
        drop(f);
        drop(tx);
        drop(s);
        // Its endpoint gone and its last wait over (the helper's own scan
        // removed it): the helper ends, it does not sleep on for an hour.
        let t = Instant::now();
        while helpers() > 0 {
            if t.elapsed() > Duration::from_secs(1) {
                return 4;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        0
    });
    let _ = stable_fragmented_buffer::SharedBackend::cleanup_namespace_forced(&format!(
        "{}-c",
        ns.as_str()
    ));
    assert_eq!(code, Some(0));
}

/// Three receive futures of one channel, each polled again (with its own
/// waker) while registered: a send wakes every one of them.
#[test]
fn repolled_registered_futures_of_one_channel_are_each_woken() {
    let ns = Ns::new("mk-renew");
    let store = store(&ns);
    let subs: Vec<_> = (0..3).map(|_| store.subscriber("c").unwrap()).collect();
    let tx = store.publisher("c").unwrap();
    let flags: Vec<_> = (0..3).map(|_| flag()).collect();
    let mut futs: Vec<_> = subs.iter().map(|s| Box::pin(s.recv_async())).collect();
    for round in 0..2 {
        for (f, (_, w)) in futs.iter_mut().zip(&flags) {
            assert!(
                f.as_mut().poll(&mut Context::from_waker(w)).is_pending(),
                "round {round}"
            );
        }
    }
    tx.send(b"x").unwrap();
    for (i, (fl, _)) in flags.iter().enumerate() {
        assert!(
            woken_within(fl, Duration::from_millis(50)),
            "future {i} not woken"
        );
    }
}

/// A fork child polling a receive future it inherited while it waited
/// gets `Disconnected` at once (the parent's registration is not its own).
#[test]
fn a_fork_child_polling_an_inherited_waiting_future_is_told_disconnected() {
    let ns = Ns::new("mk-forkpoll");
    let store = store(&ns);
    let sub = store.subscriber("c").unwrap();
    let _tx = store.publisher("c").unwrap();
    let noop = flag().1;
    let mut fut = Box::pin(sub.recv_async());
    assert!(fut
        .as_mut()
        .poll(&mut Context::from_waker(&noop))
        .is_pending());
    let code = fork_child(
        &mut || match fut.as_mut().poll(&mut Context::from_waker(&noop)) {
            Poll::Ready(Err(_)) => 0,
            Poll::Ready(Ok(_)) => 6,
            Poll::Pending => 5,
        },
    );
    assert_eq!(code, Some(0));
}
