//! Every system call of the crate, kept apart from the logic that uses them.
//!
//! Shared-memory objects are files in the shm directory (`/dev/shm`, where
//! glibc's `shm_open` puts them too); opening them by path lets us pass
//! `O_NOFOLLOW`, create a control block under a temporary name and `link` it
//! into place atomically, and list a namespace's files.

use crate::error::{BlobError, Result};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

/// The directory that holds POSIX shared-memory objects.
pub const SHM_DIR: &str = "/dev/shm";

/// Environment variable that moves the shm directory (every process of a
/// namespace must agree on it): for containers with another tmpfs, and for
/// tests on a deliberately small one.
pub const SHM_DIR_ENV: &str = "SFB_SHM_DIR";

/// The shm directory: `$SFB_SHM_DIR` if set and not empty, else `/dev/shm`.
pub fn shm_dir() -> PathBuf {
    match std::env::var_os(SHM_DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(SHM_DIR),
    }
}

/// Creates `path` exclusively (fails if it exists), mode 0600, never
/// following a symlink.
pub fn create_exclusive(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| BlobError::os("open(O_CREAT|O_EXCL)", path, e))
}

/// Creates an unnamed file in `dir` (`O_TMPFILE`), mode 0600: it gets a
/// name only when [`link_anonymous`] publishes it, fully prepared.
pub fn create_anonymous(dir: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| BlobError::os("open(O_TMPFILE)", dir, e))
}

/// Gives an unnamed file the name `to`; fails with `EEXIST` if `to` exists
/// (this is what makes creation exclusive).
pub fn link_anonymous(file: &File, to: &Path) -> io::Result<()> {
    let from = format!("/proc/self/fd/{}", file.as_raw_fd());
    let from = std::ffi::CString::new(from).map_err(io::Error::other)?;
    let to_c =
        std::ffi::CString::new(to.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: both paths are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// (device, inode) of an open file.
pub fn file_identity(file: &File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// (device, inode) of what `path` names now (not following symlinks), and
/// whether it is a regular file.
pub fn path_identity(path: &Path) -> Option<((u64, u64), bool)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| ((m.dev(), m.ino()), m.file_type().is_file()))
}

/// Opens an existing file for reading and writing, never following a symlink.
pub fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens an existing file for reading only, for inspection: never follows
/// a symlink, and never blocks (`O_NONBLOCK`, so a FIFO planted under one
/// of our names cannot hang the caller; it changes nothing for regular
/// files). Nothing done through the returned file can modify it.
pub fn open_ro(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
}

/// Refuses a file that belongs to another user than this process's
/// effective uid ([`BlobError::ForeignOwner`]).
pub fn check_owner(file: &File, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let uid = file
        .metadata()
        .map_err(|e| BlobError::os("fstat", path, e))?
        .uid();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let ours = unsafe { libc::geteuid() };
    if uid == ours {
        Ok(())
    } else {
        Err(BlobError::ForeignOwner {
            file: path.to_owned(),
            uid,
            ours,
        })
    }
}

/// Size of an open file (`fstat`).
pub fn file_len(file: &File, path: &Path) -> Result<u64> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| BlobError::os("fstat", path, e))
}

/// Reads up to `buf.len()` bytes at offset 0; returns how many were read.
pub fn read_prefix(file: &File, buf: &mut [u8], path: &Path) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BlobError::os("pread", path, e)),
        }
    }
    Ok(done)
}

/// Reads up to `buf.len()` bytes at `offset` (`pread`); returns how many
/// were read (fewer only at the end of the file).
pub fn read_at(file: &File, buf: &mut [u8], offset: u64, path: &Path) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BlobError::os("pread", path, e)),
        }
    }
    Ok(done)
}

/// Gives a new file its size and reserves every page of it now, so that
/// a full `/dev/shm` is an error here ([`BlobError::NoSpace`]) instead of a
/// SIGBUS on first touch later.
pub fn reserve_space(file: &File, len: u64, path: &Path) -> Result<()> {
    loop {
        // SAFETY: plain syscall on a valid fd owned by `file`.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // A file system without fallocate: size it, pages come on demand.
            Some(libc::EOPNOTSUPP) => {
                return file
                    .set_len(len)
                    .map_err(|e| BlobError::os("ftruncate", path, e));
            }
            _ => return Err(BlobError::os("fallocate", path, err)),
        }
    }
}

