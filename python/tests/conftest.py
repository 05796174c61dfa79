"""Fixtures: a namespace of its own for every test, and a check that the
test left nothing in /dev/shm."""

import gc
import itertools
import os
from collections.abc import Iterator

import pytest

import stable_fragmented_buffer as sfb

SHM = os.environ.get("SFB_SHM_DIR", "/dev/shm")
_counter = itertools.count()


def namespace_files(ns: str) -> list[str]:
    """The files of namespace `ns` in the shm directory."""
    return sorted(f for f in os.listdir(SHM) if f.startswith(ns + "_"))


@pytest.fixture
def ns() -> Iterator[str]:
    """A fresh namespace name (pid and counter in it). After the test, every
    object it made is collected and the namespace must be gone: files left
    behind fail the test (they are removed first, so the next test starts
    clean)."""
    name = f"sfbpy-{os.getpid()}-{next(_counter)}"
    yield name
    gc.collect()
    left = namespace_files(name)
    if left:
        sfb.cleanup_namespace(name, force=True)
    assert not left, f"the test left files in {SHM}: {left}"
    assert not namespace_files(name)
