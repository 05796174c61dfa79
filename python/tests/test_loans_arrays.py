"""Loans (a message written in place), send_array / Message.array() (dtype
and shape carried, viewed zero-copy on receipt), and the timeouts of
sends and loans: in one process, and across real processes."""

import multiprocessing as mp
import threading
import time
from typing import Any

import numpy as np
import pytest

import stable_fragmented_buffer as sfb
import workers
from test_processes import join_all

ctx = mp.get_context("spawn")


def endpoints(store: sfb.Store, kind: str, **kwargs: Any) -> tuple[Any, Any]:
    """(consumer, producer) of channel "c" of `kind`; the consumer first, so
    that a broadcast one receives everything."""
    if kind == "broadcast":
        return store.subscriber("c", **kwargs), store.publisher("c")
    return store.receiver("c", **kwargs), store.sender("c")


# ---- loans ----


@pytest.mark.parametrize("kind", ["broadcast", "queue"])
def test_a_loan_filled_through_numpy_is_published_in_place(ns: str, kind: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 20) as store:
        rx, tx = endpoints(store, kind, max_message=4096)
        cap = tx.inline_capacity
        for n in [0, 8, cap - cap % 8, cap + 8, 200_000]:
            expected = np.arange(n // 8, dtype=np.float64) * 1.5 + n
            with tx.loan(n) as loan:
                assert len(loan) == n and loan.is_inline == (n <= cap)
                assert not loan.closed and not loan.sent
                arr = np.frombuffer(loan, dtype=np.float64)
                assert arr.flags.writeable and loan.exports == 1
                arr[:] = expected
                del arr
            assert loan.sent and loan.closed and loan.exports == 0
            with rx.recv(timeout=5) as msg:
                assert len(msg) == n and msg.is_overflow == (n > cap)
                got = np.frombuffer(msg, dtype=np.float64)
                assert np.array_equal(got, expected)
                del got
        # send() without a with block; a memoryview writes in place too.
        loan = tx.loan(5)
        memoryview(loan)[:] = b"hello"
        loan.send()
        assert "sent" in repr(loan)
        with rx.recv(timeout=5) as msg:
            assert msg.tobytes() == b"hello"
        assert rx.try_recv() is None
        tx.close()
        rx.close()


def test_a_loan_is_discarded_by_close_an_exception_or_being_dropped(ns: str) -> None:
    """A ring of two entries: far more loans discarded than it has slots,
    and the store's room, are all given back; none is delivered."""
    with sfb.Store.create(ns, chunk_size=1 << 16, max_chunks=2) as store:
        rx = store.receiver("q", max_message=64, in_flight=2)
        tx = store.sender("q")
        for size in [16, 3000]:  # a ring slot, then store space
            for _ in range(50):
                with pytest.raises(RuntimeError):
                    with tx.loan(size) as loan:
                        memoryview(loan)[:] = b"x" * size
                        raise RuntimeError("abandoned")
                assert loan.closed and not loan.sent
                closed = tx.loan(size)
                closed.close()
                closed.close()  # a second close does nothing
                assert closed.closed and not closed.sent
                with tx.loan(size) as inside:
                    inside.close()  # closed in the block: leaving it sends nothing
                tx.loan(size)  # dropped unsent
        assert rx.try_recv() is None
        # Both pool slots an endpoint may loan are free again.
        a, b = tx.try_loan(8), tx.try_loan(8)
        assert a is not None and b is not None and a.is_inline and b.is_inline
        a.close()
        b.close()
        assert tx.try_send(b"1") and tx.try_send(b"2")
        assert [rx.recv(timeout=5).tobytes() for _ in range(2)] == [b"1", b"2"]
        tx.close()
        rx.close()


def test_a_loan_is_not_sent_while_exported_nor_used_after_it_ended(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 16) as store:
        rx = store.receiver("q", max_message=64, in_flight=2)
        tx = store.sender("q")
        loan = tx.loan(8)
        view = memoryview(loan)
        with pytest.raises(BufferError, match="exported"):
            loan.send()
        assert not loan.closed  # still open: release the export, then send
        view[:] = b"12345678"
        view.release()
        loan.send()
        with pytest.raises(sfb.ClosedError, match="sent"):
            loan.send()
        with pytest.raises(BufferError, match="sent"):
            memoryview(loan)
        assert rx.recv(timeout=5).tobytes() == b"12345678"

        # Leaving the with block with an export alive: BufferError, and the
        # loan is discarded; the export still writes into the loan's own
        # memory (given back only once the export is released).
        with pytest.raises(BufferError, match="with block"):
            with tx.loan(8) as loan:
                arr = np.frombuffer(loan, dtype=np.uint8)
        assert loan.closed and not loan.sent and loan.exports == 1
        arr[:] = 7
        other = tx.loan(8)  # the other pool slot
        memoryview(other)[:] = b"abcdefgh"
        del arr
        assert loan.exports == 0
        with pytest.raises(sfb.ClosedError, match="discarded"):
            loan.send()
        other.send()
        assert rx.recv(timeout=5).tobytes() == b"abcdefgh"

        # Closed while exported: the same.
        loan = tx.loan(8)
        view = memoryview(loan)
        loan.close()
        view[:] = b"nowhere!"
        view.release()
        assert rx.try_recv() is None
        a, b = tx.loan(8), tx.loan(8)
        assert a.is_inline and b.is_inline  # both slots were given back
        a.close()
        b.close()
        tx.close()
        rx.close()


def test_loans_and_sends_time_out_with_a_timeout_error(ns: str) -> None:
    """A work queue of two entries that its receiver does not take from,
    and a store of two chunks."""
    with sfb.Store.create(ns, chunk_size=1 << 16, max_chunks=2) as store:
        rx = store.receiver("q", max_message=64, in_flight=2)
        tx = store.sender("q")
        assert tx.try_send(b"1") and tx.try_send(b"2")
        assert not tx.try_send(b"3") and not tx.try_send(bytes(30000))
        attempts: list[tuple[str, Any]] = [
            ("send_timeout inline", lambda: tx.send_timeout(b"3", 0.2)),
            ("send_timeout through the store", lambda: tx.send_timeout(bytes(30000), 0.2)),
            ("send_array", lambda: tx.send_array(np.zeros(4), timeout=0.2)),
            ("Loan.send", lambda: tx.loan(8).send(timeout=0.2)),
        ]
        for what, attempt in attempts:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError) as e:
                attempt()
            elapsed = time.monotonic() - t0
            assert isinstance(e.value, sfb.ChannelTimeout), what
            assert "full: the ring" in str(e.value), (what, str(e.value))
            assert 0.19 <= elapsed < 2.0, (what, elapsed)
        # A loan that timed out sending is discarded.
        loan = tx.loan(8)
        with pytest.raises(sfb.ChannelTimeout, match="discarded"):
            loan.send(timeout=0)
        assert loan.closed and not loan.sent
        # The store full of loans: a loan waits, then times out.
        held = []
        while (big := tx.try_loan(30000)) is not None:
            held.append(big)
        assert 2 <= len(held) <= 4
        t0 = time.monotonic()
        with pytest.raises(sfb.ChannelTimeout, match="full: the store"):
            tx.loan(30000, timeout=0.2)
        assert 0.19 <= time.monotonic() - t0 < 2.0
        for big in held:
            big.close()
        with pytest.raises(ValueError):
            tx.send_timeout(b"x", -1)
        with pytest.raises(ValueError):
            tx.loan(8, timeout=float("nan"))
        # Nothing of the above was delivered.
        assert [rx.recv(timeout=5).tobytes() for _ in range(2)] == [b"1", b"2"]
        assert rx.try_recv() is None

        # Room made within the timeout: the send goes through.
        assert tx.try_send(b"1") and tx.try_send(b"2")
        taker = threading.Timer(0.1, lambda: rx.recv(timeout=5).release())
        taker.start()
        t0 = time.monotonic()
        tx.send_timeout(b"3", 5.0)
        assert 0.05 < time.monotonic() - t0 < 4.0
        taker.join()
        with tx.loan(8, timeout=5.0) as loan:
            memoryview(loan)[:] = b"loaned!!"
            taker = threading.Timer(0.1, lambda: rx.recv(timeout=5).release())
            taker.start()
        taker.join()  # the loan was sent once the taker made room
        assert [rx.recv(timeout=5).tobytes() for _ in range(2)] == [b"3", b"loaned!!"]
        tx.close()
        rx.close()


