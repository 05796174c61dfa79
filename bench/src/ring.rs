//! A single-producer single-consumer ring of fixed 32-byte messages in a
//! shared-memory file: the "any channel" that carries handles between the
//! benchmark's processes. Spins (with `yield_now`) when empty or full.

use memmap2::MmapMut;
use std::fs::{File, OpenOptions};
use std::io::{Error, ErrorKind, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Messages the ring holds.
const MAX_CAPACITY: u64 = 4096;
const CAPACITY: usize = 16; // set at creation
const HEAD: usize = 0; // written by the producer
const CLOSED: usize = 8; // set by the producer when it is done
const TAIL: usize = 64; // written by the consumer
const SLOTS: usize = 128;
const SLOT_WORDS: usize = 4;
const SIZE: usize = SLOTS + MAX_CAPACITY as usize * SLOT_WORDS * 8;

/// One end of a ring.
pub struct Ring {
    map: MmapMut,
    path: PathBuf,
    owner: bool,
}

impl Ring {
    /// Creates the ring file at `path` with room for `capacity` messages in
    /// flight (1 to 4096); the producer's end, which removes the file on drop.
    pub fn create(path: &Path, capacity: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        file.set_len(SIZE as u64)?;
        let map = map(&file)?;
        let ring = Self {
            map,
            path: path.to_owned(),
            owner: true,
        };
        ring.word(CAPACITY)
            .store(capacity.clamp(1, MAX_CAPACITY), Ordering::Relaxed);
        Ok(ring)
    }

    fn capacity(&self) -> u64 {
        self.word(CAPACITY)
            .load(Ordering::Relaxed)
            .clamp(1, MAX_CAPACITY)
    }

    /// Opens an existing ring (the consumer's end).
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        if file.metadata()?.len() != SIZE as u64 {
            return Err(Error::new(ErrorKind::InvalidData, "not a benchmark ring"));
        }
        let map = map(&file)?;
        Ok(Self {
            map,
            path: path.to_owned(),
            owner: false,
        })
    }

    fn word(&self, byte_offset: usize) -> &AtomicU64 {
        debug_assert!(byte_offset + 8 <= SIZE && byte_offset % 8 == 0);
        // SAFETY: every offset used is 8-aligned and inside the SIZE-byte
        // mapping (checked by the constants above); the mapping lives as
        // long as `self`; AtomicU64 is valid for any bit pattern.
        unsafe { &*(self.map.as_ptr().add(byte_offset) as *const AtomicU64) }
    }

    fn slot(&self, index: u64, word: usize) -> &AtomicU64 {
        self.word(SLOTS + ((index % MAX_CAPACITY) as usize * SLOT_WORDS + word) * 8)
    }

    /// Sends one message, waiting while the ring is full.
    pub fn push(&self, msg: [u64; SLOT_WORDS]) {
        let head = self.word(HEAD).load(Ordering::Relaxed);
        // Acquire: pairs with the consumer's Release store of TAIL, so the
        // slot is free before we overwrite it.
        let capacity = self.capacity();
        while head - self.word(TAIL).load(Ordering::Acquire) >= capacity {
            std::thread::yield_now();
        }
        for (i, w) in msg.iter().enumerate() {
            self.slot(head, i).store(*w, Ordering::Relaxed);
        }
        // Release: pairs with the consumer's Acquire load of HEAD.
        self.word(HEAD).store(head + 1, Ordering::Release);
    }

    /// Receives one message; `None` once the producer closed the ring and
    /// everything was received.
    pub fn pop(&self) -> Option<[u64; SLOT_WORDS]> {
        let tail = self.word(TAIL).load(Ordering::Relaxed);
        loop {
            // Acquire: pairs with the producer's Release store of HEAD.
            if self.word(HEAD).load(Ordering::Acquire) > tail {
                break;
            }
            // Acquire: pairs with the Release in `close`; HEAD is re-read
            // after it so no message pushed before closing is missed.
            if self.word(CLOSED).load(Ordering::Acquire) != 0
                && self.word(HEAD).load(Ordering::Acquire) == tail
            {
                return None;
            }
            std::hint::spin_loop();
        }
        let mut msg = [0u64; SLOT_WORDS];
        for (i, w) in msg.iter_mut().enumerate() {
            *w = self.slot(tail, i).load(Ordering::Relaxed);
        }
        // Release: the slot may be reused once the producer sees this.
        self.word(TAIL).store(tail + 1, Ordering::Release);
        Some(msg)
    }

    /// Tells the consumer no more messages come.
    pub fn close(&self) {
        self.word(CLOSED).store(1, Ordering::Release);
    }
}

/// Maps the ring file (checked to be SIZE bytes long by the caller).
fn map(file: &File) -> Result<MmapMut> {
    // SAFETY: the file is SIZE bytes long and only ever accessed through
    // atomics (`Ring::word`), so a concurrent writer in another process
    // cannot make a read see torn or invalid values; the benchmark's files
    // are not truncated while mapped.
    unsafe { MmapMut::map_mut(file) }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "real system calls: Miri cannot run them")]
    fn messages_cross_in_order_and_close_ends_the_stream() {
        let path = stable_fragmented_buffer::inspect::shm_dir()
            .join(format!("sfbtest-ring-{}", std::process::id()));
        let tx = Ring::create(&path, 64).unwrap();
        let rx = Ring::open(&path).unwrap();
        let consumer = std::thread::spawn(move || {
            let mut n = 0u64;
            while let Some(m) = rx.pop() {
                assert_eq!(m, [n, n + 1, n + 2, n + 3]);
                n += 1;
            }
            n
        });
        for n in 0..10_000u64 {
            tx.push([n, n + 1, n + 2, n + 3]);
        }
        tx.close();
        assert_eq!(consumer.join().unwrap(), 10_000);
        drop(tx);
        assert!(!path.exists());
    }
}
