//! A writer: one thread's context for appending and acknowledging in shared
//! mode, which keeps the chunks it works in between calls.

use crate::backend::shared::{HeldChunk, SharedBackend};
use crate::engine::Loc;
use crate::error::Result;
use crate::handle::OverflowHandle;
use crate::profiler::Profiler;

/// One thread's context for appends and acknowledgements in a shared store
/// (from [`PinnedBlobStore::writer`](crate::PinnedBlobStore::writer)).
///
/// [`append_shared`](crate::PinnedBlobStore::append_shared) looks the append
/// target up in the process's chunk table on every call; a writer keeps the
/// target it last appended to (and the chunk it last acknowledged in) and
/// looks up again only when the target changes. For small blobs that lookup
/// is a large share of an append. Everything else is the same protocol: the
/// handles are the same, any process resolves them, and every check runs
/// on every call.
///
/// A writer keeps at most two chunks mapped. A chunk reclaimed while a
/// writer still holds it stays mapped in this process (not reused: it is
/// unlinked instead of recycled if it was still pinned) until the writer
/// moves on or is dropped, so drop an idle writer rather than keep it for
/// hours.
///
/// ```
/// use stable_fragmented_buffer::{Config, PinnedBlobStore};
/// # let ns = format!("sfbdoc-writer-{}", std::process::id());
/// let store = PinnedBlobStore::new_shared(Config::default(), &ns, 1 << 20)?;
/// let mut writer = store.writer()?;
/// let handles: Vec<_> = (0..100u8)
///     .map(|i| writer.append(&[i; 64]))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(store.resolve(&handles[7]).as_deref(), Some(&[7u8; 64][..]));
/// assert!(writer.acknowledge(&handles[0]));
/// assert_eq!(writer.acknowledge_all(&handles), 99); // the first counted once
/// assert!(!writer.acknowledge(&handles[1]));
/// # Ok::<(), stable_fragmented_buffer::BlobError>(())
/// ```
pub struct Writer<'a> {
    backend: &'a SharedBackend,
    profiler: &'a Profiler,
    target: HeldChunk,
    acked: HeldChunk,
    locs: Vec<Loc>,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(backend: &'a SharedBackend, profiler: &'a Profiler) -> Self {
        Self {
            backend,
            profiler,
            target: HeldChunk::default(),
            acked: HeldChunk::default(),
            locs: Vec::new(),
        }
    }

    /// Appends `data`, as [`append_shared`](crate::PinnedBlobStore::append_shared).
    pub fn append(&mut self, data: &[u8]) -> Result<OverflowHandle> {
        let h = self.backend.append_held(&mut self.target, data)?;
        self.profiler.on_append(data.len());
        Ok(h)
    }

    /// Appends every blob of `blobs`, in order, pushing each one's handle
    /// to `out`. Blobs that fit in the current chunk together are reserved
    /// at once: for small blobs this costs a fraction of as many
    /// [`append`](Self::append) calls. On an error (for example
    /// [`StoreFull`](crate::BlobError::StoreFull) or an empty blob), the
    /// blobs before the one that failed are stored and their handles are in
    /// `out`: nothing is lost and nothing is stored twice.
    pub fn append_all(&mut self, blobs: &[&[u8]], out: &mut Vec<OverflowHandle>) -> Result<()> {
        let before = out.len();
        let done = self
            .backend
            .append_all_held(&mut self.target, blobs, &mut self.locs, out);
        let stored = &out[before..];
        let bytes = stored.iter().map(|h| h.size as usize).sum();
        self.profiler.on_appends(stored.len(), bytes);
        done
    }

    /// Marks the blob consumed, as
    /// [`acknowledge_shared`](crate::PinnedBlobStore::acknowledge_shared):
    /// `true` the first time, `false` for a repeat or a stale or forged
    /// handle.
    pub fn acknowledge(&mut self, handle: &OverflowHandle) -> bool {
        let counted = self.backend.acknowledge_held(&mut self.acked, handle);
        self.profiler.on_ack(counted);
        counted
    }

    /// Acknowledges every handle of `handles`, each as
    /// [`acknowledge`](Self::acknowledge) would; returns how many counted.
    /// Consecutive handles of one chunk (a batch appended in a row) share
    /// one pin of the chunk, so each costs about a third of a single
    /// acknowledgement.
    pub fn acknowledge_all(&mut self, handles: &[OverflowHandle]) -> usize {
        let counted = self.backend.acknowledge_all_held(&mut self.acked, handles);
        self.profiler.on_acks(counted);
        counted
    }

    /// Lets go of the chunks this writer keeps (they are fetched again on
    /// the next call).
    pub fn release(&mut self) {
        self.target.clear();
        self.acked.clear();
    }
}

impl std::fmt::Debug for Writer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("store", self.backend)
            .finish()
    }
}
