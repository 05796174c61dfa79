//! Edges of the async wait found by an adversarial review: waits of one
//! endpoint racing, fork children, a stall timeout, large sends waiting
//! for room, a future polled after it completed, and the helper's hold on
//! an endpoint that left.

mod common;

use common::Ns;
use stable_fragmented_buffer::{
    ChannelConfig, Config, Overflow, PinnedBlobStore, Receiver, Subscriber,
};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

fn store(ns: &Ns) -> PinnedBlobStore {
    PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 1 << 20).unwrap()
}

/// A waker that records that it was called.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn flag() -> (Arc<Flag>, Waker) {
    let f = Arc::new(Flag(AtomicBool::new(false)));
    (Arc::clone(&f), Waker::from(f))
}

/// Waits up to `d` for the flag.
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

/// The channel file's consumer waiter mask (`data_waiters`, at byte 260 of
/// the header: see docs/design.md), read through a mapping of our own.
struct Mask(memmap2::Mmap);

impl Mask {
    fn of(ns: &Ns, chan: &str) -> Self {
        let path = common::shm_dir().join(format!("{}_chan+{chan}", ns.as_str()));
        let f = std::fs::File::open(path).unwrap();
        // SAFETY: a read-only view of a file the test's channel keeps; the
        // word is read with an atomic load.
        Mask(unsafe { memmap2::Mmap::map(&f).unwrap() })
    }

    fn get(&self) -> u32 {
        // SAFETY: offset 260 is 4-aligned inside the mapped header.
        let w = unsafe { &*(self.0.as_ptr().add(260) as *const AtomicU32) };
        w.load(Ordering::SeqCst)
    }
}

/// Two waits of one receiver (a future that waits, and others begun and
/// dropped meanwhile, as tasks sharing an `Arc<Receiver>` do): the waiting
/// one's bit in the waiter mask never goes, so a send wakes it at once.
#[test]
fn waits_of_one_endpoint_beginning_and_ending_never_clear_each_others_bit() {
    let ns = Ns::new("aio-race");
    let store = store(&ns);
    let rx = Arc::new(store.receiver("q").unwrap());
    let tx = store.sender("q").unwrap();
    let mask = Mask::of(&ns, "q");
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (rx, stop) = (Arc::clone(&rx), Arc::clone(&stop));
        std::thread::spawn(move || {
            let noop = flag().1;
            while !stop.load(Ordering::Relaxed) {
                let mut other = pin!(rx.recv_async());
                let _ = other.as_mut().poll(&mut Context::from_waker(&noop));
            }
        })
    };
    // Meanwhile this thread's waits begin and end too: a wait that ends
    // (its endpoint's count to 0) racing one that begins (from 0) must not
    // leave the beginning one unannounced.
    let t = Instant::now();
    let (mut tries, mut cleared) = (0u32, 0u32);
    while t.elapsed() < Duration::from_millis(300) {
        let noop = flag().1;
        let mut mine = pin!(rx.recv_async());
        assert!(mine
            .as_mut()
            .poll(&mut Context::from_waker(&noop))
            .is_pending());
        if mask.get() == 0 {
            cleared += 1;
        }
        tries += 1;
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    assert_eq!(
        cleared, 0,
        "a waiting future's bit was cleared ({tries} tries)"
    );
    let (f, waker) = flag();
    let mut fut = pin!(rx.recv_async());
    assert!(fut
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    tx.send(b"job").unwrap();
    assert!(woken_within(&f, Duration::from_millis(50)), "not woken");
    match fut.as_mut().poll(&mut Context::from_waker(&waker)) {
        Poll::Ready(Ok(m)) => assert_eq!(&*m, b"job"),
        other => panic!("{other:?}"),
    }
}

/// Runs `fut` to completion on this thread (parked between polls).
fn park_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(x) = fut.as_mut().poll(&mut Context::from_waker(&waker)) {
            return x;
        }
        std::thread::park_timeout(Duration::from_secs(1));
    }
}

