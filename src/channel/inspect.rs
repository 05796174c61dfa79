//! The operator's view of a channel file, read with `pread`: nothing is
//! mapped, nothing written, no lock taken (liveness is asked with
//! `F_OFD_GETLK`). `sfb stat` and `sfb export` are built on it.
//!
//! Besides the counters and policy of the header, it reads every
//! participant record (pid, liveness, lag, held, waiting) and says who
//! holds the channel back: when producers wait for space on a channel that
//! waits for its consumers (a `Block` broadcast, or a work queue), the
//! consumer that the ring waits for.

use super::file::{delivery_name, kind_name, overflow_name, read_identity};
use super::layout::*;
use crate::os;
use std::mem::offset_of;
use std::path::Path;

/// What `sfb stat` shows of one channel, read with `pread` (nothing mapped,
/// nothing written).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ChannelReport {
    /// Channel name.
    pub name: String,
    /// File name in the shm directory.
    pub file: String,
    /// "broadcast channel" or "work queue" (empty if unreadable).
    pub kind: &'static str,
    /// Slots in the ring.
    pub slots: u32,
    /// Bytes per slot.
    pub slot_size: u32,
    /// Slots in the pool (the ring's, held messages', producers').
    pub pool: u32,
    /// "block" or "drop-oldest" (broadcast; a work queue always blocks).
    pub overflow: &'static str,
    /// "at-most-once" or "at-least-once" (work queue).
    pub delivery: &'static str,
    /// Held-message budget per consumer.
    pub max_held: u32,
    /// Stall timeout of a `Block` channel in ms (0: none).
    pub stall_timeout_ms: u64,
    /// Messages published that the slowest consumer has not received (a
    /// work queue: that no receiver has taken), at most a ring.
    pub depth: u64,
    /// Messages consumers hold now (received, not dropped).
    pub held: u64,
    /// Messages subscribers missed by lagging a ring behind.
    pub lagged: u64,
    /// Messages requeued after their receiver died (at least once).
    pub redelivered: u64,
    /// Messages published since creation.
    pub published: u64,
    /// Slots skipped because their producer died before publishing.
    pub skipped: u64,
    /// Participants found dead and evicted.
    pub evicted: u64,
    /// Messages consumers found expired in the store (its TTL ran out
    /// before they received them).
    pub expired: u64,
    /// Broadcast messages released at once because no subscriber was there.
    pub unheard: u64,
    /// Times a `Block` subscriber was let go by the stall timeout.
    pub let_go: u64,
    /// Producers registered whose process is alive.
    pub producers_alive: u32,
    /// Producers registered whose process is gone (not yet evicted).
    pub producers_dead: u32,
    /// Consumers registered whose process is alive.
    pub consumers_alive: u32,
    /// Consumers registered whose process is gone (not yet evicted).
    pub consumers_dead: u32,
    /// Bytes the file takes on the tmpfs.
    pub tmpfs_bytes: u64,
    /// Worst-case bytes the channel can take on the tmpfs: its file with
    /// every pool slot backed, and a store chunk pinned by each message in
    /// flight through the store (`None` when the namespace's control block,
    /// which gives the chunk size and limit, could not be read).
    pub memory_bound: Option<u64>,
    /// Since producers found the ring full, ms (`None`: not full).
    pub full_for_ms: Option<u64>,
    /// How long producers have waited for space, ms: the longer of
    /// `full_for_ms` and the longest wait of a live producer (`None`:
    /// nobody waits, or no producer is alive to wait).
    pub blocked_ms: Option<u64>,
    /// Who holds the producers back, while they wait on a channel that
    /// waits for its consumers (a `Block` broadcast, or a work queue).
    pub held_back_by: Option<HeldBack>,
    /// The participant evicted last (a killed one, found dead), if any.
    pub last_eviction: Option<Eviction>,
    /// Every participant record in use: producers first, then consumers.
    pub participants: Vec<ParticipantReport>,
    /// Why the file could not be read as a channel, if it could not.
    pub problem: Option<String>,
}

