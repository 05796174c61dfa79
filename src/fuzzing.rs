//! Checks shared by the coverage-guided fuzz targets (`fuzz/`) and the
//! regression test that replays the inputs they found
//! (`tests/fuzz_regressions.rs`). Not part of the stable API.

use crate::layout::{CHUNK_HEADER_SIZE, CTRL_MAGIC, CTRL_SIZE, FORMAT_VERSION};
use crate::{Config, OverflowHandle, PinnedBlobStore, SharedBackend};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A namespace for one fuzz case (removed by the case).
pub fn namespace() -> String {
    format!(
        "sfbfuzz-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn blob(i: u64) -> Vec<u8> {
    (0..1 + (i as usize * 131) % 2500)
        .map(|j| (j as u64 ^ i.wrapping_mul(0x9E37)) as u8)
        .collect()
}

/// A live store with known contents, for [`handles`].
pub struct Live {
    /// The store.
    pub store: PinnedBlobStore,
    /// Every handle appended, with its bytes.
    pub known: HashMap<OverflowHandle, Vec<u8>>,
}

impl Live {
    /// Creates it under a fresh namespace (removed when dropped).
    pub fn new() -> Self {
        let cfg = Config {
            decay_timeout_ms: 0,
            ..Config::default()
        };
        let store = PinnedBlobStore::new_shared(cfg, &namespace(), 8192).expect("fuzz store");
        let known = (0..24).map(|i| {
            let b = blob(i);
            (store.append_shared(&b).expect("append"), b)
        });
        let known = known.collect();
        Self { store, known }
    }
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

impl Live {
    /// The bytes appended at the entry `h` names: (chunk, offset, size,
    /// generation); the timestamp is informational (format 3 does not key
    /// the tag on it).
    pub fn bytes_at(&self, h: &OverflowHandle) -> Option<&Vec<u8>> {
        self.known
            .iter()
            .find(|(k, _)| {
                (k.page_id, k.offset, k.size, k.generation)
                    == (h.page_id, h.offset, h.size, h.generation)
            })
            .map(|(_, v)| v)
    }
}

/// Arbitrary 24-byte handles (and handles near real ones) against a live
/// store: each resolves to nothing or to exactly the bytes appended under it.
pub fn handles(live: &Live, input: &[u8]) -> Result<(), String> {
    let real: Vec<OverflowHandle> = live.known.keys().copied().collect();
    for (i, raw) in input.chunks_exact(24).enumerate() {
        let mut b = [0u8; 24];
        b.copy_from_slice(raw);
        let mut candidates = vec![OverflowHandle::from_array(&b)];
        // Also the nearest real handle with this input's offset and size.
        let mut near = real[i % real.len()];
        near.offset = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
        near.size = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]) & 0xFFFF;
        candidates.push(near);
        for h in candidates {
            if let Some(got) = live.store.resolve(&h) {
                if live.bytes_at(&h) != Some(&got) {
                    return Err(format!("{h:?} resolved to bytes never appended under it"));
                }
            }
            if let Some(v) = live.store.resolve_ref(&h) {
                if live.bytes_at(&h).map(|k| &k[..]) != Some(&v[..]) {
                    return Err(format!("{h:?} viewed bytes never appended under it"));
                }
            }
        }
    }
    Ok(())
}

/// Arbitrary bytes as a control file (first input byte: 1 = give it our
/// magic and version, 2 = also the exact size), then every operation.
pub fn control_file(input: &[u8]) -> Result<(), String> {
    let Some((&mode, body)) = input.split_first() else {
        return Ok(());
    };
    let ns = namespace();
    let mut bytes = body.to_vec();
    if mode & 1 == 1 && bytes.len() >= 12 {
        bytes[..8].copy_from_slice(&CTRL_MAGIC.to_le_bytes());
        bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    }
    if mode & 2 == 2 {
        bytes.resize(CTRL_SIZE, 0);
    }
    let path = crate::os::shm_dir().join(format!("{ns}_ctrl"));
    std::fs::write(&path, &bytes).map_err(|e| e.to_string())?;
    if let Ok(store) = PinnedBlobStore::attach_shared(Config::default(), &ns) {
        let h = OverflowHandle {
            page_id: 0,
            offset: CHUNK_HEADER_SIZE as u32,
            size: 3,
            generation: 1,
            timestamp: 1,
        };
        let _ = store.resolve(&h);
        let _ = store.acknowledge_shared(&h);
        let _ = store.append_shared(b"abc");
        let _ = store.cleanup_shared();
    }
    let _ = SharedBackend::cleanup_namespace_forced(&ns);
    leftovers(&ns)
}

