"""Divergence: detecting non-finite values without a sync, deciding, counting, rolling back and re-seeding.

A NaN/inf loss or gradient poisons the weights and every later step. Checking it with ``.item()`` every step would
force a host sync (fatal for XLA throughput), so :class:`FiniteMonitor` ANDs a device-side flag across the steps of a
tick, and the trainer reads it once per tick in the reduction it does anyway. :class:`DivergenceGuard` then owns the
whole policy: roll back to the last good checkpoint at most ``max_rollbacks`` times over the run, then stop with one
clear message (cf. lightweight-gan, which reloads the last checkpoint up to 3 times); the retry runs on another data
order and other latents, derived from the rollback count.

Multi-device: every rank must take the same decision, so the flag is reduced over processes before it is acted on
(a rank that checkpoints or rolls back alone deadlocks the collectives of the others).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import torch

from biggan.errors import UserError

__all__ = ["FiniteMonitor", "DivergenceGuard", "DivergenceError", "Decision"]

Decision = Literal["ok", "rollback", "stop"]


class DivergenceError(UserError):
    """Training produced non-finite values again after the allowed rollbacks (usually too high learning rates)."""


class FiniteMonitor:
    """Device-side "everything was finite" flag, ANDed over the steps of a tick without any host sync.

    Why: ``torch.isfinite(loss).item()`` every step stalls the device pipeline (and cuts the XLA graph). Here each
    update is one more lazy tensor op; the trainer reduces :meth:`flag` with the tick's statistics and starts a new
    monitor for the next tick.
    """

    def __init__(self, device: torch.device | str) -> None:
        self._flag = torch.ones((), dtype=torch.bool, device=torch.device(device))

    def update(self, *tensors: torch.Tensor) -> None:
        """AND in whether every element of ``tensors`` (e.g. the step's losses) is finite."""
        for tensor in tensors:
            self._flag = self._flag & torch.isfinite(tensor.detach()).all()

    def flag(self) -> torch.Tensor:
        """The flag as a 0-d float tensor on the device (1.0 = all finite), e.g. to min-reduce across ranks."""
        return self._flag.float()


class _Restorable(Protocol):
    """What a rollback needs from the training state (:class:`biggan.training.state.TrainingState`)."""

    def load_state_dict(self, state: dict[str, Any], source: str) -> list[str]: ...
    def reseed(self, seed: int) -> None: ...


class DivergenceGuard:
    """Bounded rollback policy for non-finite losses/gradients, checked once per tick.

    Args:
        max_rollbacks: how many times to reload the last good checkpoint before stopping (0 = stop at the first NaN).

    The rollback count is cumulative over the whole run, so a run that keeps diverging eventually stops: checkpoints
    save it (:meth:`state_dict`) and a resumed process keeps counting, but a rollback never restores it from the file
    it rolls back to (that would reset the count and loop forever). The count also seeds the retry
    (:meth:`data_seed`), so a NaN caused by one particular batch or z is not replayed identically.
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

    def data_seed(self, run_seed: int) -> int:
        """The seed of the data order (and, after a rollback, of z) once ``rollbacks`` rollbacks happened.

        Why: a rollback restores the saved RNG and data position, so without a new seed the retry would replay the very
        batches and latents that produced the NaN and burn every rollback on it. Deriving the seed from the count (which
        checkpoints store) keeps a run with rollbacks deterministic and bit-identically resumable. 0 rollbacks ->
        ``run_seed``.
        """
        return run_seed + self.rollbacks * 1_000_000_007

    def roll_back(self, state: _Restorable, checkpoint: dict[str, Any], source: str, run_seed: int) -> list[str]:
        """Restore the last good ``checkpoint`` into ``state``, keep this run's count, re-seed data order and z.

        Returns what ``state.load_state_dict`` returns (the optimiser settings the config overrides), for the log.
        """
        rollbacks = self.rollbacks  # counted by check(); the file holds the count of its own time
        changed = state.load_state_dict(checkpoint, source)
        self.rollbacks = rollbacks
        state.reseed(self.data_seed(run_seed))
        return changed

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
