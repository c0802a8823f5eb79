"""Generate images from a checkpoint alone (G is rebuilt from the config stored in it; no flags to repeat).

    python sample.py runs/demo --seeds 0-63 --grid grid.png          # G_ema, one image per seed, 8x8 grid
    python sample.py runs/demo/checkpoints/latest.pt --seeds 0-9 --outdir out/   # out/seed0000.png ...
    python sample.py runs/demo --seeds 0,7,3 --interpolate --steps 8 --grid lerp.png   # z paths 0->7->3
    python sample.py runs/demo --seeds 0-15 --attention dense --grid dense.png        # SMYRF-trained G, dense attention
    python sample.py runs/demo --seeds 0-15 --attention smyrf --n-hashes 4 --q-cluster-size 128 --k-cluster-size 32
    python sample.py runs/demo --seeds 0-7 --compare-attention --grid cmp.png   # rows: SMYRF | dense | 4x|diff|

``--compare-attention`` runs the same seeds through G with its SMYRF settings (or the --n-hashes/... overrides) and
with dense attention, writes them side by side (with 4x the absolute difference) in one grid, prints each image's
difference (relative L2, max |diff|, PSNR) and writes it to the grid's path with .json.

Image i depends only on seed i (one torch.Generator per seed), at any --batch-size. ``--truncation t`` multiplies z
~ N(0, I) by t (BigGAN-PyTorch's "z_var" truncation: a narrower normal, not a truncated normal; BN statistics are
unchanged). G runs in eval mode: BN running statistics and fixed SMYRF projection seeds.
"""

from __future__ import annotations

import argparse

from biggan.errors import cli_main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint .pt, or a run directory (uses checkpoints/latest.pt)")
    parser.add_argument("--seeds", default="0-63", help="seeds, e.g. 0-63 or 1,5,9 (default 0-63)")
    parser.add_argument("--grid", metavar="PNG", help="write all images as one grid")
    parser.add_argument("--outdir", metavar="DIR", help="write one PNG per seed (seed0000.png ...)")
    parser.add_argument("--truncation", type=float, default=1.0, help="scale of z ~ N(0, I) (default 1.0)")
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
    args = parser.parse_args()

    from biggan.errors import UserError
    from biggan.generation.attention import attention_overrides
    from biggan.generation.checkpoint import load_generator
    from biggan.generation.generate import generate
    from biggan.generation.latents import interpolation_latents, latents_for_seeds, parse_seeds
    from biggan.images import save_grid, save_image_files
    from biggan.models import set_attention

    if not (args.grid or args.outdir):
        raise UserError("nothing to write: give --grid PNG and/or --outdir DIR")
    if args.batch_size < 1 or args.truncation <= 0:
        raise UserError("--batch-size must be >= 1 and --truncation > 0")
    if args.compare_attention and (args.attention or args.interpolate or args.outdir or not args.grid):
        raise UserError("--compare-attention needs --grid PNG and takes neither --attention, --interpolate nor --outdir")
    G, cfg, info = load_generator(args.checkpoint, use_ema=not args.use_g, device=args.device)
    kind = "smyrf" if args.compare_attention else args.attention
    specs = attention_overrides(cfg, kind, args.n_hashes, args.q_cluster_size, args.k_cluster_size)
    set_attention(G, specs)
    seeds = parse_seeds(args.seeds)
    if args.compare_attention:
        return _compare(G, cfg, specs, seeds, args, info)
    z = latents_for_seeds(seeds, cfg.dim_z, args.truncation)  # (K, dim_z)
    names = [f"seed{s:04d}" for s in seeds]
    if args.interpolate:
        z = interpolation_latents(z, args.steps)  # ((K-1)·steps, dim_z)
        names = [f"path{i // args.steps:02d}-frame{i % args.steps:02d}" for i in range(z.shape[0])]
    x = generate(G, z, args.batch_size, args.device)  # (n, 3, res, res)
    if args.grid:
        save_grid(x, args.grid, nrow=args.steps if args.interpolate else None)
    if args.outdir:
        save_image_files(x, args.outdir, names)
    print(f"{x.shape[0]} images from {info['network']} at step {info['step']} of {info['path']}"
          + (f" -> {args.grid}" if args.grid else "") + (f" -> {args.outdir}/" if args.outdir else ""))
    return 0


def _compare(G, cfg, specs, seeds, args, info) -> int:
    import json
    from pathlib import Path

    from biggan.generation.compare import compare_attention, comparison_rows
    from biggan.generation.latents import latents_for_seeds
    from biggan.images import save_grid

    z = latents_for_seeds(seeds, cfg.dim_z, args.truncation)  # (K, dim_z)
    images, rows = comparison_rows(*compare_attention(G, cfg, specs, z, args.batch_size, args.device))
    save_grid(images, args.grid, nrow=3)
    for seed, row in zip(seeds, rows):
        print(f"seed {seed}: SMYRF vs dense rel. L2 {row['rel_l2']:.4f}, max |diff| {row['max_abs']:.4f}, "
              f"PSNR {row['psnr_db']:.1f} dB")
    mean = sum(r["rel_l2"] for r in rows) / len(rows)
    report = Path(args.grid).with_suffix(".json")
    report.write_text(json.dumps({"checkpoint": info["path"], "step": info["step"], "network": info["network"],
                                  "smyrf": [vars(s) for s in specs], "seeds": seeds,
                                  "images": [{"seed": s, **r} for s, r in zip(seeds, rows)],
                                  "mean_rel_l2": mean}, indent=2))
    print(f"{len(seeds)} seeds from {info['network']} at step {info['step']}: mean rel. L2 {mean:.4f} "
          f"-> {args.grid} (rows: SMYRF | dense | 4x|diff|), {report}")
    return 0


if __name__ == "__main__":
    cli_main(main)
