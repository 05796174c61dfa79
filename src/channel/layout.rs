//! Byte layout of a channel file, `{ns}_chan+{name}` (format version 1).
//!
//! Every offset of the file is defined here, checked at compile time, and
//! documented byte by byte in `docs/design.md`. Little-endian, fixed-width,
//! no pointers: only sequence numbers and indices, each bounds-checked by
//! the reader.
//!
//! ```text
//! 0      ChanHeader   (1024 bytes: identity, then one cache line per hot word)
//! 1024   Record × 64  (64 bytes each: producers 0..32, consumers 32..64)
//! 5120   Slot × slots (slot_size bytes each: a 64-byte slot header, then
//!                      up to slot_size - 64 inline payload bytes)
//! ```

use crate::sync::{AtomicU32, AtomicU64};

/// `b"SFBCHAN1"` little-endian: the first 8 bytes of every channel file.
pub(crate) const CHAN_MAGIC: u64 = u64::from_le_bytes(*b"SFBCHAN1");
/// Version of this layout.
pub(crate) const CHAN_VERSION: u32 = 1;

/// Kind word of a broadcast channel (publishers and subscribers).
pub(crate) const KIND_BROADCAST: u32 = 1;
/// Kind word of a work queue (senders and receivers).
pub(crate) const KIND_QUEUE: u32 = 2;

/// Producers one channel admits at once.
pub(crate) const MAX_PRODUCERS: usize = 32;
/// Consumers one channel admits at once.
pub(crate) const MAX_CONSUMERS: usize = 32;
/// Participant records: producers first, then consumers.
pub(crate) const RECORDS: usize = MAX_PRODUCERS + MAX_CONSUMERS;

/// Size of the header.
pub(crate) const HEADER_SIZE: usize = 1024;
/// Size of one participant record.
pub(crate) const RECORD_SIZE: usize = 64;
/// Offset of the first participant record.
pub(crate) const RECORDS_OFFSET: usize = HEADER_SIZE;
/// Offset of the first slot.
pub(crate) const SLOTS_OFFSET: usize = RECORDS_OFFSET + RECORDS * RECORD_SIZE;
/// Size of a slot's header (state, length, flags, spare).
pub(crate) const SLOT_HEADER_SIZE: usize = 64;

/// Fewest slots a ring may have.
pub(crate) const MIN_SLOTS: u32 = 2;
/// Most slots a ring may have.
pub(crate) const MAX_SLOTS: u32 = 1 << 20;
/// Smallest slot (header and 64 inline bytes, enough for a handle).
pub(crate) const MIN_SLOT_SIZE: u32 = 128;
/// Largest slot.
pub(crate) const MAX_SLOT_SIZE: u32 = (16 << 20) + 64;
/// Largest ring (all slots together): 1 GiB.
pub(crate) const MAX_RING_BYTES: u64 = 1 << 30;

/// Slot flag: the payload is a 24-byte store handle, not the message.
pub(crate) const FLAG_OVERFLOW: u32 = 1;
/// Slot flag: the slot was claimed by a producer that died before
/// publishing it; it carries no message and consumers pass over it.
pub(crate) const FLAG_SKIPPED: u32 = 2;

/// Slot state tags (low 2 bits of the state word).
pub(crate) const TAG_FREE: u64 = 0;
/// Claimed by the producer named in bits 2..8, being written.
pub(crate) const TAG_CLAIMED: u64 = 1;
/// Published: readable by consumers.
pub(crate) const TAG_READY: u64 = 2;

/// A slot state word: `lap << 8 | owner << 2 | tag`. The lap is the
/// sequence number divided by the ring's slot count, so one word names the
/// message (sequence) it belongs to and who holds it.
pub(crate) const fn slot_state(lap: u64, owner: u32, tag: u64) -> u64 {
    (lap << 8) | ((owner as u64 & 0x3f) << 2) | (tag & 3)
}
/// Lap of a state word.
pub(crate) const fn state_lap(w: u64) -> u64 {
    w >> 8
}
/// Owner (producer index) of a state word.
pub(crate) const fn state_owner(w: u64) -> u32 {
    ((w >> 2) & 0x3f) as u32
}
/// Tag of a state word.
pub(crate) const fn state_tag(w: u64) -> u64 {
    w & 3
}

