//! Edges of the sender's side and of the closing rule, each found by an
//! adversarial review and seen failing before its fix: a huge spin, an
//! endpoint outliving its store (the worker still unmaps retired chunks),
//! the namespace removed before the store's drop returns, an oversized
//! message at the chunk limit with only warm chunks left, a fork child
//! dropping an inherited store, subscribers joining while a publisher with
//! no subscriber releases, and a blocked thread's waiting mark.

mod common;

use common::Ns;
use stable_fragmented_buffer::{
    BlobStoreLifecycleExt, ChannelConfig, Config, Overflow, PinnedBlobStore, SendTimeoutError,
    TrySendError,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn no_prefetch() -> Config {
    Config {
        prefetch_threshold: 1.0,
        ..Config::default()
    }
}

/// R22-1: `ChannelConfig::spin(Duration::MAX)` (or any spin that does not
/// fit in an `Instant`) panics inside `wait::Spin::again` (`now + budget`)
/// the first time a receive (or a send) has to wait.
#[test]
fn a_huge_spin_does_not_panic() {
    let ns = Ns::new("edge-spin");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 1 << 20).unwrap();
    let _tx = store.publisher("c").unwrap();
    let rx = store
        .subscriber_with("c", ChannelConfig::default().spin(Duration::MAX))
        .unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rx.recv_timeout(Duration::from_millis(10))
    }));
    assert!(r.is_ok(), "recv_timeout with spin(Duration::MAX) panicked");
}

/// R22-3: after the creator's store is dropped while one of its endpoints
/// lives (the closing rule keeps the namespace), the process has no worker
/// thread any more (`Drop for SharedBackend` joined it), and nothing else
/// runs `evict_retired`: chunks retired by other processes stay mapped
/// here for as long as the endpoint lives (Invariant 7: tmpfs does not fall).
/// The control case (store kept) drops them within a worker tick.
#[test]
fn an_endpoint_outliving_its_store_drops_retired_mappings() {
    let (kept, dropped) = (retired_mappings_left(true), retired_mappings_left(false));
    eprintln!("deleted chunk mappings left: store kept {kept}, store dropped {dropped}");
    assert_eq!(kept, 0, "control case");
    assert_eq!(
        dropped, 0,
        "retired chunks stay mapped when the store is gone"
    );
}

fn retired_mappings_left(keep_store: bool) -> usize {
    let ns = Ns::new("edge-map");
    let a = PinnedBlobStore::new_shared(no_prefetch(), ns.as_str(), 64 << 10).unwrap();
    let cfg = ChannelConfig::for_messages(200, 16).overflow(Overflow::Block);
    let rx = a.subscriber_with("c", cfg).unwrap();
    let a = if keep_store {
        Some(a)
    } else {
        drop(a);
        None
    };
    // Another Inner (as another process would): its own table and worker.
    let b = PinnedBlobStore::attach_shared(no_prefetch(), ns.as_str()).unwrap();
    let tx = b.publisher_with("c", cfg).unwrap();
    for i in 0..8u8 {
        tx.send(&vec![i; 40_000]).unwrap();
    }
    for i in 0..8u8 {
        let m = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(m.iter().all(|&x| x == i));
    }
    let n = b.shared_backend().unwrap().cleanup_chunks(0, 0);
    assert!(n >= 6, "retired {n}");
    std::thread::sleep(Duration::from_millis(500));
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let left = maps
        .lines()
        .filter(|l| l.contains(&format!("{}_data", ns.as_str())) && l.contains("(deleted)"))
        .count();
    drop((tx, rx, b, a));
    left
}

