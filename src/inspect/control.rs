//! The control block: decoding, checks, and the creator's liveness.

use super::*;

pub(super) enum CtrlVerdict {
    /// Not of this format; nothing decoded.
    Foreign,
    /// Our magic and version (decoded as far as it goes; `problems` filled),
    /// with the tag key if the header was whole.
    Ours(Option<u64>),
    Unreadable,
}

pub(super) fn inspect_ctrl(
    opened: &Opened,
    path: &Path,
    report: &mut NamespaceReport,
) -> CtrlVerdict {
    let head = match read_head(opened, CTRL_SIZE, path) {
        Ok(h) => h,
        Err(e) => {
            report.creator = Creator::Unknown;
            report
                .problems
                .push(format!("cannot read {}: {e}", path.display()));
            return CtrlVerdict::Unreadable;
        }
    };
    let magic_end = offset_of!(CtrlHeader, magic) + MAGIC_LEN;
    let version_end = offset_of!(CtrlHeader, version) + 4;
    if head.len() < magic_end || u64_at(&head, offset_of!(CtrlHeader, magic)) != CTRL_MAGIC {
        let what = if head.is_empty() {
            "it is empty (0 bytes)".to_owned()
        } else if head.len() < magic_end {
            format!("it is {} bytes, too short for a magic", head.len())
        } else {
            format!("its magic is not \"SFB_CTL2\" ({})", show_magic(&head))
        };
        report.problems.push(format!(
            "{} is not a stable-fragmented-buffer control file: {what}",
            path.display()
        ));
        return CtrlVerdict::Foreign;
    }
    if head.len() < version_end {
        report.format_version = None;
        report.problems.push(format!(
            "{} is truncated to {} bytes (expected {CTRL_SIZE})",
            path.display(),
            head.len()
        ));
        report.creator = liveness(opened, &head, path, report);
        return CtrlVerdict::Ours(None);
    }
    let version = u32_at(&head, offset_of!(CtrlHeader, version));
    report.format_version = Some(version);
    if version != FORMAT_VERSION {
        report.problems.push(format!(
            "{} has format version {version}; this version of the library reads version {FORMAT_VERSION}",
            path.display()
        ));
        return CtrlVerdict::Foreign;
    }
    report.creator = liveness(opened, &head, path, report);
    let len = opened.meta.len();
    if len != CTRL_SIZE as u64 {
        report.problems.push(format!(
            "{} is {len} bytes, expected {CTRL_SIZE}",
            path.display()
        ));
    }
    if head.len() < CTRL_HEADER_SIZE {
        return CtrlVerdict::Ours(None);
    }
    let c = decode_ctrl(&head);
    check_ctrl(&c, head.len(), path, &mut report.problems);
    let key = u64_at(&head, offset_of!(CtrlHeader, tag_key));
    report.control = Some(c);
    CtrlVerdict::Ours(Some(key))
}

pub(super) fn liveness(
    opened: &Opened,
    head: &[u8],
    path: &Path,
    report: &mut NamespaceReport,
) -> Creator {
    let pid = if head.len() >= offset_of!(CtrlHeader, creator_pid) + 4 {
        u32_at(head, offset_of!(CtrlHeader, creator_pid))
    } else {
        0
    };
    // F_OFD_GETLK only asks; it takes nothing, even on a read-only file.
    match os::creator_lock_held(&opened.file) {
        Ok(true) => Creator::Alive { pid },
        Ok(false) => Creator::Dead { pid },
        Err(e) => {
            report.problems.push(format!(
                "cannot test the creator lock of {}: {e}",
                path.display()
            ));
            Creator::Unknown
        }
    }
}