/// The frontier word: `seq << 8 | join_epoch`. Every message below `seq`
/// has been released by every consumer and its slot freed; a subscriber
/// that joins bumps the epoch, so that a reclaimer that computed its bound
/// before the join fails its CAS and looks again.
pub(crate) const fn frontier_word(seq: u64, epoch: u64) -> u64 {
    (seq << 8) | (epoch & 0xff)
}
/// Sequence part of a frontier word.
pub(crate) const fn frontier_seq(w: u64) -> u64 {
    w >> 8
}
/// Epoch part of a frontier word.
pub(crate) const fn frontier_epoch(w: u64) -> u64 {
    w & 0xff
}

/// The bits of a participant mask that name records (one per producer or
/// consumer); anything above is scribble and ignored.
pub(crate) const MASK_BITS: u64 = (1 << MAX_CONSUMERS) - 1;

/// A consumer's `low` when it holds nothing and has no cursor (queue).
pub(crate) const LOW_NONE: u64 = u64::MAX;

/// Lock byte of participant record `index` (an OFD lock, taken past the end
/// of the file, so it never conflicts with anything else).
pub(crate) const fn lock_byte(index: usize) -> u64 {
    (1 << 40) + index as u64
}

/// The channel header: identity (immutable after creation), then the
/// shared words, each on its own cache line.
#[repr(C)]
pub(crate) struct ChanHeader {
    /// [`CHAN_MAGIC`]; stored last (Release) by the creator.
    pub magic: AtomicU64, // 0
    /// [`CHAN_VERSION`].
    pub version: AtomicU32, // 8
    /// [`KIND_BROADCAST`] or [`KIND_QUEUE`].
    pub kind: AtomicU32, // 12
    /// Number of slots (a power of two).
    pub slots: AtomicU32, // 16
    /// Bytes per slot (a multiple of 64).
    pub slot_size: AtomicU32, // 20
    /// Tag key of the store incarnation the channel belongs to.
    pub store_key: AtomicU64, // 24
    /// Wall-clock creation time, ms since the Unix epoch.
    pub created_unix_ms: AtomicU64, // 32
    /// Producer registrations so far (a channel never connected is not
    /// reported disconnected).
    pub producers_ever: AtomicU64, // 40
    _pad0: [u8; 16], // 48
    /// Next sequence number to claim (a hint: the slot CAS is the claim).
    pub head: AtomicU64, // 64
    _pad1: [u8; 56],
    /// Frontier word, see [`frontier_word`].
    pub frontier: AtomicU64, // 128
    _pad2: [u8; 56],
    /// Next sequence a receiver takes (work queue only).
    pub tail: AtomicU64, // 192
    _pad3: [u8; 56],
    /// Futex word bumped when a message is published and a consumer waits.
    pub data_seq: AtomicU32, // 256
    /// Bit i set: a thread of consumer i sleeps on `data_seq`.
    pub data_waiters: AtomicU32, // 260
    _pad4: [u8; 56],
    /// Futex word bumped when slots are freed and a producer waits.
    pub space_seq: AtomicU32, // 320
    /// Bit i set: a thread of producer i sleeps on `space_seq`.
    pub space_waiters: AtomicU32, // 324
    _pad5: [u8; 56],
    /// Bit i set: producer record i is in use.
    pub producer_mask: AtomicU64, // 384
    /// Bit i set: consumer record i (record 32 + i) is in use.
    pub consumer_mask: AtomicU64, // 392
    /// Messages published, all producers.
    pub published: AtomicU64, // 400
    /// Slots skipped after their producer died.
    pub skipped: AtomicU64, // 408
    /// Participants found dead and evicted.
    pub evicted: AtomicU64, // 416
    _pad6: [u8; 600], // 424
}

