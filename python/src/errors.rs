//! The exception hierarchy: `BlobError` and one subclass per kind of
//! failure a caller handles differently, made once per interpreter and
//! added to the module.

use pyo3::exceptions::{PyOSError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use stable_fragmented_buffer::BlobError;

/// One exception class: its name, its bases (the first is a class made
/// earlier in [`CLASSES`], or none for `BlobError` itself), and its doc.
struct Class {
    name: &'static str,
    parent: Option<Exc>,
    builtin: Option<fn(Python<'_>) -> Bound<'_, PyType>>,
    doc: &'static str,
}

/// The exception classes, by their place in [`CLASSES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exc {
    Blob = 0,
    NotFound,
    AlreadyExists,
    InUse,
    StoreFull,
    NoSpace,
    Corrupt,
    IncompatibleFormat,
    InvalidName,
    InvalidConfig,
    TooLarge,
    EmptyBlob,
    Closed,
    InvalidHandle,
    Reclaimed,
    Expired,
    ChannelKind,
    ChannelFull,
    ForeignOwner,
    SystemCall,
    ChannelTimeout,
    Disconnected,
    Lagged,
    TooManyHeld,
    Inherited,
    ChannelMismatch,
    NotAnArray,
}

const CLASSES: [Class; 27] = [
    Class {
        name: "BlobError",
        parent: None,
        builtin: None,
        doc: "Base class of every error of this package.",
    },
    Class {
        name: "NotFoundError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "No such namespace: create it first with Store.create.",
    },
    Class {
        name: "AlreadyExistsError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "The namespace exists and its creator is alive: attach to it, or pick another name.",
    },
    Class {
        name: "InUseError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "Cleanup refused: the namespace's creator is alive (force=True removes it anyway).",
    },
    Class {
        name: "StoreFullError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "max_chunks reached (or the chunk registry is full): acknowledge data, release views, retry.",
    },
    Class {
        name: "NoSpaceError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "The shared-memory file system is full (ENOSPC).",
    },
    Class {
        name: "CorruptError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "A file of the namespace has inconsistent content: remove the namespace with cleanup_namespace.",
    },
    Class {
        name: "IncompatibleFormatError",
        parent: Some(Exc::Corrupt),
        builtin: None,
        doc: "A file under the namespace's name is not of this format or version; it was left untouched.",
    },
    Class {
        name: "InvalidNameError",
        parent: Some(Exc::Blob),
        builtin: Some(value_error),
        doc: "A namespace or channel name breaks the naming rules (1-64 ASCII letters, digits, '_', '-', '.').",
    },
    Class {
        name: "InvalidConfigError",
        parent: Some(Exc::Blob),
        builtin: Some(value_error),
        doc: "A configuration value is out of range.",
    },
    Class {
        name: "TooLargeError",
        parent: Some(Exc::Blob),
        builtin: Some(value_error),
        doc: "The blob is larger than the largest storable blob.",
    },
    Class {
        name: "EmptyBlobError",
        parent: Some(Exc::Blob),
        builtin: Some(value_error),
        doc: "Appending zero bytes to the store is refused (an empty channel message is fine).",
    },
    Class {
        name: "ClosedError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "The namespace was removed (its creator closed it), or this object was closed.",
    },
    Class {
        name: "InvalidHandleError",
        parent: Some(Exc::Blob),
        builtin: Some(value_error),
        doc: "Bytes that cannot be a handle (a handle is exactly 24 bytes).",
    },
    Class {
        name: "ReclaimedError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "The blob's chunk was reclaimed.",
    },
    Class {
        name: "ExpiredError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "Data was held past the store's TTL and reclaimed.",
    },
    Class {
        name: "ChannelKindError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "The channel name is open as the other kind of channel (broadcast or work queue).",
    },
    Class {
        name: "ChannelFullError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "The channel already has its maximum of live producers or consumers.",
    },
    Class {
        name: "ForeignOwnerError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "A file under the namespace's name belongs to another user; it is neither used nor removed.",
    },
    Class {
        name: "SystemCallError",
        parent: Some(Exc::Blob),
        builtin: Some(os_error),
        doc: "A system call failed; errno holds its error number.",
    },
    Class {
        name: "ChannelTimeout",
        parent: Some(Exc::Blob),
        builtin: Some(timeout_error),
        doc: "A timeout ran out (a TimeoutError): no message arrived (recv), or the channel had \
              no room (send_timeout, loan, send_array, Loan.send).",
    },
    Class {
        name: "DisconnectedError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "No producer of the channel is alive and everything sent was received; ends iteration.",
    },
    Class {
        name: "LaggedError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "This subscriber fell a whole ring behind (overflow=\"drop-oldest\", or let go by a stall \
              timeout) and jumped ahead: `missed` messages were lost to it. The next receive returns \
              the next message; iteration passes over it.",
    },
    Class {
        name: "TooManyHeldError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "This consumer already holds max_held messages (received, not released): release one \
              to receive more.",
    },
    Class {
        name: "InheritedError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "A producer inherited through fork() was used in the child: it belongs to the process \
              that opened it (an inherited consumer finds its channel disconnected). Attach the \
              store in the child and open new endpoints there.",
    },
    Class {
        name: "ChannelMismatchError",
        parent: Some(Exc::Blob),
        builtin: None,
        doc: "An opener was given keywords (max_message, in_flight, overflow, stall_timeout, \
              delivery, max_held) and the channel exists with another geometry or policy: open it \
              without keywords to adopt what exists, or pick another name.",
    },
    Class {
        name: "NotAnArrayError",
        parent: Some(Exc::Blob),
        builtin: Some(value_error),
        doc: "Message.array() on a message that send_array did not send (it has no array \
              header), or whose array header is inconsistent.",
    },
];

fn value_error(py: Python<'_>) -> Bound<'_, PyType> {
    py.get_type::<PyValueError>()
}

fn os_error(py: Python<'_>) -> Bound<'_, PyType> {
    py.get_type::<PyOSError>()
}

fn timeout_error(py: Python<'_>) -> Bound<'_, PyType> {
    py.get_type::<PyTimeoutError>()
}

static TYPES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

fn types(py: Python<'_>) -> PyResult<&Vec<Py<PyType>>> {
    TYPES.get_or_try_init(py, || {
        let make = py.import("builtins")?.getattr("type")?;
        let mut made: Vec<Py<PyType>> = Vec::with_capacity(CLASSES.len());
        for class in &CLASSES {
            let mut bases: Vec<Bound<'_, PyAny>> = Vec::new();
            match class.parent {
                Some(parent) => bases.push(made[parent as usize].bind(py).clone().into_any()),
                None => bases.push(py.get_type::<pyo3::exceptions::PyException>().into_any()),
            }
            if let Some(builtin) = class.builtin {
                bases.push(builtin(py).into_any());
            }
            let dict = PyDict::new(py);
            dict.set_item("__module__", "stable_fragmented_buffer")?;
            dict.set_item("__doc__", class.doc)?;
            if made.len() == Exc::Lagged as usize {
                // The count of missed messages: set on each instance raised
                // (see `lagged`); 0 on the class.
                dict.set_item("missed", 0u64)?;
            }
            let ty = make.call1((class.name, PyTuple::new(py, bases)?, dict))?;
            made.push(ty.cast_into::<PyType>()?.unbind());
        }
        Ok(made)
    })
}

/// Adds every exception class to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    for (class, ty) in CLASSES.iter().zip(types(py)?) {
        m.add(class.name, ty.bind(py))?;
    }
    Ok(())
}

/// An exception of class `kind` with `message`.
pub(crate) fn new(py: Python<'_>, kind: Exc, message: impl Into<String>) -> PyErr {
    match types(py) {
        Ok(types) => PyErr::from_type(types[kind as usize].bind(py).clone(), message.into()),
        Err(e) => e,
    }
}

/// `LaggedError` with its `missed` count (the library's message).
pub(crate) fn lagged(py: Python<'_>, missed: u64) -> PyErr {
    let message = stable_fragmented_buffer::RecvError::Lagged(missed).to_string();
    let made = types(py).and_then(|types| {
        let value = types[Exc::Lagged as usize].bind(py).call1((message,))?;
        value.setattr("missed", missed)?;
        Ok(PyErr::from_value(value))
    });
    made.unwrap_or_else(|e| e)
}

/// `TooManyHeldError`.
pub(crate) fn too_many_held(py: Python<'_>) -> PyErr {
    new(
        py,
        Exc::TooManyHeld,
        "this consumer holds as many messages as it may (max_held); release one to receive more",
    )
}

/// The exception class of a library error.
fn kind_of(e: &BlobError) -> Exc {
    match e {
        BlobError::InvalidNamespace { .. } | BlobError::InvalidChannel { .. } => Exc::InvalidName,
        BlobError::InvalidConfig { .. } => Exc::InvalidConfig,
        BlobError::NotFound { .. } => Exc::NotFound,
        BlobError::AlreadyExists { .. } => Exc::AlreadyExists,
        BlobError::InUse { .. } => Exc::InUse,
        BlobError::StoreFull { .. } | BlobError::RegistryFull { .. } => Exc::StoreFull,
        BlobError::NoSpace { .. } | BlobError::OutOfMemory { .. } => Exc::NoSpace,
        BlobError::Corrupt { .. } => Exc::Corrupt,
        BlobError::IncompatibleFormat { .. } => Exc::IncompatibleFormat,
        BlobError::BlobTooLarge { .. } => Exc::TooLarge,
        BlobError::EmptyBlob => Exc::EmptyBlob,
        BlobError::Closed { .. } => Exc::Closed,
        BlobError::Expired { .. } => Exc::Expired,
        BlobError::ChannelKind { .. } => Exc::ChannelKind,
        BlobError::ChannelFull { .. } => Exc::ChannelFull,
        BlobError::ForeignOwner { .. } => Exc::ForeignOwner,
        BlobError::Reclaimed { .. } => Exc::Reclaimed,
        BlobError::InvalidHandle { .. } => Exc::InvalidHandle,
        BlobError::Os { .. } => Exc::SystemCall,
        BlobError::Inherited { .. } => Exc::Inherited,
        BlobError::ChannelMismatch { .. } => Exc::ChannelMismatch,
        // WrongMode cannot happen (this package opens shared stores only);
        // variants added to the library later land on the base class.
        _ => Exc::Blob,
    }
}

/// A library error as a Python exception; a failed system call carries its
/// errno (`SystemCallError.errno`).
pub(crate) fn from_blob(py: Python<'_>, e: &BlobError) -> PyErr {
    let kind = kind_of(e);
    let message = match e {
        // The library's message names its Rust constructor.
        BlobError::NotFound { namespace } => {
            format!("namespace \"{namespace}\" does not exist; create it first with Store.create")
        }
        BlobError::ChannelMismatch {
            channel,
            existing,
            requested,
        } => format!(
            "channel \"{channel}\" exists with {existing}, not the {requested} asked for; open it \
             without keywords to adopt what exists, or pick another name"
        ),
        _ => e.to_string(),
    };
    if kind == Exc::SystemCall {
        if let (Ok(types), Some(errno)) = (types(py), e.raw_os_error()) {
            return PyErr::from_type(types[kind as usize].bind(py).clone(), (errno, message));
        }
    }
    new(py, kind, message)
}
