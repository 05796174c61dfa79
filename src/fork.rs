//! Liveness locks that do not survive into `fork()` children.
//!
//! Liveness in this crate is an open-file-description (OFD) lock: the
//! creator lock on a store's control file, a participant's byte lock in a
//! channel file. The kernel releases such a lock when the last reference to
//! its open file description goes away. A child made with `fork()` shares
//! its parent's open file descriptions, so without this module it keeps the
//! parent's locks: a killed process whose fork child lives (Python's
//! `multiprocessing` forks by default on Linux) would never be seen dead.
//!
//! [`register`] records a lock-holding descriptor in a fixed, lock-free
//! table. A `pthread_atfork` child handler, installed the first time
//! something is registered, replaces every registered descriptor *in the
//! child* with a descriptor of `/dev/null` (`dup3` over the same number).
//! The child thus drops its reference to the parent's description, while
//! its copies of the Rust `File`s still own a valid descriptor number (now
//! `/dev/null`), which they close harmlessly later. [`epoch`] lets an
//! endpoint notice that it now lives in such a child.
//!
//! Limits, by construction:
//!
//! * A **mapping** made through the locked description holds a reference to
//!   that description too, and a fork child inherits mappings: lock through
//!   a description that nothing maps (map the file through a second
//!   description, e.g. a reopen of `/proc/self/fd/N`).
//! * Register **before** taking the lock: a fork after the lock was taken
//!   then always sees the registration.
//! * A child holds the description from `fork()` until its handler has run
//!   (first thing in the child, but the scheduler decides when): a
//!   liveness check in that instant can still see the lock.
//! * Only `fork()` runs the handler (glibc's, which Python's `os.fork` and
//!   `multiprocessing` call). `vfork`, `posix_spawn`, `_Fork` and a raw
//!   `clone` do not; the first two exec at once, and our descriptors are
//!   close-on-exec.
//! * The table holds [`CAPACITY`] descriptors; beyond that, registration
//!   still succeeds but the descriptor is not protected (its lock is
//!   inherited as before this module existed).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Once;

/// How many descriptors the table protects at once.
pub(crate) const CAPACITY: usize = 4096;

/// A free table entry (no descriptor is negative).
const EMPTY: RawFd = -1;

/// The registered descriptors; [`EMPTY`] marks a free entry.
static TABLE: [AtomicI32; CAPACITY] = [const { AtomicI32::new(EMPTY) }; CAPACITY];

/// The `/dev/null` descriptor the child handler duplicates over every
/// registered one; [`EMPTY`] until installed (or if installing failed).
static PLACEHOLDER: AtomicI32 = AtomicI32::new(EMPTY);

/// Incremented by the child handler in every fork child.
static EPOCH: AtomicU32 = AtomicU32::new(0);

/// Installs the placeholder and the handler, once per process.
static INSTALL: Once = Once::new();

/// A descriptor's registration; dropping it unregisters the descriptor.
///
/// Drop it **before** closing the descriptor (declare it before the `File`
/// in a struct: fields drop in declaration order). Otherwise a fork between
/// the close and the drop would make the child overwrite whatever the
/// number names by then.
#[must_use = "dropping the guard unregisters the descriptor at once"]
pub(crate) struct ForkGuard {
    /// The table entry this registration holds; `None` when the table was
    /// full or the handler could not be installed (not protected).
    slot: Option<usize>,
}

impl Drop for ForkGuard {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            release(&TABLE, i);
        }
    }
}

/// Registers `fd`, a descriptor that holds (or is about to hold) an OFD
/// lock, so that fork children do not keep its open file description (see
/// the module documentation, its limits in particular).
///
/// Always succeeds: if the table is full (more than [`CAPACITY`]
/// registrations live), or `/dev/null` cannot be opened, or
/// `pthread_atfork` fails, `fd` is simply not protected. Keep the guard
/// while `fd` is open, and drop it before closing `fd`.
pub(crate) fn register(fd: RawFd) -> ForkGuard {
    if fd < 0 {
        return ForkGuard { slot: None };
    }
    INSTALL.call_once(install);
    // Relaxed: `call_once` returning orders `install`'s store before this
    // load (Once synchronizes with its completion).
    if PLACEHOLDER.load(Ordering::Relaxed) < 0 {
        return ForkGuard { slot: None };
    }
    ForkGuard {
        slot: claim(&TABLE, fd),
    }
}

