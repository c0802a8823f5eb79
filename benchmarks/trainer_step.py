"""The trainer's own hot step (``train.py``'s ``_step``: D steps on the real input pipeline, the G step, EMA) measured
per case: images/s, peak memory, host syncs per step and the share of a step's wall time the GPU is busy.

    python benchmarks/trainer_step.py [--config configs/celebahq128_smyrf.yaml] [--device cuda|cpu] [--batch 32]
        [--cases fp32 bf16 bf16+staged bf16+compile] [--warmup 3] [--steps 10] [--set key.sub=value ...] [--out PATH]

A case is a precision (``fp32``/``bf16``) with ``+modifiers``: ``staged`` replaces the real input pipeline by one batch
already on the device (what the step costs without data loading); ``compile``/``channels_last`` set
``runtime.compile``/``runtime.channels_last``; ``prefetch`` sets ``data.prefetch=2``. Unlike ``train_step.py`` (one
layer's attention cases side by side on synthetic tensors) this drives the real trainer, so the data stream, DiffAugment,
EMA and whatever the runtime wraps the models in are all inside the measurement. Defaults: FID off, ``model.init=
normal`` (orthogonal init of ch 96 is slow on a CPU and costs nothing per step), demo faces rendered into
``--data-dir`` (``data.kind=synthetic``) unless ``--set data.kind=...`` says otherwise.

Per case, after ``--warmup`` steps (allocator, SMYRF's per-shape kernel choice, compilation):
- ``img/s``: real images shown to D per second (the trainer's ``speed/img_per_sec``) over ``--steps`` steps, closed by
  a device synchronisation;
- ``syncs/step`` (CUDA): ``torch.cuda.set_sync_debug_mode("warn")`` around ``--sync-steps`` steps; warnings caught
  both from Python and from C++ threads (stderr, e.g. autograd's backward thread), divided by the steps; the first
  culprit's location is reported. Target (issue 12): 0;
- ``busy`` (CUDA): ``torch.profiler`` over ``--profile-steps`` steps; the union of kernel/memcpy/memset intervals
  divided by the wall time of those steps. The profiler adds host overhead, so this is a lower bound. Target: >= 90 %.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout

from biggan.errors import ConfigError  # noqa: E402
from biggan.runtime import Runtime  # noqa: E402
from biggan.training.config import load_config  # noqa: E402
from biggan.training.divergence import FiniteMonitor  # noqa: E402
from biggan.training.logging import RunLogger  # noqa: E402
from biggan.training.loop import _Accumulator, _Trainer  # noqa: E402  (the real hot step, not a copy of it)
from biggan.training.run_dir import RunDir  # noqa: E402

MODIFIERS = {"compile": ["runtime.compile=true"], "channels_last": ["runtime.channels_last=true"],
             "prefetch": ["data.prefetch=2"], "staged": []}
BUSY_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}  # chrome-trace categories of device activity


def case_overrides(case: str, device: str) -> tuple[list[str], bool]:
    """Config overrides of ``case`` and whether its input is pre-staged."""
    precision, *mods = case.split("+")
    if precision not in ("fp32", "bf16") or any(m not in MODIFIERS for m in mods):
        raise SystemExit(f"error: case {case!r} must be fp32|bf16 with +{'|+'.join(MODIFIERS)} modifiers")
    overrides = [f"runtime.kind={device}", f"runtime.precision={precision}"]
    for m in mods:
        overrides += MODIFIERS[m]
    return overrides, "staged" in mods


def build_trainer(case: str, args: argparse.Namespace, work: Path) -> _Trainer:
    overrides, staged = case_overrides(case, args.device)
    base = [f"out_dir={work}", f"name={case.replace('+', '_')}", "fid.every=0", "model.init=normal",
            f"train.batch_size={args.batch}", "log.attention_probe=false", "data.kind=synthetic",
            f"data.path={args.data_dir}", f"data.synthetic_num_images={args.images}"]
    cfg = load_config(args.config, base + args.set + overrides)
    runtime = Runtime.setup(cfg.runtime)
    run_dir = RunDir.for_run(cfg.out_dir, cfg.name)
    run_dir.create()
    trainer = _Trainer(cfg, runtime, run_dir, RunLogger(run_dir, enabled=False, echo=False))
    if staged:
        x, y = trainer._real_batch()  # one real batch, already on the device: the step without data loading
        trainer._real_batch = lambda: (x, y)
    return trainer


def _steps(trainer: _Trainer, n: int) -> float:
    """Wall seconds of ``n`` hot steps, closed by a device synchronisation."""
    acc, monitor = _Accumulator(), FiniteMonitor(trainer.runtime.device)
    trainer.runtime.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        trainer._step(acc, monitor)
    trainer.runtime.synchronize()
    return time.perf_counter() - start


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Route file descriptor 2 (C++ warnings, e.g. from autograd's backward thread) into ``path``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def count_syncs(trainer: _Trainer, n: int, work: Path) -> tuple[float, str]:
    """Host syncs per step under ``set_sync_debug_mode("warn")`` and where the first one came from."""
    log = work / "sync_stderr.txt"
    with warnings.catch_warnings(record=True) as caught, _stderr_to(log):
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _steps(trainer, n)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    python = [w for w in caught if "synchroniz" in str(w.message)]
    native = [line for line in log.read_text(errors="replace").splitlines() if "synchroniz" in line]
    count = len(python) + len(native)
    where = f"{python[0].filename}:{python[0].lineno}" if python else (native[0][:100] if native else "")
    return count / n, where


def busy_share(trainer: _Trainer, n: int, work: Path) -> float | None:
    """Union of device activity intervals / wall time over ``n`` profiled steps (None without device events)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.runtime.kind == "cuda" else [])
    with profile(activities=activities) as prof:
        wall = _steps(trainer, n)
    trace = work / "trace.json"
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text()).get("traceEvents", [])
    spans = sorted((e["ts"], e["ts"] + e.get("dur", 0)) for e in events
                   if e.get("ph") == "X" and e.get("cat", "").lower() in BUSY_CATEGORIES)
    if not spans:
        return None
    busy, end = 0.0, float("-inf")  # union of intervals, microseconds
    for s, e in spans:
        if e > end:
            busy += e - max(s, end)
            end = e
    return min(1.0, busy / 1e6 / wall)


