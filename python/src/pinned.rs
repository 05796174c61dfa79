//! `View` and `Message`: pinned bytes exported read-only through the buffer
//! protocol, with the count of live exports that keeps them pinned.

use crate::buffer;
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::c_int;
use std::sync::{Mutex, MutexGuard};

/// Bytes that stay put while held (a `BlobView` or a channel `Message`),
/// and the exports made from them.
pub(crate) struct Pinned<T> {
    state: Mutex<State<T>>,
    len: usize,
}

struct State<T> {
    /// `None` once released: the pin (or slot) is given back.
    held: Option<T>,
    /// Buffer exports alive (memoryviews, numpy arrays, ...).
    exports: usize,
}

impl<T: AsRef<[u8]>> Pinned<T> {
    pub(crate) fn new(held: T) -> Self {
        let len = held.as_ref().len();
        Pinned {
            state: Mutex::new(State {
                held: Some(held),
                exports: 0,
            }),
            len,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn released(&self) -> bool {
        self.lock().held.is_none()
    }

    pub(crate) fn exports(&self) -> usize {
        self.lock().exports
    }

    /// Runs `f` on the bytes, unless released.
    pub(crate) fn with<R>(&self, what: &str, f: impl FnOnce(&T) -> R) -> PyResult<R> {
        let st = self.lock();
        match &st.held {
            Some(held) => Ok(f(held)),
            None => Err(PyBufferError::new_err(format!("the {what} was released"))),
        }
    }

    /// `__getbuffer__`: exports the bytes read-only and counts the export.
    ///
    /// # Safety
    /// `view` must be the `Py_buffer` of the `__getbuffer__` call, and
    /// `owner` the Python object that holds `self` (it keeps `self` alive
    /// until the export is released).
    pub(crate) unsafe fn get_buffer(
        &self,
        what: &str,
        view: *mut ffi::Py_buffer,
        flags: c_int,
        owner: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let mut st = self.lock();
        let Some(held) = &st.held else {
            return Err(PyBufferError::new_err(format!(
                "the {what} was released: its bytes are no longer readable"
            )));
        };
        let bytes = held.as_ref();
        // SAFETY: the bytes stay valid and unchanged while `held` is kept,
        // and `release` refuses to drop it while the count below is
        // non-zero; `owner` keeps `self` alive until the matching
        // `release_buffer` (the export holds a reference to it).
        unsafe { buffer::export_readonly(view, flags, bytes.as_ptr(), bytes.len(), owner)? };
        st.exports += 1;
        Ok(())
    }

    /// `__releasebuffer__`: one export fewer.
    pub(crate) fn release_buffer(&self) {
        let mut st = self.lock();
        st.exports = st.exports.saturating_sub(1);
    }

    /// Gives the bytes back (unpins the view, releases the message).
    /// Raises `BufferError` while exports are alive, as `mmap.close()`
    /// does; releasing twice is a no-op.
    pub(crate) fn release(&self, what: &str) -> PyResult<()> {
        let held = {
            let mut st = self.lock();
            if st.exports > 0 {
                return Err(PyBufferError::new_err(format!(
                    "cannot release the {what}: {} exported buffer(s) (memoryview, numpy array, ...) still use its memory; delete them first",
                    st.exports
                )));
            }
            st.held.take()
        };
        // Dropped outside the lock: releasing a message may wake producers.
        drop(held);
        Ok(())
    }
}
