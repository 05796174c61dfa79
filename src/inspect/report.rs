//! The report types: what inspection found, as plain data.

use super::*;

/// Whether the creator of a namespace is alive, by the library's own
/// liveness check: the creator's open-file-description lock on byte 0 of
/// `{ns}_ctrl`, which the kernel drops when the creator dies, however it dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creator {
    /// The lock is held: the store is in use; `pid` is the creator's
    /// recorded pid.
    Alive {
        /// Pid recorded in the control block.
        pid: u32,
    },
    /// Nobody holds the lock: the creator died (or was killed) without
    /// removing the namespace.
    Dead {
        /// Pid recorded in the control block (0 if unreadable).
        pid: u32,
    },
    /// There is no control block of this format to ask (chunk files without
    /// one, or a foreign file under the name).
    None,
    /// The lock could not be tested (the reason is in `problems`).
    Unknown,
}

impl Creator {
    /// The recorded pid, if there is a control block.
    pub fn pid(&self) -> Option<u32> {
        match *self {
            Creator::Alive { pid } | Creator::Dead { pid } => Some(pid),
            Creator::None | Creator::Unknown => None,
        }
    }
}

impl fmt::Display for Creator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Creator::Alive { pid } => write!(f, "alive (pid {pid})"),
            Creator::Dead { pid } => write!(f, "dead (pid {pid})"),
            Creator::None => f.write_str("none"),
            Creator::Unknown => f.write_str("unknown"),
        }
    }
}

/// What the files under one namespace name amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// A store of this format, consistent as far as its headers tell.
    Ok,
    /// Files of this format whose content is inconsistent (truncated,
    /// fields out of range, a chunk header that contradicts its file):
    /// `problems` says what.
    Corrupt,
    /// The control file is not of this format (another program's file, an
    /// empty file, or another format version). Left alone by `sfb`.
    Foreign,
    /// Chunk files without a control block: left by a crash while a
    /// namespace was being created or removed.
    Orphaned,
    /// A file could not be read (permissions): `problems` says which.
    Unreadable,
}

impl Health {
    /// Lower-case name, as printed and in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Corrupt => "corrupt",
            Health::Foreign => "foreign",
            Health::Orphaned => "orphaned",
            Health::Unreadable => "unreadable",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state half of a chunk's `state_gen` word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    /// In the warm pool (or just made), waiting to be activated.
    Free,
    /// Holds, or may receive, entries of its generation.
    InUse,
    /// Claimed by a reclaimer, about to be recycled or retired.
    Reclaiming,
    /// Unlinked (only mappings made before keep it alive).
    Retired,
    /// A value no version of the format writes.
    Invalid(u32),
}

impl ChunkState {
    pub(super) fn from_word(state: u32) -> Self {
        match state {
            STATE_FREE => ChunkState::Free,
            STATE_IN_USE => ChunkState::InUse,
            STATE_RECLAIMING => ChunkState::Reclaiming,
            STATE_RETIRED => ChunkState::Retired,
            other => ChunkState::Invalid(other),
        }
    }

    /// Upper-case name, as printed and in JSON (`INVALID` for invalid values).
    pub fn as_str(&self) -> &'static str {
        match self {
            ChunkState::Free => "FREE",
            ChunkState::InUse => "IN_USE",
            ChunkState::Reclaiming => "RECLAIMING",
            ChunkState::Retired => "RETIRED",
            ChunkState::Invalid(_) => "INVALID",
        }
    }
}

impl fmt::Display for ChunkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkState::Invalid(v) => write!(f, "INVALID({v})"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// The append target named by the control block's `active` word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ActiveChunk {
    /// Chunk id.
    pub id: u32,
    /// Generation the chunk had when it became the target.
    pub generation: u32,
}

/// The fields of a control block (`{ns}_ctrl`), decoded from a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ControlBlock {
    /// Format version (2).
    pub version: u32,
    /// Size the control block says it has.
    pub ctrl_size: u32,
    /// Bytes per standard chunk file, header included.
    pub chunk_size: u32,
    /// Chunk files allowed, 0 = unlimited.
    pub max_chunks: u32,
    /// Recorded creator pid (display only; liveness is the lock).
    pub creator_pid: u32,
    /// Recorded creator start time, clock ticks since boot.
    pub creator_start_ticks: u64,
    /// Warm-pool slots in use.
    pub pool_capacity: u32,
    /// Grace period after full acknowledgement, ms.
    pub decay_ms: u64,
    /// Expiry of unacknowledged data after sealing, ms.
    pub ttl_ms: u64,
    /// The append target, if there is one.
    pub active: Option<ActiveChunk>,
    /// The id the next chunk creation takes (the first free registry slot,
    /// at its epoch); `u32::MAX` if every slot is taken.
    pub next_chunk_id: u32,
    /// Registry slots taken: chunk files, creations in progress and
    /// creations whose creator died (counted against `max_chunks`).
    pub live_chunks: u32,
    /// Global generation counter.
    pub generation: u32,
    /// The namespace is being removed.
    pub closed: bool,
    /// Creation time, Unix ms.
    pub created_unix_ms: u64,
    /// Chunk ids waiting in the warm pool.
    pub pool: Vec<u32>,
    /// Chunks recycled in place so far.
    pub recycled: u64,
    /// Chunk files unlinked so far.
    pub retired: u64,
    /// Chunks reclaimed by TTL so far.
    pub expired: u64,
    /// Ids of the published chunks in the registry (empty if the file is
    /// too short to hold it).
    pub registry: Vec<u32>,
    /// Ids of chunk creations registered but not published: in progress,
    /// or left by a creator that died (a reclamation pass removes those
    /// after the grace period).
    pub creating: Vec<u32>,
    /// Registry slots with bits set that no valid slot word sets.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub bad_slots: Vec<usize>,
}

