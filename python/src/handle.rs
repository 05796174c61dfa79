//! `Handle`: the 24 bytes that name a blob of a shared store.

use crate::errors::{self, Exc};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple, PyType};
use stable_fragmented_buffer::OverflowHandle;

/// Where a blob lives in a store: 24 plain bytes that any attached process
/// can resolve. Not a pointer: a stale, reclaimed or forged handle resolves
/// to `None`, never to other bytes.
#[pyclass(frozen, eq, hash, module = "stable_fragmented_buffer")]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Handle {
    pub(crate) inner: OverflowHandle,
}

impl Handle {
    fn parse(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        OverflowHandle::from_bytes(data)
            .map(|inner| Handle { inner })
            .ok_or_else(|| {
                errors::new(
                    py,
                    Exc::InvalidHandle,
                    format!("a handle is 24 bytes, got {}", data.len()),
                )
            })
    }
}

#[pymethods]
impl Handle {
    /// `Handle(data)`: the same as [`from_bytes`](Self::from_bytes).
    #[new]
    fn new(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        Self::parse(py, data)
    }

    /// Reads a handle from its 24 bytes (`bytes(handle)`); any other length
    /// raises `InvalidHandleError` (a `ValueError`).
    #[classmethod]
    fn from_bytes(_cls: &Bound<'_, PyType>, py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        Self::parse(py, data)
    }

    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.as_bytes())
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let data = PyBytes::new(py, slf.get().inner.as_bytes());
        PyTuple::new(
            py,
            [
                slf.get_type().into_any(),
                PyTuple::new(py, [data])?.into_any(),
            ],
        )
    }

    /// Payload length in bytes.
    #[getter]
    fn size(&self) -> u32 {
        self.inner.size
    }

    /// The chunk the blob is in.
    #[getter]
    fn chunk(&self) -> u32 {
        self.inner.page_id
    }

    /// The chunk's generation when the blob was appended.
    #[getter]
    fn generation(&self) -> u32 {
        self.inner.generation
    }

    /// Offset of the blob's entry in its chunk.
    #[getter]
    fn offset(&self) -> u32 {
        self.inner.offset
    }

    fn __repr__(&self) -> String {
        format!(
            "Handle(chunk={}, generation={}, offset={}, size={})",
            self.inner.page_id, self.inner.generation, self.inner.offset, self.inner.size
        )
    }
}
