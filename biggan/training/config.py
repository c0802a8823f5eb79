"""The run configuration: training and logging sections, and the root :class:`Config` that composes every part's.

Defaults follow the SMYRF CelebA-HQ run and the BigGAN paper (lr G 5e-5 / D 2e-4, Adam betas (0, 0.999), eps 1e-6,
2 D steps per G step, hinge loss). Every field is used by :mod:`biggan.training.loop`; there are no dead knobs.

YAML files hold only the deltas over these defaults; ``key.sub=value`` command-line overrides are YAML scalars checked
against the field types by the one loader, :mod:`biggan.config`. The resolved config is written to the run directory,
to TensorBoard and into every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from biggan.config import Section, apply_overrides, dump_yaml, from_dict, number, read_yaml, to_dict
from biggan.data.config import DataConfig
from biggan.errors import ConfigError
from biggan.fid.config import FIDConfig
from biggan.models import ModelConfig, build_discriminator, build_generator, count_parameters, describe_attention
from biggan.runtime.config import RuntimeConfig
from biggan.training.augment import OPS

__all__ = ["TrainConfig", "LogConfig", "Config", "load_config", "dump_config", "describe_run"]


@dataclass
class TrainConfig(Section):
    """How G and D are optimised."""

    where = "train"

    total_steps: int = number(100_000, ge=1)  # G steps to train for; one step = num_d_steps D updates + one G update
    batch_size: int = number(32, ge=1)  # images per device per D step (and per G step), after accumulation
    accumulate: int = number(1, ge=1)  # micro-batches per update; batch_size must divide by it (memory knob, same maths)
    num_d_steps: int = number(2, ge=1)  # D updates per G update, each on fresh reals and fresh z
    loss: Literal["hinge", "ns"] = "hinge"  # hinge (BigGAN) or non-saturating logistic
    lr_g: float = number(5e-5, gt=0)  # TTUR: G learns 4x slower than D
    lr_d: float = number(2e-4, gt=0)
    betas: tuple[float, float] = number((0.0, 0.999), ge=0, lt=1)  # Adam betas for both networks
    adam_eps: float = number(1e-6, gt=0)  # BigGAN launch scripts use 1e-6 (parser default 1e-8)
    ema_decay: float = number(0.9999, ge=0, lt=1)  # G_ema <- decay * G_ema + (1 - decay) * G, per G step
    ema_start: int = number(0, ge=0)  # before this step G_ema is a copy of G (decay 0)
    ema_buffers: Literal["copy", "average", "standing"] = "copy"  # G_ema's BN running stats and SN u/sv: copied
    # from G (stylegan2-ada), averaged like the weights (BigGAN-PyTorch lerps the whole state_dict), or copied and BN
    # re-estimated from G_ema's own activations before each grid, FID and checkpoint (BigGAN's standing statistics)
    ortho_reg: float = number(0.0, ge=0)  # beta of BigGAN's modified orthogonal regulariser on G (0 = off, as released)
    ckpt_every: int = number(1000, ge=1)  # full training-state checkpoint every this many steps (and at the end / on
    # preemption)
    keep_last: int = number(3, ge=1)  # step checkpoints kept (latest.pt and best.pt come on top)
    preempt_grace_seconds: float = number(25.0, gt=0)  # after SIGTERM/SIGINT: finish the step, checkpoint, exit 0 in time
    max_rollbacks: int = number(3, ge=0)  # non-finite loss/grad at a tick: reload the last good checkpoint at most this
    # often, then stop
    augment: Literal["none", "diffaugment"] = "none"  # DiffAugment: D sees augmented reals and fakes, in the D and
    # the G step (biggan/training/augment.py)
    augment_policy: list[Literal["color", "translation", "cutout"]] = field(default_factory=lambda: list(OPS))
    # DiffAugment's ops in the order applied (the paper's full policy by default); only with augment: diffaugment

    def check(self, where: str) -> None:
        if self.batch_size % self.accumulate:
            raise ConfigError(f"{where}.batch_size ({self.batch_size}) must be divisible by {where}.accumulate "
                              f"({self.accumulate})")
        if not self.augment_policy or len(set(self.augment_policy)) != len(self.augment_policy):
            raise ConfigError(f"{where}.augment_policy must list distinct ops from {list(OPS)}, "
                              f"got {self.augment_policy}")
        if self.augment == "none" and self.augment_policy != list(OPS):
            raise ConfigError(f"{where}.augment_policy is set but {where}.augment is none, so it would do nothing; "
                              f"set {where}.augment=diffaugment or drop {where}.augment_policy")


@dataclass
class LogConfig(Section):
    """What the periodic tick does and how often (all intervals in G steps)."""

    where = "log"

    every: int = number(100, ge=1)  # tick: status line, stats.jsonl, TensorBoard scalars
    sample_every: int = number(1000, ge=1)  # fixed-z sample grids of G_ema and G (PNG + TensorBoard)
    num_samples: int = number(64, ge=1)  # images in each fixed-z grid
    progress_bar: bool = True  # tqdm bar (only shown on a TTY)
    attention_probe: bool = True  # each tick: every SMYRF layer's error against dense attention on one sample, and
    # its attention maps, in TensorBoard (biggan/training/attention_probe.py; no cost in the training step)


@dataclass
class Config(Section):
    """Everything a run needs; resolved, it is written to the run directory and into every checkpoint."""

    name: str = "demo"  # run name: the run directory is <out_dir>/<name>
    seed: int = number(0, ge=0)  # seeds weights, z, data order and SMYRF hashing (each rank derives its own streams)
    out_dir: str = "runs"  # parent of run directories
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    fid: FIDConfig = field(default_factory=FIDConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def check(self, where: str) -> None:
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"name must be a plain directory name, got {self.name!r}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file (deltas) <- ``key.sub=value`` overrides, checked strictly when built."""
    cfg = from_dict(Config, read_yaml(Path(path)) if path is not None else {})
    if overrides:
        cfg = from_dict(Config, apply_overrides(to_dict(cfg), list(overrides)))
    return cfg


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (field order kept), loadable by :func:`load_config`."""
    return dump_yaml(cfg)


def describe_run(cfg: Config) -> str:
    """What ``train.py --dry-run`` prints: the resolved config (YAML), parameter counts and attention placement.

    Building the networks runs every placement and cluster-size check, so a dry run catches a bad config in seconds
    instead of after the dataset and FID statistics are prepared.
    """
    G, D = build_generator(cfg.model), build_discriminator(cfg.model)
    lines = [
        dump_config(cfg).rstrip(),
        "",
        f"# G: {count_parameters(G) / 1e6:.2f}M parameters, D: {count_parameters(D) / 1e6:.2f}M parameters",
        "# attention placement:",
        *("#" + line[1:] for line in describe_attention(G, "G") + describe_attention(D, "D")),
        f"# run directory: {cfg.out_dir}/{cfg.name}",
    ]
    return "\n".join(lines)
