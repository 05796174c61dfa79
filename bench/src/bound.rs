//! The memory bound an append is compared with: the faster of a plain copy
//! and a non-temporal copy of the same payload into faulted memory larger
//! than the last-level cache, measured in slices interleaved with the
//! workload it bounds, so that both see the same machine state.

use std::sync::Mutex;
use std::time::Instant;

/// Bytes of faulted memory a bound copies through: more than the largest
/// last-level cache of the machines we run on (300 MiB reported here).
pub const BUFFER: usize = 1 << 30;

/// Buffers already faulted, kept for the next cell (faulting 1 GiB takes
/// longer than most cells).
static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// One thread's bound: its buffer, where the next copy goes, and the
/// per-slice rates measured so far (bytes per second).
pub struct Bound {
    buf: Vec<u8>,
    src: Vec<u8>,
    at: usize,
    plain: Vec<f64>,
    streamed: Vec<f64>,
}

impl Bound {
    /// A bound for copies of `payload`.
    pub fn new(payload: &[u8]) -> Self {
        let buf = SPARE
            .lock()
            .ok()
            .and_then(|mut s| s.pop())
            .unwrap_or_else(|| vec![1u8; BUFFER]);
        Self {
            buf,
            src: payload.to_vec(),
            at: 0,
            plain: Vec::new(),
            streamed: Vec::new(),
        }
    }

    /// One slice: `n` copies of the payload with `memcpy`, then `n`
    /// non-temporal ones, each stepping sequentially through the buffer.
    pub fn slice(&mut self, n: u64) {
        for streamed in [false, true] {
            let size = self.src.len();
            let t = Instant::now();
            for _ in 0..n {
                if self.at + size > self.buf.len() {
                    self.at = 0;
                }
                let dst = &mut self.buf[self.at..self.at + size];
                if streamed {
                    stream(dst, &self.src);
                } else {
                    dst.copy_from_slice(&self.src);
                }
                self.at += size.next_multiple_of(16);
            }
            let rate = (n as usize * size) as f64 / t.elapsed().as_secs_f64();
            if streamed {
                self.streamed.push(rate);
            } else {
                self.plain.push(rate);
            }
        }
        std::hint::black_box(&self.buf);
    }

    /// Median slice rates, bytes per second: `(plain, streamed)`.
    pub fn medians(&self) -> (f64, f64) {
        (median(&self.plain), median(&self.streamed))
    }

    /// The bound: the faster of the two medians, bytes per second.
    pub fn rate(&self) -> f64 {
        let (p, s) = self.medians();
        p.max(s)
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Ok(mut s) = SPARE.lock() {
            s.push(std::mem::take(&mut self.buf));
        }
    }
}

/// Median of `v` (0 if empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Non-temporal copy of `src` into `dst` (same length): 16-byte streaming
/// stores from the first 16-aligned byte, plain copies for the ends, then
/// `sfence`.
#[cfg(target_arch = "x86_64")]
fn stream(dst: &mut [u8], src: &[u8]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    let len = src.len().min(dst.len());
    let head = ((16 - (dst.as_ptr() as usize & 15)) & 15).min(len);
    dst[..head].copy_from_slice(&src[..head]);
    let mut i = head;
    while i + 16 <= len {
        // SAFETY: [i, i + 16) is inside both slices; `dst[i..]` is 16-aligned
        // (the head aligned it, steps are 16); SSE2 is baseline on x86-64.
        unsafe {
            let v = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm_stream_si128(dst.as_mut_ptr().add(i) as *mut __m128i, v);
        }
        i += 16;
    }
    dst[i..len].copy_from_slice(&src[i..len]);
    // SAFETY: no preconditions.
    unsafe { _mm_sfence() };
}

#[cfg(not(target_arch = "x86_64"))]
fn stream(dst: &mut [u8], src: &[u8]) {
    dst.copy_from_slice(src);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_streamed_copy_copies_every_length_and_alignment() {
        let src: Vec<u8> = (0..300u32).map(|i| (i * 7 + 1) as u8).collect();
        for len in [0, 1, 15, 16, 17, 64, 100, 300] {
            for shift in [0, 1, 8, 15] {
                let mut dst = vec![0u8; len + 32];
                stream(&mut dst[shift..shift + len], &src[..len]);
                assert_eq!(&dst[shift..shift + len], &src[..len]);
                assert!(dst[..shift].iter().all(|&b| b == 0));
                assert!(dst[shift + len..].iter().all(|&b| b == 0));
            }
        }
    }

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
    }
}