/// One producer or consumer of a channel (a participant record in use).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ParticipantReport {
    /// Index of its record in the file: producers 0..32, consumers 32..64.
    pub record: usize,
    /// Pid of its process (as the process recorded it).
    pub pid: u32,
    /// "producer" or "consumer".
    pub role: &'static str,
    /// "publisher", "subscriber", "sender" or "receiver".
    pub endpoint: &'static str,
    /// Its process holds the record's lock; `false`: the process is gone
    /// and the record not evicted yet (the next participant that needs it
    /// gone evicts it).
    pub alive: bool,
    /// A subscriber: messages published that it has not received (head −
    /// its cursor; `None` before it joined). `None` for the others.
    pub lag: Option<u64>,
    /// A consumer: messages it holds now (received, not dropped).
    pub held: u32,
    /// A subscriber: messages it missed by lagging.
    pub lagged: u64,
    /// Messages sent (producer) or taken (consumer) through this record.
    pub count: u64,
    /// A live producer: how long it has waited for space, ms (`None`: it
    /// does not wait).
    pub waiting_ms: Option<u64>,
    /// A consumer: since its last receive or wait, ms.
    pub idle_ms: Option<u64>,
}

/// The consumer that producers wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HeldBack {
    /// Index of its record (see [`ParticipantReport::record`]).
    pub record: usize,
    /// Pid of its process.
    pub pid: u32,
    /// "subscriber" or "receiver".
    pub endpoint: &'static str,
    /// Whether its process is alive (a dead one holds producers back until
    /// a producer evicts it, within a liveness tick).
    pub alive: bool,
    /// A subscriber: messages published that it has not received.
    pub lag: Option<u64>,
    /// Since its last receive or wait, ms.
    pub idle_ms: Option<u64>,
}

/// The participant evicted last.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Eviction {
    /// Pid of the evicted participant.
    pub pid: u32,
    /// "producer" or "consumer".
    pub role: &'static str,
    /// "publisher", "subscriber", "sender" or "receiver".
    pub endpoint: &'static str,
    /// When it was evicted, ms since the Unix epoch.
    pub unix_ms: u64,
}

/// The role and endpoint names of record `index` on a channel of `kind`.
fn names(kind: u32, index: usize) -> (&'static str, &'static str) {
    match (index < MAX_PRODUCERS, kind == KIND_QUEUE) {
        (true, false) => ("producer", "publisher"),
        (true, true) => ("producer", "sender"),
        (false, false) => ("consumer", "subscriber"),
        (false, true) => ("consumer", "receiver"),
    }
}