/// One participant (producer or consumer).
#[repr(C)]
pub(crate) struct Record {
    /// 1 while a participant holds the record (its lock byte is locked).
    pub in_use: AtomicU32, // 0
    /// Pid of the holder, for operators.
    pub pid: AtomicU32, // 4
    /// Consumer: lowest sequence it still holds or will read next
    /// ([`LOW_NONE`] if none); the frontier never passes it.
    pub low: AtomicU64, // 8
    /// Messages sent (producer) or taken (consumer) through this record.
    pub count: AtomicU64, // 16
    _pad: [u8; 40], // 24
}

/// The header of one slot.
#[repr(C)]
pub(crate) struct SlotHeader {
    /// State word, see [`slot_state`].
    pub state: AtomicU64, // 0
    /// Payload length (inline) or message length (overflow).
    pub len: AtomicU32, // 8
    /// [`FLAG_OVERFLOW`], [`FLAG_SKIPPED`].
    pub flags: AtomicU32, // 12
    // The payload starts on the next cache line: large copies in and out
    // of a slot run on aligned lines.
    _pad: [u8; 48], // 16
}

/// Under loom the ring's words live in loom atomics beside the memory (loom
/// cannot track atomics cast from raw bytes); these build them zeroed.
#[cfg(loom)]
pub(crate) mod loom_words {
    use super::*;

    pub(crate) fn header() -> ChanHeader {
        let a64 = || AtomicU64::new(0);
        let a32 = || AtomicU32::new(0);
        ChanHeader {
            magic: a64(),
            version: a32(),
            kind: a32(),
            slots: a32(),
            slot_size: a32(),
            store_key: a64(),
            created_unix_ms: a64(),
            producers_ever: a64(),
            _pad0: [0; 16],
            head: a64(),
            _pad1: [0; 56],
            frontier: a64(),
            _pad2: [0; 56],
            tail: a64(),
            _pad3: [0; 56],
            data_seq: a32(),
            data_waiters: a32(),
            _pad4: [0; 56],
            space_seq: a32(),
            space_waiters: a32(),
            _pad5: [0; 56],
            producer_mask: a64(),
            consumer_mask: a64(),
            published: a64(),
            skipped: a64(),
            evicted: a64(),
            _pad6: [0; 600],
        }
    }

    pub(crate) fn record() -> Record {
        Record {
            in_use: AtomicU32::new(0),
            pid: AtomicU32::new(0),
            low: AtomicU64::new(LOW_NONE),
            count: AtomicU64::new(0),
            _pad: [0; 40],
        }
    }

    pub(crate) fn slot() -> SlotHeader {
        SlotHeader {
            state: AtomicU64::new(0),
            len: AtomicU32::new(0),
            flags: AtomicU32::new(0),
            _pad: [0; 48],
        }
    }
}

// Loom's atomics have another size, so only without loom.
#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<ChanHeader>() == HEADER_SIZE);
    assert!(std::mem::offset_of!(ChanHeader, head) == 64);
    assert!(std::mem::offset_of!(ChanHeader, frontier) == 128);
    assert!(std::mem::offset_of!(ChanHeader, tail) == 192);
    assert!(std::mem::offset_of!(ChanHeader, data_seq) == 256);
    assert!(std::mem::offset_of!(ChanHeader, space_seq) == 320);
    assert!(std::mem::offset_of!(ChanHeader, producer_mask) == 384);
    assert!(std::mem::offset_of!(ChanHeader, evicted) == 416);
    assert!(std::mem::size_of::<Record>() == RECORD_SIZE);
    assert!(std::mem::offset_of!(Record, low) == 8);
    assert!(std::mem::size_of::<SlotHeader>() == SLOT_HEADER_SIZE);
    assert!(SLOTS_OFFSET == 5120);
    assert!(SLOTS_OFFSET % 64 == 0);
};