def test_a_loan_filled_by_numpy_in_another_process_arrives(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=4 << 20) as store:
        rx = store.receiver("loans")
        child = ctx.Process(target=workers.fill_loans, args=(ns, "loans", "queue"))
        child.start()
        got = []
        for msg in rx:
            got.append(np.frombuffer(msg, dtype=np.float64).copy())
            msg.release()
        join_all([child])
        assert len(got) == len(workers.LOAN_COUNTS)  # the abandoned ones never arrived
        for i, n in enumerate(workers.LOAN_COUNTS):
            assert np.array_equal(got[i], workers.loan_payload(i, n)), i
        rx.close()


# ---- arrays ----


@pytest.mark.parametrize("kind", ["broadcast", "queue"])
def test_send_array_carries_dtype_and_shape_and_array_views_the_message(ns: str, kind: str) -> None:
    with sfb.Store.create(ns, chunk_size=4 << 20) as store:
        rx, tx = endpoints(store, kind, max_message=4096)
        paths = set()
        for i in range(len(workers.TYPED_SPECS)):
            sent = workers.make_typed(i)
            tx.send_array(sent)
            msg = rx.recv(timeout=5)
            paths.add(msg.is_overflow)
            got = msg.array()
            assert workers.check_typed(i, got, msg) == [], (i, workers.TYPED_SPECS[i])
            # The array keeps the message: it cannot be released under it.
            assert msg.exports == 1
            with pytest.raises(BufferError):
                msg.release()
            again = msg.array()  # as many views as wanted
            assert msg.exports == 2 and again.tobytes() == got.tobytes()
            del got, again
            msg.release()
            with pytest.raises(BufferError):
                msg.array()  # released
        assert paths == {False, True}  # inline and through the store
        # An array outlives its message object.
        tx.send_array(workers.make_typed(1))
        kept = rx.recv(timeout=5).array()
        assert np.array_equal(kept, workers.make_typed(1))
        del kept
        tx.close()
        rx.close()


