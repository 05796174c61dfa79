"""Zero-copy byte blobs and channels between Python processes, in POSIX
shared memory (/dev/shm)."""

from types import TracebackType
from typing import Any, Final, Literal, Protocol, TypeAlias, final

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
    """No message arrived before the timeout."""

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
    """The producing end of a broadcast channel."""

    def send(self, obj: _BufferLike) -> None: ...
    def try_send(self, obj: _BufferLike) -> bool: ...
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
    """The producing end of a work queue."""

    def send(self, obj: _BufferLike) -> None: ...
    def try_send(self, obj: _BufferLike) -> bool: ...
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
    """A namespace in POSIX shared memory: blobs and channels."""

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
