//! The bare ring: the machine's bound for a channel between two processes.
//!
//! A single-producer, single-consumer ring of variable-size messages in a
//! shared-memory file, with nothing else: no store, no handles, no
//! wake-ups. Each slot holds a length word and up to `size` bytes (slots
//! are sized to the message, rounded up to 64 bytes). The producer copies
//! a message into the next slot and publishes its head with a Release
//! store; the consumer reads every byte of each message (summing them, so
//! the read is not optimised away) and publishes its tail every
//! [`PUBLISH_EVERY`] messages (or every half ring if the ring is smaller);
//! both busy-poll. The measurement is the channel cell's: a stream as fast
//! as it goes, then paced messages for the one-way latency. Every channel
//! row prints its throughput as a ratio of this row's ("of bound").

use super::channel::{paced, spin_until, touch};
use super::cross::{expect_line, mono_ns, parse_result, report, spawn_peer};
use super::stats::Cell;
use super::workloads::{bench_namespace, ops_for};
use super::Options;
use memmap2::MmapMut;
use std::fs::OpenOptions;
use std::io::{Error, ErrorKind, Result};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The consumer publishes its tail every this many messages.
pub const PUBLISH_EVERY: u64 = 32;

/// Most bytes of slots: the L2 of the development machine (as the
/// channel's ring sized to the message, see `channel::sized_in_flight`).
const RING_BYTES: usize = 4 << 20;

// Header words, each on its own cache line (two lines apart, against the
// adjacent-line prefetcher).
const HEAD: usize = 0; // messages published, by the producer
const TAIL: usize = 128; // messages released, by the consumer
const CLOSED: usize = 256; // set by the producer when it is done
const SLOTS: usize = 320; // geometry, written at creation
const STRIDE: usize = 328;
const BATCH: usize = 336;
const CAPACITY: usize = 344;
const HEADER: usize = 384;

/// Spins between checks that the other process is still there.
const CHECK_EVERY: u32 = 1 << 16;

/// The ring's shape for messages of up to `size` bytes: (slots, bytes per
/// slot, messages per tail publication).
pub fn geometry(size: usize) -> (usize, usize, u64) {
    let stride = (8 + size).next_multiple_of(64);
    let slots = (RING_BYTES / stride).clamp(4, 2 * PUBLISH_EVERY as usize);
    (slots, stride, PUBLISH_EVERY.min(slots as u64 / 2))
}

/// A mapped ring file (either end).
struct Map {
    map: MmapMut,
    slots: usize,
    stride: usize,
    batch: u64,
    capacity: usize,
}

impl Map {
    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset + 8 <= self.map.len() && offset % 8 == 0);
        // SAFETY: in bounds and 8-aligned (asserted; the mapping is
        // page-aligned); the mapping lives as long as `self`; AtomicU64 is
        // valid for any bit pattern.
        unsafe { &*(self.map.as_ptr().add(offset) as *const AtomicU64) }
    }

    fn slot(&self, pos: usize) -> usize {
        HEADER + pos * self.stride
    }

    /// Maps `file`, reading the geometry from its header.
    fn open(file: &std::fs::File) -> Result<Self> {
        // SAFETY: the file is the benchmark's own ring, not truncated while
        // mapped; every access goes through atomics (header words, lengths)
        // or through the slot protocol (a slot's bytes are written only
        // while the consumer has released it, read only once published).
        let map = unsafe { MmapMut::map_mut(file)? };
        if map.len() < HEADER {
            return Err(Error::new(ErrorKind::InvalidData, "not a bare ring"));
        }
        let mut m = Self {
            map,
            slots: 0,
            stride: 64,
            batch: 1,
            capacity: 0,
        };
        m.slots = m.word(SLOTS).load(Ordering::Relaxed) as usize;
        m.stride = m.word(STRIDE).load(Ordering::Relaxed) as usize;
        m.batch = m.word(BATCH).load(Ordering::Relaxed);
        m.capacity = m.word(CAPACITY).load(Ordering::Relaxed) as usize;
        let fits = m.slots >= 2
            && m.stride % 64 == 0
            && m.capacity + 8 <= m.stride
            && (1..=m.slots as u64 / 2).contains(&m.batch)
            && HEADER + m.slots * m.stride == m.map.len();
        if !fits {
            return Err(Error::new(ErrorKind::InvalidData, "not a bare ring"));
        }
        Ok(m)
    }

    /// Touches every page, so neither end pays page faults while timed.
    fn fault_in(&mut self) {
        for i in (0..self.map.len()).step_by(4096) {
            // SAFETY: in bounds; a plain read of a byte another process may
            // write is done through a volatile load of a u8 (no tearing).
            unsafe { std::ptr::read_volatile(self.map.as_ptr().add(i)) };
        }
    }
}

