//! `Store` (a shared namespace), `View` (a pinned blob) and
//! `cleanup_namespace`.

use crate::buffer::{self, Input, DETACH_BYTES};
use crate::channel::{self, Receiver, Sender, Subscriber};
use crate::errors::{self, Exc};
use crate::handle::Handle;
use crate::pinned::Pinned;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use stable_fragmented_buffer::{
    BlobView, Config, PinnedBlobStore, SharedBackend, DEFAULT_CHUNK_SIZE,
};
use std::ffi::c_int;
use std::sync::{Arc, Mutex};

/// A namespace in POSIX shared memory (`/dev/shm`): blobs appended by any
/// attached process, resolved zero-copy by any other, and channels.
#[pyclass(frozen, module = "stable_fragmented_buffer")]
pub(crate) struct Store {
    inner: Mutex<Option<Arc<PinnedBlobStore>>>,
    namespace: String,
}

impl Store {
    fn wrap(store: PinnedBlobStore, namespace: String) -> Self {
        Store {
            inner: Mutex::new(Some(Arc::new(store))),
            namespace,
        }
    }

    /// The library store, unless closed.
    pub(crate) fn get(&self, py: Python<'_>) -> PyResult<Arc<PinnedBlobStore>> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(s) => Ok(Arc::clone(s)),
            None => Err(errors::new(
                py,
                Exc::Closed,
                format!("the store of namespace \"{}\" is closed", self.namespace),
            )),
        }
    }
}

#[pymethods]
impl Store {
    /// Creates namespace `namespace`; this process is its creator, and
    /// closing (or dropping) the store and everything opened from it
    /// removes its files.
    #[staticmethod]
    #[pyo3(signature = (namespace, chunk_size = DEFAULT_CHUNK_SIZE, max_chunks = None, decay_ms = 5_000, ttl_ms = 30_000))]
    fn create(
        py: Python<'_>,
        namespace: String,
        chunk_size: usize,
        max_chunks: Option<u32>,
        decay_ms: u64,
        ttl_ms: u64,
    ) -> PyResult<Self> {
        let config = Config {
            decay_timeout_ms: decay_ms,
            default_ttl_ms: ttl_ms,
            ..Config::default()
        };
        let ns = namespace.clone();
        py.detach(move || {
            PinnedBlobStore::new_shared_with_limit(config, &ns, chunk_size, max_chunks)
        })
        .map(|s| Store::wrap(s, namespace))
        .map_err(|e| errors::from_blob(py, &e))
    }

    /// Attaches to namespace `namespace`, created by another process.
    #[staticmethod]
    fn attach(py: Python<'_>, namespace: String) -> PyResult<Self> {
        let ns = namespace.clone();
        py.detach(move || PinnedBlobStore::attach_shared(Config::default(), &ns))
            .map(|s| Store::wrap(s, namespace))
            .map_err(|e| errors::from_blob(py, &e))
    }

    /// Copies the bytes of `obj` (anything with the buffer protocol:
    /// bytes, bytearray, memoryview, numpy arrays contiguous or not) once
    /// into shared memory; returns their handle.
    fn append(&self, py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Handle> {
        let store = self.get(py)?;
        let input = Input::new(obj)?;
        let layout = input.layout();
        let len = layout.len();
        let fill = |dst: &mut [u8]| {
            // SAFETY: `input` holds the export for the whole call.
            unsafe { buffer::gather(layout, dst) }
        };
        let out = if len >= DETACH_BYTES {
            py.detach(|| store.append_shared_with(len, fill))
        } else {
            store.append_shared_with(len, fill)
        };
        drop(input);
        out.map(|inner| Handle { inner })
            .map_err(|e| errors::from_blob(py, &e))
    }

    /// A zero-copy, read-only view of the blob, or `None` if the handle is
    /// stale, reclaimed or forged.
    fn resolve(&self, py: Python<'_>, handle: PyRef<'_, Handle>) -> PyResult<Option<View>> {
        let store = self.get(py)?;
        Ok(store.resolve_ref(&handle.inner).map(View::new))
    }

    /// A copy of the blob as `bytes`, or `None` (see `resolve`).
    fn resolve_bytes<'py>(
        &self,
        py: Python<'py>,
        handle: PyRef<'_, Handle>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let store = self.get(py)?;
        let Some(view) = store.resolve_ref(&handle.inner) else {
            return Ok(None);
        };
        let bytes = PyBytes::new_with(py, view.len(), |dst| {
            if dst.len() >= DETACH_BYTES {
                py.detach(|| dst.copy_from_slice(&view));
            } else {
                dst.copy_from_slice(&view);
            }
            Ok(())
        })?;
        Ok(Some(bytes))
    }

