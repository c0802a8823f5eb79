"""Surviving preemption: SIGTERM/SIGINT become "finish the step, checkpoint, exit 0" with a hard deadline.

Spot/preemptible TPU and GPU VMs send SIGTERM and give about 30 s before SIGKILL; Ctrl-C sends SIGINT.
Python's default reaction (die at once, or KeyboardInterrupt at an arbitrary bytecode) loses everything since the last
checkpoint. So :class:`PreemptionHandler` only sets a flag; the trainer reads ``.requested`` once per step (a Python
bool, so no device sync on XLA/CUDA), finishes the step, writes a checkpoint and returns 0. A watchdog makes sure the
process still exits within the grace period if that checkpoint hangs, and a second signal aborts at once for a user who
really means it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

__all__ = ["PreemptionHandler"]


class PreemptionHandler:
    """Turns SIGTERM/SIGINT into a polite "checkpoint and exit 0" request with a hard deadline.

    Args:
        grace_seconds: time from the first signal until the watchdog force-exits the process with status 128 + signum
            (the usual "killed by signal" status) if it has not finished by then. Spot VMs give about 30 s; leave a
            margin.
        signals: the signals to handle.

    Usage (main thread)::

        with PreemptionHandler(cfg.train.preempt_grace_seconds) as preempt:
            for step in ...:
                train_step()
                if preempt.requested:
                    save_checkpoint(...)
                    break
        return 0

    A second signal while a request is pending raises ``KeyboardInterrupt`` (``cli_main`` exits 130). Handlers can only
    be installed from the main thread; elsewhere the object is inert (``installed`` is False) and ``requested`` stays
    False.
    """

    def __init__(
        self, grace_seconds: float, signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        if grace_seconds <= 0:
            raise ValueError(f"grace_seconds must be > 0, got {grace_seconds}")
        self.grace_seconds = float(grace_seconds)
        self.requested = False
        self.signal_name: str | None = None
        self._watchdog: threading.Timer | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self.installed = threading.current_thread() is threading.main_thread()
        if self.installed:
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def __enter__(self) -> PreemptionHandler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Cancel the watchdog and restore the previous handlers; call after the final checkpoint is written."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.installed and threading.current_thread() is threading.main_thread():
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
        self._previous.clear()
        self.installed = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            _say(f"{name} again: aborting now without a checkpoint\n")
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = name
        _say(
            f"{name} received: finishing the current step, writing a checkpoint and exiting "
            f"(at most {self.grace_seconds:g} s; send it again to abort at once)\n"
        )
        self._watchdog = threading.Timer(self.grace_seconds, self._expire, args=(signum,))
        self._watchdog.daemon = True
        self._watchdog.start()

    def _expire(self, signum: int) -> None:
        _say(
            f"error: the {self.grace_seconds:g} s grace period after {signal.Signals(signum).name} passed before the "
            "checkpoint was written; exiting without it (the previous checkpoint is intact); raise "
            "train.preempt_grace_seconds if the VM allows, else checkpoint more often\n"
        )
        os._exit(128 + signum)


def _say(text: str) -> None:
    """Write to stderr with one ``os.write``: safe inside a signal handler, where a buffered print could re-enter."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass
