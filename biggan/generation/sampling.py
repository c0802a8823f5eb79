"""What ``sample.py`` does, as functions: choose classes, draw latents, generate, write PNGs with their provenance,
or compare SMYRF with dense attention on the same seeds.

``sample.py`` parses the command line and calls :func:`sample`; everything here takes plain values, so it is tested
without a subprocess.

Shape legend: K seeds; R classes (grid rows); n images; h×w spatial size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from torch import nn

from biggan.errors import UserError
from biggan.generation.attention import attention_overrides
from biggan.generation.checkpoint import load_generator
from biggan.generation.classes import class_count, class_grid, describe_class, parse_classes
from biggan.generation.compare import compare_attention, comparison_rows
from biggan.generation.generate import generate
from biggan.generation.latents import describe_latents, interpolation_latents, latents_for_seeds, parse_seeds
from biggan.images import save_grid, save_image_files
from biggan.models import describe_attention, set_attention

__all__ = ["SampleRequest", "sample"]


@dataclass
class SampleRequest:
    """One ``sample.py`` invocation (see its ``--help`` for each field)."""

    checkpoint: str
    seeds: str = "0-63"
    grid: Optional[str] = None
    outdir: Optional[str] = None
    one_class: Optional[str] = None
    classes: Optional[str] = None
    list_classes: bool = False
    truncation_trick: Optional[float] = None
    z_scale: float = 1.0
    interpolate: bool = False
    steps: int = 8
    attention: Optional[Literal["dense", "smyrf"]] = None
    n_hashes: Optional[int] = None
    q_cluster_size: Optional[int] = None
    k_cluster_size: Optional[int] = None
    compare_attention: bool = False
    use_g: bool = False
    batch_size: int = 16
    device: str = "cpu"


def _check(req: SampleRequest) -> None:
    """Refuse combinations that cannot be honoured, before the checkpoint is read."""
    if not (req.grid or req.outdir or req.list_classes):
        raise UserError("nothing to write: give --grid PNG and/or --outdir DIR")
    if req.batch_size < 1 or req.z_scale <= 0 or (req.truncation_trick is not None and req.truncation_trick <= 0):
        raise UserError("--batch-size must be >= 1, --z-scale (--truncation) and --truncation-trick > 0")
    if req.compare_attention and (req.attention or req.interpolate or req.outdir or not req.grid):
        raise UserError("--compare-attention needs --grid PNG and takes neither --attention, --interpolate nor --outdir")
    if req.interpolate and req.classes is not None:
        raise UserError("--interpolate draws paths within one class; use --class C")


def _classes(req: SampleRequest, n_classes: Optional[int], names: Optional[list[str]]) -> Optional[list[int]]:
    """The classes to draw (None: G takes no class), with one clear line for every mismatch."""
    wanted = req.one_class or req.classes
    if n_classes is None:
        if wanted is not None:
            raise UserError("this generator is unconditional (it takes no class); drop --class/--classes")
        return None
    if wanted is None:
        raise UserError(f"this generator is class-conditional ({n_classes} classes, 0-{n_classes - 1}); choose with "
                        "--class C or --classes LIST (--list-classes shows them)")
    classes = parse_classes(wanted, n_classes, names)
    if req.one_class is not None and len(classes) != 1:
        raise UserError(f"--class takes one class, got {req.one_class!r}; use --classes for several")
    return classes


def _metadata(req: SampleRequest, info: dict, G: nn.Module) -> dict[str, str]:
    """PNG text chunks shared by every image of this invocation: what made it and how z was drawn."""
    trick = req.truncation_trick
    return {"Software": "smyrf-biggan sample.py", "checkpoint": info["path"], "network": info["network"],
            "step": str(info["step"]), "z": describe_latents(req.z_scale, trick), "z_scale": f"{req.z_scale:g}",
            "truncation_trick": "off" if trick is None else f"{trick:g}",
            "attention": "; ".join(line.strip() for line in describe_attention(G, "G"))}


def sample(req: SampleRequest) -> str:
    """Run one request; returns the summary line to print."""
    _check(req)
    G, cfg, info = load_generator(req.checkpoint, use_ema=not req.use_g, device=req.device)
    n_classes, names = class_count(cfg), info["class_names"]
    if req.list_classes:
        lines = [f"{n_classes} classes" if n_classes else "unconditional: no classes"]
        return "\n".join(lines + [describe_class(index, names) for index in range(n_classes or 0)])
    classes = _classes(req, n_classes, names)
    kind = "smyrf" if req.compare_attention else req.attention
    specs = attention_overrides(cfg, kind, req.n_hashes, req.q_cluster_size, req.k_cluster_size)
    set_attention(G, specs)
    seeds = parse_seeds(req.seeds)
    z = latents_for_seeds(seeds, cfg.dim_z, req.z_scale, req.truncation_trick)  # (K, dim_z)
    names_out, nrow, y = [f"seed{s:04d}" for s in seeds], None, None
    if req.interpolate:
        z = interpolation_latents(z, req.steps)  # ((K-1)·steps, dim_z)
        names_out = [f"path{i // req.steps:02d}-frame{i % req.steps:02d}" for i in range(z.shape[0])]
        nrow = req.steps
    if classes is not None:
        z, y = class_grid(z, classes)  # (R·K, dim_z), (R·K,): a row per class
        names_out = [f"class{c:04d}-{name}" for c in classes for name in names_out]
        nrow = nrow or (len(seeds) if len(classes) > 1 else None)
    if req.compare_attention:
        return _write_comparison(G, cfg, specs, z, y, names_out, seeds * len(classes or [None]), req, info)
    x = generate(G, z, req.batch_size, req.device, y)  # (n, 3, res, res)
    common = _metadata(req, info, G)
    if req.grid:
        chosen = {"seeds": req.seeds} | ({"classes": ", ".join(describe_class(c, names) for c in classes)}
                                         if classes is not None else {})
        save_grid(x, req.grid, nrow=nrow, metadata=common | chosen)
    if req.outdir:
        seed_of = None if req.interpolate else [str(s) for s in seeds] * len(classes or [None])
        save_image_files(x, req.outdir, names_out, [
            common | {"image": name} | ({"seed": seed_of[i]} if seed_of else {})
            | ({"class": describe_class(int(y[i]), names)} if y is not None else {})
            for i, name in enumerate(names_out)])
    return (f"{x.shape[0]} images from {info['network']} at step {info['step']} of {info['path']}"
            + (f" -> {req.grid}" if req.grid else "") + (f" -> {req.outdir}/" if req.outdir else ""))


def _write_comparison(G, cfg, specs, z, y, names_out, seed_of, req: SampleRequest, info: dict) -> str:
    """Grid rows SMYRF | dense | 4x|diff| per image, each image's difference printed and written as JSON."""
    x_smyrf, x_dense = compare_attention(G, cfg, specs, z, req.batch_size, req.device, y)
    images, rows = comparison_rows(x_smyrf, x_dense)
    save_grid(images, req.grid, nrow=3, metadata=_metadata(req, info, G) | {"compare": "smyrf | dense | 4x|diff|"})
    lines = [f"{name}: SMYRF vs dense rel. L2 {row['rel_l2']:.4f}, max |diff| {row['max_abs']:.4f}, "
             f"PSNR {row['psnr_db']:.1f} dB" for name, row in zip(names_out, rows)]
    mean = sum(r["rel_l2"] for r in rows) / len(rows)
    report = Path(req.grid).with_suffix(".json")
    report.write_text(json.dumps({"checkpoint": info["path"], "step": info["step"], "network": info["network"],
                                  "smyrf": [vars(s) for s in specs], "seeds": sorted(set(seed_of)),
                                  "images": [{"image": n, "seed": seed, **r}
                                             for n, seed, r in zip(names_out, seed_of, rows)],
                                  "mean_rel_l2": mean}, indent=2))
    lines.append(f"{len(rows)} images from {info['network']} at step {info['step']}: mean rel. L2 {mean:.4f} "
                 f"-> {req.grid} (rows: SMYRF | dense | 4x|diff|), {report}")
    return "\n".join(lines)
