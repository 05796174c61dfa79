//! Read-only inspection of the shm directory and of shared-memory stores,
//! for operators (the `sfb` CLI is built on it).
//!
//! **Reading never modifies anything.** Files are opened read-only
//! (`O_RDONLY | O_NOFOLLOW | O_NONBLOCK`), their size
//! and type are checked with `fstat` first, and only their headers are read,
//! with `pread`, into local buffers: nothing is mapped, no lock is taken
//! (liveness is tested with `F_OFD_GETLK`, which only asks), no counter is
//! touched. Every file is judged by its content, so a zero-length,
//! truncated, corrupt or foreign file is reported ([`Health`], `problems`),
//! never trusted and never a panic.
//!
//! A live store changes while it is read: a report is a snapshot of fields
//! read one by one, not an atomic picture. States that are normal for an
//! instant in a live store (a chunk file being created, a registry slot
//! being cleared) are reported as notes, not as corruption.
//!
//! Offsets come from [`crate::layout`]'s structures, never from numbers
//! written here.

use crate::channel::{parse_channel_file_name, ChannelReport};
use crate::chunk::SEALED_ACTIVATING;
use crate::clock;
use crate::error::{BlobError, Result};
use crate::layout::*;
use crate::namespace;
use crate::os;
use crate::registry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{File, Metadata};
use std::mem::offset_of;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

mod chunk;
mod control;
mod files;
mod report;
#[cfg(feature = "serde")]
mod serialize;
#[cfg(all(test, not(miri), not(loom)))]
mod tests;

use chunk::*;
use control::*;
use files::*;
pub use report::*;

/// Every namespace in `dir` (usually [`shm_dir`]), and every file that is
/// not one of this format's. Reads only; see the module documentation.
pub fn list_namespaces(dir: &Path) -> Result<Listing> {
    let mut by_ns: BTreeMap<String, Names> = BTreeMap::new();
    let mut other_files = Vec::new();
    let mut names = os::list_dir(dir)?;
    names.sort();
    for name in names {
        match parse_file_name(&name) {
            Some(FileKind::Ctrl { ns }) => by_ns.entry(ns).or_default().ctrl = true,
            Some(FileKind::Chunk { ns, id }) => {
                by_ns.entry(ns).or_default().chunks.insert(id);
            }
            None if parse_channel_file_name(&name).is_some() => {
                if let Some((ns, chan)) = parse_channel_file_name(&name) {
                    by_ns.entry(ns).or_default().channels.insert((name, chan));
                }
            }
            None => {
                // Gone since the listing: nothing to show.
                if let Ok(meta) = std::fs::symlink_metadata(dir.join(&name)) {
                    other_files.push(OtherFile {
                        kind: kind_of(&meta),
                        bytes: meta.len(),
                        tmpfs_bytes: tmpfs_bytes(&meta),
                        name,
                    });
                }
            }
        }
    }
    let namespaces = by_ns
        .into_iter()
        .map(|(ns, names)| inspect_names(dir, &ns, &names, false).info())
        .collect();
    Ok(Listing {
        dir: dir.to_owned(),
        namespaces,
        other_files,
    })
}

/// Everything readable about namespace `ns` in the shm directory
/// ([`shm_dir`]). [`BlobError::NotFound`] if it has no file at all.
pub fn inspect_namespace(ns: &str) -> Result<NamespaceReport> {
    inspect_namespace_in(&os::shm_dir(), ns)
}

/// [`inspect_namespace`] in another directory.
pub fn inspect_namespace_in(dir: &Path, ns: &str) -> Result<NamespaceReport> {
    namespace::validate(ns)?;
    let mut names = Names::default();
    for name in os::list_dir(dir)? {
        match parse_file_name(&name) {
            Some(FileKind::Ctrl { ns: n }) if n == ns => names.ctrl = true,
            Some(FileKind::Chunk { ns: n, id }) if n == ns => {
                names.chunks.insert(id);
            }
            None => {
                if let Some((n, chan)) = parse_channel_file_name(&name) {
                    if n == ns {
                        names.channels.insert((name, chan));
                    }
                }
            }
            _ => {}
        }
    }
    if !names.ctrl && names.chunks.is_empty() && names.channels.is_empty() {
        return Err(BlobError::NotFound {
            namespace: ns.to_owned(),
        });
    }
    Ok(inspect_names(dir, ns, &names, true))
}

