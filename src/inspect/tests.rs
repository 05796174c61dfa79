//! Inspection of real stores, healthy and damaged.

use super::*;
use crate::config::Config;
use crate::SharedBackend;

fn ns(tag: &str) -> String {
    format!("sfbtest-inspect-{}-{tag}", os::pid())
}

/// Byte-for-byte copy of every file of a namespace.
fn snapshot(ns: &str) -> Vec<(String, Vec<u8>)> {
    let dir = os::shm_dir();
    let mut v: Vec<_> = os::list_dir(&dir)
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{ns}_")))
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).unwrap();
            (n, bytes)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_live_store_is_reported_and_left_byte_for_byte_unchanged() {
    let ns = ns("live");
    let store = SharedBackend::create_with_config(&ns, 64 << 10, &Config::default()).unwrap();
    let h = store.append(&[7u8; 1000]).unwrap();
    store.append(&[8u8; 100]).unwrap();
    assert!(store.acknowledge(&h));
    let before = snapshot(&ns);
    let r = inspect_namespace(&ns).unwrap();
    assert_eq!(before, snapshot(&ns), "inspection changed a byte");
    assert_eq!(r.health, Health::Ok, "{:?}", r.problems);
    assert_eq!(r.creator, Creator::Alive { pid: os::pid() });
    assert_eq!(r.format_version, Some(FORMAT_VERSION));
    let c = r.control.as_ref().unwrap();
    assert_eq!(c.chunk_size, 64 << 10);
    assert_eq!(r.chunk_files(), 1);
    let chunk = &r.chunks[0];
    assert!(chunk.active && chunk.registered);
    let hd = chunk.header.as_ref().unwrap();
    assert_eq!(hd.state, ChunkState::InUse);
    assert!(hd.walked);
    let counts = (
        hd.entries,
        hd.acknowledged,
        hd.committed(),
        hd.pending_bytes,
    );
    assert_eq!(counts, (2, 1, 1, 0));
    let fp = |n| entry_footprint(n).unwrap() as u64;
    assert_eq!(hd.used, fp(1000) + fp(100));
    assert_eq!(hd.capacity, (64 << 10) - CHUNK_HEADER_SIZE as u64);
    assert!(r.tmpfs_bytes() >= (64 << 10) + CTRL_SIZE as u64);
    assert!(!r.is_dead());
    drop(store);
    assert!(matches!(
        inspect_namespace(&ns),
        Err(BlobError::NotFound { .. })
    ));
}

#[test]
fn garbage_of_every_shape_is_reported_never_trusted() {
    let dir = os::shm_dir();
    let ns = ns("garbage");
    let ctrl = dir.join(ctrl_file_name(&ns));
    let chunk = dir.join(chunk_file_name(&ns, 0));
    let mut ours = vec![0u8; CTRL_SIZE];
    ours[..8].copy_from_slice(&CTRL_MAGIC.to_le_bytes());
    ours[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let cases: Vec<(Vec<u8>, Health)> = vec![
        (vec![], Health::Foreign),
        (b"SFB".to_vec(), Health::Foreign),
        (b"hello, world, not ours".to_vec(), Health::Foreign),
        (ours[..12].to_vec(), Health::Corrupt),
        (ours[..300].to_vec(), Health::Corrupt),
        // Whole size, every field zero: chunk_size 0 is out of range.
        (ours.clone(), Health::Corrupt),
        (vec![0xff; CTRL_SIZE], Health::Foreign),
        // Our magic and version, then garbage: every field out of range.
        (
            ours[..12]
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0xa5, CTRL_SIZE - 12))
                .collect(),
            Health::Corrupt,
        ),
    ];
    for (bytes, want) in cases {
        std::fs::write(&ctrl, &bytes).unwrap();
        std::fs::write(&chunk, &bytes[..bytes.len().min(200)]).unwrap();
        let r = inspect_namespace(&ns).unwrap();
        assert_eq!(r.health, want, "{} bytes: {:?}", bytes.len(), r.problems);
        assert!(!r.problems.is_empty());
        assert!(r.problems.len() < 10, "{:?}", r.problems);
        assert_eq!(std::fs::read(&ctrl).unwrap(), bytes);
        let listed = list_namespaces(&dir).unwrap();
        let info = listed
            .namespaces
            .iter()
            .find(|i| i.namespace == ns)
            .unwrap();
        assert_eq!(info.health, want);
    }
    os::unlink(&ctrl).unwrap();
    let r = inspect_namespace(&ns).unwrap();
    assert_eq!(r.health, Health::Foreign, "only a foreign chunk file");
    std::fs::write(&chunk, vec![0u8; 4096]).unwrap();
    let r = inspect_namespace(&ns).unwrap();
    assert_eq!(r.health, Health::Orphaned);
    assert!(r.is_dead());
    os::unlink(&chunk).unwrap();
}

