"""Two hosts of a multi-host SPMD run, simulated on one machine: run by tests/test_xla.py as two processes.

    hosts.py --rank R --world 2 --out DIR      # with MASTER_ADDR/MASTER_PORT set, PJRT_DEVICE=CPU, the torch-xla venv

XLA:CPU has one process per PJRT client, so ``torch_xla.runtime.process_index/process_count`` are patched to (R, 2)
before :meth:`Runtime.setup`; everything else is real: the runtime's SPMD setup, its gloo group over torch-xla's
``xla://`` rendezvous (which reads the patched index and count and puts the TCP store on host 0), the barrier and
``gather_to_main``. What is not simulated: the devices of both hosts in one mesh (each process has its own), and so
``shard_batch``'s global-from-host-parts assembly and any device collective between hosts.

Checked: (1) the barrier waits: host 0 writes a file 1 s after setup, then enters the barrier; host 1 enters the
barrier at once and then looks for the file; (2) every host's SMYRF projection generators equal host 0's, while their
z streams differ (TrainingState with the runtime's ``hosts_share_model_rng``). Results: ``DIR/host<R>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch
    import torch_xla.runtime as xr

    xr.process_index = lambda: args.rank  # the simulated host index and count (module docstring)
    xr.process_count = lambda: args.world

    from biggan.models import attention_rng_state
    from biggan.runtime import Runtime, RuntimeConfig
    from biggan.training.config import Config
    from biggan.training.state import TrainingState
    from checks import model_config

    rt = Runtime.setup(RuntimeConfig(kind="xla", spmd=True))
    flag = args.out / "written_by_host0"
    if rt.rank == 0:
        time.sleep(1.0)  # host 1 reaches the barrier first; without a real barrier it looks before the file exists
        flag.write_text("ok")
    rt.barrier()
    saw_file = flag.exists()
    rt.barrier()  # host 0 keeps the group up until host 1 has looked

    state = TrainingState(Config(model=model_config()), rt)
    mine = {"attention": {name: s.tolist() for name, s in attention_rng_state(state.G_).items()},
            "z": torch.get_rng_state().tolist()}
    gathered = rt.gather_to_main(mine)
    result = {"rank": rt.rank, "world_size": rt.world_size,
              "hosts_share_model_rng": getattr(rt, "hosts_share_model_rng", None),
              "saw_host0_file_after_barrier": saw_file,
              "projection_rng": hashlib.sha256(json.dumps(mine["attention"]).encode()).hexdigest(),
              "z_rng": hashlib.sha256(json.dumps(mine["z"]).encode()).hexdigest()}
    if gathered is not None:
        result["gathered"] = len(gathered)
        result["same_projection_rng"] = all(g["attention"] == gathered[0]["attention"] for g in gathered)
        result["distinct_z_rng"] = len({json.dumps(g["z"]) for g in gathered}) == len(gathered)
    (args.out / f"host{rt.rank}.json").write_text(json.dumps(result))
    rt.shutdown()


if __name__ == "__main__":
    main()
