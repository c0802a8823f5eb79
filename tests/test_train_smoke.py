"""A few steps of the tiny demo config (tests/conftest.py): run directory, TensorBoard events, grids, checkpoints,
FID hook, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from biggan.training.config import describe_run, load_config
from biggan.runtime import Runtime
from biggan.training import loop
from biggan.checkpoint import load_checkpoint
from biggan.training.state import REQUIRED_KEYS

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


SMOKE = ("log.sample_every=2", "fid.every=2")  # over tests/conftest.py's tiny config: grids and FID every 2 steps


class FakeMetrics:
    """Stand-in for biggan.fid.suite.MetricSuite: same interface, no Inception weights. FID improves at every
    evaluation, KID gets worse, so best.pt shows which one ``best_by`` follows."""

    name = "fid8_fake"
    lower_is_better = ["fid8_fake", "kid8_fake"]
    identity = {"extractor": "fake", "ref_stats": "none", "ref_n": 0}

    def __init__(self, best_by: str = "fid") -> None:
        self.calls, self.best_name = 0, f"{best_by}8_fake"

    def __call__(self, sample_uint8, reduce=None, world_size=1, rank=0) -> dict[str, float]:
        self.calls += 1
        images = sample_uint8(8)
        assert images.dtype == torch.uint8 and images.shape == (8, 3, 32, 32)
        return {"fid8_fake": 100.0 / self.calls, "kid8_fake": 0.01 * self.calls, "precision8_fake": 0.5}


def _run_with(fake: FakeMetrics, cfg) -> int:
    import biggan.fid.suite as suite

    original = suite.build_metric_suite
    suite.build_metric_suite = lambda *args, **kwargs: fake
    try:
        return loop.run(cfg, Runtime.setup(cfg.runtime), echo=False)
    finally:
        suite.build_metric_suite = original


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, tiny_config):
    tmp = tmp_path_factory.mktemp("smoke")
    cfg = tiny_config(tmp, 4, *SMOKE)
    fake = FakeMetrics()
    status = _run_with(fake, cfg)
    return cfg, Path(cfg.out_dir) / cfg.name, status, fake


def test_run_directory_layout(smoke_run):
    cfg, run_dir, status, fake = smoke_run
    assert status == 0
    assert load_config(run_dir / "config.yaml") == cfg
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2, 3, 4]
    for key in ("loss/D_real", "loss/D_fake", "loss/G", "D_out/real", "grad_norm/G", "speed/img_per_sec",
                "memory/peak_gib", "lr/G", "attention_gamma/G.attention.32", "sv/G.linear"):
        assert key in stats[-1], key
    assert stats[-1]["progress/kimg"] == pytest.approx(4 * 4 * 2 / 1000)  # steps x batch x D steps
    log = (run_dir / "log.txt").read_text()
    assert "step 4/4" in log and "img/s" in log and "peak_mem" in log
    for step in (2, 4):
        assert (run_dir / "samples" / f"G_ema-{step:08d}.png").is_file()
        assert (run_dir / "samples" / f"G-{step:08d}.png").is_file()


def test_fid_hook_metrics_and_best_checkpoint(smoke_run):
    _, run_dir, _, fake = smoke_run
    assert fake.calls == 2
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4] and metrics[-1]["fid8_fake"] == 50.0
    assert metrics[-1]["kid8_fake"] == 0.02 and metrics[-1]["best_by"] == "fid8_fake" and metrics[-1]["best"] == 50.0
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["step"] == 4 and best["best_fid"] == 50.0
    assert best["best_metrics"] == {"fid8_fake": 50.0, "kid8_fake": 0.01}


def test_best_checkpoint_follows_best_by(tmp_path, tiny_config):
    """fid.best_by=kid: best.pt keeps the step with the lowest KID (step 2 here), although FID kept improving; the
    best values survive a resume."""
    cfg = tiny_config(tmp_path, 4, *SMOKE, "fid.best_by=kid")
    assert _run_with(FakeMetrics("kid"), cfg) == 0
    run_dir = Path(cfg.out_dir) / cfg.name
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["step"] == 2 and best["best_metrics"] == {"fid8_fake": 100.0, "kid8_fake": 0.01}
    latest = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert latest["best_fid"] == 50.0 and latest["best_metrics"] == {"fid8_fake": 50.0, "kid8_fake": 0.01}
    log = (run_dir / "log.txt").read_text()
    assert "fid8_fake 50  kid8_fake 0.02  precision8_fake 0.5 at step 4 (best kid8_fake 0.01)" in log
    again = FakeMetrics("kid")
    again.calls = 5  # KID 0.06 at the next evaluation: worse than the saved best, so best.pt stays at step 2
    assert _run_with(again, tiny_config(tmp_path, 6, *SMOKE, "fid.best_by=kid")) == 0
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["step"] == 2


def test_checkpoint_contents(smoke_run, tiny_config):
    cfg, run_dir, _, _ = smoke_run
    state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")  # weights_only=True inside
    assert set(REQUIRED_KEYS) <= set(state)
    assert state["step"] == 4 and state["images_seen"] == 32
    assert tiny_config(run_dir.parents[1], 4, *SMOKE) == cfg
    assert state["config"]["model"]["G"]["ch"] == 8 and state["model_args"]["resolution"] == 32
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    assert set(state["attention_rng"]["G"]) == {"attention.32"}
    assert state["data"]["position"] > 0
    assert len(list((run_dir / "checkpoints").glob("step-*.pt"))) == 2  # keep_last of the demo config


def test_tensorboard_events_read_back(smoke_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, _, _ = smoke_run
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("loss/D_real", "loss/D_fake", "loss/G", "grad_norm/D", "lr/D", "attention_gamma/G.attention.32",
                "speed/img_per_sec", "memory/peak_gib", "metrics/fid8_fake"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in events.Scalars("loss/G")] == [1, 2, 3, 4]
    assert {"samples/G_ema", "samples/G"} <= set(tags["images"])
    assert any("config" in tag for tag in tags["tensors"])  # add_text is stored as a tensor summary


def test_dry_run_summary():
    cfg = load_config(ROOT / "configs" / "celebahq128_smyrf.yaml", ["model.G.ch=8", "model.D.ch=8"])
    text = describe_run(cfg)
    assert "name: celebahq128_smyrf" in text
    assert "G: after the block with output 128x128" in text and "smyrf H=4 cq=2048 ck=512" in text
    assert "D: no attention" in text and "parameters" in text


def test_cli_bad_override_exits_2_with_one_line():
    result = subprocess.run([sys.executable, "train.py", "train.lr_gg=1", "--dry-run"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        result.stderr.strip()
    ] and "unknown config key 'train.lr_gg'" in result.stderr