/// Geometry of a ring, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Number of slots (a power of two).
    pub slots: u32,
    /// Bytes per slot.
    pub slot_size: u32,
}

impl Geometry {
    /// Checks a geometry read from a file or asked for by a user.
    pub(crate) fn new(slots: u32, slot_size: u32) -> Result<Self, String> {
        if !(MIN_SLOTS..=MAX_SLOTS).contains(&slots) || !slots.is_power_of_two() {
            return Err(format!(
                "{slots} slots: must be a power of two between {MIN_SLOTS} and {MAX_SLOTS}"
            ));
        }
        if !(MIN_SLOT_SIZE..=MAX_SLOT_SIZE).contains(&slot_size) || slot_size % 64 != 0 {
            return Err(format!(
                "slot size {slot_size}: must be a multiple of 64 between {MIN_SLOT_SIZE} and {MAX_SLOT_SIZE}"
            ));
        }
        if slots as u64 * slot_size as u64 > MAX_RING_BYTES {
            return Err(format!(
                "{slots} slots of {slot_size} bytes: the ring may hold at most {MAX_RING_BYTES} bytes"
            ));
        }
        Ok(Self { slots, slot_size })
    }

    /// Size of the whole channel file.
    pub(crate) fn file_size(&self) -> usize {
        SLOTS_OFFSET + self.slots as usize * self.slot_size as usize
    }

    /// Largest message carried inline in a slot.
    pub(crate) fn inline_capacity(&self) -> usize {
        self.slot_size as usize - SLOT_HEADER_SIZE
    }
}

/// Name of the file of channel `name` in namespace `ns`. `+` occurs in
/// neither (both follow the namespace rules), so the name parses back
/// unambiguously.
pub fn channel_file_name(ns: &str, name: &str) -> String {
    format!("{ns}_chan+{name}")
}

/// `(namespace, channel)` of a channel file name, or `None`.
pub fn parse_channel_file_name(file: &str) -> Option<(String, String)> {
    let (left, name) = file.split_once('+')?;
    let ns = left.strip_suffix("_chan")?;
    (crate::namespace::is_valid(ns) && crate::namespace::is_valid(name))
        .then(|| (ns.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_words_round_trip() {
        let w = slot_state(123_456_789, 31, TAG_CLAIMED);
        assert_eq!(state_lap(w), 123_456_789);
        assert_eq!(state_owner(w), 31);
        assert_eq!(state_tag(w), TAG_CLAIMED);
        let f = frontier_word(987_654_321, 300);
        assert_eq!(frontier_seq(f), 987_654_321);
        assert_eq!(frontier_epoch(f), 300 & 0xff);
    }

    #[test]
    fn geometry_bounds() {
        assert!(Geometry::new(256, 256).is_ok());
        for (s, z) in [
            (3, 256),
            (1, 256),
            (1 << 21, 256),
            (256, 100),
            (256, 64),
            (1 << 20, 4096),
            (2, (32 << 20) + 64),
        ] {
            assert!(Geometry::new(s, z).is_err(), "{s} {z}");
        }
        assert_eq!(Geometry::new(4, 128).unwrap().inline_capacity(), 64);
    }

    #[test]
    fn channel_names_round_trip_even_with_underscores() {
        for (ns, name) in [("a", "b"), ("my_app", "x_chan_y"), ("n_chan", "c.v2")] {
            assert_eq!(
                parse_channel_file_name(&channel_file_name(ns, name)),
                Some((ns.to_owned(), name.to_owned()))
            );
        }
        assert_eq!(parse_channel_file_name("x_data_1"), None);
        assert_eq!(parse_channel_file_name("x_chan+"), None);
        assert_eq!(parse_channel_file_name("x+y"), None);
    }
}
