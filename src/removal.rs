//! Removing a namespace's files: its chunk files and its channel files, of
//! one incarnation or of any the control block does not claim. Below both
//! the backends (which remove a namespace) and the channels (whose files
//! it removes), so neither reaches into the other for it.

use crate::channel::layout::{parse_channel_file_name, CHAN_MAGIC};
use crate::error::Result;
use crate::layout::*;
use crate::os;
use std::path::Path;

/// Unlinks the chunk files and the channel files of `ns` (selection as in
/// [`remove_chunk_files`]); returns how many.
pub(crate) fn remove_data_files(
    dir: &Path,
    ns: &str,
    key: Option<u64>,
    keep_key: bool,
) -> Result<usize> {
    Ok(remove_chunk_files(dir, ns, key, keep_key)? + remove_channel_files(dir, ns, key, keep_key)?)
}

/// The incarnation recorded in a chunk file's header, or `None` if the file
/// is too short or has no chunk magic (junk, or a file still being made).
fn chunk_file_incarnation(path: &Path) -> Option<u64> {
    let file = os::open_rw(path).ok()?;
    let mut head = [0u8; 88];
    if os::read_prefix(&file, &mut head, path).ok()? < 88 {
        return None;
    }
    if u64::from_le_bytes(head[0..8].try_into().ok()?) != CHUNK_MAGIC {
        return None;
    }
    Some(u64::from_le_bytes(head[80..88].try_into().ok()?))
}

/// The tag key of the control block `ns` has now, if it has a readable one.
fn current_key(dir: &Path, ns: &str) -> Option<u64> {
    let path = dir.join(ctrl_file_name(ns));
    let file = os::open_rw(&path).ok()?;
    let mut head = [0u8; 48];
    if os::read_prefix(&file, &mut head, &path).ok()? < 48
        || u64::from_le_bytes(head[0..8].try_into().ok()?) != CTRL_MAGIC
    {
        return None;
    }
    Some(u64::from_le_bytes(head[40..48].try_into().ok()?))
}

/// Unlinks chunk files of `ns`. With `key` and `!keep_key`: the files of
/// that incarnation. With `key` and `keep_key`: every other incarnation's
/// (a new creator clearing orphans). Without `key`: every file no current
/// control block claims. Unrecognisable files go only while no control
/// block exists (with one, they may be chunk files still being made).
fn remove_chunk_files(dir: &Path, ns: &str, key: Option<u64>, keep_key: bool) -> Result<usize> {
    let ctrl_exists = dir.join(ctrl_file_name(ns)).exists();
    remove_files_of(
        dir,
        ns,
        key,
        keep_key,
        |name| match parse_file_name(name) {
            Some(FileKind::Chunk { ns, .. }) => Some(ns),
            _ => None,
        },
        chunk_file_incarnation,
        |regular| regular && !ctrl_exists,
    )
}

/// Unlinks files of namespace `ns` of one kind: `ns_of` says whether a name
/// is of that kind (and its namespace), `key_of` reads the incarnation a
/// file records, `unreadable` decides for a file without one (given whether
/// it is a regular file). Selection by `key` and `keep_key` as in
/// [`remove_chunk_files`]. Every unlink checks that the name still names the
/// file judged.
fn remove_files_of(
    dir: &Path,
    ns: &str,
    key: Option<u64>,
    keep_key: bool,
    ns_of: impl Fn(&str) -> Option<String>,
    key_of: impl Fn(&Path) -> Option<u64>,
    unreadable: impl Fn(bool) -> bool,
) -> Result<usize> {
    let mut removed = 0;
    for name in os::list_dir(dir)? {
        if ns_of(&name).as_deref() != Some(ns) {
            continue;
        }
        let path = dir.join(&name);
        let Some((ident, regular)) = os::path_identity(&path) else {
            continue;
        };
        let remove = match (key_of(&path), key) {
            (None, _) => unreadable(regular),
            (Some(inc), Some(k)) => (inc == k) != keep_key,
            (Some(inc), None) => current_key(dir, ns) != Some(inc),
        };
        // Unlink only if the name still names the file we judged.
        if remove && os::path_identity(&path).map(|(i, _)| i) == Some(ident) && os::unlink(&path)? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The store incarnation recorded in a channel file, if readable.
fn channel_file_key(path: &Path) -> Option<u64> {
    let file = os::open_ro(path).ok()?;
    let mut head = [0u8; 32];
    if os::read_prefix(&file, &mut head, path).ok()? < 32 {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&head[0..8]);
    if u64::from_le_bytes(b) != CHAN_MAGIC {
        return None;
    }
    b.copy_from_slice(&head[24..32]);
    Some(u64::from_le_bytes(b))
}

/// Unlinks channel files of `ns`, with the same selection as the chunk
/// files: with `key` and `!keep_key` that incarnation's; with `key` and
/// `keep_key` every other incarnation's; without `key` every file that no
/// current control block claims. A channel file is never visible half-made
/// (it is linked complete), so one without a readable identity is junk.
/// Returns how many were removed.
fn remove_channel_files(dir: &Path, ns: &str, key: Option<u64>, keep_key: bool) -> Result<usize> {
    remove_files_of(
        dir,
        ns,
        key,
        keep_key,
        |name| parse_channel_file_name(name).map(|(ns, _)| ns),
        channel_file_key,
        |regular| regular,
    )
}
