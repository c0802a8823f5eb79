"""Resume restores everything: N steps straight == N/2 steps + resume + N/2 steps, bit for bit on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from biggan.runtime import Runtime
from biggan.training import loop
from biggan.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def make_cfg(tiny_config, tmp_path):
    """``make_cfg(name, steps, *extra)``: tests/conftest.py's tiny config with a short EMA, ticks every 2 steps and 24
    images (6 batches per epoch, so runs of a few steps cross an epoch boundary), in ``tmp_path``."""

    def make(name: str, steps: int, *extra: str):
        return tiny_config(tmp_path, steps, f"name={name}", "data.synthetic_num_images=24", "train.ema_start=1",
                           "train.ema_decay=0.5", "log.every=2", *extra)

    return make


def _train(cfg, resume=None) -> dict:
    assert loop.run(cfg, Runtime.setup(cfg.runtime), resume=resume, echo=False) == 0
    return load_checkpoint(Path(cfg.out_dir) / cfg.name / "checkpoints" / "latest.pt")


def _assert_identical(a, b, where: str = "") -> None:
    """Recursive bitwise equality of nested tensors/containers."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
@pytest.mark.parametrize("augment", [[], ["train.augment=diffaugment", "train.ema_buffers=standing"]],
                         ids=["plain", "diffaugment+standing"])
def test_resume_is_bit_identical(tmp_path, make_cfg, augment):
    # 24 images / batch 4 = 6 batches per epoch, 2 per step: the data order crosses an epoch boundary at step 3.
    straight = _train(make_cfg("straight", 4, *augment))

    half = _train(make_cfg("halves", 2, *augment))
    assert half["step"] == 2
    saved = tmp_path / "half.pt"
    saved.write_bytes((tmp_path / "runs" / "halves" / "checkpoints" / "latest.pt").read_bytes())
    resumed = _train(make_cfg("halves", 4, *augment))  # the same command with more steps: auto-resume from latest.pt
    log = (tmp_path / "runs" / "halves" / "log.txt").read_text()
    assert "resumed from" in log and "at step 2" in log

    assert resumed["step"] == straight["step"] == 4
    assert resumed["images_seen"] == straight["images_seen"] == 4 * 4 * 2
    assert resumed["data"]["epoch"] == 1
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "rng", "data", "attention_rng", "augment_rng"):
        _assert_identical(straight[key], resumed[key], key)
    # Off, the augmentation generator is never drawn from (identity when off); on, it moves and is restored.
    assert torch.equal(half["augment_rng"], straight["augment_rng"]) == (not augment)

    # Explicit --resume PATH into another run directory continues from that file's step, identically.
    explicit = _train(make_cfg("explicit", 4, *augment), resume=str(saved))
    _assert_identical(straight["G_ema"], explicit["G_ema"], "G_ema")
    _assert_identical(straight["opt_D"], explicit["opt_D"], "opt_D")


def test_read_ahead_trains_the_synchronous_batches_and_resumes_at_the_consumed_one(make_cfg):
    """data.prefetch=3 (queue full at every checkpoint) trains and resumes exactly as data.prefetch=0 (read in the
    step): the checkpoint holds the batches the step consumed, not the ones read ahead."""
    flip = "data.xflip=true"
    straight = _train(make_cfg("sync", 4, flip, "data.prefetch=0"))
    assert _train(make_cfg("ahead", 2, flip, "data.prefetch=3"))["data"] == {**straight["data"], "epoch": 0,
                                                                             "position": 4}
    resumed = _train(make_cfg("ahead", 4, flip, "data.prefetch=3"))
    for key in ("G", "D", "G_ema", "opt_D", "data"):
        _assert_identical(straight[key], resumed[key], key)


def test_resume_refuses_another_architecture(make_cfg):
    from biggan.errors import CheckpointError

    _train(make_cfg("arch", 1, "train.ckpt_every=1"))
    with pytest.raises(CheckpointError, match=r"different model config \(model\.G differ"):
        _train(make_cfg("arch", 2, "model.G.ch=16"))


def test_already_finished_run_is_a_no_op(tmp_path, make_cfg):
    _train(make_cfg("done", 1, "train.ckpt_every=1"))
    again = _train(make_cfg("done", 1, "train.ckpt_every=1"))
    assert again["step"] == 1
    assert "nothing to do" in (tmp_path / "runs" / "done" / "log.txt").read_text()


class _SignalAfter:
    """Stand-in for PreemptionHandler whose request arrives after ``n`` step checks (as SIGTERM would)."""

    def __init__(self, n: int):
        self.n, self.reads, self.signal_name = n, 0, "SIGTERM"

    def __call__(self, grace_seconds: float) -> "_SignalAfter":
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    @property
    def requested(self) -> bool:
        self.reads += 1
        return self.reads > self.n


