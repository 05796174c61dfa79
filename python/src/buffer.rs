//! The buffer protocol both ways: reading any exporter's bytes (bytes,
//! bytearray, memoryview, numpy arrays contiguous or strided) without an
//! intermediate copy, and exporting a pinned blob or message read-only.

use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::{c_int, c_void, CStr};
use std::ptr;

/// Copies at least this large run with the GIL released.
pub(crate) const DETACH_BYTES: usize = 64 << 10;

/// An export obtained from a Python object with `PyObject_GetBuffer`,
/// released on drop (which must happen with the GIL held: every value is
/// created and dropped inside a method that holds it).
pub(crate) struct Input {
    view: Box<ffi::Py_buffer>,
    layout: Layout,
}

/// Where an export's bytes are: the raw parts of a `Py_buffer`, checked.
/// It is plain data so that a copy can run with the GIL released.
pub(crate) struct Layout {
    buf: *const u8,
    len: usize,
    itemsize: usize,
    shape: Vec<usize>,
    strides: Vec<isize>,
    contiguous: bool,
}

// SAFETY: `Layout` only describes memory that the `Input` owning it keeps
// exported (the exporter can neither free nor resize it while the export
// lives); it is read through `gather`, whose callers keep the `Input` alive
// for the duration, whichever thread runs the copy.
unsafe impl Send for Layout {}
// SAFETY: see Send; a `Layout` is only ever read.
unsafe impl Sync for Layout {}

impl Input {
    /// Asks `obj` for its bytes (any layout without indirections).
    pub(crate) fn new(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        // SAFETY: an all-zero Py_buffer is a valid "empty" value of this
        // plain C struct (null pointers, zero sizes); GetBuffer fills it.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `obj` is a live object (we hold a reference and the GIL)
        // and `view` points to writable memory for one Py_buffer.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_STRIDES) };
        if rc != 0 {
            let err = PyErr::take(obj.py()).unwrap_or_else(|| {
                PyTypeError::new_err("the object does not support the buffer protocol")
            });
            return Err(err);
        }
        // From here on `Input`'s drop releases the export, even on error.
        let mut input = Input {
            view,
            layout: Layout::empty(),
        };
        input.layout = Layout::read(&input.view)?;
        Ok(input)
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(crate) fn len(&self) -> usize {
        self.layout.len
    }

    /// The bytes, when they are one C-contiguous run.
    pub(crate) fn contiguous(&self) -> Option<&[u8]> {
        if !self.layout.contiguous {
            return None;
        }
        if self.layout.len == 0 {
            return Some(&[]);
        }
        // SAFETY: a C-contiguous export: `len` readable bytes at `buf`,
        // kept alive by the export `self` holds; borrowed from `self`.
        Some(unsafe { std::slice::from_raw_parts(self.layout.buf, self.layout.len) })
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        // SAFETY: `view` was filled by a successful PyObject_GetBuffer and
        // is released exactly once, here, with the GIL held (see the type's
        // doc).
        unsafe { ffi::PyBuffer_Release(&mut *self.view) };
    }
}

impl Layout {
    fn empty() -> Self {
        Layout {
            buf: ptr::null(),
            len: 0,
            itemsize: 1,
            shape: Vec::new(),
            strides: Vec::new(),
            contiguous: true,
        }
    }

