"""The objects a run trains (G, D, G_ema, optimisers, data stream) and the training checkpoint schema.

:class:`TrainingState` builds everything from a :class:`Config` and a runtime, and converts itself to and from the
training checkpoint, which is a generator checkpoint (:data:`biggan.generation.checkpoint.GENERATOR_KEYS`:
``format_version``, ``config`` (resolved), ``model_args``, ``step``, ``G``, ``G_ema``) extended by:

- ``images_seen``, ``best_fid``; ``D``; ``opt_G``, ``opt_D`` (:class:`LeanAdam` states: no ``exp_avg`` at beta1 = 0);
- ``rng`` (every host RNG of the main process), ``attention_rng`` (its SMYRF layer generators), ``data`` (the batch
  stream's position);
- optional ``best_metrics`` (the best value of each lower-is-better metric by its logged name, e.g. ``fid10k``,
  ``kid10k``: what ``fid.best_by`` compares; absent in older files, read as ``{fid name: best_fid}``);
- optional ``augment_rng`` (the main process's DiffAugment generator state; absent in older files, where a resumed
  run seeds it from the step);
- optional ``divergence`` (the rollback count; absent in older files, read as 0) and, from multi-process runs,
  ``process_rng`` (every rank's ``rng`` + ``attention_rng``, so each rank resumes its own streams when the number of
  processes is the same; otherwise ranks >= 1 start fresh streams from the step);
- optional ``class_names`` (class-conditional runs: the data's classes in index order) and ``init_from`` (fine-tuning
  runs: path and sha256 of the pretrained file they started from, :mod:`biggan.training.pretrained`).

:data:`REQUIRED_KEYS` is that list, written down here once; the file store (:mod:`biggan.checkpoint`) knows no keys.
Everything is moved to the CPU and kept to tensors and plain containers, so the file loads with
``torch.load(weights_only=True)`` and ``sample.py`` can rebuild G from it alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from biggan.checkpoint import FORMAT_VERSION, load_checkpoint
from biggan.config import to_dict
from biggan.data import BatchStream, ClassLabels, ImageSource
from biggan.errors import CheckpointError
from biggan.generation.checkpoint import GENERATOR_KEYS
from biggan.models import (
    EMA,
    attention_rng_state,
    build_discriminator,
    build_generator,
    load_attention_rng_state,
    load_state_strict,
)
from biggan.runtime import Runtime
from biggan.training.config import Config
from biggan.training.divergence import DivergenceGuard
from biggan.training.optimizer import LeanAdam
from biggan.training.rng import get_rng_state, seed_everything, set_rng_state

__all__ = ["TrainingState", "REQUIRED_KEYS", "read_checkpoint"]

REQUIRED_KEYS: tuple[str, ...] = (
    *GENERATOR_KEYS, "images_seen", "best_fid", "D", "opt_G", "opt_D", "rng", "data", "attention_rng",
)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, loaded safely (CheckpointError naming the file and the fix when it is not one)."""
    return load_checkpoint(path, required=REQUIRED_KEYS)


def _stream_seed(seed: int, rank: int) -> int:
    """Distinct, reproducible host-RNG seed per process for z and anything else drawn in the step."""
    return seed * 1_000_003 + rank + 1


_AUGMENT_STREAM = 1 << 48  # offsets the augmentation generator's seed: never the same mt19937 stream as z's


def _augment_generator(seed: int, rank: int) -> torch.Generator:
    """This process's DiffAugment parameter generator (its own stream, so augmentation never shifts z)."""
    return torch.Generator().manual_seed(_stream_seed(seed, rank) + _AUGMENT_STREAM)