def test_preemption_checkpoints_the_current_step_and_exits_0(tmp_path, make_cfg, monkeypatch):
    monkeypatch.setattr(loop, "PreemptionHandler", _SignalAfter(2))  # set during step 2's tick
    cfg = make_cfg("preempt", 4, "train.ckpt_every=100")
    state = _train(cfg)
    assert state["step"] == 2
    assert "stopped by SIGTERM at step 2" in (tmp_path / "runs" / "preempt" / "log.txt").read_text()
    monkeypatch.undo()
    assert _train(cfg)["step"] == 4  # the same command resumes


def _nan_on_call(k: int):
    """A hinge G loss that returns NaN on its k-th call only (a transient divergence)."""
    from biggan.training.losses import hinge_d, hinge_g

    calls = {"n": 0}

    def loss_g(d_fake):
        calls["n"] += 1
        loss = hinge_g(d_fake)
        return loss * float("nan") if calls["n"] == k else loss

    return {"hinge": (hinge_d, loss_g)}


def test_divergence_rolls_back_to_the_last_good_checkpoint(tmp_path, make_cfg, monkeypatch):
    monkeypatch.setattr(loop, "LOSSES", _nan_on_call(3))
    state = _train(make_cfg("nan", 4, "log.every=1", "train.ckpt_every=2"))
    log = (tmp_path / "runs" / "nan" / "log.txt").read_text()
    assert "rolling back to" in log and "resumed from" in log
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["G"].values() if v.is_floating_point())


def test_divergence_stops_when_no_rollbacks_are_left(make_cfg, monkeypatch):
    from biggan.training.divergence import DivergenceError

    monkeypatch.setattr(loop, "LOSSES", _nan_on_call(1))
    with pytest.raises(DivergenceError, match="non-finite loss or gradient at step 1"):
        _train(make_cfg("nan0", 2, "log.every=1", "train.max_rollbacks=0"))


def test_bf16_accumulation_ortho_reg_step_is_finite(tmp_path, make_cfg):
    state = _train(make_cfg("bf16", 1, "runtime.precision=bf16", "train.ckpt_every=1", "train.accumulate=2",
                            "train.ortho_reg=1e-4"))
    assert state["step"] == 1
    assert all(v.dtype != torch.bfloat16 for v in state["G"].values())  # weights stay fp32 under autocast
    stats = (tmp_path / "runs" / "bf16" / "stats.jsonl").read_text()
    assert "NaN" not in stats and "Infinity" not in stats


def test_nan_before_the_first_checkpoint_is_not_counted_as_a_rollback(make_cfg, monkeypatch):
    from biggan.training.divergence import DivergenceError

    monkeypatch.setattr(loop, "LOSSES", _nan_on_call(1))  # step 1; the first checkpoint would be at step 2
    with pytest.raises(DivergenceError, match="at step 1, before the first checkpoint") as info:
        _train(make_cfg("nan_early", 2, "log.every=1", "train.max_rollbacks=3"))
    assert "rollback(s)" not in str(info.value)


def _nan_when_replayed(first_call: int, trigger: str):
    """A D step whose statistics are NaN at call ``first_call`` and whenever the same ``trigger`` input (the real
    batch, or z) comes back: a divergence caused by particular data or latents, which a replay would hit again."""
    real_d_step, seen = loop.d_step, {"calls": 0, "input": None}

    def d_step(G, D, opt_D, *, x_real, z, **rest):
        seen["calls"] += 1
        out = real_d_step(G, D, opt_D, x_real=x_real, z=z, **rest)
        value = x_real if trigger == "data" else z
        if seen["calls"] == first_call:
            seen["input"] = value.clone()
        if seen["input"] is not None and torch.equal(value, seen["input"]):
            out = {key: v * float("nan") for key, v in out.items()}
        return out

    return d_step


@pytest.mark.parametrize("trigger", ["data", "z"])
def test_rollback_reseeds_data_and_z_so_the_retry_differs(tmp_path, make_cfg, monkeypatch, trigger):
    import json

    monkeypatch.setattr(loop, "d_step", _nan_when_replayed(5, trigger))  # 2 D steps per step: step 3's first
    state = _train(make_cfg("replay", 4, "log.every=1", "train.max_rollbacks=1"))
    assert state["step"] == 4 and state["divergence"] == {"rollbacks": 1}
    run = tmp_path / "runs" / "replay"
    assert "rolling back to" in (run / "log.txt").read_text()
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [(s["step"], s["divergence/rollbacks"]) for s in stats] == [(1, 0), (2, 0), (3, 1), (3, 1), (4, 1)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("divergence/rollbacks")][-3:] == [(3, 1.0), (3, 1.0), (4, 1.0)]

    # The count survives a restart (it seeds the data order, so a resumed run continues the same stream) ...
    monkeypatch.undo()
    assert _train(make_cfg("replay", 6, "train.max_rollbacks=1"))["divergence"] == {"rollbacks": 1}
    # ... and a checkpoint written before the count was saved still resumes, with the count at 0.
    old = load_checkpoint(run / "checkpoints" / "latest.pt")
    del old["divergence"]
    torch.save(old, tmp_path / "old.pt")
    assert _train(make_cfg("old", 7), resume=str(tmp_path / "old.pt"))["divergence"] == {"rollbacks": 0}


