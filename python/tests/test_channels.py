"""Channels in one process: sizes inline and through the store, numpy
arrays, messages as context managers, timeouts, disconnection, the GIL."""

import threading
import time

import numpy as np
import pytest

import stable_fragmented_buffer as sfb


def test_every_size_round_trips_inline_and_through_the_store(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 20) as store:
        assert store.sender("d").inline_capacity == 1 << 20  # the default ring
        rx = store.receiver("q", max_message=4096)
        tx = store.sender("q", max_message=4096)
        cap = tx.inline_capacity
        assert cap == 4096
        sizes = [0, 1, cap - 1, cap, cap + 1, 100_000, 3 << 20]
        for size in sizes:
            data = bytes((i * 31 + size) % 251 for i in range(min(size, 1000))) * (size // 1000 + 1)
            data = data[:size]
            tx.send(data)
            with rx.recv(timeout=5) as msg:
                assert len(msg) == size
                assert msg.is_overflow == (size > cap)
                assert bytes(msg) == data
        tx.close()
        rx.close()


def test_numpy_arrays_contiguous_or_strided_travel_exactly(ns: str) -> None:
    rng = np.random.default_rng(7)
    base = rng.standard_normal((512, 300))
    arrays = [
        base[:2, :3],  # inline, contiguous rows? no: a strided block
        base[:3].copy(),  # inline, contiguous
        base,  # 1.2 MB through the store
        base.T,  # strided, through a loan
        base[::-1, ::7],  # strided, negative strides
        np.arange(10, dtype=np.int8)[::3],  # strided, inline
    ]
    with sfb.Store.create(ns, chunk_size=4 << 20) as store:
        sub = store.subscriber("arrays")
        with store.publisher("arrays") as pub:
            for arr in arrays:
                pub.send(arr)
        for arr in arrays:
            msg = sub.recv(timeout=5)
            got = np.frombuffer(msg, dtype=arr.dtype).reshape(arr.shape)
            assert np.array_equal(got, arr)
            # Zero-copy on receipt: the array reads the message's memory.
            assert np.shares_memory(got, np.frombuffer(msg, dtype=np.uint8))
            del got
            msg.release()
        with pytest.raises(sfb.DisconnectedError):
            sub.recv(timeout=5)


def test_leaving_the_with_block_releases_the_message(ns: str) -> None:
    """A work-queue ring of two slots and a receiver that may hold one
    message (max_held=1): a message not released keeps its place in the
    budget (and a slot of its own, not the ring's), a released one gives it
    back."""
    with sfb.Store.create(ns, chunk_size=1 << 16) as store:
        rx = store.receiver("q", max_message=64, in_flight=2, max_held=1)
        tx = store.sender("q")
        assert tx.try_send(b"a") and tx.try_send(b"b")
        assert not tx.try_send(b"c")  # two slots, both taken
        with rx.recv(timeout=5) as m:
            assert m.tobytes() == b"a"
            assert rx.held == 1
            assert tx.try_send(b"c")  # the held message is out of the ring
            with pytest.raises(sfb.TooManyHeldError):
                rx.try_recv()  # still held
        assert m.released
        assert rx.held == 0
        held = rx.recv(timeout=5)
        assert held.tobytes() == b"b"
        arr = np.frombuffer(held, dtype=np.uint8)
        with pytest.raises(BufferError):
            held.release()
        with pytest.raises(BufferError):
            with held:
                pass
        with pytest.raises(sfb.TooManyHeldError):
            rx.recv(timeout=5)
        assert rx.held == 1
        del arr
        held.release()
        assert rx.held == 0
        assert rx.recv(timeout=5).tobytes() == b"c"
        assert rx.held == 0  # released with its last reference
        with pytest.raises(BufferError):
            memoryview(held)


def test_recv_times_out_with_a_timeout_error(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 16) as store:
        rx = store.subscriber("s")
        pub = store.publisher("s")  # a live producer: waiting, not disconnected
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as e:
            rx.recv(timeout=0.2)
        elapsed = time.monotonic() - t0
        assert isinstance(e.value, sfb.ChannelTimeout)
        assert 0.19 <= elapsed < 2.0
        with pytest.raises(sfb.ChannelTimeout):
            rx.recv(timeout=0)
        assert rx.try_recv() is None
        with pytest.raises(ValueError):
            rx.recv(timeout=-1)
        pub.close()


def test_disconnection_ends_iteration_and_raises_on_recv(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 16) as store:
        rx = store.receiver("q")
        tx = store.sender("q")
        for i in range(5):
            tx.send(bytes([i]) * (i * 3000))
        tx.close()
        got = [m.tobytes() for m in rx]
        assert got == [bytes([i]) * (i * 3000) for i in range(5)]
        with pytest.raises(sfb.DisconnectedError):
            rx.recv(timeout=5)
        with pytest.raises(sfb.DisconnectedError):
            rx.try_recv()
        # A new producer reconnects the channel.
        tx2 = store.sender("q")
        tx2.send(b"again")
        assert rx.recv(timeout=5).tobytes() == b"again"
        tx2.close()
        rx.close()
        with pytest.raises(sfb.ClosedError):
            rx.recv()
        with pytest.raises(sfb.ClosedError):
            tx.send(b"x")


def test_a_blocked_recv_releases_the_gil(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 16) as store:
        rx = store.receiver("q")
        tx = store.sender("q")
        result: list[bytes] = []

        def waiter() -> None:
            result.append(rx.recv(timeout=10).tobytes())

        thread = threading.Thread(target=waiter)
        thread.start()
        # This thread keeps running Python code while the other is blocked.
        ticks = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.5:
            ticks += 1
        assert ticks > 10_000, ticks
        assert thread.is_alive() and not result
        tx.send(b"wake up")
        thread.join(5)
        assert result == [b"wake up"]
        tx.close()
        rx.close()


def test_send_waiting_for_room_lets_other_threads_run(ns: str) -> None:
    """A full ring: send waits (GIL released) until a consumer frees a slot."""
    with sfb.Store.create(ns, chunk_size=1 << 16) as store:
        rx = store.receiver("q", max_message=64, in_flight=2)
        tx = store.sender("q")
        tx.send(b"1")
        tx.send(b"2")
        done = threading.Event()

        def third() -> None:
            tx.send(b"3")
            done.set()

        thread = threading.Thread(target=third)
        thread.start()
        time.sleep(0.2)
        assert not done.is_set()
        assert rx.recv(timeout=5).tobytes() == b"1"  # dropped at once: frees a slot
        assert done.wait(5)
        thread.join()
        assert [rx.recv(timeout=5).tobytes() for _ in range(2)] == [b"2", b"3"]
        tx.close()
        rx.close()


def test_very_large_messages_and_appends_copied_in_parallel_arrive_exactly(ns: str) -> None:
    """20 MiB: the copy is split between threads; every byte must land in
    its place (the content differs at every offset)."""
    big = (np.arange(20 << 20, dtype=np.uint64) * 0x9E3779B97F4A7C15 >> 56).astype(np.uint8)
    with sfb.Store.create(ns, chunk_size=64 << 20) as store:
        handle = store.append(big)
        view = store.resolve(handle)
        assert view is not None
        assert np.array_equal(np.frombuffer(view, dtype=np.uint8), big)
        view.release()
        rx = store.receiver("big")
        with store.sender("big") as tx:
            tx.send(big)
        with rx.recv(timeout=10) as msg:
            assert msg.is_overflow
            got = np.frombuffer(msg, dtype=np.uint8)
            assert np.array_equal(got, big)
            del got
        rx.close()
