"""Bad input, table-driven: every user mistake gives one clear line, exit status 2, no traceback, nothing overwritten.

Each row prepares its own folder (a copy of a finished tiny run, images, checkpoints, weights files), runs one real CLI
(``train.py``, ``sample.py``, ``python -m data.prepare_celebahq``, ``python -m biggan.fid``) and checks:

- exit status 2 (``cli_main``'s user-error status);
- stderr is exactly one line, ``error: ...``, that contains the row's words naming the problem and the fix;
- no "Traceback" anywhere;
- every file that existed before (the previous run, its checkpoints, the dataset, the inputs) is byte-identical after,
  and none was deleted (new files may appear).

The rows run in two runner processes, each executing its scripts as ``__main__`` one after another (a fresh interpreter
per row would spend most of the time importing torch); see ``tests/bad_inputs/run_many.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.bad_inputs.harness import PYTHON, REPO, child_env, fingerprint, tiny_overrides
from tests.biggan_pytorch_files import their_state

GOOD_STEPS = 4
_PROGRESS_RE = re.compile(r"\d+%\|")
RUNNERS = 2  # runner processes (each runs its rows in one interpreter: tests/bad_inputs/run_many.py)
RUN_NAME = "demo"


@dataclass
class Ctx:
    """What a row's setup gets: its own empty folder and the shared, finished tiny run."""

    case_dir: Path
    good_run: Path  # <out_dir>/demo of a finished GOOD_STEPS-step run (read-only: copy it first)
    datasets: Path  # the demo dataset folder shared by all rows (protected in every row)

    def out_dir_with_run(self) -> Path:
        """A copy of the finished run under this row's out_dir; the row's command resumes or overwrites it if buggy."""
        out_dir = self.case_dir / "runs"
        shutil.copytree(self.good_run, out_dir / RUN_NAME)
        return out_dir

    def train(self, *overrides: str, out_dir: Path | None = None, extra: tuple[str, ...] = ()) -> list[str]:
        """train.py on the tiny demo over a copy of the finished run, plus the row's overrides (later ones win)."""
        out_dir = out_dir or self.out_dir_with_run()
        return ["train.py", *extra, *tiny_overrides(out_dir, self.datasets, GOOD_STEPS, 2), *overrides]

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.case_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def images(self, folder: str, count: int, size: tuple[int, int] = (40, 40), mode: str = "RGB",
               fmt: str = "PNG") -> Path:
        root = self.case_dir / folder
        root.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        channels = {"RGB": 3, "RGBA": 4, "CMYK": 4, "L": 1}[mode]
        for i in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
            img = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
            img.save(root / f"{i}.{'jpg' if fmt == 'JPEG' else 'png'}", fmt)
        return root

    def good_checkpoint(self) -> dict:
        return torch.load(self.good_run / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)


@dataclass
class Case:
    """One row: ``setup`` returns argv (after the interpreter) and the paths whose content must survive."""

    name: str
    setup: Callable[[Ctx], list[str]]
    expect: tuple[str, ...]  # substrings of the error line: the problem and the fix
    protect: Callable[[Ctx], list[Path]] | None = None  # default: everything in the row's folder
    disk_full: bool = False  # run it with torch.save failing with ENOSPC (tests/bad_inputs/disk_full.py)


def _yaml_file(ctx: Ctx, mutate: Callable[[dict], None]) -> Path:
    """configs/demo.yaml with ``mutate`` applied (a user's edited copy)."""
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    mutate(data)
    return ctx.file("my.yaml", yaml.safe_dump(data))


