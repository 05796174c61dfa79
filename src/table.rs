//! The per-process table from chunk id to the chunk's memory (a mapping in
//! shared mode, an allocation in heap mode).
//!
//! Lookups are on every append, resolve and acknowledgement, so they take
//! no lock and touch no shared counter: the table is an immutable map
//! behind an `ArcSwap` (a read is a thread-local "debt" slot, not a shared
//! read-modify-write), and `with` lends the entry without cloning its
//! `Arc`. Changes — a chunk opened, created or forgotten, a few times per
//! chunk lifetime — copy the map.

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Fibonacci hashing of a u32 id: ids are small and dense, SipHash would
/// cost more than the rest of a lookup.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Map<T> = HashMap<u32, Arc<T>, BuildHasherDefault<IdHasher>>;

/// Chunk id → `Arc<T>`, lock-free to read.
pub(crate) struct ChunkTable<T> {
    map: ArcSwap<Map<T>>,
}

impl<T> Default for ChunkTable<T> {
    fn default() -> Self {
        Self {
            map: ArcSwap::from_pointee(Map::default()),
        }
    }
}

impl<T> ChunkTable<T> {
    /// A snapshot of the whole table (valid while held).
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Map<T>>> {
        self.map.load()
    }

    /// Calls `f` on entry `id` without cloning it.
    pub(crate) fn with<R>(&self, id: u32, f: impl FnOnce(&Arc<T>) -> R) -> Option<R> {
        self.map.load().get(&id).map(f)
    }

    /// A clone of entry `id`.
    pub(crate) fn get(&self, id: u32) -> Option<Arc<T>> {
        self.with(id, Arc::clone)
    }

    /// Inserts `value` unless `id` is present; returns the entry now there.
    pub(crate) fn insert(&self, id: u32, value: Arc<T>) -> Arc<T> {
        let mut kept = None;
        self.map.rcu(|m| {
            if let Some(existing) = m.get(&id) {
                kept = Some(Arc::clone(existing));
                return Arc::clone(m);
            }
            kept = Some(Arc::clone(&value));
            let mut next = Map::clone(m);
            next.insert(id, Arc::clone(&value));
            Arc::new(next)
        });
        kept.unwrap_or(value)
    }

    /// Removes entry `id`.
    pub(crate) fn remove(&self, id: u32) {
        self.retain(|k, _| k != id);
    }

    /// Keeps the entries for which `keep` is true.
    pub(crate) fn retain(&self, mut keep: impl FnMut(u32, &T) -> bool) {
        if self.map.load().iter().all(|(k, v)| keep(*k, v)) {
            return;
        }
        self.map.rcu(|m| {
            let mut next = Map::clone(m);
            next.retain(|k, v| keep(*k, v));
            Arc::new(next)
        });
    }

    /// Entries.
    pub(crate) fn len(&self) -> usize {
        self.map.load().len()
    }

    /// Ids of the entries.
    pub(crate) fn ids(&self, out: &mut Vec<u32>) {
        out.extend(self.map.load().keys().copied());
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn insert_keeps_the_first_and_remove_and_retain_work() {
        let t: ChunkTable<u64> = ChunkTable::default();
        assert_eq!(*t.insert(3, Arc::new(30)), 30);
        assert_eq!(*t.insert(3, Arc::new(31)), 30, "the first entry stays");
        t.insert(4, Arc::new(40));
        assert_eq!(t.with(4, |v| **v), Some(40));
        assert_eq!(t.len(), 2);
        t.remove(3);
        assert_eq!(t.get(3), None);
        t.retain(|_, v| *v != 40);
        assert_eq!(t.len(), 0);
    }
}