/// Inspects channel file `file` (a name from [`parse_channel_file_name`])
/// in `dir`. `chunks` is the namespace's chunk size and chunk limit (0:
/// none), from its control block, for the memory bound; `now_ms` the coarse monotonic clock
/// (`crate::clock::now_ms`) the records' times are compared with.
pub(crate) fn inspect_channel(
    dir: &Path,
    file: &str,
    name: &str,
    chunks: Option<(u64, u64)>,
    now_ms: u64,
) -> ChannelReport {
    let mut r = ChannelReport {
        name: name.to_owned(),
        file: file.to_owned(),
        kind: "",
        slots: 0,
        slot_size: 0,
        pool: 0,
        overflow: "",
        delivery: "",
        max_held: 0,
        stall_timeout_ms: 0,
        depth: 0,
        held: 0,
        lagged: 0,
        redelivered: 0,
        published: 0,
        skipped: 0,
        evicted: 0,
        expired: 0,
        unheard: 0,
        let_go: 0,
        producers_alive: 0,
        producers_dead: 0,
        consumers_alive: 0,
        consumers_dead: 0,
        tmpfs_bytes: 0,
        memory_bound: None,
        full_for_ms: None,
        blocked_ms: None,
        held_back_by: None,
        last_eviction: None,
        participants: Vec::new(),
        problem: None,
    };
    let path = dir.join(file);
    let f = match os::open_ro(&path) {
        Ok(f) => f,
        Err(e) => {
            r.problem = Some(format!("cannot open: {e}"));
            return r;
        }
    };
    if let Ok(meta) = f.metadata() {
        use std::os::unix::fs::MetadataExt;
        r.tmpfs_bytes = meta.blocks() * 512;
        if !meta.is_file() {
            r.problem = Some("not a regular file".into());
            return r;
        }
    }
    let (kind, geo, policy) = match read_identity(&f, &path, None) {
        Ok(x) => x,
        Err(e) => {
            r.problem = Some(e.to_string());
            return r;
        }
    };
    r.kind = kind_name(kind);
    r.slots = geo.slots;
    r.slot_size = geo.slot_size;
    r.pool = geo.pool;
    let blocks = kind == KIND_QUEUE || policy.overflow == OVERFLOW_BLOCK;
    r.overflow = if kind == KIND_QUEUE {
        "block"
    } else {
        overflow_name(policy.overflow)
    };
    r.delivery = delivery_name(policy.delivery);
    r.max_held = policy.max_held;
    r.stall_timeout_ms = policy.stall_timeout_ms;
    // As the producers compute it (`Producer::memory_bound`): a namespace
    // without a chunk limit has as many chunks as its registry has slots.
    r.memory_bound = chunks.map(|(chunk_size, max_chunks)| {
        let max_chunks = match max_chunks {
            0 => crate::layout::REGISTRY_SLOTS as u64,
            n => n,
        };
        geo.memory_bound(chunk_size, max_chunks)
    });
    let mut buf = vec![0u8; ENTRIES_OFFSET];
    if !matches!(os::read_at(&f, &mut buf, 0, &path), Ok(n) if n == ENTRIES_OFFSET) {
        r.problem = Some("channel file is shorter than its header".into());
        return r;
    }
    let u32_at = |o: usize| u32::from_le_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let hdr = |o: usize| u64_at(o);
    let head = hdr(offset_of!(ChanHeader, head));
    let frontier = frontier_seq(hdr(offset_of!(ChanHeader, frontier)));
    r.published = hdr(offset_of!(ChanHeader, published));
    r.skipped = hdr(offset_of!(ChanHeader, skipped));
    r.evicted = hdr(offset_of!(ChanHeader, evicted));
    r.lagged = hdr(offset_of!(ChanHeader, lagged));
    r.redelivered = hdr(offset_of!(ChanHeader, redelivered));
    r.let_go = hdr(offset_of!(ChanHeader, let_go));
    r.expired = hdr(offset_of!(ChanHeader, expired));
    r.unheard = hdr(offset_of!(ChanHeader, unheard));
    let ago = |stamp: u64| (stamp != 0).then(|| now_ms.saturating_sub(stamp));
    r.full_for_ms = ago(hdr(offset_of!(ChanHeader, full_since_ms)));
    let evicted_pid = u32_at(offset_of!(ChanHeader, last_evicted_pid));
    if evicted_pid != 0 {
        let role_word = u32_at(offset_of!(ChanHeader, last_evicted_role));
        // The role word names the side; any record index of that side
        // gives its names.
        let (role, endpoint) = match role_word {
            1 => names(kind, 0),
            2 => names(kind, MAX_PRODUCERS),
            _ => ("unknown", "unknown"),
        };
        r.last_eviction = Some(Eviction {
            pid: evicted_pid,
            role,
            endpoint,
            unix_ms: hdr(offset_of!(ChanHeader, last_evicted_unix_ms)),
        });
    }

    // Cursors of the consumers that bound the frontier (for the depth
    // and for who holds producers back), with their records.
    let mut gating: Vec<(u64, usize)> = Vec::new();
    for index in 0..RECORDS {
        let at = RECORDS_OFFSET + index * RECORD_SIZE;
        if u32_at(at + offset_of!(Record, in_use)) == 0 {
            continue;
        }
        let producer = index < MAX_PRODUCERS;
        let alive = os::byte_lock_held(&f, lock_byte(index)).unwrap_or(true);
        let counter = match (producer, alive) {
            (true, true) => &mut r.producers_alive,
            (true, false) => &mut r.producers_dead,
            (false, true) => &mut r.consumers_alive,
            (false, false) => &mut r.consumers_dead,
        };
        *counter += 1;
        let (role, endpoint) = names(kind, index);
        let low = u64_at(at + offset_of!(Record, low));
        let held = if producer {
            0
        } else {
            u32_at(at + offset_of!(Record, held))
        };
        r.held += held as u64;
        let subscriber = !producer && kind == KIND_BROADCAST && low != LOW_NONE;
        if subscriber && low >= frontier {
            gating.push((low, index));
        }
        r.participants.push(ParticipantReport {
            record: index,
            pid: u32_at(at + offset_of!(Record, pid)),
            role,
            endpoint,
            alive,
            lag: subscriber.then(|| head.saturating_sub(low)),
            held,
            lagged: if producer {
                0
            } else {
                u64_at(at + offset_of!(Record, lagged))
            },
            count: u64_at(at + offset_of!(Record, count)),
            waiting_ms: if producer && alive {
                ago(u64_at(at + offset_of!(Record, waiting_since_ms)))
            } else {
                None
            },
            idle_ms: if producer {
                None
            } else {
                ago(u64_at(at + offset_of!(Record, active_ms)))
            },
        });
    }

    // Depth: what the slowest consumer has not received yet (a work
    // queue: what no receiver has taken).
    let oldest = if kind == KIND_QUEUE {
        hdr(offset_of!(ChanHeader, tail))
    } else {
        r.participants
            .iter()
            .filter(|p| p.role == "consumer")
            .map(|p| u64_at(RECORDS_OFFSET + p.record * RECORD_SIZE + offset_of!(Record, low)))
            .min()
            .unwrap_or(head)
    };
    r.depth = head
        .saturating_sub(oldest.max(frontier))
        .min(geo.slots as u64);

    // A ring left full by producers that are gone (or gave up and went
    // on) blocks nobody: the full mark counts only while one is alive.
    r.blocked_ms = r
        .participants
        .iter()
        .filter_map(|p| p.waiting_ms)
        .chain(r.full_for_ms.filter(|_| r.producers_alive > 0))
        .max();
    if r.blocked_ms.is_some() && blocks {
        r.held_back_by = held_back_by(&r, kind, &gating);
    }
    r
}

/// The consumer producers wait for: on a broadcast, the subscriber with
/// the lowest cursor among those that bound the frontier, if it has
/// anything unread; on a work queue holding messages, the receiver that
/// has gone longest without receiving (any receiver may take the next one,
/// so this names the likeliest, not the only, culprit).
fn held_back_by(r: &ChannelReport, kind: u32, gating: &[(u64, usize)]) -> Option<HeldBack> {
    let p = if kind == KIND_QUEUE {
        if r.depth == 0 {
            return None;
        }
        r.participants
            .iter()
            .filter(|p| p.role == "consumer" && p.alive)
            .max_by_key(|p| (p.idle_ms.unwrap_or(0), std::cmp::Reverse(p.record)))?
    } else {
        let &(_, index) = gating.iter().min()?;
        let p = r.participants.iter().find(|p| p.record == index)?;
        if p.lag == Some(0) {
            return None;
        }
        p
    };
    Some(HeldBack {
        record: p.record,
        pid: p.pid,
        endpoint: p.endpoint,
        alive: p.alive,
        lag: p.lag,
        idle_ms: p.idle_ms,
    })
}
