"""The store in one process: appends of every buffer kind, zero-copy
resolves, handles, lifetimes of views and their exports, errors."""

import ctypes
import gc
import pickle
import random
import threading
import time

import numpy as np
import pytest

import stable_fragmented_buffer as sfb
from conftest import namespace_files


def c_bytes(obj: object) -> bytes:
    """The bytes of `obj` in C order, as the store must hold them."""
    if isinstance(obj, np.ndarray):
        return np.ascontiguousarray(obj).tobytes()
    return bytes(memoryview(obj))  # type: ignore[arg-type]


def test_append_takes_every_buffer_kind_and_resolves_its_bytes(ns: str) -> None:
    base = np.arange(4 * 5 * 6, dtype=np.int32).reshape(4, 5, 6)
    objs = [
        b"hello",
        bytearray(b"\x00\x01\x02" * 100),
        memoryview(b"abcdefgh")[::2],  # a strided memoryview
        base,
        base.T,  # Fortran order
        base[::-1, 1:4, ::2],  # negative and step strides
        base[:, 0, :],
        np.float64(3.5),  # a zero-dimensional buffer
        np.broadcast_to(np.arange(3, dtype=np.uint16), (4, 3)),  # stride 0
        np.arange(300_000, dtype=np.float64)[::3],  # 800 KB, strided: GIL released
    ]
    with sfb.Store.create(ns, chunk_size=1 << 20) as store:
        for obj in objs:
            handle = store.append(obj)
            expected = c_bytes(obj)
            assert handle.size == len(expected)
            assert store.resolve_bytes(handle) == expected
            view = store.resolve(handle)
            assert view is not None and len(view) == len(expected)
            assert bytes(view) == expected
            view.release()


def test_strings_and_objects_without_the_buffer_protocol_are_refused(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 16) as store:
        for obj in ["text", 12, None, [1, 2]]:
            with pytest.raises(TypeError):
                store.append(obj)  # type: ignore[arg-type]


def test_resolve_is_zero_copy_and_read_only(ns: str) -> None:
    arr = np.arange(1 << 16, dtype=np.float64)
    with sfb.Store.create(ns, chunk_size=1 << 20) as store:
        handle = store.append(arr)
        v1, v2 = store.resolve(handle), store.resolve(handle)
        assert v1 is not None and v2 is not None
        a1 = np.frombuffer(v1, dtype=np.float64)
        a2 = np.frombuffer(v2, dtype=np.float64)
        # Two views of one blob are the same shared memory: nothing copied.
        assert a1.ctypes.data == a2.ctypes.data
        assert np.shares_memory(a1, a2)
        assert np.array_equal(a1, arr)
        m = memoryview(v1)
        assert m.readonly and m.nbytes == arr.nbytes and m.format == "B"
        assert not a1.flags.writeable
        with pytest.raises(ValueError):
            a1[0] = 1.0
        with pytest.raises((BufferError, TypeError)):
            ctypes.c_char.from_buffer(v1)  # asks for a writable buffer
        assert v1.exports == 2  # a1 and m
        del a1, m
        assert v1.exports == 0
        del a2


def test_empty_blob_is_refused(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 16) as store:
        with pytest.raises(sfb.EmptyBlobError) as e:
            store.append(b"")
        assert isinstance(e.value, ValueError) and isinstance(e.value, sfb.BlobError)


def test_acknowledge_counts_once(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 16) as store:
        handle = store.append(b"x" * 100)
        assert store.acknowledge(handle) is True
        assert store.acknowledge(handle) is False


def test_handle_bytes_pickle_equality_hash(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 16) as store:
        h1 = store.append(b"one")
        h2 = store.append(b"two")
        raw = bytes(h1)
        assert len(raw) == 24
        assert sfb.Handle.from_bytes(raw) == h1
        assert sfb.Handle(raw) == h1
        assert pickle.loads(pickle.dumps(h1)) == h1
        assert h1 != h2 and hash(h1) == hash(sfb.Handle.from_bytes(raw))
        assert {h1, h2, sfb.Handle.from_bytes(raw)} == {h1, h2}
        assert store.resolve_bytes(pickle.loads(pickle.dumps(h2))) == b"two"
        for wrong in [b"", raw[:23], raw + b"\x00", bytes(48)]:
            with pytest.raises(sfb.InvalidHandleError) as e:
                sfb.Handle.from_bytes(wrong)
            assert isinstance(e.value, ValueError)
        with pytest.raises(TypeError):
            sfb.Handle.from_bytes("x" * 24)  # type: ignore[arg-type]