/// The shm directory the library uses: `$SFB_SHM_DIR`, or `/dev/shm`.
pub fn shm_dir() -> PathBuf {
    os::shm_dir()
}

/// Reads a namespace's files; `walk` also walks the entries of chunks in use
/// (reads their unwalked entry headers) for exact counts.
fn inspect_names(dir: &Path, ns: &str, names: &Names, walk: bool) -> NamespaceReport {
    let mut report = NamespaceReport {
        namespace: ns.to_owned(),
        dir: dir.to_owned(),
        health: Health::Ok,
        creator: Creator::None,
        ctrl_present: false,
        ctrl_bytes: 0,
        ctrl_tmpfs_bytes: 0,
        format_version: None,
        control: None,
        chunks: Vec::new(),
        channels: Vec::new(),
        problems: Vec::new(),
        taken_unix_ms: clock::unix_ms(),
    };
    let now_ms = clock::now_ms();
    // The incarnation (tag key) of the control block, to recognise its chunks.
    let mut incarnation = None;
    let mut unreadable = false;
    let mut ctrl_ours = false;
    if names.ctrl {
        let path = dir.join(ctrl_file_name(ns));
        match open_file(&path) {
            Open::Gone => {}
            Open::NotRegular(kind, meta) => {
                report.ctrl_present = true;
                report.ctrl_bytes = meta.len();
                report.health = Health::Foreign;
                report.problems.push(format!(
                    "{} is a {kind}, not a regular file",
                    path.display()
                ));
            }
            Open::Failed(e) => {
                report.ctrl_present = true;
                unreadable = true;
                report.creator = Creator::Unknown;
                report
                    .problems
                    .push(format!("cannot read {}: {e}", path.display()));
            }
            Open::Ok(opened) => {
                report.ctrl_present = true;
                report.ctrl_bytes = opened.meta.len();
                report.ctrl_tmpfs_bytes = tmpfs_bytes(&opened.meta);
                match inspect_ctrl(&opened, &path, &mut report) {
                    CtrlVerdict::Foreign => report.health = Health::Foreign,
                    CtrlVerdict::Ours(key) => {
                        ctrl_ours = true;
                        incarnation = key;
                    }
                    CtrlVerdict::Unreadable => unreadable = true,
                }
            }
        }
    }
    // Every chunk file, and every registered id even without a file.
    let control = report.control.clone();
    let mut ids: BTreeSet<u32> = names.chunks.clone();
    if let Some(c) = &control {
        ids.extend(c.registry.iter().copied());
    }
    for id in ids {
        let has_file = names.chunks.contains(&id);
        let (chunk, failed) = inspect_chunk(
            dir,
            ns,
            id,
            has_file,
            control.as_ref(),
            incarnation,
            now_ms,
            walk,
        );
        unreadable |= failed;
        report.chunks.extend(chunk);
    }
    // Channels after the control block: its chunk size and limit give
    // each channel's memory bound.
    let chunks = report
        .control
        .as_ref()
        .filter(|c| c.chunk_size > 0)
        .map(|c| (u64::from(c.chunk_size), u64::from(c.max_chunks)));
    report.channels = names
        .channels
        .iter()
        .map(|(file, name)| crate::channel::inspect_channel(dir, file, name, chunks, now_ms))
        .collect();
    for c in &report.chunks {
        if let (Some(p), Some(f)) = (&c.problem, &c.file) {
            report.problems.push(format!("{f}: {p}"));
        }
    }
    if report.health != Health::Foreign {
        let ours_or_unformatted = report.chunks.iter().any(|c| c.file.is_some() && !c.foreign);
        report.health = if unreadable {
            Health::Unreadable
        } else if !report.ctrl_present {
            if ours_or_unformatted {
                Health::Orphaned
            } else {
                Health::Foreign
            }
        } else if !ctrl_ours || !report.problems.is_empty() {
            Health::Corrupt
        } else {
            Health::Ok
        };
    }
    report
}
