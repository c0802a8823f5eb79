"""The TPU path, tested on CPU: torch-xla 2.9 with ``PJRT_DEVICE=CPU`` in its own cached virtual environment.

``scripts/xla_env.sh`` creates the venv (torch 2.9.0, torch-xla 2.9.0; ~4 GB download, first time only) under the user
cache, keyed by requirements/xla.txt. tests/xla/checks.py runs there in two processes: one XLA device, then SPMD over
``CPU_NUM_DEVICES=2`` (SPMD is process-wide). This file compares their results with each other, with CPU eager mode,
and with this (main-stack) process. ``smyrf_spmd`` and ``step_spmd`` count the collectives in the optimised HLO (SMYRF
alone; a whole training step and FID sampling on 2 and 4 devices); tests/xla/hosts.py simulates two SPMD hosts as two
processes. Multi-process XLA (``xmp.spawn``) is not tested: its CPU collectives hang upstream (pytorch/xla #5005);
SPMD is the multi-device path.

If the venv cannot be created (no network), the tests fail under CI (``CI=true``) and skip elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import torch

from biggan.models import build_discriminator, build_generator, load_state_strict
from biggan.checkpoint import load_checkpoint, save_checkpoint
from biggan.training.optimizer import LeanAdam
from tests.conftest import FAST_COMPILE

ROOT = Path(__file__).resolve().parents[1]


def _load_module(path: Path) -> ModuleType:
    """Import a helper script by path (``tests`` is not a package, and another ``tests`` may be installed)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checks = _load_module(ROOT / "tests" / "xla" / "checks.py")  # model config and checkpoint layout of the XLA side
collectives = _load_module(ROOT / "tests" / "xla" / "collectives.py")

pytestmark = [pytest.mark.xla, pytest.mark.slow]

def _write_cpu_checkpoint(directory: Path) -> Path:
    """A main-stack (torch 2.14) checkpoint with non-trivial BN statistics, attention gamma and Adam state."""
    torch.manual_seed(3)
    G, D = build_generator(checks.model_config()), build_discriminator(checks.model_config())
    with torch.no_grad():
        for name, param in G.named_parameters():
            if name.endswith("gamma"):
                param.fill_(0.5)  # gamma = 0 would make the attention (and SMYRF on XLA) invisible in the output
    opt_G = LeanAdam(G.parameters(), lr=2e-4, betas=(0.0, 0.999))
    opt_D = LeanAdam(D.parameters(), lr=4e-4, betas=(0.0, 0.999))
    G(torch.randn(4, checks.DIM_Z)).square().mean().backward()  # train mode: updates BN running statistics
    opt_G.step()
    run = {"G": G, "D": D, "opt_G": opt_G, "opt_D": opt_D}
    from biggan.runtime import Runtime, RuntimeConfig

    path = save_checkpoint(checks.checkpoint_state(Runtime.setup(RuntimeConfig(kind="cpu")), run), directory,
                           step=1, keep_last=1)
    z = torch.randn(2, checks.DIM_Z, generator=torch.Generator().manual_seed(7))
    torch.save({"z": z, "x": checks.eval_sample(G, torch.device("cpu"), z)}, directory / "cpu_sample.pt")
    return path