    /// Marks the blob consumed: `True` the first time, `False` for a repeat
    /// or a stale or forged handle.
    fn acknowledge(&self, py: Python<'_>, handle: PyRef<'_, Handle>) -> PyResult<bool> {
        Ok(self.get(py)?.acknowledge_shared(&handle.inner))
    }

    /// One reclamation pass now (a background thread runs them anyway);
    /// returns the chunks reclaimed.
    fn reclaim(&self, py: Python<'_>) -> PyResult<usize> {
        let store = self.get(py)?;
        Ok(py.detach(|| store.cleanup_shared()))
    }

    /// Opens (creating if needed) broadcast channel `name` for publishing.
    ///
    /// Whoever creates a channel fixes its ring and policy. An opener
    /// without keywords adopts what exists (or creates the default
    /// channel); one with keywords asks for that ring and policy (the
    /// defaults for the keywords it leaves out), and a channel that exists
    /// with another raises `ChannelMismatchError`. `max_message` and
    /// `in_flight` size the ring. `overflow`: `"drop-oldest"` (the default) never makes
    /// a publisher wait: a subscriber that falls a ring behind skips ahead,
    /// and its next receive raises `LaggedError`; `"block"` is lossless:
    /// publishers wait for the slowest live subscriber, or, with
    /// `stall_timeout` (seconds), let go one that has not received for that
    /// long (it lags instead). `max_held` (1 to 1024, default 16): messages
    /// one consumer may hold at once before receiving raises
    /// `TooManyHeldError`. Invalid values raise `InvalidConfigError`.
    #[pyo3(signature = (
        name, *, max_message = None, in_flight = None, overflow = None, stall_timeout = None,
        delivery = None, max_held = None,
    ))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn publisher(
        &self,
        py: Python<'_>,
        name: &str,
        max_message: Option<usize>,
        in_flight: Option<u32>,
        overflow: Option<&str>,
        stall_timeout: Option<f64>,
        delivery: Option<&str>,
        max_held: Option<i64>,
    ) -> PyResult<channel::Publisher> {
        let options = channel::Options {
            max_message,
            in_flight,
            overflow,
            stall_timeout,
            delivery,
            max_held,
        };
        let (e, store) = self.open_endpoint(
            py,
            name,
            &options,
            PinnedBlobStore::publisher,
            PinnedBlobStore::publisher_with,
        )?;
        Ok(channel::Publisher::open(e, store, name))
    }

    /// Subscribes to broadcast channel `name` (creating it if needed): it
    /// receives every message published from now on, unless it falls a
    /// whole ring behind on a `"drop-oldest"` channel (see `publisher` for
    /// the keyword arguments).
    #[pyo3(signature = (
        name, *, max_message = None, in_flight = None, overflow = None, stall_timeout = None,
        delivery = None, max_held = None,
    ))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn subscriber(
        &self,
        py: Python<'_>,
        name: &str,
        max_message: Option<usize>,
        in_flight: Option<u32>,
        overflow: Option<&str>,
        stall_timeout: Option<f64>,
        delivery: Option<&str>,
        max_held: Option<i64>,
    ) -> PyResult<Subscriber> {
        let options = channel::Options {
            max_message,
            in_flight,
            overflow,
            stall_timeout,
            delivery,
            max_held,
        };
        let (e, store) = self.open_endpoint(
            py,
            name,
            &options,
            PinnedBlobStore::subscriber,
            PinnedBlobStore::subscriber_with,
        )?;
        Ok(Subscriber::open(e, store, name))
    }

    /// Opens (creating if needed) work queue `name` for sending.
    ///
    /// Whoever creates the queue fixes its ring and policy (see
    /// `publisher`). `delivery`: `"at-most-once"` (the default) loses a
    /// message whose receiver dies holding it; `"at-least-once"` gives it to
    /// another receiver, with `Message.redelivered` counting the earlier
    /// deliveries. `overflow` and `stall_timeout` are for broadcast
    /// channels (a work queue always blocks).
    #[pyo3(signature = (
        name, *, max_message = None, in_flight = None, overflow = None, stall_timeout = None,
        delivery = None, max_held = None,
    ))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn sender(
        &self,
        py: Python<'_>,
        name: &str,
        max_message: Option<usize>,
        in_flight: Option<u32>,
        overflow: Option<&str>,
        stall_timeout: Option<f64>,
        delivery: Option<&str>,
        max_held: Option<i64>,
    ) -> PyResult<Sender> {
        let options = channel::Options {
            max_message,
            in_flight,
            overflow,
            stall_timeout,
            delivery,
            max_held,
        };
        let (e, store) = self.open_endpoint(
            py,
            name,
            &options,
            PinnedBlobStore::sender,
            PinnedBlobStore::sender_with,
        )?;
        Ok(Sender::open(e, store, name))
    }

    /// Opens (creating if needed) work queue `name` for receiving: each
    /// message goes to exactly one receiver (see `sender` for the keyword
    /// arguments).
    #[pyo3(signature = (
        name, *, max_message = None, in_flight = None, overflow = None, stall_timeout = None,
        delivery = None, max_held = None,
    ))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn receiver(
        &self,
        py: Python<'_>,
        name: &str,
        max_message: Option<usize>,
        in_flight: Option<u32>,
        overflow: Option<&str>,
        stall_timeout: Option<f64>,
        delivery: Option<&str>,
        max_held: Option<i64>,
    ) -> PyResult<Receiver> {
        let options = channel::Options {
            max_message,
            in_flight,
            overflow,
            stall_timeout,
            delivery,
            max_held,
        };
        let (e, store) = self.open_endpoint(
            py,
            name,
            &options,
            PinnedBlobStore::receiver,
            PinnedBlobStore::receiver_with,
        )?;
        Ok(Receiver::open(e, store, name))
    }

    /// The namespace's name.
    #[getter]
    fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Size of a standard chunk file, in bytes.
    #[getter]
    fn chunk_size(&self, py: Python<'_>) -> PyResult<usize> {
        let store = self.get(py)?;
        Ok(store.shared_backend().map_or(0, SharedBackend::chunk_size))
    }

    /// The namespace's chunk limit, or `None`.
    #[getter]
    fn max_chunks(&self, py: Python<'_>) -> PyResult<Option<usize>> {
        let store = self.get(py)?;
        Ok(store.shared_backend().and_then(SharedBackend::max_chunks))
    }

    /// Whether this process created the namespace.
    #[getter]
    fn is_creator(&self, py: Python<'_>) -> PyResult<bool> {
        let store = self.get(py)?;
        Ok(store
            .shared_backend()
            .is_some_and(SharedBackend::is_creator))
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Lets go of the store. The namespace lives on while channel
    /// endpoints opened from it are open; views and messages stay readable.
    fn close(&self, py: Python<'_>) {
        let taken = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        // The creator's last reference removes the namespace's files.
        py.detach(move || drop(taken));
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) {
        self.close(py);
    }

    /// Pickles as the namespace's name: unpickling attaches to the
    /// namespace (`Store.attach`), so a `Store` can be passed to a process
    /// started with the spawn method. The copy is never the namespace's
    /// creator: its closing removes nothing. A closed store raises
    /// `ClosedError`.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, (String,))> {
        let py = slf.py();
        let this = slf.get();
        this.get(py)?;
        let attach = py.get_type::<Store>().getattr("attach")?;
        Ok((attach, (this.namespace.clone(),)))
    }

    fn __repr__(&self) -> String {
        format!(
            "Store(namespace={:?}{})",
            self.namespace,
            if self.closed() { ", closed" } else { "" }
        )
    }
}