@pytest.mark.parametrize("policy", ["copy", "average", "standing"])
def test_ema_buffer_policy_comes_from_the_config(make_cfg, policy):
    """train.ema_buffers decides whether G_ema's BN statistics are G's (copy), an average of them, or G_ema's own
    (standing: re-estimated before the checkpoint is written)."""
    ckpt = _train(make_cfg(f"ema_{policy}", 3, f"train.ema_buffers={policy}", "train.ema_decay=0.9"))
    bn_stats = [k for k in ckpt["G"] if k.endswith("running_mean")]
    assert bn_stats
    same = all(torch.equal(ckpt["G"][k], ckpt["G_ema"][k]) for k in bn_stats)
    assert same == (policy == "copy")


def test_resume_takes_optimizer_settings_from_the_config(make_cfg, tmp_path):
    first = _train(make_cfg("lr", 2))
    assert first["opt_G"]["param_groups"][0]["lr"] == make_cfg("lr", 2).train.lr_g
    assert all(set(s) == {"step", "exp_avg_sq"} for s in first["opt_G"]["state"].values())  # beta1 = 0: no exp_avg
    resumed = _train(make_cfg("lr", 3, "train.lr_g=1e-5", "train.betas=[0.5,0.999]"))
    group = resumed["opt_G"]["param_groups"][0]
    assert group["lr"] == 1e-5 and tuple(group["betas"]) == (0.5, 0.999)
    log = (tmp_path / "runs" / "lr" / "log.txt").read_text()
    assert "optimiser settings from the config, not the checkpoint: " in log
    lr_g = make_cfg("lr", 2).train.lr_g  # the demo config's (5e-05)
    assert "G betas (0.0, 0.999) -> (0.5, 0.999)" in log and f"G lr {lr_g} -> 1e-05" in log and "D lr" not in log


# --- CUDA generator states on another number of GPUs (issue 12 item 3) -----------------------------------------------

def _simulate_gpus(monkeypatch: pytest.MonkeyPatch, count: int, current: int = 0) -> tuple[torch.Generator, ...]:
    """Make torch.cuda look like a machine with ``count`` GPUs, this process on GPU ``current``: torch's own
    get/set_rng_state code runs, against stand-in generators (CPU ones) in ``torch.cuda.default_generators``."""
    import torch.cuda.random as cuda_random

    gens = tuple(torch.Generator().manual_seed(100 + i) for i in range(count))
    for module in (torch.cuda, cuda_random):
        monkeypatch.setattr(module, "is_initialized", lambda: count > 0)
        monkeypatch.setattr(module, "device_count", lambda: count)
        monkeypatch.setattr(module, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "default_generators", gens)
    monkeypatch.setattr(cuda_random, "_lazy_init", lambda: None)
    monkeypatch.setattr(cuda_random, "_lazy_call", lambda callback, **kwargs: callback())  # run at once, as when live
    return gens


def _eight_gpu_states() -> list[torch.Tensor]:
    return [torch.Generator().manual_seed(800 + i).get_state() for i in range(8)]


def test_rng_state_saves_this_process_gpu_only(monkeypatch):
    from biggan.training.rng import get_rng_state

    gens = _simulate_gpus(monkeypatch, 8, current=3)  # rank 3 of an 8-GPU node
    saved = get_rng_state()["cuda"]
    assert isinstance(saved, torch.Tensor) and torch.equal(saved, gens[3].get_state())


@pytest.mark.parametrize("gpus", [0, 1])
def test_rng_state_of_8_gpus_resumes_on_fewer(monkeypatch, gpus):
    """An old checkpoint (one CUDA state per GPU of an 8-GPU node) loads on a machine with one GPU or none."""
    from biggan.training.rng import get_rng_state, set_rng_state

    state = {**get_rng_state(), "cuda": _eight_gpu_states()}  # host states of this machine, CUDA ones of the node
    gens = _simulate_gpus(monkeypatch, gpus)
    set_rng_state(state)  # no IndexError
    if gpus:
        assert torch.equal(gens[0].get_state(), state["cuda"][0])  # this process's GPU (0) gets GPU 0's state


def test_rng_state_of_one_gpu_round_trips_and_skips_without_gpus(monkeypatch):
    from biggan.training.rng import get_rng_state, set_rng_state

    gens = _simulate_gpus(monkeypatch, 2, current=1)
    state = get_rng_state()
    gens[1].manual_seed(7)  # move on, then restore
    set_rng_state(state)
    assert torch.equal(gens[1].get_state(), state["cuda"])
    _simulate_gpus(monkeypatch, 0)
    set_rng_state(state)  # a checkpoint from a GPU run resumes on the CPU
