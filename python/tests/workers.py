"""Code that runs in child processes (multiprocessing, spawn start method)."""

import hashlib
import os
import signal
import time
from multiprocessing.synchronize import Event
from multiprocessing.queues import Queue
from typing import Any

import numpy as np

import stable_fragmented_buffer as sfb

# Arrays of several dtypes and shapes, some not contiguous: (dtype, shape,
# how the sent array is taken from the generated one).
ARRAY_SPECS: list[tuple[str, tuple[int, ...], str]] = [
    ("uint8", (7,), "plain"),
    ("int16", (33, 5), "plain"),
    ("float32", (64, 64), "transpose"),
    ("float64", (10, 20, 3), "step"),
    ("complex128", (9, 9), "reverse"),
    ("int64", (300, 300), "plain"),  # 720 KB: through the store
    ("float64", (256, 256, 2), "transpose"),  # strided and through the store
    ("bool", (1000,), "step"),
    ("uint32", (2048, 2), "column"),
]


def make_array(i: int) -> np.ndarray:
    """The i-th array of ARRAY_SPECS, the same in every process."""
    dtype, shape, how = ARRAY_SPECS[i]
    rng = np.random.default_rng(1000 + i)
    n = int(np.prod(shape))
    raw = rng.integers(0, 256, size=2 * n * np.dtype(dtype).itemsize, dtype=np.uint8)
    arr = (raw[: 2 * n] & 1).astype(bool) if dtype == "bool" else raw.view(dtype)
    if how == "plain":
        return arr[:n].reshape(shape)
    if how == "transpose":
        return arr[:n].reshape(shape).T
    if how == "step":
        return arr[::2].reshape(shape)
    if how == "reverse":
        return arr[:n].reshape(shape)[::-1, ::-1]
    if how == "column":
        return arr.reshape(shape[0], shape[1] * 2)[:, ::2]
    raise ValueError(how)


def payload(source: int, seq: int) -> bytes:
    """Message `seq` of producer `source`: sizes from 0 to 120 000 bytes
    (inline and through the store), content that names it."""
    size = (seq * 7919 + source * 104729) % 120_000 if seq % 3 else seq % 200
    head = f"{source}:{seq}:".encode()
    body = hashlib.sha256(head).digest() * (size // 32 + 1)
    return (head + body)[: max(size, len(head))]


def parse(data: bytes) -> tuple[int, int]:
    source, seq, _ = data.split(b":", 2)
    return int(source), int(seq)


def sigint_default() -> None:
    """A child started by a shell that ignores SIGINT inherits that; put
    Python's handler back so Ctrl-C raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def resolve_handles(ns: str, handles: "Queue[Any]", results: "Queue[Any]") -> None:
    """Attaches, resolves each handle received (pickled), acknowledges it,
    and reports a digest of its bytes; None ends."""
    store = sfb.Store.attach(ns)
    while (item := handles.get(timeout=30)) is not None:
        index, handle = item
        view = store.resolve(handle)
        if view is None:
            results.put((index, None, False))
            continue
        digest = hashlib.sha256(memoryview(view)).hexdigest()
        view.release()
        results.put((index, digest, store.acknowledge(handle)))
    store.close()


def send_arrays(ns: str, channel: str) -> None:
    """Sends every array of ARRAY_SPECS on work queue `channel`."""
    store = sfb.Store.attach(ns)
    with store.sender(channel) as tx:
        for i in range(len(ARRAY_SPECS)):
            tx.send(make_array(i))
    store.close()


def receive_arrays(ns: str, channel: str, ready: Event, results: "Queue[Any]") -> None:
    """Receives arrays on `channel` until disconnection and reports, for
    each, whether it equals the expected array exactly."""
    store = sfb.Store.attach(ns)
    rx = store.receiver(channel)
    ready.set()
    out = []
    for i, msg in enumerate(rx):
        expected = make_array(i)
        got = np.frombuffer(msg, dtype=expected.dtype).reshape(expected.shape)
        out.append((i, got.tobytes() == np.ascontiguousarray(expected).tobytes(), msg.is_overflow))
        del got
        msg.release()
    results.put(out)
    rx.close()
    store.close()


def produce(ns: str, channel: str, kind: str, source: int, count: int, start: Event) -> None:
    """Producer `source`: sends `count` payloads on `channel`."""
    store = sfb.Store.attach(ns)
    tx = store.publisher(channel) if kind == "broadcast" else store.sender(channel)
    start.wait(30)
    for seq in range(count):
        tx.send(payload(source, seq))
    tx.close()
    store.close()


def consume(ns: str, channel: str, kind: str, ready: Event, results: "Queue[Any]") -> None:
    """Consumer: receives until disconnection, checks every payload, and
    reports the (source, seq) pairs it got, in order, and the bad ones."""
    store = sfb.Store.attach(ns)
    rx = store.subscriber(channel) if kind == "broadcast" else store.receiver(channel)
    ready.set()
    got: list[tuple[int, int]] = []
    bad = 0
    for msg in rx:
        data = bytes(msg)
        msg.release()
        source, seq = parse(data)
        if data != payload(source, seq):
            bad += 1
        got.append((source, seq))
    results.put((os.getpid(), got, bad))
    rx.close()
    store.close()


def send_then_die(ns: str, channel: str, count: int) -> None:
    """Sends `count` payloads, then is killed with SIGKILL mid-life."""
    store = sfb.Store.attach(ns)
    tx = store.sender(channel)
    for seq in range(count):
        tx.send(payload(0, seq))
    os.kill(os.getpid(), signal.SIGKILL)


def hold_then_wait(ns: str, channel: str, kind: str, hold: int, ready: Event) -> None:
    """Takes `hold` messages and keeps them (numpy arrays on them too),
    then waits to be killed."""
    store = sfb.Store.attach(ns)
    rx = store.subscriber(channel) if kind == "broadcast" else store.receiver(channel)
    ready.set()
    kept = []
    for _ in range(hold):
        msg = rx.recv(timeout=30)
        kept.append((msg, np.frombuffer(msg, dtype=np.uint8)))
    ready.clear()  # tells the parent it holds them
    time.sleep(120)