/// R22-4: `Drop for Inner` can run in the lifecycle thread: it upgrades its
/// weak target for each pass, so when the user drops the last store during
/// a pass the namespace is removed later, by that thread. `drop(store)`
/// returns with the files still there and the creator lock still held: a
/// restart (`new_shared` of the same name) right after fails with
/// `AlreadyExists`. Before 8134142 the files were removed in `Drop for
/// SharedBackend`, synchronously.
#[test]
fn dropping_the_creators_store_removes_the_namespace_at_once() {
    let (mut late, mut restart_refused) = (0, 0);
    for i in 0..200 {
        let ns = Ns::new("edge-life");
        let store = Arc::new(
            PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 64 << 10).unwrap(),
        );
        let _h = store.start_cleanup_thread(Duration::ZERO);
        std::thread::sleep(Duration::from_micros(200 + (i % 7) * 50));
        drop(store);
        if !ns.files().is_empty() {
            late += 1;
            // A restart under the same name right now:
            match PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 64 << 10) {
                Err(stable_fragmented_buffer::BlobError::AlreadyExists { .. }) => {
                    restart_refused += 1
                }
                Ok(s) => drop(s),
                Err(_) => {}
            }
            // Let the lifecycle thread finish the removal before Ns checks.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!("{late} of 200 drops returned before removal; a restart was refused {restart_refused} times");
    assert_eq!(late, 0, "{late} of 200 drops returned before the namespace was removed ({restart_refused} restarts refused with AlreadyExists)");
}

/// R22-5: a message that needs a dedicated chunk (larger than a chunk) is
/// reported `Full` / times out although no consumer holds anything: the
/// warm pool's FREE chunks count against `max_chunks`, and the "release,
/// evict, reclaim" of `Producer::in_store` never gives a pooled chunk back
/// (only `shrink_pool` after the decay, >= 1 s, 5 s by default). The
/// reason given blames "messages not yet released".
#[test]
fn a_large_send_is_not_full_when_only_warm_chunks_are_left() {
    let ns = Ns::new("edge-pool");
    let store =
        PinnedBlobStore::new_shared_with_limit(no_prefetch(), ns.as_str(), 64 << 10, Some(3))
            .unwrap();
    let cfg = ChannelConfig::for_messages(200, 16).overflow(Overflow::Block);
    let rx = store.subscriber_with("c", cfg).unwrap();
    let tx = store.publisher_with("c", cfg).unwrap();
    for i in 0..6u8 {
        tx.send(&vec![i; 40_000]).unwrap();
        drop(rx.recv_timeout(Duration::from_secs(5)).unwrap());
    }
    assert_eq!(rx.held(), 0);
    assert_eq!(rx.lag(), 0);
    let r = tx.try_send(&vec![9u8; 100_000]);
    eprintln!("try_send of 100 KB: {r:?}; reason {:?}", tx.full_reason());
    let t = Instant::now();
    let r2 = tx.send_timeout(&vec![9u8; 100_000], Duration::from_millis(500));
    eprintln!("send_timeout(500ms): {r2:?} after {:?}", t.elapsed());
    eprintln!("stats: {:?}", store.stats());
    assert!(r.is_ok(), "{r:?}: {:?}", tx.full_reason());
    assert!(!matches!(r2, Err(SendTimeoutError::Timeout)));
}

/// R22-6 (fork): a fork child that drops a store it inherited (the case
/// the fork-epoch check of `Drop for Inner` is for) joins the parent's
/// worker thread in `Drop for SharedBackend`; in the child that thread does
/// not exist and `pthread_join` never returns.
#[test]
fn a_fork_child_can_drop_an_inherited_store() {
    let ns = Ns::new("edge-fork");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 64 << 10).unwrap();
    // SAFETY: the child only drops the store and calls _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // Never unwind into the (forked) test harness: exit 0 if the drop
        // returned, 3 if it panicked.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(store)));
        // SAFETY: _exit in the child.
        unsafe { libc::_exit(if r.is_ok() { 0 } else { 3 }) };
    }
    let until = Instant::now() + Duration::from_secs(5);
    let mut status = 0;
    let mut done = false;
    while Instant::now() < until {
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            done = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if !done {
        // SAFETY: kill and reap our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
        }
    }
    assert!(
        !ns.files().is_empty(),
        "the child removed the parent's namespace"
    );
    drop(store);
    assert!(done, "the fork child hung dropping its inherited store");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the fork child's drop of its inherited store panicked (status {status:#x})"
    );
}

