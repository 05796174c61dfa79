//! Shared mode: a namespace of files in `/dev/shm` that any process on the
//! host can attach to. The byte layout is in [`crate::layout`], the chunk
//! protocol in `src/chunk.rs`, the system calls in `src/os.rs`; this
//! module ties them together: creation, attach, chunk files, the warm pool,
//! the append target, reclamation and namespace removal.

use crate::chunk::ChunkRegion;
use crate::clock;
use crate::config::Config;
use crate::engine::{self, ChunkRef, Chunks, Event, Policy};
use crate::error::{BlobError, Result};
use crate::fork;
use crate::handle::OverflowHandle;
use crate::hooks::{self, Point};
use crate::layout::*;
use crate::maintain::ChunkTotals;
use crate::maintain::Maintain;
use crate::namespace;
use crate::os::{self, Mapping};
use crate::registry::{self, Claim, Registry};
use crate::removal::remove_data_files;
use crate::stats::BlobStats;
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::table::{ChunkTable, Keyed};
use crate::view::{BlobView, PinnedChunk};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// Default size of a chunk file: 32 MiB.
pub const DEFAULT_CHUNK_SIZE: usize = 32 << 20;

/// Per-chunk overhead of a standard chunk: its header (128 bytes) plus
/// the header of one entry (16 bytes). `chunk_size - CHUNK_HEADER_SIZE` is
/// the largest blob one standard chunk holds ([`SharedBackend::data_capacity`]);
/// every further blob in the same chunk takes its own 16-byte entry header
/// and padding to 8 bytes. A chunk size must exceed it, and is rounded up
/// to a multiple of 8 (so the largest blob is at least
/// `chunk_size - CHUNK_HEADER_SIZE`); larger blobs get dedicated chunks.
pub const CHUNK_HEADER_SIZE: usize = crate::layout::CHUNK_HEADER_SIZE + ENTRY_HEADER_SIZE;

/// Chunks kept warm (mapped, faulted, ready) for reuse.
const WARM_POOL: u32 = 4;

/// How often each process's worker drops mappings of retired chunks.
const WORKER_TICK: Duration = Duration::from_millis(100);

/// A store in POSIX shared memory, created by one process and attached by
/// any number of others.
///
/// The creator's namespace is removed when the creator's store and every
/// channel endpoint opened through it are dropped (attached processes keep
/// their existing mappings; their new appends fail with
/// [`BlobError::Closed`]). Dropping an attacher only unmaps.
pub struct SharedBackend {
    inner: Arc<Inner>,
    /// Held by this store and each endpoint opened through it (never by the
    /// worker or the lifecycle thread): the last holder to go removes the
    /// namespace, in its own thread, before its drop returns.
    closer: Arc<Closer>,
    worker: Option<JoinHandle<()>>,
}

/// Removes the creator's namespace when the last user-visible holder (the
/// store, or an endpoint opened through it) drops it: see `Drop`.
pub(crate) struct Closer(Arc<Inner>);

impl Drop for Closer {
    /// The closing rule: a namespace lives while its creator's store or any
    /// endpoint opened through it lives; the last to go closes and removes
    /// it. Endpoints in other processes then fail with `Closed` instead of
    /// sending into removed files. The worker thread, which outlived the
    /// store for the endpoints' sake, is told to stop.
    fn drop(&mut self) {
        let inner = &self.0;
        // Close first so attached processes stop creating chunk files. If
        // it was closed already, someone removed the namespace (forced
        // cleanup) and the names may belong to a new incarnation by now. A
        // fork child that inherited the store (another epoch) never removes
        // its parent's namespace.
        if inner.creator
            && fork::epoch() == inner.fork_epoch
            && inner.ctrl().closed.swap(1, Ordering::AcqRel) == 0
        {
            if os::path_identity(&inner.ctrl_path).map(|(id, _)| id)
                == os::file_identity(&inner._ctrl_file)
            {
                let _ = os::unlink(&inner.ctrl_path);
            }
            let _ = remove_data_files(&inner.dir, &inner.ns, Some(inner.policy.key), false);
        }
        inner.lock_signal().stop = true;
        inner.wake.notify_all();
    }
}

/// One mapped chunk file.
pub(crate) struct ChunkMap {
    id: u32,
    region: ChunkRegion,
    /// How far this process knows the file to be backed by memory (the
    /// region's own mark; boxed so it stays put while the map moves).
    backed: Box<AtomicUsize>,
    /// (device, inode) of the file, so we only ever unlink our own file.
    ident: Option<(u64, u64)>,
    // Keeps the memory of `region` mapped; must outlive it (field order).
    _map: Mapping,
}

impl Keyed for ChunkMap {
    fn table_id(&self) -> u32 {
        self.id
    }
}

struct Inner {
    ns: String,
    dir: PathBuf,
    ctrl_path: PathBuf,
    // In the creator, keeps `_ctrl_file` out of fork children, so that
    // they do not hold the creator lock; declared before `_ctrl_file` so it
    // is dropped before the file closes (see `crate::fork`).
    _fork_guard: Option<fork::ForkGuard>,
    // Holds the creator lock in the creator; closing it releases the lock.
    _ctrl_file: File,
    ctrl_map: Mapping,
    creator: bool,
    /// `fork::epoch()` when this process opened the namespace: a fork child
    /// that inherited the creator's store (another epoch) never removes it.
    fork_epoch: u32,
    // Copies of the immutable control fields, read once: a process that
    // scribbles on the control block later cannot move our bounds.
    policy: Policy,
    max_chunks: u32,
    chunks: ChunkTable<ChunkMap>,
    /// This process's memory of its last reclamation pass.
    gate: engine::Gate,
    signal: Mutex<Signal>,
    wake: Condvar,
    /// What creating this namespace recovered from (creator only).
    recovery: Option<Recovery>,
}

/// What [`SharedBackend::create`] found and removed under the namespace's
/// name before creating it: the files of a creator that died (SIGKILL,
/// SIGTERM, a crash), or orphans of an earlier incarnation. Applications can
/// log it as crash recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// The pid the dead creator recorded, if its control block was there.
    pub dead_pid: Option<u32>,
    /// Files removed (control block, chunk files, channel files).
    pub files_removed: usize,
}

#[derive(Default)]
struct Signal {
    prefetch: bool,
    backing: bool,
    stop: bool,
}

impl SharedBackend {
    /// Creates namespace `ns` with chunks of `chunk_size` bytes, at most
    /// `max_chunks` chunk files (`None` = no limit), and the default
    /// [`Config`] (the original crate's signature). See
    /// [`create_with_limit`](Self::create_with_limit).
    pub fn create(ns: &str, chunk_size: usize, max_chunks: Option<u32>) -> Result<Self> {
        Self::create_with_limit(
            ns,
            chunk_size,
            max_chunks.map(|n| n as usize),
            &Config::default(),
        )
    }

    /// Creates namespace `ns` with chunks of `chunk_size` bytes, no chunk
    /// limit, and `config`'s decay, TTL and prefetch threshold. See
    /// [`create_with_limit`](Self::create_with_limit).
    pub fn create_with_config(ns: &str, chunk_size: usize, config: &Config) -> Result<Self> {
        Self::create_with_limit(ns, chunk_size, None, config)
    }

