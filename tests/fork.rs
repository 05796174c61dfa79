//! A store creator killed while a `fork()` child of it lives (Python's
//! `multiprocessing` forks by default): the child must not keep the
//! creator lock, so the namespace can be removed and created again.
//!
//! Real processes: the test starts a peer (this binary again, through
//! `peer_process_entry_point`) that creates the store and forks a
//! grandchild; the test kills the peer, and acts while the grandchild
//! lives.

mod common;

use common::{env, say, spawn_peer, Ns, Peer};
use stable_fragmented_buffer::{BlobError, Config, PinnedBlobStore, SharedBackend};
use std::process::ChildStdin;
use std::time::Duration;

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
        "fork-creator" => role_fork_creator(),
        other => panic!("unknown role {other}"),
    }
}

/// Creates the store, forks a grandchild, says "forked PID", and waits to
/// be killed. The grandchild says "grandchild-ctrl-fds N" (how many of its
/// descriptors still name the control file it inherited) and then lives
/// until its stdin (the test's pipe) closes or it is killed.
fn role_fork_creator() {
    use std::os::unix::fs::MetadataExt;
    let ns = env("SFB_NS");
    let store = PinnedBlobStore::new_shared(Config::default(), &ns, CHUNK).unwrap();
    let h = store.append_shared(b"from the killed creator").unwrap();
    assert!(store.resolve(&h).is_some());
    let ctrl = std::fs::metadata(common::shm_dir().join(format!("{ns}_ctrl"))).unwrap();
    let ctrl = (ctrl.dev(), ctrl.ino());
    // SAFETY: the grandchild runs only async-signal-safe code (fstat, write,
    // read, _exit) and never returns into Rust code of this process.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        grandchild(ctrl);
    }
    say(format!("forked {pid}"));
    std::thread::sleep(Duration::from_secs(600));
    drop(store);
}

/// The grandchild's life: async-signal-safe calls only (the parent had
/// other threads, whose locks are frozen here).
fn grandchild(ctrl: (u64, u64)) -> ! {
    let mut left = 0u8;
    for fd in 0..1024 {
        // SAFETY: an all-zero stat is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is valid for writes for the duration of the call.
        if unsafe { libc::fstat(fd, &mut st) } == 0 && (st.st_dev, st.st_ino) == ctrl {
            left = left.saturating_add(1);
        }
    }
    let mut line = *b"SFB grandchild-ctrl-fds 0\n";
    line[line.len() - 2] = b'0' + left.min(9);
    // SAFETY: writes our own buffer to our stdout (the test's pipe).
    unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
    let mut b = 0u8;
    loop {
        // SAFETY: reads one byte into `b` from our stdin.
        let n = unsafe { libc::read(0, (&mut b as *mut u8).cast(), 1) };
        if n == 0 || (n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR))
        {
            break;
        }
    }
    // SAFETY: leaves at once, running nothing of the parent's.
    unsafe { libc::_exit(0) }
}

/// A creator (peer) killed with SIGKILL, with the write end of the fork
/// child's stdin (the child lives until it closes); the pid of its fork
/// child, still alive and made a child of this process (a subreaper), so
/// its pid stays ours until [`reap`] (no pid reuse, no leftover process);
/// and how many descriptors of the control file the fork child kept.
fn killed_creator_with_live_fork_child(ns: &Ns) -> ((Peer, ChildStdin), i32, String) {
    // SAFETY: prctl with integer arguments; makes orphaned descendants of
    // this process its children.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "prctl: {}", std::io::Error::last_os_error());
    let mut peer = spawn_peer(ENTRY, "fork-creator", &[("SFB_NS", ns.0.clone())]);
    let (mut gpid, mut fds) = (None, None);
    while gpid.is_none() || fds.is_none() {
        let line = peer.line().expect("the peer ended early");
        if let Some(p) = line.strip_prefix("forked ") {
            gpid = Some(p.parse::<i32>().unwrap());
        } else if let Some(n) = line.strip_prefix("grandchild-ctrl-fds ") {
            fds = Some(n.to_owned());
        }
    }
    let gpid = gpid.unwrap();
    // Taken out first: waiting for the peer would close it.
    let stdin = peer.child.stdin.take().unwrap();
    peer.kill9();
    ((peer, stdin), gpid, fds.unwrap())
}

/// Whether `pid` (our child) is running (not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .and_then(|(_, r)| r.chars().next())
            .is_some_and(|c| c != 'Z' && c != 'X')
    })
}

/// Kills and reaps the grandchild (our child through the subreaper).
fn reap(gpid: i32) {
    // SAFETY: our own child, not reaped yet, so the pid is still its.
    unsafe { libc::kill(gpid, libc::SIGKILL) };
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is valid for writes.
    let rc = unsafe { libc::waitpid(gpid, &mut status, 0) };
    assert_eq!(rc, gpid, "waitpid: {}", std::io::Error::last_os_error());
}

/// Creates the namespace, appends and resolves; the store is dropped (its
/// files removed) before this returns.
fn create_and_use(ns: &Ns) -> Result<Option<Vec<u8>>, BlobError> {
    PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK).map(|store| {
        let h = store.append_shared(b"new incarnation").unwrap();
        store.resolve(&h)
    })
}

#[test]
fn a_killed_creator_whose_fork_child_lives_can_be_cleaned_up() {
    let ns = Ns::new("forkclean");
    let (peer, gpid, fds) = killed_creator_with_live_fork_child(&ns);
    let lived_before = alive(gpid);
    let (creator_alive, _) = SharedBackend::creator_status(ns.as_str()).unwrap();
    let cleaned = SharedBackend::cleanup_namespace(ns.as_str());
    let created = create_and_use(&ns);
    let lived_after = alive(gpid);
    reap(gpid);
    drop(peer);
    assert!(
        lived_before && lived_after,
        "the fork child lived throughout"
    );
    assert!(
        cleaned.is_ok(),
        "cleanup refused while only the fork child lives: {cleaned:?}"
    );
    assert!(!creator_alive, "the killed creator is seen alive");
    assert_eq!(fds, "0", "control file descriptors kept by the fork child");
    assert_eq!(created.unwrap().as_deref(), Some(&b"new incarnation"[..]));
}

#[test]
fn a_killed_creator_whose_fork_child_lives_is_taken_over() {
    let ns = Ns::new("forktake");
    let (peer, gpid, fds) = killed_creator_with_live_fork_child(&ns);
    let lived_before = alive(gpid);
    let created = create_and_use(&ns);
    let lived_after = alive(gpid);
    reap(gpid);
    drop(peer);
    assert!(
        lived_before && lived_after,
        "the fork child lived throughout"
    );
    assert!(
        !matches!(created, Err(BlobError::AlreadyExists { .. })),
        "creation refused while only the fork child lives: {created:?}"
    );
    assert_eq!(fds, "0", "control file descriptors kept by the fork child");
    assert_eq!(created.unwrap().as_deref(), Some(&b"new incarnation"[..]));
}