def test_array_of_other_messages_and_send_array_of_other_objects_are_refused(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 20) as store:
        rx, tx = endpoints(store, "queue")
        tx.send_array(np.arange(6, dtype=np.int32).reshape(2, 3))
        with rx.recv(timeout=5) as msg:
            good = msg.tobytes()
        assert len(good) == 64 + 24
        bad_dtype = bytearray(good)
        bad_dtype[16:32] = b"<M8[ns]".ljust(16, b"\0")
        too_big = bytearray(good)
        too_big[32] = 3  # shape (3, 3): more than the bytes
        version = bytearray(good)
        version[7] = 2
        for data in [b"", b"abc", bytes(200), good[:-1], good + b"\0", bytes(bad_dtype), bytes(too_big), bytes(version)]:
            tx.send(data)
            with rx.recv(timeout=5) as msg:
                with pytest.raises(sfb.NotAnArrayError) as e:
                    msg.array()
                assert isinstance(e.value, ValueError)
        with pytest.raises(sfb.NotAnArrayError, match="not sent by send_array"):
            tx.send(b"plain bytes")
            rx.recv(timeout=5).array()
        refused: list[Any] = [
            np.array(["text"]),
            np.array([object()]),
            np.array(["2024-01-01"], dtype="datetime64[ns]"),
            np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),
            np.zeros(3, dtype=np.longdouble),
        ]
        for arr in refused:
            with pytest.raises(TypeError, match="send_array carries"):
                tx.send_array(arr)
        for obj in [b"bytes", bytearray(8), [1, 2, 3], memoryview(b"abc")]:
            with pytest.raises(TypeError, match="numpy array"):
                tx.send_array(obj)
        assert rx.try_recv() is None  # nothing refused was sent
        tx.close()
        rx.close()


def test_arrays_sent_with_send_array_cross_processes_both_ways(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=4 << 20) as store:
        # Parent -> child, on a ring of 4 KiB slots (made here first; the
        # child's plain opener adopts it), so arrays go both ways: inline
        # and through the store.
        tx = store.sender("down", max_message=4096)
        ready = ctx.Event()
        results = ctx.Queue()
        child = ctx.Process(target=workers.receive_typed_arrays, args=(ns, "down", ready, results))
        child.start()
        assert ready.wait(60)
        with tx:
            for i in range(len(workers.TYPED_SPECS)):
                tx.send_array(workers.make_typed(i))
        report = results.get(timeout=60)
        join_all([child])
        assert [(i, wrong) for i, wrong, _ in report] == [(i, []) for i in range(len(workers.TYPED_SPECS))]
        assert {overflow for _, _, overflow in report} == {False, True}

        # Child -> parent.
        rx = store.receiver("up")
        child = ctx.Process(target=workers.send_typed_arrays, args=(ns, "up"))
        child.start()
        count = 0
        for i, msg in enumerate(rx):
            got = msg.array()
            assert workers.check_typed(i, got, msg) == [], i
            count += 1
            del got
            msg.release()
        join_all([child])
        assert count == len(workers.TYPED_SPECS)
        rx.close()
