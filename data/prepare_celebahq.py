"""Prepare CelebA-HQ for training: ``python -m data.prepare_celebahq SRC OUT --resolution 128 256``.

SRC is a folder (searched recursively) or a zip of square JPG/PNG images in any common CelebA-HQ form. OUT/<res>/
receives ``images.npy`` (uint8 memmap) and ``manifest.json`` (:mod:`biggan.data.prepare`), then the FID reference
statistics ``fid_stats_d2048.npz`` of all prepared images and, from the same Inception pass, the KID/PR reference
features ``fid_stats_d2048.features.npz`` of a fixed random 10k of them (:mod:`biggan.fid`); point ``data.path`` at
it with ``data.kind: prepared``. Rerunning skips finished work: up-to-date images, and statistics and features made by
the same extractor from the same images. ``--labels`` prepares any folder with one sub-folder per class (torchvision
ImageFolder rules) for class-conditional training: ``labels.npy`` and the class names go with the images.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from biggan.data import PreparedDataset
from biggan.data.prepare import CELEBAHQ_COUNT, PrepareReport, prepare_dataset
from biggan.errors import cli_main
from biggan.fid import ensure_reference_stats, load_extractor, reference_stats_current
from biggan.fid.extractor import extractor_identity
from biggan.fid.reference_features import ensure_reference_features, features_current, reference_features_path
from biggan.fid.weights import resolve_weights_path


def prepare(src: str | Path, out: str | Path, resolutions: Sequence[int], resample: str = "box",
            skip_bad: bool = False, expect_count: int | None = CELEBAHQ_COUNT, fid_dims: Sequence[int] = (2048,),
            weights_path: str | None = None, batch_size: int = 50, workers: int = 1,
            device: str = "cpu", labelled: bool = False, ref_features: int = 10000) -> PrepareReport:
    """Prepared images at every resolution, then their FID reference statistics at each of ``fid_dims`` and (unless
    ``ref_features`` is 0) the KID/PR reference features of ``ref_features`` of them, from the same pass.

    The weights are checked before any image is touched, so a missing file fails in seconds, not after decoding.
    """
    weights = resolve_weights_path(weights_path) if fid_dims else None  # WeightsError before any work
    report = prepare_dataset(src, out, resolutions, resample=resample, skip_bad=skip_bad, expect_count=expect_count,
                             workers=workers, labelled=labelled)
    extractors = {}
    for res in resolutions:
        dataset = PreparedDataset(Path(out) / str(res), res)
        for dims in fid_dims:
            stats, identity = dataset.reference_stats_path(dims), extractor_identity(weights, dims)
            stats_ok = reference_stats_current(stats, identity, len(dataset))
            features_ok = not ref_features or features_current(reference_features_path(stats), identity,
                                                                len(dataset), ref_features)
            if stats_ok and features_ok:
                continue
            if dims not in extractors:  # built only when statistics must be computed (a few seconds each)
                extractors[dims] = load_extractor(weights, device, dims)
            if ref_features:  # statistics and features from one pass (only the features if the statistics are current)
                features = ensure_reference_features(dataset, extractors[dims], batch_size, ref_features)
                report.stats_written += ([] if stats_ok else [stats]) + [features]
            else:
                report.stats_written.append(ensure_reference_stats(dataset, extractors[dims], batch_size))
    return report


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
    parser.add_argument("--ref-features", type=int, default=10000,
                        help="KID/PR reference features kept per depth (a fixed random subset; 0: none)")
    parser.add_argument("--weights", default=None, help="FID weights file (default: the torch hub cache file)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per Inception batch")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decode processes")
    parser.add_argument("--device", default="cpu", help="device for the Inception network, e.g. cuda")
    parser.add_argument("--labels", action="store_true",
                        help="SRC has one sub-folder per class (ImageFolder rules): prepare labels and class names too")
    args = parser.parse_args()
    report = prepare(args.src, args.out, args.resolution, resample=args.filter, skip_bad=args.skip_bad,
                     expect_count=args.expect_count, fid_dims=args.fid_dims, weights_path=args.weights,
                     batch_size=args.batch_size, workers=args.workers, device=args.device, labelled=args.labels,
                     ref_features=args.ref_features)
    src = report.source
    print(f"source: {src.path} ({src.form}, layout {src.layout}, {len(src.names)} images"
          + (f", {len(src.classes)} classes" if src.classes else "") + ")")
    for problem in report.skipped:
        print(f"skipped: {problem}")
    for res, path in report.outputs.items():
        state = "prepared" if res in report.prepared else "up to date"
        print(f"{res}px: {path} ({state})")
    for path in report.stats_written:
        print(f"FID reference {'features' if path.name.endswith('.features.npz') else 'statistics'}: {path}")
    if not report.prepared and not report.stats_written:
        print("nothing to do")
    return 0


if __name__ == "__main__":
    cli_main(main)