/// A second open file description of `file` (through `/proc/self/fd`),
/// read-write. A mapping holds the description it was made from, and a
/// fork child inherits mappings: mapping through this one keeps the
/// locks of `file`'s description out of fork children (see `fork`).
pub fn reopen(file: &File, path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| BlobError::os("open(/proc/self/fd)", path, e))
}

/// Reserves the pages of `len` bytes at `offset` of a file already sized
/// past them (a channel's pool slot, backed on first use): `Ok` once they
/// are backed, `ENOSPC` when the file system is full. A file system
/// without fallocate gets pages on demand, as in [`reserve_space`].
pub fn reserve_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    loop {
        // SAFETY: plain syscall on a valid fd owned by `file`; mode
        // FALLOC_FL_KEEP_SIZE never changes the file's size.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) => return Ok(()),
            _ => return Err(err),
        }
    }
}

/// A shared read-write mapping of a whole file; unmapped on drop.
pub struct Mapping {
    raw: MmapRaw,
}

impl Mapping {
    /// Maps the first `len` bytes of `file` (the caller checked `fstat`).
    pub fn new(file: &File, len: usize, path: &Path) -> Result<Self> {
        let raw = MmapOptions::new()
            .len(len)
            .map_raw(file)
            .map_err(|e| BlobError::os("mmap", path, e))?;
        Ok(Self { raw })
    }

