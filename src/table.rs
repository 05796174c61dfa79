//! The per-process table from chunk id to the chunk's memory (a mapping in
//! shared mode, an allocation in heap mode).
//!
//! Lookups are on every append, resolve and acknowledgement, so they take
//! no lock and touch no shared counter: each entry is an `ArcSwapOption`
//! (a read is a thread-local "debt" slot, not a shared read-modify-write),
//! and `with` lends the entry without cloning its `Arc`.
//!
//! An id names its entry directly: the entry is `id & (capacity - 1)`.
//! In shared mode an id is `epoch << SLOT_BITS | slot` and the index is
//! the registry slot, of which one chunk lives at a time; in heap mode ids
//! are dense from 0 (freed ids are reused) and below the capacity. Each
//! entry holds the chunk whose full id is asked for or nothing, so a
//! lookup of an id of another epoch misses. Inserting, removing and
//! looking up are O(1) whatever the number of chunks (a map copied on
//! every change, as before, made each chunk creation, first resolve and
//! release O(chunks)). Entries are allocated in segments of
//! [`SEGMENT`] as ids first reach them.

use arc_swap::ArcSwapOption;
use std::sync::{Arc, OnceLock};

/// Entries per segment.
pub(crate) const SEGMENT: usize = 1024;

/// What the table keeps: something that knows its chunk id.
pub(crate) trait Keyed {
    /// The full id of the chunk this is.
    fn table_id(&self) -> u32;
}

type Segment<T> = Box<[ArcSwapOption<T>]>;

/// Chunk id → `Arc<T>`, lock-free to read.
pub(crate) struct ChunkTable<T> {
    segments: Box<[OnceLock<Segment<T>>]>,
    mask: u32,
}

impl<T: Keyed> ChunkTable<T> {
    /// A table of `1 << index_bits` entries (at least one segment's worth).
    pub(crate) fn new(index_bits: u32) -> Self {
        let capacity = 1usize << index_bits.min(31);
        let segments = capacity.div_ceil(SEGMENT);
        Self {
            segments: (0..segments).map(|_| OnceLock::new()).collect(),
            mask: (capacity - 1) as u32,
        }
    }

    fn entry(&self, id: u32) -> Option<&ArcSwapOption<T>> {
        let i = (id & self.mask) as usize;
        self.segments
            .get(i / SEGMENT)?
            .get()
            .and_then(|s| s.get(i % SEGMENT))
    }

    fn entry_or_make(&self, id: u32) -> &ArcSwapOption<T> {
        let i = (id & self.mask) as usize;
        // `i < capacity`, so the segment exists.
        let seg = self.segments[i / SEGMENT]
            .get_or_init(|| (0..SEGMENT).map(|_| ArcSwapOption::empty()).collect());
        &seg[i % SEGMENT]
    }

    /// Calls `f` on entry `id` without cloning it.
    pub(crate) fn with<R>(&self, id: u32, f: impl FnOnce(&Arc<T>) -> R) -> Option<R> {
        self.try_with(id, f).ok()
    }

    /// Calls `f` on entry `id` without cloning it, or gives `f` back if
    /// there is no such entry (for the caller to open the chunk with).
    pub(crate) fn try_with<R, F: FnOnce(&Arc<T>) -> R>(&self, id: u32, f: F) -> Result<R, F> {
        let Some(e) = self.entry(id) else {
            return Err(f);
        };
        let guard = e.load();
        match &*guard {
            Some(v) if v.table_id() == id => Ok(f(v)),
            _ => Err(f),
        }
    }

    /// A clone of entry `id`.
    pub(crate) fn get(&self, id: u32) -> Option<Arc<T>> {
        self.with(id, Arc::clone)
    }

