//! Reading files without trusting them: open read-only with `O_NOFOLLOW`,
//! check type and size with `fstat`, read headers with `pread`.

use super::*;

/// File names of one namespace found in the directory.
#[derive(Default)]
pub(super) struct Names {
    pub(super) ctrl: bool,
    pub(super) chunks: BTreeSet<u32>,
    /// (file name, channel name).
    pub(super) channels: BTreeSet<(String, String)>,
}

/// A file opened for inspection, with what `fstat` said.
pub(super) struct Opened {
    pub(super) file: File,
    pub(super) meta: Metadata,
}

/// Outcome of opening a file for inspection.
pub(super) enum Open {
    Ok(Opened),
    /// Gone between the listing and the open (a live store retired it).
    Gone,
    /// Not a regular file: never opened.
    NotRegular(&'static str, Metadata),
    Failed(String),
}

pub(super) fn open_file(path: &Path) -> Open {
    // lstat first: a FIFO or device under one of our names is never opened.
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => return Open::NotRegular(kind_of(&m), m),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Open::Gone,
        Err(e) => return Open::Failed(format!("lstat: {e}")),
    }
    let file = match os::open_ro(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Open::Gone,
        Err(e) => return Open::Failed(format!("open: {e}")),
    };
    match file.metadata() {
        // Replaced by something else between lstat and open.
        Ok(m) if !m.file_type().is_file() => Open::NotRegular(kind_of(&m), m),
        Ok(meta) => Open::Ok(Opened { file, meta }),
        Err(e) => Open::Failed(format!("fstat: {e}")),
    }
}

pub(super) fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else {
        "device"
    }
}

pub(super) fn tmpfs_bytes(meta: &Metadata) -> u64 {
    meta.blocks().saturating_mul(512)
}

/// Reads up to `want` bytes from offset 0 (never more than the file holds).
pub(super) fn read_head(
    opened: &Opened,
    want: usize,
    path: &Path,
) -> std::result::Result<Vec<u8>, String> {
    let len = usize::try_from(opened.meta.len()).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; want.min(len)];
    let n = os::read_prefix(&opened.file, &mut buf, path).map_err(|e| e.to_string())?;
    buf.truncate(n);
    Ok(buf)
}

pub(super) fn u32_at(buf: &[u8], off: usize) -> u32 {
    buf.get(off..off + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

pub(super) fn u64_at(buf: &[u8], off: usize) -> u64 {
    buf.get(off..off + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// Bytes of a magic word (both magics are a u64).
pub(super) const MAGIC_LEN: usize = std::mem::size_of::<u64>();

/// A magic word shown to a human: its hex value and printable bytes.
pub(super) fn show_magic(buf: &[u8]) -> String {
    let bytes = &buf[..buf.len().min(MAGIC_LEN)];
    let text: String = bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("starts with {hex} \"{text}\"")
}

/// Milliseconds since a coarse-monotonic timestamp; `None` for 0 (unset).
pub(super) fn ago(now_ms: u64, stamp: u64) -> Option<u64> {
    (stamp != 0).then(|| now_ms.saturating_sub(stamp))
}
