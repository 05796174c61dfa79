"""Real processes (multiprocessing, spawn start method): handles and
channel messages cross processes, numpy arrays round-trip exactly, N x M
delivery loses nothing, killed producers and consumers are survived."""

import hashlib
import multiprocessing as mp
import os
import signal
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest

import stable_fragmented_buffer as sfb
import workers

ctx = mp.get_context("spawn")


def join_all(procs: list[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join()
    assert not alive, f"{len(alive)} child process(es) hung"
    assert [p.exitcode for p in procs] == [0] * len(procs)


def test_handles_cross_processes_pickled(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 20) as store:
        arrays = [workers.make_array(i) for i in range(len(workers.ARRAY_SPECS))]
        handles = ctx.Queue()
        results = ctx.Queue()
        child = ctx.Process(target=workers.resolve_handles, args=(ns, handles, results))
        child.start()
        for i, arr in enumerate(arrays):
            handles.put((i, store.append(arr)))
        forged = sfb.Handle.from_bytes(os.urandom(24))
        handles.put((len(arrays), forged))
        handles.put(None)
        got = {}
        for _ in range(len(arrays) + 1):
            index, digest, acked = results.get(timeout=60)
            got[index] = (digest, acked)
        join_all([child])
        for i, arr in enumerate(arrays):
            expected = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
            assert got[i] == (expected, True), i
        assert got[len(arrays)] == (None, False)


def test_numpy_arrays_of_several_dtypes_and_shapes_cross_processes(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=4 << 20) as store:
        # Parent -> child, on a ring of 4 KiB slots (made here first; the
        # child's plain opener adopts it): arrays inline and through the store.
        tx = store.sender("down", max_message=4096)
        ready = ctx.Event()
        results = ctx.Queue()
        child = ctx.Process(target=workers.receive_arrays, args=(ns, "down", ready, results))
        child.start()
        assert ready.wait(60)
        with tx:
            for i in range(len(workers.ARRAY_SPECS)):
                tx.send(workers.make_array(i))
        report = results.get(timeout=60)
        join_all([child])
        assert [ok for _, ok, _ in report] == [True] * len(workers.ARRAY_SPECS)
        assert any(overflow for _, _, overflow in report)
        assert not all(overflow for _, _, overflow in report)

        # Child -> parent.
        rx = store.receiver("up")
        child = ctx.Process(target=workers.send_arrays, args=(ns, "up"))
        child.start()
        count = 0
        for i, msg in enumerate(rx):
            expected = workers.make_array(i)
            got = np.frombuffer(msg, dtype=expected.dtype).reshape(expected.shape)
            assert np.array_equal(got.view(np.uint8), np.ascontiguousarray(expected).view(np.uint8))
            count += 1
            del got
        assert count == len(workers.ARRAY_SPECS)
        join_all([child])
        rx.close()


@pytest.mark.parametrize("kind", ["queue", "broadcast"])
def test_n_producers_m_consumers_lose_nothing(ns: str, kind: str) -> None:
    producers, consumers, count = 2, 3 if kind == "queue" else 2, 400
    with sfb.Store.create(ns, chunk_size=1 << 20, max_chunks=16) as store:
        # The parent's own producer keeps the channel connected until every
        # producer process has started and finished. It creates the channel:
        # a lossless broadcast (overflow="block"; drop-oldest, the default,
        # lets a slow subscriber lag).
        keep = store.publisher("c", overflow="block") if kind == "broadcast" else store.sender("c")
        results = ctx.Queue()
        start = ctx.Event()
        readies = [ctx.Event() for _ in range(consumers)]
        cons = [
            ctx.Process(target=workers.consume, args=(ns, "c", kind, readies[i], results))
            for i in range(consumers)
        ]
        for p in cons:
            p.start()
        for r in readies:
            assert r.wait(60)
        prods = [
            ctx.Process(target=workers.produce, args=(ns, "c", kind, s, count, start))
            for s in range(producers)
        ]
        for p in prods:
            p.start()
        start.set()
        join_all(prods)
        keep.close()
        reports = [results.get(timeout=60) for _ in range(consumers)]
        join_all(cons)

    everything = {(s, q) for s in range(producers) for q in range(count)}
    assert all(bad == 0 for _, _, bad in reports)
    if kind == "queue":
        received = Counter(pair for _, got, _ in reports for pair in got)
        assert set(received) == everything
        assert max(received.values()) == 1  # exactly once
    else:
        for _, got, _ in reports:
            assert set(got) == everything and len(got) == len(everything)
            for s in range(producers):  # each publisher's order is kept
                seqs = [q for src, q in got if src == s]
                assert seqs == sorted(seqs)


def test_a_killed_producer_disconnects_the_channel(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 20) as store:
        rx = store.receiver("q")
        child = ctx.Process(target=workers.send_then_die, args=(ns, "q", 20))
        child.start()
        got = []
        t_last = None
        with pytest.raises(sfb.DisconnectedError):
            while True:
                msg = rx.recv(timeout=30)
                got.append(workers.parse(msg.tobytes()))
                assert msg.tobytes() == workers.payload(*got[-1])
                msg.release()
                t_last = time.monotonic()
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        assert got == [(0, q) for q in range(20)]
        assert t_last is not None and time.monotonic() - t_last < 5
        rx.close()


@pytest.mark.parametrize("kind", ["broadcast", "queue"])
def test_a_killed_consumer_holding_messages_does_not_stop_producers(ns: str, kind: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 20) as store:
        ready = ctx.Event()
        child = ctx.Process(target=workers.hold_then_wait, args=(ns, "c", kind, 3, ready))
        child.start()
        try:
            run_past_a_killed_consumer(store, kind, child, ready)
        finally:
            if child.is_alive():
                child.kill()
                child.join()


def run_past_a_killed_consumer(store: sfb.Store, kind: str, child: Any, ready: Any) -> None:
    assert ready.wait(60)
    # The child created the channel; a broadcast one with overflow="block",
    # where a consumer gates the producer until it is found dead.
    tx = store.publisher("c") if kind == "broadcast" else store.sender("c")
    for i in range(3):
        tx.send(bytes([i]) * 100)
    deadline = time.monotonic() + 30
    while ready.is_set():  # cleared once the child holds its three
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    child.join(10)
    # The queue needs a live receiver for what is sent after the kill.
    mine = store.receiver("c") if kind == "queue" else None
    # Several ringfuls (256 slots): a dead consumer must stop gating
    # the producer.
    total = 1000
    sent = 0
    t0 = time.monotonic()
    received = 0
    while sent < total:
        assert time.monotonic() - t0 < 20, f"producer stuck after {sent} messages"
        if tx.try_send(b"x" * 100):
            sent += 1
        if mine is not None:
            while (m := mine.try_recv()) is not None:
                received += 1
                m.release()
    tx.close()
    if mine is not None:
        for m in mine:
            received += 1
            m.release()
        # At most once: what the killed receiver held is not redelivered.
        assert received == total
        mine.close()