def _corrupt_jpeg(ctx: Ctx, folder: str, count: int) -> Path:
    root = ctx.images(folder, count, fmt="JPEG")
    data = (root / "1.jpg").read_bytes()
    (root / "1.jpg").write_bytes(data[: len(data) // 3])  # a download cut short
    return root


def _non_square(ctx: Ctx, folder: str, count: int) -> Path:
    root = ctx.images(folder, count)
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(root / "1.png")
    return root


def _ckpt_with(ctx: Ctx, mutate: Callable[[dict], None]) -> Path:
    state = ctx.good_checkpoint()
    mutate(state)
    path = ctx.case_dir / "edited.pt"
    torch.save(state, path)
    return path


def _truncated(ctx: Ctx) -> Path:
    data = (ctx.good_run / "checkpoints" / "latest.pt").read_bytes()
    return ctx.file("truncated.pt", data[: len(data) // 2])


class _Exec:
    """Unpickling runs ``exec``; the row checks the marker file never appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _evil(ctx: Ctx, base: dict | None) -> Path:
    payload = dict(base or {}) | {"G": _Exec(ctx.case_dir / "pwned")}
    path = ctx.case_dir / "evil.pt"
    with open(path, "wb") as f:
        torch.save(payload, f)
    return path


def _disk_full(ctx: Ctx) -> list[str]:
    out_dir = ctx.out_dir_with_run()
    return ctx.train(f"train.total_steps={GOOD_STEPS + 2}", out_dir=out_dir)


def _checkpoints_of_run(ctx: Ctx) -> list[Path]:
    return [ctx.case_dir / "runs" / RUN_NAME / "checkpoints", ctx.datasets]


def _unwritable_run_dir(ctx: Ctx) -> list[str]:
    blocker = ctx.file("blocker", "a file where the run directory's parent should be")
    return ["train.py", *tiny_overrides(blocker / "runs", ctx.datasets, GOOD_STEPS, 2)]


def _resume_latest_truncated(ctx: Ctx) -> list[str]:
    out_dir = ctx.out_dir_with_run()
    latest = out_dir / RUN_NAME / "checkpoints" / "latest.pt"
    data = latest.read_bytes()
    latest.unlink()  # break the hard link first: the step file it shares must stay intact
    latest.write_bytes(data[: len(data) // 2])
    return ctx.train(f"train.total_steps={GOOD_STEPS + 2}", out_dir=out_dir)


def _fresh_run(ctx: Ctx, kind: str, path: Path, *overrides: str) -> list[str]:
    """A new run (next to the finished one, which must stay untouched) on a dataset of ``kind`` at ``path``."""
    return ctx.train("name=fresh", f"data.kind={kind}", f"data.path={path}", *overrides)


def _weights_file(ctx: Ctx, content: bytes) -> Path:
    return ctx.file("pt_inception-2015-12-05-6726825d.pth", content)


def _their(ctx: Ctx, entry: str, mutate: Callable[[dict], None] | None = None, name: str | None = None) -> Path:
    """A BigGAN-PyTorch G or D file at small width (tests/biggan_pytorch_files.py), edited by ``mutate``."""
    state = their_state(entry)
    if mutate:
        mutate(state)
    path = ctx.case_dir / (name or f"{entry}.pth")
    torch.save(state, path)
    return path


def _import(ctx: Ctx, generator: Path, *extra: str) -> list[str]:
    return ["-m", "biggan.convert", "biggan-pytorch", str(generator), "--out", str(ctx.case_dir / "imported.pt"),
            *extra]


def _imported(ctx: Ctx) -> Path:
    """A good imported checkpoint (5 classes), made in the row's setup."""
    from biggan.checkpoint import write_checkpoint_file
    from biggan.convert import ImportRequest, import_biggan_pytorch

    result = import_biggan_pytorch(ImportRequest(_their(ctx, "G128"), verify=False))
    return write_checkpoint_file(result.checkpoint, ctx.case_dir / "imported.pt")


def _run_state_dict_pth(ctx: Ctx) -> Path:
    """Like their state_dict.pth: the run config with a pickled module in it (weights_only refuses it)."""
    path = ctx.case_dir / "state_dict.pth"
    torch.save({"itr": 138000, "config": {"G_activation": torch.nn.ReLU(inplace=False)}}, path)
    return path


def _optim_file(ctx: Ctx) -> Path:
    """Like their G_optim.pth: an optimiser state dict, not weights."""
    path = ctx.case_dir / "G_optim.pth"
    torch.save({"state": {0: {"step": 3}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}, path)
    return path


def _class_folders(ctx: Ctx, loose: bool = False) -> Path:
    root = ctx.case_dir / "classes"
    for cls in ("a", "b", "c"):
        ctx.images(f"classes/{cls}", 4, (32, 32))
    if loose:
        ctx.images("classes", 1, (32, 32))
    return root


CASES: list[Case] = [
    # --- configuration (train.py over an existing run: nothing of it may change) ----------------------------------
    Case("config: unknown key (override)", lambda c: c.train("model.G.chh=8"), ("model.G.chh",)),
    Case("config: unknown key (YAML file)",
         lambda c: c.train(extra=("--config", str(_yaml_file(c, lambda d: d.update(trian={"total_steps": 5}))))),
         ("trian",)),
    Case("config: missing config file", lambda c: c.train(extra=("--config", str(c.case_dir / "nope.yaml"))),
         ("nope.yaml",)),
    Case("config: YAML syntax error",
         lambda c: c.train(extra=("--config", str(c.file("bad.yaml", "model: {res: [32")))),
         ("bad.yaml",)),
    Case("config: a key written twice (YAML file)",
         lambda c: c.train(extra=("--config", str(c.file("twice.yaml", "train:\n  lr_g: 1e-4\n  lr_g: 2e-4\n")))),
         ("twice.yaml", "'lr_g' is written twice")),
    Case("config: empty file", lambda c: c.train(extra=("--config", str(c.file("empty.yaml", "# nothing\n")))),
         ("empty.yaml", "is empty")),
    Case("config: not a finite number", lambda c: c.train("train.lr_g=.nan"), ("train.lr_g", "finite")),
    Case("config: wrong type (int)", lambda c: c.train("train.batch_size=four"), ("train.batch_size", "int")),
    Case("config: wrong type (bool)", lambda c: c.train("data.xflip=maybe"), ("data.xflip", "bool")),
    Case("config: wrong literal", lambda c: c.train("model.G.attention.0.kind=sparse"), ("kind", "smyrf")),
    Case("config: override without =", lambda c: c.train("train.batch_size"), ("train.batch_size", "=")),
    Case("config: negative batch size", lambda c: c.train("train.batch_size=-4"), ("train.batch_size", ">= 1")),
    Case("config: zero checkpoint interval", lambda c: c.train("train.ckpt_every=0"), ("train.ckpt_every", ">= 1")),
    Case("config: zero learning rate", lambda c: c.train("train.lr_d=0"), ("lr_d", "> 0")),
    Case("config: zero grace period", lambda c: c.train("train.preempt_grace_seconds=0"), ("preempt_grace_seconds",)),
    Case("config: batch not divisible by accumulation", lambda c: c.train("train.accumulate=3"), ("accumulate",)),
    Case("config: FID depth not offered", lambda c: c.train("fid.dims=100"), ("fid.dims", "2048")),
    Case("config: best checkpoint by a metric not computed",
         lambda c: c.train("fid.best_by=kid", "fid.extra_metrics=[pr]"), ("fid.best_by", "fid.extra_metrics")),
    Case("config: KID setting with KID off", lambda c: c.train("fid.extra_metrics=[]", "fid.kid_subsets=10"),
         ("fid.kid_subsets", "extra_metrics")),
    Case("config: unknown extra metric", lambda c: c.train("fid.extra_metrics=[is]"), ("extra_metrics", "kid")),
    Case("config: unsupported resolution", lambda c: c.train("model.resolution=48"), ("resolution", "48")),
    Case("config: cluster size does not divide the tokens",
         lambda c: c.train("model.G.attention.0.q_cluster_size=300"), ("q_cluster_size", "300")),
    Case("config: attention at a resolution no D block outputs",
         lambda c: c.train("model.D.attention.0.res=32"), ("32", "attention")),
    Case("config: attention at a resolution no G block outputs",
         lambda c: c.train("model.G.attention.0.res=12"), ("12", "attention")),
    Case("config: dim_z does not split into the z chunks", lambda c: c.train("model.dim_z=65"), ("dim_z", "65")),
    Case("config: unknown augmentation op",
         lambda c: c.train("train.augment=diffaugment", "train.augment_policy=[color,zoom]"),
         ("augment_policy", "translation")),
    Case("config: augmentation op listed twice",
         lambda c: c.train("train.augment=diffaugment", "train.augment_policy=[cutout,cutout]"),
         ("augment_policy", "distinct")),
    Case("config: augmentation policy without augmentation", lambda c: c.train("train.augment_policy=[color]"),
         ("train.augment_policy", "train.augment=diffaugment")),
    # --- data (a new run name: resuming the existing run would first report the changed dataset) ------------------
    Case("data: missing folder", lambda c: _fresh_run(c, "folder", c.case_dir / "missing"),
         ("does not exist", "data.path")),
    Case("data: empty folder", lambda c: _fresh_run(c, "folder", c.images("empty", 0)), ("no images",)),
    Case("data: corrupt JPEG (train)", lambda c: _fresh_run(c, "folder", _corrupt_jpeg(c, "img", 8)), ("1.jpg",)),
    Case("data: non-square image (train)", lambda c: _fresh_run(c, "folder", _non_square(c, "img", 8)),
         ("not square",)),
    Case("data: fewer images than a batch", lambda c: _fresh_run(c, "folder", c.images("img", 2, (32, 32))),
         ("fewer than one batch",)),
    Case("data: prepared dataset at another resolution",
         lambda c: _fresh_run(c, "prepared", c.datasets / "demo32", "model.resolution=64", "model.dim_z=80"),
         ("32px", "64px")),
    Case("data: prepared folder without a manifest", lambda c: _fresh_run(c, "prepared", c.images("img", 8, (32, 32))),
         ("prepared dataset",)),
    Case("prepare: missing source",
         lambda c: ["-m", "data.prepare_celebahq", str(c.case_dir / "missing"), str(c.case_dir / "out"),
                    "--resolution", "32", "--fid-dims"], ("does not exist",)),
    Case("prepare: empty source",
         lambda c: ["-m", "data.prepare_celebahq", str(c.images("src", 0)), str(c.case_dir / "out"),
                    "--resolution", "32", "--fid-dims"], ("no images",)),
    Case("prepare: corrupt JPEG",
         lambda c: ["-m", "data.prepare_celebahq", str(_corrupt_jpeg(c, "src", 4)), str(c.case_dir / "out"),
                    "--resolution", "32", "--expect-count", "4", "--fid-dims"], ("1.jpg", "--skip-bad")),
    Case("prepare: non-square image",
         lambda c: ["-m", "data.prepare_celebahq", str(_non_square(c, "src", 4)), str(c.case_dir / "out"),
                    "--resolution", "32", "--expect-count", "4", "--fid-dims"], ("not square",)),
    Case("prepare: fewer images than CelebA-HQ has",
         lambda c: ["-m", "data.prepare_celebahq", str(c.images("src", 4)), str(c.case_dir / "out"),
                    "--resolution", "32", "--fid-dims"], ("30000",)),
    Case("prepare: images smaller than the target",
         lambda c: ["-m", "data.prepare_celebahq", str(c.images("src", 4)), str(c.case_dir / "out"),
                    "--resolution", "64", "--expect-count", "4", "--fid-dims"], ("smaller",)),
    # --- checkpoints ------------------------------------------------------------------------------------------------
    Case("checkpoint: truncated (sample.py)",
         lambda c: ["sample.py", str(_truncated(c)), "--grid", str(c.case_dir / "g.png")], ("truncated or corrupt",)),
    Case("checkpoint: random bytes (sample.py)",
         lambda c: ["sample.py", str(c.file("noise.pt", os.urandom(5000))), "--grid", str(c.case_dir / "g.png")],
         ("truncated or corrupt",)),
    Case("checkpoint: pickle that would execute code (sample.py)",
         lambda c: ["sample.py", str(_evil(c, c.good_checkpoint())), "--grid", str(c.case_dir / "g.png")],
         ("refused", "train.py")),
    Case("checkpoint: pickle that would execute code (train.py --resume)",
         lambda c: c.train(extra=("--resume", str(_evil(c, c.good_checkpoint())))), ("refused",)),
    Case("checkpoint: missing keys (sample.py)",
         lambda c: ["sample.py", str(_ckpt_with(c, lambda s: s.pop("G_ema"))), "--grid", str(c.case_dir / "g.png")],
         ("G_ema",)),
    Case("checkpoint: missing keys (train.py --resume)",
         lambda c: c.train(extra=("--resume", str(_ckpt_with(c, lambda s: s.pop("opt_D"))))), ("opt_D",)),
    Case("checkpoint: not a checkpoint (a bare state_dict)",
         lambda c: ["sample.py", str(_ckpt_with(c, lambda s: [s.pop(k) for k in list(s) if k != "G"])),
                    "--grid", str(c.case_dir / "g.png")], ("not a checkpoint",)),
    Case("checkpoint: missing file (sample.py)",
         lambda c: ["sample.py", str(c.case_dir / "none.pt"), "--grid", str(c.case_dir / "g.png")], ("none.pt",)),
    Case("checkpoint: another architecture (train.py --resume)",
         lambda c: c.train("model.G.ch=8", extra=("--resume", str(c.good_run / "checkpoints" / "latest.pt"))),
         ("model.G",)),
    Case("checkpoint: weights of another architecture (sample.py)",
         lambda c: ["sample.py", str(_ckpt_with(c, lambda s: s["model_args"]["G"].update(ch=8))),
                    "--grid", str(c.case_dir / "g.png")], ("does not match",)),
    Case("checkpoint: newer format version",
         lambda c: ["sample.py", str(_ckpt_with(c, lambda s: s.update(format_version=99))),
                    "--grid", str(c.case_dir / "g.png")], ("newer",)),
    Case("checkpoint: run's latest.pt truncated (auto-resume)", _resume_latest_truncated, ("truncated or corrupt",)),
    Case("sample.py --compare-attention without --grid",
         lambda c: ["sample.py", str(c.good_run), "--compare-attention", "--outdir", str(c.case_dir / "o")],
         ("--compare-attention needs --grid",)),
    # --- FID weights ------------------------------------------------------------------------------------------------
    Case("FID weights: missing (python -m biggan.fid)",
         lambda c: ["-m", "biggan.fid", str(c.images("a", 4)), str(c.images("b", 4)), "--dims", "64",
                    "--weights", str(c.case_dir / "none.pth")], ("not found", "install-weights")),
    Case("FID weights: corrupt (python -m biggan.fid)",
         lambda c: ["-m", "biggan.fid", str(c.images("a", 4)), str(c.images("b", 4)), "--dims", "64",
                    "--weights", str(_weights_file(c, os.urandom(3000)))], ("corrupt", "install-weights")),
    Case("FID weights: pickle that would execute code",
         lambda c: ["-m", "biggan.fid", str(c.images("a", 4)), str(c.images("b", 4)), "--dims", "64",
                    "--weights", str(_evil(c, None))], ("install-weights",)),
    Case("FID weights: missing (train.py with FID on)",
         lambda c: c.train("fid.every=2", "fid.num_samples=8", "fid.dims=64",
                           f"fid.weights_path={c.case_dir / 'none.pth'}"), ("not found", "install-weights")),
    # --- importing BigGAN-PyTorch checkpoints (python -m biggan.convert): nothing written, the inputs untouched -----
    Case("import: another resolution than asked",
         lambda c: _import(c, _their(c, "G256"), "--resolution", "128"), ("256x256", "--resolution 256")),
    Case("import: another attention placement than asked",
         lambda c: _import(c, _their(c, "G128"), "--attention-res", "32"), ("attention at 64", "--attention-res")),
    Case("import: a D file given as G", lambda c: _import(c, _their(c, "D128")), ("discriminator", "--D")),
    Case("import: a G file given as --D",
         lambda c: _import(c, _their(c, "G128"), "--D", str(_their(c, "G128", name="G2.pth"))),
         ("holds a BigGAN-PyTorch generator", "--D")),
    Case("import: D of another resolution",
         lambda c: _import(c, _their(c, "G128"), "--D", str(_their(c, "D256"))), ("same run",)),
    Case("import: truncated file",
         lambda c: _import(c, c.file("G_ema.pth", _their(c, "G128").read_bytes()[:3000])), ("truncated or corrupt",)),
    Case("import: state_dict.pth (pickled modules, not weights)",
         lambda c: _import(c, _run_state_dict_pth(c)), ("refused", "state_dict.pth")),
    Case("import: pickle that would execute code", lambda c: _import(c, _evil(c, None)), ("refused",)),
    Case("import: an optimiser state (G_optim.pth)",
         lambda c: _import(c, _optim_file(c)), ("not a flat state dict",)),
    Case("import: --mybn variant",
         lambda c: _import(c, _their(c, "G128", lambda s: s.update({"blocks.0.0.bn1.bn.stored_mean": torch.zeros(8)}))),
         ("--mybn",)),
    Case("import: cross-replica BN variant",
         lambda c: _import(c, _their(c, "G128", lambda s: s.update({"blocks.0.0.bn1.bn.running_mean": torch.zeros(8)}))),
         ("--cross_replica",)),
    Case("import: extra singular vectors (num_SVs > 1)",
         lambda c: _import(c, _their(c, "G128", lambda s: s.update({"linear.u1": torch.zeros(1, 2048)}))),
         ("num_G_SVs",)),
    Case("import: an unknown key is not dropped",
         lambda c: _import(c, _their(c, "G128", lambda s: s.update({"blocks.1.0.extra.weight": torch.zeros(3)}))),
         ("blocks.1.0.extra.weight", "not dropped")),
    Case("import: a missing key (incomplete state dict)",
         lambda c: _import(c, _their(c, "G128", lambda s: s.pop("blocks.2.0.conv2.u0"))),
         ("lacks the key 'blocks.2.0.conv2.u0'",)),
    Case("import: a tensor of the wrong shape",
         lambda c: _import(c, _their(c, "G128", lambda s: s.update({"blocks.1.0.conv2.weight": torch.zeros(64, 64, 1,
                                                                                                             1)}))),
         ("blocks.1.0.conv2.weight", "(64, 64, 1, 1)")),
    Case("import: NaN weights",
         lambda c: _import(c, _their(c, "G128", lambda s: s["linear.bias"].fill_(float("nan")))), ("NaN",)),
    Case("import: missing file", lambda c: _import(c, c.case_dir / "G_ema.pth"), ("does not exist",)),
    Case("import: --out exists",
         lambda c: [*_import(c, _their(c, "G128"))[:-2], "--out", str(c.file("imported.pt", "keep me"))],
         ("exists", "nothing overwritten")),
    Case("import: --class-names of another length",
         lambda c: _import(c, _their(c, "G128"), "--class-names", str(c.file("names.txt", "a\nb\n"))),
         ("--class-names lists 2 names", "5 classes")),
    Case("import: --one-class out of range",
         lambda c: _import(c, _their(c, "G128"), "--one-class", "9"), ("--one-class", "0-4")),
    # --- class-conditional sampling and training, fine-tuning ------------------------------------------------------
    Case("sample: --class on an unconditional checkpoint",
         lambda c: ["sample.py", str(c.good_run / "checkpoints" / "latest.pt"), "--class", "1", "--grid",
                    str(c.case_dir / "g.png")], ("unconditional", "--class")),
    Case("sample: class-conditional without --class",
         lambda c: ["sample.py", str(_imported(c)), "--grid", str(c.case_dir / "g.png")], ("--class C", "5 classes")),
    Case("sample: a class that does not exist",
         lambda c: ["sample.py", str(_imported(c)), "--class", "5", "--grid", str(c.case_dir / "g.png")],
         ("class 5", "0-4")),
    Case("sample: truncation trick threshold not > 0",
         lambda c: ["sample.py", str(c.good_run / "checkpoints" / "latest.pt"), "--truncation-trick", "0", "--grid",
                    str(c.case_dir / "g.png")], ("--truncation-trick",)),
    Case("train: conditioning class on unlabelled data",
         lambda c: c.train("name=cls", "model.conditioning=class", "model.n_classes=3", "model.shared_dim=8"),
         ("no class labels", "--labels")),
    Case("train: n_classes differs from the data's classes",
         lambda c: _fresh_run(c, "folder", _class_folders(c), "model.conditioning=class", "model.n_classes=5",
                              "model.shared_dim=8"), ("3 classes", "model.n_classes=3")),
    Case("train: class folders with loose images",
         lambda c: _fresh_run(c, "folder", _class_folders(c, loose=True), "model.conditioning=class",
                              "model.n_classes=3", "model.shared_dim=8"), ("holds images directly",)),
    Case("prepare: --labels on a folder without class folders",
         lambda c: ["-m", "data.prepare_celebahq", str(c.images("src", 4)), str(c.case_dir / "out"),
                    "--resolution", "32", "--expect-count", "0", "--labels", "--fid-dims"], ("no class sub-folders",)),
    Case("fine-tune: --init-from of another architecture",
         lambda c: c.train("name=ft", "model.G.ch=8", extra=("--init-from", str(c.good_run / "checkpoints" /
                                                                             "latest.pt"))), ("does not fit", "model.G.ch 4 vs 8")),
    Case("fine-tune: --init-from a missing file",
         lambda c: c.train("name=ft", extra=("--init-from", str(c.case_dir / "none.pt"))), ("none.pt", "does not exist")),
    Case("fine-tune: --init-from into a run trained from scratch",
         lambda c: c.train(extra=("--init-from", str(c.good_run / "checkpoints" / "latest.pt"))),
         ("did not start from --init-from", "name=")),
    # --- run directory and disk -------------------------------------------------------------------------------------
    Case("run dir: not writable", _unwritable_run_dir, ("cannot create run directory", "out_dir")),
    Case("disk full while writing a checkpoint (simulated)", _disk_full, ("disk full", "out_dir"),
         protect=_checkpoints_of_run, disk_full=True),
]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    changed: list[str]
    pwned: bool


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    """Finish one tiny run, prepare every row's folder, run the rows (two runner processes), compare fingerprints."""
    root = tmp_path_factory.mktemp("bad_input")
    datasets = root / "datasets"
    good = subprocess.run([PYTHON, "train.py", *tiny_overrides(root / "good", datasets, GOOD_STEPS, 2)],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert good.returncode == 0, good.stderr
    good_run = root / "good" / RUN_NAME

    jobs, before = [], []
    for index, case in enumerate(CASES):
        ctx = Ctx(root / f"case{index:02d}", good_run, datasets)
        ctx.case_dir.mkdir()
        jobs.append({"argv": case.setup(ctx), "disk_full": case.disk_full})
        protected = case.protect(ctx) if case.protect else [ctx.case_dir, datasets]
        before.append({str(p): fingerprint(p) for p in protected})

    runners = []
    for part in range(RUNNERS):
        jobs_file, results_file = root / f"jobs{part}.json", root / f"results{part}.json"
        jobs_file.write_text(json.dumps(jobs[part::RUNNERS]))
        proc = subprocess.Popen([PYTHON, str(REPO / "tests" / "bad_inputs" / "run_many.py"), str(jobs_file),
                                 str(results_file)], cwd=REPO, env=child_env(), stderr=subprocess.PIPE, text=True)
        runners.append((proc, results_file))
    outputs: list[dict] = [{}] * len(CASES)
    for part, (proc, results_file) in enumerate(runners):
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
        for offset, output in enumerate(json.loads(results_file.read_text())):
            outputs[part + offset * RUNNERS] = output

    results = {}
    for index, case in enumerate(CASES):
        changed = []
        for path, old in before[index].items():
            new = fingerprint(Path(path))
            changed += [f"{path}/{name}" for name, digest in old.items() if new.get(name) != digest]
        out = outputs[index]
        pwned = (root / f"case{index:02d}" / "pwned").exists()
        results[case.name] = Result(out["code"], out["stdout"], out["stderr"], changed, pwned)
    return results


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 25 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, results: dict[str, Result]) -> None:
    result = results[case.name]
    # tqdm progress bars also go to stderr; on a terminal they are one self-erasing line, so they are not counted.
    lines = [line for line in result.stderr.splitlines() if line.strip() and not _PROGRESS_RE.search(line)]
    report = f"exit {result.code}; stderr:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr + result.stdout, report
    assert result.code == 2, report
    assert len(lines) == 1 and lines[0].startswith("error: "), report
    for word in case.expect:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    assert not result.changed, f"overwritten or lost: {result.changed}"
    assert not result.pwned, "a checkpoint executed code on load"


@pytest.mark.slow
def test_grayscale_rgba_cmyk_are_converted_not_rejected(tmp_path: Path) -> None:
    """Not errors by design: real CelebA(-HQ) folders contain such files, and RGB conversion is lossless for L, and the
    documented PIL conversion for RGBA (alpha dropped) and CMYK. The prepared images must equal PIL's RGB conversion."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    sources = {
        "0.png": Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), "L"),
        "1.png": Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8), "RGBA"),
        "2.tif": Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8), "CMYK"),
    }
    for name, img in sources.items():
        img.save(src / name)
    proc = subprocess.run([PYTHON, "-m", "data.prepare_celebahq", str(src), str(tmp_path / "out"), "--resolution", "32",
                           "--expect-count", "3", "--fid-dims", "--workers", "1"],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "decoding + resizing" not in proc.stderr, "progress bars on a non-TTY stderr (tqdm disable=None)"
    images = np.load(tmp_path / "out" / "32" / "images.npy")  # (N, 3, res, res)
    expected = np.stack([np.asarray(img.convert("RGB")).transpose(2, 0, 1) for img in sources.values()])
    assert images.shape == (3, 3, 32, 32) and np.array_equal(images, expected)
