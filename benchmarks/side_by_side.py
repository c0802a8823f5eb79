"""Measuring cases side by side on a shared machine: peak memory one process per case, time with the cases in turn.

Used by ``generator.py`` and ``train_step.py``; each builds a step per case and answers two hidden flags, which
:func:`run_child` passes to a fresh copy of the script:

- ``--child-memory CASE``: :func:`peak_of` in a process that holds only that case, so its peak belongs to it alone. CPU
  peak is the peak RSS (VmHWM, reset through /proc/self/clear_refs after the warm-up); glibc's mmap threshold is fixed
  at 128 KiB there, so freed buffers leave RSS at once and RSS follows live memory. CUDA peak is
  ``max_memory_allocated``. "Rise" is the peak above the memory at the reset.
- ``--child-time all``: :func:`times_in_turn` in a process that builds every case and steps them in turn
  (A B C A B C ...) under the allocator training runs with. Steps taken next to each other see the same machine load,
  which on our shared machines drifts by tens of percent within minutes (separate processes per case, minutes apart,
  gave 1.01 to 1.27 for the same pair), so :func:`paired_ratio` takes the median of per-step ratios. The 128 KiB
  threshold stays out of timing: it page-faults every buffer over 128 KiB on each allocation, which slowed SMYRF's
  many medium-sized gathers far more than convolutions (SMYRF@128 / dense@64 train step 1.18x under it, 1.01x under a
  32 MiB threshold).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from biggan.runtime import Runtime

__all__ = ["run_child", "peak_of", "times_in_turn", "combine", "paired_ratio"]

LIVE_RSS_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}  # glibc: buffers over 128 KiB are mmapped, unmapped when freed


def run_child(script: str, argv: list[str], mode: str, case: str = "all") -> dict:
    """``script argv --child-MODE CASE`` in a fresh process ("memory" or "time"); its last stdout line is JSON. An error
    becomes ``{"error": last stderr line}``, so one failing case does not abort the whole table."""
    env = {**os.environ, **LIVE_RSS_ENV} if mode == "memory" else dict(os.environ)
    proc = subprocess.run([sys.executable, script, *argv, f"--child-{mode}", case], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_of(step: Callable[[], None], rt: Runtime, warmup: int) -> dict[str, int]:
    """Peak and rise of memory during one ``step`` after ``warmup`` steps (allocator pools, lazy init, autotuning)."""
    for _ in range(warmup):
        step()
    rt.synchronize()
    rt.reset_peak_memory()
    base = torch.cuda.memory_allocated(rt.device) if rt.kind == "cuda" else rt.peak_memory_bytes()
    step()
    rt.synchronize()
    peak = rt.peak_memory_bytes()
    return {"peak_bytes": peak, "rise_bytes": peak - base}


def times_in_turn(steps: dict[str, Callable[[], None]], rt: Runtime, n_steps: int, warmup: int) -> dict[str, dict]:
    """Wall and process CPU seconds of ``n_steps`` synchronised steps per case, the cases stepping in turn."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    rt.synchronize()
    times: dict[str, dict] = {case: {"times_s": [], "cpu_s": []} for case in steps}
    for _ in range(n_steps):
        for case, step in steps.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            rt.synchronize()
            times[case]["times_s"].append(time.perf_counter() - start)
            times[case]["cpu_s"].append(time.process_time() - cpu_start)
    return times


def combine(cases: list[str], memory: list[dict], rounds: list[dict]) -> list[dict]:
    """One row per case: median wall and CPU seconds over every step of every timing process (``rounds``), the steps
    themselves (for :func:`paired_ratio`), and the peak and rise of the case's memory process."""
    rows = []
    for case, mem in zip(cases, memory):
        errors = [r["error"] for r in (mem, *rounds) if "error" in r]
        if errors:
            rows.append({"case": case, "error": errors[0]})
            continue
        wall = [t for r in rounds for t in r[case]["times_s"]]
        cpu = [t for r in rounds for t in r[case]["cpu_s"]]
        rows.append({"case": case, "median_s": statistics.median(wall), "median_cpu_s": statistics.median(cpu),
                     "times_s": wall, "cpu_s": cpu, "peak_bytes": mem["peak_bytes"], "rise_bytes": mem["rise_bytes"]})
    return rows


def paired_ratio(case: dict, base: dict, key: str) -> tuple[float, list[float]]:
    """case / base for a row of :func:`combine`. Times: the median of the ratios of steps taken next to each other.
    Memory (``peak_bytes``, ``rise_bytes``): one measurement per case."""
    if key in ("peak_bytes", "rise_bytes"):
        return case[key] / base[key], [case[key] / base[key]]
    per_step = {"median_s": "times_s", "median_cpu_s": "cpu_s"}[key]
    ratios = [c / b for c, b in zip(case[per_step], base[per_step])]
    return statistics.median(ratios), ratios
