"""scripts/gpu_check.sh cannot rot: its CPU dry run (tiny shapes) runs the stages here and prints the one table.

The smyrf stage is benchmarks/smyrf_cuda_check.py, run in its own test (tests/test_benchmarks.py); compile is left out
for time. What the numbers are is for people to read; here only that every stage ran and nothing FAILED.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("env", "lazy_fid", "fid", "step", "train")

pytestmark = pytest.mark.slow


def test_cpu_dry_run_prints_one_table_with_every_stage(tmp_path: Path) -> None:
    env = os.environ | {"PYTHON": sys.executable, "GPU_CHECK_ONLY": ",".join(STAGES), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu", str(tmp_path / "out")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    table = proc.stdout[proc.stdout.index("GPU check (CPU dry run"):]
    assert proc.returncode == 0, table + proc.stderr[-2000:]
    stages = {line.split()[0]: line.split()[1] for line in table.splitlines()[2:] if line and not line[0].isspace()}
    assert set(stages) == set(STAGES), table
    assert all(status in ("ok", "missed", "skipped") for status in stages.values()), table
    assert "FAILED" not in table and "TIMEOUT" not in table, table
    for row in ("demo train + resume", "FID path on device", "train-step img/s", "random Inception", "torch/GPU"):
        assert row in table, table
    assert not list((tmp_path / "out").rglob("*.pth"))  # the 91 MB random Inception lives in scratch, removed
