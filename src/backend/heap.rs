//! Heap mode: pages in this process's memory, run by the same chunk
//! protocol (`src/chunk.rs`) and store protocol (`src/engine.rs`) as
//! shared mode.
//!
//! Page memory is allocated zeroed (so no byte is ever uninitialised),
//! owned by an `Arc<HeapPage>`, and only ever accessed through the protocol:
//! atomics for the headers, raw-pointer copies for payloads. Views hold the
//! `Arc`, so a page retired while viewed is freed when the last view drops.

use crate::chunk::ChunkRegion;
use crate::clock;
use crate::config::Config;
use crate::engine::{self, ChunkRef, Chunks, Event, Loc, Policy};
use crate::error::{BlobError, Result};
use crate::layout::*;
use crate::maintain::ChunkTotals;
use crate::maintain::Maintain;
use crate::os;
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::table::{ChunkTable, Keyed};
use crate::view::PinnedChunk;
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};

/// Alignment of a page: a cache line (headers are laid out by cache line).
const PAGE_ALIGN: usize = 64;

/// Heap page ids are below `1 << HEAP_ID_BITS` (65,536 pages alive at
/// once; freed ids are reused), so that an id indexes the page table.
const HEAP_ID_BITS: u32 = 16;

/// One heap page.
pub(crate) struct HeapPage {
    id: u32,
    region: ChunkRegion,
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Keyed for HeapPage {
    fn table_id(&self) -> u32 {
        self.id
    }
}

// SAFETY: the page's memory is only accessed through the chunk protocol
// (atomics, and raw-pointer payload copies ordered by them); the allocation
// is owned by this value and freed once, in Drop.
unsafe impl Send for HeapPage {}
// SAFETY: see Send; no method hands out `&mut` to the memory.
unsafe impl Sync for HeapPage {}

impl HeapPage {
    fn new(id: u32, size: usize) -> Result<Self> {
        let layout =
            Layout::from_size_align(size, PAGE_ALIGN).map_err(|_| BlobError::BlobTooLarge {
                size,
                max: Policy::MAX_BLOB,
            })?;
        // SAFETY: `layout` has a non-zero size (>= MIN_CHUNK_SIZE or a
        // header plus an entry, checked by callers).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(BlobError::OutOfMemory { bytes: size })?;
        // SAFETY: `ptr` is 64-aligned, valid for `size` zeroed bytes, and is
        // kept allocated by this HeapPage for as long as its region is used
        // (the region lives in the same struct and is dropped with it).
        let region = unsafe { ChunkRegion::new(ptr, size) };
        Ok(Self {
            id,
            region,
            ptr,
            layout,
        })
    }
}

impl Drop for HeapPage {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

impl PinnedChunk for HeapPage {
    fn unpin(&self) {
        self.region.unpin_raw();
    }
}

impl ChunkRef for Arc<HeapPage> {
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

/// Counters of a heap store.
#[derive(Default)]
struct Counters {
    recycled: std::sync::atomic::AtomicU64,
    retired: std::sync::atomic::AtomicU64,
    expired: std::sync::atomic::AtomicU64,
}

pub(crate) struct HeapPages {
    policy: Policy,
    active: AtomicU64,
    pool: [AtomicU32; POOL_SLOTS],
    generation: AtomicU32,
    pages: ChunkTable<HeapPage>,
    /// The reclamation pass's memory, and the latest acknowledgement.
    gate: engine::Gate,
    last_ack_ms: AtomicU64,
    /// Ids free for reuse, and the next never-used id.
    ids: Mutex<(Vec<u32>, u32)>,
    counters: Counters,
}

/// The heap-mode backend of [`PinnedBlobStore::new`](crate::PinnedBlobStore::new).
pub struct HeapBackend {
    inner: Arc<HeapPages>,
}

impl HeapBackend {
    /// A heap store with pages of `config.page_size` bytes.
    pub fn new(config: &Config) -> Result<Self> {
        let size = config.page_size;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) {
            return Err(BlobError::InvalidConfig {
                reason: format!(
                    "page size {size} must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes"
                ),
            });
        }
        // Whole 8-byte units, as in shared mode.
        let size = size.next_multiple_of(ENTRY_ALIGN);
        let policy = Policy::new(
            os::random_u64(),
            size as u32,
            config.prefetch_ratio(),
            config.default_ttl_ms,
            config.decay_timeout_ms,
            4,
        );
        let inner = Arc::new(HeapPages {
            policy,
            active: AtomicU64::new(NO_CHUNK as u64),
            pool: std::array::from_fn(|_| AtomicU32::new(0)),
            // A random start: handles of another store never match this one.
            generation: AtomicU32::new((os::random_u64() >> 32) as u32),
            pages: ChunkTable::new(HEAP_ID_BITS),
            gate: engine::Gate::default(),
            last_ack_ms: AtomicU64::new(0),
            ids: Mutex::new((Vec::new(), 0)),
            counters: Counters::default(),
        });
        Ok(Self { inner })
    }

    pub(crate) fn append(&self, data: &[u8]) -> Result<Loc> {
        engine::append(&*self.inner, data)
    }

    pub(crate) fn get(&self, loc: &Loc) -> Option<Vec<u8>> {
        engine::with_bytes(&*self.inner, loc, <[u8]>::to_vec)
    }