    /// Start of the mapping (page-aligned, never null).
    pub fn base(&self) -> NonNull<u8> {
        NonNull::new(self.raw.as_mut_ptr()).unwrap_or(NonNull::dangling())
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Backs `len` bytes from `offset` with memory and maps them for
    /// writing now (`MADV_POPULATE_WRITE`, Linux 5.14 and later). Where a
    /// write would raise SIGBUS (a full tmpfs), this returns `EFAULT`
    /// instead; `EINVAL` on kernels that do not know the advice.
    pub fn populate_range(&self, offset: usize, len: usize) -> io::Result<()> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.raw.len())
        {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        loop {
            // SAFETY: the range lies inside this live mapping (checked
            // above; `offset` is a multiple of the page size for every
            // caller); the advice only allocates and maps pages, it never
            // changes their contents.
            let rc = unsafe {
                libc::madvise(
                    self.raw.as_mut_ptr().add(offset) as *mut libc::c_void,
                    len,
                    libc::MADV_POPULATE_WRITE,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(err);
            }
        }
    }

    /// Faults every page in for writing now (`MADV_POPULATE_WRITE`), so the
    /// first appends into a prepared chunk take no page fault. Best effort:
    /// kernels before 5.14 do not know the advice.
    pub fn populate_write(&self) {
        let _ = self.populate_range(0, self.raw.len());
    }
}

fn ofd_lock(file: &File, cmd: libc::c_int, kind: libc::c_short) -> io::Result<libc::flock> {
    ofd_lock_at(file, cmd, kind, 0)
}

fn ofd_lock_at(
    file: &File,
    cmd: libc::c_int,
    kind: libc::c_short,
    byte: u64,
) -> io::Result<libc::flock> {
    // SAFETY: an all-zero flock is a valid value of this plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte as libc::off_t;
    fl.l_len = 1;
    loop {
        // SAFETY: valid fd, valid flock pointer for the duration of the call.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) };
        if rc == 0 {
            return Ok(fl);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Takes the creator lock: an open-file-description write lock on byte 0,
/// released by the kernel when the file is closed or the process dies (so
/// liveness never relies on a pid that could be reused). `Ok(false)` if
/// another open file description holds it.
pub fn try_lock_creator(file: &File) -> io::Result<bool> {
    match ofd_lock(file, libc::F_OFD_SETLK, libc::F_WRLCK as libc::c_short) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether some other open file description (in any process, this one
/// included) holds the creator lock of `file`.
pub fn creator_lock_held(file: &File) -> io::Result<bool> {
    let fl = ofd_lock(file, libc::F_OFD_GETLK, libc::F_WRLCK as libc::c_short)?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Takes an open-file-description write lock on byte `byte` of `file`
/// (bytes past the end of the file are fine): the liveness token of one
/// channel participant, released by the kernel when the description is
/// closed or its process dies. `Ok(false)` if another description holds it.
pub fn try_lock_byte(file: &File, byte: u64) -> io::Result<bool> {
    match ofd_lock_at(
        file,
        libc::F_OFD_SETLK,
        libc::F_WRLCK as libc::c_short,
        byte,
    ) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Releases a lock taken with [`try_lock_byte`] through the same file.
pub fn unlock_byte(file: &File, byte: u64) -> io::Result<()> {
    ofd_lock_at(
        file,
        libc::F_OFD_SETLK,
        libc::F_UNLCK as libc::c_short,
        byte,
    )
    .map(|_| ())
}

/// Whether another open file description holds the lock on byte `byte`.
pub fn byte_lock_held(file: &File, byte: u64) -> io::Result<bool> {
    let fl = ofd_lock_at(
        file,
        libc::F_OFD_GETLK,
        libc::F_WRLCK as libc::c_short,
        byte,
    )?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Sleeps while the shared word at `word` still holds `expected`, for at
/// most `timeout` (`FUTEX_WAIT` on a shared mapping, so a waker in another
/// process reaches it). Returns early on a wake, a signal, or a changed value.
pub fn futex_wait(
    word: &std::sync::atomic::AtomicU32,
    expected: u32,
    timeout: std::time::Duration,
) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call
    // and `ts` a valid timespec; FUTEX_WAIT only reads them.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Most words one `futex_waitv` call waits on (the kernel's
/// `FUTEX_WAITV_MAX`).
pub const FUTEX_WAITV_MAX: usize = 128;

/// How a wait on several words ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitvEnd {
    /// A word was woken, or held another value than expected when the call
    /// began (the caller looks at them all again either way).
    Woken,
    /// The timeout passed.
    TimedOut,
    /// A signal interrupted the wait.
    Interrupted,
    /// The kernel has no `futex_waitv` (Linux before 5.16): the caller
    /// falls back to waiting in short slices.
    Unsupported,
}

/// The kernel's `struct futex_waitv`.
#[repr(C)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

/// `FUTEX_32`: the words are 32 bits (`FUTEX2_SIZE_U32`); no private flag,
/// so wakers in other processes reach a word of a shared mapping.
const FUTEX2_SIZE_U32: u32 = 2;

/// Sleeps while every word of `words` still holds its expected value (at
/// most [`FUTEX_WAITV_MAX`] of them; more are an error of the caller and
/// only the first ones are waited on), for at most `timeout`
/// (`futex_waitv`, Linux 5.16).
pub fn futex_waitv(
    words: &[(&std::sync::atomic::AtomicU32, u32)],
    timeout: std::time::Duration,
) -> WaitvEnd {
    let waitv: Vec<FutexWaitv> = words
        .iter()
        .take(FUTEX_WAITV_MAX)
        .map(|(w, v)| FutexWaitv {
            val: *v as u64,
            uaddr: w.as_ptr() as u64,
            flags: FUTEX2_SIZE_U32,
            reserved: 0,
        })
        .collect();
    if waitv.is_empty() {
        std::thread::sleep(timeout);
        return WaitvEnd::TimedOut;
    }
    // futex_waitv takes an absolute deadline on the given clock.
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let ns = (now.tv_nsec as u64).saturating_add(timeout.subsec_nanos() as u64);
    let deadline = libc::timespec {
        tv_sec: (now.tv_sec as u64)
            .saturating_add(timeout.as_secs().min(u32::MAX as u64))
            .saturating_add(ns / 1_000_000_000)
            .min(i64::MAX as u64) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `waitv` is a valid array of `waitv.len()` entries, each naming
    // an aligned u32 that the caller keeps mapped for the call (borrowed in
    // `words`); `deadline` is a valid timespec. The kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex_waitv,
            waitv.as_ptr(),
            waitv.len() as libc::c_uint,
            0 as libc::c_uint,
            &deadline as *const libc::timespec,
            libc::CLOCK_MONOTONIC,
        )
    };
    if rc >= 0 {
        return WaitvEnd::Woken;
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => WaitvEnd::Woken,
        Some(libc::ETIMEDOUT) => WaitvEnd::TimedOut,
        Some(libc::EINTR) => WaitvEnd::Interrupted,
        _ => WaitvEnd::Unsupported,
    }
}

/// Wakes every waiter sleeping on the shared word at `word` (`FUTEX_WAKE`).
pub fn futex_wake_all(word: &std::sync::atomic::AtomicU32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not touch memory.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

/// Removes a file; a file already gone is not an error.
pub fn unlink(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(BlobError::os("unlink", path, e)),
    }
}

/// Names of the entries of a directory (non-UTF-8 names are skipped: no
/// file of ours has one).
pub fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| BlobError::os("readdir", dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| BlobError::os("readdir", dir, e))?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push(name);
        }
    }
    Ok(out)
}

/// This process's id.
pub fn pid() -> u32 {
    std::process::id()
}

/// Start time of a process in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), so a recorded (pid, start) pair names one process even
/// after the pid is reused.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and ')': skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// 64 random bits from the kernel (falls back to time and address entropy).
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: buf is valid for 8 writable bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr() as *mut libc::c_void, 8, 0) };
    if n == 8 {
        return u64::from_le_bytes(buf);
    }
    let local = 0u8;
    crate::clock::now_ns() ^ (&local as *const u8 as u64).rotate_left(32) ^ pid() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        shm_dir().join(format!("sfbtest-os-{}-{name}", pid()))
    }