/// A zero-copy, read-only view of one blob (buffer protocol). While it, or
/// any memoryview or numpy array made from it, is alive, the blob's chunk
/// is pinned: its bytes never change and are never reused.
#[pyclass(frozen, module = "stable_fragmented_buffer")]
pub(crate) struct View {
    pinned: Pinned<BlobView>,
}

impl View {
    fn new(view: BlobView) -> Self {
        View {
            pinned: Pinned::new(view),
        }
    }
}

#[pymethods]
impl View {
    /// # Safety
    /// Called by Python's buffer protocol only.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        // SAFETY: `view` is this call's Py_buffer; `slf` owns the pinned
        // bytes and the export takes a reference to it.
        unsafe {
            slf.get()
                .pinned
                .get_buffer("view", view, flags, slf.as_any())
        }
    }

    /// # Safety
    /// Called by Python's buffer protocol only.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.pinned.release_buffer();
    }

    /// Unpins the blob. Raises `BufferError` while memoryviews or arrays
    /// made from the view are alive; a second call does nothing.
    fn release(&self) -> PyResult<()> {
        self.pinned.release("view")
    }

    /// Whether `release` was called.
    #[getter]
    fn released(&self) -> bool {
        self.pinned.released()
    }

    /// Buffer exports alive (memoryviews, numpy arrays, ...).
    #[getter]
    fn exports(&self) -> usize {
        self.pinned.exports()
    }

    /// A copy of the bytes.
    fn tobytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.pinned.with("view", |v| PyBytes::new(py, v.as_slice()))
    }

    fn __len__(&self) -> usize {
        self.pinned.len()
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.release()
    }

    fn __repr__(&self) -> String {
        format!(
            "View(len={}{})",
            self.pinned.len(),
            if self.pinned.released() {
                ", released"
            } else {
                ""
            }
        )
    }
}

