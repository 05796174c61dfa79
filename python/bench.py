"""Numpy arrays from one Python process to another: this package's channel
against multiprocessing.Queue, multiprocessing.shared_memory with a queue of
block names, and iceoryx2's Python package, in one run.

    python python/bench.py                      # every transport, 4 KiB, 1 MiB, 64 MiB
    python python/bench.py --sizes 4096 --only sfb,queue

For each size and transport, a producer process sends arrays of that many
bytes (uint8) to a consumer process:

* throughput: as fast as they go, `count` messages after `2 * depth`
  untimed ones (the transports' memory is touched once first); from the
  first timed send to the last receipt;
* latency: paced messages (one at a time, the next after a pause), from
  just before the send call (so the copy into the transport counts) to the
  consumer holding the array; p50 and p99.

The consumer turns each message into a numpy array (zero-copy where the
transport allows it: numpy.frombuffer on a Message, a shared-memory block,
an iceoryx2 sample) and checks the sequence number and timestamp written in
its first and last 16 bytes; it does not read every byte. Every transport
has the same number of messages in flight: `depth` (32, or 8 at 64 MiB).
Each figure is the median of `--repeat` runs (3 by default), the
transports taking turns.
"""

from __future__ import annotations

import os

# numpy's BLAS thread pool spins between calls: on two cores its threads
# take CPU from every transport's producer and consumer (seen with `perf`).
# None of this benchmark's work is BLAS, so one thread (set before numpy
# loads, and inherited by the spawned processes).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import multiprocessing as mp  # noqa: E402
import queue as queue_mod  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from multiprocessing import shared_memory  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ctx = mp.get_context("spawn")
SIZES = [4 << 10, 1 << 20, 64 << 20]
TRANSPORTS = ["sfb", "sfb-recv", "queue", "shm", "iceoryx2"]


def depth_for(size: int) -> int:
    return 8 if size >= 32 << 20 else 32