    pub(crate) fn pin(&self, loc: &Loc) -> Option<(Arc<HeapPage>, *const u8, usize)> {
        engine::pin_bytes(&*self.inner, loc)
    }

    pub(crate) fn acknowledge(&self, loc: &Loc) -> bool {
        engine::acknowledge(&*self.inner, loc)
    }

    pub(crate) fn reclaim(&self) -> usize {
        engine::reclaim(&*self.inner)
    }

    /// The engine's view of this store (unit tests drive the protocol
    /// through it).
    #[cfg(test)]
    pub(crate) fn pages(&self) -> Arc<HeapPages> {
        Arc::clone(&self.inner)
    }

    /// Pages currently allocated (in use, pooled or dedicated).
    pub fn page_count(&self) -> usize {
        self.inner.pages.len()
    }

    /// Id of the page appends currently go to (`u32::MAX` before the first).
    pub fn current_page_id(&self) -> u32 {
        engine::target_id(&*self.inner)
    }

    /// Prints one line per page to stderr (see
    /// [`PinnedBlobStore::debug_chunks`](crate::PinnedBlobStore::debug_chunks)).
    pub fn debug_chunks(&self) {
        for line in engine::describe(&*self.inner) {
            eprintln!("  [heap] {line}");
        }
    }

    /// Warm pages waiting in the pool.
    pub fn pooled_pages(&self) -> usize {
        engine::pool_len(&*self.inner) as usize
    }

    /// Pages recycled in place, released, and reclaimed by TTL so far.
    pub(crate) fn counters(&self) -> (u64, u64, u64) {
        let c = &self.inner.counters;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        (l(&c.recycled), l(&c.retired), l(&c.expired))
    }

    /// What the lifecycle thread maintains (held weakly).
    pub fn maintenance_target(&self) -> Weak<dyn Maintain> {
        let weak: Weak<HeapPages> = Arc::downgrade(&self.inner);
        weak
    }
}

fn no_page(id: u32) -> BlobError {
    BlobError::Corrupt {
        file: format!("(heap page {id})").into(),
        detail: "no such page".into(),
    }
}

impl std::fmt::Debug for HeapBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapBackend")
            .field("page_size", &self.inner.policy.chunk_size)
            .field("pages", &self.page_count())
            .finish()
    }
}

impl HeapPages {
    fn lock_ids(&self) -> std::sync::MutexGuard<'_, (Vec<u32>, u32)> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Maintain for HeapPages {
    fn maintain(&self) -> usize {
        engine::reclaim(self)
    }

    fn totals(&self) -> ChunkTotals {
        ChunkTotals {
            live: self.pages.len() as u64,
            released: self
                .counters
                .retired
                .load(std::sync::atomic::Ordering::Relaxed),
            chunk_size: u64::from(self.policy.chunk_size),
        }
    }
}

impl Chunks for HeapPages {
    type Chunk = Arc<HeapPage>;

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn active(&self) -> &AtomicU64 {
        &self.active
    }

    fn pool(&self) -> &[AtomicU32] {
        &self.pool[..self.policy.pool_capacity as usize]
    }

    fn generation(&self) -> &AtomicU32 {
        &self.generation
    }

    fn gate(&self) -> Option<(&engine::Gate, &AtomicU64)> {
        Some((&self.gate, &self.last_ack_ms))
    }

    fn chunk(&self, id: u32) -> Result<Arc<HeapPage>> {
        self.pages.get(id).ok_or_else(|| no_page(id))
    }

    fn with_region<R>(&self, id: u32, f: impl FnOnce(&ChunkRegion) -> R) -> Result<R> {
        self.pages
            .with(id, |p| f(&p.region))
            .ok_or_else(|| no_page(id))
    }

    fn create(&self, size: usize, flags: u32, _populate: bool) -> Result<Arc<HeapPage>> {
        let id = {
            let mut ids = self.lock_ids();
            match ids.0.pop() {
                Some(id) => id,
                None if ids.1 < 1 << HEAP_ID_BITS => {
                    ids.1 += 1;
                    ids.1 - 1
                }
                None => {
                    return Err(BlobError::InvalidConfig {
                        reason: "heap page ids exhausted (65,536 pages alive at once)".into(),
                    })
                }
            }
        };
        let page = match HeapPage::new(id, size) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                self.lock_ids().0.push(id);
                return Err(e);
            }
        };
        let generation = self
            .generation
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        page.region
            .format(id, generation, flags, self.policy.key, clock::now_ms(), 0);
        self.pages.insert(id, Arc::clone(&page));
        Ok(page)
    }

    fn release(&self, page: &Arc<HeapPage>) {
        // Only if the table still holds this very page (not a later one
        // under a reused id).
        if self.pages.with(page.id, |p| Arc::ptr_eq(p, page)) == Some(true) {
            self.pages.remove(page.id);
            self.lock_ids().0.push(page.id);
        }
        // The memory goes when the last view of the page is dropped.
    }

    fn ids(&self, out: &mut Vec<u32>) {
        self.pages.ids(out);
    }

    fn is_listed(&self, id: u32) -> bool {
        self.pages.with(id, |_| ()).is_some()
    }

    fn count(&self, event: Event) {
        let c = &self.counters;
        let counter = match event {
            Event::Recycled => &c.recycled,
            Event::Retired => &c.retired,
            Event::Expired => &c.expired,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