def _run_checks(python: Path, mode: str, out: Path, devices: int, *extra: str, xla_flags: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "XLA_FLAGS")}
    env.update(PYTHONPATH=str(ROOT), PJRT_DEVICE="CPU", CPU_NUM_DEVICES=str(devices),
               XLA_FLAGS=f"{FAST_COMPILE} {xla_flags}".strip(), TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [str(python), str(ROOT / "tests" / "xla" / "checks.py"), mode, "--out", str(out), *extra]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{mode} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads((out / f"{mode}.json").read_text())


@pytest.fixture(scope="module")
def results(xla_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("xla")
    cpu_ckpt = _write_cpu_checkpoint(out / "cpu_ckpt")
    single = _run_checks(xla_python, "single", out, 1, "--cpu-ckpt", str(cpu_ckpt))
    spmd = _run_checks(xla_python, "spmd", out, 2)
    summary = {
        "compile_seconds": single["compile_seconds"], "compiles": single["compiles"],
        "step_seconds": single["seconds"], "spmd_step_seconds": spmd["seconds"],
    }
    (out / "timings.json").write_text(json.dumps(summary, indent=1))
    print(f"\nXLA:CPU timings (optimisation level 0): {summary}")
    return {"out": out, "single": single, "spmd": spmd}


def _assert_losses_close(got: list[dict], want: list[dict], rel: float) -> None:
    assert len(got) <= len(want)
    for step, (g, w) in enumerate(zip(got, want)):
        for key in w:
            assert math.isfinite(g[key]), f"step {step} {key} is {g[key]}"
            assert g[key] == pytest.approx(w[key], rel=rel, abs=1e-3), f"step {step} {key}: {g[key]} vs {w[key]}"


def test_smyrf_attention_on_xla_matches_cpu(results: dict) -> None:
    smyrf = results["single"]["smyrf"]
    assert smyrf["max_rel_diff"] < 1e-4  # forward and gradients of q, k, v
    assert smyrf["recompiles_for_new_values"] == 0  # static shapes: new data and new clusters reuse the program


@pytest.mark.parametrize("mode", ["single", "spmd"])
def test_diffaugment_on_xla_matches_cpu_and_stays_on_device(results: dict, mode: str) -> None:
    augment = results[mode]["augment"]
    assert augment["max_abs_diff"] < 1e-5  # the same host draws give the same images and input gradients
    assert augment["recompiles_for_new_values"] == 0  # static shapes: new shifts and squares reuse the program
    assert augment["cpu_fallback_ops"] == [] and augment["host_reads"] == 0


def test_training_steps_on_xla_match_cpu_eager(results: dict) -> None:
    single = results["single"]
    assert single["device"].startswith("xla")
    assert len(single["losses"]) == checks.STEPS
    _assert_losses_close(single["losses"], single["cpu_losses"], rel=1e-3)


def test_training_step_stays_on_device(results: dict) -> None:
    """No op falls back to the host and nothing is read back inside the steps (values are read in the tick)."""
    single = results["single"]
    assert single["cpu_fallback_ops"] == []
    assert single["host_reads_in_steps"] == 0


def test_spmd_over_two_devices_matches_one_device(results: dict) -> None:
    spmd, single = results["spmd"], results["single"]
    assert (spmd["num_devices"], spmd["world_size"], spmd["local_batch"]) == (2, 1, checks.GLOBAL_BATCH)
    assert spmd["batch_sharding"].startswith("{devices=[2,1,1,1]")  # dim 0 split over the two devices
    _assert_losses_close(spmd["losses"], single["losses"], rel=1e-4)


def test_xla_checkpoint_loads_on_cpu(results: dict) -> None:
    state = load_checkpoint(results["out"] / "xla_ckpt" / "latest.pt")
    G, D = build_generator(checks.model_config()), build_discriminator(checks.model_config())
    load_state_strict(G, state["G"], "G"), load_state_strict(D, state["D"], "D")
    opt_G = LeanAdam(G.parameters(), lr=2e-4, betas=(0.0, 0.999))
    opt_G.load_state_dict(state["opt_G"])
    assert int(next(iter(opt_G.state.values()))["step"]) == checks.STEPS
    sample = torch.load(results["out"] / "xla_sample.pt", weights_only=True)
    torch.testing.assert_close(checks.eval_sample(G, torch.device("cpu"), sample["z"]), sample["x"],
                               rtol=1e-4, atol=1e-4)


def test_cpu_checkpoint_loads_on_xla(results: dict) -> None:
    loaded = results["single"]["cpu_ckpt_on_xla"]
    assert loaded["opt_state_device"].startswith("xla")
    assert loaded["max_abs_diff"] < 1e-4


@pytest.fixture(scope="module")
def smyrf_spmd(xla_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("xla_smyrf_spmd")
    dump = out / "hlo"
    return _run_checks(xla_python, "smyrf_spmd", out, 2, "--dump", str(dump), xla_flags=collectives.dump_flags(dump))


@pytest.mark.parametrize("hashing", ["projection", "kdtree"])
def test_smyrf_under_spmd_keeps_the_batch_local(smyrf_spmd: dict, hashing: str) -> None:
    """Batch-sharded SMYRF fwd+bwd moves no activation between devices: the optimised HLO has no all-gather,
    all-to-all or collective-permute, and no all-reduce of more than a scalar. The flattened batch x tokens routing
    gave 7 all-gathers (the round indices, s64[2,4096] and s64[2,1024]) and 6 all-reduces of whole-batch activations
    and gradients (f32[8192,12], f32[2048,48], ...): every device attended over the whole batch."""
    run = smyrf_spmd[hashing]
    moved = [f"{c['op']} {c['shape']}" for c in run["collectives"] if c["op"] != "all-reduce" or c["elements"] > 1]
    assert not moved, f"collectives of activations: {moved}"
    assert smyrf_spmd["num_devices"] == 2 and run["out_sharding"].startswith("{devices=[2,1,1]")  # batch-sharded out
    assert run["max_rel_diff"] < 1e-4  # forward and gradients against CPU eager


@pytest.mark.parametrize("summary", ["mean", "taylor"])
def test_smyrf_cluster_summaries_under_spmd_keep_the_batch_local(smyrf_spmd: dict, summary: str) -> None:
    """smyrf.summary's gathers and scatters (cluster means, each query's own cluster) are along the token axis with
    per-row indices, so they too move nothing between devices."""
    run = smyrf_spmd[f"projection+{summary}"]
    moved = [f"{c['op']} {c['shape']}" for c in run["collectives"] if c["op"] != "all-reduce" or c["elements"] > 1]
    assert not moved, f"collectives of activations: {moved}"
    assert run["max_rel_diff"] < 1e-4


@pytest.fixture(scope="module", params=[2, 4], ids=["2dev", "4dev"])
def step_spmd(request: pytest.FixtureRequest, xla_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp(f"xla_step_spmd{request.param}")
    dump = out / "hlo"
    return _run_checks(xla_python, "step_spmd", out, request.param, "--dump", str(dump),
                       xla_flags=collectives.dump_flags(dump))


@pytest.mark.parametrize("program", ["d_step", "g_step"])
def test_training_step_under_spmd_moves_only_gradients_and_statistics(step_spmd: dict, program: str) -> None:
    """One D step and one G step (SMYRF in G, accumulation 2) on 2 and 4 SPMD devices: the optimised HLO has
    all-reduces no larger than a parameter (gradients; BatchNorm's (2C+1,) sums) and nothing else. Before, on 2
    devices: D step 18 all-gathers of activations (f32[4,32,32,32], ...), 6 all-to-alls, 8 collective-permutes; G step
    26 all-gathers (chunk/cat along the sharded batch axis, and XLA's batch-norm ops, which are not partitioned)."""
    run = step_spmd[program]
    assert run["modules"] == 1  # one program per step: nothing cut the graph
    moved = [f"{c['op']} {c['shape']}" for c in run["collectives"]
             if c["op"] != "all-reduce" or c["elements"] > step_spmd["max_param_elements"]]
    assert not moved, f"{program} on {step_spmd['num_devices']} devices moves activations: {moved}"
    assert run["counts"]["all-reduce"] > 0  # the gradients are reduced (SPMD really partitioned the step)
    assert all(math.isfinite(v) for v in step_spmd["losses"].values())


def test_fid_sampling_under_spmd_is_sharded(step_spmd: dict) -> None:
    """FID fakes are generated on z sharded like a training batch: each device's program returns its own rows, and
    the only collective is the one all-gather of the finished images for the host (before: z unsharded, every device
    generated the whole batch, with no collective at all)."""
    run, b, n = step_spmd["fid_sample"], step_spmd["batch"], step_spmd["num_devices"]
    image = f"[{{}},3,{checks.RES},{checks.RES}]"
    shard = f"f32{image.format(b // n)}"
    assert any(shard in result for result in run["results"]), run["results"]  # the generator returns one shard
    moved = [f"{c['op']} {c['shape']}" for c in run["collectives"]]
    assert moved in ([], [f"all-gather f32{image.format(b)}"]), moved


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_hosts(xla_python: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """tests/xla/hosts.py as host 0 and host 1 of a simulated multi-host SPMD run (what is simulated: its docstring)."""
    out = tmp_path_factory.mktemp("xla_hosts")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "XLA_FLAGS")}
    env.update(PYTHONPATH=str(ROOT), PJRT_DEVICE="CPU", CPU_NUM_DEVICES="1", TF_CPP_MIN_LOG_LEVEL="2",
               MASTER_ADDR="localhost", MASTER_PORT=str(_free_port()))
    procs = [subprocess.Popen([str(xla_python), str(ROOT / "tests" / "xla" / "hosts.py"), "--rank", str(rank),
                               "--world", "2", "--out", str(out)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [proc.communicate(timeout=600)[0] for proc in procs]
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-4000:]
    return [json.loads((out / f"host{rank}.json").read_text()) for rank in (0, 1)]


def test_multi_host_barrier_waits_for_every_host(two_hosts: list[dict]) -> None:
    """Host 1 passes the barrier only after host 0 wrote its file (xm.rendezvous, used before, returned at once
    under SPMD: host 1 looked too early); gather_to_main collects both hosts' states on host 0."""
    assert [h["world_size"] for h in two_hosts] == [2, 2]
    assert all(h["saw_host0_file_after_barrier"] for h in two_hosts)
    assert two_hosts[0]["gathered"] == 2 and two_hosts[0]["same_projection_rng"] and two_hosts[0]["distinct_z_rng"]


def test_multi_host_spmd_shares_one_projection_seed(two_hosts: list[dict]) -> None:
    """SMYRF's projections are a replicated input under SPMD: every host draws the same ones; z stays per host."""
    assert two_hosts[0]["projection_rng"] == two_hosts[1]["projection_rng"]
    assert two_hosts[0]["z_rng"] != two_hosts[1]["z_rng"]
