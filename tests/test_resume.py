"""Resume restores everything: N steps straight == N/2 steps + resume + N/2 steps, bit for bit on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from biggan.config import load_config
from biggan.runtime import Runtime
from biggan.training import loop
from biggan.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on the shared 2-core CI machine, 2 spinning threads per process run ~30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(tmp: Path, name: str, steps: int, extra: list[str] = ()):
    return load_config(ROOT / "configs" / "demo.yaml", [
        f"name={name}", f"out_dir={tmp / 'runs'}", f"data.path={tmp / 'data'}", "data.synthetic_num_images=24",
        "runtime.kind=cpu", "runtime.threads=1", "model.G.ch=8", "model.D.ch=8", "train.batch_size=4", "train.num_d_steps=2", f"train.total_steps={steps}",
        "train.ckpt_every=2", "train.ema_start=1", "train.ema_decay=0.5", "log.every=2", "log.sample_every=100",
        "log.num_samples=4", "log.progress_bar=false", "fid.every=0", *extra,
    ])


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
def test_resume_is_bit_identical(tmp_path):
    # 24 images / batch 4 = 6 batches per epoch, 2 per step: the data order crosses an epoch boundary at step 3.
    straight = _train(_cfg(tmp_path, "straight", 4))

    half = _train(_cfg(tmp_path, "halves", 2))
    assert half["step"] == 2
    saved = tmp_path / "half.pt"
    saved.write_bytes((tmp_path / "runs" / "halves" / "checkpoints" / "latest.pt").read_bytes())
    resumed = _train(_cfg(tmp_path, "halves", 4))  # the same command with more steps: auto-resume from latest.pt
    log = (tmp_path / "runs" / "halves" / "log.txt").read_text()
    assert "resumed from" in log and "at step 2" in log

    assert resumed["step"] == straight["step"] == 4
    assert resumed["images_seen"] == straight["images_seen"] == 4 * 4 * 2
    assert resumed["data"]["epoch"] == 1
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "rng", "data", "attention_rng"):
        _assert_identical(straight[key], resumed[key], key)

    # Explicit --resume PATH into another run directory continues from that file's step, identically.
    explicit = _train(_cfg(tmp_path, "explicit", 4), resume=str(saved))
    _assert_identical(straight["G_ema"], explicit["G_ema"], "G_ema")
    _assert_identical(straight["opt_D"], explicit["opt_D"], "opt_D")


def test_resume_refuses_another_architecture(tmp_path):
    from biggan.errors import CheckpointError

    _train(_cfg(tmp_path, "arch", 1, ["train.ckpt_every=1"]))
    with pytest.raises(CheckpointError, match=r"different model config \(model\.G differ"):
        _train(_cfg(tmp_path, "arch", 2, ["model.G.ch=16"]))


def test_already_finished_run_is_a_no_op(tmp_path):
    _train(_cfg(tmp_path, "done", 1, ["train.ckpt_every=1"]))
    again = _train(_cfg(tmp_path, "done", 1, ["train.ckpt_every=1"]))
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


def test_preemption_checkpoints_the_current_step_and_exits_0(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "PreemptionHandler", _SignalAfter(2))  # set during step 2's tick
    cfg = _cfg(tmp_path, "preempt", 4, ["train.ckpt_every=100"])
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


def test_divergence_rolls_back_to_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "LOSSES", _nan_on_call(3))
    state = _train(_cfg(tmp_path, "nan", 4, ["log.every=1", "train.ckpt_every=2"]))
    log = (tmp_path / "runs" / "nan" / "log.txt").read_text()
    assert "rolling back to" in log and "resumed from" in log
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["G"].values() if v.is_floating_point())


def test_divergence_stops_when_no_rollbacks_are_left(tmp_path, monkeypatch):
    from biggan.training.resilience import DivergenceError

    monkeypatch.setattr(loop, "LOSSES", _nan_on_call(1))
    with pytest.raises(DivergenceError, match="non-finite loss or gradient at step 1"):
        _train(_cfg(tmp_path, "nan0", 2, ["log.every=1", "train.max_rollbacks=0"]))


def test_bf16_accumulation_ortho_reg_step_is_finite(tmp_path):
    state = _train(_cfg(tmp_path, "bf16", 1, ["runtime.precision=bf16", "train.ckpt_every=1", "train.accumulate=2",
                                              "train.ortho_reg=1e-4"]))
    assert state["step"] == 1
    assert all(v.dtype != torch.bfloat16 for v in state["G"].values())  # weights stay fp32 under autocast
    stats = (tmp_path / "runs" / "bf16" / "stats.jsonl").read_text()
    assert "NaN" not in stats and "Infinity" not in stats
