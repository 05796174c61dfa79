"""Zero-copy byte blobs and channels between Python processes, in POSIX
shared memory (/dev/shm)."""

import asyncio
from types import TracebackType
from typing import Any, Final, Literal, Protocol, TypeAlias, final

import numpy.typing as npt
from typing_extensions import Buffer, Self

class _ArrayInterface(Protocol):
    # numpy arrays: their stubs declare the buffer protocol (__buffer__)
    # for Python 3.12 and later only.
    @property
    def __array_interface__(self) -> dict[str, Any]: ...

_BufferLike: TypeAlias = Buffer | _ArrayInterface
# Channel policies (keyword arguments of the channel openers).
_Overflow: TypeAlias = Literal["block", "drop-oldest"]
_Delivery: TypeAlias = Literal["at-most-once", "at-least-once"]

__version__: Final[str]
DEFAULT_CHUNK_SIZE: Final[int]

class BlobError(Exception):
    """Base class of every error of this package."""

class NotFoundError(BlobError):
    """No such namespace: create it first with Store.create."""

class AlreadyExistsError(BlobError):
    """The namespace exists and its creator is alive."""

class InUseError(BlobError):
    """Cleanup refused: the namespace's creator is alive."""

class StoreFullError(BlobError):
    """max_chunks reached (or the chunk registry is full)."""

class NoSpaceError(BlobError):
    """The shared-memory file system is full (ENOSPC)."""

class CorruptError(BlobError):
    """A file of the namespace has inconsistent content."""

class IncompatibleFormatError(CorruptError):
    """A file under the namespace's name is not of this format or version."""

class InvalidNameError(BlobError, ValueError):
    """A namespace or channel name breaks the naming rules."""

class InvalidConfigError(BlobError, ValueError):
    """A configuration value is out of range."""

class TooLargeError(BlobError, ValueError):
    """The blob is larger than the largest storable blob."""

class EmptyBlobError(BlobError, ValueError):
    """Appending zero bytes to the store is refused."""

class ClosedError(BlobError):
    """The namespace was removed, or this object was closed."""

class InvalidHandleError(BlobError, ValueError):
    """Bytes that cannot be a handle (a handle is exactly 24 bytes)."""

class ReclaimedError(BlobError):
    """The blob's chunk was reclaimed."""

class ExpiredError(BlobError):
    """Data was held past the store's TTL and reclaimed."""

class ChannelKindError(BlobError):
    """The channel name is open as the other kind of channel."""

class ChannelFullError(BlobError):
    """The channel already has its maximum of producers or consumers."""

class ForeignOwnerError(BlobError):
    """A file under the namespace's name belongs to another user."""

class SystemCallError(BlobError, OSError):
    """A system call failed; errno holds its error number."""

class ChannelTimeout(BlobError, TimeoutError):
    """A timeout ran out: no message arrived (recv), or the channel had no
    room (send_timeout, send_array, loan, Loan.send; the message names what
    was full and who held it)."""

class DisconnectedError(BlobError):
    """No producer is alive and everything sent was received."""

class LaggedError(BlobError):
    """This subscriber fell a whole ring behind and jumped ahead; the next
    receive returns the next message (iteration passes over it)."""

    missed: int
    """How many messages it missed."""

class TooManyHeldError(BlobError):
    """This consumer holds max_held messages: release one to receive more."""

class InheritedError(BlobError):
    """A producer inherited through fork() was used in the child."""

class ChannelMismatchError(BlobError):
    """An opener given keywords found the channel existing with another
    geometry or policy: open it without keywords to adopt what exists."""

class NotAnArrayError(BlobError, ValueError):
    """Message.array() on a message that send_array did not send (no array
    header), or whose array header is inconsistent."""