/// The fields of a chunk header (`{ns}_data_{id}`), decoded from a copy.
/// Times are "milliseconds ago" at the moment of inspection, `None` when
/// the field is not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkHeaderInfo {
    /// Chunk id written in the header.
    pub chunk_id: u32,
    /// Generation of the chunk.
    pub generation: u32,
    /// State of the chunk.
    pub state: ChunkState,
    /// File size written in the header.
    pub size: u32,
    /// Bytes taken by entries (headers and padding included).
    pub used: u64,
    /// Bytes available to entries (size minus the chunk header).
    pub capacity: u64,
    /// No more reservations are taken.
    pub sealed: bool,
    /// Entries written in this generation (committed or acknowledged),
    /// counted by walking the entry headers up to the first one not yet
    /// written, as the reclaimers do. Without a walk (`sfb list`), the
    /// count the reclaimers last recorded, which may lag.
    pub entries: u32,
    /// Acknowledged entries of this generation, counted by the same walk
    /// (0 when not walked).
    pub acknowledged: u32,
    /// Bytes reserved but not yet written: from the first entry not yet
    /// committed to the end of the used space (a writer in flight, or one
    /// that died; the TTL retires such a chunk). Entries behind it cannot be
    /// read until it is written. 0 without a walk.
    pub pending_bytes: u64,
    /// The entry walk was done (see `entries`).
    pub walked: bool,
    /// While a new chunk is being backed by memory in steps: how many bytes
    /// from the start of its file are (the header's `ready`); `None` once
    /// all of it is.
    pub backed: Option<u64>,
    /// Readers pinning the chunk, in any process.
    pub pins: u32,
    /// Holds one oversized blob.
    pub dedicated: bool,
    /// The chunk is half-way through activation (`sealed_ms` holds the
    /// activation marker, not a time).
    pub activating: bool,
    /// Since the chunk last became the append target.
    pub activated_ago_ms: Option<u64>,
    /// Since its first append.
    pub first_write_ago_ms: Option<u64>,
    /// Since it was sealed (the TTL counts from here).
    pub sealed_ago_ms: Option<u64>,
    /// Since all its entries were seen acknowledged (decay), or since a
    /// pooled chunk was freed.
    pub empty_since_ago_ms: Option<u64>,
}

impl ChunkHeaderInfo {
    /// Entries written and not yet acknowledged (entry state COMMITTED).
    pub fn committed(&self) -> u32 {
        self.entries.saturating_sub(self.acknowledged)
    }

    /// The chunk's age: since it was activated, or (never activated) since
    /// it was made or freed.
    pub fn age_ms(&self) -> Option<u64> {
        self.activated_ago_ms.or(self.empty_since_ago_ms)
    }
}

/// One chunk file (or one registered chunk id without a file).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ChunkReport {
    /// Chunk id (from the file name, or the registry).
    pub id: u32,
    /// File name, `None` if the registry names an id whose file is missing.
    pub file: Option<String>,
    /// File size in bytes.
    pub file_bytes: u64,
    /// Bytes the file takes on the tmpfs (`st_blocks * 512`).
    pub tmpfs_bytes: u64,
    /// The control block's registry names this id.
    pub registered: bool,
    /// The chunk is in the warm pool.
    pub pooled: bool,
    /// The chunk is the append target.
    pub active: bool,
    /// The decoded header, if the file has this format's chunk magic and a
    /// whole header.
    pub header: Option<ChunkHeaderInfo>,
    /// Content that is not of this format (another program's file, or one
    /// that is not a regular file).
    pub foreign: bool,
    /// Inconsistent content: what is wrong.
    pub problem: Option<String>,
    /// Something unusual but not corrupt (a chunk file being made, a stale
    /// registry slot, a file of an earlier incarnation).
    pub note: Option<String>,
}

