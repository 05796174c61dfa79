//! The byte layout of the shared-memory format, version 5: every offset of
//! every structure lives here and nowhere else.
//!
//! A namespace `ns` is a set of files in the shm directory (`/dev/shm`):
//!
//! * `{ns}_ctrl` — the control block ([`CtrlHeader`], then the chunk registry);
//! * `{ns}_data_{id}` — one data chunk: a [`ChunkHeader`], then entries, each an
//!   [`EntryHeader`] followed by the payload padded to [`ENTRY_ALIGN`].
//!
//! Every field is a little-endian fixed-width integer accessed through an
//! atomic type (even the fields that never change after creation), so that no
//! access to memory another process may write is a data race in Rust's model.
//! There are no pointers in shared memory, only chunk ids and offsets, and every
//! offset read from shared memory is bounds-checked against the length of the
//! local mapping before use.
//!
//! ```text
//! Control block `{ns}_ctrl` (CTRL_SIZE = 33 024 bytes)
//! off  size field            meaning
//!   0     8 magic            "SFB_CTL2"
//!   8     4 version          4
//!  12     4 ctrl_size        CTRL_SIZE
//!  16     4 chunk_size       bytes per standard chunk file (header included)
//!  20     4 max_chunks       live chunk files allowed, 0 = unlimited
//!  24     4 creator_pid      pid of the creator (display; liveness is the lock)
//!  28     4 pool_capacity    warm-pool slots in use (<= POOL_SLOTS)
//!  32     8 creator_start    creator start time, clock ticks since boot
//!  40     8 tag_key          random key mixed into every entry tag
//!  48     8 decay_ms         grace period after the last acknowledgement
//!  56     8 ttl_ms           unacknowledged data expires after this
//!  64     8 active           (generation << 32) | chunk id of the append chunk
//!  72     8 (reserved)       chunk files are counted by their registry slots
//!  80     4 generation       global generation counter
//!  84     4 closed           1 once the namespace is being removed
//!  88     8 created_unix_ms  creation wall-clock time (display)
//!  96    16 pool[4]          warm chunks ready to activate: id + 1, 0 = empty
//! 112    16 (reserved)
//! 128     8 recycled         chunks recycled in place (statistics)
//! 136     8 retired          chunks unlinked
//! 144     8 expired          chunks reclaimed by TTL
//! 152    40 (reserved)
//! 192     8 last_ack_ms      ms of the latest acknowledgement (a hint: a
//!                            rollover's reclamation pass is skipped while
//!                            nothing was acknowledged since the last one)
//! 200    56 (reserved)
//! 256 32768 registry[4096]   one u64 word per slot (see crate::registry):
//!                            bits 0-1 state (0 FREE, 1 CREATING, 2 READY,
//!                            3 ABANDONED), bits 2-21 epoch, bit 22 a
//!                            claim not yet counted against max_chunks,
//!                            bits 23-31 0,
//!                            bits 32-63 low 32 bits of the coarse-monotonic
//!                            ms of a creation's last step (CREATING and
//!                            ABANDONED only). The chunk in slot s at epoch e
//!                            has id e << 12 | s.
//!
//! Chunk file `{ns}_data_{id}` (CHUNK_HEADER_SIZE = 128, then entries)
//! off  size field            meaning
//!   0     8 magic            "SFB_CHK2"
//!   8     4 chunk_id         id of this chunk (must match the file name)
//!  12     4 size             file size in bytes (must match fstat)
//!  16     8 alloc            bits 0-31 next free offset, bit 63 sealed (no
//!                            more reservations); bits 32-62 are 0
//!  24     8 state_gen        bits 0-31 state (FREE/IN_USE/RECLAIMING/RETIRED),
//!                            bits 32-63 generation
//!  32     4 ready            bytes from the start of the file backed by
//!                            memory (writes below it cannot fault); 0: all
//!                            of it. A new chunk is prepared in steps of
//!                            PREPARE_STEP; reservations stop at `ready`
//!  36     4 (reserved, 0)    tools count acknowledged entries by walking them
//!  40     8 first_write_ms   coarse-monotonic time of the first append
//!  48     8 sealed_ms        time the chunk was sealed (TTL starts here)
//!  56     8 empty_since_ms   time of the last acknowledgement (the decay runs
//!                            from it once all entries are acknowledged), or
//!                            the time a pooled chunk was freed
//!  64     4 pins             readers (views, copies, acks) in any process
//!  68     4 flags            bit 0 DEDICATED (one oversized blob)
//!  72     8 activated_ms     when the chunk last became the append target
//!  80     8 incarnation      the control block's tag_key: which incarnation
//!                            of the namespace made this file
//!  88     8 walked           bits 0-31 offset up to which every entry is
//!                            known committed, 32-63 the generation walked
//!  96     8 acked            the same for acknowledged entries
//! 104     8 claimed_ms       time of the RECLAIMING claim (its claimer is
//!                            presumed dead after the grace period)
//! 112    16 (reserved)
//!
//! Entry at an 8-aligned offset inside a chunk (ENTRY_HEADER_SIZE = 16)
//! off  size field            meaning
//!   0     4 len              payload length
//!   4     4 state            bits 0-1: 1 committed, 2 acknowledged (anything
//!                            else: not yet written); bits 2-31: the low 30
//!                            bits of the chunk generation it was written in
//!   8     8 tag              keyed hash of (key, chunk, generation, offset,
//!                            len): a handle must reproduce it, and a walk
//!                            accepts an entry only with a matching tag
//!  16   len payload          then zero to seven padding bytes
//! ```

