//! The 24-byte handle of a blob in shared mode.

use crate::clock;

/// Where an entry is: exactly what a handle carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Loc {
    pub id: u32,
    pub generation: u32,
    pub offset: u32,
    pub size: u32,
    pub timestamp: u64,
}

/// Where a blob lives in a shared store: 24 plain bytes that can travel over
/// any channel (ring buffer, pipe, socket) to any attached process.
///
/// A handle is not a pointer: resolving it validates it against the store
/// (chunk generation, entry header, keyed tag), so a stale, reclaimed or
/// forged handle resolves to nothing, never to other bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OverflowHandle {
    /// Chunk id (the `N` of `{ns}_data_N`).
    pub page_id: u32,
    /// Offset of the entry header inside the chunk.
    pub offset: u32,
    /// Payload length in bytes.
    pub size: u32,
    /// Generation of the chunk when the blob was appended.
    pub generation: u32,
    /// Append time, nanoseconds on the host's coarse monotonic clock.
    pub timestamp: u64,
}

const _: () = assert!(std::mem::size_of::<OverflowHandle>() == 24);

impl OverflowHandle {
    /// A handle with these fields, stamped now (the original crate's
    /// constructor). Whether it is valid is decided when resolving.
    pub fn new(page_id: u32, offset: u32, size: u32, generation: u32) -> Self {
        Self {
            page_id,
            offset,
            size,
            generation,
            timestamp: clock::precise_now_ns(),
        }
    }

    /// The handle's 24 bytes, as laid out in memory (`#[repr(C)]`, native
    /// byte order: handles travel between processes of one host).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Self` is `#[repr(C)]` with four `u32` and one `u64`
        // (24 bytes, no padding: asserted above), so all 24 bytes are
        // initialised plain integers; the slice borrows `self`.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), 24) }
    }

    /// Reads a handle back from [`as_bytes`](Self::as_bytes) output:
    /// `None` unless `bytes` is exactly 24 bytes long. Any 24 bytes make a
    /// handle; whether it is valid is decided when resolving.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let array: &[u8; 24] = bytes.try_into().ok()?;
        Some(Self::from_array(array))
    }

    /// The handle as an owned 24-byte array (the same bytes as
    /// [`as_bytes`](Self::as_bytes)).
    pub fn to_array(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out.copy_from_slice(self.as_bytes());
        out
    }

    /// [`from_bytes`](Self::from_bytes) for exactly 24 bytes: cannot fail.
    pub fn from_array(bytes: &[u8; 24]) -> Self {
        let u32_at =
            |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&bytes[16..24]);
        Self {
            page_id: u32_at(0),
            offset: u32_at(4),
            size: u32_at(8),
            generation: u32_at(12),
            timestamp: u64::from_ne_bytes(ts),
        }
    }

    pub(crate) fn from_loc(l: Loc) -> Self {
        Self {
            page_id: l.id,
            offset: l.offset,
            size: l.size,
            generation: l.generation,
            timestamp: l.timestamp,
        }
    }

    pub(crate) fn loc(&self) -> Loc {
        Loc {
            id: self.page_id,
            generation: self.generation,
            offset: self.offset,
            size: self.size,
            timestamp: self.timestamp,
        }
    }

    /// Milliseconds since the blob was appended (read on the precise
    /// clock: an age is not rounded down to the coarse clock's last tick).
    pub fn age_ms(&self) -> u64 {
        clock::precise_now_ns().saturating_sub(self.timestamp) / 1_000_000
    }

    /// Whether the blob is older than `ttl_ms`. Its chunk may still hold it
    /// (TTL runs from when the chunk was sealed), but a consumer should not
    /// count on it.
    pub fn is_expired(&self, ttl_ms: u64) -> bool {
        self.age_ms() > ttl_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let h = OverflowHandle {
            page_id: 1,
            offset: 2,
            size: 3,
            generation: 4,
            timestamp: 5,
        };
        assert_eq!(OverflowHandle::from_bytes(h.as_bytes()), Some(h));
        assert_eq!(OverflowHandle::from_array(&h.to_array()), h);
        assert_eq!(h.to_array()[..], *h.as_bytes());
        assert_eq!(h.as_bytes()[16], 5u64.to_ne_bytes()[0]);
        assert_eq!(OverflowHandle::from_bytes(&h.as_bytes()[..23]), None);
        assert_eq!(OverflowHandle::from_bytes(&[0u8; 25]), None);
    }

    #[test]
    fn age_and_expiry() {
        let now = OverflowHandle {
            page_id: 0,
            offset: 0,
            size: 1,
            generation: 0,
            timestamp: clock::now_ns(),
        };
        assert!(!now.is_expired(10_000));
        let old = OverflowHandle {
            timestamp: 0,
            ..now
        };
        assert!(old.age_ms() > 0);
        assert!(old.is_expired(0));
    }
}

/// Where a blob lives in a heap-mode store. Valid only in the process (and
/// store) that produced it; resolving validates it like an [`OverflowHandle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobHandle {
    loc: Loc,
}

impl BlobHandle {
    pub(crate) fn from_loc(loc: Loc) -> Self {
        Self { loc }
    }

    pub(crate) fn loc(&self) -> &Loc {
        &self.loc
    }

    /// The page holding the blob.
    pub fn page_id(&self) -> u32 {
        self.loc.id
    }

    /// Offset of the entry inside the page.
    pub fn offset(&self) -> u32 {
        self.loc.offset
    }

    /// Payload length in bytes.
    pub fn size(&self) -> u32 {
        self.loc.size
    }

    /// Generation of the page when the blob was appended.
    pub fn generation(&self) -> u32 {
        self.loc.generation
    }

    /// The last page of the blob. Blobs never span pages (a blob larger
    /// than a page gets a dedicated page), so this is `page_id()`.
    pub fn end_page_id(&self) -> u32 {
        self.loc.id
    }

    /// Total payload length in bytes (equal to `size()`: blobs are contiguous).
    pub fn total_size(&self) -> u64 {
        u64::from(self.loc.size)
    }

    /// Append time, nanoseconds on the host's coarse monotonic clock.
    pub fn timestamp(&self) -> u64 {
        self.loc.timestamp
    }

    /// Milliseconds since the blob was appended.
    pub fn age_ms(&self) -> u64 {
        clock::precise_now_ns().saturating_sub(self.loc.timestamp) / 1_000_000
    }
}
