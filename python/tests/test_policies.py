"""Channel policies with real processes: drop-oldest overflow and
LaggedError, the held-message budget, at-least-once delivery across a
SIGKILL, liveness across fork (R1) and endpoints inherited through fork;
the openers' keyword arguments."""

import gc
import multiprocessing as mp
import os
import signal
import time
from typing import Any

import pytest

import stable_fragmented_buffer as sfb
import workers

ctx = mp.get_context("spawn")

# Ring slots of the channels below (in_flight=RING, max_message=200).
RING = 16


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


def kill_all(procs: list[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()


def gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie holds no file, so no lock)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def kill_pid(pid: int) -> None:
    """SIGKILLs `pid` (not our child: we cannot wait for it) and waits until
    it has exited."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while not gone(pid):
        assert time.monotonic() < deadline, f"process {pid} survived SIGKILL"
        time.sleep(0.01)


def message(seq: int) -> bytes:
    return b"message %d " % seq + bytes(seq % 251 for _ in range(50))


def test_a_subscriber_a_ring_behind_gets_lagged_with_the_count_then_the_next_message(ns: str) -> None:
    """Drop-oldest, the default: a subscriber process that receives nothing
    while 10 rings' worth are published never makes the publisher wait. Its
    next recv raises LaggedError with the number it missed, then returns
    the next message, and the rest follow in order; a second subscriber
    that iterates passes over the lag. Both count it in `lagged`."""
    n = RING * 10
    with sfb.Store.create(ns, chunk_size=1 << 20) as store:
        tx = store.publisher("c", max_message=200, in_flight=RING)  # no overflow=: drop-oldest
        ready, sent, results = ctx.Event(), ctx.Event(), ctx.Queue()
        child = ctx.Process(target=workers.lag_then_receive, args=(ns, "c", ready, sent, results))
        child.start()
        try:
            assert ready.wait(60)
            for seq in range(n):
                # Inline and through the store (payloads up to 120 KB).
                assert tx.try_send(workers.payload(0, seq)), f"message {seq}: full under drop-oldest"
            tx.close()
            sent.set()
            out = results.get(timeout=60)
            join_all([child])
        finally:
            kill_all([child])
    missed = n - RING  # the ring keeps the last RING messages
    assert out["first"] == (
        "lagged",
        missed,
        f"lagged: missed {missed} messages by falling a ring behind",
        missed,
    )
    assert out["after"] == [(0, q) for q in range(missed, n)]
    assert out["iterated"] == [(0, q) for q in range(missed, n)]
    assert out["lagged"] == (missed, missed)
    assert out["bad"] == 0


@pytest.mark.parametrize("kind", ["broadcast", "queue"])
def test_receiving_beyond_max_held_raises_at_once_until_one_is_released(ns: str, kind: str) -> None:
    """max_held=3: a consumer holding three messages gets TooManyHeldError
    at once from recv (with and without a timeout), try_recv and
    iteration, and producers go on; releasing one (dropping the last
    reference, or release()) lets the next receive return the next
    message."""
    opts: dict[str, Any] = {"max_message": 200, "in_flight": RING, "max_held": 3, "overflow": "block"}
    with sfb.Store.create(ns, chunk_size=1 << 16) as store:
        tx = store.publisher("c", **opts) if kind == "broadcast" else store.sender("c", **opts)
        rx = store.subscriber("c", **opts) if kind == "broadcast" else store.receiver("c", **opts)
        for seq in range(6):
            tx.send(message(seq))
        held = [rx.recv(timeout=5) for _ in range(3)]
        assert [m.tobytes() for m in held] == [message(q) for q in range(3)]
        assert rx.held == 3
        t0 = time.monotonic()
        with pytest.raises(sfb.TooManyHeldError):
            rx.recv()
        with pytest.raises(sfb.TooManyHeldError):
            rx.recv(timeout=5)
        with pytest.raises(sfb.TooManyHeldError):
            rx.try_recv()
        with pytest.raises(sfb.TooManyHeldError):
            next(rx)
        assert time.monotonic() - t0 < 1, "it waited"
        # Held messages are out of the ring: it fills with unread ones only.
        for seq in range(6, 3 + RING):
            assert tx.try_send(message(seq)), seq
        assert not tx.try_send(message(3 + RING))  # overflow="block": full
        assert rx.held == 3
        # Dropped: its last reference gone, the message is released.
        del held[0]
        gc.collect()
        assert rx.held == 2
        third = rx.recv(timeout=5)
        assert third.tobytes() == message(3)
        with pytest.raises(sfb.TooManyHeldError):
            rx.try_recv()
        held[0].release()
        got = rx.try_recv()
        assert got is not None and got.tobytes() == message(4)
        assert rx.held == 3
        assert tx.try_send(message(3 + RING))  # two ring slots came back
        del held, third, got
        tx.close()
        rx.close()


def test_at_least_once_redelivers_a_job_whose_receiver_was_killed_holding_it(ns: str) -> None:
    """delivery="at-least-once": a receiver process SIGKILLed while holding
    two jobs (one inline, one through the store) does not lose them: the
    other receiver gets each once more, with redelivered == 1; a job taken
    once has redelivered == 0."""
    jobs = [b"job 0", bytes(range(256)) * 400, b"job 2"]
    with sfb.Store.create(ns, chunk_size=1 << 20) as store:
        tx = store.sender("jobs", delivery="at-least-once", max_message=4096)
        rx = store.receiver("jobs")
        results = ctx.Queue()
        victim = ctx.Process(target=workers.take_and_hold, args=(ns, "jobs", 2, results))
        victim.start()
        try:
            assert results.get(timeout=60)[0] == "ready"
            for job in jobs:
                tx.send(job)
            assert results.get(timeout=60) == ("holding", [(jobs[0], 0), (jobs[1], 0)])
            with rx.recv(timeout=5) as m:
                assert (m.tobytes(), m.redelivered) == (jobs[2], 0)
            assert rx.try_recv() is None  # held by a live receiver
            os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
            victim.join(10)
            assert victim.exitcode == -signal.SIGKILL
            again = []
            t0 = time.monotonic()
            while len(again) < 2:
                assert time.monotonic() - t0 < 5, f"not redelivered: {again}"
                try:
                    m = rx.recv(timeout=0.05)
                except sfb.ChannelTimeout:
                    continue
                again.append((m.tobytes(), m.redelivered))
                m.release()
            assert sorted(again) == sorted([(jobs[0], 1), (jobs[1], 1)])
            tx.close()
            assert [m.tobytes() for m in rx] == []  # each exactly once more
        finally:
            kill_all([victim])
            tx.close()
            rx.close()


def test_a_killed_subscriber_whose_fork_child_lives_stops_gating_and_the_child_receives(ns: str) -> None:
    """R1 through Python: a subscriber process (overflow="block") starts a
    child with multiprocessing's fork start method, then is SIGKILLed while
    the child lives. Its lock must not live on in the child: the publisher,
    which it gated, gets going again within seconds. The child attached the
    store on its own and subscribed: it receives like any process, and
    gates the publisher itself."""
    with sfb.Store.create(ns, chunk_size=1 << 20) as store:
        tx = store.publisher("c", overflow="block", max_message=200, in_flight=RING)
        go, results, child_results = ctx.Event(), ctx.Queue(), ctx.Queue()
        parent = ctx.Process(
            target=workers.subscribe_then_fork, args=(ns, "c", RING, go, results, child_results)
        )
        parent.start()
        child_pid = None
        try:
            tag, child_pid = results.get(timeout=60)
            assert tag == "ready"
            assert child_results.get(timeout=60) == ("child ready", child_pid)
            tx.send(workers.payload(0, 0))
            assert child_results.get(timeout=60) == ("child got", [(0, 0)])
            os.kill(parent.pid, signal.SIGKILL)  # type: ignore[arg-type]
            parent.join(10)
            assert parent.exitcode == -signal.SIGKILL
            assert not gone(child_pid), "the fork child lives on"
            # The dead subscriber never received message 0: while it counts,
            # the ring holds only 1..15 more. Once it is found dead, sends
            # stop at the live child's unread ring (1..16), not before.
            sent = 1
            t0 = time.monotonic()
            while sent <= RING and time.monotonic() - t0 < 5:
                if tx.try_send(workers.payload(0, sent)):
                    sent += 1
                else:
                    time.sleep(0.01)
            assert sent == RING + 1, f"publisher stuck after {sent} messages: the dead subscriber gates it"
            assert not tx.try_send(workers.payload(0, sent))  # the child, alive, gates (lossless)
            go.set()
            _, got = child_results.get(timeout=60)
            assert got == [(0, q) for q in range(1, RING + 1)]
            assert tx.try_send(workers.payload(0, sent))  # the child's receives made room
        finally:
            if child_pid is not None:
                kill_pid(child_pid)
            kill_all([parent])
            tx.close()  # even after a failure: the namespace goes with the store


def test_an_endpoint_inherited_through_fork_raises_inherited_error_in_the_child(ns: str) -> None:
    """A fork child using its parent's publisher gets InheritedError (the
    endpoint is its parent's); the parent's subscriber is disconnected
    there. The child attaches and opens its own publisher, which works."""
    with sfb.Store.create(ns, chunk_size=1 << 20):
        results = ctx.Queue()
        proc = ctx.Process(target=workers.fork_with_endpoints, args=(ns, "c", results))
        proc.start()
        try:
            report, exitcode, got = results.get(timeout=60)
            join_all([proc])
        finally:
            kill_all([proc])
    assert report == [
        ("send", "InheritedError"),
        ("try_send", "InheritedError"),
        ("try_recv", "DisconnectedError"),
        ("own send", "ok"),
    ]
    assert exitcode == 0
    assert got == [b"from the fork child"]


def test_channel_policy_arguments_are_checked_and_the_creator_s_are_adopted(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 16) as store:
        bad: list[dict[str, Any]] = [
            {"overflow": "Block"},
            {"overflow": "drop_oldest"},
            {"delivery": "exactly-once"},
            {"stall_timeout": -1.0},
            {"stall_timeout": float("nan")},
            {"max_held": 0},
            {"max_held": 1025},
            {"max_held": -1},
        ]
        for opener in (store.publisher, store.subscriber, store.sender, store.receiver):
            for kwargs in bad:
                with pytest.raises(sfb.InvalidConfigError) as e:
                    opener("bad", **kwargs)
                assert isinstance(e.value, ValueError)
                assert list(kwargs)[0] in str(e.value), (kwargs, str(e.value))
        with pytest.raises(TypeError):
            store.publisher("bad", "block")
        # The creator's policy holds: an opener without keywords adopts it,
        # one asking for another raises ChannelMismatchError naming both.
        sub = store.subscriber("b", overflow="block", stall_timeout=60, max_message=200, in_flight=2, max_held=1)
        for kwargs in [
            {"overflow": "drop-oldest"},
            {"overflow": "block", "stall_timeout": 60},  # the default ring, not 2 slots of 200
            {"overflow": "block", "stall_timeout": 60, "max_message": 200, "in_flight": 2},  # max_held 16
        ]:
            with pytest.raises(sfb.ChannelMismatchError) as mismatch:
                store.publisher("b", **kwargs)
            assert "max_held 1" in str(mismatch.value) and "without keywords" in str(mismatch.value)
        same = store.publisher("b", overflow="block", stall_timeout=60, max_message=200, in_flight=2, max_held=1)
        same.close()
        pub = store.publisher("b")
        assert pub.try_send(b"1") and pub.try_send(b"2")
        assert not pub.try_send(b"3")  # blocks: the subscriber has read nothing
        first = sub.recv(timeout=5)
        with pytest.raises(sfb.TooManyHeldError):
            sub.try_recv()
        del first
        assert sub.recv(timeout=5).tobytes() == b"2"
        assert (sub.lagged, sub.held) == (0, 0)
        rx = store.receiver("q", delivery="at-least-once", max_held=1024)
        rx.close()
        pub.close()
        sub.close()