    #[test]
    #[cfg_attr(miri, ignore = "real system calls: Miri cannot run them")]
    fn exclusive_create_is_0600_and_refuses_existing() {
        use std::os::unix::fs::PermissionsExt;
        let p = tmp("excl");
        let f = create_exclusive(&p).unwrap();
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        let again = create_exclusive(&p);
        assert!(matches!(again, Err(BlobError::Os { .. })));
        assert!(unlink(&p).unwrap());
        assert!(!unlink(&p).unwrap());
    }

    #[test]
    #[cfg_attr(miri, ignore = "real system calls: Miri cannot run them")]
    fn creator_lock_is_seen_from_another_description_and_released_on_close() {
        let p = tmp("lock");
        let owner = create_exclusive(&p).unwrap();
        let other = open_rw(&p).unwrap();
        assert!(!creator_lock_held(&other).unwrap());
        assert!(try_lock_creator(&owner).unwrap());
        assert!(creator_lock_held(&other).unwrap());
        assert!(!try_lock_creator(&other).unwrap());
        drop(owner);
        assert!(!creator_lock_held(&other).unwrap());
        unlink(&p).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "real system calls: Miri cannot run them")]
    fn reserve_and_map() {
        let p = tmp("map");
        let f = create_exclusive(&p).unwrap();
        reserve_space(&f, 8192, &p).unwrap();
        assert_eq!(file_len(&f, &p).unwrap(), 8192);
        let m = Mapping::new(&f, 8192, &p).unwrap();
        m.populate_write();
        assert_eq!(m.len(), 8192);
        assert_eq!(m.base().as_ptr() as usize % 4096, 0);
        unlink(&p).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "real system calls: Miri cannot run them")]
    fn anonymous_file_is_published_once_by_link() {
        let f = create_anonymous(&shm_dir()).unwrap();
        reserve_space(&f, 4096, &shm_dir()).unwrap();
        let p = tmp("anon");
        link_anonymous(&f, &p).unwrap();
        assert_eq!(
            path_identity(&p).unwrap(),
            (file_identity(&f).unwrap(), true)
        );
        let other = create_anonymous(&shm_dir()).unwrap();
        assert_eq!(
            link_anonymous(&other, &p).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        unlink(&p).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "real system calls: Miri cannot run them")]
    fn start_ticks_of_self() {
        assert!(process_start_ticks(pid()).is_some());
        assert_ne!(random_u64(), random_u64());
    }
}
