"""asyncio: `await recv_async()`, `async for` and `await send_async()`,
with producers and consumers in other processes (spawn start method)."""

import asyncio
import multiprocessing as mp
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

import stable_fragmented_buffer as sfb
import workers
from test_processes import join_all

ctx = mp.get_context("spawn")

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs `coro` in a new event loop; a wake-up never delivered fails the
    test after 20 s instead of hanging it."""
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_gather_over_several_channels_fed_by_other_processes(ns: str) -> None:
    """Three subscribers and a receiver in one event loop, fed by four
    producer processes: every message arrives in order, while a ticker
    coroutine keeps running (the loop is never blocked)."""
    with sfb.Store.create(ns, chunk_size=1 << 20) as store:
        subs = [store.subscriber(f"b{i}", overflow="block") for i in range(3)]
        rx = store.receiver("q")
        start = ctx.Event()
        procs = [
            ctx.Process(target=workers.produce_paced, args=(ns, f"b{i}", "broadcast", i, 60, start))
            for i in range(3)
        ]
        procs.append(ctx.Process(target=workers.produce_paced, args=(ns, "q", "queue", 3, 60, start)))
        for p in procs:
            p.start()

        async def receive(sub: "sfb.Subscriber", source: int) -> list[int]:
            got = []
            for _ in range(60):
                msg = await sub.recv_async()
                s, seq = workers.parse(bytes(msg))
                assert s == source
                got.append(seq)
            return got

        async def iterate(rx: "sfb.Receiver") -> list[int]:
            got = []
            async for msg in rx:  # ends when the producer is gone and drained
                got.append(workers.parse(bytes(msg))[1])
            return got

        async def main() -> tuple[list[list[int]], int]:
            ticks = 0
            stop = asyncio.Event()

            async def ticker() -> None:
                nonlocal ticks
                while not stop.is_set():
                    await asyncio.sleep(0.005)
                    ticks += 1

            t = asyncio.create_task(ticker())
            start.set()
            got = await asyncio.gather(*(receive(s, i) for i, s in enumerate(subs)), iterate(rx))
            stop.set()
            await t
            return list(got), ticks

        got, ticks = run(main())
        join_all(procs)
        assert got == [list(range(60))] * 4
        # 60 messages 2 ms apart take over 120 ms: the ticker ran meanwhile.
        assert ticks >= 10, ticks
        for s in subs:
            s.close()
        rx.close()


def test_a_waiting_receive_leaves_the_gil_and_the_loop_free(ns: str) -> None:
    """While a receive waits, a Python thread runs (the GIL is free) and so
    do other coroutines; a message from another thread then completes it."""
    with sfb.Store.create(ns, chunk_size=1 << 20) as store:
        sub = store.subscriber("c")
        tx = store.publisher("c")
        counted = 0

        def count() -> None:
            nonlocal counted
            until = time.monotonic() + 0.2
            while time.monotonic() < until:
                counted += 1
            tx.send(b"done")

        async def main() -> bytes:
            fut = sub.recv_async()
            th = threading.Thread(target=count)
            th.start()
            await asyncio.sleep(0.05)  # the loop runs other coroutines
            msg = await fut
            th.join()
            return bytes(msg)

        assert run(main()) == b"done"
        assert counted > 1000
        sub.close()
        tx.close()


def test_a_cancelled_receive_takes_nothing(ns: str) -> None:
    """`asyncio.wait_for` cancelling a waiting receive loses no message:
    the next receive gets it."""
    with sfb.Store.create(ns, chunk_size=1 << 20) as store:
        sub = store.subscriber("c")
        tx = store.publisher("c")

        async def main() -> bytes:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(sub.recv_async(), 0.05)
            tx.send(b"kept")
            return bytes(await asyncio.wait_for(sub.recv_async(), 5))

        assert run(main()) == b"kept"
        sub.close()
        tx.close()


def test_send_async_waits_for_room_made_by_another_process(ns: str) -> None:
    """A full four-slot queue: `send_async` waits (other coroutines run)
    until a receiver in another process drains it; nothing is lost."""
    with sfb.Store.create(ns, chunk_size=1 << 20) as store:
        tx = store.sender("q", max_message=64, in_flight=4)
        ready, go = ctx.Event(), ctx.Event()
        results = ctx.Queue()
        p = ctx.Process(target=workers.drain_slowly, args=(ns, "q", 20, ready, go, results))
        p.start()
        assert ready.wait(30)

        async def main() -> None:
            for seq in range(4):
                await tx.send_async(workers.payload(0, seq))
            fifth = asyncio.ensure_future(tx.send_async(workers.payload(0, 4)))
            await asyncio.sleep(0.05)
            assert not fifth.done()  # full: waiting
            go.set()
            await fifth
            for seq in range(5, 20):
                await tx.send_async(workers.payload(0, seq))

        run(main())
        got = results.get(timeout=30)
        join_all([p])
        assert got == [(0, i) for i in range(20)]
        tx.close()


def test_recv_async_outside_a_running_loop_is_an_error(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 20) as store:
        sub = store.subscriber("c")
        with pytest.raises(RuntimeError):
            sub.recv_async()
        sub.close()
