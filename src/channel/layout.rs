//! Byte layout of a channel file, `{ns}_chan+{name}` (format version 3).
//!
//! Every offset of the file is defined here, checked at compile time, and
//! documented byte by byte in `docs/design.md`. Little-endian, fixed-width,
//! no pointers: only sequence numbers and indices, each bounds-checked by
//! the reader.
//!
//! ```text
//! 0        ChanHeader   (1024 bytes: identity and policy, then one cache
//!                        line per hot word)
//! 1024     Record × 64  (64 bytes each: producers 0..32, consumers 32..64)
//! 5120     Entry × slots        (16 bytes each: the ring, in sequence order)
//! E        SlotHeader × pool    (64 bytes each; E = 5120 + 16 × slots,
//!                                rounded up to 64)
//! P        payload × pool       (slot_size - 64 bytes each; P = E + 64 × pool)
//! ```
//!
//! The ring orders messages; the pool holds them. An entry of the ring names
//! the pool slot of its message, and a slot's `owners` word says who holds
//! it: the ring (for one sequence number), a producer writing it, and every
//! consumer holding it. A slot is free when its owners word is 0, so a held
//! message keeps its own slot and never the ring (see `docs/design.md`).

use crate::sync::{AtomicU32, AtomicU64};

/// `b"SFBCHAN1"` little-endian: the first 8 bytes of every channel file.
pub(crate) const CHAN_MAGIC: u64 = u64::from_le_bytes(*b"SFBCHAN1");
/// Version of this layout.
pub(crate) const CHAN_VERSION: u32 = 3;

/// Kind word of a broadcast channel (publishers and subscribers).
pub(crate) const KIND_BROADCAST: u32 = 1;
/// Kind word of a work queue (senders and receivers).
pub(crate) const KIND_QUEUE: u32 = 2;

/// Overflow word: publishers wait for the slowest live subscriber.
pub(crate) const OVERFLOW_BLOCK: u32 = 1;
/// Overflow word: publishers overwrite the oldest message; a subscriber
/// that fell a ring behind skips ahead.
pub(crate) const OVERFLOW_DROP_OLDEST: u32 = 2;
/// Delivery word: a message taken by a receiver that dies is lost.
pub(crate) const DELIVERY_AT_MOST_ONCE: u32 = 1;
/// Delivery word: a message taken by a receiver that dies is delivered again.
pub(crate) const DELIVERY_AT_LEAST_ONCE: u32 = 2;

/// Producers one channel admits at once.
pub(crate) const MAX_PRODUCERS: usize = 32;
/// Consumers one channel admits at once.
pub(crate) const MAX_CONSUMERS: usize = 32;
/// Participant records: producers first, then consumers.
pub(crate) const RECORDS: usize = MAX_PRODUCERS + MAX_CONSUMERS;
/// Pool slots set aside per producer for its sends and loans in flight.
pub(crate) const SLOTS_PER_PRODUCER: u32 = 2;

/// Size of the header.
pub(crate) const HEADER_SIZE: usize = 1024;
/// Size of one participant record.
pub(crate) const RECORD_SIZE: usize = 64;
/// Offset of the first participant record.
pub(crate) const RECORDS_OFFSET: usize = HEADER_SIZE;
/// Offset of the first ring entry.
pub(crate) const ENTRIES_OFFSET: usize = RECORDS_OFFSET + RECORDS * RECORD_SIZE;
/// Size of one ring entry.
pub(crate) const ENTRY_SIZE: usize = 16;
/// Size of a pool slot's header (owners, length, flags, deliveries,
/// backing, sequence).
pub(crate) const SLOT_HEADER_SIZE: usize = 64;