use crate::sync::{AtomicU32, AtomicU64};

/// `"SFB_CTL2"` read as a little-endian u64.
pub const CTRL_MAGIC: u64 = u64::from_le_bytes(*b"SFB_CTL2");
/// `"SFB_CHK2"` read as a little-endian u64.
pub const CHUNK_MAGIC: u64 = u64::from_le_bytes(*b"SFB_CHK2");
/// Version of this layout.
pub const FORMAT_VERSION: u32 = 5;

/// Bytes of the control header before the registry.
pub const CTRL_HEADER_SIZE: usize = 256;
/// Slots in the chunk registry: the most chunk files one namespace can hold.
pub const REGISTRY_SLOTS: usize = 1 << SLOT_BITS;
/// Bits of a chunk id that name its registry slot.
pub const SLOT_BITS: u32 = 12;
/// Size of the control file.
pub const CTRL_SIZE: usize = CTRL_HEADER_SIZE + REGISTRY_SLOTS * 8;
/// Registry slot word: the state bits.
pub const SLOT_STATE_MASK: u64 = 0b11;
/// Registry slot state: no chunk.
pub const SLOT_FREE: u64 = 0;
/// Registry slot state: a chunk file is being created (stamped).
pub const SLOT_CREATING: u64 = 1;
/// Registry slot state: a formatted chunk file.
pub const SLOT_READY: u64 = 2;
/// Registry slot state: a creation presumed dead; its file must be unlinked.
pub const SLOT_ABANDONED: u64 = 3;
/// Registry slot word: a claim not yet counted against `max_chunks`
/// (given back at once if over it).
pub const SLOT_TENTATIVE: u64 = 1 << 22;
/// Registry slot word: first bit of the epoch.
pub const SLOT_EPOCH_SHIFT: u32 = 2;
/// Registry slot word: bits of the epoch (ids are 32 bits: 20 + 12).
pub const SLOT_EPOCH_BITS: u32 = 32 - SLOT_BITS;
/// Registry slot word: first bit of the creation stamp.
pub const SLOT_STAMP_SHIFT: u32 = 32;
/// Slots of the warm pool (chunks kept mapped and faulted for reuse).
pub const POOL_SLOTS: usize = 4;

