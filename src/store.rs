//! `PinnedBlobStore`: the public facade over the backends.

use crate::backend::shared::SharedBackend;
use crate::config::Config;
use crate::error::Result;
use crate::handle::OverflowHandle;
use crate::lifecycle::{CleanupHandle, LifecycleManager};
use std::sync::Arc;
use std::time::Duration;

/// A store of byte blobs whose bytes never move once written.
///
/// In shared mode the store is a namespace in POSIX shared memory: the
/// creator makes it with [`new_shared`](Self::new_shared), other processes
/// [`attach_shared`](Self::attach_shared), and handles travel between them.
#[derive(Debug)]
pub struct PinnedBlobStore {
    config: Config,
    shared: SharedBackend,
}

impl PinnedBlobStore {
    /// Creates shared namespace `namespace` with chunks of `chunk_size`
    /// bytes (e.g. [`DEFAULT_CHUNK_SIZE`](crate::backend::shared::DEFAULT_CHUNK_SIZE)).
    pub fn new_shared(config: Config, namespace: &str, chunk_size: usize) -> Result<Self> {
        Self::new_shared_with_limit(config, namespace, chunk_size, None)
    }

    /// Like [`new_shared`](Self::new_shared), with at most `max_chunks`
    /// chunk files for the whole namespace (every process enforces it);
    /// appends past it fail with [`BlobError::StoreFull`](crate::BlobError::StoreFull).
    pub fn new_shared_with_limit(
        config: Config,
        namespace: &str,
        chunk_size: usize,
        max_chunks: Option<usize>,
    ) -> Result<Self> {
        let shared = SharedBackend::create_with_limit(namespace, chunk_size, max_chunks, &config)?;
        Ok(Self { config, shared })
    }

    /// Attaches to shared namespace `namespace` created by another process.
    pub fn attach_shared(config: Config, namespace: &str) -> Result<Self> {
        let shared = SharedBackend::attach(namespace, &config)?;
        Ok(Self { config, shared })
    }

    /// Appends `data` to the shared store; the handle can be sent to any
    /// attached process.
    pub fn append_shared(&self, data: &[u8]) -> Result<OverflowHandle> {
        self.shared.append(data)
    }

    /// An owned copy of the blob, or `None` if the handle is stale,
    /// reclaimed or forged. The copy is safe from concurrent cleanup.
    pub fn resolve(&self, handle: &OverflowHandle) -> Option<Vec<u8>> {
        self.shared.resolve(handle)
    }

    /// Marks the blob consumed: `true` the first time, `false` for a repeat
    /// or a stale or forged handle.
    pub fn acknowledge_shared(&self, handle: &OverflowHandle) -> bool {
        self.shared.acknowledge(handle)
    }

    /// One reclamation pass; returns the chunks reclaimed.
    pub fn cleanup_shared(&self) -> usize {
        self.shared.cleanup_chunks()
    }

    /// Whether this store lives in shared memory.
    pub fn is_shared(&self) -> bool {
        true
    }

    /// The shared backend.
    pub fn shared_backend(&self) -> &SharedBackend {
        &self.shared
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// Background reclamation for a store held in an `Arc`.
pub trait BlobStoreLifecycleExt {
    /// Starts a thread that runs a reclamation pass every `interval`. It
    /// stops when the store is dropped, or when the returned handle's
    /// [`stop`](CleanupHandle::stop) is called.
    fn start_cleanup(&self, interval: Duration) -> CleanupHandle;
}

impl BlobStoreLifecycleExt for Arc<PinnedBlobStore> {
    fn start_cleanup(&self, interval: Duration) -> CleanupHandle {
        LifecycleManager::new().start_background_cleanup(self.shared.maintenance_target(), interval)
    }
}
