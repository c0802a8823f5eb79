"""Train BigGAN with dense or SMYRF attention.

    python train.py                                     # the demo (configs/demo.yaml), CPU-friendly
    python train.py --config configs/celebahq128_smyrf.yaml train.batch_size=16 fid.every=0
    python train.py --config configs/celebahq128_smyrf.yaml --dry-run   # resolved config, sizes, placement; exit
    torchrun --nproc_per_node=8 train.py --config configs/celebahq128_smyrf.yaml   # DDP on 8 GPUs

Running the same command again resumes from ``<out_dir>/<name>/checkpoints/latest.pt``; ``--resume PATH`` picks a
checkpoint explicitly. ``--init-from FILE`` starts a new run from a pretrained generator checkpoint (e.g. one made by
``python -m biggan.convert``): G, G_ema and D if the file has one, fresh optimisers, step 0; rerunning the same
command resumes that run. Overrides are ``key.sub=value`` with YAML values (``model.G.attention.0.n_hashes=2``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from biggan.errors import cli_main

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (deltas over the defaults)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and model summary, then exit")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", metavar="PATH", help="resume from this checkpoint instead of the run's latest.pt")
    start.add_argument("--init-from", metavar="FILE", help="start a new run from this pretrained generator checkpoint "
                       "(G, G_ema, and D if it has one); a rerun resumes it")
    args = parser.parse_args()

    from biggan.training.config import describe_run, load_config  # after argparse, so that --help is instant

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        print(describe_run(cfg))
        return 0
    from biggan.runtime import Runtime
    from biggan.training.loop import run

    runtime = Runtime.setup(cfg.runtime)
    try:
        return run(cfg, runtime, resume=args.resume, init_from=args.init_from)
    finally:
        runtime.shutdown()


if __name__ == "__main__":
    cli_main(main)