/// Fewest slots a ring may have.
pub(crate) const MIN_SLOTS: u32 = 2;
/// Most slots a ring may have.
pub(crate) const MAX_SLOTS: u32 = 1 << 20;
/// Smallest slot (header and 64 inline bytes, enough for a handle).
pub(crate) const MIN_SLOT_SIZE: u32 = 128;
/// Largest slot.
pub(crate) const MAX_SLOT_SIZE: u32 = (16 << 20) + 64;
/// Largest ring (the ring's own slots together): 1 GiB.
pub(crate) const MAX_RING_BYTES: u64 = 1 << 30;
/// Largest held-message budget per consumer.
pub(crate) const MAX_HELD: u32 = 1024;
/// Largest pool, in bytes of payload (its spare slots are backed only when
/// first used, so this is address space, not memory).
pub(crate) const MAX_POOL_BYTES: u64 = 64 << 30;

/// Granule in which a pool slot's payload is backed: a message backs the
/// pages it reaches the first time a message that long uses the slot.
pub(crate) const BACK_STEP: usize = 4096;

/// Slot flag: the payload is a 24-byte store handle, not the message.
pub(crate) const FLAG_OVERFLOW: u32 = 1;

/// Entry state tags (low 2 bits of the state word).
pub(crate) const TAG_FREE: u64 = 0;
/// Claimed by the producer named in bits 2..8, being written.
pub(crate) const TAG_CLAIMED: u64 = 1;
/// Published: readable by consumers.
pub(crate) const TAG_READY: u64 = 2;
/// Published empty: the entry's producer died (or gave up) before writing
/// it, or it was a hole left by a scribbled head; consumers and the
/// frontier pass over it.
pub(crate) const TAG_SKIPPED: u64 = 3;

/// Whether an entry tag is published (a message or a skip), so the
/// frontier may pass it.
pub(crate) const fn published(tag: u64) -> bool {
    tag == TAG_READY || tag == TAG_SKIPPED
}

/// An entry state word: `lap << 8 | owner << 2 | tag`. The lap is the
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

/// The owners word of a pool slot:
///
/// ```text
/// bits 0..32   one bit per consumer record holding the slot's message
/// bits 32..40  writer: 0 none, p + 1 producer p writing it, 0xff requeued
///              (a work-queue message waiting to be delivered again)
/// bit  40      in the ring
/// bits 41..64  the low 23 bits of the sequence it is in the ring for
/// ```
///
/// The slot is free when the word is 0. Whoever turns it to 0 gives back
/// what the slot referred to (acknowledges its store entry).
pub(crate) const OWNER_HOLDERS: u64 = (1 << MAX_CONSUMERS) - 1;
/// Writer field of the owners word.
pub(crate) const OWNER_WRITER: u64 = 0xff << 32;
/// Writer value of a requeued slot.
pub(crate) const OWNER_REQUEUED: u64 = 0xff << 32;
/// The in-ring bit.
pub(crate) const OWNER_IN_RING: u64 = 1 << 40;
/// The in-ring bit and the sequence tag together.
pub(crate) const OWNER_RING_MASK: u64 = !(OWNER_HOLDERS | OWNER_WRITER);

/// Owners bits saying "in the ring for sequence `seq`".
pub(crate) const fn owners_in_ring(seq: u64) -> u64 {
    OWNER_IN_RING | ((seq & ((1 << 23) - 1)) << 41)
}
/// Owners bits saying "being written by producer `p`".
pub(crate) const fn owners_writer(p: u32) -> u64 {
    ((p as u64 & 0x3f) + 1) << 32
}
/// Owners bit of consumer `c`.
pub(crate) const fn owners_holder(c: usize) -> u64 {
    1 << (c as u64 & 31)
}

/// The frontier word: `seq << 8 | join_epoch`. Every message below `seq`
/// has left the ring (every consumer that gates it has read it, or it was
/// overwritten) and its entry is freed; a subscriber that joins bumps the
/// epoch, so that a reclaimer that computed its bound before the join fails
/// its CAS and looks again.
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

/// A consumer's `low` when it has no cursor (queue, or not joined).
pub(crate) const LOW_NONE: u64 = u64::MAX;

