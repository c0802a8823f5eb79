"""Fixtures shared by the in-process training tests (smoke, resume, sample): one torch thread and the tiny config.

The subprocess tests (bad input, fault injection, preemption) use ``tests/bad_inputs/harness.py`` instead: they pass
overrides on a command line and set ``OMP_NUM_THREADS`` in the child's environment.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from biggan.training.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on the shared 2-core CI machine, 2 spinning threads per process run ~30x slower.

    Use it per module with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_overrides(tmp: Path, steps: int, *extra: str) -> list[str]:
    """The demo config shrunk to seconds on a CPU: ch 8, batch 4, 2 D steps, 64 synthetic images, no FID, no bar.

    It keeps the demo's attention (SMYRF in G, dense in D) and its RNG state. The run goes to ``tmp/runs/<name>``
    and the dataset to ``tmp/data``; ``extra`` overrides come last and win.
    """
    return [
        f"out_dir={tmp / 'runs'}", f"data.path={tmp / 'data'}", "data.synthetic_num_images=64", "runtime.kind=cpu",
        "runtime.threads=1", "model.G.ch=8", "model.D.ch=8", "train.batch_size=4", "train.num_d_steps=2",
        f"train.total_steps={steps}", "train.ckpt_every=2", "log.every=1", "log.sample_every=100000",
        "log.num_samples=4", "log.progress_bar=false", "fid.every=0", *extra,
    ]


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Config]:
    """``tiny_config(tmp, steps, *extra)`` -> the loaded :func:`tiny_overrides` config of ``configs/demo.yaml``."""

    def make(tmp: Path, steps: int, *extra: str) -> Config:
        return load_config(DEMO, tiny_overrides(tmp, steps, *extra))

    return make


def _load(relative: str):
    """A helper script of this checkout imported by path (``tests`` is not a package, ``benchmarks`` neither)."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cuda_kernels_on_cpu(monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    """SMYRF's CUDA block kernels ("efficient", "cuda_flash") runnable on CPU tensors through exact stand-ins of their
    aten ops (tests/smyrf_standins.py); returns their names."""
    standins = _load("tests/smyrf_standins.py")
    standins.install(monkeypatch)
    return standins.STANDIN_KERNELS


@pytest.fixture(scope="session")
def smyrf_cuda_check():
    """benchmarks/smyrf_cuda_check.py: the GPU check, whose accuracy measures (inputs at a given largest logit, worst
    per-row error) the CPU tests share."""
    return _load("benchmarks/smyrf_cuda_check.py")


# XLA:CPU compiles with LLVM at full optimisation by default: a BigGAN step then takes minutes to compile on 2 cores.
# Level 0 compiles ~4x faster; these tests check correctness, not XLA:CPU's code quality.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@pytest.fixture(scope="session")
def xla_python() -> Path:
    proc = subprocess.run([str(ROOT / "scripts" / "xla_env.sh")], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        reason = f"scripts/xla_env.sh could not create the torch-xla venv: {proc.stderr.strip()[-1500:]}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    return Path(proc.stdout.strip().splitlines()[-1]) / "bin" / "python"
