"""Surviving preemption and divergence: signal handling, a bounded rollback guard and a sync-free finiteness monitor.

Preemption: spot/preemptible TPU and GPU VMs send SIGTERM and give about 30 s before SIGKILL; Ctrl-C sends SIGINT.
Python's default reaction (die at once, or KeyboardInterrupt at an arbitrary bytecode) loses everything since the last
checkpoint. So :class:`PreemptionHandler` only sets a flag; the trainer reads ``.requested`` once per step (a Python
bool, so no device sync on XLA/CUDA), finishes the step, writes a checkpoint and returns 0. A watchdog makes sure the
process still exits within the grace period if that checkpoint hangs, and a second signal aborts at once for a user who
really means it.

Divergence: a NaN/inf loss or gradient poisons the weights and every later step. Checking it with ``.item()`` every step
would force a host sync (fatal for XLA throughput), so :class:`FiniteMonitor` ANDs a device-side flag across the steps
of a tick and the trainer reads it once per tick, where it syncs anyway. :class:`DivergenceGuard` then decides: roll
back to the last good checkpoint, at most ``max_rollbacks`` times, then stop with a clear message (cf. lightweight-gan,
which reloads the last checkpoint up to 3 times).

Multi-device: every rank must take the same decision, so reduce the flags before acting on them (e.g. ``min`` of the
finite flag, ``max`` of ``requested`` at the tick); a rank that checkpoints alone deadlocks the collectives of the
others.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterable
from types import FrameType
from typing import Any, Literal

import torch

from biggan.errors import UserError

__all__ = ["PreemptionHandler", "DivergenceGuard", "DivergenceError", "FiniteMonitor", "Decision"]

Decision = Literal["ok", "rollback", "stop"]


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
        self._deadline: float | None = None
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

    def remaining_seconds(self) -> float | None:
        """Seconds left of the grace period, or None when no signal arrived (lets the trainer skip a long FID eval)."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

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
        self._deadline = time.monotonic() + self.grace_seconds
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


class DivergenceError(UserError):
    """Training produced non-finite values again after the allowed rollbacks (usually too high learning rates)."""


class DivergenceGuard:
    """Bounded rollback policy for non-finite losses/gradients, checked once per tick.

    Args:
        max_rollbacks: how many times to reload the last good checkpoint before stopping (0 = stop at the first NaN).

    The rollback count is deliberately cumulative over the whole run: a run that keeps diverging must eventually stop.
    Save ``state_dict()`` in checkpoints so that a restarted process keeps counting, but do NOT restore it when rolling
    back (that would reset the count and loop forever). The count also seeds the retry (see
    :meth:`TrainingState.load_state_dict`), so a NaN caused by one particular batch or z is not replayed identically.
    """

    def __init__(self, max_rollbacks: int) -> None:
        if max_rollbacks < 0:
            raise ValueError(f"max_rollbacks must be >= 0, got {max_rollbacks}")
        self.max_rollbacks = max_rollbacks
        self.rollbacks = 0

    def check(self, all_finite: bool, can_roll_back: bool = True) -> Decision:
        """``"ok"`` when finite; otherwise ``"rollback"`` while rollbacks remain (and counts it), else ``"stop"``.

        ``can_roll_back`` is False when no checkpoint exists yet: that stop is not counted as a rollback.
        """
        if all_finite:
            return "ok"
        if can_roll_back and self.rollbacks < self.max_rollbacks:
            self.rollbacks += 1
            return "rollback"
        return "stop"

    def stop_error(self, step: int, can_roll_back: bool = True) -> DivergenceError:
        """The one-line error to raise on ``"stop"`` (``can_roll_back`` as passed to :meth:`check`)."""
        fix = "lower the learning rates or use fp32 instead of mixed precision"
        if not can_roll_back:
            return DivergenceError(
                f"training diverged: non-finite loss or gradient at step {step}, before the first checkpoint (nothing "
                f"to roll back to); {fix}, then rerun"
            )
        return DivergenceError(
            f"training diverged: non-finite loss or gradient at step {step} after {self.rollbacks} rollback(s) to the "
            f"last good checkpoint; {fix}, then resume"
        )

    def state_dict(self) -> dict[str, int]:
        return {"rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.rollbacks = int(state["rollbacks"])


class FiniteMonitor:
    """Device-side "everything was finite" flag, ANDed over the steps of a tick without any host sync.

    Why: ``torch.isfinite(loss).item()`` every step stalls the device pipeline (and cuts the XLA graph). Here each
    update is one more lazy tensor op; the trainer reads the flag with :meth:`read_and_reset` at the tick, where it
    syncs anyway.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._flag = torch.ones((), dtype=torch.bool, device=self.device)

    def update(self, *tensors: torch.Tensor) -> None:
        """AND in whether every element of ``tensors`` (e.g. the step's losses) is finite."""
        for tensor in tensors:
            self._flag = self._flag & torch.isfinite(tensor.detach()).all()

    def flag(self) -> torch.Tensor:
        """The flag as a 0-d float tensor on the device (1.0 = all finite), e.g. to min-reduce across ranks."""
        return self._flag.float()

    def read_and_reset(self) -> bool:
        """Read the flag on the host (one sync) and start a new tick."""
        value = bool(self._flag.item())
        self._flag = torch.ones((), dtype=torch.bool, device=self.device)
        return value
