"""Code that runs in child processes (multiprocessing, spawn start method;
some of them start fork children of their own)."""

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
    (inline in a default ring; through the store above 4 KiB in a ring
    opened with max_message=4096), content that names it."""
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
    tx = store.publisher(channel, overflow="block") if kind == "broadcast" else store.sender(channel)
    start.wait(30)
    for seq in range(count):
        tx.send(payload(source, seq))
    tx.close()
    store.close()


def consume(ns: str, channel: str, kind: str, ready: Event, results: "Queue[Any]") -> None:
    """Consumer: receives until disconnection, checks every payload, and
    reports the (source, seq) pairs it got, in order, and the bad ones."""
    store = sfb.Store.attach(ns)
    rx = store.subscriber(channel, overflow="block") if kind == "broadcast" else store.receiver(channel)
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
    then waits to be killed. It creates the channel: a broadcast one with
    overflow="block", so that it gates the producer while it lives."""
    store = sfb.Store.attach(ns)
    rx = store.subscriber(channel, overflow="block") if kind == "broadcast" else store.receiver(channel)
    ready.set()
    kept = []
    for _ in range(hold):
        msg = rx.recv(timeout=30)
        kept.append((msg, np.frombuffer(msg, dtype=np.uint8)))
    ready.clear()  # tells the parent it holds them
    time.sleep(120)


def lag_then_receive(ns: str, channel: str, ready: Event, sent: Event, results: "Queue[Any]") -> None:
    """Two subscribers that receive nothing until `sent` is set (the parent
    sends many rings' worth meanwhile). Then the first receives with `recv`
    until disconnection, the second iterates; reports what each saw."""
    store = sfb.Store.attach(ns)
    rx = store.subscriber(channel)
    it = store.subscriber(channel)
    ready.set()
    assert sent.wait(60)
    out: dict[str, Any] = {}
    try:
        msg = rx.recv(timeout=10)
        out["first"] = ("message", parse(msg.tobytes()))
        msg.release()
    except sfb.LaggedError as e:
        out["first"] = ("lagged", e.missed, str(e), rx.lagged)
    after: list[tuple[int, int]] = []
    bad = 0
    while True:
        try:
            msg = rx.recv(timeout=10)
        except sfb.DisconnectedError:
            break
        data = msg.tobytes()
        msg.release()
        after.append(parse(data))
        bad += data != payload(*after[-1])
    out["after"] = after
    out["iterated"] = [parse(m.tobytes()) for m in it]
    out["lagged"] = (rx.lagged, it.lagged)
    out["bad"] = bad
    results.put(out)
    rx.close()
    it.close()
    store.close()


def take_and_hold(ns: str, channel: str, hold: int, results: "Queue[Any]") -> None:
    """A receiver of at-least-once work queue `channel`: takes `hold` jobs,
    reports them (content and redelivery count) and keeps them until killed.
    Opened without keywords: it adopts the queue its test made."""
    store = sfb.Store.attach(ns)
    rx = store.receiver(channel)
    results.put(("ready", os.getpid()))
    kept = []
    for _ in range(hold):
        msg = rx.recv(timeout=30)
        kept.append(msg)
    results.put(("holding", [(m.tobytes(), m.redelivered) for m in kept]))
    time.sleep(120)


def fork_child_subscriber(
    ns: str, channel: str, in_flight: int, go: Event, results: "Queue[Any]"
) -> None:
    """In a fork child of `subscribe_then_fork`: attaches on its own (not
    through the parent's inherited store), subscribes, receives one message
    and reports it; once `go` is set, receives every message until the
    channel is drained and reports them; then lives on until killed."""
    store = sfb.Store.attach(ns)
    rx = store.subscriber(channel, overflow="block", max_message=200, in_flight=in_flight)
    results.put(("child ready", os.getpid()))
    with rx.recv(timeout=60) as msg:
        results.put(("child got", [parse(msg.tobytes())]))
    assert go.wait(60)
    got = []
    while (msg := rx.try_recv()) is not None:
        got.append(parse(msg.tobytes()))
        msg.release()
    results.put(("child got", got))
    time.sleep(120)


def subscribe_then_fork(
    ns: str, channel: str, in_flight: int, go: Event, results: "Queue[Any]", child_results: "Queue[Any]"
) -> None:
    """Subscribes (overflow="block"), then starts a child with the fork
    start method (see `fork_child_subscriber`); reports the child's pid and
    never receives: it waits to be killed."""
    import multiprocessing

    store = sfb.Store.attach(ns)
    rx = store.subscriber(channel, overflow="block", max_message=200, in_flight=in_flight)
    child = multiprocessing.get_context("fork").Process(
        target=fork_child_subscriber, args=(ns, channel, in_flight, go, child_results)
    )
    child.start()
    results.put(("ready", child.pid))
    time.sleep(600)
    rx.close()  # not reached: it is killed