/// The producer's end: it creates the file and removes it when dropped
/// (or earlier, by [`Producer::unlink`], once the consumer has mapped it).
pub struct Producer {
    m: Map,
    path: Option<PathBuf>,
    head: u64,
    pos: usize,
    tail_seen: u64,
}

impl Producer {
    /// Creates the ring file at `path` for messages of up to `size` bytes.
    pub fn create(path: &Path, size: usize) -> Result<Self> {
        let (slots, stride, batch) = geometry(size);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        // From here on the file is removed however this ends.
        let remove = RemoveOnDrop(Some(path.to_owned()));
        file.set_len((HEADER + slots * stride) as u64)?;
        // SAFETY: see `Map::open` (the file was just sized).
        let map = unsafe { MmapMut::map_mut(&file)? };
        let mut m = Map {
            map,
            slots,
            stride,
            batch,
            capacity: size,
        };
        // Faults every page in for writing (the file is new: zeros anyway).
        m.map.fill(0);
        m.word(SLOTS).store(slots as u64, Ordering::Relaxed);
        m.word(STRIDE).store(stride as u64, Ordering::Relaxed);
        m.word(BATCH).store(batch, Ordering::Relaxed);
        m.word(CAPACITY).store(size as u64, Ordering::Relaxed);
        Ok(Self {
            m,
            path: remove.disarm(),
            head: 0,
            pos: 0,
            tail_seen: 0,
        })
    }

    /// Removes the file now (both ends keep their mappings).
    pub fn unlink(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Sends `data` (at most the ring's message size), spinning while the
    /// ring is full; `gone` is asked now and then while spinning whether
    /// the consumer has gone (then this panics rather than spin forever).
    pub fn send(&mut self, data: &[u8], gone: &mut impl FnMut() -> bool) {
        assert!(data.len() <= self.m.capacity, "message larger than a slot");
        let slots = self.m.slots as u64;
        let mut spins = 0u32;
        while self.head - self.tail_seen >= slots {
            // Acquire: pairs with the consumer's Release store of TAIL, so
            // the slots it released are read before we overwrite them.
            self.tail_seen = self.m.word(TAIL).load(Ordering::Acquire);
            if self.head - self.tail_seen < slots {
                break;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins % CHECK_EVERY == 0 {
                assert!(!gone(), "the bare ring's consumer is gone");
            }
        }
        let at = self.m.slot(self.pos);
        self.m.word(at).store(data.len() as u64, Ordering::Relaxed);
        // SAFETY: `at + 8 .. at + 8 + data.len()` is inside the slot
        // (len <= capacity, capacity + 8 <= stride) and so inside the
        // mapping; the consumer does not read this slot until HEAD covers
        // it (published below) and released it (TAIL, acquired above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.m.map.as_mut_ptr().add(at + 8),
                data.len(),
            );
        }
        self.head += 1;
        self.pos = if self.pos + 1 == self.m.slots {
            0
        } else {
            self.pos + 1
        };
        // Release: pairs with the consumer's Acquire load of HEAD.
        self.m.word(HEAD).store(self.head, Ordering::Release);
    }

    /// Tells the consumer no more messages come.
    pub fn close(&self) {
        // Release: after every HEAD store, so the consumer sees them all.
        self.m.word(CLOSED).store(1, Ordering::Release);
    }

    /// (slots, bytes per slot, messages per tail publication).
    pub fn geometry(&self) -> (usize, usize, u64) {
        (self.m.slots, self.m.stride, self.m.batch)
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.unlink();
    }
}

/// Removes a path when dropped, unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) -> Option<PathBuf> {
        self.0.take()
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The consumer's end.
pub struct Consumer {
    m: Map,
    tail: u64,
    pos: usize,
    head_seen: u64,
}

impl Consumer {
    /// Opens the ring file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut m = Map::open(&file)?;
        m.fault_in();
        Ok(Self {
            m,
            tail: 0,
            pos: 0,
            head_seen: 0,
        })
    }

