"""DDP through torchrun on CPU (gloo): what two processes do together equals one process with their joint batch.

The worker (tests/ddp/worker.py) runs the real BigGAN G/D and the trainer's d_step/g_step for a few steps on a fixed
global batch that the ranks split. Checks: parameters are identical on every rank afterwards; with cross-replica BN,
2 processes x B/2 give the losses and weights of 1 process x B; without it they do not (so the test has teeth).
Buffers stay identical across ranks although DDP broadcasts none where they follow the weights (D's SN vectors, G's
synchronised BN statistics); with 2 accumulation micro-batches, ``no_sync`` on the first gives the parameters of an
all-reduce after each.
Then ``train.py`` itself under torchrun: a resumed 2-process run continues bit-identically.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from biggan.checkpoint import load_checkpoint
from tests.bad_inputs.harness import child_env, tiny_overrides
from tests.test_resume import _assert_identical

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ddp" / "worker.py"
B, STEPS = 8, 2  # global batch; D+G steps (the second step's losses see the first step's updates)

pytestmark = pytest.mark.ddp


def _torchrun_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the rank variables of any torchrun this test itself runs under (torchrun sets its own)."""
    return {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One torchrun of two gloo processes with B/2 images each, training both variants (one start-up)."""
    out = tmp_path_factory.mktemp("ddp")
    env = _torchrun_env(os.environ | {"PYTHONPATH": str(ROOT)})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           "--out", str(out), "--batch", str(B // 2), "--steps", str(STEPS), "--variants", "sync_bn", "plain",
           "accumulate", "accumulate_every"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _load(out: Path) -> tuple[list[dict[str, float]], list[dict]]:
    losses = json.loads((out / "losses.json").read_text())
    ranks = sorted(out.glob("rank*.pt"))
    return losses, [torch.load(p, weights_only=True) for p in ranks]


def _assert_states(a: dict, b: dict, exact: bool, buffers: bool = True) -> None:
    for net in ("G", "D"):
        for key, value in a[net].items():
            if not buffers and key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked"):
                continue
            if exact:
                assert torch.equal(value, b[net][key]), f"{net}.{key} differs between ranks"
            else:
                # Adam moves a parameter by about lr per step even when its gradient is rounding noise (a conv bias in
                # front of BN has a zero true gradient), so weights agree to a few lr, losses much more tightly.
                torch.testing.assert_close(value, b[net][key], rtol=1e-3, atol=2e-3, msg=f"{net}.{key}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, float]], dict]:
    """One process, the whole batch B (run in this process: no rank variables are set here)."""
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)  # tests/ is not a package
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    out = tmp_path_factory.mktemp("ref")
    worker.run(out, batch=B, steps=STEPS, variants=["plain"])
    losses, states = _load(out / "plain")
    return losses, states[0]


def _assert_losses_close(got: list[dict[str, float]], want: list[dict[str, float]]) -> None:
    for step, (g, w) in enumerate(zip(got, want)):
        for key in w:
            assert g[key] == pytest.approx(w[key], rel=1e-3, abs=1e-4), f"step {step} {key}: {g[key]} vs {w[key]}"


def test_sync_bn_two_processes_equal_one_process(two_processes: Path, reference) -> None:
    losses, (rank0, rank1) = _load(two_processes / "sync_bn")
    assert (rank0["rank"], rank1["rank"], rank0["num_data_shards"]) == (0, 1, 2)
    # Weights and (global) BN statistics agree bit for bit, and no buffer was broadcast: G's BN statistics come from
    # the all-reduced moments and every SN vector from identical weights.
    assert rank0["broadcast_buffers"] == rank1["broadcast_buffers"] == {"G": False, "D": False}
    _assert_states(rank0, rank1, exact=True)
    ref_losses, ref_state = reference
    assert len(losses) == STEPS
    _assert_losses_close(losses, ref_losses)
    _assert_states(rank0, ref_state, exact=False)


def test_without_sync_bn_ranks_agree_but_differ_from_one_process(two_processes: Path, reference) -> None:
    losses, (rank0, rank1) = _load(two_processes / "plain")
    # DDP keeps weights identical; BN statistics are per rank (so G broadcasts rank 0's), D's SN vectors agree unsent.
    assert rank0["broadcast_buffers"] == {"G": True, "D": False}
    _assert_states(rank0, rank1, exact=True, buffers=False)
    ref_losses, _ = reference
    with pytest.raises(AssertionError):
        _assert_losses_close(losses, ref_losses)


def test_accumulation_with_no_sync_equals_an_all_reduce_per_micro_batch(two_processes: Path) -> None:
    """accumulate=2: gradients summed locally and all-reduced once equal the sum of two all-reduced halves (to fp32
    rounding: the order of the sums differs), seen in the gradient norms before each update and in the losses; every
    rank holds the same parameters bit for bit (a micro-batch left unreduced would make them differ)."""
    losses, (rank0, rank1) = _load(two_processes / "accumulate")
    every_losses, (every0, _) = _load(two_processes / "accumulate_every")
    _assert_states(rank0, rank1, exact=True)
    norms, every_norms = (json.loads((two_processes / v / "grad_norms.json").read_text())
                          for v in ("accumulate", "accumulate_every"))
    for step, (got, want) in enumerate(zip(norms, every_norms)):
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5), f"step {step} {key}: {got[key]} vs {want[key]}"
    _assert_losses_close(losses, every_losses)
    _assert_states(rank0, every0, exact=False)


def _torchrun_train(out_dir: Path, datasets: Path, steps: int, *extra: str) -> Path:
    """``torchrun --nproc_per_node=2 train.py`` on the tiny demo (gloo, one thread each); returns its checkpoints."""
    env = _torchrun_env(child_env())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           *tiny_overrides(out_dir, datasets, steps, ckpt_every=2), "name=ddp", *extra]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out_dir / "ddp" / "checkpoints"


def test_two_process_training_resumes_bit_identically(tmp_path: Path) -> None:
    """4 steps straight == the straight run's step-2 checkpoint resumed to step 4, on 2 processes: every rank's z and
    SMYRF hashing streams are in the checkpoint, not only rank 0's."""
    datasets = tmp_path / "data"
    straight = _torchrun_train(tmp_path / "straight", datasets, 4)
    halfway = straight / "step-00000002.pt"
    resumed = _torchrun_train(tmp_path / "resumed", datasets, 4, "--resume", str(halfway))
    a, b = (load_checkpoint(d / "latest.pt") for d in (straight, resumed))
    assert a["step"] == b["step"] == 4
    assert len(a["process_rng"]) == 2
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "process_rng", "data"):
        _assert_identical(a[key], b[key], key)