class TrainingState:
    """G, D (possibly DDP-wrapped), G_ema, optimisers and the data stream, plus progress counters."""

    def __init__(self, cfg: Config, runtime: Runtime) -> None:
        self.cfg, self.runtime = cfg, runtime
        self.stream: Optional[BatchStream] = None  # set by attach_data, after the models (cheap errors first)
        seed_everything(cfg.seed)  # same weights on every process (DDP also broadcasts them from rank 0)
        G, D = build_generator(cfg.model), build_discriminator(cfg.model)
        self.ema = EMA(G, cfg.train.ema_decay, cfg.train.ema_start, buffers=cfg.train.ema_buffers)
        runtime.place_model(self.ema.model)  # never DDP-wrapped; SPMD BatchNorm under SPMD (in place)
        self.G, self.D = runtime.wrap_model(G), runtime.wrap_model(D)
        # LeanAdam: torch's Adam, minus the first-moment buffer that BigGAN's beta1 = 0 leaves unused.
        self.opt_G = LeanAdam(self.G_.parameters(), **self._adam_settings("G"))
        self.opt_D = LeanAdam(self.D_.parameters(), **self._adam_settings("D"))
        self.step = 0  # completed G steps
        self.images_seen = 0  # real images shown to D, over all processes
        self.best_fid: Optional[float] = None
        self.best_metrics: dict[str, float] = {}  # best value per logged metric name (fid10k, kid10k); picks best.pt
        self.guard = DivergenceGuard(cfg.train.max_rollbacks)  # its count is checkpointed and seeds rollback retries
        self.class_names: Optional[list[str]] = None  # set by attach_data for a class-conditional run
        self.init_from: Optional[dict[str, str]] = None  # a fine-tuning run's pretrained file (path, sha256)
        self.augment_rng = _augment_generator(cfg.seed, runtime.rank)  # DiffAugment's draws (unused when it is off)
        self._decorrelate_processes(runtime.rank, salt=0)

    def attach_data(self, dataset: ImageSource, labels: Optional[ClassLabels] = None) -> None:
        """Build this process's batch stream over ``dataset`` (the one place a stream is made; rollbacks re-seed it).

        ``labels``: a class-conditional run's; the stream then yields ``(x, y)``.
        """
        rt = self.runtime
        self.stream = BatchStream(dataset, batch_size=rt.local_batch_size(self.cfg.train.batch_size),
                                  seed=self.guard.data_seed(self.cfg.seed), rank=rt.rank,
                                  world_size=rt.num_data_shards, xflip=self.cfg.data.xflip,
                                  labels=None if labels is None else labels.labels)
        self.class_names = None if labels is None else labels.names

    def reseed(self, seed: int) -> None:
        """Another data order and another z stream from here on (the divergence guard's retry after a rollback)."""
        self.stream = self.stream.reseeded(seed)
        seed_everything(_stream_seed(seed, self.runtime.rank))
        self.augment_rng.set_state(_augment_generator(seed, self.runtime.rank).get_state())

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
        """Give every process its own z stream and, unless the runtime says the hosts share it, its own SMYRF hashing
        stream (the SMYRF run used one seed everywhere).

        Under SPMD (``runtime.hosts_share_model_rng``) the projections are a replicated input: every host keeps rank
        0's generators (the model's seeds, or on resume the restored ones), while z and augmentation, which each host
        feeds for its own rows, stay per host. ``salt`` is the step when a resume cannot restore this process's own
        generators (the checkpoint was written by another number of processes): the other ranks then draw fresh ones
        from that step.
        """
        if rank == 0:
            if salt == 0:
                seed_everything(_stream_seed(self.cfg.seed, rank))
            return  # rank 0 keeps the model's own SMYRF seeds (and on resume its restored generators)
        seed_everything(_stream_seed(self.cfg.seed + salt, rank))
        self.augment_rng.set_state(_augment_generator(self.cfg.seed + salt, rank).get_state())
        if self.runtime.hosts_share_model_rng:
            return
        for net in (self.G_, self.D_):
            states = attention_rng_state(net)
            fresh = {
                name: torch.Generator().manual_seed(_stream_seed(self.cfg.model.smyrf_seed + salt + i, rank)).get_state()
                for i, name in enumerate(sorted(states))
            }
            load_attention_rng_state(net, fresh)

    def process_rng_state(self) -> dict[str, Any]:
        """This process's own random state: host RNGs (z), SMYRF layer generators and the augmentation generator.
        Gathered from every rank into checkpoints, so that a multi-process run resumes bit-identically on the same
        number of processes."""
        return {"rng": get_rng_state(), "attention_rng": {"G": attention_rng_state(self.G_),
                                                           "D": attention_rng_state(self.D_)},
                "augment_rng": self.augment_rng.get_state()}

    def _load_process_rng_state(self, state: dict[str, Any]) -> None:
        set_rng_state(state["rng"])
        load_attention_rng_state(self.G_, state["attention_rng"]["G"])
        load_attention_rng_state(self.D_, state["attention_rng"]["D"])
        if "augment_rng" in state:
            self.augment_rng.set_state(state["augment_rng"])
        else:  # a checkpoint from before augmentation existed: a stream of its own from this step on
            fresh = _augment_generator(self.cfg.seed + int(self.step), self.runtime.rank)
            self.augment_rng.set_state(fresh.get_state())

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
            "best_metrics": dict(self.best_metrics),
            "G": host(self.G_.state_dict()),
            "D": host(self.D_.state_dict()),
            "G_ema": host(self.ema.state_dict()),
            "opt_G": host(self.opt_G.state_dict()),
            "opt_D": host(self.opt_D.state_dict()),
            "data": self.stream.state_dict(),
            **own,  # "rng", "attention_rng" and "augment_rng"
            "divergence": self.guard.state_dict(),
            **extra,
            **({"class_names": self.class_names} if self.class_names is not None else {}),
            **({"init_from": self.init_from} if self.init_from is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any], source: str) -> list[str]:
        """Restore everything from :meth:`state_dict` output; CheckpointError if the architecture differs.

        Returns the optimiser settings (lr, betas, eps) in which the config overrides the checkpoint, for the log.
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
        legacy = {} if self.best_fid is None else {self.cfg.fid.name: self.best_fid}  # written before best_metrics
        self.best_metrics = dict(state.get("best_metrics", legacy))
        if "divergence" in state:  # absent in checkpoints written before the count was saved
            self.guard.load_state_dict(state["divergence"])
        self.init_from = state.get("init_from")
        self.stream = self.stream.reseeded(self.guard.data_seed(self.cfg.seed))
        self.stream.load_state_dict(state["data"])
        rank, saved_ranks = self.runtime.rank, state.get("process_rng", [])
        if len(saved_ranks) == self.runtime.world_size:  # written by as many processes: each continues its own streams
            self._load_process_rng_state(saved_ranks[rank])
        else:  # one process, or another number of them: rank 0 continues the saved streams, the others start afresh
            self._load_process_rng_state(state)
            self._decorrelate_processes(rank, salt=self.step)
        return changed
