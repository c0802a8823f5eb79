"""The objects a run trains (G, D, G_ema, optimisers, data stream) and their checkpoint dict.

:class:`TrainingState` builds everything from a :class:`Config` and a runtime, and converts itself to and from the
checkpoint dict described in ``docs/ARCHITECTURE.md`` ("Checkpoints"): state dicts of G, D, G_ema and both Adam
optimisers, step and images seen, best FID, every host RNG, the data stream's position, the SMYRF layer generators,
the resolved config, the model constructor arguments and the divergence guard's rollback count (``divergence``; absent
in older checkpoints, which still load). Everything is moved to the CPU and kept to tensors and plain
containers, so the file loads with ``torch.load(weights_only=True)`` and ``sample.py`` can rebuild G from it alone.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from biggan.config import Config, to_dict
from biggan.errors import CheckpointError
from biggan.models import (
    EMA,
    attention_rng_state,
    build_discriminator,
    build_generator,
    load_attention_rng_state,
)
from biggan.runtime import Runtime
from biggan.training.checkpoint import FORMAT_VERSION, load_state_strict
from biggan.training.optimizer import LeanAdam
from biggan.training.resilience import DivergenceGuard
from biggan.training.rng import get_rng_state, seed_everything, set_rng_state

__all__ = ["TrainingState"]


def _stream_seed(seed: int, rank: int) -> int:
    """Distinct, reproducible host-RNG seed per process for z and anything else drawn in the step."""
    return seed * 1_000_003 + rank + 1


def rollback_seed(seed: int, rollbacks: int) -> int:
    """The run seed after ``rollbacks`` divergence rollbacks: seeds the data order and (on a rollback) z.

    Why: a rollback restores the saved RNG and data position, so without a new seed the retry would replay the very
    batches and latents that produced the NaN and burn every rollback on it. Deriving the seed from the count (which
    checkpoints store) keeps a run with rollbacks deterministic and bit-identically resumable. 0 rollbacks -> ``seed``.
    """
    return seed + rollbacks * 1_000_000_007


def _reseeded(stream: Any, seed: int) -> Any:
    """The same stream (dataset, batch layout, position unset) with another data-order seed."""
    if stream.seed == seed:
        return stream
    return type(stream)(stream.dataset, batch_size=stream.batch_size, seed=seed, rank=stream.rank,
                        world_size=stream.world_size, xflip=stream.xflip)


class TrainingState:
    """G, D (possibly DDP-wrapped), G_ema, optimisers and the data stream, plus progress counters."""

    def __init__(self, cfg: Config, runtime: Runtime) -> None:
        self.cfg, self.runtime = cfg, runtime
        self.stream: Any = None  # the BatchStream; set by the loop after the models are built (cheap errors first)
        seed_everything(cfg.seed)  # same weights on every process (DDP also broadcasts them from rank 0)
        G, D = build_generator(cfg.model), build_discriminator(cfg.model)
        self.ema = EMA(G, cfg.train.ema_decay, cfg.train.ema_start, buffers=cfg.train.ema_buffers)
        self.ema.model.to(runtime.device)
        self.G, self.D = runtime.wrap_model(G), runtime.wrap_model(D)
        # LeanAdam: torch's Adam, minus the first-moment buffer that BigGAN's beta1 = 0 leaves unused.
        self.opt_G = LeanAdam(self.G_.parameters(), **self._adam_settings("G"))
        self.opt_D = LeanAdam(self.D_.parameters(), **self._adam_settings("D"))
        self.step = 0  # completed G steps
        self.images_seen = 0  # real images shown to D, over all processes
        self.best_fid: Optional[float] = None
        self.guard = DivergenceGuard(cfg.train.max_rollbacks)  # its count is checkpointed and seeds rollback retries
        self._decorrelate_processes(runtime.rank, salt=0)

    def _adam_settings(self, net: str) -> dict[str, Any]:
        train = self.cfg.train
        return {"lr": train.lr_g if net == "G" else train.lr_d, "betas": tuple(train.betas), "eps": train.adam_eps}

    def _apply_adam_settings(self) -> list[str]:
        """Put the config's lr/betas/eps back after loading optimiser states (which carry the checkpoint's): a resume
        with e.g. a lower ``train.lr_g`` then trains with it. Returns the settings that changed, for the log."""
        changed = []
        for net, opt in (("G", self.opt_G), ("D", self.opt_D)):
            for key, value in self._adam_settings(net).items():
                for group in opt.param_groups:
                    if group[key] != value:
                        changed.append(f"{net} {key} {group[key]} -> {value}")
                        group[key] = value
        return sorted(set(changed))

    @property
    def G_(self) -> nn.Module:
        """G without its DDP wrapper."""
        return self.runtime.unwrap(self.G)

    @property
    def D_(self) -> nn.Module:
        """D without its DDP wrapper."""
        return self.runtime.unwrap(self.D)

    @property
    def G_ema(self) -> nn.Module:
        return self.ema.model

    def _decorrelate_processes(self, rank: int, salt: int) -> None:
        """Give every process its own z stream and SMYRF hashing stream (the SMYRF run used one seed everywhere).

        ``salt`` is the step when a resume cannot restore this process's own generators (the checkpoint was written by
        another number of processes): the other ranks then draw fresh ones from that step.
        """
        if rank == 0:
            if salt == 0:
                seed_everything(_stream_seed(self.cfg.seed, rank))
            return  # rank 0 keeps the model's own SMYRF seeds (and on resume its restored generators)
        seed_everything(_stream_seed(self.cfg.seed + salt, rank))
        for net in (self.G_, self.D_):
            states = attention_rng_state(net)
            fresh = {
                name: torch.Generator().manual_seed(_stream_seed(self.cfg.model.smyrf_seed + salt + i, rank)).get_state()
                for i, name in enumerate(sorted(states))
            }
            load_attention_rng_state(net, fresh)

    def process_rng_state(self) -> dict[str, Any]:
        """This process's own random state: host RNGs (z) and SMYRF layer generators. Gathered from every rank into
        checkpoints, so that a multi-process run resumes bit-identically on the same number of processes."""
        return {"rng": get_rng_state(), "attention_rng": {"G": attention_rng_state(self.G_),
                                                           "D": attention_rng_state(self.D_)}}

    def _load_process_rng_state(self, state: dict[str, Any]) -> None:
        set_rng_state(state["rng"])
        load_attention_rng_state(self.G_, state["attention_rng"]["G"])
        load_attention_rng_state(self.D_, state["attention_rng"]["D"])

    # -- checkpoint dict --------------------------------------------------------------------------------------------

    def state_dict(self, process_rng: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
        """The full training state, on the CPU, as tensors and plain containers only.

        ``process_rng``: :meth:`process_rng_state` of every rank (``runtime.gather_to_main``); kept when there are
        several. ``rng`` and ``attention_rng`` are always this (the main) process's.
        """
        host = self.runtime.to_host
        own = process_rng[0] if process_rng else self.process_rng_state()  # gathered a moment ago: not drawn again
        extra = {"process_rng": process_rng} if process_rng is not None and len(process_rng) > 1 else {}
        return {
            "format_version": FORMAT_VERSION,
            "config": to_dict(self.cfg),
            "model_args": to_dict(self.cfg.model),
            "step": self.step,
            "images_seen": self.images_seen,
            "best_fid": self.best_fid,
            "G": host(self.G_.state_dict()),
            "D": host(self.D_.state_dict()),
            "G_ema": host(self.ema.state_dict()),
            "opt_G": host(self.opt_G.state_dict()),
            "opt_D": host(self.opt_D.state_dict()),
            "data": self.stream.state_dict(),
            **own,  # "rng" and "attention_rng"
            "divergence": self.guard.state_dict(),
            **extra,
        }

    def load_state_dict(self, state: dict[str, Any], source: str, rollback: bool = False) -> list[str]:
        """Restore everything from :meth:`state_dict` output; CheckpointError if the architecture differs.

        Returns the optimiser settings (lr, betas, eps) in which the config overrides the checkpoint, for the log.

        ``rollback``: a divergence rollback, not a resume. The guard keeps its (already incremented) count instead of
        the file's, and the data order and z/host RNGs are re-seeded by that count (:func:`rollback_seed`), so the retry
        sees other batches and latents from the restored position on.
        """
        saved_model = state["model_args"]
        if saved_model != to_dict(self.cfg.model):
            changed = sorted(k for k in to_dict(self.cfg.model) if saved_model.get(k) != to_dict(self.cfg.model)[k])
            raise CheckpointError(
                f"{source} was trained with a different model config (model.{', model.'.join(changed)} differ); "
                "use the same model settings to resume, or another run name (name=...) to start afresh"
            )
        load_state_strict(self.G_, state["G"], f"G in {source}")
        load_state_strict(self.D_, state["D"], f"D in {source}")
        load_state_strict(self.ema.model, state["G_ema"], f"G_ema in {source}")
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        changed = self._apply_adam_settings()
        self.step, self.images_seen, self.best_fid = int(state["step"]), int(state["images_seen"]), state["best_fid"]
        if not rollback and "divergence" in state:  # absent in checkpoints written before the count was saved
            self.guard.load_state_dict(state["divergence"])
        self.stream = _reseeded(self.stream, rollback_seed(self.cfg.seed, self.guard.rollbacks))
        self.stream.load_state_dict(state["data"])
        rank, saved_ranks = self.runtime.rank, state.get("process_rng", [])
        if len(saved_ranks) == self.runtime.world_size:  # written by as many processes: each continues its own streams
            self._load_process_rng_state(saved_ranks[rank])
        else:  # one process, or another number of them: rank 0 continues the saved streams, the others start afresh
            self._load_process_rng_state(state)
            self._decorrelate_processes(rank, salt=self.step)
        if rollback:
            seed_everything(_stream_seed(rollback_seed(self.cfg.seed, self.guard.rollbacks), self.runtime.rank))
        return changed
