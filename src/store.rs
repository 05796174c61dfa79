//! `PinnedBlobStore`: the public facade over the two backends.

use crate::backend::heap::HeapBackend;
use crate::backend::shared::SharedBackend;
use crate::channel::{self, ChannelConfig, Publisher, Receiver, Sender, Subscriber};
use crate::config::{BackendMode, Config};
use crate::error::{BlobError, Result};
use crate::handle::{BlobHandle, OverflowHandle};
use crate::maintain::Maintain;
use crate::profiler::Profiler;
use crate::stats::BlobStats;
use crate::view::BlobView;
use crate::writer::Writer;
use std::sync::Weak;

/// A store of byte blobs whose bytes never move once written.
///
/// * **Heap mode** ([`new`](Self::new)): pages in this process's memory;
///   [`append`](Self::append) returns a [`BlobHandle`]; [`get`](Self::get)
///   copies, [`get_ref`](Self::get_ref) gives a zero-copy view.
/// * **Shared mode** ([`new_shared`](Self::new_shared) /
///   [`attach_shared`](Self::attach_shared)): a namespace in POSIX shared
///   memory; [`append_shared`](Self::append_shared) returns a 24-byte
///   [`OverflowHandle`] that any attached process can
///   [`resolve`](Self::resolve) or [`resolve_ref`](Self::resolve_ref).
///
/// Calls of the other mode fail with [`BlobError::WrongMode`], or return
/// `None` / `false`.
#[derive(Debug)]
pub struct PinnedBlobStore {
    config: Config,
    mode: Mode,
    profiler: Profiler,
}

#[derive(Debug)]
enum Mode {
    Heap(HeapBackend),
    Shared(SharedBackend),
}

impl PinnedBlobStore {
    /// A heap-mode store with pages of `config.page_size` bytes.
    pub fn new(config: Config) -> Result<Self> {
        Ok(Self::with_mode(
            config,
            Mode::Heap(HeapBackend::new(&config)?),
        ))
    }

    /// A heap-mode store with [`Config::default`].
    pub fn with_defaults() -> Result<Self> {
        Self::new(Config::default())
    }

    /// Creates shared namespace `namespace` with chunks of `chunk_size`
    /// bytes (e.g. [`DEFAULT_CHUNK_SIZE`](crate::backend::shared::DEFAULT_CHUNK_SIZE)).
    ///
    /// This process becomes the namespace's creator, and **dropping the
    /// store (and every channel endpoint opened through it: they keep it
    /// alive) removes the namespace**: its files are unlinked, attached
    /// processes' appends fail with [`BlobError::Closed`], and their
    /// resolves find only what they already have mapped
    /// ([`resolve_checked`](Self::resolve_checked) says `Closed`). Views
    /// already taken stay valid. If the name is held by a creator that died,
    /// its files are removed first and [`recovered`](Self::recovered) says
    /// so; a live creator's name gives [`BlobError::AlreadyExists`].
    pub fn new_shared(config: Config, namespace: &str, chunk_size: usize) -> Result<Self> {
        Self::new_shared_with_limit(config, namespace, chunk_size, None)
    }

    /// Like [`new_shared`](Self::new_shared), with at most `max_chunks`
    /// chunk files for the whole namespace (every process enforces it);
    /// appends past it fail with [`BlobError::StoreFull`].
    pub fn new_shared_with_limit(
        config: Config,
        namespace: &str,
        chunk_size: usize,
        max_chunks: Option<u32>,
    ) -> Result<Self> {
        let shared = SharedBackend::create_with_limit(
            namespace,
            chunk_size,
            max_chunks.map(|n| n as usize),
            &config,
        )?;
        Ok(Self::with_mode(config, Mode::Shared(shared)))
    }

    /// Attaches to shared namespace `namespace` created by another process.
    pub fn attach_shared(config: Config, namespace: &str) -> Result<Self> {
        let shared = SharedBackend::attach_with_config(namespace, &config)?;
        Ok(Self::with_mode(config, Mode::Shared(shared)))
    }