    /// Inserts `value` (whose id is `id`) unless `id` is present; returns
    /// the entry now there. An entry of another id at the same index (a
    /// chunk of an earlier epoch of the slot, gone since) is replaced.
    pub(crate) fn insert(&self, id: u32, value: Arc<T>) -> Arc<T> {
        debug_assert_eq!(value.table_id(), id);
        let mut kept = None;
        self.entry_or_make(id).rcu(|cur| match cur {
            Some(v) if v.table_id() == id => {
                kept = Some(Arc::clone(v));
                cur.clone()
            }
            _ => {
                kept = Some(Arc::clone(&value));
                Some(Arc::clone(&value))
            }
        });
        kept.unwrap_or(value)
    }

    /// Removes entry `id` (not an entry of another id at its index).
    pub(crate) fn remove(&self, id: u32) {
        if let Some(e) = self.entry(id) {
            let cur = e.load();
            if matches!(&*cur, Some(v) if v.table_id() == id) {
                let _ = e.compare_and_swap(&cur, None);
            }
        }
    }

    /// Keeps the entries for which `keep` is true.
    pub(crate) fn retain(&self, mut keep: impl FnMut(u32, &T) -> bool) {
        for seg in self.segments.iter().filter_map(OnceLock::get) {
            for e in seg.iter() {
                let cur = e.load();
                if let Some(v) = &*cur {
                    if !keep(v.table_id(), v) {
                        let _ = e.compare_and_swap(&cur, None);
                    }
                }
            }
        }
    }

    /// Entries (a scan of the segments made so far).
    pub(crate) fn len(&self) -> usize {
        let mut n = 0;
        self.each(|_| n += 1);
        n
    }

    /// Ids of the entries.
    pub(crate) fn ids(&self, out: &mut Vec<u32>) {
        self.each(|id| out.push(id));
    }

    fn each(&self, mut f: impl FnMut(u32)) {
        for seg in self.segments.iter().filter_map(OnceLock::get) {
            for e in seg.iter() {
                if let Some(v) = &*e.load() {
                    f(v.table_id());
                }
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct V(u32, u64);
    impl Keyed for V {
        fn table_id(&self) -> u32 {
            self.0
        }
    }

    #[test]
    fn insert_keeps_the_first_and_remove_and_retain_work() {
        let t: ChunkTable<V> = ChunkTable::new(12);
        assert_eq!(t.insert(3, Arc::new(V(3, 30))).1, 30);
        assert_eq!(
            t.insert(3, Arc::new(V(3, 31))).1,
            30,
            "the first entry stays"
        );
        t.insert(4, Arc::new(V(4, 40)));
        assert_eq!(t.with(4, |v| v.1), Some(40));
        assert_eq!(t.len(), 2);
        t.remove(3);
        assert_eq!(t.get(3), None);
        t.retain(|_, v| v.1 != 40);
        assert_eq!(t.len(), 0);
    }

    /// An id of another epoch of the same slot misses, replaces the old
    /// entry when inserted, and removing the old id leaves the new one.
    #[test]
    fn an_id_of_another_epoch_misses_and_replaces_the_old_entry() {
        let t: ChunkTable<V> = ChunkTable::new(12);
        let old = 5;
        let new = (1 << 12) | 5;
        t.insert(old, Arc::new(V(old, 1)));
        assert_eq!(t.get(new), None, "same slot, another epoch");
        assert_eq!(t.insert(new, Arc::new(V(new, 2))).1, 2);
        assert_eq!(t.get(old), None);
        t.remove(old);
        assert_eq!(t.with(new, |v| v.1), Some(2));
        let mut ids = vec![];
        t.ids(&mut ids);
        assert_eq!(ids, vec![new]);
    }

    /// Ids past the first segment and at the last index work; segments are
    /// made as ids reach them.
    #[test]
    fn entries_in_every_segment() {
        let t: ChunkTable<V> = ChunkTable::new(20);
        for id in [0, SEGMENT as u32, (1 << 20) - 1] {
            t.insert(id, Arc::new(V(id, id as u64)));
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.with((1 << 20) - 1, |v| v.1), Some((1 << 20) - 1));
        assert_eq!(t.segments.iter().filter(|s| s.get().is_some()).count(), 3);
    }
}