def use_inherited_endpoints(pub: "sfb.Publisher", sub: "sfb.Subscriber", ns: str, results: "Queue[Any]") -> None:
    """In a fork child: tries the parent's endpoints (inherited), then
    attaches on its own and publishes on the same channel; reports what
    each attempt raised."""
    out: list[tuple[str, str]] = []
    for what, attempt in [
        ("send", lambda: pub.send(b"from an inherited publisher")),
        ("try_send", lambda: pub.try_send(b"from an inherited publisher")),
        ("try_recv", lambda: sub.try_recv()),
    ]:
        try:
            attempt()
            out.append((what, "ok"))
        except sfb.BlobError as e:
            out.append((what, type(e).__name__))
    store = sfb.Store.attach(ns)
    with store.publisher(pub.name) as own:
        own.send(b"from the fork child")
    out.append(("own send", "ok"))
    store.close()
    results.put(out)


def fork_with_endpoints(ns: str, channel: str, results: "Queue[Any]") -> None:
    """Opens a publisher and a subscriber, starts a fork child that uses
    them (see `use_inherited_endpoints`), then reports the child's exit
    code and what its own subscriber received."""
    import multiprocessing

    store = sfb.Store.attach(ns)
    pub = store.publisher(channel)
    sub = store.subscriber(channel)
    child_results: "Queue[Any]" = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(
        target=use_inherited_endpoints, args=(pub, sub, ns, child_results)
    )
    child.start()
    report = child_results.get(timeout=60)
    child.join(30)
    got = []
    while (msg := sub.try_recv()) is not None:
        got.append(msg.tobytes())
        msg.release()
    results.put((report, child.exitcode, got))
    pub.close()
    sub.close()
    store.close()


# Arrays for send_array / Message.array(): every dtype carried, in shapes
# from 0-d to 6-d (a 128-byte header), empty ones, views that are not
# C-contiguous, big-endian ones, inline and through the store: (dtype,
# shape, how the sent array is taken from the generated one).
TYPED_SPECS: list[tuple[str, tuple[int, ...], str]] = [
    ("bool", (17,), "plain"),
    ("int8", (3, 5), "plain"),
    ("uint8", (120, 64, 3), "plain"),  # 23 KB: through the store
    ("int16", (7,), "step"),
    ("uint16", (4, 4), "transpose"),
    ("int32", (), "plain"),
    ("uint32", (2, 3, 4, 5, 2, 3), "plain"),
    ("int64", (300, 300), "plain"),  # 720 KB
    ("uint64", (5,), "big-endian"),
    ("float16", (10, 10), "reverse"),
    ("float32", (64, 64), "fortran"),  # 16 KB, F-contiguous
    ("float64", (0, 3), "plain"),
    ("complex64", (9, 9), "plain"),
    ("complex128", (200, 100), "step"),  # 320 KB, strided
    ("complex128", (3,), "plain"),
    ("float64", (6,), "big-endian"),
]


def make_typed(i: int) -> np.ndarray:
    """The i-th array of TYPED_SPECS, the same in every process (random
    bytes: floats among them may be NaN, so compare bytes, not values)."""
    dtype, shape, how = TYPED_SPECS[i]
    rng = np.random.default_rng(2000 + i)
    n = int(np.prod(shape))
    raw = rng.integers(0, 256, size=2 * n * np.dtype(dtype).itemsize, dtype=np.uint8)
    arr = (raw[: 2 * n] & 1).astype(bool) if dtype == "bool" else raw.view(dtype)
    if how == "plain":
        return arr[:n].reshape(shape)
    if how == "step":
        return arr[::2].reshape(shape)
    if how == "transpose":
        return arr[:n].reshape(shape).T
    if how == "reverse":
        return arr[:n].reshape(shape)[::-1, ::-1]
    if how == "fortran":
        return np.asfortranarray(arr[:n].reshape(shape))
    if how == "big-endian":
        return arr[:n].reshape(shape).astype(np.dtype(dtype).newbyteorder(">"))
    raise ValueError(how)


def check_typed(i: int, got: np.ndarray, msg: "sfb.Message") -> list[str]:
    """What is wrong with `got`, Message.array() of `msg`, against
    make_typed(i): dtype (byte order included), shape, bytes, alignment,
    read-only, a view of the message's memory."""
    expected = make_typed(i)
    wrong = []
    if got.dtype != expected.dtype or got.dtype.str != expected.dtype.str:
        wrong.append(f"dtype {got.dtype.str} != {expected.dtype.str}")
    if got.shape != expected.shape:
        wrong.append(f"shape {got.shape} != {expected.shape}")
    if got.tobytes() != np.ascontiguousarray(expected).tobytes():
        wrong.append("bytes differ")
    if not got.flags.aligned:
        wrong.append("not aligned")
    if got.flags.writeable:
        wrong.append("writeable")
    if got.size and not np.shares_memory(got, np.frombuffer(msg, dtype=np.uint8)):
        wrong.append("a copy, not a view of the message")
    return wrong


