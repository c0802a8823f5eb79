"""Generate images from a checkpoint alone (G is rebuilt from the config stored in it; no flags to repeat).

    python sample.py runs/demo --seeds 0-63 --grid grid.png          # G_ema, one image per seed, 8x8 grid
    python sample.py runs/demo/checkpoints/latest.pt --seeds 0-9 --outdir out/   # out/seed0000.png ...
    python sample.py runs/demo --seeds 0,7,3 --interpolate --steps 8 --grid lerp.png   # z paths 0->7->3
    python sample.py runs/demo --seeds 0-15 --attention dense --grid dense.png        # SMYRF-trained G, dense attention
    python sample.py runs/demo --seeds 0-15 --attention smyrf --n-hashes 4 --q-cluster-size 128 --k-cluster-size 32
    python sample.py imported.pt --class 207 --seeds 0-7 --truncation-trick 2 --grid dogs.png   # one class
    python sample.py imported.pt --classes 0-9 --seeds 0-7 --grid rows.png   # a row per class, a column per seed
    python sample.py runs/demo --seeds 0-7 --compare-attention --grid cmp.png   # rows: SMYRF | dense | 4x|diff|

Image i depends only on seed i (one torch.Generator per seed), at any --batch-size. Two truncations, which compose:
``--truncation-trick t`` draws z from N(0, I) truncated to [-t, t] (the BigGAN paper's trick; values outside are
resampled), ``--z-scale s`` multiplies z by s (BigGAN-PyTorch's "z_var" truncation: a narrower normal, not a truncated
one; ``--truncation`` is its old name). The TF-Hub notebooks' ``truncation=0.5`` is ``--truncation-trick 2
--z-scale 0.5``. Every PNG records the checkpoint, network, seed(s), class(es), z distribution and attention in its
text chunks. G runs in eval mode: BN running statistics and fixed SMYRF projection seeds.
``--compare-attention`` runs the same seeds through G with its SMYRF settings (or the --n-hashes/... overrides) and
with dense attention, writes them side by side (with 4x the absolute difference) in one grid, prints each image's
difference (relative L2, max |diff|, PSNR) and writes it to the grid's path with .json. The work is
:func:`biggan.generation.sampling.sample`.
"""

from __future__ import annotations

import argparse

from biggan.errors import cli_main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint .pt, or a run directory (uses checkpoints/latest.pt)")
    parser.add_argument("--seeds", default="0-63", help="seeds, e.g. 0-63 or 1,5,9 (default 0-63)")
    parser.add_argument("--grid", metavar="PNG", help="write all images as one grid")
    parser.add_argument("--outdir", metavar="DIR", help="write one PNG per image (seed0000.png or class0207-seed0000.png)")
    classes = parser.add_mutually_exclusive_group()
    classes.add_argument("--class", dest="one_class", metavar="C", help="class-conditional G: this class (index or "
                         "recorded name) for every seed")
    classes.add_argument("--classes", metavar="LIST", help="class-conditional G: one grid row per class, e.g. 0-9, "
                         "1,5,9 or names")
    classes.add_argument("--list-classes", action="store_true", help="print the classes (and names) and exit")
    parser.add_argument("--truncation-trick", type=float, metavar="T", help="z from N(0, I) truncated to [-T, T]")
    parser.add_argument("--z-scale", "--truncation", dest="z_scale", type=float, default=1.0, metavar="S",
                        help="multiply z by S: N(0, S²I), BigGAN-PyTorch's 'truncation' (default 1.0)")
    parser.add_argument("--interpolate", action="store_true", help="linear z paths between consecutive seeds")
    parser.add_argument("--steps", type=int, default=8, help="frames per interpolation path (default 8)")
    parser.add_argument("--attention", choices=["dense", "smyrf"], help="switch G's attention kind for sampling")
    parser.add_argument("--n-hashes", type=int, help="SMYRF hash rounds override")
    parser.add_argument("--q-cluster-size", type=int, help="SMYRF query cluster size override")
    parser.add_argument("--k-cluster-size", type=int, help="SMYRF key cluster size override")
    parser.add_argument("--compare-attention", action="store_true",
                        help="grid of SMYRF | dense | 4x|diff| per seed, and each image's difference (JSON)")
    parser.add_argument("--use-g", action="store_true", help="use G instead of G_ema")
    parser.add_argument("--batch-size", type=int, default=16, help="images generated at once (default 16)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    return parser


def main() -> int:
    args = _parser().parse_args()

    from biggan.generation.sampling import SampleRequest, sample

    print(sample(SampleRequest(**vars(args))))
    return 0


if __name__ == "__main__":
    cli_main(main)
