"""The step and generator benchmarks run end to end on tiny widths (their numbers are checked by people, not here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def _assert_measured(rows: list[dict], cases: int) -> None:
    assert len(rows) == cases and all("error" not in r for r in rows), rows
    for row in rows:
        assert row["median_s"] > 0 and row["peak_bytes"] > 0 and len(row["times_s"]) == 2  # 2 rounds x 1 step


def test_train_step_benchmark_reports_cases_and_targets(tmp_path: Path) -> None:
    out = tmp_path / "train_step.json"
    proc = _run("train_step.py", "--ch", "8", "--cases", "dense@64", "smyrf@128", "--rounds", "2", "--steps", "1",
                "--threads", "1", "--out", str(out))
    _assert_measured(json.loads(out.read_text())["results"], cases=2)
    assert proc.stdout.count("target: smyrf@128") == 2  # the two against dense@64


def test_generator_benchmark_reports_every_case(tmp_path: Path) -> None:
    out = tmp_path / "generator.json"
    _run("generator.py", "--ch", "8", "--rounds", "2", "--steps", "1", "--threads", "1", "--out", str(out))
    rows = json.loads(out.read_text())["results"]
    _assert_measured(rows, cases=3)
    assert all(r["rise_bytes"] > 0 for r in rows)


def test_smyrf_cuda_check_runs_its_code_paths_on_cpu(tmp_path: Path) -> None:
    """The GPU check (benchmarks/smyrf_cuda_check.py) in its CPU smoke mode: every stage runs and passes."""
    out = tmp_path / "smyrf_cuda.json"
    proc = _run("smyrf_cuda_check.py", "--device", "cpu", "--quick", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert {r["stage"] for r in rows} == {"fp32", "bf16", "syncs", "time"}
    assert not [r for r in rows if r["ok"] is False], proc.stdout
    assert any(r["case"] == "smyrf math @30" and r["ok"] for r in rows)


def test_input_pipeline_benchmark_reports_both_cases(tmp_path: Path) -> None:
    out = tmp_path / "input_pipeline.json"
    _run("input_pipeline.py", "--res", "32", "--batch", "4", "--images", "16", "--steps", "2", "--rounds", "1",
         "--step-ms", "1", "--out", str(out))
    results = json.loads(out.read_text())["results"]
    assert [r["step"] for r in results] == ["sleep", "matmul"]
    assert all(set(r["cases"]) == {"in_step", "prefetch2"} and r["ratio_read"] > 0 for r in results)