/// R22-7 (expected to pass: a stress of the interleaving the brief asks
/// about). Two publishers send numbered messages (some through the store)
/// on a `Block` broadcast while a subscriber joins and leaves over and
/// over, so that publishers keep finding no subscriber and releasing at
/// once (`Producer::sent`) while it joins. From its first message of each
/// publisher on, a subscriber must get every later one of that publisher,
/// whole.
#[test]
fn a_subscriber_joining_while_unheard_messages_are_released_misses_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let ns = Ns::new("edge-join");
    let store =
        Arc::new(PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 1 << 20).unwrap());
    let cfg = ChannelConfig::for_messages(200, 8).overflow(Overflow::Block);
    let stop = Arc::new(AtomicBool::new(false));
    let pubs: Vec<_> = (0..2u8)
        .map(|p| {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            std::thread::spawn(move || {
                let tx = store.publisher_with("c", cfg).unwrap();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let len = if seq % 7 == 0 { 1000 } else { 16 };
                    let mut m = vec![p; len];
                    m[1..9].copy_from_slice(&seq.to_le_bytes());
                    match tx.send_timeout(&m, Duration::from_millis(200)) {
                        Ok(()) => seq += 1,
                        Err(SendTimeoutError::Timeout) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                seq
            })
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(4);
    let (mut joins, mut got) = (0u64, 0u64);
    while Instant::now() < until {
        let rx = store.subscriber_with("c", cfg).unwrap();
        joins += 1;
        let mut next: [Option<u64>; 2] = [None, None];
        for _ in 0..(joins % 40) {
            let m = match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(m) => m,
                Err(e) => panic!("{e:?}"),
            };
            let p = m[0] as usize;
            let seq = u64::from_le_bytes(m[1..9].try_into().unwrap());
            let len = if seq % 7 == 0 { 1000 } else { 16 };
            assert_eq!(m.len(), len);
            assert!(m[9..].iter().all(|&b| b == p as u8), "bytes of {p}/{seq}");
            if let Some(n) = next[p] {
                assert_eq!(
                    seq, n,
                    "publisher {p}: expected {n}, got {seq} (join {joins})"
                );
            }
            next[p] = Some(seq + 1);
            got += 1;
        }
        drop(rx);
        std::thread::sleep(Duration::from_micros(joins % 50));
    }
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<u64> = pubs.into_iter().map(|t| t.join().unwrap()).collect();
    eprintln!("joins {joins}, received {got}, sent {sent:?}");
}

/// R22-8 (diagnostics, C12): one producer endpoint shared by two threads
/// (`Publisher` is `Sync`). While thread A is blocked in `send`, every
/// call of thread B that returns (here a `try_send` that finds the ring
/// full) clears the endpoint's one `waiting_since_ms` in `Drop for
/// WaitMark`; A marks it again from "now" at its next tick. `sfb stat`
/// then never shows A blocked for more than a tick.
#[test]
fn a_blocked_thread_stays_marked_waiting_while_another_thread_sends() {
    let alone = waiting_of_blocked_producer(false);
    let shared = waiting_of_blocked_producer(true);
    eprintln!(
        "producer waiting_ms after A blocked 1.5 s: alone {alone:?}, with B's try_sends {shared:?}"
    );
    assert!(
        alone.iter().any(|w| w.is_some_and(|ms| ms >= 1000)),
        "control: {alone:?}"
    );
    assert!(
        shared.iter().any(|w| w.is_some_and(|ms| ms >= 1000)),
        "{shared:?}"
    );
}

fn waiting_of_blocked_producer(other_thread_sends: bool) -> Vec<Option<u64>> {
    let ns = Ns::new("edge-mark");
    let store =
        Arc::new(PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 1 << 20).unwrap());
    let cfg = ChannelConfig::for_messages(16, 4).overflow(Overflow::Block);
    let rx = store.subscriber_with("c", cfg).unwrap();
    let tx = Arc::new(store.publisher_with("c", cfg).unwrap());
    while tx.try_send(b"fill").is_ok() {}
    let a = {
        let tx = Arc::clone(&tx);
        std::thread::spawn(move || tx.send(b"blocked").unwrap())
    };
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        if other_thread_sends {
            assert!(matches!(tx.try_send(b"b"), Err(TrySendError::Full)));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let report = stable_fragmented_buffer::inspect::inspect_namespace(ns.as_str()).unwrap();
    let waiting: Vec<Option<u64>> = report.channels[0]
        .participants
        .iter()
        .filter(|p| p.role == "producer")
        .map(|p| p.waiting_ms)
        .collect();
    while rx.try_recv().is_ok() {}
    a.join().unwrap();
    drop((rx, tx, store));
    waiting
}
