"""``run(cfg, runtime)``: the training loop — hot steps, then a periodic tick (stylegan2-ada's structure).

Hot step (every iteration, no host sync): ``num_d_steps`` D updates, each on fresh reals and fresh z; one G update on
fresh z; the EMA update; ``runtime.mark_step()``. The returned statistics are summed on the device.

Tick (every ``log.every`` steps, and whenever samples, FID or a checkpoint are due, at the end, or on preemption):
one ``runtime.reduce_mean`` reads the summed statistics, the finiteness flag, attention gammas and top singular
values; the divergence guard (roll back to the last good checkpoint, re-seeding data order and z by the rollback
count; its count is the ``divergence/rollbacks`` scalar); then the status line, ``stats.jsonl`` and TensorBoard;
fixed-z sample grids of G_ema and G; FID of G_ema; the checkpoint. Only rank 0 writes files.

``config.yaml`` is written only once the models, data, FID weights and any resumed checkpoint were accepted, so a
mistaken command never overwrites the description of an existing run.

Progress is counted in G steps and in real images shown to D (``images_seen``; ``kimg`` in the status line).

``conditioning: class`` trains on the data's labels: each D step sees a real batch with its labels and fakes of the
same labels; the G step, the FID fakes and nothing else draw labels from the data's class frequencies (the label of a
uniformly drawn training image); sample grids have a row per class (up to 8, spread over the classes). An
unconditional run draws no labels at all, so its random streams are exactly those of a run without this code.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

from biggan.checkpoint import find_latest, save_checkpoint
from biggan.data import build_dataset, labels_for_run, model_input
from biggan.generation.classes import class_count, class_grid, grid_classes
from biggan.generation.generate import generate
from biggan.generation.latents import latents_for_seeds
from biggan.images import save_grid, to_uint8
from biggan.models import attention_gammas, orthogonal_regularization, spectral_norm_values
from biggan.runtime import Runtime
from biggan.training.attention_probe import AttentionProbe
from biggan.training.config import Config, dump_config
from biggan.training.augment import DiffAugment
from biggan.training.divergence import FiniteMonitor
from biggan.training.logging import RunLogger, format_status
from biggan.training.losses import LOSSES
from biggan.training.preemption import PreemptionHandler
from biggan.training.pretrained import check_resumed_start, start_from_pretrained
from biggan.training.run_dir import RunDir
from biggan.training.state import TrainingState, read_checkpoint
from biggan.training.steps import StepContext, d_step, g_step

__all__ = ["run"]

_FID_SEED = 2**31 - 1  # FID fakes use their own generator: same z at every evaluation, training RNG untouched
_STANDING_SEED = 2**31 - 2  # z of G_ema's standing BN statistics (ema_buffers: standing): fixed, training RNG untouched
_STANDING_BATCHES = 16  # batches of train.batch_size averaged into them (BigGAN-PyTorch's num_standing_accumulations)


class _Accumulator:
    """Sums of the step's detached device tensors since the last tick (no host sync until :meth:`means`)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, torch.Tensor]:
        return {key: self.sums[key] / self.counts[key] for key in self.sums}


def run(cfg: Config, runtime: Runtime, resume: Optional[str] = None, echo: bool = True,
        init_from: Optional[str] = None) -> int:
    """Train until ``train.total_steps``; resume from ``resume`` or the run's ``latest.pt``, else start fresh or, with
    ``init_from``, from that pretrained generator checkpoint (:mod:`biggan.training.pretrained`). Returns the exit
    status."""
    run_dir = RunDir.for_run(cfg.out_dir, cfg.name)
    if runtime.is_main:
        run_dir.create()  # config.yaml comes later: only after the models, data and checkpoint were accepted
    runtime.barrier()
    logger = RunLogger(run_dir, enabled=runtime.is_main, echo=echo)
    try:
        trainer = _Trainer(cfg, runtime, run_dir, logger)
        try:
            return trainer.train(resume, init_from)
        finally:
            trainer.close()  # the input threads and decode processes: at the end, on errors and on preemption
    finally:
        logger.close()