    /// Checks the export's description: sizes that agree, no negative
    /// dimension, no indirection.
    fn read(v: &ffi::Py_buffer) -> PyResult<Self> {
        let bad =
            |what: &str| PyBufferError::new_err(format!("inconsistent buffer export: {what}"));
        let len = usize::try_from(v.len).map_err(|_| bad("negative length"))?;
        if !v.suboffsets.is_null() {
            return Err(bad("indirect (suboffsets) buffers are not supported"));
        }
        let ndim = usize::try_from(v.ndim).map_err(|_| bad("negative ndim"))?;
        let itemsize = usize::try_from(v.itemsize).map_err(|_| bad("negative itemsize"))?;
        if v.shape.is_null() || ndim == 0 {
            // One run of `len` bytes (a scalar, or an exporter that gave no
            // shape).
            return Ok(Layout {
                buf: v.buf as *const u8,
                len,
                itemsize: 1,
                shape: vec![len],
                strides: vec![1],
                contiguous: true,
            });
        }
        let mut shape = Vec::with_capacity(ndim);
        for i in 0..ndim {
            // SAFETY: `shape` is non-null and has `ndim` entries (the
            // buffer protocol's contract for a filled view).
            let d = unsafe { *v.shape.add(i) };
            shape.push(usize::try_from(d).map_err(|_| bad("negative dimension"))?);
        }
        let items = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad("shape overflows"))?;
        if items.checked_mul(itemsize) != Some(len) {
            return Err(bad("len is not the product of shape and itemsize"));
        }
        let strides: Vec<isize> = if v.strides.is_null() {
            c_strides(&shape, itemsize)
        } else {
            // SAFETY: as for `shape`: `ndim` entries when non-null.
            (0..ndim).map(|i| unsafe { *v.strides.add(i) }).collect()
        };
        let contiguous = items == 0 || strides == c_strides(&shape, itemsize) || {
            // Dimensions of extent 1 may carry any stride.
            let expected = c_strides(&shape, itemsize);
            shape
                .iter()
                .zip(strides.iter().zip(&expected))
                .all(|(&d, (s, e))| d == 1 || s == e)
        };
        Ok(Layout {
            buf: v.buf as *const u8,
            len,
            itemsize,
            shape,
            strides,
            contiguous,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// The strides of a C-contiguous array of this shape.
fn c_strides(shape: &[usize], itemsize: usize) -> Vec<isize> {
    let mut strides = vec![0isize; shape.len()];
    let mut step = itemsize as isize;
    for i in (0..shape.len()).rev() {
        strides[i] = step;
        step = step.saturating_mul(shape[i] as isize);
    }
    strides
}

/// Copies the bytes `layout` describes, in C order, into `dst` (exactly
/// `layout.len()` bytes): one copy whatever the strides.
///
/// # Safety
/// The export `layout` came from must be alive for the whole call.
pub(crate) unsafe fn gather(layout: &Layout, dst: &mut [u8]) {
    debug_assert_eq!(dst.len(), layout.len);
    if layout.len == 0 || dst.len() != layout.len {
        return;
    }
    if layout.contiguous {
        // SAFETY: a C-contiguous export of `len` bytes, alive (the
        // caller's contract), distinct from the Rust buffer `dst`.
        let src = unsafe { std::slice::from_raw_parts(layout.buf, layout.len) };
        copy_large(dst, src);
        return;
    }
    let ndim = layout.shape.len();
    let last = ndim - 1;
    let item = layout.itemsize;
    let row_items = layout.shape[last];
    let row_contiguous = layout.strides[last] == item as isize;
    // Index over every dimension but the last, odometer style.
    let mut index = vec![0usize; last];
    let mut offset: isize = 0;
    let mut out = 0usize;
    loop {
        if row_contiguous {
            let n = row_items * item;
            // SAFETY: the exporter's shape and strides address bytes inside
            // its export (the buffer protocol's contract) and the export is
            // alive; `out + n <= len` because the rows add up to `len`.
            unsafe {
                ptr::copy_nonoverlapping(layout.buf.offset(offset), dst.as_mut_ptr().add(out), n)
            };
            out += n;
        } else {
            let mut at = offset;
            for _ in 0..row_items {
                // SAFETY: as above, one item at a time.
                unsafe {
                    ptr::copy_nonoverlapping(layout.buf.offset(at), dst.as_mut_ptr().add(out), item)
                };
                out += item;
                at += layout.strides[last];
            }
        }
        // Next row.
        let mut dim = last;
        loop {
            if dim == 0 {
                return;
            }
            dim -= 1;
            index[dim] += 1;
            offset += layout.strides[dim];
            if index[dim] < layout.shape[dim] {
                break;
            }
            offset -= layout.strides[dim] * layout.shape[dim] as isize;
            index[dim] = 0;
        }
    }
}

/// Copies this large are split between threads.
pub(crate) const PARALLEL_MIN: usize = 8 << 20;

/// `dst.copy_from_slice(src)`, split between up to four threads (one per
/// 4 MiB at least, no more than the CPUs) when it is at least
/// [`PARALLEL_MIN`] bytes: one core's copy does not use all the memory
/// bandwidth (measured on the 2-vCPU development machine, 64 MiB: 8.6 GB/s
/// with one thread, 13.3 with two). A part whose thread cannot be started
/// is copied by the caller.
pub(crate) fn copy_large(dst: &mut [u8], src: &[u8]) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if src.len() >= PARALLEL_MIN && dst.len() == src.len() {
        cpus.min(4).min(src.len() / (4 << 20)).max(1)
    } else {
        1
    };
    if threads <= 1 {
        dst.copy_from_slice(src);
        return;
    }
    let part = src.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = dst.chunks_mut(part).zip(src.chunks(part));
        let first = parts.next();
        for (d, s) in parts {
            let ptrs = (d.as_mut_ptr() as usize, s.as_ptr() as usize, d.len());
            if std::thread::Builder::new()
                .spawn_scoped(scope, move || {
                    // SAFETY: `d` and `s` (disjoint parts of `dst` and
                    // `src`, of the same length) outlive the scope; the
                    // closure is the only user of `d`.
                    unsafe {
                        ptr::copy_nonoverlapping(ptrs.1 as *const u8, ptrs.0 as *mut u8, ptrs.2)
                    }
                })
                .is_err()
            {
                d.copy_from_slice(s);
            }
        }
        if let Some((d, s)) = first {
            d.copy_from_slice(s);
        }
    });
}

/// The format string of the exports: unsigned bytes.
const FORMAT_B: &CStr = c"B";

/// Fills `view` with a read-only, one-dimensional export of `len` bytes at
/// `buf`, owned by `owner` (a new strong reference goes into `view.obj`).
///
/// # Safety
/// `view` must be the `Py_buffer` passed to `__getbuffer__`, and the `len`
/// bytes at `buf` must stay valid and unchanged for as long as `owner`
/// counts the export (until the matching `__releasebuffer__`).
pub(crate) unsafe fn export_readonly(
    view: *mut ffi::Py_buffer,
    flags: c_int,
    buf: *const u8,
    len: usize,
    owner: &Bound<'_, PyAny>,
) -> PyResult<()> {
    if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
        return Err(PyBufferError::new_err(
            "shared-memory blobs are read-only: copy them to write (bytearray(x), numpy.array(x))",
        ));
    }
    // SAFETY: the caller's contract, and a read-only export is never
    // written through.
    unsafe { export(view, flags, buf as *mut u8, len, owner, false) }
}

