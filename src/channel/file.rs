//! A channel file on disk: creation (exclusive, complete before it has a
//! name), validation before mapping, participant records and their
//! liveness (one OFD lock byte per record), and removal with the namespace.

use super::layout::*;
use super::ring::{Backing, Ring};
use crate::error::{BlobError, Result};
use crate::fork;
use crate::os::{self, Mapping};
use crate::sync::Ordering;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Which side of a channel an endpoint is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Producer,
    Consumer,
}

impl Role {
    fn records(self) -> std::ops::Range<usize> {
        match self {
            Role::Producer => 0..MAX_PRODUCERS,
            Role::Consumer => MAX_PRODUCERS..RECORDS,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        }
    }
}

/// Human name of an overflow word.
pub(crate) fn overflow_name(w: u32) -> &'static str {
    match w {
        OVERFLOW_BLOCK => "block",
        OVERFLOW_DROP_OLDEST => "drop-oldest",
        _ => "unknown",
    }
}

/// Human name of a delivery word.
pub(crate) fn delivery_name(w: u32) -> &'static str {
    match w {
        DELIVERY_AT_MOST_ONCE => "at-most-once",
        DELIVERY_AT_LEAST_ONCE => "at-least-once",
        _ => "unknown",
    }
}

/// Human name of a kind word.
pub(crate) fn kind_name(kind: u32) -> &'static str {
    match kind {
        KIND_BROADCAST => "broadcast channel",
        KIND_QUEUE => "work queue",
        _ => "unknown channel kind",
    }
}

/// One endpoint's open channel file: its own open file description (which
/// carries its record's lock), its own mapping, and the ring in it.
pub(crate) struct ChanFile {
    pub ring: Ring,
    pub name: String,
    pub path: PathBuf,
    /// The policy words of the file.
    pub policy: Policy,
    /// The fork epoch this process was in when it opened the file.
    fork_epoch: u32,
    /// Device and inode of the file: endpoints of one channel in one
    /// process map it apart, and a waiter on many of them waits on its
    /// futex words once.
    #[cfg_attr(loom, allow(dead_code))]
    pub identity: (u64, u64),
    // Declared before `file`: unregistered before the descriptor closes.
    _fork: fork::ForkGuard,
    /// The description that carries this endpoint's record lock; nothing
    /// maps it (the mapping is made through another, see `fork`).
    file: File,
    // Keeps the ring's memory mapped; must outlive every use of `ring`.
    _map: Mapping,
    /// Bytes of each pool slot's payload this endpoint has backed itself
    /// (`fallocate`): what it may write without faulting on a full file
    /// system, whatever the shared `backed` words say (another process may
    /// scribble on those).
    backed: Box<[std::sync::atomic::AtomicU32]>,
}

impl std::fmt::Debug for ChanFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChanFile")
            .field("name", &self.name)
            .field("ring", &self.ring)
            .finish()
    }
}

impl Backing for ChanFile {
    fn backed(&self, b: u32) -> usize {
        self.backed
            .get(b as usize)
            // Relaxed: written only by this endpoint's writer of slot `b`.
            .map_or(0, |m| m.load(std::sync::atomic::Ordering::Relaxed) as usize)
    }

    /// `fallocate` of the pages of slot `b` between what this endpoint
    /// backed and `to` (cheap over pages another process backed already).
    fn back(&self, b: u32, to: usize) -> bool {
        let Some(mark) = self.backed.get(b as usize) else {
            return false;
        };
        let from = mark.load(std::sync::atomic::Ordering::Relaxed) as usize;
        if from >= to {
            return true;
        }
        if os::reserve_range(
            &self.file,
            (self.ring.payload_offset(b) + from) as u64,
            (to - from) as u64,
        )
        .is_err()
        {
            return false;
        }
        mark.store(to as u32, std::sync::atomic::Ordering::Relaxed);
        // The shared word says how far anyone backed the slot, for tools;
        // no writer relies on it.
        self.ring
            .slot(b)
            .backed
            .fetch_max(to as u32, Ordering::Relaxed);
        true
    }
}

