"""Ctrl-C interrupts a blocked recv: a real process blocked in recv is sent
SIGINT and must raise KeyboardInterrupt promptly."""

import signal
import subprocess
import sys
import time

import stable_fragmented_buffer as sfb

CHILD = r"""
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
import stable_fragmented_buffer as sfb
store = sfb.Store.create(sys.argv[1], chunk_size=1 << 16)
rx = store.subscriber("idle")
tx = store.publisher("idle")  # alive: recv waits instead of reporting disconnection
print("waiting", flush=True)
t0 = time.monotonic()
try:
    rx.recv()
    print("received?!", flush=True)
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - t0:.3f}", flush=True)
tx.close()
rx.close()
store.close()
"""


def test_ctrl_c_interrupts_a_blocked_recv(ns: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, ns],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "waiting"
        time.sleep(0.5)  # well into the blocking wait
        t0 = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=10)
        latency = time.monotonic() - t0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
            sfb.cleanup_namespace(ns, force=True)
    assert child.returncode == 0, err
    assert out.startswith("interrupted after"), (out, err)
    assert latency < 2.0, latency
