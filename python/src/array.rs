//! The header `send_array` puts before an array's bytes and
//! `Message.array()` reads back: dtype and shape, padded so that the
//! elements start at a multiple of 64 bytes from the message's start.
//!
//! ```text
//! bytes 0-6    magic b"\x93SFBARR"
//! byte  7      format version, 1
//! byte  8      ndim, 0 to 64
//! byte  9      0
//! bytes 10-11  data offset: where the elements start (the header's
//!              length), a multiple of 64, u16 little-endian
//! bytes 12-15  0
//! bytes 16-31  dtype: numpy's `dtype.str` in ASCII ("<f8", "|b1",
//!              ">c16", ...), NUL-padded
//! bytes 32-    shape: ndim unsigned 64-bit little-endian integers
//! then         zeros up to the data offset, then the elements in C order,
//!              prod(shape) * itemsize bytes, where the message ends
//! ```
//!
//! The data offset is `32 + 8 * ndim` rounded up to 64 (64 bytes up to 4
//! dimensions). A message starts 64-aligned in a ring slot and 8-aligned in
//! the store (its entries are), and no dtype accepted here needs more than
//! 8 (numpy's `dtype.alignment`, complex128 included), so the elements are
//! aligned in every process that maps the message.

/// Magic bytes, then the format version.
const MAGIC: &[u8; 7] = b"\x93SFBARR";
const VERSION: u8 = 1;
/// Where the shape starts.
const SHAPE_AT: usize = 32;
/// numpy's limit on dimensions (`NPY_MAXDIMS` of numpy 2).
pub(crate) const MAX_NDIM: usize = 64;
/// The data offset is a multiple of this.
const ALIGN: usize = 64;

/// The dtypes carried (numpy's `dtype.str`): bool, the signed and unsigned
/// integers of 8 to 64 bits, float16/32/64 and complex64/128, in either
/// byte order where it has one.
const DTYPES: [&str; 25] = [
    "|b1", "|i1", "|u1", "<i2", "<i4", "<i8", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8", "<c8",
    "<c16", ">i2", ">i4", ">i8", ">u2", ">u4", ">u8", ">f2", ">f4", ">f8", ">c8", ">c16",
];

/// A dtype this format carries, by numpy's `dtype.str`.
pub(crate) fn dtype(s: &str) -> Option<&'static str> {
    DTYPES.iter().copied().find(|d| *d == s)
}

/// Bytes per element of a dtype of [`DTYPES`].
fn itemsize(dtype: &str) -> usize {
    dtype[2..].parse().unwrap_or(1)
}

/// What the header says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    /// Where the elements start.
    pub offset: usize,
    /// Elements: the product of the shape.
    pub count: usize,
}

fn data_offset(ndim: usize) -> usize {
    (SHAPE_AT + 8 * ndim).next_multiple_of(ALIGN)
}

/// The header of an array of `dtype` (one of [`DTYPES`]) and `shape`
/// whose bytes are `nbytes` long; `Err` says why it cannot be sent.
pub(crate) fn header(
    dtype: &'static str,
    shape: &[usize],
    nbytes: usize,
) -> Result<Vec<u8>, String> {
    if shape.len() > MAX_NDIM {
        return Err(format!(
            "{} dimensions: at most {MAX_NDIM} are carried",
            shape.len()
        ));
    }
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or("the shape's product overflows")?;
    if count.checked_mul(itemsize(dtype)) != Some(nbytes) {
        return Err(format!(
            "the array's buffer holds {nbytes} bytes, not {count} elements of {} bytes",
            itemsize(dtype)
        ));
    }
    let offset = data_offset(shape.len());
    let mut h = vec![0u8; offset];
    h[..7].copy_from_slice(MAGIC);
    h[7] = VERSION;
    h[8] = shape.len() as u8;
    h[10..12].copy_from_slice(&(offset as u16).to_le_bytes());
    h[16..16 + dtype.len()].copy_from_slice(dtype.as_bytes());
    for (i, &d) in shape.iter().enumerate() {
        let at = SHAPE_AT + 8 * i;
        h[at..at + 8].copy_from_slice(&(d as u64).to_le_bytes());
    }
    Ok(h)
}

/// Why a message cannot be read as an array.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NotArray {
    /// It does not start with the magic bytes: not sent by `send_array`.
    NoHeader,
    /// It starts like one, but the header is inconsistent (or of a newer
    /// format version).
    Bad(String),
}

/// Reads the header of message `msg`.
pub(crate) fn read(msg: &[u8]) -> Result<Meta, NotArray> {
    if msg.len() < SHAPE_AT || &msg[..7] != MAGIC {
        return Err(NotArray::NoHeader);
    }
    let bad = |why: String| Err(NotArray::Bad(why));
    if msg[7] != VERSION {
        return bad(format!(
            "format version {} (this package reads version {VERSION})",
            msg[7]
        ));
    }
    let ndim = msg[8] as usize;
    if ndim > MAX_NDIM {
        return bad(format!("{ndim} dimensions (at most {MAX_NDIM})"));
    }
    let offset = u16::from_le_bytes([msg[10], msg[11]]) as usize;
    if offset % ALIGN != 0 || offset < SHAPE_AT + 8 * ndim || offset > msg.len() {
        return bad(format!(
            "data offset {offset} (a multiple of {ALIGN} past the shape, within the {} bytes)",
            msg.len()
        ));
    }
    let name = &msg[16..32];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let Some(dtype) = std::str::from_utf8(&name[..end]).ok().and_then(dtype) else {
        return bad(format!(
            "dtype {:?} is not one this package carries",
            String::from_utf8_lossy(&name[..end])
        ));
    };
    let mut shape = Vec::with_capacity(ndim);
    for i in 0..ndim {
        let at = SHAPE_AT + 8 * i;
        let mut d = [0u8; 8];
        d.copy_from_slice(&msg[at..at + 8]);
        match usize::try_from(u64::from_le_bytes(d)) {
            Ok(d) if d <= isize::MAX as usize => shape.push(d),
            _ => return bad(format!("dimension {i} is out of range")),
        }
    }
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let data = msg.len() - offset;
    match count {
        Some(count) if count.checked_mul(itemsize(dtype)) == Some(data) => Ok(Meta {
            dtype,
            shape,
            offset,
            count,
        }),
        _ => bad(format!(
            "shape {shape:?} of {dtype} does not fill the {data} bytes after the header"
        )),
    }
}