/// Bytes of the chunk header before the first entry.
pub const CHUNK_HEADER_SIZE: usize = 128;
/// A new standard chunk is backed by memory in steps of this many bytes
/// (the first at creation, the next ones ahead of the appenders), so that
/// no append waits for a whole chunk's pages to be allocated.
pub const PREPARE_STEP: usize = 256 << 10;
/// Bytes of the entry header before the payload.
pub const ENTRY_HEADER_SIZE: usize = 16;
/// Entries start at multiples of this.
pub const ENTRY_ALIGN: usize = 8;
/// Smallest chunk (or page) size accepted: room for one small blob. A size
/// that is not a multiple of [`ENTRY_ALIGN`] is rounded up to one.
pub const MIN_CHUNK_SIZE: usize = CHUNK_HEADER_SIZE + ENTRY_HEADER_SIZE + 1;
/// Largest chunk file: offsets and sizes are u32.
pub const MAX_CHUNK_SIZE: usize = (u32::MAX as usize) & !(ENTRY_ALIGN - 1);
/// Id meaning "no chunk" in the `active` word.
pub const NO_CHUNK: u32 = u32::MAX;

/// Chunk state: in the warm pool, sealed, waiting to be activated.
pub const STATE_FREE: u32 = 0;
/// Chunk state: holds (or may receive) entries of the current generation.
pub const STATE_IN_USE: u32 = 1;
/// Chunk state: claimed by one reclaimer, about to be recycled or retired.
pub const STATE_RECLAIMING: u32 = 2;
/// Chunk state: unlinked; the memory stays valid only for existing mappings.
pub const STATE_RETIRED: u32 = 3;

/// `alloc` bit: the chunk takes no more reservations.
pub const ALLOC_SEALED: u64 = 1 << 63;

/// Chunk flag: the chunk holds one oversized blob and is never pooled.
pub const FLAG_DEDICATED: u32 = 1;

/// Entry state kind: not written (yet) in this generation.
pub const ENTRY_RESERVED: u32 = 0;
/// Entry state: payload complete and visible.
pub const ENTRY_COMMITTED: u32 = 1;
/// Entry state: acknowledged by a consumer.
pub const ENTRY_ACKED: u32 = 2;

/// The control block header. See the module documentation for offsets.
#[repr(C)]
pub struct CtrlHeader {
    /// [`CTRL_MAGIC`].
    pub magic: AtomicU64,
    /// [`FORMAT_VERSION`].
    pub version: AtomicU32,
    /// [`CTRL_SIZE`].
    pub ctrl_size: AtomicU32,
    /// Bytes per standard chunk file.
    pub chunk_size: AtomicU32,
    /// Live chunk files allowed, 0 = unlimited.
    pub max_chunks: AtomicU32,
    /// Creator pid (display only).
    pub creator_pid: AtomicU32,
    /// Warm-pool slots in use.
    pub pool_capacity: AtomicU32,
    /// Creator start time in clock ticks since boot.
    pub creator_start: AtomicU64,
    /// Key of the entry tags.
    pub tag_key: AtomicU64,
    /// Decay grace period, ms.
    pub decay_ms: AtomicU64,
    /// TTL, ms.
    pub ttl_ms: AtomicU64,
    /// `(generation << 32) | chunk id` of the append chunk.
    pub active: AtomicU64,
    /// Reserved (chunk files are counted by their registry slots).
    pub _reserved0: [AtomicU32; 2],
    /// Global generation counter.
    pub generation: AtomicU32,
    /// Non-zero once the namespace is being removed.
    pub closed: AtomicU32,
    /// Creation time, Unix ms.
    pub created_unix_ms: AtomicU64,
    /// Warm pool: chunk id + 1, 0 = empty.
    pub pool: [AtomicU32; POOL_SLOTS],
    /// Reserved.
    pub _reserved1: [AtomicU32; 4],
    /// Chunks recycled in place.
    pub recycled: AtomicU64,
    /// Chunks unlinked.
    pub retired: AtomicU64,
    /// Chunks reclaimed by TTL.
    pub expired: AtomicU64,
    /// Reserved.
    pub _reserved2: [AtomicU64; 5],
    /// Coarse-monotonic ms of the latest acknowledgement (a hint, raised at
    /// most once a millisecond per thread): a rollover runs a reclamation
    /// pass before creating a chunk only if an acknowledgement came since
    /// its process's last pass (or a TTL may have run out meanwhile).
    pub last_ack_ms: AtomicU64,
    /// Reserved.
    pub _reserved3: [AtomicU64; 7],
}