def _reals(images: torch.Tensor, flip: Optional[torch.Tensor],
           labels: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """A placed host batch (uint8 images, flips, labels) -> the D step's reals (float in [-1, 1]) and labels."""
    return model_input(images, flip), labels  # (B, 3, h, w), (B,) or None


class _Trainer:
    """One run's mutable pieces; methods are the loop, the tick and its parts."""

    def __init__(self, cfg: Config, runtime: Runtime, run_dir: RunDir, logger: RunLogger) -> None:
        self.cfg, self.runtime, self.run_dir, self.log = cfg, runtime, run_dir, logger
        self.state = TrainingState(cfg, runtime)  # builds G and D first: placement errors before any data work
        self.loss_d, self.loss_g = LOSSES[cfg.train.loss]
        self.step_ctx = StepContext(runtime.optimizer_step, runtime.autocast, cfg.train.accumulate, sync=runtime.sync,
                                    batch_shards=runtime.batch_shards)
        n_classes = class_count(cfg.model)
        self.fixed_z, self.fixed_y, self.grid_nrow = self._grid_latents(n_classes)
        self.augment = None if cfg.train.augment == "none" else DiffAugment(
            cfg.train.augment_policy, self.state.augment_rng, place=runtime.shard_batch, host_rows=runtime.host_rows)
        self.fid: Any = None
        # Rank 0 writes the demo dataset and FID reference statistics (if missing) while the others wait, then they
        # read what it wrote; two processes writing the same files would race.
        if not runtime.is_main:
            runtime.barrier()
        dataset = build_dataset(cfg.data, cfg.model.resolution, n_classes)
        labels = None if n_classes is None else labels_for_run(dataset, n_classes, f"data.path {cfg.data.path}")
        self.label_table = None if labels is None else torch.from_numpy(labels.labels)  # (N,) int64
        self.state.attach_data(dataset, labels)
        self.dataset = dataset
        # The step consumes state.stream (replaced on resume and rollback); data.prefetch batches are read ahead.
        self.batches = runtime.device_loader(lambda: self.state.stream, _reals, cfg.data.prefetch)
        if cfg.fid.every:
            from biggan.fid.suite import build_metric_suite

            self.fid = build_metric_suite(cfg.fid, dataset, runtime.device, compute_missing=runtime.is_main,
                                          metric_device=runtime.metric_device)
        if runtime.is_main:
            runtime.barrier()
        self.global_batch = cfg.train.batch_size * runtime.num_devices
        self.probe = None  # SMYRF-vs-dense error of every SMYRF layer each tick, on the main process
        if cfg.log.attention_probe and runtime.is_main:
            label = 0 if cfg.model.conditioning == "class" else None
            self.probe = AttentionProbe(self.state.G_, self.state.D_, cfg.model.dim_z, runtime.device, label) or None

    def _grid_latents(self, n_classes: Optional[int]) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[int]]:
        """Fixed z (seeds 0..) of the sample grids, their labels and images per row: a row per class when there are
        several classes (the same z in every row), else a square grid."""
        num, dim_z = self.cfg.log.num_samples, self.cfg.model.dim_z
        if n_classes is None or n_classes == 1:
            z = latents_for_seeds(list(range(num)), dim_z)  # (n, dim_z)
            return z, None if n_classes is None else torch.zeros(num, dtype=torch.long), None
        classes = grid_classes(n_classes)
        columns = max(1, num // len(classes))
        z, y = class_grid(latents_for_seeds(list(range(columns)), dim_z), classes)  # (rows·columns, dim_z), (…,)
        return z, y, columns

    def _shard_labels(self, y: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if y is None else self.runtime.shard_batch(y)

    def _fake_labels(self, n: int, generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
        """Labels for n fakes with the data's class frequencies (labels of uniformly drawn training images)."""
        if self.label_table is None:
            return None
        return self.label_table[torch.randint(len(self.label_table), (n,), generator=generator)]  # (n,)

    # -- resume -------------------------------------------------------------------------------------------------------

    def _restore(self, path: Path, init_from: Optional[str] = None) -> None:
        """Resume from ``path``; with ``init_from`` only if the run started from that file (checked before anything,
        the log included, is touched)."""
        saved = read_checkpoint(path)
        resuming_start = None if init_from is None else check_resumed_start(saved.get("init_from"), Path(init_from),
                                                                             path)
        changed = self.state.load_state_dict(saved, str(path))
        self._log_restored(path, changed)
        if resuming_start:
            self.log.line(resuming_start)

    def _log_restored(self, path: Path, changed: list[str]) -> None:
        self.log.line(f"resumed from {path} at step {self.state.step} ({self.state.images_seen / 1000:.1f} kimg)")
        if changed:
            self.log.line(f"optimiser settings from the config, not the checkpoint: {', '.join(changed)}")

    def train(self, resume: Optional[str], init_from: Optional[str] = None) -> int:
        cfg, st = self.cfg, self.state
        path = Path(resume) if resume else find_latest(self.run_dir.checkpoints)
        if path is not None:
            self._restore(path, init_from)  # with init_from: the same fine-tuning command again resumes that run
        elif init_from is not None:
            for line in start_from_pretrained(st, Path(init_from)):
                self.log.line(line)
        else:
            self.log.line(f"new run in {self.run_dir.root}: {cfg.train.total_steps} steps, global batch {self.global_batch}")
        resolved = dump_config(cfg)
        if self.runtime.is_main:  # everything was accepted: now this invocation may describe the run
            self.run_dir.write_config(resolved)
        self.log.text("config", resolved, st.step)  # each (re)start: a resumed run may change e.g. total_steps
        if st.step >= cfg.train.total_steps:
            self.log.line(f"already at step {st.step} >= train.total_steps {cfg.train.total_steps}; nothing to do")
            return 0
        show_bar = cfg.log.progress_bar and self.runtime.is_main and sys.stderr.isatty()
        bar = tqdm(total=cfg.train.total_steps, initial=st.step, unit="step", disable=not show_bar, dynamic_ncols=True)
        with PreemptionHandler(cfg.train.preempt_grace_seconds) as preempt:
            status = self._loop(bar, preempt)
        bar.close()
        return status

    # -- the loop -----------------------------------------------------------------------------------------------------

    def _loop(self, bar: tqdm, preempt: PreemptionHandler) -> int:
        cfg, st, rt = self.cfg, self.state, self.runtime
        acc, monitor = _Accumulator(), FiniteMonitor(rt.device)
        tick_start, tick_step, maintenance = time.perf_counter(), st.step, 0.0
        while st.step < cfg.train.total_steps:
            self._step(acc, monitor)
            bar.update(1)
            step = st.step
            # One process reads its own flag every step (a Python bool, no sync); several agree on it at the tick.
            stopping = preempt.requested and rt.world_size == 1
            last = step == cfg.train.total_steps or stopping
            due = {
                "samples": step % cfg.log.sample_every == 0 or last,
                "fid": self.fid is not None and step % cfg.fid.every == 0,
                "ckpt": step % cfg.train.ckpt_every == 0 or last,
            }
            if not (step % cfg.log.every == 0 or any(due.values())):
                continue
            # ---------------------------------------------------------------------------------------------- tick
            now = time.perf_counter()
            stats, finite, preempted = self._read_stats(acc, monitor, preempt.requested)
            stats.update(self._speed_stats(now - tick_start, step - tick_step, maintenance))
            acc, monitor = _Accumulator(), FiniteMonitor(rt.device)
            last_good = None if finite else find_latest(self.run_dir.checkpoints)
            decision = st.guard.check(finite, can_roll_back=last_good is not None)
            stats["divergence/rollbacks"] = float(st.guard.rollbacks)  # cumulative, so every rollback shows as a step
            probe_images = self._probe(stats) if finite and self.probe is not None else {}
            self.log.stats(step, stats)
            for tag, grid in probe_images.items():
                self.log.image(tag, grid, step)
            line = format_status(step, cfg.train.total_steps, stats)
            if bar.disable:
                self.log.line(line)
            else:
                bar.set_postfix_str(f"img/s {stats['speed/img_per_sec']:.1f}", refresh=False)
                bar.write(line)
                self.log.line(line, echo=False)
            if decision == "stop":
                self.log.flush()
                raise st.guard.stop_error(step, can_roll_back=last_good is not None)
            if decision == "rollback":
                self._rollback(step, last_good)
                tick_start, tick_step, maintenance = time.perf_counter(), st.step, 0.0
                continue
            stopping = stopping or preempted
            if due["samples"] or due["fid"] or due["ckpt"] or stopping:
                self._standing_statistics()
            if due["samples"] or stopping:
                self._samples(step)
            best = self._evaluate(step) if due["fid"] else False
            if due["ckpt"] or best or stopping:
                self._checkpoint(step, best)
            self.log.flush()
            tick_start, tick_step = time.perf_counter(), step
            maintenance = tick_start - now
            if stopping and step < cfg.train.total_steps:
                self.log.line(f"stopped by {preempt.signal_name or 'a signal'} at step {step}; "
                              "rerun the same command to resume")
                return 0
        return 0

    def _step(self, acc: _Accumulator, monitor: FiniteMonitor) -> None:
        """One iteration: D steps on fresh reals and z, the G step, EMA. No host sync."""
        cfg, st, rt = self.cfg, self.state, self.runtime
        batch = rt.local_batch_size(cfg.train.batch_size)
        for _ in range(cfg.train.num_d_steps):
            x_real, y_real = self._real_batch()  # (B, 3, h, w), (B,) or None
            z = rt.shard_batch(torch.randn(batch, cfg.model.dim_z))  # (B, dim_z), host RNG: identical on any device
            # The fakes take the real batch's labels: the D step's fake classes follow the data exactly.
            out = d_step(st.G_, st.D, st.opt_D, x_real=x_real, z=z, y=y_real, loss=self.loss_d, ctx=self.step_ctx,
                         augment=self.augment)
            acc.add(out)
            monitor.update(*out.values())
            rt.mark_step()
        z = rt.shard_batch(torch.randn(batch, cfg.model.dim_z))  # (B, dim_z)
        y = self._shard_labels(self._fake_labels(batch))  # (B,) or None; drawn after z: z is the unconditional stream
        regularize = self._ortho_reg if cfg.train.ortho_reg > 0 else None
        out = g_step(st.G, st.D_, st.opt_G, z=z, y=y, loss=self.loss_g, ctx=self.step_ctx, regularize=regularize,
                     augment=self.augment)
        acc.add(out)
        monitor.update(*out.values())
        st.step += 1
        st.images_seen += self.global_batch * cfg.train.num_d_steps
        st.ema.update(st.G_, st.step)
        rt.mark_step()

    def _real_batch(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The next real batch on the device, with its labels in a class-conditional run."""
        return next(self.batches)  # (B, 3, h, w), (B,) or None

    def close(self) -> None:
        """Stop the input pipeline's threads and the dataset's decode processes."""
        self.batches.close()
        self.dataset.close()

    def _ortho_reg(self) -> torch.Tensor:
        """BigGAN's orthogonal regulariser on G's weights, as a loss term."""
        return orthogonal_regularization(self.state.G_, self.cfg.train.ortho_reg)

    # -- tick parts ---------------------------------------------------------------------------------------------------

    def _read_stats(
        self, acc: _Accumulator, monitor: FiniteMonitor, preempt_requested: bool
    ) -> tuple[dict[str, float], bool, bool]:
        """The tick's one host sync: loss means, finiteness, preemption, gammas and top singular values.

        Values are averaged over processes, so every rank takes the same rollback / stop decision.
        """
        st = self.state
        tensors: dict[str, torch.Tensor] = {}
        names = {"D_real": "loss/D_real", "D_fake": "loss/D_fake", "G": "loss/G", "D_out_real": "D_out/real",
                 "D_out_fake": "D_out/fake", "D_grad_norm": "grad_norm/D", "G_grad_norm": "grad_norm/G"}
        for key, value in acc.means().items():
            tensors[names[key]] = value
        tensors["_finite"] = monitor.flag()
        tensors["_preempt"] = torch.tensor(float(preempt_requested))
        for net_name, net in (("G", st.G_), ("D", st.D_)):
            for layer, gamma in attention_gammas(net).items():
                tensors[f"attention_gamma/{net_name}.{layer}"] = gamma.detach()
            for layer, sv in spectral_norm_values(net).items():
                tensors[f"sv/{net_name}.{layer}"] = sv.detach().reshape(-1)[0]
        stats = self.runtime.reduce_mean(tensors)
        finite = stats.pop("_finite") == 1.0
        preempted = stats.pop("_preempt") > 0.0
        stats["loss/D"] = stats["loss/D_real"] + stats["loss/D_fake"]
        stats["lr/G"] = st.opt_G.param_groups[0]["lr"]
        stats["lr/D"] = st.opt_D.param_groups[0]["lr"]
        return stats, finite, preempted

    def _probe(self, stats: dict[str, float]) -> dict[str, torch.Tensor]:
        """The attention probe's scalars into ``stats`` (so stats.jsonl has them too); returns its map grids."""
        scalars, images = self.probe.run()
        stats.update(scalars)
        return images

    def _speed_stats(self, seconds: float, steps: int, maintenance: float) -> dict[str, float]:
        st = self.state
        images = steps * self.global_batch * self.cfg.train.num_d_steps
        peak = self.runtime.peak_memory_bytes()
        return {
            "progress/step": float(st.step),
            "progress/kimg": st.images_seen / 1000.0,
            "speed/sec_per_step": seconds / max(steps, 1),
            "speed/img_per_sec": images / max(seconds, 1e-9),
            "speed/maintenance_sec": maintenance,
            "memory/peak_gib": peak / 2**30,
        }

    def _standing_statistics(self) -> None:
        """``train.ema_buffers: standing``: G_ema's BN statistics from its own activations on fixed z, before the tick
        uses G_ema (grids, FID, checkpoint). Every process computes the same values; no host read."""
        if self.cfg.train.ema_buffers != "standing":
            return
        rt, gen = self.runtime, torch.Generator().manual_seed(_STANDING_SEED)
        batch = rt.local_batch_size(self.cfg.train.batch_size)
        latents = ((rt.shard_batch(torch.randn(batch, self.cfg.model.dim_z, generator=gen)),  # (B, dim_z)
                    self._shard_labels(self._fake_labels(batch, gen)))  # (B,) or None: the data's class frequencies
                   for _ in range(_STANDING_BATCHES))
        self.state.ema.standing_statistics(latents)
        rt.mark_step()

    def _samples(self, step: int) -> None:
        """Fixed-z grids of G_ema and G (eval mode), as PNG files and TensorBoard images."""
        if not self.runtime.is_main:
            return
        batch = self.cfg.train.batch_size
        for tag, net in (("G_ema", self.state.G_ema), ("G", self.state.G_)):
            x = generate(net, self.fixed_z, batch, self.runtime.device, self.fixed_y)  # (n, 3, h, w)
            grid = save_grid(x, self.run_dir.samples / f"{tag}-{step:08d}.png", nrow=self.grid_nrow)
            self.log.image(f"samples/{tag}", grid, step)

    def _evaluate(self, step: int) -> bool:
        """FID (and KID, precision/recall from the same features) of G_ema (eval mode, fixed SMYRF seeds, the same
        fakes' z every time); True if the ``fid.best_by`` metric is at a new best."""
        rt, st = self.runtime, self.state
        gen = torch.Generator().manual_seed(_FID_SEED + rt.rank)
        dim_z, device = self.cfg.model.dim_z, rt.device

        def sample_uint8(n: int) -> torch.Tensor:
            z = torch.randn(n, dim_z, generator=gen)  # (n, dim_z)
            # all classes. Sharded like a training batch (under SPMD every device generates n / devices of the fakes);
            # they stay on the device from G to the extractor (quantised there, no round trip through the host).
            return to_uint8(generate(st.G_ema, z, n, device, self._fake_labels(n, gen), place=rt.shard_batch,
                                     to_host=False))

        start = time.perf_counter()
        values = self.fid(sample_uint8, reduce=rt.reduce_sum_, world_size=rt.metric_shards, rank=rt.rank)
        fid, key = values[self.fid.name], self.fid.best_name
        st.best_fid = fid if st.best_fid is None else min(st.best_fid, fid)
        best = key not in st.best_metrics or values[key] < st.best_metrics[key]
        for name in self.fid.lower_is_better:
            st.best_metrics[name] = min(st.best_metrics.get(name, values[name]), values[name])
        record = {**values, "best": st.best_metrics[key], "best_by": key, "seconds": time.perf_counter() - start,
                  "images_seen": st.images_seen, "network": "G_ema", "bn_mode": "eval", **self.fid.identity,
                  **({"fake_labels": "data class frequencies"} if self.label_table is not None else {})}
        self.log.metric(step, record)
        shown = "  ".join(f"{name} {value:.4g}" for name, value in values.items())
        self.log.line(f"{shown} at step {step} (best {key} {st.best_metrics[key]:.4g})")
        return best

    def _checkpoint(self, step: int, best: bool) -> None:
        process_rng = self.runtime.gather_to_main(self.state.process_rng_state())  # every rank takes part
        if self.runtime.is_main:
            state = self.state.state_dict(process_rng)
            save_checkpoint(state, self.run_dir.checkpoints, step, self.cfg.train.keep_last, best=best)
        self.runtime.barrier()

    def _rollback(self, step: int, path: Path) -> None:
        """Non-finite values in the last tick: reload the last good checkpoint (only finite states are saved).

        The data order and z are then re-seeded by the rollback count, so the retry differs from the diverged attempt.
        """
        st = self.state
        self.log.line(f"non-finite loss or gradient before step {step}: rolling back to {path} "
                      f"(rollback {st.guard.rollbacks}/{st.guard.max_rollbacks}; data order and z re-seeded)")
        self._log_restored(path, st.guard.roll_back(st, read_checkpoint(path), str(path), self.cfg.seed))