/// Everything readable about one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceReport {
    /// The namespace.
    pub namespace: String,
    /// The shm directory it lives in.
    pub dir: PathBuf,
    /// What its files amount to.
    pub health: Health,
    /// Liveness of the creator.
    pub creator: Creator,
    /// Whether `{ns}_ctrl` exists.
    pub ctrl_present: bool,
    /// Size of `{ns}_ctrl` in bytes.
    pub ctrl_bytes: u64,
    /// Bytes `{ns}_ctrl` takes on the tmpfs.
    pub ctrl_tmpfs_bytes: u64,
    /// The format version the control file claims (if it has our magic).
    pub format_version: Option<u32>,
    /// The decoded control block (if it has our magic, our version and at
    /// least a whole header).
    pub control: Option<ControlBlock>,
    /// Chunk files and registered chunk ids, by id.
    pub chunks: Vec<ChunkReport>,
    /// Channel files, by name.
    pub channels: Vec<ChannelReport>,
    /// Inconsistencies found, each a sentence.
    pub problems: Vec<String>,
    /// Unix ms at which the report was taken.
    pub taken_unix_ms: u64,
}

impl NamespaceReport {
    /// Names of the files of the namespace (control file first).
    pub fn files(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.ctrl_present {
            v.push(ctrl_file_name(&self.namespace));
        }
        v.extend(self.chunks.iter().filter_map(|c| c.file.clone()));
        v.extend(self.channels.iter().map(|c| c.file.clone()));
        v
    }

    /// Chunk files in existence.
    pub fn chunk_files(&self) -> usize {
        self.chunks.iter().filter(|c| c.file.is_some()).count()
    }

    /// Bytes all files of the namespace take on the tmpfs.
    pub fn tmpfs_bytes(&self) -> u64 {
        self.ctrl_tmpfs_bytes
            + self.chunks.iter().map(|c| c.tmpfs_bytes).sum::<u64>()
            + self.channels.iter().map(|c| c.tmpfs_bytes).sum::<u64>()
    }

    /// Files under the namespace's names whose content is not of this format.
    pub fn foreign_files(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.ctrl_present && self.health == Health::Foreign {
            v.push(ctrl_file_name(&self.namespace));
        }
        v.extend(
            self.chunks
                .iter()
                .filter(|c| c.foreign)
                .filter_map(|c| c.file.clone()),
        );
        v
    }

    /// Since creation, from the recorded creation time.
    pub fn age_ms(&self) -> Option<u64> {
        let created = self.control.as_ref()?.created_unix_ms;
        (created != 0).then(|| self.taken_unix_ms.saturating_sub(created))
    }

    /// Whether nothing keeps this namespace alive: its creator is dead, or
    /// it has chunk files of this format but no control block.
    pub fn is_dead(&self) -> bool {
        matches!(self.creator, Creator::Dead { .. }) || self.health == Health::Orphaned
    }

    /// The one-line summary `sfb list` shows.
    pub fn info(&self) -> NamespaceInfo {
        NamespaceInfo {
            namespace: self.namespace.clone(),
            health: self.health,
            creator: self.creator,
            chunk_files: self.chunk_files(),
            tmpfs_bytes: self.tmpfs_bytes(),
            age_ms: self.age_ms(),
            format_version: self.format_version,
            files: self.files(),
            foreign_files: self.foreign_files(),
            problems: self.problems.clone(),
            dead: self.is_dead(),
        }
    }
}

/// A summary of one namespace, as `sfb list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct NamespaceInfo {
    /// The namespace.
    pub namespace: String,
    /// What its files amount to.
    pub health: Health,
    /// Liveness of the creator.
    pub creator: Creator,
    /// Chunk files in existence.
    pub chunk_files: usize,
    /// Bytes its files take on the tmpfs (`st_blocks * 512`).
    pub tmpfs_bytes: u64,
    /// Since creation.
    pub age_ms: Option<u64>,
    /// Format version the control file claims.
    pub format_version: Option<u32>,
    /// Its files.
    pub files: Vec<String>,
    /// Those of its files whose content is not of this format.
    pub foreign_files: Vec<String>,
    /// Inconsistencies found.
    pub problems: Vec<String>,
    /// Nothing keeps it alive (see [`NamespaceReport::is_dead`]).
    pub dead: bool,
}

/// A file of the shm directory whose name is not one of this format's.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct OtherFile {
    /// File name.
    pub name: String,
    /// What it is: `file`, `directory`, `symlink`, `fifo`, `socket`, `device`.
    pub kind: &'static str,
    /// Size in bytes.
    pub bytes: u64,
    /// Bytes it takes on the tmpfs.
    pub tmpfs_bytes: u64,
}

/// Everything in one shm directory.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Listing {
    /// The directory.
    pub dir: PathBuf,
    /// Every namespace, by name.
    pub namespaces: Vec<NamespaceInfo>,
    /// Files of other programs (names that are not this format's).
    pub other_files: Vec<OtherFile>,
}