def count_for(size: int) -> int:
    return max(64, min(100_000, (4 << 30) // size))


def paced_for(size: int) -> tuple[int, float]:
    """Paced messages and the pause between them (seconds)."""
    if size >= 32 << 20:
        return 20, 0.05
    if size >= 1 << 20:
        return 200, 0.004
    return 500, 0.001


def stamp(arr: np.ndarray, seq: int) -> None:
    """Sequence number and send time in the first and last 16 bytes."""
    now = time.perf_counter_ns()  # CLOCK_MONOTONIC: one clock for every process
    head = arr[:16].view(np.uint64)
    tail = arr[-16:].view(np.uint64)
    head[0] = tail[0] = seq
    head[1] = tail[1] = now


def check(arr: np.ndarray, seq: int) -> int:
    """Checks the stamps; returns the send time."""
    head = arr[:16].view(np.uint64)
    tail = arr[-16:].view(np.uint64)
    if int(head[0]) != seq or int(tail[0]) != seq or head[1] != tail[1]:
        raise AssertionError(f"message {seq}: stamps {head} {tail}")
    return int(head[1])


# ---------------------------------------------------------------- transports


class Sfb:
    """This package: a work queue of `depth` slots carrying up to 1 MiB
    inline (the default slot); larger messages go through the store (chunks
    of at least 32 MiB or four messages, at most 8 chunks), into which the
    library streams large copies."""

    def __init__(self, size: int, depth: int) -> None:
        import stable_fragmented_buffer as sfb

        self.size, self.depth = size, depth
        self.ns = f"pybench-{os.getpid()}-{size}"
        chunk = max(sfb.DEFAULT_CHUNK_SIZE, 4 * size + (1 << 20))
        self.store = sfb.Store.create(self.ns, chunk_size=chunk, max_chunks=8)
        self.rx_args = (self.ns,)

    @staticmethod
    def consumer_open(ns: str, size: int, depth: int) -> Any:
        import stable_fragmented_buffer as sfb

        store = sfb.Store.attach(ns)
        rx = store.receiver("bench", in_flight=depth)
        return store, rx

    @staticmethod
    def receive(state: Any) -> tuple[Any, np.ndarray]:
        # Busy-polling, as the iceoryx2 consumer below does (its Python
        # package's subscriber polls `receive()`): the same way of waiting
        # on both sides. `SfbRecv` is the blocking `recv` a user would call.
        _, rx = state
        deadline = time.monotonic() + 60
        while True:
            msg = rx.try_recv()
            if msg is not None:
                return msg, np.frombuffer(msg, dtype=np.uint8)
            if time.monotonic() > deadline:
                raise TimeoutError("sfb: nothing received for 60 s")

    @staticmethod
    def done(state: Any, token: Any) -> None:
        pass  # dropping the message (and its array) releases it

    def producer_open(self) -> Any:
        return self.store.sender("bench", in_flight=self.depth)

    @staticmethod
    def send(tx: Any, arr: np.ndarray, seq: int) -> None:
        tx.send(arr)

    def close(self, tx: Any) -> None:
        tx.close()
        self.store.close()


class SfbRecv(Sfb):
    """This package with a blocking consumer (`recv`: a short spin, then a
    futex; the producer then makes a wake-up system call per message the
    consumer sleeps through)."""

    @staticmethod
    def receive(state: Any) -> tuple[Any, np.ndarray]:
        _, rx = state
        msg = rx.recv(timeout=60)
        return msg, np.frombuffer(msg, dtype=np.uint8)


class Queue:
    """multiprocessing.Queue: pickled and copied through a pipe. It pickles
    in a background thread after put() returns, so it is handed a copy of
    the array (as an application that reuses its buffer must do)."""

    def __init__(self, size: int, depth: int) -> None:
        self.q = ctx.Queue(maxsize=depth)
        self.rx_args = (self.q,)

    @staticmethod
    def consumer_open(q: Any, size: int, depth: int) -> Any:
        return q

    @staticmethod
    def receive(q: Any) -> tuple[Any, np.ndarray]:
        arr = q.get(timeout=60)
        return None, arr

    @staticmethod
    def done(state: Any, token: Any) -> None:
        pass

    def producer_open(self) -> Any:
        return self.q

    @staticmethod
    def send(q: Any, arr: np.ndarray, seq: int) -> None:
        q.put(arr.copy())

    def close(self, tx: Any) -> None:
        pass


class Shm:
    """multiprocessing.shared_memory: `depth` blocks made by the producer;
    a queue carries the index of each filled block, another returns freed
    ones (the lifetimes are the application's job)."""

    def __init__(self, size: int, depth: int) -> None:
        self.blocks = [shared_memory.SharedMemory(create=True, size=size) for _ in range(depth)]
        self.filled = ctx.Queue()
        self.free = ctx.Queue()
        for i in range(depth):
            self.free.put(i)
        self.rx_args = ([b.name for b in self.blocks], self.filled, self.free)

    @staticmethod
    def consumer_open(arg: tuple[list[str], Any, Any], size: int, depth: int) -> Any:
        names, filled, free = arg
        blocks = [shared_memory.SharedMemory(name=n) for n in names]
        return blocks, filled, free

    @staticmethod
    def receive(state: Any) -> tuple[Any, np.ndarray]:
        blocks, filled, _ = state
        i = filled.get(timeout=60)
        return i, np.ndarray(blocks[i].size, dtype=np.uint8, buffer=blocks[i].buf)

    @staticmethod
    def done(state: Any, token: Any) -> None:
        _, _, free = state
        free.put(token)

    def producer_open(self) -> Any:
        return [np.ndarray(b.size, dtype=np.uint8, buffer=b.buf) for b in self.blocks]

    def send(self, views: Any, arr: np.ndarray, seq: int) -> None:
        i = self.free.get(timeout=60)
        views[i][:] = arr
        self.filled.put(i)

    def close(self, views: Any) -> None:
        del views[:]
        for b in self.blocks:
            b.close()
            try:
                b.unlink()
            except FileNotFoundError:
                pass  # the consumer's resource tracker got there first


class Iceoryx2:
    """iceoryx2's Python package: a publish-subscribe service of byte slices,
    no overflow (the publisher retries until delivered), a subscriber queue
    of `depth`, busy polling; the publisher loans a sample and copies the
    array into it (ctypes.memmove), the subscriber views the payload with
    numpy.frombuffer."""

    def __init__(self, size: int, depth: int) -> None:
        self.size, self.depth = size, depth
        self.service = f"pybench/{os.getpid()}/{size}"
        self.rx_args = (self.service,)
        self.node: Any = None

    @staticmethod
    def _service(node: Any, name: str, depth: int) -> Any:
        import iceoryx2 as iox2

        return (
            node.service_builder(iox2.ServiceName.new(name))
            .publish_subscribe(iox2.Slice[ctypes.c_uint8])
            .enable_safe_overflow(False)
            .subscriber_max_buffer_size(depth)
            .history_size(0)
            .max_publishers(1)
            .max_subscribers(1)
            .open_or_create()
        )

    @staticmethod
    def consumer_open(name: str, size: int, depth: int) -> Any:
        import iceoryx2 as iox2

        iox2.set_log_level(iox2.LogLevel.Error)
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        service = Iceoryx2._service(node, name, depth)
        sub = service.subscriber_builder().buffer_size(depth).create()
        return node, service, sub

    @staticmethod
    def receive(state: Any) -> tuple[Any, np.ndarray]:
        _, _, sub = state
        deadline = time.monotonic() + 60
        while True:
            sample = sub.receive()
            if sample is not None:
                payload = sample.payload()
                return sample, np.frombuffer(payload.as_memory_view(), dtype=np.uint8)
            if time.monotonic() > deadline:
                raise TimeoutError("iceoryx2: nothing received for 60 s")

    @staticmethod
    def done(state: Any, token: Any) -> None:
        token.delete()  # gives the sample back to the publisher

    def producer_open(self) -> Any:
        import iceoryx2 as iox2

        iox2.set_log_level(iox2.LogLevel.Error)
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        service = self._service(self.node, self.service, self.depth)
        pub = (
            service.publisher_builder()
            .initial_max_slice_len(self.size)
            .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
            .create()
        )
        pub.update_connections()
        return service, pub

    @staticmethod
    def send(state: Any, arr: np.ndarray, seq: int) -> None:
        _, pub = state
        sample = pub.loan_slice_uninit(arr.nbytes)
        ctypes.memmove(sample.payload_ptr, arr.ctypes.data, arr.nbytes)
        sample.assume_init().send()

    def close(self, state: Any) -> None:
        _, pub = state
        pub.delete()
        del state


KINDS: dict[str, Any] = {"sfb": Sfb, "sfb-recv": SfbRecv, "queue": Queue, "shm": Shm, "iceoryx2": Iceoryx2}


# ---------------------------------------------------------------- processes


def consumer(kind: str, arg: Any, size: int, depth: int, count: int, paced: int,
             ready: Any, results: Any) -> None:
    cls = KINDS[kind]
    state = cls.consumer_open(arg, size, depth)
    ready.set()
    first = None
    warm = 2 * depth
    for seq in range(count):
        token, arr = cls.receive(state)
        sent = check(arr, seq)
        if seq == warm:
            first = sent
        del arr
        cls.done(state, token)
        del token
    end = time.perf_counter_ns()
    lat = []
    for seq in range(count, count + paced):
        token, arr = cls.receive(state)
        sent = check(arr, seq)
        lat.append(time.perf_counter_ns() - sent)
        del arr
        cls.done(state, token)
        del token
    results.put((first, end, lat))
    del state


def run(kind: str, size: int) -> dict[str, float]:
    depth = depth_for(size)
    count = count_for(size) + 2 * depth
    paced, pause = paced_for(size)
    transport = KINDS[kind](size, depth)
    ready, results = ctx.Event(), ctx.Queue()
    child = ctx.Process(
        target=consumer,
        args=(kind, transport.rx_args[0] if len(transport.rx_args) == 1 else transport.rx_args,
              size, depth, count, paced, ready, results),
    )
    child.start()
    if not ready.wait(60):
        raise RuntimeError(f"{kind}: the consumer did not start")
    tx = transport.producer_open()
    if kind == "iceoryx2":
        time.sleep(0.2)  # let the connection settle
        tx[1].update_connections()
    arr = np.ones(size, dtype=np.uint8)
    for seq in range(count):
        stamp(arr, seq)
        transport.send(tx, arr, seq)
    for seq in range(count, count + paced):
        time.sleep(pause)
        stamp(arr, seq)
        transport.send(tx, arr, seq)
    try:
        first, end, lat = results.get(timeout=600)
    finally:
        child.join(60)
        if child.is_alive():
            child.kill()
        transport.close(tx)
    timed = count - 2 * depth
    secs = (end - first) / 1e9
    lat.sort()
    return {
        "msgs": timed,
        "msg_s": timed / secs,
        "gb_s": timed * size / secs / 1e9,
        "p50_us": statistics.median(lat) / 1e3,
        "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e3,
    }


def human(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--only", default=",".join(TRANSPORTS))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.only.split(",")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} CPUs")
    print("| size | transport | msgs | msg/s | GB/s | p50 latency | p99 latency | vs Queue |")
    print("|---|---|---|---|---|---|---|---|")
    for size in sizes:
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
        for _ in range(args.repeat):
            for kind in kinds:
                runs[kind].append(run(kind, size))
        rows = [(k, {f: statistics.median(r[f] for r in runs[k]) for f in runs[k][0]}) for k in kinds]
        base = dict(rows).get("queue", {}).get("gb_s")
        for kind, r in rows:
            ratio = f"{r['gb_s'] / base:.1f}x" if base else ""
            print(
                f"| {human(size)} | {kind} | {r['msgs']:.0f} | {r['msg_s']:,.0f} | {r['gb_s']:.2f} "
                f"| {r['p50_us']:,.1f} us | {r['p99_us']:,.1f} us | {ratio} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
