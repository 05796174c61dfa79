//! Tuning knobs shared by both modes.

/// Lifecycle and sizing configuration.
///
/// In shared mode the creator's `decay_timeout_ms` and `default_ttl_ms` are
/// written into the control block and every attached process reclaims by
/// those, so processes with different configurations cannot disagree about
/// when data may go. `prefetch_threshold` applies to each process's own
/// appends; `page_size` sizes heap-mode pages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Heap-mode page size in bytes.
    pub page_size: usize,
    /// Fill ratio of the current chunk at which the next one is prepared in
    /// the background (0.0-1.0).
    pub prefetch_threshold: f32,
    /// Grace period after a chunk's last entry is acknowledged before it is
    /// reclaimed, in milliseconds.
    pub decay_timeout_ms: u64,
    /// Unacknowledged data is reclaimed this long after its chunk was sealed,
    /// in milliseconds (consumers that crashed never acknowledge).
    pub default_ttl_ms: u64,
}

impl Default for Config {
    /// 1 MiB pages, prefetch at 80 %, 5 s decay, 30 s TTL.
    fn default() -> Self {
        Self {
            page_size: 1 << 20,
            prefetch_threshold: 0.8,
            decay_timeout_ms: 5_000,
            default_ttl_ms: 30_000,
        }
    }
}

impl Config {
    /// 2 MiB pages, prefetch at 80 %, 7 s decay, 30 s TTL.
    pub fn performance() -> Self {
        Self {
            page_size: 2 << 20,
            prefetch_threshold: 0.8,
            decay_timeout_ms: 7_000,
            default_ttl_ms: 30_000,
        }
    }

    /// 512 KiB pages, prefetch at 90 %, 1 s decay, 30 s TTL.
    pub fn memory_efficient() -> Self {
        Self {
            page_size: 512 << 10,
            prefetch_threshold: 0.9,
            decay_timeout_ms: 1_000,
            default_ttl_ms: 30_000,
        }
    }

    /// The prefetch threshold clamped to `0.0..=1.0` (NaN counts as 1.0:
    /// never prefetch early).
    pub(crate) fn prefetch_ratio(&self) -> f64 {
        let t = self.prefetch_threshold as f64;
        if t.is_nan() {
            1.0
        } else {
            t.clamp(0.0, 1.0)
        }
    }
}

/// Which storage a store uses (the original crate's type); see
/// [`PinnedBlobStore::backend_mode`](crate::PinnedBlobStore::backend_mode).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BackendMode {
    /// Pages in this process's memory.
    #[default]
    Heap,
    /// A namespace in POSIX shared memory.
    Shared {
        /// The namespace.
        namespace: String,
        /// Size of a standard chunk file.
        chunk_size: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_documented_values() {
        let d = Config::default();
        assert_eq!(
            (d.page_size, d.decay_timeout_ms, d.default_ttl_ms),
            (1 << 20, 5_000, 30_000)
        );
        let p = Config::performance();
        assert_eq!((p.page_size, p.decay_timeout_ms), (2 << 20, 7_000));
        let m = Config::memory_efficient();
        assert_eq!(
            (m.page_size, m.prefetch_threshold, m.decay_timeout_ms),
            (512 << 10, 0.9, 1_000)
        );
        let nan = Config {
            prefetch_threshold: f32::NAN,
            ..d
        };
        assert_eq!(nan.prefetch_ratio(), 1.0);
    }
}