/// An endpoint's backing marks for `pool` slots: none backed yet.
fn unbacked(pool: u32) -> Box<[std::sync::atomic::AtomicU32]> {
    (0..pool)
        .map(|_| std::sync::atomic::AtomicU32::new(0))
        .collect()
}

/// Checks a channel name (the namespace rules).
pub(crate) fn validate_name(name: &str) -> Result<()> {
    match crate::namespace::invalid_reason(name) {
        None => Ok(()),
        Some(reason) => Err(BlobError::InvalidChannel {
            channel: name.escape_debug().to_string(),
            reason,
        }),
    }
}

/// A channel file's identity (see [`ChanFile::identity`]); if the file
/// cannot be looked at, the mapping's address, which is this endpoint's
/// own (it then shares no wait with other endpoints).
fn identity(file: &File, ring: &Ring) -> (u64, u64) {
    os::file_identity(file).unwrap_or((u64::MAX, ring.header() as *const _ as u64))
}

impl ChanFile {
    /// Opens channel `name` of namespace `ns` (incarnation `key`) as `kind`,
    /// creating it with geometry `geo` and `policy` if it does not exist.
    pub(crate) fn open_or_create(
        dir: &Path,
        ns: &str,
        key: u64,
        name: &str,
        kind: u32,
        geo: Geometry,
        policy: Policy,
    ) -> Result<Self> {
        validate_name(name)?;
        let path = dir.join(channel_file_name(ns, name));
        for _ in 0..8 {
            match os::open_rw(&path) {
                Ok(file) => return Self::check_and_map(file, path, name, key, kind),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BlobError::os("open", &path, e)),
            }
            let file = os::create_anonymous(dir)?;
            let guard = fork::register(file.as_raw_fd());
            // The header, records, ring and slot headers are backed now; a
            // slot's payload as messages first reach it (`back`).
            os::reserve_space(&file, geo.backed_at_creation() as u64, dir)?;
            file.set_len(geo.file_size() as u64)
                .map_err(|e| BlobError::os("ftruncate", dir, e))?;
            let map = Mapping::new(&os::reopen(&file, dir)?, geo.file_size(), dir)?;
            // SAFETY: the mapping is page-aligned and file_size bytes long.
            let ring = unsafe {
                Ring::new(
                    map.base(),
                    geo,
                    kind == KIND_QUEUE,
                    policy.overflow == OVERFLOW_DROP_OLDEST,
                )
            };
            init_header(&ring, kind, geo, key, policy);
            match os::link_anonymous(&file, &path) {
                Ok(()) => {
                    return Ok(Self {
                        ring,
                        name: name.to_owned(),
                        path,
                        policy,
                        fork_epoch: fork::epoch(),
                        identity: identity(&file, &ring),
                        _fork: guard,
                        file,
                        _map: map,
                        backed: unbacked(geo.pool),
                    })
                }
                // Another process created it first: open theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(BlobError::os("linkat", &path, e)),
            }
        }
        Err(BlobError::Corrupt {
            file: path,
            detail: "the channel file keeps appearing and vanishing".into(),
        })
    }

    /// Validates an existing channel file before mapping it: magic,
    /// version, kind, geometry, incarnation and size.
    fn check_and_map(file: File, path: PathBuf, name: &str, key: u64, kind: u32) -> Result<Self> {
        os::check_owner(&file, &path)?;
        let (found_kind, geo, policy) = read_identity(&file, &path, Some(key))?;
        if found_kind != kind {
            return Err(BlobError::ChannelKind {
                channel: name.to_owned(),
                expected: kind_name(kind),
                found: kind_name(found_kind),
            });
        }
        let guard = fork::register(file.as_raw_fd());
        let map = Mapping::new(&os::reopen(&file, &path)?, geo.file_size(), &path)?;
        // SAFETY: read_identity checked the file holds exactly file_size
        // bytes (the reopened description is the same file); the mapping is
        // page-aligned.
        let ring = unsafe {
            Ring::new(
                map.base(),
                geo,
                kind == KIND_QUEUE,
                policy.overflow == OVERFLOW_DROP_OLDEST,
            )
        };
        Ok(Self {
            identity: identity(&file, &ring),
            ring,
            name: name.to_owned(),
            path,
            policy,
            fork_epoch: fork::epoch(),
            _fork: guard,
            file,
            _map: map,
            backed: unbacked(geo.pool),
        })
    }

    /// Whether this process is a fork child of the one that opened the
    /// file: the endpoint's record belongs to that process, and this one
    /// must not act on it (one Relaxed load).
    pub(crate) fn inherited(&self) -> bool {
        fork::epoch() != self.fork_epoch
    }

    /// The error of an inherited endpoint.
    pub(crate) fn inherited_error(&self, what: &'static str) -> BlobError {
        BlobError::Inherited {
            what,
            channel: self.name.clone(),
        }
    }

    /// Whether a receiver that dies holding a message gives it back.
    pub(crate) fn redelivers(&self) -> bool {
        self.ring.is_queue() && self.policy.delivery == DELIVERY_AT_LEAST_ONCE
    }

    /// Wakes consumers sleeping on the ring, if any announced itself (or
    /// always); returns whether it made the system call.
    pub(crate) fn wake_consumers(&self, always: bool) -> bool {
        let h = self.ring.header();
        super::wait::wake(&h.data_seq, &h.data_waiters, always)
    }

    /// Wakes producers waiting for space, if any announced itself.
    pub(crate) fn wake_producers(&self) {
        let h = self.ring.header();
        super::wait::wake(&h.space_seq, &h.space_waiters, false);
    }

    /// Frees what consumers released; wakes producers waiting for space.
    /// Returns how many entries it freed.
    pub(crate) fn release(&self, ack: &dyn Fn([u8; 24])) -> u64 {
        let freed = self.ring.release(crate::clock::now_ms(), &mut |h| ack(h));
        if freed > 0 {
            self.wake_producers();
        }
        freed
    }

    /// Takes a free participant record of `role`; a record whose holder
    /// died is repaired first. Returns the record's index in its role.
    pub(crate) fn register(&self, role: Role, ack: &dyn Fn([u8; 24])) -> Result<usize> {
        for index in role.records() {
            let got = os::try_lock_byte(&self.file, lock_byte(index))
                .map_err(|e| BlobError::os("fcntl(F_OFD_SETLK)", &self.path, e))?;
            if !got {
                continue;
            }
            let rec = self.ring.record(index);
            if rec.in_use.load(Ordering::SeqCst) != 0 {
                self.repair(index, ack);
            }
            rec.pid.store(os::pid(), Ordering::Relaxed);
            rec.count.store(0, Ordering::Relaxed);
            rec.held.store(0, Ordering::Relaxed);
            rec.lagged.store(0, Ordering::Relaxed);
            rec.waiting_since_ms.store(0, Ordering::Relaxed);
            rec.active_ms
                .store(crate::clock::now_ms(), Ordering::Relaxed);
            rec.low.store(LOW_NONE, Ordering::SeqCst);
            rec.in_use.store(1, Ordering::SeqCst);
            let h = self.ring.header();
            if role == Role::Producer {
                // The mask bit first: a consumer that sees the channel has
                // had a producer must also see this one alive (the reverse
                // order let a consumer report Disconnected in between).
                h.producer_mask.fetch_or(1 << index, Ordering::SeqCst);
                h.producers_ever.fetch_add(1, Ordering::SeqCst);
            }
            return Ok(index - role.records().start);
        }
        Err(BlobError::ChannelFull {
            channel: self.name.clone(),
            role: role.name(),
            max: role.records().len(),
        })
    }

    /// Gives record `index` (whose lock the caller holds) back: a
    /// producer's unpublished claims are skipped (before it leaves the
    /// mask, so nobody sees "no producer" while its entry is still
    /// pending) and the slots it was writing freed; a consumer leaves the
    /// frontier's bound and lets go of what it held (a work queue with at
    /// least once delivery requeues it); its waiter bit is cleared, whatever
    /// that frees is acknowledged, and both sides are woken: producers may
    /// have space now, consumers a skipped entry or a requeued message.
    fn repair(&self, index: usize, ack: &dyn Fn([u8; 24])) {
        let h = self.ring.header();
        let rec = self.ring.record(index);
        let mut ack_mut = |x: [u8; 24]| ack(x);
        if index < MAX_PRODUCERS {
            self.ring.skip_claims_of(index as u32, &mut ack_mut);
            h.space_waiters
                .fetch_and(!(1u32 << index), Ordering::SeqCst);
            h.producer_mask
                .fetch_and(!(1u64 << index), Ordering::SeqCst);
        } else {
            let c = index - MAX_PRODUCERS;
            h.data_waiters.fetch_and(!(1u32 << c), Ordering::SeqCst);
            self.ring.leave(c);
            self.ring.drop_holds_of(c, self.redelivers(), &mut ack_mut);
        }
        rec.in_use.store(0, Ordering::SeqCst);
        h.evicted.fetch_add(1, Ordering::Relaxed);
        // For operators: who was evicted last, and when (not synchronised
        // with each other; a display may pair one eviction's pid with the
        // next one's time).
        h.last_evicted_pid
            .store(rec.pid.load(Ordering::Relaxed), Ordering::Relaxed);
        h.last_evicted_role
            .store(if index < MAX_PRODUCERS { 1 } else { 2 }, Ordering::Relaxed);
        h.last_evicted_unix_ms
            .store(crate::clock::unix_ms(), Ordering::Relaxed);
        self.ring.release(crate::clock::now_ms(), &mut ack_mut);
        self.wake_producers();
        self.wake_consumers(false);
    }

    /// Releases this endpoint's own record `index` of `role` (clean exit).
    pub(crate) fn unregister(&self, role: Role, index: usize) {
        let i = role.records().start + index;
        let h = self.ring.header();
        if role == Role::Producer {
            h.producer_mask.fetch_and(!(1u64 << i), Ordering::SeqCst);
        } else {
            self.ring.leave(index);
        }
        self.ring.record(i).in_use.store(0, Ordering::SeqCst);
        let _ = os::unlock_byte(&self.file, lock_byte(i));
    }

    /// Evicts every participant of `role` (but record `skip`, this
    /// endpoint's own) whose process is gone: its record says in use and
    /// its lock byte is free. Scans the records, not the masks, so a repair
    /// interrupted by another death is finished. Returns how many.
    pub(crate) fn evict_dead(
        &self,
        role: Role,
        skip: Option<usize>,
        ack: &dyn Fn([u8; 24]),
    ) -> usize {
        let mut evicted = 0;
        for index in role.records() {
            if Some(index - role.records().start) == skip
                || self.ring.record(index).in_use.load(Ordering::SeqCst) == 0
            {
                continue;
            }
            // Taking the lock proves its holder gone (a live holder, this
            // process's other endpoints included, keeps it) and keeps a new
            // holder out while we repair.
            if matches!(os::try_lock_byte(&self.file, lock_byte(index)), Ok(true)) {
                if self.ring.record(index).in_use.load(Ordering::SeqCst) != 0 {
                    self.repair(index, ack);
                    evicted += 1;
                }
                let _ = os::unlock_byte(&self.file, lock_byte(index));
            }
        }
        evicted
    }
}

