"""A typed use of the package, checked by `mypy --strict` against the stubs
in CI (and run, too): blobs, handles, views, a work queue, a broadcast
channel and its policies, loans, arrays with dtype and shape, a pickled
store, errors."""

import os
import pickle
from typing import Any

import numpy as np
import numpy.typing as npt

import stable_fragmented_buffer as sfb


def checksum(buf: memoryview) -> int:
    return sum(buf[:64])


def main() -> None:
    ns = f"typed-example-{os.getpid()}"
    with sfb.Store.create(ns, chunk_size=1 << 20, max_chunks=8, decay_ms=100) as store:
        frame: npt.NDArray[np.float32] = np.linspace(0, 1, 1024, dtype=np.float32)
        handle: sfb.Handle = store.append(frame)
        wire: bytes = bytes(handle)
        same = sfb.Handle.from_bytes(wire)
        assert same == pickle.loads(pickle.dumps(handle))
        view: sfb.View | None = store.resolve(same)
        assert view is not None
        with view:
            # memoryview(view) is zero-copy too; numpy's stubs take View itself
            # from Python 3.12 on (where they know the buffer protocol).
            seen = np.frombuffer(memoryview(view), dtype=np.float32)
            assert np.array_equal(seen, frame)
            total = checksum(memoryview(view))
            del seen
        copy: bytes | None = store.resolve_bytes(handle)
        assert copy is not None and len(copy) == frame.nbytes and total >= 0
        acked: bool = store.acknowledge(handle)
        assert acked

        # The first opener sizes the queue; the other adopts it (keywords that
        # differ from an existing channel raise ChannelMismatchError).
        rx: sfb.Receiver = store.receiver("jobs", max_message=8192, in_flight=64)
        tx: sfb.Sender = store.sender("jobs")
        try:
            store.sender("jobs", in_flight=8)
        except sfb.ChannelMismatchError as e:
            assert "in_flight" not in str(e) and "64 slots" in str(e), e
        else:
            raise AssertionError("a differing opener was accepted")
        tx.send(frame)
        tx.send(b"done")
        tx.close()
        sizes: list[int] = []
        for msg in rx:
            with msg:
                sizes.append(len(msg))
        try:
            rx.recv(timeout=0.01)
        except sfb.DisconnectedError:
            pass
        except sfb.ChannelTimeout as e:
            raise AssertionError("disconnected expected") from e
        rx.close()
        assert sizes == [frame.nbytes, 4], sizes

        # A lossless broadcast ("drop-oldest", the default, lets a slow
        # subscriber lag: LaggedError), its subscribers holding at most 4.
        sub: sfb.Subscriber = store.subscriber(
            "frames", overflow="block", stall_timeout=0.5, max_held=4, max_message=4096, in_flight=8
        )
        with store.publisher("frames") as pub:
            pub.send(frame[:16])
        received: list[bytes] = []
        missed = 0
        while True:
            try:
                msg = sub.recv(timeout=1.0)
            except sfb.LaggedError as e:
                missed += e.missed
                continue
            except sfb.DisconnectedError:
                break
            with msg:
                received.append(msg.tobytes())
        assert received == [frame[:16].tobytes()] and missed == sub.lagged == 0
        held: int = sub.held
        assert held == 0
        sub.close()

        # At least once: a job whose receiver dies holding it is delivered
        # again, with its count of earlier deliveries.
        retry: sfb.Receiver = store.receiver("retry", delivery="at-least-once")
        with store.sender("retry", delivery="at-least-once") as jobs:
            jobs.send(b"job")
        with retry.recv(timeout=1.0) as job:
            redelivered: int = job.redelivered
            assert redelivered == 0
        retry.close()
        # Loans: a message written in place (numpy through a memoryview on
        # Python 3.11; numpy's stubs take the Loan itself from 3.12 on), sent
        # on leaving the block. Arrays with their dtype and shape: send_array,
        # and Message.array() views them zero-copy.
        inbox: sfb.Receiver = store.receiver("loans")
        with store.sender("loans") as loans:
            loan: sfb.Loan = loans.loan(frame.nbytes, timeout=1.0)
            with loan:
                out = np.frombuffer(memoryview(loan), dtype=np.float32)
                out[:] = frame
                del out
            assert loan.sent and loan.is_inline
            spare: sfb.Loan | None = loans.try_loan(16)
            assert spare is not None
            spare.close()
            loans.send_array(frame.reshape(32, 32))
            loans.send_timeout(b"bounded", 1.0)
        with inbox.recv(timeout=1.0) as msg:
            assert msg.tobytes() == frame.tobytes()
        arrived = inbox.recv(timeout=1.0)
        grid: npt.NDArray[Any] = arrived.array()
        assert grid.shape == (32, 32) and grid.dtype == np.float32 and not grid.flags.writeable
        del grid
        arrived.release()
        with inbox.recv(timeout=1.0) as msg:
            try:
                msg.array()
            except sfb.NotAnArrayError as e:
                assert isinstance(e, ValueError)
            else:
                raise AssertionError("bytes read as an array")
        inbox.close()

        # A Store pickles as its namespace: unpickled, it is attached.
        attached: sfb.Store = pickle.loads(pickle.dumps(store))
        assert attached.namespace == ns and not attached.is_creator
        attached.close()
        try:
            store.subscriber("bad", overflow="sometimes")  # type: ignore[arg-type]
        except sfb.InvalidConfigError as e:
            assert isinstance(e, ValueError)
        else:
            raise AssertionError("an unknown overflow policy was accepted")
    removed: int = sfb.cleanup_namespace(ns)
    assert removed == 0
    print("typed example: ok")


if __name__ == "__main__":
    main()