/// The header at the start of every chunk. See the module documentation.
#[repr(C)]
pub struct ChunkHeader {
    /// [`CHUNK_MAGIC`].
    pub magic: AtomicU64,
    /// Chunk id.
    pub chunk_id: AtomicU32,
    /// File size.
    pub size: AtomicU32,
    /// Next free offset | writers in flight << 32 | sealed bit 63.
    pub alloc: AtomicU64,
    /// State | generation << 32.
    pub state_gen: AtomicU64,
    /// Bytes from the start of the file backed by memory, so that writes
    /// below cannot fault; 0 for all of it. Only moves forward within a
    /// life of the chunk.
    pub ready: AtomicU32,
    /// Reserved (0): tools count acknowledged entries by walking them (a
    /// shared counter cost each acknowledgement a read-modify-write).
    pub acks: AtomicU32,
    /// First append, coarse ms.
    pub first_write_ms: AtomicU64,
    /// Sealed at, coarse ms.
    pub sealed_ms: AtomicU64,
    /// All acknowledged since (or freed at, for pooled chunks), coarse ms.
    pub empty_since_ms: AtomicU64,
    /// Readers in any process.
    pub pins: AtomicU32,
    /// [`FLAG_DEDICATED`].
    pub flags: AtomicU32,
    /// Last activation time, coarse ms.
    pub activated_ms: AtomicU64,
    /// Incarnation of the namespace that made the file (its tag key).
    pub incarnation: AtomicU64,
    /// Committed prefix cursor: offset | generation << 32.
    pub walked: AtomicU64,
    /// Acknowledged prefix cursor: offset | generation << 32.
    pub acked: AtomicU64,
    /// When a reclaimer claimed the chunk (RECLAIMING), coarse ms; 0 when
    /// not claimed. A claim older than the grace period is a dead
    /// claimer's, which any pass finishes.
    pub claimed_ms: AtomicU64,
    /// Reserved.
    pub _reserved: [AtomicU64; 2],
}

/// The header before every payload.
#[repr(C)]
pub struct EntryHeader {
    /// Payload length.
    pub len: AtomicU32,
    /// [`ENTRY_RESERVED`], [`ENTRY_COMMITTED`] or [`ENTRY_ACKED`].
    pub state: AtomicU32,
    /// Keyed tag.
    pub tag: AtomicU64,
}

