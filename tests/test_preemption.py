"""Preemption in real processes: SIGTERM/SIGINT finish the step, checkpoint, exit 0 within the grace period.

The first tests drive :class:`PreemptionHandler` in a minimal child process (the signal path alone); the trainer-level
test sends the signals to ``train.py`` itself and checks the checkpoint it leaves and that the same command resumes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from biggan.checkpoint import load_checkpoint
from tests.bad_inputs.harness import PYTHON, REPO, LiveProcess, tiny_overrides

GRACE_SECONDS = 30  # what spot VMs give; the trainer must be out well within it


_CHILD = """
import os, sys, time
from pathlib import Path
from biggan.training.preemption import PreemptionHandler
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




_STOPPED_RE = re.compile(r"stopped by (SIG\w+) at step (\d+)")


def _signal_trainer(argv: list[str], sig: signal.Signals, after_step: int) -> tuple[int, int, float]:
    """Start train.py, wait for a status line at ``after_step`` or later, send ``sig``; (exit code, stop step, secs)."""
    run = LiveProcess(argv)
    try:
        assert run.wait_for_step(after_step, timeout=300), run.stdout[-5:] + run.stderr[-10:]
        start = time.monotonic()
        run.proc.send_signal(sig)
        code = run.finish(timeout=GRACE_SECONDS + 30)
        seconds = time.monotonic() - start
    finally:
        run.kill()
    stopped = run.wait_for(_STOPPED_RE, timeout=0)
    assert code == 0 and stopped, run.stdout[-5:] + run.stderr[-10:]
    assert stopped.group(1) == sig.name
    assert "Traceback" not in "\n".join(run.stderr)
    return code, int(stopped.group(2)), seconds


@pytest.mark.slow
def test_train_py_checkpoints_and_exits_zero_on_sigterm_then_sigint(tmp_path: Path) -> None:
    argv = [PYTHON, "train.py", *tiny_overrides(tmp_path / "runs", tmp_path / "datasets", total_steps=10_000,
                                                ckpt_every=10_000), f"train.preempt_grace_seconds={GRACE_SECONDS}"]
    latest = tmp_path / "runs" / "demo" / "checkpoints" / "latest.pt"

    _, stopped_at, seconds = _signal_trainer(argv, signal.SIGTERM, after_step=3)
    assert seconds < GRACE_SECONDS
    assert stopped_at >= 3 and load_checkpoint(latest)["step"] == stopped_at  # the current step, not an old interval

    # The same command resumes from that checkpoint and keeps going; Ctrl-C stops it the same way.
    _, stopped_again, seconds = _signal_trainer(argv, signal.SIGINT, after_step=stopped_at + 2)
    assert seconds < GRACE_SECONDS
    assert stopped_again >= stopped_at + 2 and load_checkpoint(latest)["step"] == stopped_again
    log = (tmp_path / "runs" / "demo" / "log.txt").read_text()
    assert f"resumed from {latest} at step {stopped_at}" in log
