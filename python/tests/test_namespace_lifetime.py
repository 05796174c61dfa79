"""How long a namespace lives, the same rule as the Rust library's: while
its creator's Store or any endpoint (or loan) opened through it lives.
Leaving `with Store.create(...)` closes the Store object; the files go with
the last endpoint. Producers of other processes then raise ClosedError and
never write into removed files; consumers there see the channel
disconnected. And a Store pickles as its namespace's
name: unpickled, it is attached, never the creator."""

import gc
import multiprocessing as mp
import pickle

import pytest

import stable_fragmented_buffer as sfb
import workers
from conftest import namespace_files
from test_processes import join_all

ctx = mp.get_context("spawn")


def test_the_namespace_lives_while_an_endpoint_opened_through_its_creator_lives(ns: str) -> None:
    ready, go = ctx.Event(), ctx.Event()
    results = ctx.Queue()
    with sfb.Store.create(ns, chunk_size=1 << 16) as store:
        rx = store.receiver("q")
        tx = store.sender("q")
        child = ctx.Process(target=workers.use_after_removal, args=(ns, "q", ready, go, results))
        child.start()
        assert ready.wait(60)
    assert store.closed
    with pytest.raises(sfb.ClosedError):
        store.sender("q")
    # The Store object is closed; its endpoints keep the namespace.
    files = namespace_files(ns)
    assert f"{ns}_ctrl" in files and f"{ns}_chan+q" in files, files
    tx.send(b"after the with block")
    assert rx.recv(timeout=5).tobytes() == b"before"
    assert rx.recv(timeout=5).tobytes() == b"after the with block"
    loan = tx.loan(8)
    tx.close()
    rx.close()
    gc.collect()
    assert namespace_files(ns) == files  # the loan is of an endpoint opened through it
    loan.close()
    # The last of them is gone: so are the files, although the child's
    # endpoints (opened through a store it attached) are alive.
    assert namespace_files(ns) == []
    go.set()
    report = dict(results.get(timeout=60))
    join_all([child])
    assert report == {
        "send": "ClosedError",
        "try_send": "ClosedError",
        "send_timeout": "ClosedError",
        "send through the store": "ClosedError",
        "loan": "ClosedError",
        "send_array": "ClosedError",
        "open a sender": "ClosedError",
        "append": "ClosedError",
        "attach": "NotFoundError",
        "try_recv": "DisconnectedError",
    }
    assert namespace_files(ns) == []  # nothing was written into new files


def test_a_store_pickles_as_its_namespace_and_is_attached_where_unpickled(ns: str) -> None:
    with sfb.Store.create(ns, chunk_size=1 << 16) as store:
        copy = pickle.loads(pickle.dumps(store))
        assert copy.namespace == ns and store.is_creator and not copy.is_creator
        copy.close()
        del copy
        gc.collect()
        assert namespace_files(ns)  # closing the copy removed nothing
        rx = store.receiver("q")
        results = ctx.Queue()
        children = [ctx.Process(target=workers.use_pickled_store, args=(store, "q", results)) for _ in range(2)]
        for child in children:
            child.start()
        reports = [results.get(timeout=60) for _ in children]
        join_all(children)
        pids = sorted(child.pid for child in children if child.pid is not None)
        assert sorted(pid for _, _, pid in reports) == pids
        assert all((namespace, creator) == (ns, False) for namespace, creator, _ in reports)
        got = sorted(rx.recv(timeout=5).tobytes() for _ in children)
        assert got == sorted(f"from {pid}".encode() for pid in pids)
        assert namespace_files(ns)  # the children's closing removed nothing
        rx.close()
    assert namespace_files(ns) == []
    with pytest.raises(sfb.ClosedError):
        pickle.dumps(store)