fn init_header(ring: &Ring, kind: u32, geo: Geometry, key: u64, policy: Policy) {
    let h = ring.header();
    h.version.store(CHAN_VERSION, Ordering::Relaxed);
    h.kind.store(kind, Ordering::Relaxed);
    h.slots.store(geo.slots, Ordering::Relaxed);
    h.slot_size.store(geo.slot_size, Ordering::Relaxed);
    h.store_key.store(key, Ordering::Relaxed);
    h.created_unix_ms
        .store(crate::clock::unix_ms(), Ordering::Relaxed);
    h.max_held.store(policy.max_held, Ordering::Relaxed);
    h.overflow.store(policy.overflow, Ordering::Relaxed);
    h.delivery.store(policy.delivery, Ordering::Relaxed);
    h.pool.store(geo.pool, Ordering::Relaxed);
    h.stall_timeout_ms
        .store(policy.stall_timeout_ms, Ordering::Relaxed);
    for i in 0..RECORDS {
        ring.record(i).low.store(LOW_NONE, Ordering::Relaxed);
    }
    // Each entry starts out naming its own slot (the one it reuses while
    // free). No payload is backed yet: a slot is backed as far as the
    // messages written into it reach.
    for i in 0..geo.slots {
        ring.entry(i as u64).slot.store(i, Ordering::Relaxed);
    }
    // The file has no name yet: `linkat` publishes it complete.
    h.magic.store(CHAN_MAGIC, Ordering::Release);
}