/// How many times this process's memory went through a fork child handler:
/// 0 in a process that no fork made since the first registration, more in
/// a fork child. An endpoint records it after registering its descriptor
/// and compares later: a different value means it was inherited by a fork
/// child (and its registered descriptors are `/dev/null` now).
pub(crate) fn epoch() -> u32 {
    // Relaxed: only the child handler writes it, before any code of the
    // child runs, in the child's only thread.
    EPOCH.load(Ordering::Relaxed)
}

/// Takes a free entry of `table` for `fd`; `None` if all are taken.
fn claim(table: &[AtomicI32], fd: RawFd) -> Option<usize> {
    // Release on success: the caller takes the lock after this (a system
    // call); a fork that comes after the lock must copy the entry.
    // Relaxed on failure: nothing is published.
    table.iter().position(|e| {
        e.compare_exchange(EMPTY, fd, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    })
}

/// Frees entry `i` of `table`.
fn release(table: &[AtomicI32], i: usize) {
    // Release: the owner closes the descriptor right after (a system
    // call); a fork that sees the descriptor closed must see the entry
    // empty, or the child would overwrite a reused number.
    table[i].store(EMPTY, Ordering::Release);
}

/// Opens the placeholder and registers the child handler.
fn install() {
    // SAFETY: a valid NUL-terminated path; open has no other preconditions.
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if null < 0 {
        return;
    }
    // SAFETY: `in_child` is an `extern "C" fn()` that lives for the whole
    // program and is async-signal-safe (see it); no prepare or parent
    // handler is passed.
    let rc = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    if rc != 0 {
        // SAFETY: `null` is our own descriptor, opened above and shared
        // with no one.
        unsafe { libc::close(null) };
        return;
    }
    // Relaxed: readers are `register` (ordered by the Once) and the child
    // handler, which reads the memory image fork copied, in the child's
    // only thread.
    PLACEHOLDER.store(null, Ordering::Relaxed);
}

/// The `pthread_atfork` child handler: runs in the child right after
/// `fork()`, in its only thread. Async-signal-safe: atomics, `dup3` and
/// `errno` only; no allocation, no lock.
extern "C" fn in_child() {
    // Relaxed: the child has one thread, and nothing of it runs yet.
    EPOCH.fetch_add(1, Ordering::Relaxed);
    // Relaxed (every load below too): the child reads the memory image that
    // fork copied, alone; no other thread can write it.
    let null = PLACEHOLDER.load(Ordering::Relaxed);
    if null < 0 {
        return;
    }
    for entry in TABLE.iter() {
        let fd = entry.load(Ordering::Relaxed);
        if fd >= 0 && fd != null {
            redirect(null, fd);
        }
    }
}

/// Makes `fd` a duplicate of `null` (close-on-exec, as our descriptors
/// are), which drops this process's reference to what `fd` named.
fn redirect(null: RawFd, fd: RawFd) {
    for _ in 0..8 {
        // SAFETY: dup3 only touches this process's descriptor table. `fd`
        // is registered, so its owner (a `File` in this memory image) will
        // close the number later, /dev/null by then; `null` is open (never
        // closed once installed) and differs from `fd`.
        let rc = unsafe { libc::dup3(null, fd, libc::O_CLOEXEC) };
        // SAFETY: __errno_location returns this thread's errno slot, valid
        // for the thread's life; reading it is async-signal-safe.
        if rc >= 0 || unsafe { *libc::__errno_location() } != libc::EINTR {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    /// (device, inode, rdev) of an open descriptor, with async-signal-safe
    /// calls only (usable in a fork child).
    fn identity(fd: RawFd) -> Option<(u64, u64, u64)> {
        // SAFETY: an all-zero stat is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is valid for writes for the duration of the call.
        let rc = unsafe { libc::fstat(fd, &mut st) };
        (rc == 0).then_some((st.st_dev, st.st_ino, st.st_rdev))
    }

    /// Held by the tests that fork, one at a time: a child of one test
    /// keeps what the other opened until its own handler has run.
    static FORKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        FORKS.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn in_table(fd: RawFd) -> bool {
        TABLE.iter().any(|e| e.load(Ordering::Relaxed) == fd)
    }

    /// Forks; the child runs `child` (async-signal-safe code only: other
    /// test threads may hold locks) and exits with its code; returns that
    /// exit code.
    fn fork_and_wait(child: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child runs only async-signal-safe code, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = child();
            // SAFETY: leaves the child at once, running nothing of the
            // parent's (no destructors, no atexit handlers).
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is valid for writes.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(rc, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    fn temp_file(tag: &str) -> (std::path::PathBuf, File) {
        let path = crate::os::shm_dir().join(format!("sfbtest-fork-{}-{tag}", std::process::id()));
        let file = crate::os::create_exclusive(&path).unwrap();
        (path, file)
    }

    #[test]
    fn the_table_hands_out_free_entries_and_reports_full() {
        let table: [AtomicI32; 3] = [const { AtomicI32::new(EMPTY) }; 3];
        assert_eq!(claim(&table, 10), Some(0));
        assert_eq!(claim(&table, 11), Some(1));
        assert_eq!(claim(&table, 12), Some(2));
        assert_eq!(claim(&table, 13), None, "full: not protected");
        release(&table, 1);
        assert_eq!(table[1].load(Ordering::Relaxed), EMPTY);
        assert_eq!(claim(&table, 14), Some(1), "a freed entry is reused");
        let fds: Vec<RawFd> = table.iter().map(|e| e.load(Ordering::Relaxed)).collect();
        assert_eq!(fds, [10, 14, 12]);
    }

    #[test]
    #[cfg_attr(miri, ignore = "real system calls: Miri cannot run them")]
    fn a_guard_registers_its_descriptor_until_dropped() {
        let (path, file) = temp_file("guard");
        let fd = file.as_raw_fd();
        let guard = register(fd);
        assert!(guard.slot.is_some(), "protected");
        assert!(in_table(fd));
        assert_eq!(TABLE[guard.slot.unwrap()].load(Ordering::Relaxed), fd);
        let slot = guard.slot.unwrap();
        drop(guard);
        assert_ne!(TABLE[slot].load(Ordering::Relaxed), fd, "unregistered");
        assert!(register(-1).slot.is_none(), "not a descriptor");
        drop(file);
        crate::os::unlink(&path).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "real system calls: Miri cannot run them")]
    fn a_fork_child_sees_dev_null_and_a_new_epoch_the_parent_neither() {
        let _serial = serial();
        let (path, file) = temp_file("child");
        let fd = file.as_raw_fd();
        let guard = register(fd);
        let before = epoch();
        let own = identity(fd).unwrap();
        let null = std::fs::metadata("/dev/null").unwrap();
        let null = (null.dev(), null.ino(), null.rdev());
        let code = fork_and_wait(|| {
            if epoch() == before {
                return 2;
            }
            match identity(fd) {
                Some(id) if id == null => 0,
                Some(id) if id == own => 3,
                _ => 4,
            }
        });
        let parent = (epoch(), identity(fd));
        drop(guard);
        drop(file);
        crate::os::unlink(&path).unwrap();
        assert_eq!(code, 0, "2: same epoch, 3: still our file, 4: fd gone");
        assert_eq!(parent.0, before, "the parent's epoch does not move");
        assert_eq!(parent.1, Some(own), "the parent's descriptor is intact");
    }

    #[test]
    #[cfg_attr(miri, ignore = "real system calls: Miri cannot run them")]
    fn a_fork_child_does_not_keep_a_registered_lock() {
        let _serial = serial();
        let (path, file) = temp_file("lock");
        let guard = register(file.as_raw_fd());
        assert!(crate::os::try_lock_byte(&file, 7).unwrap());
        // The child says it runs (its fork handler has run by then), then
        // waits until the parent is done (EOF on `hold`).
        let (ready, hold) = (pipe(), pipe());
        // SAFETY: the child only writes, reads, closes and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut b = 0u8;
            // SAFETY: our own descriptors; `b` is valid for one byte.
            unsafe {
                libc::close(hold[1]);
                libc::write(ready[1], (&b as *const u8).cast(), 1);
                libc::read(hold[0], (&mut b as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        let mut b = 0u8;
        // SAFETY: our own descriptors, each closed once; `b` is valid for
        // one byte.
        unsafe {
            libc::close(ready[1]);
            libc::close(hold[0]);
            assert_eq!(libc::read(ready[0], (&mut b as *mut u8).cast(), 1), 1);
            libc::close(ready[0]);
        }
        // The parent dies, in effect: its only descriptor of the file closes.
        drop(guard);
        drop(file);
        let other = crate::os::open_rw(&path).unwrap();
        let held = crate::os::byte_lock_held(&other, 7).unwrap();
        // SAFETY: our own descriptor (the child reads EOF and exits); then
        // we reap our own child.
        unsafe {
            libc::close(hold[1]);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        crate::os::unlink(&path).unwrap();
        assert!(!held, "the live fork child still holds the parent's lock");
    }

    fn pipe() -> [RawFd; 2] {
        let mut fds = [0; 2];
        // SAFETY: `fds` is valid for two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        fds
    }
}
