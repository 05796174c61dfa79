//! Chunk files: header decoding and the entry walk.

use super::*;

/// Reads one chunk file (or notes a registered id without one). `None` if
/// the file vanished since the listing and nothing names it any more; the
/// flag is set when the file could not be read.
#[allow(clippy::too_many_arguments)]
pub(super) fn inspect_chunk(
    dir: &Path,
    ns: &str,
    id: u32,
    has_file: bool,
    control: Option<&ControlBlock>,
    incarnation: Option<u64>,
    now_ms: u64,
    walk: bool,
) -> (Option<ChunkReport>, bool) {
    let registered = control.is_some_and(|c| c.registry.contains(&id));
    let being_made = control.is_some_and(|c| c.creating.contains(&id));
    let mut r = ChunkReport {
        id,
        file: None,
        file_bytes: 0,
        tmpfs_bytes: 0,
        registered,
        pooled: control.is_some_and(|c| c.pool.contains(&id)),
        active: control.is_some_and(|c| c.active.map(|a| a.id) == Some(id)),
        header: None,
        foreign: false,
        problem: None,
        note: None,
    };
    const MISSING: &str =
        "registered, but its file is gone (being retired, or a slot left by a killed process)";
    let name = chunk_file_name(ns, id);
    let path = dir.join(&name);
    let opened = match has_file.then(|| open_file(&path)) {
        Some(Open::Ok(o)) => o,
        None | Some(Open::Gone) if registered => {
            r.note = Some(MISSING.into());
            return (Some(r), false);
        }
        None | Some(Open::Gone) => return (None, false),
        Some(Open::NotRegular(kind, meta)) => {
            r.file = Some(name);
            r.file_bytes = meta.len();
            r.foreign = true;
            r.note = Some(format!("a {kind}, not a regular file; left alone"));
            return (Some(r), false);
        }
        Some(Open::Failed(e)) => {
            r.file = Some(name);
            r.problem = Some(format!("cannot read: {e}"));
            return (Some(r), true);
        }
    };
    r.file = Some(name);
    r.file_bytes = opened.meta.len();
    r.tmpfs_bytes = tmpfs_bytes(&opened.meta);
    let head = match read_head(&opened, CHUNK_HEADER_SIZE, &path) {
        Ok(h) => h,
        Err(e) => {
            r.problem = Some(format!("cannot read: {e}"));
            return (Some(r), true);
        }
    };
    let magic = u64_at(&head, offset_of!(ChunkHeader, magic));
    // A chunk file is created empty, sized, then formatted: until its magic
    // is written it is all zeros (or empty).
    if head.len() < offset_of!(ChunkHeader, magic) + MAGIC_LEN || magic == 0 {
        let what = if head.is_empty() {
            "empty (0 bytes)".to_owned()
        } else {
            format!("{} bytes, no header written", r.file_bytes)
        };
        if registered {
            r.problem = Some(format!("registered but unformatted: {what}"));
        } else {
            r.note = Some(format!(
                "unformatted ({what}): a chunk file being made, or left by a crash"
            ));
        }
        return (Some(r), false);
    }
    if magic != CHUNK_MAGIC {
        r.foreign = true;
        r.note = Some(format!(
            "not a stable-fragmented-buffer chunk file: {}; left alone",
            show_magic(&head)
        ));
        if registered {
            r.problem = Some("registered, but its content is foreign".into());
        }
        return (Some(r), false);
    }
    if head.len() < CHUNK_HEADER_SIZE {
        r.problem = Some(format!(
            "truncated to {} bytes, shorter than the {CHUNK_HEADER_SIZE}-byte header",
            head.len()
        ));
        return (Some(r), false);
    }
    let h = decode_chunk(&head, now_ms);
    let mut wrong = Vec::new();
    if h.chunk_id != id {
        wrong.push(format!(
            "header says chunk {}, file name says {id}",
            h.chunk_id
        ));
    }
    if u64::from(h.size) != r.file_bytes {
        wrong.push(format!(
            "header says {} bytes, file has {}",
            h.size, r.file_bytes
        ));
    }
    let next_free = h.used + CHUNK_HEADER_SIZE as u64;
    if next_free > u64::from(h.size) || next_free % ENTRY_ALIGN as u64 != 0 {
        wrong.push(format!(
            "next free offset {next_free} is not an aligned offset inside the chunk"
        ));
    }
    if let ChunkState::Invalid(v) = h.state {
        wrong.push(format!("state {v} is not a chunk state"));
    }
    let alloc = u64_at(&head, offset_of!(ChunkHeader, alloc));
    if alloc_writers(alloc) != 0 {
        wrong.push(format!(
            "alloc word {alloc:#018x} has bits 32-47 set, which this version never writes (a file of an older build?)"
        ));
    }
    let mut h = h;
    if walk && wrong.is_empty() && h.state == ChunkState::InUse {
        walk_entries(&opened, &path, &mut h);
    }
    if !wrong.is_empty() {
        r.problem = Some(wrong.join("; "));
    }
    let inc = u64_at(&head, offset_of!(ChunkHeader, incarnation));
    if incarnation.is_some_and(|key| key != inc) {
        r.note = Some(
            "made by another incarnation of the namespace (an orphan; cleanup removes it)".into(),
        );
    } else if being_made {
        r.note = Some(
            "being made (or left by a creator that died: a pass removes it after the grace period)"
                .into(),
        );
    } else if incarnation.is_some() && !registered {
        r.note = Some("not in the registry (left by a killed process)".into());
    }
    r.header = Some(h);
    (Some(r), false)
}