    /// Creates namespace `ns`: `{ns}_ctrl` and a first chunk in `/dev/shm`.
    ///
    /// Fails with [`BlobError::AlreadyExists`] if a live creator holds the
    /// namespace; a namespace whose creator died is removed and taken over.
    /// `max_chunks` caps the chunk files of the namespace for every process.
    pub fn create_with_limit(
        ns: &str,
        chunk_size: usize,
        max_chunks: Option<usize>,
        config: &Config,
    ) -> Result<Self> {
        namespace::validate(ns)?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(BlobError::InvalidConfig {
                reason: format!(
                    "chunk size {chunk_size} must be between {MIN_CHUNK_SIZE} (CHUNK_HEADER_SIZE + 1) and {MAX_CHUNK_SIZE} bytes"
                ),
            });
        }
        // Entries are 8-aligned: a chunk is a whole number of 8-byte units,
        // so a blob of `chunk_size - CHUNK_HEADER_SIZE` bytes (padding
        // included) always fits.
        let chunk_size = chunk_size.next_multiple_of(ENTRY_ALIGN);
        let max_chunks = match max_chunks {
            None => 0,
            Some(n) if (1..=REGISTRY_SLOTS).contains(&n) => n as u32,
            Some(n) => {
                return Err(BlobError::InvalidConfig {
                    reason: format!("max_chunks {n} must be between 1 and {REGISTRY_SLOTS}"),
                })
            }
        };
        let dir = os::shm_dir();
        let (guard, file, map, recovery) =
            create_ctrl(&dir, ns, chunk_size as u32, max_chunks, config)?;
        let mut inner = Inner::new(ns, dir, (Some(guard), file), map, true, config)?;
        inner.recovery = recovery;
        let backend = Self::start(inner);
        // The first chunk, so the first append takes no system call.
        engine::rollover(&*backend.inner, NO_CHUNK as u64)?;
        Ok(backend)
    }

    /// Attaches to an existing namespace created by another process (or
    /// this one), with the default [`Config`] (the original crate's
    /// signature). `max_chunks` is accepted for compatibility and ignored:
    /// the limit is the creator's, kept in the control block and enforced
    /// by every process alike.
    pub fn attach(ns: &str, max_chunks: Option<u32>) -> Result<Self> {
        let _ = max_chunks;
        Self::attach_with_config(ns, &Config::default())
    }

    /// Attaches to an existing namespace created by another process (or
    /// this one). Checks the magic, version and size of the control block
    /// before mapping it. `config.prefetch_threshold` applies to this
    /// process's appends; decay and TTL are the creator's.
    pub fn attach_with_config(ns: &str, config: &Config) -> Result<Self> {
        namespace::validate(ns)?;
        let dir = os::shm_dir();
        let path = dir.join(ctrl_file_name(ns));
        let file = open_existing_ctrl(&path, ns)?;
        let map = map_ctrl(&file, &path)?;
        let inner = Inner::new(ns, dir, (None, file), map, false, config)?;
        if inner.is_closed() {
            return Err(BlobError::Closed {
                namespace: ns.to_owned(),
            });
        }
        Ok(Self::start(inner))
    }

    fn start(inner: Inner) -> Self {
        let inner = Arc::new(inner);
        let worker_inner = Arc::clone(&inner);
        let worker = std::thread::Builder::new()
            .name(format!("sfb-worker-{}", inner.ns))
            .spawn(move || worker_inner.worker_loop())
            .ok();
        let closer = Arc::new(Closer(Arc::clone(&inner)));
        Self {
            inner,
            closer,
            worker,
        }
    }

    /// Appends `data` and returns its handle. Blobs larger than a chunk get
    /// a dedicated chunk of their own size.
    pub fn append(&self, data: &[u8]) -> Result<OverflowHandle> {
        engine::append(&*self.inner, data).map(OverflowHandle::from_loc)
    }

    /// [`append`](Self::append) through a writer's held chunk.
    pub(crate) fn append_held(&self, held: &mut HeldChunk, data: &[u8]) -> Result<OverflowHandle> {
        engine::append_via(&*self.inner, held, data).map(OverflowHandle::from_loc)
    }

    /// Appends every blob through a held chunk, pushing each handle to
    /// `out` as soon as it is stored (`locs` is scratch space).
    pub(crate) fn append_all_held(
        &self,
        held: &mut HeldChunk,
        blobs: &[&[u8]],
        locs: &mut Vec<engine::Loc>,
        out: &mut Vec<OverflowHandle>,
    ) -> Result<()> {
        locs.clear();
        let done = engine::append_all_via(&*self.inner, held, blobs, locs);
        out.extend(locs.iter().map(|l| OverflowHandle::from_loc(*l)));
        done
    }

    /// Acknowledges every handle through a held chunk; returns how many
    /// counted.
    pub(crate) fn acknowledge_all_held(
        &self,
        held: &mut HeldChunk,
        handles: &[OverflowHandle],
    ) -> usize {
        engine::acknowledge_all_via(&*self.inner, held, handles.iter().map(|h| h.loc()))
    }

    /// [`acknowledge`](Self::acknowledge) through a held chunk.
    pub(crate) fn acknowledge_held(&self, held: &mut HeldChunk, handle: &OverflowHandle) -> bool {
        engine::acknowledge_via(&*self.inner, held, &handle.loc())
    }

    /// A copy of the blob, or `None` if the handle is older than `ttl_ms`
    /// (by its own timestamp), stale, reclaimed, forged or out of bounds
    /// (the original crate's signature). See [`resolve_copy`](Self::resolve_copy).
    pub fn resolve(&self, handle: &OverflowHandle, ttl_ms: u64) -> Option<Vec<u8>> {
        if handle.is_expired(ttl_ms) {
            return None;
        }
        self.resolve_copy(handle)
    }

    /// A copy of the blob, or `None` if the handle is stale, reclaimed,
    /// forged or out of bounds. The copy is taken under a pin, so it is
    /// exactly the appended bytes even if a reclamation runs meanwhile.
    pub fn resolve_copy(&self, handle: &OverflowHandle) -> Option<Vec<u8>> {
        engine::with_bytes(&*self.inner, &handle.loc(), <[u8]>::to_vec)
    }

    /// A zero-copy view of the blob, or `None` if the handle is stale,
    /// reclaimed, forged or out of bounds. O(1) whatever the size. While the
    /// view lives its bytes never change: the chunk is pinned, so no process
    /// recycles it in place (it may be unlinked; this process's mapping
    /// stays until the view is dropped).
    pub fn resolve_ref(&self, handle: &OverflowHandle) -> Option<BlobView> {
        self.inner.resolve_ref(handle)
    }

    /// [`resolve`](Self::resolve) that says why a handle does not resolve:
    /// [`BlobError::Reclaimed`] (acknowledged and reclaimed, or expired by
    /// the TTL), [`BlobError::InvalidHandle`] (forged or corrupted),
    /// [`BlobError::Closed`] (the creator removed the namespace), or the
    /// error that kept the chunk file from being read.
    pub fn resolve_checked(&self, handle: &OverflowHandle) -> Result<Vec<u8>> {
        self.resolve_copy(handle)
            .ok_or_else(|| engine::why_unresolved(&*self.inner, &handle.loc()))
    }

    /// [`resolve_ref`](Self::resolve_ref) that says why a handle does not
    /// resolve (see [`resolve_checked`](Self::resolve_checked)).
    pub fn resolve_ref_checked(&self, handle: &OverflowHandle) -> Result<BlobView> {
        self.resolve_ref(handle)
            .ok_or_else(|| engine::why_unresolved(&*self.inner, &handle.loc()))
    }

    /// Reserves an entry of `len` bytes to be filled in place (a loan).
    pub(crate) fn reserve(&self, len: usize) -> Result<SharedReservation> {
        engine::reserve(&*self.inner, len)
    }

    /// Publishes a reservation filled in place.
    pub(crate) fn commit(&self, r: &SharedReservation) -> Result<OverflowHandle> {
        engine::commit_reserved(&*self.inner, r).map(OverflowHandle::from_loc)
    }

    /// Marks the blob consumed. `true` the first time only; `false` for a
    /// repeat, a stale or a forged handle.
    pub fn acknowledge(&self, handle: &OverflowHandle) -> bool {
        engine::acknowledge(&*self.inner, &handle.loc())
    }

    /// One reclamation pass over every chunk of the namespace (any attached
    /// process may run it) by the namespace's own TTL and decay; returns the
    /// number of chunks reclaimed (recycled into the warm pool or removed).
    pub fn reclaim_pass(&self) -> usize {
        self.inner.maintain()
    }

    /// One reclamation pass with this call's own rules (the original
    /// crate's signature): chunks whose entries are all acknowledged since
    /// at least `decay_timeout_ms` (counted from the last acknowledgement),
    /// and chunks sealed more than `ttl_ms` ago whatever their state, are
    /// removed — their files unlinked, not kept in the warm pool. The
    /// append target, chunks with a write in flight and chunks pinned by a
    /// view are never recycled under their users (a pinned chunk's file is
    /// unlinked; its mappings stay valid). Returns the chunks removed.
    pub fn cleanup_chunks(&self, ttl_ms: u64, decay_timeout_ms: u64) -> usize {
        engine::reclaim_with(
            &*self.inner,
            engine::Rules {
                ttl_ms,
                decay_ms: decay_timeout_ms,
                pool: false,
            },
        )
    }

    /// Chunk files currently in existence in the namespace (all processes).
    ///
    /// Counted from the registry: creations in progress, and creations whose
    /// creator died until a pass finishes them, count too.
    pub fn chunk_count(&self) -> usize {
        self.inner.registry().files()
    }

    /// Bytes of a standard chunk available to entries (chunk size minus the
    /// chunk header). Each entry also takes a 16-byte header and padding to 8.
    pub fn data_capacity(&self) -> usize {
        self.inner.policy.chunk_size as usize - CHUNK_HEADER_SIZE
    }

    /// Size of a standard chunk file.
    pub fn chunk_size(&self) -> usize {
        self.inner.policy.chunk_size as usize
    }

    /// The chunk limit shared by every process (`None` = unlimited).
    pub fn max_chunks(&self) -> Option<usize> {
        (self.inner.max_chunks != 0).then_some(self.inner.max_chunks as usize)
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.ns
    }

    /// What creating the namespace recovered from: the files of a dead
    /// creator (its pid) or orphans removed first. `None` if the name was
    /// free, or for an attached process.
    pub fn recovered(&self) -> Option<Recovery> {
        self.inner.recovery
    }

    /// Whether this process created the namespace (and removes it on drop).
    pub fn is_creator(&self) -> bool {
        self.inner.creator
    }

    /// Chunk files this process currently has mapped (retired chunks are
    /// dropped within one worker tick, 100 ms).
    pub fn mapped_chunks(&self) -> usize {
        self.inner.chunks.len()
    }

    /// Chunk counts and the namespace's reclamation counters.
    pub fn stats(&self) -> BlobStats {
        let c = self.inner.ctrl();
        let chunks = self.chunk_count();
        BlobStats {
            page_count: chunks,
            current_page_id: engine::target_id(&*self.inner),
            chunks,
            pooled: self.pooled_chunks(),
            recycled: c.recycled.load(Ordering::Relaxed),
            retired: c.retired.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
        }
    }

    /// Prints one line per chunk of the namespace (generation, state, bytes
    /// used, acknowledgements, pins, which one is the append target) to
    /// stderr.
    pub fn debug_chunks(&self) {
        for line in engine::describe(&*self.inner) {
            eprintln!("  [{}] {line}", self.inner.ns);
        }
    }

    /// Warm chunks waiting in the pool.
    pub fn pooled_chunks(&self) -> usize {
        engine::pool_len(&*self.inner) as usize
    }

    /// The store as channels hold it (shared ownership of its state).
    pub(crate) fn link(&self) -> StoreLink {
        StoreLink(Arc::clone(&self.inner), Arc::clone(&self.closer))
    }

    /// What the lifecycle thread maintains for this backend (it holds it
    /// weakly, so it never keeps the store alive).
    pub fn maintenance_target(&self) -> Weak<dyn Maintain> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        weak
    }

    /// Removes namespace `ns` left behind by a creator that died (crash
    /// recovery at startup); a namespace that does not exist is not an
    /// error. Refuses with [`BlobError::InUse`] while the creator is alive.
    /// (The original crate's signature; [`remove_namespace`](Self::remove_namespace)
    /// also says how many files it removed.)
    pub fn cleanup_namespace(ns: &str) -> Result<()> {
        Self::remove_namespace(ns).map(|_| ())
    }

    /// [`cleanup_namespace`](Self::cleanup_namespace), returning the number
    /// of files removed.
    pub fn remove_namespace(ns: &str) -> Result<usize> {
        remove_namespace(&os::shm_dir(), ns, false)
    }

    /// Like [`cleanup_namespace`](Self::cleanup_namespace) but removes the
    /// files even while the creator is alive. Its processes keep their
    /// mappings and see [`BlobError::Closed`] on their next chunk creation.
    pub fn cleanup_namespace_forced(ns: &str) -> Result<usize> {
        remove_namespace(&os::shm_dir(), ns, true)
    }

    /// Whether the creator of `ns` is alive (it holds the lock on the control
    /// file), with the pid it recorded.
    pub fn creator_status(ns: &str) -> Result<(bool, u32)> {
        namespace::validate(ns)?;
        let path = os::shm_dir().join(ctrl_file_name(ns));
        let file = open_existing_ctrl(&path, ns)?;
        let alive = os::creator_lock_held(&file)
            .map_err(|e| BlobError::os("fcntl(F_OFD_GETLK)", &path, e))?;
        Ok((alive, recorded_pid(&file, &path)))
    }
}