/// Lock byte of participant record `index` (an OFD lock, taken past the end
/// of the file, so it never conflicts with anything else).
pub(crate) const fn lock_byte(index: usize) -> u64 {
    (1 << 40) + index as u64
}

/// The channel header: identity and policy (immutable after creation),
/// then the shared words, each on its own cache line.
#[repr(C)]
pub(crate) struct ChanHeader {
    /// [`CHAN_MAGIC`]; stored last (Release) by the creator.
    pub magic: AtomicU64, // 0
    /// [`CHAN_VERSION`].
    pub version: AtomicU32, // 8
    /// [`KIND_BROADCAST`] or [`KIND_QUEUE`].
    pub kind: AtomicU32, // 12
    /// Number of ring entries (a power of two).
    pub slots: AtomicU32, // 16
    /// Bytes per pool slot (a multiple of 64).
    pub slot_size: AtomicU32, // 20
    /// Tag key of the store incarnation the channel belongs to.
    pub store_key: AtomicU64, // 24
    /// Wall-clock creation time, ms since the Unix epoch.
    pub created_unix_ms: AtomicU64, // 32
    /// Producer registrations so far (a channel never connected is not
    /// reported disconnected).
    pub producers_ever: AtomicU64, // 40
    /// Held-message budget of each consumer.
    pub max_held: AtomicU32, // 48
    /// [`OVERFLOW_BLOCK`] or [`OVERFLOW_DROP_OLDEST`].
    pub overflow: AtomicU32, // 52
    /// [`DELIVERY_AT_MOST_ONCE`] or [`DELIVERY_AT_LEAST_ONCE`].
    pub delivery: AtomicU32, // 56
    /// Slots in the pool (derived from the rest; checked on open).
    pub pool: AtomicU32, // 60
    /// Next sequence number to claim (a hint: the entry CAS is the claim).
    pub head: AtomicU64, // 64
    /// Stall timeout of a `Block` channel in ms (0: none).
    pub stall_timeout_ms: AtomicU64, // 72
    _pad1: [u8; 48],
    /// Frontier word, see [`frontier_word`].
    pub frontier: AtomicU64, // 128
    /// Since when (coarse ms) producers find the ring full; 0 while not.
    pub full_since_ms: AtomicU64, // 136
    _pad2: [u8; 48],
    /// Next sequence a receiver takes (work queue only).
    pub tail: AtomicU64, // 192
    /// Requeued slots waiting for a receiver (a hint; the slots' owners
    /// words are the truth).
    pub requeued: AtomicU64, // 200
    _pad3: [u8; 48],
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
    /// Entries skipped after their producer died.
    pub skipped: AtomicU64, // 408
    /// Participants found dead and evicted.
    pub evicted: AtomicU64, // 416
    /// Messages subscribers missed because they lagged a ring behind.
    pub lagged: AtomicU64, // 424
    /// Messages requeued after their receiver died (at least once).
    pub redelivered: AtomicU64, // 432
    /// Subscribers let go by the stall timeout.
    pub let_go: AtomicU64, // 440
    /// Messages consumers found expired in the store (its TTL ran out
    /// before they received them).
    pub expired: AtomicU64, // 448
    /// Broadcast messages released at once because no subscriber was
    /// there to receive them.
    pub unheard: AtomicU64, // 456
    /// Pid of the participant evicted last (0: none yet), for operators.
    pub last_evicted_pid: AtomicU32, // 464
    /// 1: it was a producer; 2: a consumer.
    pub last_evicted_role: AtomicU32, // 468
    /// When it was evicted, ms since the Unix epoch.
    pub last_evicted_unix_ms: AtomicU64, // 472
    _pad6: [u8; 544], // 480
}

