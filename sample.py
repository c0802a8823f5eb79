"""Generate images from a checkpoint alone (G is rebuilt from the config stored in it; no flags to repeat).

    python sample.py runs/demo --seeds 0-63 --grid grid.png          # G_ema, one image per seed, 8x8 grid
    python sample.py runs/demo/checkpoints/latest.pt --seeds 0-9 --outdir out/   # out/seed0000.png ...
    python sample.py runs/demo --seeds 0,7,3 --interpolate --steps 8 --grid lerp.png   # z paths 0->7->3
    python sample.py runs/demo --seeds 0-15 --attention dense --grid dense.png        # SMYRF-trained G, dense attention
    python sample.py runs/demo --seeds 0-15 --attention smyrf --n-hashes 4 --q-cluster-size 128 --k-cluster-size 32
    python sample.py imported.pt --class 207 --seeds 0-7 --truncation-trick 2 --grid dogs.png   # one class
    python sample.py imported.pt --classes 0-9 --seeds 0-7 --grid rows.png   # a row per class, a column per seed

Image i depends only on seed i (one torch.Generator per seed), at any --batch-size. Two truncations, which compose:
``--truncation-trick t`` draws z from N(0, I) truncated to [-t, t] (the BigGAN paper's trick; values outside are
resampled), ``--z-scale s`` multiplies z by s (BigGAN-PyTorch's "z_var" truncation: a narrower normal, not a truncated
one; ``--truncation`` is its old name). The TF-Hub notebooks' ``truncation=0.5`` is ``--truncation-trick 2
--z-scale 0.5``. Every PNG records the checkpoint, network, seed(s), class(es), z distribution and attention in its
text chunks. G runs in eval mode: BN running statistics and fixed SMYRF projection seeds.
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
    parser.add_argument("--use-g", action="store_true", help="use G instead of G_ema")
    parser.add_argument("--batch-size", type=int, default=16, help="images generated at once (default 16)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    return parser


def _classes(args, n_classes, names) -> list[int] | None:
    """The classes to draw (None: G takes no class), with one clear line for every mismatch."""
    from biggan.errors import UserError
    from biggan.generation.classes import parse_classes

    wanted = args.one_class or args.classes
    if n_classes is None:
        if wanted is not None:
            raise UserError("this generator is unconditional (it takes no class); drop --class/--classes")
        return None
    if wanted is None:
        raise UserError(f"this generator is class-conditional ({n_classes} classes, 0-{n_classes - 1}); choose with "
                        "--class C or --classes LIST (--list-classes shows them)")
    classes = parse_classes(wanted, n_classes, names)
    if args.one_class is not None and len(classes) != 1:
        raise UserError(f"--class takes one class, got {args.one_class!r}; use --classes for several")
    if args.interpolate and args.classes is not None:
        raise UserError("--interpolate draws paths within one class; use --class C")
    return classes


def _common_metadata(args, info, G) -> dict[str, str]:
    """PNG text chunks shared by every image of this invocation: what made it and how z was drawn."""
    from biggan.generation.latents import describe_latents
    from biggan.models import describe_attention

    trick = args.truncation_trick
    return {"Software": "smyrf-biggan sample.py", "checkpoint": info["path"], "network": info["network"],
            "step": str(info["step"]), "z": describe_latents(args.z_scale, trick), "z_scale": f"{args.z_scale:g}",
            "truncation_trick": "off" if trick is None else f"{trick:g}",
            "attention": "; ".join(line.strip() for line in describe_attention(G, "G"))}


def main() -> int:
    args = _parser().parse_args()

    from biggan.errors import UserError
    from biggan.generation.attention import attention_overrides
    from biggan.generation.checkpoint import load_generator
    from biggan.generation.classes import class_count, class_grid, describe_class
    from biggan.generation.generate import generate
    from biggan.generation.latents import interpolation_latents, latents_for_seeds, parse_seeds
    from biggan.images import save_grid, save_image_files
    from biggan.models import set_attention

    if not (args.grid or args.outdir or args.list_classes):
        raise UserError("nothing to write: give --grid PNG and/or --outdir DIR")
    if args.batch_size < 1 or args.z_scale <= 0 or (args.truncation_trick is not None and args.truncation_trick <= 0):
        raise UserError("--batch-size must be >= 1, --z-scale (--truncation) and --truncation-trick > 0")
    G, cfg, info = load_generator(args.checkpoint, use_ema=not args.use_g, device=args.device)
    n_classes, names = class_count(cfg), info["class_names"]
    if args.list_classes:
        print(f"{n_classes} classes" if n_classes else "unconditional: no classes")
        for index in range(n_classes or 0):
            print(describe_class(index, names))
        return 0
    classes = _classes(args, n_classes, names)
    set_attention(G, attention_overrides(cfg, args.attention, args.n_hashes, args.q_cluster_size, args.k_cluster_size))
    seeds = parse_seeds(args.seeds)
    z = latents_for_seeds(seeds, cfg.dim_z, args.z_scale, args.truncation_trick)  # (K, dim_z)
    names_out, nrow, y = [f"seed{s:04d}" for s in seeds], None, None
    if args.interpolate:
        z = interpolation_latents(z, args.steps)  # ((K-1)·steps, dim_z)
        names_out = [f"path{i // args.steps:02d}-frame{i % args.steps:02d}" for i in range(z.shape[0])]
        nrow = args.steps
    if classes is not None:
        z, y = class_grid(z, classes)  # (R·K, dim_z), (R·K,): a row per class
        names_out = [f"class{c:04d}-{name}" for c in classes for name in names_out]
        nrow = nrow or (len(seeds) if len(classes) > 1 else None)
    x = generate(G, z, args.batch_size, args.device, y)  # (n, 3, res, res)
    common = _common_metadata(args, info, G)
    if args.grid:
        chosen = {"seeds": args.seeds} | ({"classes": ", ".join(describe_class(c, names) for c in classes)}
                                          if classes is not None else {})
        save_grid(x, args.grid, nrow=nrow, metadata=common | chosen)
    if args.outdir:
        seed_of = None if args.interpolate else [str(s) for s in seeds] * len(classes or [None])
        save_image_files(x, args.outdir, names_out, [
            common | {"image": name} | ({"seed": seed_of[i]} if seed_of else {})
            | ({"class": describe_class(int(y[i]), names)} if y is not None else {})
            for i, name in enumerate(names_out)])
    print(f"{x.shape[0]} images from {info['network']} at step {info['step']} of {info['path']}"
          + (f" -> {args.grid}" if args.grid else "") + (f" -> {args.outdir}/" if args.outdir else ""))
    return 0


if __name__ == "__main__":
    cli_main(main)