    /// Like [`attach_shared`](Self::attach_shared), but waits up to
    /// `timeout` for the namespace to appear (a consumer started before
    /// its producer's process created it). It looks again every few
    /// milliseconds (1 ms at first, at most 20 ms apart); a namespace that
    /// is closed (being removed) counts as not there yet. After `timeout`
    /// it returns [`BlobError::NotFound`](crate::BlobError::NotFound);
    /// other errors (an invalid name, a corrupt control file) at once.
    pub fn attach_shared_wait(
        config: Config,
        namespace: &str,
        timeout: std::time::Duration,
    ) -> Result<Self> {
        let deadline = std::time::Instant::now().checked_add(timeout);
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            match Self::attach_shared(config, namespace) {
                Err(BlobError::NotFound { .. } | BlobError::Closed { .. }) => {}
                done => return done,
            }
            let now = std::time::Instant::now();
            let left = match deadline {
                Some(d) if now >= d => {
                    return Err(BlobError::NotFound {
                        namespace: namespace.to_owned(),
                    })
                }
                Some(d) => d - now,
                None => pause,
            };
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(std::time::Duration::from_millis(20));
        }
    }

    fn with_mode(config: Config, mode: Mode) -> Self {
        let target = match &mode {
            Mode::Heap(h) => h.maintenance_target(),
            Mode::Shared(s) => s.maintenance_target(),
        };
        Self {
            config,
            mode,
            profiler: Profiler::for_store(target),
        }
    }

    fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Heap(_) => "heap",
            Mode::Shared(_) => "shared",
        }
    }

    fn wrong(&self, call: &'static str, expected: &'static str) -> BlobError {
        BlobError::WrongMode {
            call,
            expected,
            actual: self.mode_name(),
        }
    }

    // ---- heap mode ----

    /// Appends `data` (heap mode). Blobs larger than a page get a dedicated
    /// page of their own size, so every blob is contiguous.
    pub fn append(&self, data: &[u8]) -> Result<BlobHandle> {
        let Mode::Heap(heap) = &self.mode else {
            return Err(self.wrong("append", "heap"));
        };
        let loc = heap.append(data)?;
        self.profiler.on_append(data.len());
        Ok(BlobHandle::from_loc(loc))
    }

    /// A copy of the blob (heap mode), or `None` if the handle is stale,
    /// reclaimed or from another store.
    pub fn get(&self, handle: &BlobHandle) -> Option<Vec<u8>> {
        let Mode::Heap(heap) = &self.mode else {
            return None;
        };
        let out = heap.get(handle.loc());
        self.profiler.on_read(out.as_ref().map(Vec::len));
        out
    }

    /// A zero-copy view of the blob (heap mode); see [`BlobView`] for the
    /// stability guarantee.
    pub fn get_ref(&self, handle: &BlobHandle) -> Option<BlobView> {
        let Mode::Heap(heap) = &self.mode else {
            return None;
        };
        let view = heap.pin(handle.loc()).map(|(page, ptr, len)| {
            // SAFETY: `pin` pinned the page once for this view and returned
            // a pointer to `len` committed bytes inside the page it keeps alive.
            unsafe { BlobView::new(page, ptr, len) }
        });
        self.profiler.on_read(view.as_ref().map(|v| v.len()));
        view
    }

    /// Marks the blob consumed (heap mode): `true` the first time only.
    pub fn acknowledge(&self, handle: &BlobHandle) -> bool {
        let Mode::Heap(heap) = &self.mode else {
            return false;
        };
        let counted = heap.acknowledge(handle.loc());
        self.profiler.on_ack(counted);
        counted
    }

    /// One reclamation pass (heap mode): pages whose entries are all
    /// acknowledged (plus the decay period) or TTL-expired are freed or
    /// recycled. Returns the pages reclaimed.
    pub fn cleanup_acknowledged(&self) -> usize {
        match &self.mode {
            Mode::Heap(heap) => {
                self.profiler.on_cleanup();
                heap.reclaim()
            }
            Mode::Shared(_) => 0,
        }
    }

    // ---- shared mode ----

    /// Appends `data` to the shared store; the handle can be sent to any
    /// attached process.
    pub fn append_shared(&self, data: &[u8]) -> Result<OverflowHandle> {
        let Mode::Shared(shared) = &self.mode else {
            return Err(self.wrong("append_shared", "shared"));
        };
        let h = shared.append(data)?;
        self.profiler.on_append(data.len());
        Ok(h)
    }

    /// An owned copy of the blob, or `None` if the handle is stale,
    /// reclaimed or forged. The copy is safe from concurrent cleanup.
    pub fn resolve(&self, handle: &OverflowHandle) -> Option<Vec<u8>> {
        let Mode::Shared(shared) = &self.mode else {
            return None;
        };
        let out = shared.resolve_copy(handle);
        self.profiler.on_read(out.as_ref().map(Vec::len));
        out
    }

    /// A zero-copy view of the blob (shared mode); see [`BlobView`] for the
    /// stability guarantee.
    pub fn resolve_ref(&self, handle: &OverflowHandle) -> Option<BlobView> {
        let Mode::Shared(shared) = &self.mode else {
            return None;
        };
        let view = shared.resolve_ref(handle);
        self.profiler.on_read(view.as_ref().map(|v| v.len()));
        view
    }

    /// [`resolve`](Self::resolve) that says why a handle does not resolve:
    /// [`BlobError::Reclaimed`] (acknowledged and reclaimed, or expired by
    /// the TTL — see its `older_than_ttl`), [`BlobError::InvalidHandle`]
    /// (forged, corrupted, or another store's), [`BlobError::Closed`] (the
    /// creator dropped the namespace), or why the chunk file could not be
    /// read. The reason is read after the resolve failed, at that moment.
    pub fn resolve_checked(&self, handle: &OverflowHandle) -> Result<Vec<u8>> {
        let Mode::Shared(shared) = &self.mode else {
            return Err(self.wrong("resolve_checked", "shared"));
        };
        let out = shared.resolve_checked(handle);
        self.profiler.on_read(out.as_ref().ok().map(Vec::len));
        out
    }

    /// [`resolve_ref`](Self::resolve_ref) that says why a handle does not
    /// resolve (see [`resolve_checked`](Self::resolve_checked)).
    pub fn resolve_ref_checked(&self, handle: &OverflowHandle) -> Result<BlobView> {
        let Mode::Shared(shared) = &self.mode else {
            return Err(self.wrong("resolve_ref_checked", "shared"));
        };
        let out = shared.resolve_ref_checked(handle);
        self.profiler.on_read(out.as_ref().ok().map(|v| v.len()));
        out
    }

    /// A context for one thread's appends and acknowledgements (shared
    /// mode), faster than [`append_shared`](Self::append_shared) and
    /// [`acknowledge_shared`](Self::acknowledge_shared) for a stream of
    /// small blobs: see [`Writer`].
    pub fn writer(&self) -> Result<Writer<'_>> {
        match &self.mode {
            Mode::Shared(shared) => Ok(Writer::new(shared, &self.profiler)),
            Mode::Heap(_) => Err(self.wrong("writer", "shared")),
        }
    }

    /// Marks the blob consumed: `true` the first time, `false` for a repeat
    /// or a stale or forged handle.
    pub fn acknowledge_shared(&self, handle: &OverflowHandle) -> bool {
        let Mode::Shared(shared) = &self.mode else {
            return false;
        };
        let counted = shared.acknowledge(handle);
        self.profiler.on_ack(counted);
        counted
    }

    /// One reclamation pass (shared mode); returns the chunks reclaimed.
    pub fn cleanup_shared(&self) -> usize {
        match &self.mode {
            Mode::Shared(shared) => {
                self.profiler.on_cleanup();
                shared.reclaim_pass()
            }
            Mode::Heap(_) => 0,
        }
    }

    /// Appends a blob of `len` bytes written in place by `fill` (shared
    /// mode): no intermediate buffer, the closure writes straight into
    /// shared memory. Returns the handle of the committed blob.
    pub fn append_shared_with(
        &self,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<OverflowHandle> {
        let Mode::Shared(shared) = &self.mode else {
            return Err(self.wrong("append_shared_with", "shared"));
        };
        let r = shared.reserve(len)?;
        // SAFETY: the reservation's `len` bytes at `ptr` are initialised
        // (file pages) and belong to this writer alone until committed;
        // `r.chunk` keeps them mapped for the closure's duration.
        let buf = unsafe { std::slice::from_raw_parts_mut(r.ptr, len) };
        // If `fill` panics the entry stays uncommitted: the TTL reclaims it.
        fill(buf);
        let h = shared.commit(&r)?;
        self.profiler.on_append(len);
        Ok(h)
    }

    /// What creating this shared namespace recovered from (a dead
    /// creator's files, removed first); see [`Recovery`](crate::Recovery).
    pub fn recovered(&self) -> Option<crate::Recovery> {
        self.shared_backend().and_then(SharedBackend::recovered)
    }

    // ---- channels (shared mode) ----

    fn link(&self, call: &'static str) -> Result<crate::backend::shared::StoreLink> {
        match &self.mode {
            Mode::Shared(s) => Ok(s.link()),
            Mode::Heap(_) => Err(self.wrong(call, "shared")),
        }
    }

    /// Opens (creating if needed) broadcast channel `name` for publishing.
    /// See [`channel`](crate::channel).
    pub fn publisher(&self, name: &str) -> Result<Publisher> {
        channel::publisher(
            self.link("publisher")?,
            name,
            ChannelConfig::default(),
            false,
        )
    }

    /// Like [`publisher`](Self::publisher), with the geometry and policy of
    /// `config`: a channel that exists with another one is
    /// [`BlobError::ChannelMismatch`](crate::BlobError::ChannelMismatch).
    /// (`config.spin` is this endpoint's own and never differs.)
    pub fn publisher_with(&self, name: &str, config: ChannelConfig) -> Result<Publisher> {
        channel::publisher(self.link("publisher")?, name, config, true)
    }

    /// Subscribes to broadcast channel `name` (creating it if needed): it
    /// receives every message published from now on.
    pub fn subscriber(&self, name: &str) -> Result<Subscriber> {
        channel::subscriber(
            self.link("subscriber")?,
            name,
            ChannelConfig::default(),
            false,
        )
    }

    /// Like [`subscriber`](Self::subscriber), with the geometry and policy
    /// of `config` (a channel that exists with another one is
    /// [`BlobError::ChannelMismatch`](crate::BlobError::ChannelMismatch)).
    pub fn subscriber_with(&self, name: &str, config: ChannelConfig) -> Result<Subscriber> {
        channel::subscriber(self.link("subscriber")?, name, config, true)
    }

    /// Opens (creating if needed) work queue `name` for sending.
    pub fn sender(&self, name: &str) -> Result<Sender> {
        channel::sender(self.link("sender")?, name, ChannelConfig::default(), false)
    }

    /// Like [`sender`](Self::sender), with the geometry and policy of
    /// `config` (a channel that exists with another one is
    /// [`BlobError::ChannelMismatch`](crate::BlobError::ChannelMismatch)).
    pub fn sender_with(&self, name: &str, config: ChannelConfig) -> Result<Sender> {
        channel::sender(self.link("sender")?, name, config, true)
    }

    /// Opens (creating if needed) work queue `name` for receiving: each
    /// message goes to exactly one receiver.
    pub fn receiver(&self, name: &str) -> Result<Receiver> {
        channel::receiver(
            self.link("receiver")?,
            name,
            ChannelConfig::default(),
            false,
        )
    }

    /// Like [`receiver`](Self::receiver), with the geometry and policy of
    /// `config` (a channel that exists with another one is
    /// [`BlobError::ChannelMismatch`](crate::BlobError::ChannelMismatch)).
    pub fn receiver_with(&self, name: &str, config: ChannelConfig) -> Result<Receiver> {
        channel::receiver(self.link("receiver")?, name, config, true)
    }

    // ---- both ----

    /// Whether this store lives in shared memory.
    pub fn is_shared(&self) -> bool {
        matches!(self.mode, Mode::Shared(_))
    }

    /// The shared backend, in shared mode.
    pub fn shared_backend(&self) -> Option<&SharedBackend> {
        match &self.mode {
            Mode::Shared(s) => Some(s),
            Mode::Heap(_) => None,
        }
    }

    /// The heap backend, in heap mode.
    pub fn heap_backend(&self) -> Option<&HeapBackend> {
        match &self.mode {
            Mode::Heap(h) => Some(h),
            Mode::Shared(_) => None,
        }
    }

    /// Chunk (page) counts and reclamation counters.
    pub fn stats(&self) -> BlobStats {
        match &self.mode {
            Mode::Heap(h) => {
                let (recycled, retired, expired) = h.counters();
                let chunks = h.page_count();
                BlobStats {
                    page_count: chunks,
                    current_page_id: h.current_page_id(),
                    chunks,
                    pooled: h.pooled_pages(),
                    recycled,
                    retired,
                    expired,
                }
            }
            Mode::Shared(s) => s.stats(),
        }
    }

    /// Prints one line per chunk (generation, state, bytes used,
    /// acknowledgements, pins, which one is the append target) to stderr.
    pub fn debug_chunks(&self) {
        match &self.mode {
            Mode::Heap(h) => h.debug_chunks(),
            Mode::Shared(s) => s.debug_chunks(),
        }
    }

    /// Which mode the store is in (the original crate's [`BackendMode`]).
    pub fn backend_mode(&self) -> BackendMode {
        match &self.mode {
            Mode::Heap(_) => BackendMode::Heap,
            Mode::Shared(s) => BackendMode::Shared {
                namespace: s.namespace().to_owned(),
                chunk_size: s.chunk_size(),
            },
        }
    }

    /// The profiler of this store: [`Profiler::stats`] reports its chunk
    /// totals at any time; operation counts count once
    /// [`enable`](Profiler::enable)d.
    pub fn profiler(&self) -> &Profiler {
        &self.profiler
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn maintenance_target(&self) -> Weak<dyn Maintain> {
        match &self.mode {
            Mode::Heap(h) => h.maintenance_target(),
            Mode::Shared(s) => s.maintenance_target(),
        }
    }
}
