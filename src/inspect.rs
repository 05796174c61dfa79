//! Read-only inspection of the shm directory and of shared-memory stores,
//! for operators (the `sfb` CLI is built on it).
//!
//! **Reading never modifies anything.** Files are opened read-only
//! (`O_RDONLY | O_NOFOLLOW | O_NONBLOCK`), their size
//! and type are checked with `fstat` first, and only their headers are read,
//! with `pread`, into local buffers: nothing is mapped, no lock is taken
//! (liveness is tested with `F_OFD_GETLK`, which only asks), no counter is
//! touched. Every file is judged by its content, so a zero-length,
//! truncated, corrupt or foreign file is reported ([`Health`], `problems`),
//! never trusted and never a panic.
//!
//! A live store changes while it is read: a report is a snapshot of fields
//! read one by one, not an atomic picture. States that are normal for an
//! instant in a live store (a chunk file being created, a registry slot
//! being cleared) are reported as notes, not as corruption.
//!
//! Offsets come from [`crate::layout`]'s structures, never from numbers
//! written here.

use crate::channel::{parse_channel_file_name, ChannelReport};
use crate::chunk::SEALED_ACTIVATING;
use crate::clock;
use crate::error::{BlobError, Result};
use crate::layout::*;
use crate::namespace;
use crate::os;
use crate::registry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{File, Metadata};
use std::mem::offset_of;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

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
    fn from_word(state: u32) -> Self {
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
pub struct ActiveChunk {
    /// Chunk id.
    pub id: u32,
    /// Generation the chunk had when it became the target.
    pub generation: u32,
}

/// The fields of a control block (`{ns}_ctrl`), decoded from a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Acknowledged entries of this generation (the header's counter).
    pub acknowledged: u32,
    /// Bytes reserved but not yet written: from the first entry not yet
    /// committed to the end of the used space (a writer in flight, or one
    /// that died; the TTL retires such a chunk). Entries behind it cannot be
    /// read until it is written. 0 without a walk.
    pub pending_bytes: u64,
    /// The entry walk was done (see `entries`).
    pub walked: bool,
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
pub struct Listing {
    /// The directory.
    pub dir: PathBuf,
    /// Every namespace, by name.
    pub namespaces: Vec<NamespaceInfo>,
    /// Files of other programs (names that are not this format's).
    pub other_files: Vec<OtherFile>,
}

/// Every namespace in `dir` (usually [`shm_dir`]), and every file that is
/// not one of this format's. Reads only; see the module documentation.
pub fn list_namespaces(dir: &Path) -> Result<Listing> {
    let mut by_ns: BTreeMap<String, Names> = BTreeMap::new();
    let mut other_files = Vec::new();
    let mut names = os::list_dir(dir)?;
    names.sort();
    for name in names {
        match parse_file_name(&name) {
            Some(FileKind::Ctrl { ns }) => by_ns.entry(ns).or_default().ctrl = true,
            Some(FileKind::Chunk { ns, id }) => {
                by_ns.entry(ns).or_default().chunks.insert(id);
            }
            None if parse_channel_file_name(&name).is_some() => {
                if let Some((ns, chan)) = parse_channel_file_name(&name) {
                    by_ns.entry(ns).or_default().channels.insert((name, chan));
                }
            }
            None => {
                // Gone since the listing: nothing to show.
                if let Ok(meta) = std::fs::symlink_metadata(dir.join(&name)) {
                    other_files.push(OtherFile {
                        kind: kind_of(&meta),
                        bytes: meta.len(),
                        tmpfs_bytes: tmpfs_bytes(&meta),
                        name,
                    });
                }
            }
        }
    }
    let namespaces = by_ns
        .into_iter()
        .map(|(ns, names)| inspect_names(dir, &ns, &names, false).info())
        .collect();
    Ok(Listing {
        dir: dir.to_owned(),
        namespaces,
        other_files,
    })
}

/// Everything readable about namespace `ns` in the shm directory
/// ([`shm_dir`]). [`BlobError::NotFound`] if it has no file at all.
pub fn inspect_namespace(ns: &str) -> Result<NamespaceReport> {
    inspect_namespace_in(&os::shm_dir(), ns)
}

/// [`inspect_namespace`] in another directory.
pub fn inspect_namespace_in(dir: &Path, ns: &str) -> Result<NamespaceReport> {
    namespace::validate(ns)?;
    let mut names = Names::default();
    for name in os::list_dir(dir)? {
        match parse_file_name(&name) {
            Some(FileKind::Ctrl { ns: n }) if n == ns => names.ctrl = true,
            Some(FileKind::Chunk { ns: n, id }) if n == ns => {
                names.chunks.insert(id);
            }
            None => {
                if let Some((n, chan)) = parse_channel_file_name(&name) {
                    if n == ns {
                        names.channels.insert((name, chan));
                    }
                }
            }
            _ => {}
        }
    }
    if !names.ctrl && names.chunks.is_empty() && names.channels.is_empty() {
        return Err(BlobError::NotFound {
            namespace: ns.to_owned(),
        });
    }
    Ok(inspect_names(dir, ns, &names, true))
}

/// The shm directory the library uses: `$SFB_SHM_DIR`, or `/dev/shm`.
pub fn shm_dir() -> PathBuf {
    os::shm_dir()
}

/// File names of one namespace found in the directory.
#[derive(Default)]
struct Names {
    ctrl: bool,
    chunks: BTreeSet<u32>,
    /// (file name, channel name).
    channels: BTreeSet<(String, String)>,
}

/// A file opened for inspection, with what `fstat` said.
struct Opened {
    file: File,
    meta: Metadata,
}

/// Outcome of opening a file for inspection.
enum Open {
    Ok(Opened),
    /// Gone between the listing and the open (a live store retired it).
    Gone,
    /// Not a regular file: never opened.
    NotRegular(&'static str, Metadata),
    Failed(String),
}

fn open_file(path: &Path) -> Open {
    // lstat first: a FIFO or device under one of our names is never opened.
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => return Open::NotRegular(kind_of(&m), m),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Open::Gone,
        Err(e) => return Open::Failed(format!("lstat: {e}")),
    }
    let file = match os::open_ro(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Open::Gone,
        Err(e) => return Open::Failed(format!("open: {e}")),
    };
    match file.metadata() {
        // Replaced by something else between lstat and open.
        Ok(m) if !m.file_type().is_file() => Open::NotRegular(kind_of(&m), m),
        Ok(meta) => Open::Ok(Opened { file, meta }),
        Err(e) => Open::Failed(format!("fstat: {e}")),
    }
}

fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else {
        "device"
    }
}