#[test]
fn the_entry_walk_counts_written_entries_and_stops_at_a_pending_one() {
    let dir = os::shm_dir();
    let ns = ns("walk");
    let path = dir.join(chunk_file_name(&ns, 5));
    let size = 8192usize;
    let generation = 0xDEAD_BEEF;
    let mut b = vec![0u8; size];
    let put32 = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 = |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put64(&mut b, offset_of!(ChunkHeader, magic), CHUNK_MAGIC);
    put32(&mut b, offset_of!(ChunkHeader, chunk_id), 5);
    put32(&mut b, offset_of!(ChunkHeader, size), size as u32);
    put64(
        &mut b,
        offset_of!(ChunkHeader, state_gen),
        state_gen(STATE_IN_USE, generation),
    );
    put32(&mut b, offset_of!(ChunkHeader, acks), 1);
    // Three entries written (one acknowledged), then one reserved but
    // not written, then one written after it (unreachable by a walk).
    let lens = [10usize, 300, 1, 40, 7];
    let mut off = CHUNK_HEADER_SIZE;
    let mut pending_from = 0;
    for (i, &len) in lens.iter().enumerate() {
        let kind = match i {
            0 => ENTRY_ACKED,
            3 => {
                pending_from = off;
                ENTRY_RESERVED
            }
            _ => ENTRY_COMMITTED,
        };
        if kind != ENTRY_RESERVED {
            put32(&mut b, off + offset_of!(EntryHeader, len), len as u32);
            put32(
                &mut b,
                off + offset_of!(EntryHeader, state),
                entry_state(generation, kind),
            );
        }
        off += entry_footprint(len).unwrap();
    }
    put64(&mut b, offset_of!(ChunkHeader, alloc), off as u64);
    std::fs::write(&path, &b).unwrap();
    let r = inspect_namespace(&ns).unwrap();
    assert_eq!(r.health, Health::Orphaned);
    let h = r.chunks[0].header.as_ref().unwrap();
    assert!(h.walked);
    assert_eq!((h.entries, h.acknowledged, h.committed()), (3, 1, 2));
    assert_eq!(h.pending_bytes, (off - pending_from) as u64);
    // A length running past the used space ends the walk, never a read
    // out of bounds.
    put32(
        &mut b,
        CHUNK_HEADER_SIZE + offset_of!(EntryHeader, len),
        u32::MAX - 64,
    );
    std::fs::write(&path, &b).unwrap();
    let h = inspect_namespace(&ns).unwrap().chunks[0]
        .header
        .clone()
        .unwrap();
    assert_eq!(
        (h.entries, h.pending_bytes),
        (0, (off - CHUNK_HEADER_SIZE) as u64)
    );
    assert_eq!(std::fs::read(&path).unwrap(), b);
    os::unlink(&path).unwrap();
}

#[test]
fn a_fifo_under_our_name_is_never_opened() {
    let dir = os::shm_dir();
    let ns = ns("fifo");
    let path = dir.join(ctrl_file_name(&ns));
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let r = inspect_namespace(&ns).unwrap();
    assert_eq!(r.health, Health::Foreign);
    os::unlink(&path).unwrap();
}