    /// Waits for the next message and calls `f` on its bytes; `None` once
    /// the producer closed the ring and everything was received, or if
    /// `gone` (asked now and then while spinning) says it has gone.
    pub fn recv<R>(
        &mut self,
        gone: &mut impl FnMut() -> bool,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Option<R> {
        let mut spins = 0u32;
        while self.head_seen == self.tail {
            // Acquire: pairs with the producer's Release store of HEAD.
            self.head_seen = self.m.word(HEAD).load(Ordering::Acquire);
            if self.head_seen != self.tail {
                break;
            }
            // Acquire: pairs with the Release in `close`; HEAD is read again
            // after it so that no message sent before closing is missed.
            if self.m.word(CLOSED).load(Ordering::Acquire) != 0
                && self.m.word(HEAD).load(Ordering::Acquire) == self.tail
            {
                return None;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins % CHECK_EVERY == 0 && gone() {
                return None;
            }
        }
        let at = self.m.slot(self.pos);
        let len = (self.m.word(at).load(Ordering::Relaxed) as usize).min(self.m.capacity);
        // SAFETY: inside the slot (len clamped to the capacity), so inside
        // the mapping; the producer published it (HEAD, acquired above)
        // and does not write it again until our TAIL covers it (below,
        // after `f` is done with the slice).
        let bytes = unsafe { std::slice::from_raw_parts(self.m.map.as_ptr().add(at + 8), len) };
        let out = f(bytes);
        self.tail += 1;
        self.pos = if self.pos + 1 == self.m.slots {
            0
        } else {
            self.pos + 1
        };
        if self.tail % self.m.batch == 0 {
            // Release: our reads of the released slots happen before the
            // producer's overwrite (its Acquire load of TAIL).
            self.m.word(TAIL).store(self.tail, Ordering::Release);
        }
        Some(out)
    }
}

/// Kills and reaps the consumer process if it is still running when
/// dropped (a run that failed).
pub(crate) struct Reaped(Child);

impl Reaped {
    pub(crate) fn new(child: Child) -> Self {
        Self(child)
    }

    /// Waits for the process to exit.
    pub(crate) fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }

    fn gone(&mut self) -> bool {
        !matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The bare ring's cell for `size`-byte messages: a producer (this
/// process) and a consumer process, as `channel::channel_cycle` measures a
/// channel. Its bound is its own throughput (the channel rows' bound).
pub fn bare_ring_cycle(opts: &Options, size: usize) -> Cell {
    let ops = ops_for(opts, size);
    let (n_paced, gap) = paced(opts, false, size);
    let path = stable_fragmented_buffer::inspect::shm_dir()
        .join(format!("{}-bare-ring", bench_namespace()));
    let mut ring = Producer::create(&path, size).expect("bare ring");
    let (child, mut out) = spawn_peer(
        "bare-ring-consumer",
        &[
            ("SFB_BENCH_RING", path.display().to_string()),
            ("SFB_BENCH_OPS", ops.to_string()),
        ],
    )
    .expect("consumer process");
    let mut child = Reaped::new(child);
    expect_line(&mut out, "READY");
    // Both ends have it mapped: nothing is left in the shared-memory
    // directory from here on, however the run ends.
    ring.unlink();
    let mut gone = || child.gone();
    let mut data: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let stamp = |d: &mut Vec<u8>| {
        if d.len() >= 8 {
            d[..8].copy_from_slice(&mono_ns().to_le_bytes());
        }
    };
    let start = Instant::now();
    for _ in 0..ops {
        stamp(&mut data);
        ring.send(&data, &mut gone);
    }
    expect_line(&mut out, "STREAMED");
    let secs = start.elapsed().as_secs_f64();
    let mut next = Instant::now();
    for _ in 0..n_paced {
        next += gap;
        spin_until(next);
        stamp(&mut data);
        ring.send(&data, &mut gone);
    }
    ring.close();
    let (count, lat) = parse_result(&expect_line(&mut out, "RESULT "));
    let _ = child.wait();
    assert_eq!(count, ops + n_paced, "the consumer received every message");
    let (slots, stride, batch) = ring.geometry();
    let mut cell = Cell {
        workload: "bare ring, 2 processes, busy-poll".into(),
        payload: size,
        copies: true,
        bound: None,
        threads: 1,
        state: "-",
        ops,
        secs,
        latency: Some(lat),
        note: format!(
            "the channel rows' bound: SPSC ring of {slots} x {stride} B in a shared-memory file, tail published every {batch}; latency of {n_paced} paced messages, one per {} us",
            gap.as_micros()
        ),
    };
    cell.bound = Some(cell.ops_per_sec() * size as f64);
    cell
}

fn consumer() {
    let path = std::env::var("SFB_BENCH_RING").expect("SFB_BENCH_RING");
    let ops: u64 = std::env::var("SFB_BENCH_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("SFB_BENCH_OPS");
    let mut ring = Consumer::open(path.as_ref()).expect("bare ring");
    let parent = std::os::unix::process::parent_id();
    let mut gone = || std::os::unix::process::parent_id() != parent;
    println!("READY");
    let mut lat = Vec::new();
    let mut count = 0u64;
    let mut sink = 0u64;
    while let Some((now, ts, sum)) = ring.recv(&mut gone, |m| {
        let now = mono_ns();
        let ts = m
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        (now, ts, touch(m))
    }) {
        sink = sink.wrapping_add(sum);
        if count >= ops {
            lat.push(now.saturating_sub(ts));
        }
        count += 1;
        if count == ops {
            println!("STREAMED");
        }
    }
    std::hint::black_box(sink);
    report(count, &mut lat);
}

/// Runs the bare ring's consumer role, if this process is one.
pub(crate) fn run_peer(role: &str) -> bool {
    if role != "bare-ring-consumer" {
        return false;
    }
    consumer();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_holds_two_publications_and_stays_within_the_ring_bytes() {
        for size in [64, 4096, 64 << 10, 1 << 20] {
            let (slots, stride, batch) = geometry(size);
            assert!(stride >= size + 8 && stride % 64 == 0);
            assert!(slots as u64 >= 2 * batch && batch >= 1);
            assert!(slots * stride <= RING_BYTES || slots == 4);
        }
        assert_eq!(geometry(64), (64, 128, 32));
        assert_eq!(geometry(1 << 20).0, 4);
    }

    #[test]
    #[cfg_attr(miri, ignore = "real system calls: Miri cannot run them")]
    fn variable_size_messages_cross_in_order_and_the_file_goes() {
        let path = stable_fragmented_buffer::inspect::shm_dir()
            .join(format!("sfbtest-bare-ring-{}", std::process::id()));
        let mut tx = Producer::create(&path, 200).unwrap();
        let mut rx = Consumer::open(&path).unwrap();
        tx.unlink();
        assert!(!path.exists());
        let consumer = std::thread::spawn(move || {
            let mut n = 0usize;
            while let Some(ok) = rx.recv(&mut || false, |m| {
                m.len() == n % 201 && m.iter().all(|&b| b == n as u8)
            }) {
                assert!(ok, "message {n}");
                n += 1;
            }
            n
        });
        for n in 0..20_000usize {
            tx.send(&vec![n as u8; n % 201], &mut || false);
        }
        tx.close();
        assert_eq!(consumer.join().unwrap(), 20_000);
    }

    #[test]
    #[cfg_attr(miri, ignore = "real system calls: Miri cannot run them")]
    fn dropping_the_producer_removes_the_file() {
        let path = stable_fragmented_buffer::inspect::shm_dir()
            .join(format!("sfbtest-bare-ring-drop-{}", std::process::id()));
        drop(Producer::create(&path, 64).unwrap());
        assert!(!path.exists());
    }
}