// The documented offsets are checked by the compiler (loom's atomics have
// another size, so only without loom).
#[cfg(not(loom))]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<CtrlHeader>() == CTRL_HEADER_SIZE);
    assert!(offset_of!(CtrlHeader, chunk_size) == 16);
    assert!(offset_of!(CtrlHeader, creator_start) == 32);
    assert!(offset_of!(CtrlHeader, ttl_ms) == 56);
    assert!(offset_of!(CtrlHeader, active) == 64);
    assert!(offset_of!(CtrlHeader, closed) == 84);
    assert!(offset_of!(CtrlHeader, last_ack_ms) == 192);
    assert!(offset_of!(CtrlHeader, pool) == 96);
    assert!(offset_of!(CtrlHeader, recycled) == 128);
    assert!(offset_of!(CtrlHeader, expired) == 144);
    assert!(size_of::<ChunkHeader>() == CHUNK_HEADER_SIZE);
    assert!(offset_of!(ChunkHeader, alloc) == 16);
    assert!(offset_of!(ChunkHeader, state_gen) == 24);
    assert!(offset_of!(ChunkHeader, ready) == 32);
    assert!(offset_of!(ChunkHeader, empty_since_ms) == 56);
    assert!(offset_of!(ChunkHeader, pins) == 64);
    assert!(offset_of!(ChunkHeader, flags) == 68);
    assert!(offset_of!(ChunkHeader, activated_ms) == 72);
    assert!(offset_of!(ChunkHeader, incarnation) == 80);
    assert!(offset_of!(ChunkHeader, walked) == 88);
    assert!(offset_of!(ChunkHeader, acked) == 96);
    assert!(offset_of!(ChunkHeader, claimed_ms) == 104);
    assert!(size_of::<EntryHeader>() == ENTRY_HEADER_SIZE);
    assert!(offset_of!(EntryHeader, tag) == 8);
    assert!(CTRL_SIZE == 33_024);
    assert!(REGISTRY_SLOTS == 1 << SLOT_BITS);
};

/// Packs a chunk state and generation into a `state_gen` word.
pub const fn state_gen(state: u32, generation: u32) -> u64 {
    ((generation as u64) << 32) | state as u64
}

/// The state half of a `state_gen` word.
pub const fn state_of(word: u64) -> u32 {
    word as u32
}

/// The generation half of a `state_gen` word (or of an `active` word).
pub const fn generation_of(word: u64) -> u32 {
    (word >> 32) as u32
}

/// The chunk id half of an `active` word.
pub const fn id_of(word: u64) -> u32 {
    word as u32
}

/// Next free offset in an `alloc` word.
pub const fn alloc_used(word: u64) -> u32 {
    word as u32
}

/// Bits 32-47 of an `alloc` word: always 0 in this version (the format
/// once counted writers in flight there); kept for inspection tools.
pub const fn alloc_writers(word: u64) -> u64 {
    (word >> 32) & 0xFFFF
}

/// An entry state word: `kind` in bits 0-1, the generation's low 30 bits above.
pub const fn entry_state(generation: u32, kind: u32) -> u32 {
    (generation << 2) | (kind & 3)
}

/// The kind (committed, acknowledged...) of an entry state word.
pub const fn entry_kind(state: u32) -> u32 {
    state & 3
}

/// Whether an entry state word was written in `generation` (its low 30 bits).
pub const fn entry_in_generation(state: u32, generation: u32) -> bool {
    state >> 2 == generation & 0x3FFF_FFFF
}

/// Whether an `alloc` word is sealed.
pub const fn alloc_sealed(word: u64) -> bool {
    word & ALLOC_SEALED != 0
}

/// Bytes an entry of `len` payload bytes takes, header and padding included,
/// or `None` if that overflows u32.
pub const fn entry_footprint(len: usize) -> Option<usize> {
    let total = ENTRY_HEADER_SIZE + len + (ENTRY_ALIGN - 1);
    if len > u32::MAX as usize || total > u32::MAX as usize {
        return None;
    }
    Some(total & !(ENTRY_ALIGN - 1))
}

/// The keyed tag of an entry: a handle must reproduce it to resolve, and
/// the reclaimers' walk checks it before counting an entry as written (so
/// payload bytes that imitate entry headers of a later generation cannot
/// pass for a committed entry: they would need the namespace's key).
///
/// Not cryptographic: it makes a forged or corrupted handle, or a crafted
/// payload, pass with probability 2⁻⁶⁴, and it is cheap (three multiplies).
/// Format 3: it covers what the walker knows (key, chunk, generation,
/// offset, length); format 2 also mixed in the handle's timestamp.
pub const fn entry_tag(key: u64, chunk: u32, generation: u32, offset: u32, len: u32) -> u64 {
    let a = key ^ ((chunk as u64) << 32 | generation as u64);
    let b = (offset as u64) << 32 | len as u64;
    mix(mix(a) ^ b)
}