def test_forged_handles_resolve_to_nothing_or_to_the_right_bytes(ns: str) -> None:
    rng = random.Random(15)
    with sfb.Store.create(ns, chunk_size=1 << 16, max_chunks=4) as store:
        blobs = {}
        for i in range(50):
            data = bytes([i]) * rng.randint(1, 3000)
            blobs[store.append(data)] = data
        forged = [sfb.Handle.from_bytes(rng.randbytes(24)) for _ in range(3000)]
        forged += [sfb.Handle.from_bytes(bytes(24)), sfb.Handle.from_bytes(b"\xff" * 24)]
        # Real handles with one byte changed (any field).
        for handle in list(blobs)[:20]:
            raw = bytearray(bytes(handle))
            for i in range(24):
                mutated = bytearray(raw)
                mutated[i] ^= 1 << rng.randrange(8)
                forged.append(sfb.Handle.from_bytes(bytes(mutated)))
        for handle in forged:
            got = store.resolve_bytes(handle)
            view = store.resolve(handle)
            if got is not None or view is not None:
                # Only a change the store does not check (the append
                # time) may still resolve, and then to the same blob.
                assert got in blobs.values() and view is not None and bytes(view) == got
                view.release()
            assert isinstance(store.acknowledge(handle), bool)
        for handle, data in blobs.items():
            assert store.resolve_bytes(handle) == data


def test_numpy_array_outlives_its_view_and_the_store(ns: str) -> None:
    arr = np.random.default_rng(1).integers(0, 1 << 30, size=(64, 128), dtype=np.int64)
    store = sfb.Store.create(ns, chunk_size=1 << 20)
    handle = store.append(arr)
    view = store.resolve(handle)
    assert view is not None
    kept = np.frombuffer(view, dtype=np.int64).reshape(64, 128)
    del view
    store.close()
    del store
    gc.collect()
    # The creator is gone: so are the namespace's files ...
    assert namespace_files(ns) == []
    # ... and the array still reads the bytes it was made from.
    assert np.array_equal(kept, arr)


def test_an_exported_view_stays_pinned_while_its_chunk_is_reused(ns: str) -> None:
    """A view released while a numpy array still reads it would unpin the
    chunk, and reclamation would recycle it under the array."""
    with sfb.Store.create(ns, chunk_size=1 << 16, max_chunks=3, decay_ms=0) as store:
        first = np.full(8000, 0xAB, dtype=np.uint8)
        handle = store.append(first)
        view = store.resolve(handle)
        assert view is not None
        arr = np.frombuffer(view, dtype=np.uint8)
        with pytest.raises(BufferError):
            view.release()
        with pytest.raises(BufferError):
            with view:
                pass
        assert not view.released
        store.acknowledge(handle)
        # Fill, acknowledge and reclaim chunk after chunk: with three chunks
        # at most, unpinned chunks are recycled over and over.
        other = np.full(8000, 0x11, dtype=np.uint8)
        for _ in range(200):
            h = store.append(other)
            store.acknowledge(h)
            store.reclaim()
        assert np.all(arr == 0xAB)
        del arr
        view.release()
        assert view.released
        with pytest.raises(BufferError):
            memoryview(view)


def test_release_with_live_exports_raises_buffer_error(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 16) as store:
        handle = store.append(b"payload" * 10)
        view = store.resolve(handle)
        assert view is not None
        m1 = memoryview(view)
        m2 = memoryview(view)[2:5]
        assert view.exports == 2
        with pytest.raises(BufferError, match="2 exported"):
            view.release()
        m1.release()
        with pytest.raises(BufferError):
            view.release()
        m2.release()
        assert view.exports == 0
        view.release()
        view.release()  # twice: nothing
        with pytest.raises(BufferError):
            memoryview(view)
        with pytest.raises(BufferError):
            view.tobytes()
        # Context manager: released on exit.
        with store.resolve(handle) as v:  # type: ignore[union-attr]
            assert v.tobytes() == b"payload" * 10
        assert v.released