/// Arbitrary bytes written over a live chunk (in place, never shortening
/// it), then every handle resolved from a fresh attachment: nothing, or
/// exactly the appended bytes.
pub fn chunk_file(input: &[u8]) -> Result<(), String> {
    let live = Live::new();
    let ns = live
        .store
        .shared_backend()
        .map(|b| b.namespace().to_owned())
        .unwrap_or_default();
    let reader =
        PinnedBlobStore::attach_shared(Config::default(), &ns).map_err(|e| e.to_string())?;
    let path = crate::os::shm_dir().join(format!("{ns}_data_0"));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| e.to_string())?;
        f.write_all_at(input, 0).map_err(|e| e.to_string())?;
    }
    for (h, data) in &live.known {
        for who in [&reader, &live.store] {
            if let Some(got) = who.resolve(h) {
                if &got != data {
                    return Err(format!("{h:?} resolved to other bytes after scribbling"));
                }
            }
            let _ = who.acknowledge_shared(h);
        }
    }
    let _ = reader.cleanup_shared();
    drop(reader);
    drop(live);
    leftovers(&ns)
}

fn leftovers(ns: &str) -> Result<(), String> {
    let dir = crate::os::shm_dir();
    let prefix = format!("{ns}_");
    let left: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("left files: {left:?}"))
    }
}

/// Arbitrary bytes as a channel file. First input byte: bit 0 set = the
/// bytes replace the whole file (any length); clear = they are written in
/// place after the file's 80-byte identity (magic, version, kind, geometry,
/// incarnation, policy), so the ring itself is scribbled. Bit 1 picks the
/// kind, bit 2 the broadcast overflow policy (Block or DropOldest). Then
/// every endpoint is opened and used: typed errors, never a panic, a hang
/// or a leftover file.
pub fn channel_file(input: &[u8]) -> Result<(), String> {
    use std::time::Duration;
    let Some((&mode, body)) = input.split_first() else {
        return Ok(());
    };
    let ns = namespace();
    let store =
        PinnedBlobStore::new_shared(Config::default(), &ns, 1 << 20).map_err(|e| e.to_string())?;
    let queue = mode & 2 == 2;
    let small = crate::ChannelConfig {
        slots: 8,
        slot_size: 256,
        max_held: 2,
        ..crate::ChannelConfig::default()
    }
    .overflow(if mode & 4 == 4 {
        crate::Overflow::Block
    } else {
        crate::Overflow::DropOldest
    });
    {
        // A real channel with messages in it, inline and in the store.
        if queue {
            let tx = store.sender_with("f", small).map_err(|e| e.to_string())?;
            let _ = tx.try_send(b"inline");
            let _ = tx.try_send(&[5u8; 1000]);
        } else {
            let _rx = store
                .subscriber_with("f", small)
                .map_err(|e| e.to_string())?;
            let tx = store
                .publisher_with("f", small)
                .map_err(|e| e.to_string())?;
            let _ = tx.try_send(b"inline");
            let _ = tx.try_send(&[5u8; 1000]);
        }
    }
    let path = crate::os::shm_dir().join(crate::channel::channel_file_name(&ns, "f"));
    if mode & 1 == 1 {
        std::fs::write(&path, body).map_err(|e| e.to_string())?;
    } else {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| e.to_string())?;
        f.write_all_at(body, 80).map_err(|e| e.to_string())?;
    }
    let t = std::time::Instant::now();
    // Subscriber and Receiver (Publisher and Sender) share their API, not
    // a type: the same calls on either.
    macro_rules! consume {
        ($rx:expr) => {
            if let Ok(rx) = $rx {
                for _ in 0..4 {
                    if let Ok(m) = rx.try_recv() {
                        let _ = m.iter().map(|&b| b as u64).sum::<u64>();
                    }
                }
                let _ = rx.recv_timeout(Duration::from_millis(1));
            }
        };
    }
    macro_rules! produce {
        ($tx:expr) => {
            if let Ok(tx) = $tx {
                let _ = tx.try_send(b"x");
                let _ = tx.try_send(&[1u8; 600]);
            }
        };
    }
    if queue {
        consume!(store.receiver("f"));
        produce!(store.sender("f"));
    } else {
        consume!(store.subscriber("f"));
        produce!(store.publisher("f"));
    }
    if t.elapsed() > Duration::from_secs(5) {
        return Err(format!("a hostile channel file took {:?}", t.elapsed()));
    }
    drop(store);
    // The creator's drop removes the files of its own incarnation; a file
    // that now claims another (a scribbled key) is left to the recovery
    // that handles stale files: cleanup_namespace once the creator is gone.
    SharedBackend::cleanup_namespace(&ns).map_err(|e| e.to_string())?;
    leftovers(&ns)
}