/// Bytes of entry headers read per `pread` during a walk.
pub(super) const WALK_WINDOW: usize = 256 << 10;

/// Counts the entries written in the chunk's generation, the way the
/// reclaimers' walk does (`chunk.rs`), but on copies read with `pread`:
/// from the first entry to the first entry not yet written. Every length is bounds-checked; a length
/// that does not fit ends the walk like an unwritten entry would.
pub(super) fn walk_entries(opened: &Opened, path: &Path, h: &mut ChunkHeaderInfo) {
    let used_end = h.used + CHUNK_HEADER_SIZE as u64;
    let (mut off, mut count, mut acked) = (CHUNK_HEADER_SIZE as u64, 0, 0);
    let len_at = offset_of!(EntryHeader, len);
    let state_at = offset_of!(EntryHeader, state);
    let mut window = Vec::new();
    let mut window_start = 0u64;
    while off < used_end {
        // Refill when the next entry header is not wholly in the window.
        let in_window = off >= window_start
            && off + ENTRY_HEADER_SIZE as u64 <= window_start + window.len() as u64;
        if !in_window {
            let want = (used_end - off).min(WALK_WINDOW as u64) as usize;
            window.resize(want, 0);
            match os::read_at(&opened.file, &mut window, off, path) {
                Ok(n) => window.truncate(n),
                Err(_) => break,
            }
            window_start = off;
            if window.len() < ENTRY_HEADER_SIZE {
                break;
            }
        }
        let at = (off - window_start) as usize;
        let state = u32_at(&window, at + state_at);
        if !entry_in_generation(state, h.generation)
            || !matches!(entry_kind(state), ENTRY_COMMITTED | ENTRY_ACKED)
        {
            break;
        }
        let Some(fp) = entry_footprint(u32_at(&window, at + len_at) as usize) else {
            break;
        };
        if off + fp as u64 > used_end {
            break;
        }
        off += fp as u64;
        count += 1;
        acked += u32::from(entry_kind(state) == ENTRY_ACKED);
    }
    h.entries = count;
    h.acknowledged = acked;
    h.pending_bytes = used_end.saturating_sub(off);
    h.walked = true;
}

pub(super) fn decode_chunk(head: &[u8], now_ms: u64) -> ChunkHeaderInfo {
    macro_rules! u32f {
        ($f:ident) => {
            u32_at(head, offset_of!(ChunkHeader, $f))
        };
    }
    macro_rules! u64f {
        ($f:ident) => {
            u64_at(head, offset_of!(ChunkHeader, $f))
        };
    }
    let alloc = u64f!(alloc);
    let sg = u64f!(state_gen);
    let size = u32f!(size);
    let sealed_ms = u64f!(sealed_ms);
    let activating = sealed_ms == SEALED_ACTIVATING;
    ChunkHeaderInfo {
        chunk_id: u32f!(chunk_id),
        generation: generation_of(sg),
        state: ChunkState::from_word(state_of(sg)),
        size,
        used: u64::from(alloc_used(alloc)).saturating_sub(CHUNK_HEADER_SIZE as u64),
        capacity: u64::from(size).saturating_sub(CHUNK_HEADER_SIZE as u64),
        sealed: alloc_sealed(alloc),
        // Counted by `walk_entries` when the caller walks.
        entries: 0,
        // Counted by `walk_entries` too.
        acknowledged: 0,
        pending_bytes: 0,
        walked: false,
        backed: match u32f!(ready) {
            0 => None,
            r if r >= size => None,
            r => Some(u64::from(r)),
        },
        pins: u32f!(pins),
        dedicated: u32f!(flags) & FLAG_DEDICATED != 0,
        activating,
        activated_ago_ms: ago(now_ms, u64f!(activated_ms)),
        first_write_ago_ms: ago(now_ms, u64f!(first_write_ms)),
        sealed_ago_ms: if activating {
            None
        } else {
            ago(now_ms, sealed_ms)
        },
        empty_since_ago_ms: ago(now_ms, u64f!(empty_since_ms)),
    }
}
