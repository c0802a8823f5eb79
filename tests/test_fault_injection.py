"""Crash safety: SIGKILL at seeded random moments, rerun the same command, and lose nothing but the current interval.

Two levels:
- the store alone: a child process saves checkpoints in a tight loop and is SIGKILLed mid-write many times; the latest
  checkpoint must always load;
- the trainer: ``train.py`` on the shrunken demo is SIGKILLed at >= 5 seeded random moments and rerun each time with the
  same command; every time the latest checkpoint loads and at most one checkpoint interval of progress is lost; the run
  finishes, and its final state equals an uninterrupted run's bit for bit (CPU).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from biggan.checkpoint import find_latest, list_step_checkpoints, load_checkpoint
from tests.bad_inputs.harness import PYTHON, REPO, RESUMED_RE, STEP_RE, LiveProcess, child_env, tiny_overrides

SEED = 20261128
TOTAL_STEPS = 24
CKPT_EVERY = 5
MIN_KILLS = 5
_CKPT_NAME = ("latest.pt", "best.pt")

_SAVER = """
import sys, torch
from biggan.checkpoint import FORMAT_VERSION, find_latest, load_checkpoint, save_checkpoint
ckpt_dir = sys.argv[1]
latest = find_latest(ckpt_dir)  # resume like the trainer does
step = load_checkpoint(latest, required=("step",))["step"] if latest else 0
while True:
    step += 1
    # ~4 MB per file so that a kill often lands inside torch.save / fsync / rename
    state = {"format_version": FORMAT_VERSION, "step": step, "G": {"w": torch.full((1024, 1024), float(step))}}
    save_checkpoint(state, ckpt_dir, step, keep_last=2)
    print(step, flush=True)