/// One participant (producer or consumer).
#[repr(C)]
pub(crate) struct Record {
    /// 1 while a participant holds the record (its lock byte is locked).
    pub in_use: AtomicU32, // 0
    /// Pid of the holder, for operators.
    pub pid: AtomicU32, // 4
    /// Subscriber: the next sequence it reads; the frontier of a `Block`
    /// channel does not pass it ([`LOW_NONE`] if none).
    pub low: AtomicU64, // 8
    /// Messages sent (producer) or taken (consumer) through this record.
    pub count: AtomicU64, // 16
    /// Consumer: coarse ms of its last receive or wait (the stall timeout
    /// measures from it).
    pub active_ms: AtomicU64, // 24
    /// Consumer: messages it holds now (for operators).
    pub held: AtomicU32, // 32
    _pad0: [u8; 4], // 36
    /// Consumer: messages it missed by lagging.
    pub lagged: AtomicU64, // 40
    /// Producer: coarse ms since it has waited for space (0: not waiting),
    /// for operators.
    pub waiting_since_ms: AtomicU64, // 48
    _pad: [u8; 8],  // 56
}

/// One entry of the ring.
#[repr(C)]
pub(crate) struct Entry {
    /// State word, see [`slot_state`].
    pub state: AtomicU64, // 0
    /// Pool slot of the message.
    pub slot: AtomicU32, // 8
    /// Reserved (0).
    pub spare: AtomicU32, // 12
}

/// The header of one pool slot.
#[repr(C)]
pub(crate) struct SlotHeader {
    /// Owners word, see [`OWNER_HOLDERS`].
    pub owners: AtomicU64, // 0
    /// Payload length (inline) or message length (overflow).
    pub len: AtomicU32, // 8
    /// [`FLAG_OVERFLOW`].
    pub flags: AtomicU32, // 12
    /// Times the message was handed out before (work queue, at least once).
    pub delivered: AtomicU32, // 16
    /// Bytes of the slot's payload backed so far (a multiple of
    /// [`BACK_STEP`], at most the payload): a slot is backed as far as the
    /// longest message it has carried.
    pub backed: AtomicU32, // 20
    /// Sequence number the message was published at.
    pub seq: AtomicU64, // 24
    _pad: [u8; 32], // 32
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
            max_held: a32(),
            overflow: a32(),
            delivery: a32(),
            pool: a32(),
            head: a64(),
            stall_timeout_ms: a64(),
            _pad1: [0; 48],
            frontier: a64(),
            full_since_ms: a64(),
            _pad2: [0; 48],
            tail: a64(),
            requeued: a64(),
            _pad3: [0; 48],
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
            lagged: a64(),
            redelivered: a64(),
            let_go: a64(),
            expired: a64(),
            unheard: a64(),
            last_evicted_pid: a32(),
            last_evicted_role: a32(),
            last_evicted_unix_ms: a64(),
            _pad6: [0; 544],
        }
    }

    pub(crate) fn record() -> Record {
        Record {
            in_use: AtomicU32::new(0),
            pid: AtomicU32::new(0),
            low: AtomicU64::new(LOW_NONE),
            count: AtomicU64::new(0),
            active_ms: AtomicU64::new(0),
            held: AtomicU32::new(0),
            _pad0: [0; 4],
            lagged: AtomicU64::new(0),
            waiting_since_ms: AtomicU64::new(0),
            _pad: [0; 8],
        }
    }

    pub(crate) fn entry() -> Entry {
        Entry {
            state: AtomicU64::new(0),
            slot: AtomicU32::new(0),
            spare: AtomicU32::new(0),
        }
    }

    pub(crate) fn slot() -> SlotHeader {
        SlotHeader {
            owners: AtomicU64::new(0),
            len: AtomicU32::new(0),
            flags: AtomicU32::new(0),
            delivered: AtomicU32::new(0),
            backed: AtomicU32::new(0),
            seq: AtomicU64::new(0),
            _pad: [0; 32],
        }
    }
}