fn tmpfs_bytes(meta: &Metadata) -> u64 {
    meta.blocks().saturating_mul(512)
}

/// Reads up to `want` bytes from offset 0 (never more than the file holds).
fn read_head(opened: &Opened, want: usize, path: &Path) -> std::result::Result<Vec<u8>, String> {
    let len = usize::try_from(opened.meta.len()).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; want.min(len)];
    let n = os::read_prefix(&opened.file, &mut buf, path).map_err(|e| e.to_string())?;
    buf.truncate(n);
    Ok(buf)
}

fn u32_at(buf: &[u8], off: usize) -> u32 {
    buf.get(off..off + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

fn u64_at(buf: &[u8], off: usize) -> u64 {
    buf.get(off..off + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// Bytes of a magic word (both magics are a u64).
const MAGIC_LEN: usize = std::mem::size_of::<u64>();

/// A magic word shown to a human: its hex value and printable bytes.
fn show_magic(buf: &[u8]) -> String {
    let bytes = &buf[..buf.len().min(MAGIC_LEN)];
    let text: String = bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("starts with {hex} \"{text}\"")
}

/// Milliseconds since a coarse-monotonic timestamp; `None` for 0 (unset).
fn ago(now_ms: u64, stamp: u64) -> Option<u64> {
    (stamp != 0).then(|| now_ms.saturating_sub(stamp))
}

/// Reads a namespace's files; `walk` also walks the entries of chunks in use
/// (reads their unwalked entry headers) for exact counts.
fn inspect_names(dir: &Path, ns: &str, names: &Names, walk: bool) -> NamespaceReport {
    let mut report = NamespaceReport {
        namespace: ns.to_owned(),
        dir: dir.to_owned(),
        health: Health::Ok,
        creator: Creator::None,
        ctrl_present: false,
        ctrl_bytes: 0,
        ctrl_tmpfs_bytes: 0,
        format_version: None,
        control: None,
        chunks: Vec::new(),
        channels: names
            .channels
            .iter()
            .map(|(file, name)| crate::channel::inspect_channel(dir, file, name))
            .collect(),
        problems: Vec::new(),
        taken_unix_ms: clock::unix_ms(),
    };
    let now_ms = clock::now_ms();
    // The incarnation (tag key) of the control block, to recognise its chunks.
    let mut incarnation = None;
    let mut unreadable = false;
    let mut ctrl_ours = false;
    if names.ctrl {
        let path = dir.join(ctrl_file_name(ns));
        match open_file(&path) {
            Open::Gone => {}
            Open::NotRegular(kind, meta) => {
                report.ctrl_present = true;
                report.ctrl_bytes = meta.len();
                report.health = Health::Foreign;
                report.problems.push(format!(
                    "{} is a {kind}, not a regular file",
                    path.display()
                ));
            }
            Open::Failed(e) => {
                report.ctrl_present = true;
                unreadable = true;
                report.creator = Creator::Unknown;
                report
                    .problems
                    .push(format!("cannot read {}: {e}", path.display()));
            }
            Open::Ok(opened) => {
                report.ctrl_present = true;
                report.ctrl_bytes = opened.meta.len();
                report.ctrl_tmpfs_bytes = tmpfs_bytes(&opened.meta);
                match inspect_ctrl(&opened, &path, &mut report) {
                    CtrlVerdict::Foreign => report.health = Health::Foreign,
                    CtrlVerdict::Ours(key) => {
                        ctrl_ours = true;
                        incarnation = key;
                    }
                    CtrlVerdict::Unreadable => unreadable = true,
                }
            }
        }
    }
    // Every chunk file, and every registered id even without a file.
    let control = report.control.clone();
    let mut ids: BTreeSet<u32> = names.chunks.clone();
    if let Some(c) = &control {
        ids.extend(c.registry.iter().copied());
    }
    for id in ids {
        let has_file = names.chunks.contains(&id);
        let (chunk, failed) = inspect_chunk(
            dir,
            ns,
            id,
            has_file,
            control.as_ref(),
            incarnation,
            now_ms,
            walk,
        );
        unreadable |= failed;
        report.chunks.extend(chunk);
    }
    for c in &report.chunks {
        if let (Some(p), Some(f)) = (&c.problem, &c.file) {
            report.problems.push(format!("{f}: {p}"));
        }
    }
    if report.health != Health::Foreign {
        let ours_or_unformatted = report.chunks.iter().any(|c| c.file.is_some() && !c.foreign);
        report.health = if unreadable {
            Health::Unreadable
        } else if !report.ctrl_present {
            if ours_or_unformatted {
                Health::Orphaned
            } else {
                Health::Foreign
            }
        } else if !ctrl_ours || !report.problems.is_empty() {
            Health::Corrupt
        } else {
            Health::Ok
        };
    }
    report
}

enum CtrlVerdict {
    /// Not of this format; nothing decoded.
    Foreign,
    /// Our magic and version (decoded as far as it goes; `problems` filled),
    /// with the tag key if the header was whole.
    Ours(Option<u64>),
    Unreadable,
}

fn inspect_ctrl(opened: &Opened, path: &Path, report: &mut NamespaceReport) -> CtrlVerdict {
    let head = match read_head(opened, CTRL_SIZE, path) {
        Ok(h) => h,
        Err(e) => {
            report.creator = Creator::Unknown;
            report
                .problems
                .push(format!("cannot read {}: {e}", path.display()));
            return CtrlVerdict::Unreadable;
        }
    };
    let magic_end = offset_of!(CtrlHeader, magic) + MAGIC_LEN;
    let version_end = offset_of!(CtrlHeader, version) + 4;
    if head.len() < magic_end || u64_at(&head, offset_of!(CtrlHeader, magic)) != CTRL_MAGIC {
        let what = if head.is_empty() {
            "it is empty (0 bytes)".to_owned()
        } else if head.len() < magic_end {
            format!("it is {} bytes, too short for a magic", head.len())
        } else {
            format!("its magic is not \"SFB_CTL2\" ({})", show_magic(&head))
        };
        report.problems.push(format!(
            "{} is not a stable-fragmented-buffer control file: {what}",
            path.display()
        ));
        return CtrlVerdict::Foreign;
    }
    if head.len() < version_end {
        report.format_version = None;
        report.problems.push(format!(
            "{} is truncated to {} bytes (expected {CTRL_SIZE})",
            path.display(),
            head.len()
        ));
        report.creator = liveness(opened, &head, path, report);
        return CtrlVerdict::Ours(None);
    }
    let version = u32_at(&head, offset_of!(CtrlHeader, version));
    report.format_version = Some(version);
    if version != FORMAT_VERSION {
        report.problems.push(format!(
            "{} has format version {version}; this version of the library reads version {FORMAT_VERSION}",
            path.display()
        ));
        return CtrlVerdict::Foreign;
    }
    report.creator = liveness(opened, &head, path, report);
    let len = opened.meta.len();
    if len != CTRL_SIZE as u64 {
        report.problems.push(format!(
            "{} is {len} bytes, expected {CTRL_SIZE}",
            path.display()
        ));
    }
    if head.len() < CTRL_HEADER_SIZE {
        return CtrlVerdict::Ours(None);
    }
    let c = decode_ctrl(&head);
    check_ctrl(&c, head.len(), path, &mut report.problems);
    let key = u64_at(&head, offset_of!(CtrlHeader, tag_key));
    report.control = Some(c);
    CtrlVerdict::Ours(Some(key))
}

fn liveness(opened: &Opened, head: &[u8], path: &Path, report: &mut NamespaceReport) -> Creator {
    let pid = if head.len() >= offset_of!(CtrlHeader, creator_pid) + 4 {
        u32_at(head, offset_of!(CtrlHeader, creator_pid))
    } else {
        0
    };
    // F_OFD_GETLK only asks; it takes nothing, even on a read-only file.
    match os::creator_lock_held(&opened.file) {
        Ok(true) => Creator::Alive { pid },
        Ok(false) => Creator::Dead { pid },
        Err(e) => {
            report.problems.push(format!(
                "cannot test the creator lock of {}: {e}",
                path.display()
            ));
            Creator::Unknown
        }
    }
}

fn decode_ctrl(head: &[u8]) -> ControlBlock {
    macro_rules! u32f {
        ($f:ident) => {
            u32_at(head, offset_of!(CtrlHeader, $f))
        };
    }
    macro_rules! u64f {
        ($f:ident) => {
            u64_at(head, offset_of!(CtrlHeader, $f))
        };
    }
    let active = u64f!(active);
    let pool_at = offset_of!(CtrlHeader, pool);
    let pool = (0..POOL_SLOTS)
        .map(|i| u32_at(head, pool_at + 4 * i))
        .filter(|&v| v != 0)
        .map(|v| v - 1)
        .collect();
    let (mut registry, mut creating, mut bad_slots) = (Vec::new(), Vec::new(), Vec::new());
    let (mut taken, mut next_chunk_id) = (0u32, None);
    for slot in 0..REGISTRY_SLOTS {
        let off = CTRL_HEADER_SIZE + 8 * slot;
        if off + 8 > head.len() {
            break;
        }
        let word = u64_at(head, off);
        let s = registry::Slot::decode(word);
        let id = registry::id_at(slot, s.epoch);
        if registry::Slot::reserved_bits(word) != 0 {
            bad_slots.push(slot);
        }
        match s.state {
            SLOT_FREE => {
                next_chunk_id.get_or_insert(id);
            }
            SLOT_READY => registry.push(id),
            _ => creating.push(id),
        }
        taken += u32::from(s.state != SLOT_FREE && !registry::Slot::is_tentative(word));
    }
    ControlBlock {
        version: u32f!(version),
        ctrl_size: u32f!(ctrl_size),
        chunk_size: u32f!(chunk_size),
        max_chunks: u32f!(max_chunks),
        creator_pid: u32f!(creator_pid),
        creator_start_ticks: u64f!(creator_start),
        pool_capacity: u32f!(pool_capacity),
        decay_ms: u64f!(decay_ms),
        ttl_ms: u64f!(ttl_ms),
        active: (id_of(active) != NO_CHUNK).then(|| ActiveChunk {
            id: id_of(active),
            generation: generation_of(active),
        }),
        next_chunk_id: next_chunk_id.unwrap_or(NO_CHUNK),
        live_chunks: taken,
        generation: u32f!(generation),
        closed: u32f!(closed) != 0,
        created_unix_ms: u64f!(created_unix_ms),
        pool,
        recycled: u64f!(recycled),
        retired: u64f!(retired),
        expired: u64f!(expired),
        registry,
        creating,
        bad_slots,
    }
}

/// Invariants of a control block that hold at every instant of a live store.
fn check_ctrl(c: &ControlBlock, read: usize, path: &Path, problems: &mut Vec<String>) {
    let file = path.display();
    if read < CTRL_SIZE {
        problems.push(format!(
            "{file}: the registry is cut short ({read} of {CTRL_SIZE} bytes)"
        ));
    }
    if c.ctrl_size as usize != CTRL_SIZE {
        problems.push(format!(
            "{file}: ctrl_size field is {}, expected {CTRL_SIZE}",
            c.ctrl_size
        ));
    }
    let cs = c.chunk_size as usize;
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) || cs % ENTRY_ALIGN != 0 {
        problems.push(format!(
            "{file}: chunk_size {cs} is out of range (a multiple of {ENTRY_ALIGN} in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE})"
        ));
    }
    if c.max_chunks as usize > REGISTRY_SLOTS {
        problems.push(format!(
            "{file}: max_chunks {} exceeds the {REGISTRY_SLOTS} registry slots",
            c.max_chunks
        ));
    }
    if c.pool_capacity as usize > POOL_SLOTS {
        problems.push(format!(
            "{file}: pool_capacity {} exceeds the {POOL_SLOTS} pool slots",
            c.pool_capacity
        ));
    }
    if !c.bad_slots.is_empty() {
        let slots: BTreeSet<u32> = c.bad_slots.iter().map(|&s| s as u32).collect();
        problems.push(format!(
            "{file}: {} registry slot(s) have reserved bits set: {}",
            slots.len(),
            some_ids(&slots)
        ));
    }
}

/// The first few ids of a set, for a message.
fn some_ids(ids: &BTreeSet<u32>) -> String {
    let mut v: Vec<String> = ids.iter().take(5).map(u32::to_string).collect();
    if ids.len() > 5 {
        v.push("...".into());
    }
    v.join(", ")
}

/// Reads one chunk file (or notes a registered id without one). `None` if
/// the file vanished since the listing and nothing names it any more; the
/// flag is set when the file could not be read.
#[allow(clippy::too_many_arguments)]
fn inspect_chunk(
    dir: &Path,
    ns: &str,
    id: u32,
    has_file: bool,
    control: Option<&ControlBlock>,
    incarnation: Option<u64>,
    now_ms: u64,
    walk: bool,
) -> (Option<ChunkReport>, bool) {
    let registered = control.is_some_and(|c| c.registry.contains(&id));
    let being_made = control.is_some_and(|c| c.creating.contains(&id));
    let mut r = ChunkReport {
        id,
        file: None,
        file_bytes: 0,
        tmpfs_bytes: 0,
        registered,
        pooled: control.is_some_and(|c| c.pool.contains(&id)),
        active: control.is_some_and(|c| c.active.map(|a| a.id) == Some(id)),
        header: None,
        foreign: false,
        problem: None,
        note: None,
    };
    const MISSING: &str =
        "registered, but its file is gone (being retired, or a slot left by a killed process)";
    let name = chunk_file_name(ns, id);
    let path = dir.join(&name);
    let opened = match has_file.then(|| open_file(&path)) {
        Some(Open::Ok(o)) => o,
        None | Some(Open::Gone) if registered => {
            r.note = Some(MISSING.into());
            return (Some(r), false);
        }
        None | Some(Open::Gone) => return (None, false),
        Some(Open::NotRegular(kind, meta)) => {
            r.file = Some(name);
            r.file_bytes = meta.len();
            r.foreign = true;
            r.note = Some(format!("a {kind}, not a regular file; left alone"));
            return (Some(r), false);
        }
        Some(Open::Failed(e)) => {
            r.file = Some(name);
            r.problem = Some(format!("cannot read: {e}"));
            return (Some(r), true);
        }
    };
    r.file = Some(name);
    r.file_bytes = opened.meta.len();
    r.tmpfs_bytes = tmpfs_bytes(&opened.meta);
    let head = match read_head(&opened, CHUNK_HEADER_SIZE, &path) {
        Ok(h) => h,
        Err(e) => {
            r.problem = Some(format!("cannot read: {e}"));
            return (Some(r), true);
        }
    };
    let magic = u64_at(&head, offset_of!(ChunkHeader, magic));
    // A chunk file is created empty, sized, then formatted: until its magic
    // is written it is all zeros (or empty).
    if head.len() < offset_of!(ChunkHeader, magic) + MAGIC_LEN || magic == 0 {
        let what = if head.is_empty() {
            "empty (0 bytes)".to_owned()
        } else {
            format!("{} bytes, no header written", r.file_bytes)
        };
        if registered {
            r.problem = Some(format!("registered but unformatted: {what}"));
        } else {
            r.note = Some(format!(
                "unformatted ({what}): a chunk file being made, or left by a crash"
            ));
        }
        return (Some(r), false);
    }
    if magic != CHUNK_MAGIC {
        r.foreign = true;
        r.note = Some(format!(
            "not a stable-fragmented-buffer chunk file: {}; left alone",
            show_magic(&head)
        ));
        if registered {
            r.problem = Some("registered, but its content is foreign".into());
        }
        return (Some(r), false);
    }
    if head.len() < CHUNK_HEADER_SIZE {
        r.problem = Some(format!(
            "truncated to {} bytes, shorter than the {CHUNK_HEADER_SIZE}-byte header",
            head.len()
        ));
        return (Some(r), false);
    }
    let h = decode_chunk(&head, now_ms);
    let mut wrong = Vec::new();
    if h.chunk_id != id {
        wrong.push(format!(
            "header says chunk {}, file name says {id}",
            h.chunk_id
        ));
    }
    if u64::from(h.size) != r.file_bytes {
        wrong.push(format!(
            "header says {} bytes, file has {}",
            h.size, r.file_bytes
        ));
    }
    let next_free = h.used + CHUNK_HEADER_SIZE as u64;
    if next_free > u64::from(h.size) || next_free % ENTRY_ALIGN as u64 != 0 {
        wrong.push(format!(
            "next free offset {next_free} is not an aligned offset inside the chunk"
        ));
    }
    if let ChunkState::Invalid(v) = h.state {
        wrong.push(format!("state {v} is not a chunk state"));
    }
    let alloc = u64_at(&head, offset_of!(ChunkHeader, alloc));
    if alloc_writers(alloc) != 0 {
        wrong.push(format!(
            "alloc word {alloc:#018x} has bits 32-47 set, which this version never writes (a file of an older build?)"
        ));
    }
    let mut h = h;
    if walk && wrong.is_empty() && h.state == ChunkState::InUse {
        walk_entries(&opened, &path, &mut h);
    }
    if !wrong.is_empty() {
        r.problem = Some(wrong.join("; "));
    }
    let inc = u64_at(&head, offset_of!(ChunkHeader, incarnation));
    if incarnation.is_some_and(|key| key != inc) {
        r.note = Some(
            "made by another incarnation of the namespace (an orphan; cleanup removes it)".into(),
        );
    } else if being_made {
        r.note = Some(
            "being made (or left by a creator that died: a pass removes it after the grace period)"
                .into(),
        );
    } else if incarnation.is_some() && !registered {
        r.note = Some("not in the registry (left by a killed process)".into());
    }
    r.header = Some(h);
    (Some(r), false)
}

/// Bytes of entry headers read per `pread` during a walk.
const WALK_WINDOW: usize = 256 << 10;

/// Counts the entries written in the chunk's generation, the way the
/// reclaimers' walk does (`chunk.rs`), but on copies read with `pread`:
/// from the first entry to the first entry not yet written. Every length is bounds-checked; a length
/// that does not fit ends the walk like an unwritten entry would.
fn walk_entries(opened: &Opened, path: &Path, h: &mut ChunkHeaderInfo) {
    let used_end = h.used + CHUNK_HEADER_SIZE as u64;
    let (mut off, mut count) = (CHUNK_HEADER_SIZE as u64, 0);
    let len_at = offset_of!(EntryHeader, len);
    let state_at = offset_of!(EntryHeader, state);
    let mut window = Vec::new();
    let mut window_start = 0u64;
    while off < used_end {
        // Refill when the next entry header is not wholly in the window.
        let in_window = off >= window_start
            && off + ENTRY_HEADER_SIZE as u64 <= window_start + window.len() as u64;
        if !in_window {
            let want = (used_end - off).min(WALK_WINDOW as u64) as usize;
            window.resize(want, 0);
            match os::read_at(&opened.file, &mut window, off, path) {
                Ok(n) => window.truncate(n),
                Err(_) => break,
            }
            window_start = off;
            if window.len() < ENTRY_HEADER_SIZE {
                break;
            }
        }
        let at = (off - window_start) as usize;
        let state = u32_at(&window, at + state_at);
        if !entry_in_generation(state, h.generation)
            || !matches!(entry_kind(state), ENTRY_COMMITTED | ENTRY_ACKED)
        {
            break;
        }
        let Some(fp) = entry_footprint(u32_at(&window, at + len_at) as usize) else {
            break;
        };
        if off + fp as u64 > used_end {
            break;
        }
        off += fp as u64;
        count += 1;
    }
    h.entries = count;
    h.pending_bytes = used_end.saturating_sub(off);
    h.walked = true;
}

fn decode_chunk(head: &[u8], now_ms: u64) -> ChunkHeaderInfo {
    macro_rules! u32f {
        ($f:ident) => {
            u32_at(head, offset_of!(ChunkHeader, $f))
        };
    }
    macro_rules! u64f {
        ($f:ident) => {
            u64_at(head, offset_of!(ChunkHeader, $f))
        };
    }
    let alloc = u64f!(alloc);
    let sg = u64f!(state_gen);
    let size = u32f!(size);
    let sealed_ms = u64f!(sealed_ms);
    let activating = sealed_ms == SEALED_ACTIVATING;
    ChunkHeaderInfo {
        chunk_id: u32f!(chunk_id),
        generation: generation_of(sg),
        state: ChunkState::from_word(state_of(sg)),
        size,
        used: u64::from(alloc_used(alloc)).saturating_sub(CHUNK_HEADER_SIZE as u64),
        capacity: u64::from(size).saturating_sub(CHUNK_HEADER_SIZE as u64),
        sealed: alloc_sealed(alloc),
        // Counted by `walk_entries` when the caller walks.
        entries: 0,
        acknowledged: u32f!(acks),
        pending_bytes: 0,
        walked: false,
        pins: u32f!(pins),
        dedicated: u32f!(flags) & FLAG_DEDICATED != 0,
        activating,
        activated_ago_ms: ago(now_ms, u64f!(activated_ms)),
        first_write_ago_ms: ago(now_ms, u64f!(first_write_ms)),
        sealed_ago_ms: if activating {
            None
        } else {
            ago(now_ms, sealed_ms)
        },
        empty_since_ago_ms: ago(now_ms, u64f!(empty_since_ms)),
    }
}

#[cfg(all(test, not(miri), not(loom)))]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::SharedBackend;

    fn ns(tag: &str) -> String {
        format!("sfbtest-inspect-{}-{tag}", os::pid())
    }

    /// Byte-for-byte copy of every file of a namespace.
    fn snapshot(ns: &str) -> Vec<(String, Vec<u8>)> {
        let dir = os::shm_dir();
        let mut v: Vec<_> = os::list_dir(&dir)
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{ns}_")))
            .map(|n| {
                let bytes = std::fs::read(dir.join(&n)).unwrap();
                (n, bytes)
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_live_store_is_reported_and_left_byte_for_byte_unchanged() {
        let ns = ns("live");
        let store = SharedBackend::create_with_config(&ns, 64 << 10, &Config::default()).unwrap();
        let h = store.append(&[7u8; 1000]).unwrap();
        store.append(&[8u8; 100]).unwrap();
        assert!(store.acknowledge(&h));
        let before = snapshot(&ns);
        let r = inspect_namespace(&ns).unwrap();
        assert_eq!(before, snapshot(&ns), "inspection changed a byte");
        assert_eq!(r.health, Health::Ok, "{:?}", r.problems);
        assert_eq!(r.creator, Creator::Alive { pid: os::pid() });
        assert_eq!(r.format_version, Some(FORMAT_VERSION));
        let c = r.control.as_ref().unwrap();
        assert_eq!(c.chunk_size, 64 << 10);
        assert_eq!(r.chunk_files(), 1);
        let chunk = &r.chunks[0];
        assert!(chunk.active && chunk.registered);
        let hd = chunk.header.as_ref().unwrap();
        assert_eq!(hd.state, ChunkState::InUse);
        assert!(hd.walked);
        let counts = (
            hd.entries,
            hd.acknowledged,
            hd.committed(),
            hd.pending_bytes,
        );
        assert_eq!(counts, (2, 1, 1, 0));
        let fp = |n| entry_footprint(n).unwrap() as u64;
        assert_eq!(hd.used, fp(1000) + fp(100));
        assert_eq!(hd.capacity, (64 << 10) - CHUNK_HEADER_SIZE as u64);
        assert!(r.tmpfs_bytes() >= (64 << 10) + CTRL_SIZE as u64);
        assert!(!r.is_dead());
        drop(store);
        assert!(matches!(
            inspect_namespace(&ns),
            Err(BlobError::NotFound { .. })
        ));
    }

    #[test]
    fn garbage_of_every_shape_is_reported_never_trusted() {
        let dir = os::shm_dir();
        let ns = ns("garbage");
        let ctrl = dir.join(ctrl_file_name(&ns));
        let chunk = dir.join(chunk_file_name(&ns, 0));
        let mut ours = vec![0u8; CTRL_SIZE];
        ours[..8].copy_from_slice(&CTRL_MAGIC.to_le_bytes());
        ours[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let cases: Vec<(Vec<u8>, Health)> = vec![
            (vec![], Health::Foreign),
            (b"SFB".to_vec(), Health::Foreign),
            (b"hello, world, not ours".to_vec(), Health::Foreign),
            (ours[..12].to_vec(), Health::Corrupt),
            (ours[..300].to_vec(), Health::Corrupt),
            // Whole size, every field zero: chunk_size 0 is out of range.
            (ours.clone(), Health::Corrupt),
            (vec![0xff; CTRL_SIZE], Health::Foreign),
            // Our magic and version, then garbage: every field out of range.
            (
                ours[..12]
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(0xa5, CTRL_SIZE - 12))
                    .collect(),
                Health::Corrupt,
            ),
        ];
        for (bytes, want) in cases {
            std::fs::write(&ctrl, &bytes).unwrap();
            std::fs::write(&chunk, &bytes[..bytes.len().min(200)]).unwrap();
            let r = inspect_namespace(&ns).unwrap();
            assert_eq!(r.health, want, "{} bytes: {:?}", bytes.len(), r.problems);
            assert!(!r.problems.is_empty());
            assert!(r.problems.len() < 10, "{:?}", r.problems);
            assert_eq!(std::fs::read(&ctrl).unwrap(), bytes);
            let listed = list_namespaces(&dir).unwrap();
            let info = listed
                .namespaces
                .iter()
                .find(|i| i.namespace == ns)
                .unwrap();
            assert_eq!(info.health, want);
        }
        os::unlink(&ctrl).unwrap();
        let r = inspect_namespace(&ns).unwrap();
        assert_eq!(r.health, Health::Foreign, "only a foreign chunk file");
        std::fs::write(&chunk, vec![0u8; 4096]).unwrap();
        let r = inspect_namespace(&ns).unwrap();
        assert_eq!(r.health, Health::Orphaned);
        assert!(r.is_dead());
        os::unlink(&chunk).unwrap();
    }

    #[test]
    fn the_entry_walk_counts_written_entries_and_stops_at_a_pending_one() {
        let dir = os::shm_dir();
        let ns = ns("walk");
        let path = dir.join(chunk_file_name(&ns, 5));
        let size = 8192usize;
        let generation = 0xDEAD_BEEF;
        let mut b = vec![0u8; size];
        let put32 =
            |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let put64 =
            |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put64(&mut b, offset_of!(ChunkHeader, magic), CHUNK_MAGIC);
        put32(&mut b, offset_of!(ChunkHeader, chunk_id), 5);
        put32(&mut b, offset_of!(ChunkHeader, size), size as u32);
        put64(
            &mut b,
            offset_of!(ChunkHeader, state_gen),
            state_gen(STATE_IN_USE, generation),
        );
        put32(&mut b, offset_of!(ChunkHeader, acks), 1);
        // Three entries written (one acknowledged), then one reserved but
        // not written, then one written after it (unreachable by a walk).
        let lens = [10usize, 300, 1, 40, 7];
        let mut off = CHUNK_HEADER_SIZE;
        let mut pending_from = 0;
        for (i, &len) in lens.iter().enumerate() {
            let kind = match i {
                0 => ENTRY_ACKED,
                3 => {
                    pending_from = off;
                    ENTRY_RESERVED
                }
                _ => ENTRY_COMMITTED,
            };
            if kind != ENTRY_RESERVED {
                put32(&mut b, off + offset_of!(EntryHeader, len), len as u32);
                put32(
                    &mut b,
                    off + offset_of!(EntryHeader, state),
                    entry_state(generation, kind),
                );
            }
            off += entry_footprint(len).unwrap();
        }
        put64(&mut b, offset_of!(ChunkHeader, alloc), off as u64);
        std::fs::write(&path, &b).unwrap();
        let r = inspect_namespace(&ns).unwrap();
        assert_eq!(r.health, Health::Orphaned);
        let h = r.chunks[0].header.as_ref().unwrap();
        assert!(h.walked);
        assert_eq!((h.entries, h.acknowledged, h.committed()), (3, 1, 2));
        assert_eq!(h.pending_bytes, (off - pending_from) as u64);
        // A length running past the used space ends the walk, never a read
        // out of bounds.
        put32(
            &mut b,
            CHUNK_HEADER_SIZE + offset_of!(EntryHeader, len),
            u32::MAX - 64,
        );
        std::fs::write(&path, &b).unwrap();
        let h = inspect_namespace(&ns).unwrap().chunks[0]
            .header
            .clone()
            .unwrap();
        assert_eq!(
            (h.entries, h.pending_bytes),
            (0, (off - CHUNK_HEADER_SIZE) as u64)
        );
        assert_eq!(std::fs::read(&path).unwrap(), b);
        os::unlink(&path).unwrap();
    }

    #[test]
    fn a_fifo_under_our_name_is_never_opened() {
        let dir = os::shm_dir();
        let ns = ns("fifo");
        let path = dir.join(ctrl_file_name(&ns));
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let r = inspect_namespace(&ns).unwrap();
        assert_eq!(r.health, Health::Foreign);
        os::unlink(&path).unwrap();
    }
}