def measure(case: str, args: argparse.Namespace) -> dict:
    row: dict = {"case": case}
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        try:
            trainer = build_trainer(case, args, work)
        except ConfigError as err:  # a bad --set or case override: this case's row says so, the others still run
            return {**row, "error": str(err).splitlines()[0][:160]}
        cfg, rt = trainer.cfg, trainer.runtime
        images_per_step = trainer.global_batch * cfg.train.num_d_steps
        _steps(trainer, args.warmup)
        rt.reset_peak_memory()
        seconds = _steps(trainer, args.steps)
        row.update(img_per_s=args.steps * images_per_step / seconds, s_per_step=seconds / args.steps,
                   peak_gib=rt.peak_memory_bytes() / 2**30, batch=cfg.train.batch_size,
                   num_d_steps=cfg.train.num_d_steps, resolution=cfg.model.resolution, compiled=_compiled(trainer))
        if rt.kind == "cuda":
            row["syncs_per_step"], row["first_sync"] = count_syncs(trainer, args.sync_steps, work)
        row["busy"] = busy_share(trainer, args.profile_steps, work)
        row["tf32"] = torch.backends.cuda.matmul.allow_tf32 if rt.kind == "cuda" else None
        row["prefetch"] = cfg.data.prefetch
    return row


def _compiled(trainer: _Trainer) -> bool:
    """Whether G or D reached the step wrapped by ``torch.compile`` (however the runtime applied it)."""
    mods = [trainer.state.G, trainer.state.D, getattr(trainer.state.G, "module", None)]
    return any(type(m).__name__ == "OptimizedModule" or getattr(m, "_compiled_call_impl", None) is not None
               for m in mods if m is not None)  # torch.compile(m) or m.compile()


def report(rows: list[dict]) -> None:
    print(f"{'case':<22}{'img/s':>9}{'s/step':>9}{'peak GiB':>10}{'syncs/step':>12}{'busy':>7}  notes")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:<22}  error: {r['error']}")
            continue
        syncs = "-" if r.get("syncs_per_step") is None else f"{r['syncs_per_step']:.2f}"
        busy = "-" if r.get("busy") is None else f"{100 * r['busy']:.0f}%"
        note = f"compiled {r['compiled']}" + (f"; first sync {r['first_sync']}" if r.get("first_sync") else "")
        print(f"{r['case']:<22}{r['img_per_s']:>9.1f}{r['s_per_step']:>9.3f}{r['peak_gib']:>10.2f}{syncs:>12}"
              f"{busy:>7}  {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "celebahq128_smyrf.yaml"))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--cases", nargs="+", default=["fp32", "bf16", "bf16+staged"])
    parser.add_argument("--batch", type=int, default=32, help="train.batch_size (per device)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--sync-steps", type=int, default=3, help="steps under the sync debug mode (CUDA)")
    parser.add_argument("--profile-steps", type=int, default=3, help="profiled steps for the busy share")
    parser.add_argument("--images", type=int, default=256, help="demo faces rendered for the input pipeline")
    parser.add_argument("--data-dir", default=None, help="where the demo faces are rendered (default: a temp dir)")
    parser.add_argument("--work", default=None, help="scratch directory (run dirs, traces)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    for case in args.cases:
        case_overrides(case, args.device)  # reject a malformed case before any work
    with tempfile.TemporaryDirectory() as scratch:
        args.work = args.work or scratch
        args.data_dir = args.data_dir or str(Path(scratch) / "datasets")
        rows = []
        for case in args.cases:
            try:
                rows.append(measure(case, args))
            except Exception as err:  # one case failing (OOM, compile error) must not hide the others
                rows.append({"case": case, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:150]}"})
            gc.collect()  # the case's models and optimiser state, before the next case allocates its own
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if args.out:  # after every case: a run killed by its time limit keeps what it measured
                Path(args.out).write_text(json.dumps({"torch": torch.__version__, "config": args.config,
                                                      "rows": rows}, indent=1) + "\n")
    report(rows)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