// Loom's atomics have another size, so only without loom.
#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<ChanHeader>() == HEADER_SIZE);
    assert!(std::mem::offset_of!(ChanHeader, max_held) == 48);
    assert!(std::mem::offset_of!(ChanHeader, pool) == 60);
    assert!(std::mem::offset_of!(ChanHeader, head) == 64);
    assert!(std::mem::offset_of!(ChanHeader, stall_timeout_ms) == 72);
    assert!(std::mem::offset_of!(ChanHeader, frontier) == 128);
    assert!(std::mem::offset_of!(ChanHeader, full_since_ms) == 136);
    assert!(std::mem::offset_of!(ChanHeader, tail) == 192);
    assert!(std::mem::offset_of!(ChanHeader, requeued) == 200);
    assert!(std::mem::offset_of!(ChanHeader, data_seq) == 256);
    assert!(std::mem::offset_of!(ChanHeader, space_seq) == 320);
    assert!(std::mem::offset_of!(ChanHeader, producer_mask) == 384);
    assert!(std::mem::offset_of!(ChanHeader, evicted) == 416);
    assert!(std::mem::offset_of!(ChanHeader, let_go) == 440);
    assert!(std::mem::offset_of!(ChanHeader, expired) == 448);
    assert!(std::mem::offset_of!(ChanHeader, unheard) == 456);
    assert!(std::mem::offset_of!(ChanHeader, last_evicted_unix_ms) == 472);
    assert!(std::mem::size_of::<Record>() == RECORD_SIZE);
    assert!(std::mem::offset_of!(Record, low) == 8);
    assert!(std::mem::offset_of!(Record, active_ms) == 24);
    assert!(std::mem::offset_of!(Record, held) == 32);
    assert!(std::mem::offset_of!(Record, lagged) == 40);
    assert!(std::mem::offset_of!(Record, waiting_since_ms) == 48);
    assert!(std::mem::size_of::<Entry>() == ENTRY_SIZE);
    assert!(std::mem::size_of::<SlotHeader>() == SLOT_HEADER_SIZE);
    assert!(std::mem::offset_of!(SlotHeader, seq) == 24);
    assert!(ENTRIES_OFFSET == 5120);
    assert!(ENTRIES_OFFSET % 64 == 0);
};

/// The policy words of a channel, fixed by its creator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Held-message budget per consumer.
    pub max_held: u32,
    /// [`OVERFLOW_BLOCK`] or [`OVERFLOW_DROP_OLDEST`].
    pub overflow: u32,
    /// [`DELIVERY_AT_MOST_ONCE`] or [`DELIVERY_AT_LEAST_ONCE`].
    pub delivery: u32,
    /// Stall timeout in ms (0: none).
    pub stall_timeout_ms: u64,
}

impl Policy {
    /// Checks policy words read from a file or asked for by a user.
    pub(crate) fn check(&self) -> Result<(), String> {
        if !(1..=MAX_HELD).contains(&self.max_held) {
            return Err(format!(
                "max_held {}: must be between 1 and {MAX_HELD}",
                self.max_held
            ));
        }
        if !matches!(self.overflow, OVERFLOW_BLOCK | OVERFLOW_DROP_OLDEST) {
            return Err(format!("overflow policy word {}", self.overflow));
        }
        if !matches!(
            self.delivery,
            DELIVERY_AT_MOST_ONCE | DELIVERY_AT_LEAST_ONCE
        ) {
            return Err(format!("delivery word {}", self.delivery));
        }
        Ok(())
    }
}

/// Geometry of a ring and its pool, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Number of ring entries (a power of two).
    pub slots: u32,
    /// Bytes per pool slot (header and inline payload).
    pub slot_size: u32,
    /// Number of pool slots: the ring's, every consumer's held budget (and
    /// one in passing), and every producer's in flight.
    pub pool: u32,
}

