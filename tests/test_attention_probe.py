"""The attention probe (its numbers, maps and no side effects), the summary setting of a layer, the probe in the
training tick, and sample.py --compare-attention."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from biggan.errors import ConfigError
from biggan.models import AttentionConfig, SelfAttention2d, attention_gammas, build_discriminator, build_generator
from biggan.models.attention_error import QUERY_PIXELS, layer_error
from biggan.training.attention_probe import AttentionProbe
from smyrf import dense_attention

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _layer(**spec) -> SelfAttention2d:
    spec = AttentionConfig(res=8, kind="smyrf", **spec)
    layer = SelfAttention2d(16, spec, eval_seed=1, train_seed=2, sn_iters=1, sn_eps=1e-6, where="test").eval()
    with torch.no_grad():
        layer.gamma.fill_(1.0)
    return layer


def test_layer_error_matches_a_direct_computation():
    layer, x = _layer(n_hashes=2, q_cluster_size=16, k_cluster_size=4), torch.randn(2, 16, 8, 8)
    result = layer_error(layer, x)
    with torch.no_grad():
        q, k, v = layer.qkv(x[:1])
        exact = dense_attention(q, k, v, scale=1.0)
        err = ((layer.attend(q, k, v) - exact).norm() / exact.norm()).item()
    assert result["rel_error"] == pytest.approx(err, rel=1e-5)
    assert 0.0 < result["mass"] < 1.0
    assert result["maps"].shape == (len(QUERY_PIXELS), 3, 3, 8, 8)  # queries, dense + 2 rounds, RGB, h, w
    assert result["maps"].min() >= 0 and result["maps"].max() <= 1


def test_one_cluster_has_no_error_and_catches_all_mass():
    result = layer_error(_layer(n_hashes=1, q_cluster_size=64, k_cluster_size=16), torch.randn(1, 16, 8, 8))
    assert result["rel_error"] < 1e-6 and result["mass"] == pytest.approx(1.0, abs=1e-6)


def test_summary_is_a_layer_setting_that_acts_and_dense_rejects_it():
    x = torch.randn(2, 16, 8, 8)
    layer = _layer(n_hashes=2, q_cluster_size=16, k_cluster_size=4, summary="taylor")
    with torch.no_grad():
        taylor = layer(x)
        layer.configure(AttentionConfig(res=8, kind="smyrf", n_hashes=2, q_cluster_size=16, k_cluster_size=4))
        paper = layer(x)
    assert not torch.equal(taylor, paper)
    assert "summary=none" in repr(layer)
    with pytest.raises(ConfigError, match="summary"):
        AttentionConfig(res=8, kind="dense", summary="mean").validate("test")


def test_probe_reports_every_smyrf_layer_and_changes_no_state(tiny_config, tmp_path):
    cfg = tiny_config(tmp_path, 1, "model.D.attention=[{res: 16, kind: smyrf, n_hashes: 2, q_cluster_size: 64, "
                      "k_cluster_size: 16}]").model
    G, D = build_generator(cfg), build_discriminator(cfg)
    for net in (G, D):
        with torch.no_grad():
            for gamma in attention_gammas(net).values():
                gamma.fill_(1.0)
    before = [{k: v.clone() for k, v in net.state_dict().items()} for net in (G, D)]
    rng = [m.generator.get_state() for net in (G, D) for m in net.modules() if isinstance(m, SelfAttention2d)]
    global_rng = torch.get_rng_state()
    scalars, images = AttentionProbe(G, D, cfg.dim_z, torch.device("cpu")).run()
    layers = {key.split("/", 1)[1] for key in scalars}
    assert len(layers) == 2 and {name.split(".")[0] for name in layers} == {"G", "D"}, layers
    assert all(key.split("/")[0] in ("attention_error", "attention_mass") for key in scalars)
    assert all(0 <= value for value in scalars.values()) and len(images) == 2
    assert all(grid.shape[0] == 3 for grid in images.values())
    assert G.training and D.training  # modes restored
    for net, state in zip((G, D), before):
        assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    after = [m.generator.get_state() for net in (G, D) for m in net.modules() if isinstance(m, SelfAttention2d)]
    assert all(torch.equal(a, b) for a, b in zip(rng, after)) and torch.equal(global_rng, torch.get_rng_state())


def test_training_tick_logs_the_probe(tiny_config, tmp_path):
    from biggan.runtime import Runtime
    from biggan.training import loop

    cfg = tiny_config(tmp_path, 2)
    assert loop.run(cfg, Runtime.setup(cfg.runtime), echo=False) == 0
    records = [json.loads(line) for line in (tmp_path / "runs" / cfg.name / "stats.jsonl").read_text().splitlines()]
    keys = [key for key in records[-1] if key.startswith(("attention_error/", "attention_mass/"))]
    assert len(records) == 2 and sorted(k.split("/")[0] for k in keys) == ["attention_error", "attention_mass"]
    off = tiny_config(tmp_path / "off", 1, "log.attention_probe=false")
    assert loop.run(off, Runtime.setup(off.runtime), echo=False) == 0
    record = json.loads((tmp_path / "off" / "runs" / off.name / "stats.jsonl").read_text().splitlines()[-1])
    assert not any(key.startswith(("attention_error/", "attention_mass/")) for key in record)


def test_sample_compare_attention_writes_grid_and_differences(tiny_config, tmp_path):
    from biggan.runtime import Runtime
    from biggan.training import loop

    cfg = tiny_config(tmp_path, 2)
    assert loop.run(cfg, Runtime.setup(cfg.runtime), echo=False) == 0
    grid = tmp_path / "cmp.png"
    proc = subprocess.run([sys.executable, "sample.py", str(tmp_path / "runs" / cfg.name), "--seeds", "0-2",
                           "--compare-attention", "--grid", str(grid)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(grid.with_suffix(".json").read_text())
    assert [row["seed"] for row in report["images"]] == [0, 1, 2] and grid.is_file()
    assert proc.stdout.count("SMYRF vs dense rel. L2") == 3
    bad = subprocess.run([sys.executable, "sample.py", str(tmp_path / "runs" / cfg.name), "--compare-attention",
                          "--attention", "dense", "--grid", str(grid)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--compare-attention needs --grid" in bad.stderr
