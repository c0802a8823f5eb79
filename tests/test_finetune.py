"""``train.py --init-from FILE``: a new run from a pretrained generator checkpoint (ours, or imported from
BigGAN-PyTorch), its rerun, and the refusals that keep existing runs intact."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from biggan.checkpoint import load_checkpoint
from biggan.errors import CheckpointError
from biggan.runtime import Runtime
from biggan.training import loop
from biggan.training.pretrained import start_from_pretrained
from biggan.training.state import TrainingState
from tests.biggan_pytorch_files import write_their_file
from tests.bad_inputs.harness import child_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]


def _train(cfg, **kwargs) -> dict:
    assert loop.run(cfg, Runtime.setup(cfg.runtime), echo=False, **kwargs) == 0
    return load_checkpoint(Path(cfg.out_dir) / cfg.name / "checkpoints" / "latest.pt")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tiny_config) -> Path:
    """Our own 2-step run (demo placement: SMYRF at 32 in G, dense at 16 in D) as the pretrained file."""
    tmp = tmp_path_factory.mktemp("pre")
    cfg = tiny_config(tmp, 2, "name=pre")
    _train(cfg)
    keep = tmp / "pretrained.pt"
    shutil.copy(Path(cfg.out_dir) / "pre" / "checkpoints" / "latest.pt", keep)
    return keep


def test_start_loads_G_G_ema_and_D_with_fresh_optimisers(pretrained, tmp_path, tiny_config):
    cfg = tiny_config(tmp_path, 2, "name=ft", "model.G.attention.0.kind=dense", "model.G.attention.0.n_hashes=null",
                      "model.G.attention.0.q_cluster_size=null", "model.G.attention.0.k_cluster_size=null")
    state = TrainingState(cfg, Runtime.setup(cfg.runtime))
    lines = start_from_pretrained(state, pretrained)
    saved = load_checkpoint(pretrained)
    for net, key in ((state.G_, "G"), (state.G_ema, "G_ema"), (state.D_, "D")):
        assert all(torch.equal(v, saved[key][k]) for k, v in net.state_dict().items()), key
    assert state.step == 0 and state.best_fid is None and not state.opt_G.state and not state.opt_D.state
    assert "G, G_ema and D" in lines[0]
    assert any("G attention at 32: smyrf in the file, dense in this run" in line for line in lines)
    assert state.init_from["path"] == str(pretrained) and len(state.init_from["sha256"]) == 64


def test_fine_tuning_run_reruns_and_refusals(pretrained, tmp_path, tiny_config):
    cfg = tiny_config(tmp_path, 2, "name=ft")
    first = _train(cfg, init_from=str(pretrained))
    log = (tmp_path / "runs" / "ft" / "log.txt").read_text()
    assert "fine-tuning from" in log and first["step"] == 2 and first["init_from"]["path"] == str(pretrained)
    # the same command with more steps: the fine-tuning run resumes (the file is not loaded again)
    again = _train(tiny_config(tmp_path, 4, "name=ft"), init_from=str(pretrained))
    assert again["step"] == 4 and "resuming the fine-tuning run" in (tmp_path / "runs" / "ft" / "log.txt").read_text()
    assert again["init_from"] == first["init_from"]

    other = tmp_path / "other.pt"
    saved = load_checkpoint(pretrained)
    saved["step"] = 99  # another file (other content)
    torch.save(saved, other)
    before = sorted((tmp_path / "runs" / "ft" / "checkpoints").iterdir())
    with pytest.raises(CheckpointError, match="started from .* not .*other.pt"):
        _train(tiny_config(tmp_path, 6, "name=ft"), init_from=str(other))
    assert sorted((tmp_path / "runs" / "ft" / "checkpoints").iterdir()) == before
    _train(tiny_config(tmp_path, 1, "name=scratch"))
    with pytest.raises(CheckpointError, match="did not start from --init-from"):
        _train(tiny_config(tmp_path, 2, "name=scratch"), init_from=str(pretrained))
    with pytest.raises(CheckpointError, match=r"model.G.ch 8 vs 16"):
        _train(tiny_config(tmp_path, 1, "name=wide", "model.G.ch=16"), init_from=str(pretrained))


@pytest.mark.slow
def test_imagenet_biggan_to_unlabelled_faces(tmp_path):
    """The README's path at small widths: import a BigGAN-PyTorch G and D (1000 classes stand-in: 5), reduce them to
    one class, fine-tune on unlabelled faces at 128 with SMYRF attention in G where the pretrained G had dense."""
    g = write_their_file(tmp_path / "138k" / "G_ema.pth", "G128")
    d = write_their_file(tmp_path / "138k" / "D.pth", "D128")
    imported = tmp_path / "faces-start.pt"
    convert = subprocess.run([sys.executable, "-m", "biggan.convert", "biggan-pytorch", str(g), "--D", str(d),
                              "--out", str(imported), "--one-class", "mean"], cwd=ROOT, env=child_env(),
                             capture_output=True, text=True, timeout=300)
    assert convert.returncode == 0, convert.stderr
    overrides = [f"out_dir={tmp_path / 'runs'}", f"data.path={tmp_path / 'data'}", "data.synthetic_num_images=8",
                 "model.resolution=128", "model.dim_z=120", "model.conditioning=class", "model.n_classes=1",
                 "model.shared_dim=8", "model.G.ch=8", "model.D.ch=8",
                 "model.G.attention=[{res: 64, kind: smyrf, n_hashes: 2, q_cluster_size: 1024, k_cluster_size: 256}]",
                 "model.D.attention=[{res: 64, kind: dense}]", "train.batch_size=2", "train.total_steps=1",
                 "train.ema_start=0", "log.every=1", "log.num_samples=2", "log.progress_bar=false", "fid.every=0",
                 "runtime.kind=cpu", "name=faces"]
    run = subprocess.run([sys.executable, "train.py", "--init-from", str(imported), *overrides], cwd=ROOT,
                         env=child_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "fine-tuning from" in run.stdout and "G attention at 64: dense in the file, smyrf in this run" in run.stdout
    state = load_checkpoint(tmp_path / "runs" / "faces" / "checkpoints" / "latest.pt")
    assert state["step"] == 1 and state["class_names"] == ["all images"]
    assert state["G"]["shared.weight"].shape == (1, 8)
