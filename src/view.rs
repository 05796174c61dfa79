//! Zero-copy views of blobs, in both modes.

use std::ptr::NonNull;
use std::sync::Arc;

/// What keeps a view's memory alive and pinned: a chunk mapping (shared
/// mode) or a page allocation (heap mode), each backend's own type. The
/// view knows only this, so the backends depend on views, not the reverse.
pub(crate) trait PinnedChunk: Send + Sync {
    /// Removes the pin taken for the view.
    fn unpin(&self);
}

/// A read-only, zero-copy view of one blob: `Deref<Target = [u8]>`.
///
/// Creating it costs O(1) whatever the blob size. While it lives, its bytes
/// never change, even while other threads or processes append, acknowledge
/// and reclaim: the chunk under it is pinned, and a pinned chunk is never
/// recycled in place — at most it is retired (unlinked, or dropped from the
/// page table), and this view keeps the memory mapped or allocated until it
/// is dropped. A view does not stop reclamation: a blob whose chunk is
/// reclaimed while viewed stays readable here and resolves to nothing for
/// new lookups.
pub struct BlobView {
    owner: Arc<dyn PinnedChunk>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the bytes behind `ptr` are immutable while the view lives (the
// chunk is pinned, so nobody recycles or rewrites them) and `owner` keeps
// them allocated; the owner is Send + Sync.
unsafe impl Send for BlobView {}
// SAFETY: see Send; a view only ever hands out `&[u8]`.
unsafe impl Sync for BlobView {}

impl BlobView {
    /// # Safety
    /// The chunk held by `owner` must have been pinned once for this view
    /// (the view unpins it on drop), and `ptr` must point to `len` committed
    /// bytes inside the memory `owner` keeps alive.
    pub(crate) unsafe fn new(owner: Arc<dyn PinnedChunk>, ptr: *const u8, len: usize) -> Self {
        let ptr = NonNull::new(ptr as *mut u8).unwrap_or(NonNull::dangling());
        Self { owner, ptr, len }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `new`'s contract: `len` committed bytes, kept alive and
        // unchanged by the pin and the owner for as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::Deref for BlobView {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for BlobView {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for BlobView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobView").field("len", &self.len).finish()
    }
}

impl Drop for BlobView {
    fn drop(&mut self) {
        self.owner.unpin();
    }
}
