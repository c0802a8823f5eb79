"""Driving the real CLIs from tests: the tiny demo command, a live view of a child's output, run-dir fingerprints.

Shared by the fault-injection, preemption and bad-input tests, which all start ``train.py`` & co. as subprocesses (the
only honest way to test exit codes, signals and SIGKILL).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
STEP_RE = re.compile(r"^step (\d+)/(\d+)\b")
RESUMED_RE = re.compile(r"resumed from (\S+) at step (\d+)")


def tiny_overrides(out_dir: Path, datasets: Path, total_steps: int, ckpt_every: int) -> list[str]:
    """The demo config shrunk to seconds on a CPU; keeps the demo's SMYRF/dense attention (and its RNG state)."""
    return [
        f"out_dir={out_dir}",
        f"data.path={datasets}",
        "data.synthetic_num_images=64",
        "model.G.ch=4",
        "model.D.ch=4",
        "train.batch_size=4",
        f"train.total_steps={total_steps}",
        f"train.ckpt_every={ckpt_every}",
        "train.keep_last=2",
        "log.every=1",  # a status line per step: the test knows how far the run got before it was killed
        "log.sample_every=100000",
        "log.num_samples=4",
        "fid.every=0",
        "runtime.kind=cpu",
    ]


def child_env() -> dict[str, str]:
    """One intra-op thread (bit-reproducible CPU maths across processes, and fair on a 2-core CI box)."""
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


class LiveProcess:
    """A child whose stdout and stderr lines are collected as they arrive (so a test can act on progress)."""

    def __init__(self, argv: list[str], cwd: Path = REPO) -> None:
        self.proc = subprocess.Popen(argv, cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(s, d), daemon=True)
                         for s, d in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            with self._cond:
                lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: re.Pattern, timeout: float) -> re.Match | None:
        """First stdout match of ``pattern`` (None if the process ended or ``timeout`` passed without one)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.stdout:
                    match = pattern.search(line)
                    if match:
                        return match
                if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.2))

    def wait_for_step(self, step: int, timeout: float) -> bool:
        """Wait until a status line at ``step`` or later was printed (False if the process ended or time ran out)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._last_step() < step:
                if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def _last_step(self) -> int:
        steps = [int(m.group(1)) for m in map(STEP_RE.match, self.stdout) if m]
        return steps[-1] if steps else 0

    def last_step(self) -> int:
        """The last step whose status line was printed (0 if none)."""
        with self._cond:
            return self._last_step()

    def finish(self, timeout: float) -> int:
        """Wait for exit and for the output readers; returns the exit status."""
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


def fingerprint(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest): "nothing overwritten or lost" is equality."""
    if not root.exists():
        return {}
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
