"""XLA compile count and compile time of a short ``train.py`` run, from torch_xla's ``CompileTime`` metric.

    PJRT_DEVICE=CPU CPU_NUM_DEVICES=2 "$(scripts/xla_env.sh)/bin/python" benchmarks/xla_compiles.py \
        [--config configs/demo.yaml] [--steps 12] [--out-dir /tmp/xla_compiles] [key.sub=value ...]

Runs the trainer (``biggan.training.loop.run``, the same call as ``train.py``) for ``--steps`` steps with FID off
(no Inception weights needed), a tick every ``--steps / 3`` steps and samples and a checkpoint at the end, then prints
one JSON line: ``compiles`` and ``compile_seconds`` (every XLA program compiled in the run, the tick's included),
``wall_seconds`` and ``steady_step_seconds`` (the last tick's ``speed/sec_per_step``: steps after every program was
compiled). On a shared machine compare runs made side by side, never absolute times.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out-dir", default=None, help="run directory parent (default: a temporary directory)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args()

    import torch_xla.debug.metrics as met

    from biggan.runtime import Runtime
    from biggan.training.config import load_config
    from biggan.training.loop import run

    out_dir = args.out_dir or tempfile.mkdtemp(prefix="xla_compiles_")
    every = max(1, args.steps // 3)
    cfg = load_config(args.config, [
        "runtime.kind=xla", "fid.every=0", f"train.total_steps={args.steps}", f"log.every={every}",
        f"log.sample_every={args.steps}", f"train.ckpt_every={args.steps}", "log.progress_bar=false",
        f"out_dir={out_dir}", *args.overrides])
    runtime = Runtime.setup(cfg.runtime)
    start = time.perf_counter()
    try:
        run(cfg, runtime, echo=False)
    finally:
        runtime.shutdown()
    wall = time.perf_counter() - start
    compile_time = met.metric_data("CompileTime")
    ticks = [json.loads(line) for line in (Path(out_dir) / cfg.name / "stats.jsonl").read_text().splitlines()]
    print(json.dumps({
        "config": args.config, "steps": args.steps, "num_devices": runtime.num_devices,
        "compiles": 0 if compile_time is None else int(compile_time[0]),
        "compile_seconds": 0.0 if compile_time is None else round(compile_time[1] / 1e9, 1),
        "wall_seconds": round(wall, 1), "steady_step_seconds": round(ticks[-1]["speed/sec_per_step"], 3),
    }))


if __name__ == "__main__":
    main()
