"""Import a BigGAN-PyTorch generator (and optionally its discriminator) as one of our checkpoints.

    python -m biggan.convert biggan-pytorch 138k/G_ema.pth --out imported.pt                 # G only
    python -m biggan.convert biggan-pytorch 138k/G_ema.pth --D 138k/D.pth --out imported.pt  # G and D
    python -m biggan.convert biggan-pytorch G_ema.pth --out faces-start.pt --D D.pth --one-class mean

Everything that the tensors say (resolution, ch, dim_z, classes, shared_dim, attention placement) is read from them;
flags that are given must agree. Nothing is written unless every check passed, and an existing --out is never
overwritten. The result samples with ``sample.py imported.pt --class 207`` and fine-tunes with
``train.py --config ... --init-from imported.pt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from biggan.errors import UserError, cli_main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m biggan.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    bp = formats.add_parser("biggan-pytorch", help="ajbrock/BigGAN-PyTorch G_ema.pth / G.pth (+ D.pth)",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bp.add_argument("generator", type=Path, help="G_ema.pth or G.pth (a state dict; never state_dict.pth)")
    bp.add_argument("--out", type=Path, required=True, help="the checkpoint to write (must not exist)")
    bp.add_argument("--D", dest="discriminator", type=Path, help="the same run's D.pth, imported as D")
    bp.add_argument("--resolution", type=int, help="expected resolution (checked against the block count)")
    bp.add_argument("--attention-res", type=int, nargs="+", help="expected resolution(s) of G's attention")
    bp.add_argument("--ch", type=int, help="expected base width of G")
    bp.add_argument("--dim-z", type=int, help="expected latent size (chunk size x (blocks + 1))")
    bp.add_argument("--n-classes", type=int, help="expected number of classes")
    bp.add_argument("--sn-eps", type=float, default=1e-6, help="their --SN_eps (the released run: 1e-6)")
    bp.add_argument("--class-names", type=Path, help="text file with one class name per line, in index order")
    bp.add_argument("--one-class", metavar="mean|K",
                    help="reduce the class embeddings to one (their mean, or class K) to fine-tune on unlabelled data")
    bp.add_argument("--no-verify", action="store_true",
                    help="skip the forward check against the reference implementation of the file's layout")
    return parser


def main() -> int:
    args = _parser().parse_args()
    from biggan.checkpoint import write_checkpoint_file
    from biggan.convert.biggan_pytorch import ImportRequest, import_biggan_pytorch

    if args.out.exists():
        raise UserError(f"--out {args.out} exists; choose another file name or delete it first (nothing overwritten)")
    names = None
    if args.class_names is not None:
        if not args.class_names.is_file():
            raise UserError(f"--class-names {args.class_names} is not a file; give a text file, one name per line")
        names = [line.strip() for line in args.class_names.read_text().splitlines() if line.strip()]
    request = ImportRequest(args.generator, args.discriminator, args.resolution,
                            tuple(args.attention_res) if args.attention_res else None, args.ch, args.dim_z,
                            args.n_classes, args.sn_eps, names, args.one_class, verify=not args.no_verify)
    result = import_biggan_pytorch(request)
    write_checkpoint_file(result.checkpoint, args.out)
    for line in result.lines:
        print(line)
    cfg = result.checkpoint["model_args"]
    print(f"wrote {args.out}: conditioning class, {cfg['n_classes']} class(es), resolution {cfg['resolution']}, "
          f"dense attention at {[a['res'] for a in cfg['G']['attention']]} in G"
          + (" and a D" if "D" in result.checkpoint else " (no D)"))
    print(f"  sample:    python sample.py {args.out} --class 0 --seeds 0-7 --grid grid.png")
    print(f"  fine-tune: python train.py --config CONFIG --init-from {args.out}")
    return 0


if __name__ == "__main__":
    cli_main(main)
