"""The device loader on XLA:CPU with 2 SPMD devices (tests/xla/loader_check.py in the torch-xla venv): read-ahead
batches through torch-xla's ParallelLoader equal the in-step ``shard_batch`` path and CPU eager, carry the batch
sharding, the consumed position is the step's, and a host-stream error reaches the main thread."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FAST_COMPILE

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.xla, pytest.mark.slow]


@pytest.fixture(scope="module")
def loader_result(tmp_path_factory: pytest.TempPathFactory, xla_python: Path) -> dict:
    out = tmp_path_factory.mktemp("xla_loader")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "XLA_FLAGS")}
    env.update(PYTHONPATH=str(ROOT), PJRT_DEVICE="CPU", CPU_NUM_DEVICES="2", XLA_FLAGS=FAST_COMPILE,
               TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run([str(xla_python), str(ROOT / "tests" / "xla" / "loader_check.py"), "--out", str(out)], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"loader_check failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    return json.loads((out / "loader.json").read_text())


def test_xla_read_ahead_matches_the_step_path_and_cpu(loader_result: dict) -> None:
    r = loader_result
    assert r["num_devices"] == 2
    assert r["same_as_sync"] and r["labels_as_cpu"] and r["max_abs_diff_vs_cpu"] == 0.0
    assert r["sharding_prefetch"] == r["sharding_sync"]
    assert r["sharding_prefetch"][0].startswith("{devices=[2,1,1,1]") and r["sharding_prefetch"][1].startswith(
        "{devices=[2]")  # images and labels split over the two devices along the batch
    assert r["consumed_position"] == [3, 3]  # 9 batches taken (6 per epoch), however many were read ahead
    # The same graphs: the in-step path, run second, compiles nothing new. A ParallelLoader that syncs before every
    # batch (its default) cut the pending set-up into a graph of its own: 13 compiles instead of 11 in train.py.
    assert r["new_compiles"][0] > 0 and r["new_compiles"][1] == 0, r["new_compiles"]


def test_xla_host_stream_error_reaches_the_step(loader_result: dict) -> None:
    assert loader_result["error"] == "image 5.png is truncated; delete it"
    assert loader_result["input_threads_left"] == []