"""


@pytest.mark.slow
def test_store_survives_sigkill_during_writes(tmp_path: Path) -> None:
    script = tmp_path / "saver.py"
    script.write_text(textwrap.dedent(_SAVER))
    ckpt_dir = tmp_path / "ckpt"
    rng = random.Random(SEED)
    survived = 0
    for _ in range(8):
        proc = subprocess.Popen([PYTHON, str(script), str(ckpt_dir)], cwd=REPO, env=child_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip(), proc.stderr.read()  # it got going (one save done)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        survived += 1
        latest = find_latest(ckpt_dir)
        state = load_checkpoint(latest, required=("step", "G"))
        assert torch.all(state["G"]["w"] == float(state["step"]))  # complete and self-consistent
        steps = [s for s, _ in list_step_checkpoints(ckpt_dir)]
        # latest.pt is the newest step file, or the one before if the kill fell between its rename and latest's update
        assert state["step"] in steps[-2:] and len(steps) <= 3, (state["step"], steps)
    assert survived == 8


def _train_argv(out_dir: Path, datasets: Path) -> list[str]:
    return [PYTHON, "train.py", *tiny_overrides(out_dir, datasets, TOTAL_STEPS, CKPT_EVERY)]


def _assert_same_state(a: object, b: object, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same_state(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _only_checkpoint_files(ckpt_dir: Path) -> None:
    for path in ckpt_dir.iterdir():
        assert path.name in _CKPT_NAME or path.name.startswith(("step-", ".tmp-")), path


@pytest.mark.slow
def test_training_survives_sigkill_and_matches_uninterrupted_run(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets"  # generated once by the reference run, then reused by every attempt

    reference = LiveProcess(_train_argv(tmp_path / "reference", datasets))
    assert reference.wait_for(STEP_RE, timeout=600), "\n".join(reference.stderr[-20:])
    first_step_at = time.perf_counter()
    assert reference.finish(timeout=600) == 0, "\n".join(reference.stderr[-20:])
    # Kill moments scale with this machine's speed, so the test lands its kills on a quiet or a loaded machine alike.
    step_seconds = (time.perf_counter() - first_step_at) / (TOTAL_STEPS - 1)
    expected = load_checkpoint(tmp_path / "reference" / "demo" / "checkpoints" / "latest.pt")
    assert expected["step"] == TOTAL_STEPS

    out_dir = tmp_path / "killed"
    ckpt_dir = out_dir / "demo" / "checkpoints"
    rng = random.Random(SEED)
    kills, attempts, lost_steps = 0, 0, []
    expected_resume = None
    while True:
        attempts += 1
        assert attempts <= 4 * MIN_KILLS + 2, "the run makes no progress between kills"
        run = LiveProcess(_train_argv(out_dir, datasets))
        if expected_resume is not None:
            match = run.wait_for(RESUMED_RE, timeout=300)
            assert match and int(match.group(2)) == expected_resume, run.stdout[-5:] + run.stderr[-5:]
        if kills >= MIN_KILLS:  # enough kills: let this attempt finish
            assert run.finish(timeout=600) == 0, "\n".join(run.stderr[-20:])
            break
        # A seeded random moment after training started in this attempt: anywhere in steps, ticks or checkpoint writes.
        started = run.wait_for(STEP_RE, timeout=300)
        if started is None:  # finished (or failed) before training resumed: only possible at the very end
            assert run.finish(timeout=60) == 0, "\n".join(run.stderr[-20:])
            break
        # Kill after a seeded random step up to two past the next checkpoint (so some attempts save progress and
        # some lose it), then at a random moment inside that step: in a D/G step, a tick or a checkpoint write.
        resumed_at = expected_resume or 0
        target = rng.randint(resumed_at + 1, min(resumed_at + CKPT_EVERY + 2, TOTAL_STEPS - 1))
        deadline = time.monotonic() + 300
        while run.last_step() < target and run.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, step_seconds))
        run.kill()
        code = run.finish(timeout=60)
        if code == 0:  # the run completed before the kill landed
            break
        assert code == -signal.SIGKILL, "\n".join(run.stderr[-20:])
        kills += 1
        _only_checkpoint_files(ckpt_dir)
        latest = find_latest(ckpt_dir)
        reached = run.last_step()
        saved = load_checkpoint(latest)["step"] if latest else 0  # the latest checkpoint always loads
        assert reached - saved <= CKPT_EVERY, (reached, saved)  # at most one checkpoint interval of progress lost
        lost_steps.append(reached - saved)
        expected_resume = saved if latest else None

    assert kills >= MIN_KILLS, f"only {kills} kills landed before the run finished; lower the kill delay"
    final = load_checkpoint(ckpt_dir / "latest.pt")
    assert final["step"] == TOTAL_STEPS
    for key in ("step", "images_seen", "G", "D", "G_ema", "opt_G", "opt_D", "rng", "data", "attention_rng"):
        _assert_same_state(final[key], expected[key], key)
    print(f"\nfault injection: {kills} SIGKILLs survived in {attempts} attempts; steps lost per kill {lost_steps}",
          file=sys.stderr)


def _nan_run(tmp_path: Path, first_call: int, mode: str) -> subprocess.CompletedProcess:
    argv = [PYTHON, str(REPO / "tests" / "bad_inputs" / "nan_injection.py"), str(first_call), mode, "train.py",
            *tiny_overrides(tmp_path / "runs", tmp_path / "datasets", total_steps=12, ckpt_every=4),
            "train.max_rollbacks=2", "train.num_d_steps=1"]
    return subprocess.run(argv, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)


def _scalar_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


@pytest.mark.slow
def test_transient_nan_rolls_back_and_the_run_finishes(tmp_path: Path) -> None:
    proc = _nan_run(tmp_path, first_call=7, mode="once")  # one D step per step: step 7
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rolling back to" in proc.stdout and "at step 4" in proc.stdout
    assert load_checkpoint(tmp_path / "runs" / "demo" / "checkpoints" / "latest.pt")["step"] == 12
    tags = _scalar_tags(tmp_path / "runs" / "demo")
    assert any("rollback" in tag for tag in tags), f"no rollback scalar in TensorBoard: {sorted(tags)}"


@pytest.mark.slow
def test_persistent_nan_stops_after_the_allowed_rollbacks(tmp_path: Path) -> None:
    proc = _nan_run(tmp_path, first_call=7, mode="always")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith("error: training diverged") and "2 rollback(s)" in lines[-1], lines
    assert proc.stdout.count("rolling back to") == 2
    latest = tmp_path / "runs" / "demo" / "checkpoints" / "latest.pt"
    assert load_checkpoint(latest)["step"] == 4  # the last good state is kept
