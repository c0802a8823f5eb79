"""Training and logging configuration (the ``train:`` and ``log:`` sections of a run config).

Defaults follow the SMYRF CelebA-HQ run and the BigGAN paper (lr G 5e-5 / D 2e-4, Adam betas (0, 0.999), eps 1e-6,
2 D steps per G step, hinge loss). Every field is used by :mod:`biggan.training.loop`; there are no dead knobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from biggan.errors import ConfigError

__all__ = ["TrainConfig", "LogConfig"]


@dataclass
class TrainConfig:
    """How G and D are optimised."""

    total_steps: int = 100_000  # G steps to train for; one step = num_d_steps D updates + one G update
    batch_size: int = 32  # images per device per D step (and per G step), after accumulation
    accumulate: int = 1  # micro-batches per update; batch_size must divide by it (memory knob, same maths)
    num_d_steps: int = 2  # D updates per G update, each on fresh reals and fresh z
    loss: Literal["hinge", "ns"] = "hinge"  # hinge (BigGAN) or non-saturating logistic
    lr_g: float = 5e-5  # TTUR: G learns 4x slower than D
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.999)  # Adam betas for both networks
    adam_eps: float = 1e-6  # BigGAN launch scripts use 1e-6 (parser default 1e-8)
    ema_decay: float = 0.9999  # G_ema <- decay * G_ema + (1 - decay) * G, per G step
    ema_start: int = 0  # before this step G_ema is a copy of G (decay 0)
    ema_buffers: Literal["copy", "average"] = "copy"  # G_ema's BN running stats and SN u/sv: copied from G
    # (stylegan2-ada) or averaged like the weights (BigGAN-PyTorch lerps the whole state_dict)
    ortho_reg: float = 0.0  # beta of BigGAN's modified orthogonal regulariser on G (0 = off, as in released runs)
    ckpt_every: int = 1000  # full training-state checkpoint every this many steps (and at the end / on preemption)
    keep_last: int = 3  # step checkpoints kept (latest.pt and best.pt come on top)
    preempt_grace_seconds: float = 25.0  # after SIGTERM/SIGINT: finish the step, checkpoint, exit 0 within this time
    max_rollbacks: int = 3  # non-finite loss/grad at a tick: reload the last good checkpoint at most this often, then stop

    def validate(self) -> None:
        """Reject values the loop cannot run with."""
        for key in ("total_steps", "batch_size", "accumulate", "num_d_steps", "ckpt_every", "keep_last"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.batch_size % self.accumulate:
            raise ConfigError(
                f"train.batch_size ({self.batch_size}) must be divisible by train.accumulate ({self.accumulate})"
            )
        if self.lr_g <= 0 or self.lr_d <= 0:
            raise ConfigError(f"train.lr_g and train.lr_d must be > 0, got {self.lr_g} and {self.lr_d}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.preempt_grace_seconds <= 0 or self.max_rollbacks < 0:
            raise ConfigError(
                f"train.preempt_grace_seconds must be > 0 and train.max_rollbacks >= 0, "
                f"got {self.preempt_grace_seconds} and {self.max_rollbacks}"
            )
        if self.ortho_reg < 0:
            raise ConfigError(f"train.ortho_reg must be >= 0, got {self.ortho_reg}")


@dataclass
class LogConfig:
    """What the periodic tick does and how often (all intervals in G steps)."""

    every: int = 100  # tick: status line, stats.jsonl, TensorBoard scalars
    sample_every: int = 1000  # fixed-z sample grids of G_ema and G (PNG + TensorBoard)
    num_samples: int = 64  # images in each fixed-z grid
    progress_bar: bool = True  # tqdm bar (only shown on a TTY)

    def validate(self) -> None:
        """Intervals must be positive; grids need at least one image."""
        for key in ("every", "sample_every", "num_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"log.{key} must be >= 1, got {getattr(self, key)}")