impl Geometry {
    /// Checks a geometry read from a file or asked for by a user.
    pub(crate) fn new(slots: u32, slot_size: u32, max_held: u32) -> Result<Self, String> {
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
        if !(1..=MAX_HELD).contains(&max_held) {
            return Err(format!(
                "max_held {max_held}: must be between 1 and {MAX_HELD}"
            ));
        }
        let pool = slots as u64
            + MAX_CONSUMERS as u64 * (max_held as u64 + 1)
            + MAX_PRODUCERS as u64 * SLOTS_PER_PRODUCER as u64;
        if pool * (slot_size as u64 - SLOT_HEADER_SIZE as u64) > MAX_POOL_BYTES {
            return Err(format!(
                "{pool} pool slots of {slot_size} bytes (the ring's {slots} and {max_held} held per consumer): the pool may hold at most {MAX_POOL_BYTES} bytes"
            ));
        }
        Ok(Self {
            slots,
            slot_size,
            pool: pool as u32,
        })
    }

    /// Offset of the first pool slot header.
    pub(crate) fn slot_headers_offset(&self) -> usize {
        (ENTRIES_OFFSET + self.slots as usize * ENTRY_SIZE).next_multiple_of(64)
    }

    /// Offset of the first payload.
    pub(crate) fn payloads_offset(&self) -> usize {
        self.slot_headers_offset() + self.pool as usize * SLOT_HEADER_SIZE
    }

    /// Bytes between two payloads (the inline capacity).
    pub(crate) fn payload_stride(&self) -> usize {
        self.slot_size as usize - SLOT_HEADER_SIZE
    }

    /// Size of the whole channel file.
    pub(crate) fn file_size(&self) -> usize {
        self.payloads_offset() + self.pool as usize * self.payload_stride()
    }

    /// Worst-case `/dev/shm` bytes of a channel of this geometry: its file
    /// with every pool slot backed, and one store chunk of `chunk_size`
    /// pinned by each message that can be in flight through the store (one
    /// per pool slot, at most `max_chunks`). A message that does not fit a
    /// standard chunk (with the chunk's and the entry's headers) pins a
    /// chunk of its own size, so the bound holds for messages that do. Not
    /// counted: store loans not yet sent and appends still waiting for a
    /// ring entry (each pins at most one chunk until sent or dropped).
    pub(crate) fn memory_bound(&self, chunk_size: u64, max_chunks: u64) -> u64 {
        (self.file_size() as u64).saturating_add(
            (self.pool as u64)
                .min(max_chunks)
                .saturating_mul(chunk_size),
        )
    }

    /// Bytes backed when the file is made: everything up to the payloads
    /// (a slot's payload is backed as messages first reach it).
    pub(crate) fn backed_at_creation(&self) -> usize {
        self.payloads_offset()
    }

    /// Largest message carried inline in a slot.
    pub(crate) fn inline_capacity(&self) -> usize {
        self.payload_stride()
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
        assert!(Geometry::new(256, 256, 16).is_ok());
        for (s, z) in [
            (3, 256),
            (1, 256),
            (1 << 21, 256),
            (256, 100),
            (256, 64),
            (1 << 20, 4096),
            (2, (32 << 20) + 64),
        ] {
            assert!(Geometry::new(s, z, 16).is_err(), "{s} {z}");
        }
        assert!(Geometry::new(4, 128, 0).is_err());
        assert!(Geometry::new(4, 128, MAX_HELD + 1).is_err());
        let g = Geometry::new(4, 128, 1).unwrap();
        assert_eq!(g.inline_capacity(), 64);
        assert_eq!(g.pool, 4 + 32 * 2 + 32 * SLOTS_PER_PRODUCER);
        assert_eq!(g.slot_headers_offset(), ENTRIES_OFFSET + 64);
        assert_eq!(
            g.payloads_offset(),
            g.slot_headers_offset() + g.pool as usize * 64
        );
        assert_eq!(g.file_size(), g.payloads_offset() + g.pool as usize * 64);
        assert!(g.backed_at_creation() < g.file_size());
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