/// Removes namespace `namespace`'s files left by a creator that died;
/// `force=True` removes them even while the creator is alive. Returns the
/// number of files removed.
#[pyfunction]
#[pyo3(signature = (namespace, force = false))]
pub(crate) fn cleanup_namespace(py: Python<'_>, namespace: String, force: bool) -> PyResult<usize> {
    py.detach(move || {
        if force {
            SharedBackend::cleanup_namespace_forced(&namespace)
        } else {
            SharedBackend::remove_namespace(&namespace)
        }
    })
    .map_err(|e| errors::from_blob(py, &e))
}

impl Store {
    /// Opens an endpoint of channel `name`: with the plain opener (adopting
    /// the channel as it exists) when no keyword was given, else with the
    /// `_with` opener and the config the keywords make (a channel that
    /// exists with another geometry or policy is `ChannelMismatchError`).
    fn open_endpoint<T>(
        &self,
        py: Python<'_>,
        name: &str,
        options: &channel::Options<'_>,
        plain: fn(&PinnedBlobStore, &str) -> stable_fragmented_buffer::Result<T>,
        with: fn(
            &PinnedBlobStore,
            &str,
            stable_fragmented_buffer::ChannelConfig,
        ) -> stable_fragmented_buffer::Result<T>,
    ) -> PyResult<(T, Arc<PinnedBlobStore>)> {
        let store = self.get(py)?;
        let endpoint = if options.given() {
            with(&store, name, channel::config(py, options)?)
        } else {
            plain(&store, name)
        }
        .map_err(|e| errors::from_blob(py, &e))?;
        Ok((endpoint, store))
    }
}