/// Fills `view` with a writable, one-dimensional export of `len` bytes at
/// `buf`, owned by `owner` (a new strong reference goes into `view.obj`).
///
/// # Safety
/// `view` must be the `Py_buffer` passed to `__getbuffer__`, and the `len`
/// bytes at `buf` must stay valid, and be written by no one but the
/// export's users, for as long as `owner` counts the export (until the
/// matching `__releasebuffer__`).
pub(crate) unsafe fn export_writable(
    view: *mut ffi::Py_buffer,
    flags: c_int,
    buf: *mut u8,
    len: usize,
    owner: &Bound<'_, PyAny>,
) -> PyResult<()> {
    // SAFETY: the caller's contract.
    unsafe { export(view, flags, buf, len, owner, true) }
}

/// # Safety
/// See [`export_readonly`] and [`export_writable`].
unsafe fn export(
    view: *mut ffi::Py_buffer,
    flags: c_int,
    buf: *mut u8,
    len: usize,
    owner: &Bound<'_, PyAny>,
    writable: bool,
) -> PyResult<()> {
    if view.is_null() {
        return Err(PyBufferError::new_err("null Py_buffer"));
    }
    // SAFETY: `view` is the non-null Py_buffer of this __getbuffer__ call
    // (the caller's contract), which we fill entirely. `shape` and
    // `strides` point into the view itself, which lives as long as the
    // export; `format` is a static C string that no one frees or writes.
    unsafe {
        (*view).obj = owner.clone().into_ptr();
        (*view).buf = buf as *mut c_void;
        (*view).len = len as isize;
        (*view).readonly = c_int::from(!writable);
        (*view).itemsize = 1;
        (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
            FORMAT_B.as_ptr() as *mut _
        } else {
            ptr::null_mut()
        };
        (*view).ndim = 1;
        (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
            &mut (*view).len
        } else {
            ptr::null_mut()
        };
        (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
            &mut (*view).itemsize
        } else {
            ptr::null_mut()
        };
        (*view).suboffsets = ptr::null_mut();
        (*view).internal = ptr::null_mut();
    }
    Ok(())
}
