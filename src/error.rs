//! The crate's one error type: a variant per thing a caller handles differently.

use std::io;
use std::path::PathBuf;

/// Result alias of the crate.
pub type Result<T, E = BlobError> = std::result::Result<T, E>;

/// Everything that can go wrong, with the context needed to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The namespace breaks the documented naming rules; nothing was touched.
    #[error("invalid namespace \"{namespace}\": {reason}; use 1-64 ASCII letters, digits, '_', '-' or '.', not starting with '.' or '-'")]
    InvalidNamespace {
        /// The rejected name (escaped).
        namespace: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A configuration value is out of range.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },

    /// No such namespace (no control file).
    #[error("namespace \"{namespace}\" does not exist; create it first with PinnedBlobStore::new_shared")]
    NotFound {
        /// Namespace.
        namespace: String,
    },

    /// Creation refused: a live creator holds the namespace.
    #[error("namespace \"{namespace}\" already exists and its creator (pid {pid}) is alive; attach to it, or pick another name")]
    AlreadyExists {
        /// Namespace.
        namespace: String,
        /// Pid recorded by the live creator.
        pid: u32,
    },

    /// Cleanup refused: the creator is alive.
    #[error("namespace \"{namespace}\" is in use: its creator (pid {pid}) is alive; stop it first, or force the cleanup")]
    InUse {
        /// Namespace.
        namespace: String,
        /// Pid recorded by the live creator.
        pid: u32,
    },

    /// `max_chunks` reached: wait for consumers to acknowledge, then retry.
    #[error("namespace \"{namespace}\" is full: all {max_chunks} chunks are in use ({held}); acknowledge data, drop views (and let cleanup run), or raise max_chunks")]
    StoreFull {
        /// Namespace.
        namespace: String,
        /// The limit from the control block.
        max_chunks: u32,
        /// What holds the chunks, counted when the append failed: chunks
        /// with unacknowledged entries (and when their TTL frees them if
        /// their consumer died), pinned by views, acknowledged and waiting
        /// for a reclamation pass, the append target, warm.
        held: String,
    },

    /// The shm file system is full (ENOSPC when reserving a chunk).
    #[error("no space left in the shm directory for {}; free /dev/shm or lower the chunk size", file.display())]
    NoSpace {
        /// The file that could not be reserved.
        file: PathBuf,
    },

    /// A file of the namespace has the right magic but inconsistent content.
    #[error("corrupt store file {}: {detail}; remove the namespace with cleanup_namespace", file.display())]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// What was wrong.
        detail: String,
    },

    /// A file that is not of this format or not of this version.
    #[error("{} is not a stable-fragmented-buffer v{expected} file ({detail}); it was left untouched", file.display())]
    IncompatibleFormat {
        /// The file.
        file: PathBuf,
        /// Expected format version.
        expected: u32,
        /// What was found instead.
        detail: String,
    },

    /// A blob larger than the format can address (u32 sizes).
    #[error("blob of {size} bytes is larger than the largest storable blob ({max} bytes)")]
    BlobTooLarge {
        /// Requested size.
        size: usize,
        /// Largest size accepted.
        max: usize,
    },

    /// Empty blobs are not stored: a handle to nothing is a bug magnet.
    #[error("empty blob: appending zero bytes is refused; skip the append instead")]
    EmptyBlob,

    /// The namespace is being removed (creator dropped it or cleanup ran).
    #[error("namespace \"{namespace}\" has been closed; re-attach after its creator recreates it")]
    Closed {
        /// Namespace.
        namespace: String,
    },

    /// The endpoint was opened by the parent of this process and inherited
    /// through `fork()`: it belongs to the parent. Open a new one here.
    #[error("this {what} of channel \"{channel}\" was inherited through fork() from the process that opened it; open a new one in this process")]
    Inherited {
        /// "producer" or "consumer".
        what: &'static str,
        /// Channel name.
        channel: String,
    },

    /// The chunk registry of the control block is full.
    #[error("namespace \"{namespace}\" has no free registry slot ({slots} chunk files exist); use larger chunks")]
    RegistryFull {
        /// Namespace.
        namespace: String,
        /// Registry size.
        slots: usize,
    },

    /// Heap mode could not allocate a page (the allocator returned null).
    #[error("out of memory: could not allocate a page of {bytes} bytes")]
    OutOfMemory {
        /// Size of the failed allocation.
        bytes: usize,
    },

    /// A heap-mode call on a shared store, or the reverse.
    #[error("this store is in {actual} mode; {call} needs {expected} mode")]
    WrongMode {
        /// The call made.
        call: &'static str,
        /// The mode it needs.
        expected: &'static str,
        /// The store's mode.
        actual: &'static str,
    },

    /// A loaned entry was held past the TTL and its chunk reclaimed before
    /// it was sent or committed: its bytes can no longer be published.
    #[error("a loan of {size} bytes was held past the TTL and its chunk was reclaimed; send loans promptly or raise default_ttl_ms")]
    Expired {
        /// Size of the loan.
        size: usize,
    },

    /// A channel name breaks the naming rules (those of namespaces).
    #[error("invalid channel name \"{channel}\": {reason}; use 1-64 ASCII letters, digits, '_', '-' or '.', not starting with '.' or '-'")]
    InvalidChannel {
        /// The name, escaped.
        channel: String,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// A `_with` opener asked for a geometry or policy that differs from
    /// the one the existing channel file was created with (the plain
    /// openers adopt what exists).
    #[error("channel \"{channel}\" exists with {existing}, not the {requested} asked for; open it with the plain opener to adopt what exists, or pick another name")]
    ChannelMismatch {
        /// Channel name.
        channel: String,
        /// The existing channel's geometry and policy.
        existing: String,
        /// What the opener asked for.
        requested: String,
    },
    /// A channel name was opened as the other kind of channel.
    #[error("channel \"{channel}\" is a {found}, not a {expected}; open it with the matching call, or pick another name")]
    ChannelKind {
        /// Channel name.
        channel: String,
        /// Kind asked for ("broadcast" or "work queue").
        expected: &'static str,
        /// Kind the file holds.
        found: &'static str,
    },

    /// Every participant record of a channel is taken.
    #[error("channel \"{channel}\" already has {max} live {role}s; drop one first")]
    ChannelFull {
        /// Channel name.
        channel: String,
        /// "producer" or "consumer".
        role: &'static str,
        /// The limit.
        max: usize,
    },

    /// A file under one of the namespace's names belongs to another user
    /// (`/dev/shm` is world-writable: anyone can create a file there). It is
    /// neither used nor removed.
    #[error("{} belongs to uid {uid}, not to this process's uid {ours}; it is not this store's file (another user may be squatting the name): remove it as that user or root, or pick another namespace", file.display())]
    ForeignOwner {
        /// The file.
        file: PathBuf,
        /// Its owner.
        uid: u32,
        /// This process's effective uid.
        ours: u32,
    },

    /// A handle's blob is gone: its chunk no longer holds the handle's
    /// generation, because it was reclaimed — after every entry in it was
    /// acknowledged, or by the TTL. (A made-up handle naming a chunk that
    /// does not exist reads the same.)
    #[error("the blob is gone: chunk {chunk} no longer holds generation {generation}; it was reclaimed {}", if *older_than_ttl { "(the handle is older than the TTL: most likely expired unacknowledged; acknowledge sooner or raise default_ttl_ms)" } else { "after its entries were acknowledged (a handle is valid until then)" })]
    Reclaimed {
        /// The handle's chunk id.
        chunk: u32,
        /// The handle's generation.
        generation: u32,
        /// The handle is older than the store's TTL.
        older_than_ttl: bool,
    },

    /// A handle names no blob of this store although its chunk is in the
    /// handle's generation: it was forged, corrupted, or made by another store.
    #[error("invalid handle: {reason}")]
    InvalidHandle {
        /// What does not match.
        reason: &'static str,
    },

    /// A system call failed.
    #[error("{op} failed on {}: {source}", file.display())]
    Os {
        /// The operation (`open`, `mmap`, `fallocate`...).
        op: &'static str,
        /// The file it was applied to.
        file: PathBuf,
        /// The OS error, with its errno.
        #[source]
        source: io::Error,
    },
}

impl BlobError {
    /// Wraps an OS error, mapping ENOSPC to [`BlobError::NoSpace`].
    pub(crate) fn os(op: &'static str, file: impl Into<PathBuf>, source: io::Error) -> Self {
        let file = file.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return BlobError::NoSpace { file };
        }
        BlobError::Os { op, file, source }
    }

    /// The errno of an OS failure, if this is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            BlobError::Os { source, .. } => source.raw_os_error(),
            BlobError::NoSpace { .. } => Some(libc::ENOSPC),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_no_space_and_errno_is_kept() {
        let e = BlobError::os(
            "fallocate",
            "/dev/shm/x_data_1",
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(matches!(e, BlobError::NoSpace { .. }));
        let e = BlobError::os(
            "open",
            "/dev/shm/x_ctrl",
            io::Error::from_raw_os_error(libc::EACCES),
        );
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        let msg = e.to_string();
        assert!(msg.contains("open failed on /dev/shm/x_ctrl"), "{msg}");
    }
}