impl Drop for SharedBackend {
    fn drop(&mut self) {
        // Endpoints opened through this store still live: the worker goes
        // on serving them (prefetch, unmapping retired chunks) until the
        // last of them drops the closer, which stops it.
        if Arc::strong_count(&self.closer) > 1 {
            return;
        }
        {
            let mut s = self.inner.lock_signal();
            s.stop = true;
        }
        self.inner.wake.notify_all();
        // A fork child has no copy of the parent's worker thread.
        if fork::epoch() == self.inner.fork_epoch {
            if let Some(w) = self.worker.take() {
                let _ = w.join();
            }
        }
        // Dropping `closer` (the last holder) removes the namespace next.
    }
}

impl std::fmt::Debug for SharedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBackend")
            .field("namespace", &self.inner.ns)
            .field("creator", &self.inner.creator)
            .field("chunk_size", &self.inner.policy.chunk_size)
            .field("max_chunks", &self.inner.max_chunks)
            .finish()
    }
}

/// The store as a channel endpoint holds it: appends, loans, views and
/// acknowledgements by handle, for as long as the endpoint lives.
#[derive(Clone)]
pub(crate) struct StoreLink(
    Arc<Inner>,
    // Held for its drop: the namespace lives while an endpoint does.
    #[allow(dead_code)] Arc<Closer>,
);

/// A chunk mapping a writer keeps between calls (see [`engine::Held`]).
pub(crate) type HeldChunk = engine::Held<Arc<ChunkMap>>;

/// An entry reserved in shared memory for a writer (a loan).
pub(crate) type SharedReservation = engine::Reserved<Arc<ChunkMap>>;

impl StoreLink {
    pub(crate) fn append(&self, data: &[u8]) -> Result<OverflowHandle> {
        engine::append(&*self.0, data).map(OverflowHandle::from_loc)
    }

    pub(crate) fn reserve(&self, len: usize) -> Result<SharedReservation> {
        engine::reserve(&*self.0, len)
    }

    pub(crate) fn commit(&self, r: &SharedReservation) -> Result<OverflowHandle> {
        engine::commit_reserved(&*self.0, r).map(OverflowHandle::from_loc)
    }

    pub(crate) fn resolve_ref(&self, handle: &OverflowHandle) -> Option<BlobView> {
        self.0.resolve_ref(handle)
    }

    pub(crate) fn acknowledge(&self, handle: &OverflowHandle) -> bool {
        engine::acknowledge(&*self.0, &handle.loc())
    }

    /// Acknowledges the entry of a handle in its 24-byte form (as a
    /// channel slot carries it).
    pub(crate) fn acknowledge_bytes(&self, handle: [u8; 24]) {
        self.acknowledge(&OverflowHandle::from_array(&handle));
    }

    /// One reclamation pass (as `cleanup_chunks`).
    pub(crate) fn maintain(&self) -> usize {
        self.0.maintain()
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.0.ns
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.0.dir
    }

