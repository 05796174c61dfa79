//! The Python package `stable_fragmented_buffer`: safe zero-copy blobs and
//! channels between Python processes, on the Rust library of the same name.
//!
//! * `Store.create` / `Store.attach` open a namespace in POSIX shared
//!   memory; `append` copies anything with the buffer protocol into it once
//!   and returns a 24-byte `Handle`; `resolve` gives a read-only, zero-copy
//!   `View` (buffer protocol), `resolve_bytes` a copy.
//! * `publisher` / `subscriber` (broadcast) and `sender` / `receiver` (work
//!   queue) open channels; `recv` returns a zero-copy `Message`.
//! * A `View` or `Message` stays pinned while any export of it lives, so no
//!   Python code can read memory that was freed or reused.
//!
//! The stubs are in `stable_fragmented_buffer.pyi`; the design, in the
//! repository's `docs/design.md` ("Python package").

use pyo3::prelude::*;

mod aio;
mod array;
mod buffer;
mod channel;
mod errors;
mod handle;
mod pinned;
mod store;

/// The module.
#[pymodule(name = "stable_fragmented_buffer")]
fn sfb_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<store::Store>()?;
    m.add_class::<store::View>()?;
    m.add_class::<handle::Handle>()?;
    m.add_class::<channel::Publisher>()?;
    m.add_class::<channel::Subscriber>()?;
    m.add_class::<channel::Sender>()?;
    m.add_class::<channel::Receiver>()?;
    m.add_class::<channel::Message>()?;
    m.add_class::<channel::Loan>()?;
    m.add_function(wrap_pyfunction!(store::cleanup_namespace, m)?)?;
    m.add(
        "DEFAULT_CHUNK_SIZE",
        stable_fragmented_buffer::DEFAULT_CHUNK_SIZE,
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    Ok(())
}