/// Forks with `f` in the child (which then exits); returns the child's pid
/// and status, or `None` if it did not exit within 3 s (it is killed).
fn fork_child(f: &mut dyn FnMut()) -> (i32, Option<i32>) {
    // SAFETY: the child runs `f` (library calls that the fork handlers
    // prepared it for) and leaves with _exit, running no destructor of the
    // parent's state.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        f();
        // SAFETY: ends the child without running the parent's atexit work.
        unsafe { libc::_exit(0) };
    }
    let t = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child, WNOHANG.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return (pid, Some(status));
        }
        if t.elapsed() > Duration::from_secs(3) {
            // SAFETY: kill and reap our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return (pid, None);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A fork child that drops a pending receive future it inherited leaves
/// the parent's announcement alone: the parent's future is still woken by
/// the next send.
#[test]
fn a_fork_child_dropping_an_inherited_waiting_future_leaves_the_parents_wait() {
    let ns = Ns::new("aio-fork");
    let store = store(&ns);
    let sub = store.subscriber("c").unwrap();
    let tx = store.publisher("c").unwrap();
    let mask = Mask::of(&ns, "c");
    let (f, waker) = flag();
    let mut fut = Box::pin(sub.recv_async());
    assert!(fut
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    let before = mask.get();
    assert_ne!(before, 0);
    let mut fut = Some(fut);
    let (_, status) = fork_child(&mut || drop(fut.take()));
    assert_eq!(status, Some(0));
    assert!(fut.is_some());
    assert_eq!(mask.get(), before, "the child cleared the parent's bit");
    tx.send(b"x").unwrap();
    assert!(woken_within(&f, Duration::from_millis(50)), "not woken");
}

/// Forks while other threads register and drop async waits all the time
/// (so the helper's lock is often held at the fork): every child, which
/// drops inherited async endpoints and then waits on a channel of its own,
/// finishes.
#[test]
fn fork_children_never_hang_on_the_async_helper_of_their_parent() {
    let ns = Ns::new("aio-forklock");
    let store = Arc::new(store(&ns));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..4 {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || {
            let rx = store.receiver(&format!("q{t}")).unwrap();
            let noop = flag().1;
            while !stop.load(Ordering::Relaxed) {
                let mut fut = pin!(rx.recv_async());
                let _ = fut.as_mut().poll(&mut Context::from_waker(&noop));
            }
        }));
    }
    let mut hung = 0;
    for _ in 0..20 {
        let inherited: Receiver = store.receiver("inherited").unwrap();
        let mut fut = Box::pin(inherited.recv_async());
        let _ = fut.as_mut().poll(&mut Context::from_waker(&flag().1));
        let mut parts = Some((fut, inherited));
        let (pid, status) = fork_child(&mut || {
            drop(parts.take());
            // The child's own channel and wait (a fresh helper).
            let ns = format!("{}-child-{}", ns.as_str(), std::process::id());
            let s = PinnedBlobStore::new_shared(Config::default(), &ns, 1 << 20).unwrap();
            let rx = s.receiver("c").unwrap();
            let tx = s.sender("c").unwrap();
            // Polled by hand: an executor's own threads and locks are the
            // parent's in a fork child (smol's reactor may be mid-lock).
            tx.send(b"hi").unwrap();
            let got = park_on(rx.recv_async()).map(|m| m.to_vec());
            assert_eq!(got.unwrap(), b"hi");
        });
        match status {
            Some(0) => {}
            Some(s) => panic!("child failed: {s}"),
            None => {
                hung += 1;
                let child_ns = format!("{}-child-{pid}", ns.as_str());
                let _ =
                    stable_fragmented_buffer::SharedBackend::cleanup_namespace_forced(&child_ns);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(hung, 0, "fork children hung");
}

/// `send_async` on a full `Block` ring whose subscriber never reads: the
/// stall timeout lets the subscriber go and the send completes, as a
/// blocking `send_timeout` does.
#[test]
fn send_async_completes_when_the_stall_timeout_lets_a_stuck_subscriber_go() {
    let ns = Ns::new("aio-stall");
    let store = store(&ns);
    let cfg = ChannelConfig::for_messages(64, 4)
        .overflow(Overflow::Block)
        .stall_timeout(Duration::from_millis(200));
    let _stuck: Subscriber = store.subscriber_with("c", cfg).unwrap();
    let tx = store.publisher_with("c", cfg).unwrap();
    while tx.try_send(b"fill").is_ok() {}
    let t = Instant::now();
    let r = smol::block_on(async {
        let send = tx.send_async(b"after");
        let timer = async {
            smol::Timer::after(Duration::from_secs(3)).await;
            Err(())
        };
        smol::future::or(async { Ok(send.await) }, timer).await
    });
    assert!(matches!(r, Ok(Ok(()))), "{r:?} after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

/// A message over the inline capacity, waiting for room: it is appended to
/// the store once, not again at every wake-up (each extra copy would fill
/// and recycle store chunks), and dropping the waiting future gives its
/// store entry back.
#[test]
fn a_large_send_waiting_for_room_is_copied_into_the_store_once() {
    let ns = Ns::new("aio-large");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 2 << 20).unwrap();
    let cfg = ChannelConfig::for_messages(4096, 64).overflow(Overflow::Block);
    let _stuck = store.subscriber_with("c", cfg).unwrap();
    let reader = store.subscriber_with("c", cfg).unwrap();
    let tx = store.publisher_with("c", cfg).unwrap();
    while tx.try_send(b"small").is_ok() {}
    let big = vec![5u8; 512 << 10];
    let (f, waker) = flag();
    let mut fut = Box::pin(tx.send_async(&big));
    assert!(fut
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    let recycled = store.stats().recycled;
    let mut wakes = 0;
    // Each message the second subscriber takes frees nothing (the stuck
    // one gates the ring) but moves the space word: a wake-up, a retry.
    while let Ok(m) = reader.try_recv() {
        drop(m);
        if woken_within(&f, Duration::from_millis(20)) {
            wakes += 1;
            f.0.store(false, Ordering::SeqCst);
            assert!(fut
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending());
        }
    }
    assert!(wakes >= 10, "only {wakes} wake-ups");
    let more = store.stats().recycled - recycled;
    assert!(more <= 1, "{more} chunks recycled over {wakes} retries");
    drop(fut);
}

/// A future polled again after it returned `Ready` does nothing: a send is
/// not sent twice, a receive does not take a second message.
#[test]
fn futures_polled_after_completion_do_nothing() {
    let ns = Ns::new("aio-fused");
    let store = store(&ns);
    let rx = store.receiver("q").unwrap();
    let tx = store.sender("q").unwrap();
    let noop = flag().1;
    let mut cx = Context::from_waker(&noop);
    let mut send = pin!(tx.send_async(b"once"));
    assert!(matches!(send.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
    assert!(send.as_mut().poll(&mut cx).is_pending());
    tx.send(b"second").unwrap();
    let mut recv = pin!(rx.recv_async());
    match recv.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(m)) => assert_eq!(&*m, b"once"),
        other => panic!("{other:?}"),
    }
    assert!(recv.as_mut().poll(&mut cx).is_pending());
    assert_eq!(&*rx.try_recv().unwrap(), b"second");
    assert!(rx.try_recv().is_err(), "sent twice");
}

/// An endpoint that waited and left while another endpoint of its channel
/// still waits is gone at once (the helper does not keep it).
#[test]
fn an_endpoint_that_waited_and_left_is_not_kept_by_the_helper() {
    let ns = Ns::new("aio-leave");
    let store = store(&ns);
    let tx = store.publisher("c").unwrap();
    let first = store.subscriber("c").unwrap();
    let second = store.subscriber("c").unwrap();
    let noop = flag().1;
    let mut cx = Context::from_waker(&noop);
    let mut a = Box::pin(first.recv_async());
    assert!(a.as_mut().poll(&mut cx).is_pending());
    let mut b = pin!(second.recv_async());
    assert!(b.as_mut().poll(&mut cx).is_pending());
    assert_eq!(tx.subscriber_count(), 2);
    drop(a);
    drop(first);
    // The helper lets go of it as soon as it looks again (it is told to).
    let t = Instant::now();
    while tx.subscriber_count() > 1 && t.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(tx.subscriber_count(), 1, "the first subscriber is kept");
}