    /// The incarnation key of the namespace.
    pub(crate) fn key(&self) -> u64 {
        self.0.policy.key
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Bytes per chunk of the namespace.
    pub(crate) fn chunk_size(&self) -> u64 {
        self.0.policy.chunk_size as u64
    }

    /// Most chunk files the namespace may have at once (its limit, or the
    /// registry's size if it has none).
    pub(crate) fn max_chunks(&self) -> u64 {
        match self.0.max_chunks {
            0 => crate::layout::REGISTRY_SLOTS as u64,
            n => n as u64,
        }
    }
}

impl std::fmt::Debug for StoreLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StoreLink").field(&self.0.ns).finish()
    }
}

impl Maintain for Inner {
    fn maintain(&self) -> usize {
        // A closed namespace is being (or has been) removed: its chunk
        // names may already belong to a new incarnation.
        let n = if !self.is_closed() {
            engine::reclaim(self)
        } else {
            0
        };
        self.evict_retired();
        n
    }

    fn totals(&self) -> ChunkTotals {
        ChunkTotals {
            live: self.registry().files() as u64,
            released: self.ctrl().retired.load(Ordering::Relaxed),
            chunk_size: u64::from(self.policy.chunk_size),
        }
    }
}

impl PinnedChunk for ChunkMap {
    fn unpin(&self) {
        self.region.unpin_raw();
    }
}

impl ChunkRef for Arc<ChunkMap> {
    fn region(&self) -> &ChunkRegion {
        &self.region
    }
    fn id(&self) -> u32 {
        self.id
    }
    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }
}

impl Chunks for Inner {
    type Chunk = Arc<ChunkMap>;

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn active(&self) -> &AtomicU64 {
        &self.ctrl().active
    }

    fn pool(&self) -> &[AtomicU32] {
        &self.ctrl().pool[..self.policy.pool_capacity as usize]
    }

    fn generation(&self) -> &AtomicU32 {
        &self.ctrl().generation
    }

    fn chunk(&self, id: u32) -> Result<Arc<ChunkMap>> {
        Inner::chunk(self, id)
    }

    fn with_region<R>(&self, id: u32, f: impl FnOnce(&ChunkRegion) -> R) -> Result<R> {
        match self.chunks.try_with(id, |c| f(&c.region)) {
            Ok(r) => Ok(r),
            Err(g) => self.open_chunk(id).map(|c| g(&c)),
        }
    }

    fn create(&self, size: usize, flags: u32, populate: bool) -> Result<Arc<ChunkMap>> {
        self.create_chunk(size, flags, populate)
    }

    /// Unlinks a retired chunk and forgets it; mappings elsewhere stay
    /// valid. Idempotent, so that any process can finish a release its
    /// retirer did not (it died): the unlink checks the file's identity,
    /// and only the party whose CAS frees the registry slot counts the
    /// chunk out.
    fn release(&self, chunk: &Arc<ChunkMap>) {
        // Unlink only our own file (the identity recorded when we mapped
        // it), and never once the namespace is closed (the name may belong
        // to a new incarnation by now).
        let path = self.chunk_path(chunk.id);
        if !self.is_closed()
            && chunk.ident.is_some()
            && os::path_identity(&path).map(|(i, _)| i) == chunk.ident
        {
            let _ = os::unlink(&path);
        }
        self.count_out(chunk.id);
        self.chunks.remove(chunk.id);
    }

    // Reclamation passes run only while the namespace is open (`maintain`).
    fn finish_release(&self, chunk: &Arc<ChunkMap>) {
        self.release(chunk);
    }

    fn forget_missing(&self, id: u32) {
        // Only a file that is really gone (not one we failed to open for
        // another reason).
        if os::path_identity(&self.chunk_path(id)).is_none() {
            self.count_out(id);
        }
    }

    fn ids(&self, out: &mut Vec<u32>) {
        self.registry().ids(out);
    }

    fn creation_in_flight(&self) -> bool {
        self.registry().creating() > 0
    }

    fn gate(&self) -> Option<(&engine::Gate, &AtomicU64)> {
        Some((&self.gate, &self.ctrl().last_ack_ms))
    }

    fn is_listed(&self, id: u32) -> bool {
        self.registry().is_ready(id)
    }

    fn closed(&self) -> Option<BlobError> {
        self.is_closed().then(|| self.closed_error())
    }

    fn sweep_creations(&self, grace_ms: u64) {
        let mut abandoned = Vec::new();
        self.registry()
            .sweep(clock::now_ms(), grace_ms, &mut abandoned);
        for a in abandoned {
            // The creator died (or stalled past the grace period) between
            // claiming the slot and publishing the chunk: the file, if it
            // made one, is unlinked before the slot is freed, so that a
            // pass killed in between leaves the slot ABANDONED for the next.
            self.unlink_own(&self.chunk_path(a.id));
            self.registry().forget(&a);
        }
    }

    fn prepare(&self, id: u32) -> Result<()> {
        let chunk = self.chunk(id)?;
        let Some((mark, len)) = chunk.region.ready() else {
            return Ok(());
        };
        // Steps start at multiples of PREPARE_STEP (page-aligned); a mark
        // elsewhere (scribbled) restarts its step at the boundary below.
        let from = mark - mark % PREPARE_STEP;
        let to = (from + PREPARE_STEP).min(len);
        match chunk._map.populate_range(from, to - from) {
            Ok(()) => {
                chunk.region.mark_ready(to);
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EFAULT) => Err(BlobError::NoSpace {
                file: self.chunk_path(id),
            }),
            Err(e) => Err(BlobError::os(
                "madvise(MADV_POPULATE_WRITE)",
                self.chunk_path(id),
                e,
            )),
        }
    }

    fn request_prefetch(&self) {
        self.lock_signal().prefetch = true;
        self.wake.notify_one();
    }

    fn request_backing(&self) {
        self.lock_signal().backing = true;
        self.wake.notify_one();
    }

