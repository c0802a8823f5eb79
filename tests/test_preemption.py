"""Preemption in real processes: SIGTERM/SIGINT finish the step, checkpoint, exit 0 within the grace period.

The first tests drive :class:`PreemptionHandler` in a minimal child process (the signal path alone); the trainer-level test
sends the signals to ``train.py`` itself and checks the checkpoint it leaves and that the same command resumes from it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


_CHILD = """
import os, sys, time
from pathlib import Path
from biggan.training.resilience import PreemptionHandler
out, step_seconds, hang, grace = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "hang", float(sys.argv[4])
with PreemptionHandler(grace_seconds=grace) as preempt:
    print("ready", flush=True)
    step = 0
    while True:
        time.sleep(step_seconds)          # "the current step": never cut short by the signal
        step += 1
        if preempt.requested:
            if hang:
                time.sleep(60)            # a checkpoint write that never finishes
            out.write_text(f"{step} {preempt.signal_name}")
            break
sys.exit(0)
"""


def _spawn(tmp_path: Path, step_seconds: float, hang: bool, grace: float) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(_CHILD))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "done"), str(step_seconds), "hang" if hang else "ok", str(grace)],
        cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_subprocess_finishes_step_then_exits_zero(tmp_path: Path, sig: signal.Signals) -> None:
    proc = _spawn(tmp_path, step_seconds=0.3, hang=False, grace=10)
    time.sleep(0.4)
    start = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err  # 0, not 128 + signum: it finished before the watchdog fired
    assert time.monotonic() - start < 10
    step, name = (tmp_path / "done").read_text().split()
    assert int(step) >= 1 and name == sig.name
    assert f"{sig.name} received" in err and "Traceback" not in err


def test_watchdog_force_exits_when_the_grace_period_passes(tmp_path: Path) -> None:
    proc = _spawn(tmp_path, step_seconds=0.05, hang=True, grace=1.5)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - start
    assert proc.returncode == 128 + signal.SIGTERM
    assert 1.4 < elapsed < 10, elapsed
    assert "grace period" in err and "Traceback" not in err
    assert not (tmp_path / "done").exists()


