//! Copying payloads into chunk memory.
//!
//! Small payloads use `memcpy`. Large ones (at least [`STREAM_MIN`] bytes)
//! going into large chunks (at least [`STREAM_CHUNK_MIN`]) use non-temporal
//! stores on x86-64. With large chunks the store cycles through more memory
//! than the last-level cache holds, so a written line is evicted before
//! anyone reads it: pulling it into this core's cache first (the
//! read-for-ownership of a normal store) only costs bandwidth, and the
//! locked instruction of the next reservation waits for those reads. With
//! small chunks the working set can stay in cache, where a consumer on
//! another core reads it fastest, and `memcpy` wins. Measured on the
//! development machine (see `BENCHMARKS.md`): 64 KiB appends into 32 MiB
//! chunks 13.6 GB/s with `memcpy`, 22.8 GB/s streamed; the two-process
//! cycle with 4 MiB chunks 407 k msg/s with `memcpy`, 261 k streamed.

/// Payloads at least this large are streamed (below, `memcpy` measured faster).
pub(crate) const STREAM_MIN: usize = 8192;

/// ...into chunks at least this large.
pub(crate) const STREAM_CHUNK_MIN: usize = 16 << 20;

/// Copies `len` bytes from `src` to `dst`, in a chunk of `chunk_len` bytes;
/// when it returns, the bytes are ordered before any later store of this
/// thread (so a Release store that publishes them needs nothing more).
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and
/// the ranges must not overlap.
#[cfg_attr(any(not(target_arch = "x86_64"), miri, loom), allow(unused_variables))]
pub(crate) unsafe fn copy_payload(dst: *mut u8, src: *const u8, len: usize, chunk_len: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
    if len >= STREAM_MIN && chunk_len >= STREAM_CHUNK_MIN {
        // SAFETY: forwarded contract.
        unsafe { stream(dst, src, len) };
        return;
    }
    // SAFETY: forwarded contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
}

/// Non-temporal copy: an unaligned head with `memcpy`, 64-byte steps of
/// 16-byte streaming stores to 16-aligned addresses, a `memcpy` tail, then
/// `sfence` (streaming stores are weakly ordered; the fence orders them
/// before the stores that publish the entry).
#[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
unsafe fn stream(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    let head = (16 - (dst as usize & 15)) & 15;
    // SAFETY: head <= 15 < len (len >= STREAM_MIN); in bounds of both.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, head) };
    let mut i = head;
    while i + 64 <= len {
        // SAFETY: [i, i + 64) is in bounds of both ranges; `dst + i` is
        // 16-aligned (head aligned it, steps are multiples of 16); SSE2 is
        // part of the x86-64 baseline.
        unsafe {
            let s = src.add(i) as *const __m128i;
            let d = dst.add(i) as *mut __m128i;
            let (a, b, c, e) = (
                _mm_loadu_si128(s),
                _mm_loadu_si128(s.add(1)),
                _mm_loadu_si128(s.add(2)),
                _mm_loadu_si128(s.add(3)),
            );
            _mm_stream_si128(d, a);
            _mm_stream_si128(d.add(1), b);
            _mm_stream_si128(d.add(2), c);
            _mm_stream_si128(d.add(3), e);
        }
        i += 64;
    }
    // SAFETY: the tail [i, len) is in bounds of both; sfence has no
    // preconditions.
    unsafe {
        std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i);
        _mm_sfence();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_length_and_alignment_exactly() {
        let src: Vec<u8> = (0..9000u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [
            0,
            1,
            15,
            16,
            63,
            64,
            100,
            STREAM_MIN - 1,
            STREAM_MIN,
            STREAM_MIN + 5,
            8191,
        ] {
            for shift in [0, 1, 8, 15] {
                let mut dst = vec![0u8; len + 32];
                // SAFETY: both buffers hold `len` bytes at these offsets.
                unsafe {
                    copy_payload(
                        dst.as_mut_ptr().add(shift),
                        src.as_ptr(),
                        len,
                        STREAM_CHUNK_MIN,
                    )
                };
                assert_eq!(
                    &dst[shift..shift + len],
                    &src[..len],
                    "len {len} shift {shift}"
                );
                assert!(dst[..shift].iter().all(|&b| b == 0));
                assert!(dst[shift + len..].iter().all(|&b| b == 0));
            }
        }
    }
}