    fn count(&self, event: Event) {
        let c = self.ctrl();
        let counter = match event {
            Event::Recycled => &c.recycled,
            Event::Retired => &c.retired,
            Event::Expired => &c.expired,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Inner {
    /// `ctrl_file` is the control file with its fork registration (a tuple
    /// drops in field order: the guard before the file, on any return).
    fn new(
        ns: &str,
        dir: PathBuf,
        ctrl_file: (Option<fork::ForkGuard>, File),
        map: Mapping,
        creator: bool,
        config: &Config,
    ) -> Result<Self> {
        let ctrl_path = dir.join(ctrl_file_name(ns));
        // SAFETY: map_ctrl checked the mapping holds CTRL_SIZE bytes; it is
        // page-aligned and CtrlHeader is only atomics.
        let ctrl = unsafe { &*(map.base().as_ptr() as *const CtrlHeader) };
        let chunk_size = ctrl.chunk_size.load(Ordering::Relaxed);
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&(chunk_size as usize))
            || chunk_size as usize % ENTRY_ALIGN != 0
        {
            return Err(BlobError::Corrupt {
                file: ctrl_path,
                detail: format!("chunk size {chunk_size} is out of range"),
            });
        }
        let max_chunks = ctrl
            .max_chunks
            .load(Ordering::Relaxed)
            .min(REGISTRY_SLOTS as u32);
        let policy = Policy::new(
            ctrl.tag_key.load(Ordering::Relaxed),
            chunk_size,
            config.prefetch_ratio(),
            ctrl.ttl_ms.load(Ordering::Relaxed),
            ctrl.decay_ms.load(Ordering::Relaxed),
            ctrl.pool_capacity.load(Ordering::Relaxed),
        );
        Ok(Self {
            ns: ns.to_owned(),
            ctrl_path,
            dir,
            _fork_guard: ctrl_file.0,
            _ctrl_file: ctrl_file.1,
            creator,
            fork_epoch: fork::epoch(),
            policy,
            max_chunks,
            ctrl_map: map,
            chunks: ChunkTable::new(SLOT_BITS),
            gate: engine::Gate::default(),
            signal: Mutex::new(Signal::default()),
            wake: Condvar::new(),
            recovery: None,
        })
    }

    /// Whether the namespace was closed (removed, or being removed).
    fn is_closed(&self) -> bool {
        self.ctrl().closed.load(Ordering::Acquire) != 0
    }

    fn resolve_ref(&self, handle: &OverflowHandle) -> Option<BlobView> {
        let (chunk, ptr, len) = engine::pin_bytes(self, &handle.loc())?;
        // SAFETY: pin_bytes pinned the chunk once and returned a pointer to
        // `len` committed bytes inside the memory `chunk` keeps mapped.
        Some(unsafe { BlobView::new(chunk, ptr, len) })
    }

    /// Frees chunk `id`'s registry slot, which counts it out of the
    /// namespace's chunks (exactly one caller's CAS does it).
    fn count_out(&self, id: u32) {
        self.registry().unregister(id);
    }

    fn ctrl(&self) -> &CtrlHeader {
        // SAFETY: the mapping holds CTRL_SIZE bytes for the life of self (see new).
        unsafe { &*(self.ctrl_map.base().as_ptr() as *const CtrlHeader) }
    }

    fn registry(&self) -> Registry<'_> {
        Registry::new(self.registry_words())
    }

    fn registry_words(&self) -> &[AtomicU64] {
        // SAFETY: the registry is REGISTRY_SLOTS u64 words right after the
        // 256-byte header, inside the CTRL_SIZE mapping (checked by
        // map_ctrl), 8-aligned (the mapping is page-aligned).
        unsafe {
            std::slice::from_raw_parts(
                self.ctrl_map.base().as_ptr().add(CTRL_HEADER_SIZE) as *const AtomicU64,
                REGISTRY_SLOTS,
            )
        }
    }

    /// Unlinks a chunk file name if it is a regular file of ours (never
    /// another user's file squatting the name).
    fn unlink_own(&self, path: &Path) {
        if let Ok(file) = os::open_ro(path) {
            if os::check_owner(&file, path).is_ok()
                && os::path_identity(path).is_some_and(|(_, regular)| regular)
            {
                let _ = os::unlink(path);
            }
        }
    }

    fn lock_signal(&self) -> std::sync::MutexGuard<'_, Signal> {
        self.signal.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn chunk_path(&self, id: u32) -> PathBuf {
        self.dir.join(chunk_file_name(&self.ns, id))
    }

    fn closed_error(&self) -> BlobError {
        BlobError::Closed {
            namespace: self.ns.clone(),
        }
    }

    /// The mapping of chunk `id`, from the cache or by opening its file.
    fn chunk(&self, id: u32) -> Result<Arc<ChunkMap>> {
        match self.chunks.get(id) {
            Some(c) => Ok(c),
            None => self.open_chunk(id),
        }
    }

    /// Maps chunk file `id` (checking its size before mapping and its
    /// header after) and caches the mapping.
    fn open_chunk(&self, id: u32) -> Result<Arc<ChunkMap>> {
        let path = self.chunk_path(id);
        // Only a published chunk: never a name being created, or one a
        // forged handle makes up.
        if !self.registry().is_ready(id) {
            return Err(BlobError::os(
                "open",
                path,
                std::io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
        let file = os::open_rw(&path).map_err(|e| BlobError::os("open", &path, e))?;
        os::check_owner(&file, &path)?;
        let len = os::file_len(&file, &path)?;
        if len < CHUNK_HEADER_SIZE as u64 || len > MAX_CHUNK_SIZE as u64 {
            return Err(BlobError::Corrupt {
                file: path,
                detail: format!("chunk file is {len} bytes"),
            });
        }
        let chunk = map_chunk(&file, len as usize, &path, id, 0)?;
        let region = chunk.region;
        if let Err(detail) = region.check_header(id, self.policy.key) {
            return Err(BlobError::Corrupt { file: path, detail });
        }
        Ok(self.chunks.insert(id, Arc::new(chunk)))
    }

    /// Creates, sizes, maps, formats and registers a new chunk file. It
    /// starts FREE and sealed, owned by the caller.
    ///
    /// The registry slot is claimed first (CREATING, stamped), so the chunk
    /// counts against `max_chunks` before its file exists, and a creator
    /// killed at any step leaves a slot that a later pass finishes.
    fn create_chunk(&self, size: usize, flags: u32, populate: bool) -> Result<Arc<ChunkMap>> {
        // A creation abandoned by a pass (this process stalled past the
        // grace period mid-creation) is retried; the third such stall is
        // reported.
        for _ in 0..3 {
            if self.is_closed() {
                return Err(self.closed_error());
            }
            let limit = if self.max_chunks == 0 {
                REGISTRY_SLOTS
            } else {
                self.max_chunks as usize
            };
            let mut claim =
                self.registry()
                    .claim(clock::now_ms(), limit)
                    .map_err(|full| match full {
                        registry::Full::Registry => BlobError::RegistryFull {
                            namespace: self.ns.clone(),
                            slots: REGISTRY_SLOTS,
                        },
                        registry::Full::Limit => BlobError::StoreFull {
                            namespace: self.ns.clone(),
                            max_chunks: self.max_chunks,
                            held: engine::census(self),
                        },
                    })?;
            hooks::at(Point::CreationClaimed);
            let path = self.chunk_path(claim.id());
            match self.create_chunk_file(&mut claim, &path, size, flags, populate) {
                Ok(Some(chunk)) => return Ok(chunk),
                Ok(None) => {
                    let _ = os::unlink(&path);
                    self.registry().cancel(&claim);
                }
                Err(e) => {
                    self.registry().cancel(&claim);
                    return Err(e);
                }
            }
        }
        Err(BlobError::os(
            "create chunk",
            self.dir.clone(),
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "chunk creation stalled past the grace period three times",
            ),
        ))
    }

    /// The steps of a creation whose slot is claimed. `Ok(None)` if a pass
    /// presumed this creation dead meanwhile (the caller removes the file
    /// and retries); on an error the file is already removed.
    fn create_chunk_file(
        &self,
        claim: &mut Claim,
        path: &Path,
        size: usize,
        flags: u32,
        populate: bool,
    ) -> Result<Option<Arc<ChunkMap>>> {
        let id = claim.id();
        let file = match os::create_exclusive(path) {
            Ok(f) => f,
            Err(BlobError::Os { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                // Another user's file under our name: refuse it, never use
                // or remove it.
                if let Ok(existing) = os::open_ro(path) {
                    os::check_owner(&existing, path)?;
                }
                // Our claim of the slot makes the name ours, so a regular
                // file under it is an orphan (of an earlier incarnation, or
                // of a creation abandoned past its grace period): replace
                // it. Anything else (a symlink...) is not ours to touch.
                if os::path_identity(path).is_some_and(|(_, regular)| regular) {
                    os::unlink(path)?;
                    os::create_exclusive(path)?
                } else {
                    return Err(BlobError::os("open(O_CREAT|O_EXCL)", path, source));
                }
            }
            Err(e) => return Err(e),
        };
        let undo = |e: BlobError| {
            let _ = os::unlink(path);
            e
        };
        // A standard chunk is backed by memory in steps: the first one now,
        // the others ahead of the appenders (`prepare`), so that no append
        // waits for a whole chunk's pages. A dedicated chunk is filled by
        // one append at once: all of it now.
        let stepped = flags & FLAG_DEDICATED == 0 && size > PREPARE_STEP;
        let first = if stepped { PREPARE_STEP } else { size };
        os::reserve_space(&file, first as u64, path).map_err(undo)?;
        if stepped {
            file.set_len(size as u64)
                .map_err(|e| undo(BlobError::os("ftruncate", path, e)))?;
        }
        let chunk = map_chunk(&file, size, path, id, first).map_err(undo)?;
        hooks::at(Point::CreationSized);
        if !self.registry().heartbeat(claim, clock::now_ms()) {
            return Ok(None);
        }
        let ready = if !stepped {
            if populate {
                chunk._map.populate_write();
            }
            0
        } else {
            match chunk._map.populate_range(0, first) {
                Ok(()) => first,
                // The kernel cannot prepare a step without faulting (it
                // predates MADV_POPULATE_WRITE): the whole file now, as a
                // dedicated chunk.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    os::reserve_space(&file, size as u64, path).map_err(undo)?;
                    chunk.backed.store(size, Ordering::Relaxed);
                    0
                }
                Err(e) => return Err(undo(BlobError::os("madvise(MADV_POPULATE_WRITE)", path, e))),
            }
        };
        if populate && !self.registry().heartbeat(claim, clock::now_ms()) {
            return Ok(None);
        }
        let generation = self
            .ctrl()
            .generation
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        chunk.region.format(
            id,
            generation,
            flags,
            self.policy.key,
            clock::now_ms(),
            ready,
        );
        if !self.registry().publish(claim) {
            return Ok(None);
        }
        if self.is_closed() {
            // Published after the namespace closed: the name may belong to
            // a new incarnation by now, so only our slot is freed.
            self.registry().unregister(id);
            if os::path_identity(path).map(|(i, _)| i) == chunk.ident {
                let _ = os::unlink(path);
            }
            return Err(self.closed_error());
        }
        let chunk = Arc::new(chunk);
        self.chunks.insert(id, Arc::clone(&chunk));
        Ok(Some(chunk))
    }

    /// Drops this process's mappings of chunks retired by any process.
    fn evict_retired(&self) {
        self.chunks
            .retain(|_, c| c.region.state().0 != STATE_RETIRED);
    }

    /// Per-process worker: prefetches on request, drops retired mappings.
    fn worker_loop(self: Arc<Self>) {
        loop {
            let (prefetch, backing) = {
                let mut s = self.lock_signal();
                if !s.stop && !s.prefetch && !s.backing {
                    s = self
                        .wake
                        .wait_timeout(s, WORKER_TICK)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                if s.stop {
                    return;
                }
                (
                    std::mem::take(&mut s.prefetch),
                    std::mem::take(&mut s.backing),
                )
            };
            if !self.is_closed() {
                if prefetch {
                    engine::prefetch(&*self);
                } else if backing {
                    engine::backing(&*self);
                }
            }
            self.evict_retired();
        }
    }
}

/// Maps a chunk file of `len` bytes (checked by the caller against fstat),
/// of which this process knows the first `backed` bytes to be backed by
/// memory (what it reserved itself; 0 for a file another process made).
fn map_chunk(file: &File, len: usize, path: &Path, id: u32, backed: usize) -> Result<ChunkMap> {
    let map = Mapping::new(file, len, path)?;
    let backed = Box::new(AtomicUsize::new(backed));
    // SAFETY: the mapping is page-aligned, `len` bytes long (between
    // CHUNK_HEADER_SIZE and MAX_CHUNK_SIZE, checked by every caller), and
    // lives in the same ChunkMap as the region, so it outlives every use;
    // so does the boxed mark (its heap address does not move with the map).
    let region = unsafe { ChunkRegion::new(map.base(), map.len()).with_local_mark(&backed) };
    Ok(ChunkMap {
        id,
        region,
        backed,
        // Without its identity the file could never be unlinked safely.
        ident: Some(
            os::file_identity(file)
                .ok_or_else(|| BlobError::os("fstat", path, std::io::Error::last_os_error()))?,
        ),
        _map: map,
    })
}

/// Opens the control file of an existing namespace (`NotFound` if none).
fn open_existing_ctrl(path: &Path, ns: &str) -> Result<File> {
    let file = os::open_rw(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BlobError::NotFound {
                namespace: ns.to_owned(),
            }
        } else {
            BlobError::os("open", path, e)
        }
    })?;
    os::check_owner(&file, path)?;
    Ok(file)
}

/// Checks a control file's magic, version and size, then maps it.
fn map_ctrl(file: &File, path: &Path) -> Result<Mapping> {
    let mut head = [0u8; 16];
    let n = os::read_prefix(file, &mut head, path)?;
    if n < 16 {
        return Err(BlobError::Corrupt {
            file: path.to_owned(),
            detail: format!("control file is truncated to {n} bytes"),
        });
    }
    let magic = u64::from_le_bytes(head[0..8].try_into().unwrap_or_default());
    let version = u32::from_le_bytes(head[8..12].try_into().unwrap_or_default());
    if magic != CTRL_MAGIC {
        return Err(BlobError::IncompatibleFormat {
            file: path.to_owned(),
            expected: FORMAT_VERSION,
            detail: format!("magic is {magic:#018x}"),
        });
    }
    if version != FORMAT_VERSION {
        return Err(BlobError::IncompatibleFormat {
            file: path.to_owned(),
            expected: FORMAT_VERSION,
            detail: format!("format version {version}"),
        });
    }
    let len = os::file_len(file, path)?;
    if len != CTRL_SIZE as u64 {
        return Err(BlobError::Corrupt {
            file: path.to_owned(),
            detail: format!("control file is {len} bytes, expected {CTRL_SIZE}"),
        });
    }
    Mapping::new(file, CTRL_SIZE, path)
}

/// The pid recorded in a control file (0 if unreadable).
fn recorded_pid(file: &File, path: &Path) -> u32 {
    let mut head = [0u8; 28];
    match os::read_prefix(file, &mut head, path) {
        Ok(28) => u32::from_le_bytes([head[24], head[25], head[26], head[27]]),
        _ => 0,
    }
}

/// Creates `{ns}_ctrl`, fully initialised and locked, or takes over a
/// namespace whose creator is dead. The control block is prepared as an
/// unnamed file (`O_TMPFILE`) and linked into place, so nobody ever sees it
/// half-made and of two racing creators exactly one wins.
fn create_ctrl(
    dir: &Path,
    ns: &str,
    chunk_size: u32,
    max_chunks: u32,
    config: &Config,
) -> Result<(fork::ForkGuard, File, Mapping, Option<Recovery>)> {
    let path = dir.join(ctrl_file_name(ns));
    let mut dead_pid = None;
    let mut files_removed = 0;
    for _ in 0..8 {
        match os::open_rw(&path) {
            Ok(existing) => {
                let alive = os::creator_lock_held(&existing)
                    .map_err(|e| BlobError::os("fcntl(F_OFD_GETLK)", &path, e))?;
                if alive {
                    return Err(BlobError::AlreadyExists {
                        namespace: ns.to_owned(),
                        pid: recorded_pid(&existing, &path),
                    });
                }
                dead_pid = Some(recorded_pid(&existing, &path));
                drop(existing);
                match remove_namespace(dir, ns, false) {
                    Ok(n) => {
                        files_removed += n;
                        continue;
                    }
                    Err(BlobError::InUse { pid, .. }) => {
                        return Err(BlobError::AlreadyExists {
                            namespace: ns.to_owned(),
                            pid,
                        })
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BlobError::os("open", &path, e)),
        }
        let file = os::create_anonymous(dir)?;
        // Registered before the lock is taken, so no fork child ever holds
        // it; declared after `file`, so dropped before it on every path.
        let guard = fork::register(std::os::fd::AsRawFd::as_raw_fd(&file));
        if !os::try_lock_creator(&file).map_err(|e| BlobError::os("fcntl(F_OFD_SETLK)", dir, e))? {
            return Err(BlobError::Corrupt {
                file: dir.to_owned(),
                detail: "a fresh unnamed file is locked by someone else".into(),
            });
        }
        os::reserve_space(&file, CTRL_SIZE as u64, dir)?;
        // Mapped through a second open file description: a mapping holds
        // the description it was made from, and a fork child inherits the
        // mapping, so a mapping of `file`'s description would keep the
        // creator lock alive in fork children whatever `fork` does to the
        // descriptor. The second description holds no lock.
        let view = os::reopen(&file, dir)?;
        let map = Mapping::new(&view, CTRL_SIZE, dir)?;
        drop(view);
        let key = init_ctrl(&map, chunk_size, max_chunks, config);
        match os::link_anonymous(&file, &path) {
            Ok(()) => {
                // We own the name now: chunk files left by an earlier
                // incarnation are orphans (files of ours carry our key).
                files_removed += remove_data_files(dir, ns, Some(key), true)?;
                let recovery = (dead_pid.is_some() || files_removed > 0).then_some(Recovery {
                    dead_pid,
                    files_removed,
                });
                return Ok((guard, file, map, recovery));
            }
            // Another creator won the race; look at it again.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(BlobError::os("linkat", &path, e)),
        }
    }
    Err(BlobError::AlreadyExists {
        namespace: ns.to_owned(),
        pid: 0,
    })
}

/// Fills a fresh control block; returns its tag key (the incarnation).
fn init_ctrl(map: &Mapping, chunk_size: u32, max_chunks: u32, config: &Config) -> u64 {
    // SAFETY: the mapping holds CTRL_SIZE zeroed bytes and is page-aligned;
    // CtrlHeader is only atomics.
    let c = unsafe { &*(map.base().as_ptr() as *const CtrlHeader) };
    let pid = os::pid();
    c.version.store(FORMAT_VERSION, Ordering::Relaxed);
    c.ctrl_size.store(CTRL_SIZE as u32, Ordering::Relaxed);
    c.chunk_size.store(chunk_size, Ordering::Relaxed);
    c.max_chunks.store(max_chunks, Ordering::Relaxed);
    c.creator_pid.store(pid, Ordering::Relaxed);
    c.pool_capacity.store(WARM_POOL, Ordering::Relaxed);
    c.creator_start
        .store(os::process_start_ticks(pid).unwrap_or(0), Ordering::Relaxed);
    // Never 0: chunk files carry it, and 0 is what a file being made holds.
    let key = os::random_u64() | 1;
    c.tag_key.store(key, Ordering::Relaxed);
    // Generations start at a random point, so a handle of an earlier
    // incarnation of the name (same chunk ids, offsets and sizes) cannot
    // match a chunk of this one.
    c.generation
        .store((os::random_u64() >> 32) as u32, Ordering::Relaxed);
    c.decay_ms.store(config.decay_timeout_ms, Ordering::Relaxed);
    c.ttl_ms.store(config.default_ttl_ms, Ordering::Relaxed);
    c.active.store(NO_CHUNK as u64, Ordering::Relaxed);
    c.created_unix_ms.store(clock::unix_ms(), Ordering::Relaxed);
    // The file has no name yet: `linkat` publishes it complete, and the
    // link is what orders these stores before any reader's open.
    c.magic.store(CTRL_MAGIC, Ordering::Release);
    key
}

/// Removes every file of namespace `ns`: marks the control block closed,
/// unlinks it, then the chunk files of that incarnation. Refuses while the
/// creator lives unless `force`. Every unlink checks that the name still
/// names the file it judged, so a namespace recreated meanwhile is safe.
fn remove_namespace(dir: &Path, ns: &str, force: bool) -> Result<usize> {
    namespace::validate(ns)?;
    let path = dir.join(ctrl_file_name(ns));
    for _ in 0..4 {
        let file = match os::open_rw(&path) {
            Ok(f) => f,
            // No control block: whatever chunk files remain are orphans.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return remove_data_files(dir, ns, None, false)
            }
            Err(e) => return Err(BlobError::os("open", &path, e)),
        };
        // Taking the lock proves the creator dead and keeps a taker-over of
        // this control block out while we remove.
        let locked = os::try_lock_creator(&file)
            .map_err(|e| BlobError::os("fcntl(F_OFD_SETLK)", &path, e))?;
        if !locked && !force {
            return Err(BlobError::InUse {
                namespace: ns.to_owned(),
                pid: recorded_pid(&file, &path),
            });
        }
        hooks::at(Point::RemovalLocked);
        // The name may have been replaced between our open and our lock.
        if os::path_identity(&path).map(|(id, _)| id) != os::file_identity(&file) {
            continue;
        }
        let key = match map_ctrl(&file, &path) {
            Ok(map) => {
                // SAFETY: map_ctrl checked the size; CtrlHeader is only atomics.
                let c = unsafe { &*(map.base().as_ptr() as *const CtrlHeader) };
                c.closed.store(1, Ordering::Release);
                Some(c.tag_key.load(Ordering::Relaxed))
            }
            // Corrupt or foreign control block: remove it and every chunk
            // file of the name that no live control block claims.
            Err(_) => None,
        };
        let mut removed = usize::from(os::unlink(&path)?);
        removed += remove_data_files(dir, ns, key, false)?;
        return Ok(removed);
    }
    Err(BlobError::Corrupt {
        file: path,
        detail: "the control block keeps being replaced during cleanup".into(),
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn namespace(tag: &str) -> String {
        format!("sfbt-{}-unit-{tag}", os::pid())
    }

    #[test]
    #[cfg_attr(miri, ignore = "real shared memory: Miri cannot run it")]
    fn a_chunk_left_retired_by_a_killed_process_is_released_by_the_next_pass() {
        let ns = namespace("retired");
        let b = SharedBackend::create_with_config(&ns, 64 << 10, &Config::default()).unwrap();
        let before = b.chunk_count();
        // What a retirer killed between marking a chunk and releasing it
        // leaves: a registered chunk file marked RETIRED.
        let chunk = b.inner.create_chunk(64 << 10, 0, false).unwrap();
        assert_eq!(b.chunk_count(), before + 1);
        chunk.region.mark_retired();
        let path = b.inner.chunk_path(chunk.id);
        assert!(path.exists());
        b.reclaim_pass();
        assert!(!path.exists(), "the next pass unlinks it");
        assert_eq!(b.chunk_count(), before, "and counts it out");
        // The retirer's own late release counts nothing more.
        b.inner.release(&chunk);
        b.reclaim_pass();
        assert_eq!(b.chunk_count(), before, "counted out exactly once");
    }

    #[test]
    #[cfg_attr(miri, ignore = "real shared memory: Miri cannot run it")]
    fn a_chunk_unlinked_by_a_killed_releaser_is_unregistered_by_the_next_pass() {
        let ns = namespace("unlinked");
        let b = SharedBackend::create_with_config(&ns, 64 << 10, &Config::default()).unwrap();
        let before = b.chunk_count();
        let chunk = b.inner.create_chunk(64 << 10, 0, false).unwrap();
        // Killed between the unlink and the unregistration: the file is
        // gone, its registry slot and its count remain.
        chunk.region.mark_retired();
        os::unlink(&b.inner.chunk_path(chunk.id)).unwrap();
        assert_eq!(b.chunk_count(), before + 1);
        // Another process (no mapping of it) runs a pass.
        let other = SharedBackend::attach_with_config(&ns, &Config::default()).unwrap();
        other.reclaim_pass();
        assert_eq!(b.chunk_count(), before, "the stale slot is cleared");
        other.reclaim_pass();
        b.reclaim_pass();
        assert_eq!(b.chunk_count(), before, "counted out exactly once");
    }

    #[test]
    #[cfg_attr(miri, ignore = "real shared memory: Miri cannot run it")]
    fn a_producer_killed_while_creating_a_chunk_leaks_nothing() {
        let ns = namespace("creating");
        let config = Config {
            default_ttl_ms: 200,
            ..Config::default()
        };
        let b = SharedBackend::create_with_limit(&ns, 64 << 10, Some(3), &config).unwrap();
        let before = b.chunk_count();
        // What a producer killed between claiming a chunk and publishing it
        // leaves, once at each step: a claim without a file, a file not yet
        // sized, a sized and mapped file.
        let mut left = Vec::new();
        for step in 0..3 {
            let claim = b.inner.registry().claim(clock::now_ms(), 3);
            let Ok(claim) = claim else {
                // The limit of 3 is reached by the earlier kills: what the
                // bug did forever (StoreFull) lasts only the grace period.
                assert_eq!(step, 2);
                break;
            };
            let path = b.inner.chunk_path(claim.id());
            if step > 0 {
                let file = os::create_exclusive(&path).unwrap();
                os::reserve_space(&file, 64 << 10, &path).unwrap();
            }
            left.push(path);
        }
        assert!(b.chunk_count() > before, "the claims count at once");
        b.reclaim_pass();
        assert!(
            left.iter().skip(1).all(|p| p.exists()),
            "a young creation is its creator's"
        );
        // The grace period is max(TTL, 1 s).
        std::thread::sleep(Duration::from_millis(1_100));
        let other = SharedBackend::attach_with_config(&ns, &Config::default()).unwrap();
        other.reclaim_pass();
        assert!(left.iter().all(|p| !p.exists()), "the files are removed");
        assert_eq!(b.chunk_count(), before, "and their places freed");
        b.reclaim_pass();
        assert_eq!(b.chunk_count(), before, "exactly once");
        // The store can grow to its limit again.
        let c1 = b.inner.create_chunk(64 << 10, 0, false).unwrap();
        let c2 = b.inner.create_chunk(64 << 10, 0, false).unwrap();
        assert_eq!(b.chunk_count(), 3);
        for c in [c1, c2] {
            c.region.mark_retired();
            b.inner.release(&c);
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "real shared memory: Miri cannot run it")]
    fn a_chunk_being_activated_is_not_retired_as_idle_under_its_activator() {
        let ns = namespace("activating");
        let config = Config {
            decay_timeout_ms: 0,
            ..Config::default()
        };
        let b = SharedBackend::create_with_config(&ns, 64 << 10, &config).unwrap();
        let chunk = b.inner.create_chunk(64 << 10, 0, false).unwrap();
        let path = b.inner.chunk_path(chunk.id);
        // The moment inside `activate` between its resets and its CAS (a
        // fresh dedicated chunk, or one just popped from the pool): FREE,
        // outside the pool, `empty_since_ms` reset to 0.
        let h = chunk.region.header();
        h.activated_ms.store(clock::now_ms(), Ordering::Relaxed);
        h.empty_since_ms.store(0, Ordering::Release);
        b.reclaim_pass();
        assert_eq!(
            chunk.region.state().0,
            STATE_FREE,
            "not retired under its activator"
        );
        assert!(path.exists());
        // An activator that died there: idle from its activation, released
        // after the pool's idle period (at least 1 s).
        std::thread::sleep(Duration::from_millis(1_100));
        b.reclaim_pass();
        assert_eq!(chunk.region.state().0, STATE_RETIRED);
        assert!(!path.exists());
    }

    #[test]
    #[cfg_attr(miri, ignore = "real shared memory: Miri cannot run it")]
    fn a_full_registry_is_reported_as_registry_full() {
        use crate::registry::Slot;
        let ns = namespace("regfull");
        let b = SharedBackend::create_with_config(&ns, 64 << 10, &Config::default()).unwrap();
        // Every free slot taken by a creation in progress (stamped now, so
        // no pass presumes them dead during the test).
        let stamp = (clock::now_ms() as u32 as u64) << SLOT_STAMP_SHIFT;
        let mut taken = Vec::new();
        for (i, w) in b.inner.registry_words().iter().enumerate() {
            if Slot::decode(w.load(Ordering::Relaxed)).state == SLOT_FREE {
                w.store(SLOT_CREATING | stamp, Ordering::Relaxed);
                taken.push(i);
            }
        }
        let e = b.append(&vec![1u8; 100 << 10]).unwrap_err();
        assert!(
            matches!(
                e,
                BlobError::RegistryFull {
                    slots: REGISTRY_SLOTS,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("larger chunks"), "{e}");
        for i in taken {
            b.inner.registry_words()[i].store(0, Ordering::Relaxed);
        }
        assert!(b.append(&vec![1u8; 100 << 10]).is_ok(), "works again");
    }

    #[test]
    #[cfg_attr(miri, ignore = "real shared memory: Miri cannot run it")]
    fn removal_never_removes_a_control_block_that_replaced_the_one_it_locked() {
        let live = namespace("removal-live");
        let dead = namespace("removal-dead");
        let dir = os::shm_dir();
        // A dead namespace: a valid control block that nobody holds.
        let source =
            SharedBackend::create_with_config(&live, 64 << 10, &Config::default()).unwrap();
        let bytes = std::fs::read(dir.join(ctrl_file_name(&live))).unwrap();
        std::fs::write(dir.join(ctrl_file_name(&dead)), &bytes).unwrap();
        drop(source);
        // Between the removal's lock and its check, the dead control block
        // is taken over: a new creator makes a new incarnation of the name.
        let newcomer = std::rc::Rc::new(std::cell::RefCell::new(None));
        let slot = std::rc::Rc::clone(&newcomer);
        let name = dead.clone();
        hooks::set(move |p| {
            if p == Point::RemovalLocked && slot.borrow().is_none() {
                let dir = os::shm_dir();
                std::fs::rename(
                    dir.join(ctrl_file_name(&name)),
                    dir.join(format!("{name}_aside")),
                )
                .unwrap();
                let b =
                    SharedBackend::create_with_config(&name, 64 << 10, &Config::default()).unwrap();
                *slot.borrow_mut() = Some(b);
            }
        });
        let result = SharedBackend::cleanup_namespace(&dead);
        hooks::clear();
        let _ = std::fs::remove_file(dir.join(format!("{dead}_aside")));
        assert!(
            matches!(result, Err(BlobError::InUse { .. })),
            "the new incarnation's live creator is refused: {result:?}"
        );
        let b = newcomer.borrow_mut().take().unwrap();
        let h = b.append(b"still here").unwrap();
        assert_eq!(b.resolve_copy(&h).as_deref(), Some(&b"still here"[..]));
        assert!(dir.join(ctrl_file_name(&dead)).exists());
    }

    #[test]
    #[cfg_attr(miri, ignore = "real shared memory: Miri cannot run it")]
    fn chunk_ids_never_run_out_in_a_store() {
        use crate::registry::Slot;
        let ns = namespace("ids");
        let b = SharedBackend::create_with_config(&ns, 64 << 10, &Config::default()).unwrap();
        // Start every free slot's id counter (its epoch) at the last one.
        let top = (1u64 << SLOT_EPOCH_BITS) - 2;
        let words = b.inner.registry_words();
        for w in words {
            if Slot::decode(w.load(Ordering::Relaxed)).state == SLOT_FREE {
                w.store(top << SLOT_EPOCH_SHIFT, Ordering::Relaxed);
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        for round in 0..6u8 {
            let c = b.inner.create_chunk(64 << 10, 0, false).unwrap();
            assert_ne!(c.id, NO_CHUNK);
            ids.insert(c.id);
            // A standard append through it resolves from another process's
            // view of the namespace.
            let other = SharedBackend::attach_with_config(&ns, &Config::default()).unwrap();
            assert!(other.inner.registry().is_ready(c.id));
            assert!(other.inner.chunk(c.id).is_ok(), "round {round}");
            c.region.mark_retired();
            b.inner.release(&c);
            assert!(!b.inner.chunk_path(c.id).exists());
        }
        assert_eq!(ids.len(), 6, "a fresh id every time: {ids:?}");
        assert!(
            ids.iter().any(|&id| id >> SLOT_BITS == 0),
            "the epoch wrapped to 0: {ids:?}"
        );
        // Appends keep working across the wrap.
        for i in 0..2_000u32 {
            let h = b.append(&i.to_le_bytes().repeat(64)).unwrap();
            assert_eq!(b.resolve_copy(&h).unwrap(), i.to_le_bytes().repeat(64));
            assert!(b.acknowledge(&h));
            if i % 100 == 0 {
                b.reclaim_pass();
            }
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "real shared memory: Miri cannot run it")]
    fn a_chunk_claimed_by_a_killed_reclaimer_is_retired_after_the_grace_period() {
        let ns = namespace("claimed");
        let config = Config {
            default_ttl_ms: 200,
            ..Config::default()
        };
        let b = SharedBackend::create_with_config(&ns, 64 << 10, &config).unwrap();
        let before = b.chunk_count();
        let chunk = b.inner.create_chunk(64 << 10, 0, false).unwrap();
        let (_, g) = chunk.region.state();
        assert!(chunk.region.activate(g, g + 1, clock::now_ms()));
        chunk.region.seal(g + 1, clock::now_ms());
        // A reclaimer claims it and is killed before recycling or retiring.
        assert!(chunk.region.claim(g + 1));
        let path = b.inner.chunk_path(chunk.id);
        b.reclaim_pass();
        assert!(path.exists(), "a fresh claim is its claimer's");
        // The grace period is max(TTL, 1 s).
        std::thread::sleep(Duration::from_millis(1_100));
        b.reclaim_pass();
        assert!(!path.exists(), "a claim past the grace period is finished");
        assert_eq!(b.chunk_count(), before);
    }
}