@final
class Handle:
    """The 24 bytes that name a blob; picklable, hashable."""

    def __new__(cls, data: bytes) -> Self: ...
    @classmethod
    def from_bytes(cls, data: bytes) -> Handle: ...
    def __bytes__(self) -> bytes: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def chunk(self) -> int: ...
    @property
    def generation(self) -> int: ...
    @property
    def offset(self) -> int: ...

@final
class View:
    """A zero-copy, read-only view of one blob (buffer protocol)."""

    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...
    def release(self) -> None: ...
    @property
    def released(self) -> bool: ...
    @property
    def exports(self) -> int: ...
    def tobytes(self) -> bytes: ...
    def __len__(self) -> int: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class Message:
    """A received message (buffer protocol, zero-copy, read-only)."""

    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...
    def release(self) -> None: ...
    @property
    def released(self) -> bool: ...
    @property
    def exports(self) -> int: ...
    @property
    def sequence(self) -> int: ...
    @property
    def is_overflow(self) -> bool: ...
    @property
    def redelivered(self) -> int: ...
    def tobytes(self) -> bytes: ...
    def array(self) -> npt.NDArray[Any]:
        """The numpy array `send_array` sent, with its dtype and shape:
        zero-copy and read-only (`.copy()` it to write). It views the
        message's memory and keeps the message alive: `release()` raises
        `BufferError` while it lives, and the message is released once it
        and the message object are gone. Raises `NotAnArrayError` (a
        `ValueError`) if the message was not sent by `send_array`, and
        `BufferError` once the message was released. Imports numpy."""
    def __len__(self) -> int: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class Loan:
    """A message being written in place, in shared memory: a writable
    buffer of `len(loan)` bytes (buffer protocol: `memoryview(loan)[:] =
    ...`, `numpy.frombuffer(loan, dtype)[...] = ...` write straight into
    the message; its initial bytes are unspecified). `send()`, or leaving
    its `with` block without an exception, publishes it without a copy.
    `close()`, an exception in its `with` block, or dropping it unsent
    discards it and gives its space back.

    It cannot be sent while memoryviews or arrays made from it are alive
    (`BufferError`: they would write into a published message; delete them
    first). Leaving the `with` block with one alive discards the loan and
    raises `BufferError`; a loan closed while exported gives its space back
    once the last export is released. After it was sent or discarded,
    `send()` raises `ClosedError` and exporting it raises `BufferError`.
    A loan that ended holds nothing: not its endpoint, not its channel."""

    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...
    def send(self, timeout: float | None = None) -> None:
        """Publishes the loaned bytes, waiting at most `timeout` seconds
        (None: no limit) for room in the channel's ring; a timeout raises
        `ChannelTimeout` and discards the loan. The wait runs without the
        GIL and, unlike the other waits, cannot be interrupted by Ctrl-C."""
    def close(self) -> None:
        """Discards the loan unless it was sent; a second call does nothing."""
    @property
    def sent(self) -> bool: ...
    @property
    def closed(self) -> bool:
        """Whether it was sent or discarded."""
    @property
    def is_inline(self) -> bool:
        """Whether it is a ring slot (it fits `inline_capacity`) rather
        than store space."""
    @property
    def exports(self) -> int: ...
    def __len__(self) -> int: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class Publisher:
    """The producing end of a broadcast channel.

    Waits for room (a full ring or pool under overflow="block", a full
    store) release the GIL; `timeout=` bounds them, raising
    `ChannelTimeout`. Ctrl-C interrupts those of a message that fits
    `inline_capacity`, of a loan, and of a message larger than that whose
    bytes are not in one piece (strided) or that is at least 8 MiB, up to
    its copy into the store (they wait in slices of 50 ms). A larger
    message in one piece is sent by one library call (which streams its
    copy into the store, and would copy it again at each retry), and
    `Loan.send` is one library call too: Ctrl-C waits for those."""

    def send(self, obj: _BufferLike) -> None:
        """Sends the bytes of `obj` (anything with the buffer protocol,
        contiguous or not), waiting while the channel is full."""
    def try_send(self, obj: _BufferLike) -> bool:
        """Sends if the channel has room now; `False` if it is full."""
    def send_async(self, obj: _BufferLike) -> asyncio.Future[None]:
        """Sends the bytes of `obj` from a coroutine: awaitable, done when
        the message is sent. A message that fits now is sent at once;
        otherwise it is copied, and the wait for room leaves the event loop
        and the GIL free. Cancelled, it sent nothing."""
    def send_timeout(self, obj: _BufferLike, timeout: float) -> None:
        """Sends, waiting at most `timeout` seconds for room; then raises
        `ChannelTimeout` (nothing was sent)."""
    def send_array(self, arr: npt.NDArray[Any], timeout: float | None = None) -> None:
        """Sends numpy array `arr` with its dtype and shape, for
        `Message.array()` to view zero-copy on receipt; waits for room at
        most `timeout` seconds (None: no limit), then raises
        `ChannelTimeout`.

        Dtypes: bool, int8 to int64, uint8 to uint64, float16, float32,
        float64, complex64, complex128, in either byte order; others raise
        `TypeError` (send their bytes with `send`). An array that is not
        C-contiguous (a transpose, a slice with steps, Fortran order) is
        gathered into C order as it is copied into the message: one copy,
        as for any send.

        The message is a header, then the elements in C order:

            bytes 0-6    magic b"\x93SFBARR"
            byte  7      format version, 1
            byte  8      ndim, 0 to 64
            bytes 10-11  data offset (the header's length), uint16 little-endian:
                         32 + 8 * ndim rounded up to a multiple of 64
            bytes 16-31  numpy's dtype.str in ASCII, NUL-padded ("<f8", "|b1", ">c16")
            bytes 32-    the shape, ndim uint64 little-endian
            then zeros up to the data offset (bytes 9 and 12-15 are 0 too),
            then prod(shape) * itemsize bytes of elements, ending the message.

        A message starts 64-aligned in a ring slot and 8-aligned in the
        store, so the elements are aligned for every dtype carried (none
        needs more than 8)."""
    def loan(self, nbytes: int, timeout: float | None = None) -> Loan:
        """A `Loan` of `nbytes` to write in place: a ring slot if it fits
        `inline_capacity`, else store space. Waits for room at most
        `timeout` seconds (None: no limit), then raises `ChannelTimeout`."""
    def try_loan(self, nbytes: int) -> Loan | None:
        """A `Loan` if the channel has room now, else `None`."""
    @property
    def inline_capacity(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class Subscriber:
    """The consuming end of a broadcast channel."""

    def recv(self, timeout: float | None = None) -> Message: ...
    def try_recv(self) -> Message | None: ...
    def recv_async(self) -> asyncio.Future[Message]:
        """The next message, from a coroutine: awaitable; raises as
        `recv` does (without a timeout: wrap it in `asyncio.wait_for`). The
        wait leaves the event loop and the GIL free; cancelled, it received
        nothing."""
    def __aiter__(self) -> Self: ...
    def __anext__(self) -> asyncio.Future[Message]:
        """`async for`: the next message, passing over expired and lagged
        ones as iteration does; the end at disconnection."""
    @property
    def expired(self) -> int: ...
    @property
    def lagged(self) -> int: ...
    @property
    def held(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __iter__(self) -> Self: ...
    def __next__(self) -> Message: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class Sender:
    """The producing end of a work queue (its methods are the
    `Publisher`'s)."""

    def send(self, obj: _BufferLike) -> None: ...
    def try_send(self, obj: _BufferLike) -> bool: ...
    def send_async(self, obj: _BufferLike) -> asyncio.Future[None]:
        """Sends the bytes of `obj` from a coroutine: awaitable, done when
        the message is sent. A message that fits now is sent at once;
        otherwise it is copied, and the wait for room leaves the event loop
        and the GIL free. Cancelled, it sent nothing."""
    def send_timeout(self, obj: _BufferLike, timeout: float) -> None: ...
    def send_array(self, arr: npt.NDArray[Any], timeout: float | None = None) -> None: ...
    def loan(self, nbytes: int, timeout: float | None = None) -> Loan: ...
    def try_loan(self, nbytes: int) -> Loan | None: ...
    @property
    def inline_capacity(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class Receiver:
    """The consuming end of a work queue."""

    def recv(self, timeout: float | None = None) -> Message: ...
    def try_recv(self) -> Message | None: ...
    def recv_async(self) -> asyncio.Future[Message]:
        """The next message, from a coroutine: awaitable; raises as
        `recv` does (without a timeout: wrap it in `asyncio.wait_for`). The
        wait leaves the event loop and the GIL free; cancelled, it received
        nothing."""
    def __aiter__(self) -> Self: ...
    def __anext__(self) -> asyncio.Future[Message]:
        """`async for`: the next message, passing over expired and lagged
        ones as iteration does; the end at disconnection."""
    @property
    def expired(self) -> int: ...
    @property
    def lagged(self) -> int: ...
    @property
    def held(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __iter__(self) -> Self: ...
    def __next__(self) -> Message: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class Store:
    """A namespace in POSIX shared memory: blobs and channels.

    The namespace lives while its creator's Store or any endpoint (or loan)
    opened through it lives: leaving `with Store.create(...)` closes the
    Store object, and the files are removed when the last endpoint opened
    through it is closed too. Producers of other processes then raise
    `ClosedError` (so do their openers and `append`: nothing is written
    into removed files); consumers there receive what was sent before,
    then raise `DisconnectedError`.

    A Store pickles as its namespace's name: unpickling attaches to the
    namespace (`Store.attach`), so it can be passed to a process started
    with the spawn method; the copy is never the creator. Pickling a closed
    Store raises `ClosedError`."""

    @staticmethod
    def create(
        namespace: str,
        chunk_size: int = ...,
        max_chunks: int | None = None,
        decay_ms: int = 5000,
        ttl_ms: int = 30000,
    ) -> Store: ...
    @staticmethod
    def attach(namespace: str) -> Store: ...
    def append(self, obj: _BufferLike) -> Handle: ...
    def resolve(self, handle: Handle) -> View | None: ...
    def resolve_bytes(self, handle: Handle) -> bytes | None: ...
    def acknowledge(self, handle: Handle) -> bool: ...
    def reclaim(self) -> int: ...
    def publisher(
        self,
        name: str,
        *,
        max_message: int | None = None,
        in_flight: int | None = None,
        overflow: _Overflow | None = None,
        stall_timeout: float | None = None,
        delivery: _Delivery | None = None,
        max_held: int | None = None,
    ) -> Publisher: ...
    def subscriber(
        self,
        name: str,
        *,
        max_message: int | None = None,
        in_flight: int | None = None,
        overflow: _Overflow | None = None,
        stall_timeout: float | None = None,
        delivery: _Delivery | None = None,
        max_held: int | None = None,
    ) -> Subscriber: ...
    def sender(
        self,
        name: str,
        *,
        max_message: int | None = None,
        in_flight: int | None = None,
        overflow: _Overflow | None = None,
        stall_timeout: float | None = None,
        delivery: _Delivery | None = None,
        max_held: int | None = None,
    ) -> Sender: ...
    def receiver(
        self,
        name: str,
        *,
        max_message: int | None = None,
        in_flight: int | None = None,
        overflow: _Overflow | None = None,
        stall_timeout: float | None = None,
        delivery: _Delivery | None = None,
        max_held: int | None = None,
    ) -> Receiver: ...
    @property
    def namespace(self) -> str: ...
    @property
    def chunk_size(self) -> int: ...
    @property
    def max_chunks(self) -> int | None: ...
    @property
    def is_creator(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

def cleanup_namespace(namespace: str, force: bool = False) -> int: ...