pub(super) fn decode_ctrl(head: &[u8]) -> ControlBlock {
    macro_rules! u32f {
        ($f:ident) => {
            u32_at(head, offset_of!(CtrlHeader, $f))
        };
    }
    macro_rules! u64f {
        ($f:ident) => {
            u64_at(head, offset_of!(CtrlHeader, $f))
        };
    }
    let active = u64f!(active);
    let pool_at = offset_of!(CtrlHeader, pool);
    let pool = (0..POOL_SLOTS)
        .map(|i| u32_at(head, pool_at + 4 * i))
        .filter(|&v| v != 0)
        .map(|v| v - 1)
        .collect();
    let (mut registry, mut creating, mut bad_slots) = (Vec::new(), Vec::new(), Vec::new());
    let (mut taken, mut next_chunk_id) = (0u32, None);
    for slot in 0..REGISTRY_SLOTS {
        let off = CTRL_HEADER_SIZE + 8 * slot;
        if off + 8 > head.len() {
            break;
        }
        let word = u64_at(head, off);
        let s = registry::Slot::decode(word);
        let id = registry::id_at(slot, s.epoch);
        if registry::Slot::reserved_bits(word) != 0 {
            bad_slots.push(slot);
        }
        match s.state {
            SLOT_FREE => {
                next_chunk_id.get_or_insert(id);
            }
            SLOT_READY => registry.push(id),
            _ => creating.push(id),
        }
        taken += u32::from(s.state != SLOT_FREE && !registry::Slot::is_tentative(word));
    }
    ControlBlock {
        version: u32f!(version),
        ctrl_size: u32f!(ctrl_size),
        chunk_size: u32f!(chunk_size),
        max_chunks: u32f!(max_chunks),
        creator_pid: u32f!(creator_pid),
        creator_start_ticks: u64f!(creator_start),
        pool_capacity: u32f!(pool_capacity),
        decay_ms: u64f!(decay_ms),
        ttl_ms: u64f!(ttl_ms),
        active: (id_of(active) != NO_CHUNK).then(|| ActiveChunk {
            id: id_of(active),
            generation: generation_of(active),
        }),
        next_chunk_id: next_chunk_id.unwrap_or(NO_CHUNK),
        live_chunks: taken,
        generation: u32f!(generation),
        closed: u32f!(closed) != 0,
        created_unix_ms: u64f!(created_unix_ms),
        pool,
        recycled: u64f!(recycled),
        retired: u64f!(retired),
        expired: u64f!(expired),
        registry,
        creating,
        bad_slots,
    }
}

/// Invariants of a control block that hold at every instant of a live store.
pub(super) fn check_ctrl(c: &ControlBlock, read: usize, path: &Path, problems: &mut Vec<String>) {
    let file = path.display();
    if read < CTRL_SIZE {
        problems.push(format!(
            "{file}: the registry is cut short ({read} of {CTRL_SIZE} bytes)"
        ));
    }
    if c.ctrl_size as usize != CTRL_SIZE {
        problems.push(format!(
            "{file}: ctrl_size field is {}, expected {CTRL_SIZE}",
            c.ctrl_size
        ));
    }
    let cs = c.chunk_size as usize;
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) || cs % ENTRY_ALIGN != 0 {
        problems.push(format!(
            "{file}: chunk_size {cs} is out of range (a multiple of {ENTRY_ALIGN} in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE})"
        ));
    }
    if c.max_chunks as usize > REGISTRY_SLOTS {
        problems.push(format!(
            "{file}: max_chunks {} exceeds the {REGISTRY_SLOTS} registry slots",
            c.max_chunks
        ));
    }
    if c.pool_capacity as usize > POOL_SLOTS {
        problems.push(format!(
            "{file}: pool_capacity {} exceeds the {POOL_SLOTS} pool slots",
            c.pool_capacity
        ));
    }
    if !c.bad_slots.is_empty() {
        let slots: BTreeSet<u32> = c.bad_slots.iter().map(|&s| s as u32).collect();
        problems.push(format!(
            "{file}: {} registry slot(s) have reserved bits set: {}",
            slots.len(),
            some_ids(&slots)
        ));
    }
}

/// The first few ids of a set, for a message.
pub(super) fn some_ids(ids: &BTreeSet<u32>) -> String {
    let mut v: Vec<String> = ids.iter().take(5).map(u32::to_string).collect();
    if ids.len() > 5 {
        v.push("...".into());
    }
    v.join(", ")
}