def send_typed_arrays(ns: str, channel: str) -> None:
    """Sends every array of TYPED_SPECS with send_array on work queue `channel`."""
    store = sfb.Store.attach(ns)
    with store.sender(channel) as tx:
        for i in range(len(TYPED_SPECS)):
            tx.send_array(make_typed(i))
    store.close()


def receive_typed_arrays(ns: str, channel: str, ready: Event, results: "Queue[Any]") -> None:
    """Receives arrays with Message.array() until disconnection; reports,
    for each, what is wrong with it (see check_typed) and whether it came
    through the store."""
    store = sfb.Store.attach(ns)
    rx = store.receiver(channel)
    ready.set()
    out = []
    for i, msg in enumerate(rx):
        got = msg.array()
        out.append((i, check_typed(i, got, msg), msg.is_overflow))
        del got
        msg.release()
    results.put(out)
    rx.close()
    store.close()


def loan_payload(i: int, n: int) -> np.ndarray:
    """What loan i of `n` float64 holds (see fill_loans)."""
    return np.arange(n, dtype=np.float64) * (i + 1) + i


LOAN_COUNTS = [0, 1, 100, 511, 513, 5000, 250_000]  # float64 elements


def fill_loans(ns: str, channel: str, kind: str) -> None:
    """Producer: for each count of LOAN_COUNTS, a loan filled in place
    through numpy and sent by leaving its with block; after each, a loan
    abandoned by an exception in its with block, which must never arrive."""
    store = sfb.Store.attach(ns)
    tx = store.publisher(channel, overflow="block") if kind == "broadcast" else store.sender(channel)
    for i, n in enumerate(LOAN_COUNTS):
        with tx.loan(8 * n) as loan:
            arr = np.frombuffer(loan, dtype=np.float64)
            arr[:] = loan_payload(i, n)
            del arr
        try:
            with tx.loan(8 * n + 8) as abandoned:
                np.frombuffer(abandoned, dtype=np.float64)[:] = -1.0
                raise RuntimeError("abandoned")
        except RuntimeError:
            pass
    tx.close()
    store.close()


def use_pickled_store(store: "sfb.Store", channel: str, results: "Queue[Any]") -> None:
    """Gets a Store its parent passed pickled (spawn): sends one message on
    work queue `channel` through it, closes it, and reports (namespace,
    is_creator, pid)."""
    report = (store.namespace, store.is_creator, os.getpid())
    with store.sender(channel) as tx:
        tx.send(f"from {os.getpid()}".encode())
    store.close()
    results.put(report)


def use_after_removal(ns: str, channel: str, ready: Event, go: Event, results: "Queue[Any]") -> None:
    """Attaches, opens a sender and a receiver on work queue `channel` and
    sends one message (for the parent's receiver); once `go` is set (the
    creator's side has removed the namespace), tries every kind of use and
    reports what each raised."""
    store = sfb.Store.attach(ns)
    tx = store.sender(channel)
    rx = store.receiver(channel)
    tx.send(b"before")
    ready.set()
    assert go.wait(60)
    out: list[tuple[str, str]] = []
    attempts: list[tuple[str, Any]] = [
        ("send", lambda: tx.send(b"after")),
        ("try_send", lambda: tx.try_send(b"after")),
        ("send_timeout", lambda: tx.send_timeout(b"after", 1.0)),
        ("send through the store", lambda: tx.send(bytes(100_000))),
        ("loan", lambda: tx.loan(8)),
        ("send_array", lambda: tx.send_array(np.zeros(3))),
        ("open a sender", lambda: store.sender(channel)),
        ("append", lambda: store.append(b"after")),
        ("attach", lambda: sfb.Store.attach(ns)),
        ("try_recv", lambda: rx.try_recv()),  # "before" went to the parent
    ]
    for what, attempt in attempts:
        try:
            attempt()
            out.append((what, "ok"))
        except sfb.BlobError as e:
            out.append((what, type(e).__name__))
    tx.close()
    rx.close()
    store.close()
    results.put(out)


def produce_paced(ns: str, channel: str, kind: str, source: int, count: int, start: Event) -> None:
    """Producer `source`: sends `count` payloads on `channel`, 2 ms apart
    (so the receiving coroutines wait in between)."""
    store = sfb.Store.attach(ns)
    tx = store.publisher(channel, overflow="block") if kind == "broadcast" else store.sender(channel)
    start.wait(30)
    for seq in range(count):
        tx.send(payload(source, seq))
        time.sleep(0.002)
    tx.close()
    store.close()


def drain_slowly(ns: str, channel: str, count: int, ready: Event, go: Event, results: "Queue[Any]") -> None:
    """Receiver: after `go`, receives `count` messages and reports them."""
    store = sfb.Store.attach(ns)
    rx = store.receiver(channel, max_message=64, in_flight=4)
    ready.set()
    go.wait(30)
    got = [parse(bytes(rx.recv(timeout=30))) for _ in range(count)]
    results.put(got)
    rx.close()
    store.close()