/// Reads and checks the identity of a channel file with `pread` (nothing
/// is mapped): magic, version, kind, geometry, policy, size, and (with
/// `key`) the store incarnation. Returns the kind, geometry and policy.
pub(crate) fn read_identity(
    file: &File,
    path: &Path,
    key: Option<u64>,
) -> Result<(u32, Geometry, Policy)> {
    let mut head = [0u8; 80];
    let n = os::read_prefix(file, &mut head, path)?;
    if n < 80 {
        return Err(BlobError::Corrupt {
            file: path.to_owned(),
            detail: format!("channel file is truncated to {n} bytes"),
        });
    }
    let u32_at = |o: usize| u32::from_le_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let magic = u64_at(0);
    if magic != CHAN_MAGIC || u32_at(8) != CHAN_VERSION {
        return Err(BlobError::IncompatibleFormat {
            file: path.to_owned(),
            expected: CHAN_VERSION,
            detail: format!("channel magic {magic:#018x}, version {}", u32_at(8)),
        });
    }
    let kind = u32_at(12);
    if kind != KIND_BROADCAST && kind != KIND_QUEUE {
        return Err(BlobError::Corrupt {
            file: path.to_owned(),
            detail: format!("channel kind {kind}"),
        });
    }
    let corrupt = |detail: String| BlobError::Corrupt {
        file: path.to_owned(),
        detail,
    };
    let policy = Policy {
        max_held: u32_at(48),
        overflow: u32_at(52),
        delivery: u32_at(56),
        stall_timeout_ms: u64_at(72),
    };
    policy.check().map_err(corrupt)?;
    let geo = Geometry::new(u32_at(16), u32_at(20), policy.max_held).map_err(corrupt)?;
    if u32_at(60) != geo.pool {
        return Err(corrupt(format!(
            "pool of {} slots, expected {}",
            u32_at(60),
            geo.pool
        )));
    }
    if let Some(key) = key {
        if u64_at(24) != key {
            return Err(BlobError::Corrupt {
                file: path.to_owned(),
                detail: "the channel file belongs to an earlier incarnation of the namespace"
                    .into(),
            });
        }
    }
    let len = os::file_len(file, path)?;
    if len != geo.file_size() as u64 {
        return Err(BlobError::Corrupt {
            file: path.to_owned(),
            detail: format!("channel file is {len} bytes, expected {}", geo.file_size()),
        });
    }
    Ok((kind, geo, policy))
}
