"""benchmarks/approximation.py's harness: its SMYRF equals the library's, its memory ratios, the tokenizer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.approximation import Budget, attend_scheme, clusters, memory_ratio, smyrf_parts  # noqa: E402
from benchmarks.wordpiece import _basic_words, _wordpiece  # noqa: E402
from smyrf import dense_attention, draw_projections, kdtree_levels, smyrf_attention  # noqa: E402


@pytest.mark.parametrize("hashing,summary", [("projection", "none"), ("kdtree", "none"), ("projection", "taylor")])
def test_harness_smyrf_equals_the_library(hashing, summary):
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 64, 6, generator=gen), torch.randn(3, 16, 6, generator=gen), torch.randn(3, 16, 5)
    perm_q, perm_k = clusters(q, k, hashing, 2, 16, 4, seed=7)
    levels = kdtree_levels(4) if hashing == "kdtree" else None
    proj = draw_projections(6, 2, torch.Generator().manual_seed(7), levels=levels)
    ref = smyrf_attention(q, k, v, n_hashes=2, q_cluster_size=16, k_cluster_size=4, scale=0.4, projections=proj,
                          hashing=hashing, summary=summary)
    out, _ = smyrf_parts(q, k, v, 0.4, perm_q, perm_k, 4, summary)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_global_tokens_are_exact_and_one_cluster_is_dense():
    q, k, v = torch.randn(2, 17, 4), torch.randn(2, 17, 4), torch.randn(2, 17, 3)
    out = attend_scheme("paper", Budget(1, 16, 16, n_global=1), seed=0)(q, k, v, 0.5)
    torch.testing.assert_close(out, dense_attention(q, k, v, 0.5), rtol=1e-5, atol=1e-6)


def test_memory_ratios():
    assert memory_ratio(Budget(2, 256, 64), "none", 1024, 256) == 0.5  # the demo layer
    assert memory_ratio(Budget(2, 256, 64), "taylor", 1024, 256) == pytest.approx((2 * 64 + 4) / 256)
    assert memory_ratio(Budget(2, 64, 64, n_global=1), "none", 257, 257) == pytest.approx(
        (256 * (128 + 1) + 257) / 257**2)


def test_wordpiece_splits_like_bert():
    vocab = {w: i for i, w in enumerate(["[UNK]", "un", "##aff", "##able", "hello", ",", "!"])}
    assert _basic_words("Héllo, UNAFFABLE!") == ["hello", ",", "unaffable", "!"]
    assert _wordpiece("unaffable", vocab) == ["un", "##aff", "##able"] and _wordpiece("xyz", vocab) == ["[UNK]"]


@pytest.mark.slow
def test_cli_runs_the_synthetic_case_and_writes_json(tmp_path):
    import json
    import subprocess

    out = tmp_path / "a.json"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "benchmarks/approximation.py", "--cases", "synthetic", "--schemes", "paper",
                           "summary-taylor", "--seeds", "2", "--threads", "1", "--out", str(out)], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]["synthetic G128@64"]
    assert set(rows) == {"paper", "summary-taylor"} and rows["paper"]["memory"] == 0.5
    assert 0 < rows["paper"]["rel_error"] < 1 and rows["paper"]["rel_error_std"] >= 0
    missing = subprocess.run([sys.executable, "benchmarks/approximation.py", "--cases", "biggan-G", "--checkpoint",
                              str(tmp_path / "none")], cwd=root, capture_output=True, text=True, timeout=600)
    assert missing.returncode != 0 and "make demo" in missing.stderr