/// The splitmix64 finaliser.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// File name of a namespace's control block.
pub fn ctrl_file_name(ns: &str) -> String {
    format!("{ns}_ctrl")
}

/// File name of a data chunk.
pub fn chunk_file_name(ns: &str, id: u32) -> String {
    format!("{ns}_data_{id}")
}

/// What a file in the shm directory is, judged by its name alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// `{ns}_ctrl`.
    Ctrl {
        /// Namespace.
        ns: String,
    },
    /// `{ns}_data_{id}`.
    Chunk {
        /// Namespace.
        ns: String,
        /// Chunk id.
        id: u32,
    },
}

/// Parses a file name of the shm directory; `None` for files of other programs.
///
/// Names are parsed from the right, so a namespace may itself contain `_`.
pub fn parse_file_name(name: &str) -> Option<FileKind> {
    if let Some(ns) = name.strip_suffix("_ctrl") {
        return crate::namespace::is_valid(ns).then(|| FileKind::Ctrl { ns: ns.to_owned() });
    }
    let (rest, digits) = name.rsplit_once('_')?;
    if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number: u32 = digits.parse().ok()?;
    if let Some(ns) = rest.strip_suffix("_data") {
        return crate::namespace::is_valid(ns).then(|| FileKind::Chunk {
            ns: ns.to_owned(),
            id: number,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_even_with_underscores() {
        for ns in ["a", "my_app", "x_data", "y_init_3", "z.v2-b"] {
            assert_eq!(
                parse_file_name(&ctrl_file_name(ns)),
                Some(FileKind::Ctrl { ns: ns.into() })
            );
            assert_eq!(
                parse_file_name(&chunk_file_name(ns, 42)),
                Some(FileKind::Chunk {
                    ns: ns.into(),
                    id: 42
                })
            );
        }
        assert_eq!(parse_file_name("pulse-shm-1234"), None);
        assert_eq!(parse_file_name("x_data_"), None);
        assert_eq!(parse_file_name("x_data_99999999999"), None);
        assert_eq!(parse_file_name("_ctrl"), None);
        assert_eq!(parse_file_name("x_init_3"), None);
    }

    #[test]
    fn entry_footprint_is_aligned_and_checked() {
        assert_eq!(entry_footprint(0), Some(16));
        assert_eq!(entry_footprint(1), Some(24));
        assert_eq!(entry_footprint(8), Some(24));
        assert_eq!(entry_footprint(9), Some(32));
        assert_eq!(entry_footprint(u32::MAX as usize), None);
    }

    #[test]
    fn tags_depend_on_every_input() {
        let base = entry_tag(1, 2, 3, 4, 5);
        assert_ne!(base, entry_tag(9, 2, 3, 4, 5));
        assert_ne!(base, entry_tag(1, 9, 3, 4, 5));
        assert_ne!(base, entry_tag(1, 2, 9, 4, 5));
        assert_ne!(base, entry_tag(1, 2, 3, 9, 5));
        assert_ne!(base, entry_tag(1, 2, 3, 4, 9));
    }

    #[test]
    fn words_pack_and_unpack() {
        let w = state_gen(STATE_RETIRED, 77);
        assert_eq!(state_of(w), STATE_RETIRED);
        assert_eq!(generation_of(w), 77);
        let a = 4096u64 | ALLOC_SEALED;
        assert_eq!(alloc_used(a), 4096);
        assert_eq!(alloc_writers(a), 0);
        assert!(alloc_sealed(a));
        let st = entry_state(0xFFFF_FFF1, ENTRY_ACKED);
        assert_eq!(entry_kind(st), ENTRY_ACKED);
        assert!(entry_in_generation(st, 0xFFFF_FFF1));
        assert!(
            entry_in_generation(st, 0x3FFF_FFF1),
            "30 bits of generation"
        );
        assert!(!entry_in_generation(st, 0xFFFF_FFF2));
    }
}