def test_errors_have_their_classes(ns: str) -> None:
    assert issubclass(sfb.ChannelTimeout, TimeoutError)
    for cls in [
        sfb.NotFoundError,
        sfb.AlreadyExistsError,
        sfb.InUseError,
        sfb.StoreFullError,
        sfb.NoSpaceError,
        sfb.CorruptError,
        sfb.InvalidNameError,
        sfb.TooLargeError,
        sfb.ClosedError,
        sfb.DisconnectedError,
        sfb.ChannelTimeout,
    ]:
        assert issubclass(cls, sfb.BlobError)
    with pytest.raises(sfb.NotFoundError):
        sfb.Store.attach(ns)
    with pytest.raises(sfb.InvalidNameError):
        sfb.Store.create("../etc")
    with pytest.raises(sfb.InvalidNameError):
        sfb.cleanup_namespace("a/b")
    with sfb.Store.create(ns, chunk_size=1 << 16, max_chunks=2) as store:
        with pytest.raises(sfb.AlreadyExistsError):
            sfb.Store.create(ns)
        with pytest.raises(sfb.InUseError):
            sfb.cleanup_namespace(ns)
        with pytest.raises(sfb.InvalidNameError):
            store.sender("no/slash")
        with pytest.raises(sfb.StoreFullError):
            for _ in range(100):
                store.append(bytes(30_000))
        # 4 GiB + 1 bytes of stride-0 array: refused before any copy.
        huge = np.broadcast_to(np.zeros(1, dtype=np.uint8), ((1 << 32) + 1,))
        with pytest.raises(sfb.TooLargeError):
            store.append(huge)
        store.publisher("kind")
        with pytest.raises(sfb.ChannelKindError):
            store.sender("kind")
        with pytest.raises(sfb.InvalidConfigError):
            sfb.Store.create(ns + "-x", chunk_size=10)
    with pytest.raises(sfb.ClosedError):
        store.append(b"x")
    assert store.closed


def test_attach_sees_what_the_creator_appended_and_cleanup_removes_a_dead_namespace(ns: str) -> None:
    creator = sfb.Store.create(ns, chunk_size=1 << 16)
    handle = creator.append(b"shared")
    other = sfb.Store.attach(ns)
    assert not other.is_creator and creator.is_creator
    assert other.resolve_bytes(handle) == b"shared"
    assert other.acknowledge(handle)
    assert not creator.acknowledge(handle)
    other.close()
    assert sfb.cleanup_namespace(ns, force=True) > 0
    assert namespace_files(ns) == []
    creator.close()
    assert sfb.cleanup_namespace(ns) == 0


def test_the_gil_is_released_during_large_appends(ns: str) -> None:
    """While a thread copies 64 MiB into the store, other Python threads
    run: a counter thread stamps the time of each of its rounds, and no gap
    between stamps may span most of the copy (holding the GIL, the copy
    would stop the counter for all of it)."""
    big = np.ones(128 << 20, dtype=np.uint8)
    stamps: list[float] = []
    done = threading.Event()

    def count() -> None:
        while not done.is_set():
            stamps.append(time.perf_counter())

    with sfb.Store.create(ns, chunk_size=128 << 20) as store:
        store.append(big[: 1 << 20])  # the chunk exists: the next append only copies
        counter = threading.Thread(target=count)
        counter.start()
        time.sleep(0.05)
        # One byte in two: the strided path, byte by byte, 64 MiB.
        t0 = time.perf_counter()
        store.append(big[::2])
        t1 = time.perf_counter()
        done.set()
        counter.join()
    assert t1 - t0 > 0.02, "the copy was too quick to tell"
    marks = [t0] + [s for s in stamps if t0 < s < t1] + [t1]
    longest = max(b - a for a, b in zip(marks, marks[1:]))
    assert longest < 0.5 * (t1 - t0), (longest, t1 - t0)


def test_store_survives_its_python_object_while_endpoints_are_open(ns: str) -> None:
    tx = sfb.Store.create(ns, chunk_size=1 << 16).sender("jobs")
    gc.collect()
    assert namespace_files(ns)  # the sender keeps the namespace alive
    other = sfb.Store.attach(ns)
    rx = other.receiver("jobs")
    tx.send(b"still here")
    with rx.recv(timeout=5) as msg:
        assert msg.tobytes() == b"still here"
    tx.close()
    rx.close()
    other.close()
    gc.collect()
    assert namespace_files(ns) == []
