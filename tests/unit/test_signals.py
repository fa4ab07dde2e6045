import os
import signal
import subprocess
import sys
import threading
import time

from quorum.signals import StopSignals


def test_a_signal_during_wait_stops_it_promptly():
    with StopSignals((signal.SIGUSR1,)) as stop:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        start = time.monotonic()
        assert stop.wait(5.0)
        assert time.monotonic() - start < 1.0
        assert stop.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_wait_times_out_without_a_signal():
    with StopSignals((signal.SIGUSR1,)) as stop:
        assert not stop.wait(0.05)


def test_simulator_cli_stops_on_sigterm_at_any_moment():
    # regression: a handler that called Event.set() deadlocked against Event.wait()
    for delay in (0.0, 0.13, 0.37, 0.5, 0.71):
        proc = subprocess.Popen(
            [sys.executable, "-m", "quorum.simulator", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        assert "listening on" in proc.stdout.readline()
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
