"""Prepare CelebA-HQ for training: ``python -m data.prepare_celebahq SRC OUT --resolution 128 256``.

SRC is a folder (searched recursively) or a zip of square JPG/PNG images in any common CelebA-HQ form. OUT/<res>/
receives ``images.npy`` (uint8 memmap), ``manifest.json`` and ``fid_stats_d2048.npz``; point ``data.path`` at it with
``data.kind: prepared``. Rerunning skips finished work. See :mod:`biggan.data.prepare` for the steps.
"""

from __future__ import annotations

import argparse
import os

from biggan.data.prepare import CELEBAHQ_COUNT, prepare_dataset
from biggan.errors import cli_main


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m data.prepare_celebahq", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("src", help="folder or zip of CelebA-HQ images (any common form)")
    parser.add_argument("out", help="output root; each resolution goes to OUT/<res>/")
    parser.add_argument("--resolution", type=int, nargs="+", required=True, help="target resolutions, e.g. 128 256")
    parser.add_argument("--filter", choices=["box", "lanczos"], default="box",
                        help="antialiasing resize filter (box = ProGAN averaging; recorded in the manifest)")
    parser.add_argument("--skip-bad", action="store_true", help="skip and report bad files instead of failing")
    parser.add_argument("--expect-count", type=int, default=CELEBAHQ_COUNT, help="required number of images (0 = any)")
    parser.add_argument("--fid-dims", type=int, nargs="*", default=[2048],
                        help="Inception depths of the FID reference statistics (none: --fid-dims with no value)")
    parser.add_argument("--weights", default=None, help="FID weights file (default: the torch hub cache file)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per Inception batch")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decode processes")
    parser.add_argument("--device", default="cpu", help="device for the Inception network, e.g. cuda")
    args = parser.parse_args()
    report = prepare_dataset(args.src, args.out, args.resolution, resample=args.filter, skip_bad=args.skip_bad,
                             expect_count=args.expect_count, fid_dims=args.fid_dims, weights_path=args.weights,
                             batch_size=args.batch_size, workers=args.workers, device=args.device)
    src = report.source
    print(f"source: {src.path} ({src.form}, layout {src.layout}, {len(src.names)} images)")
    for problem in report.skipped:
        print(f"skipped: {problem}")
    for res, path in report.outputs.items():
        state = "prepared" if res in report.prepared else "up to date"
        print(f"{res}px: {path} ({state})")
    for path in report.stats_written:
        print(f"FID reference statistics: {path}")
    if not report.prepared and not report.stats_written:
        print("nothing to do")
    return 0


if __name__ == "__main__":
    cli_main(main)
