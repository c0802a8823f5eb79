"""The Python half of ``scripts/gpu_check.sh``: small probes, and the rows of its summary table from what each stage
wrote. Each subcommand appends rows ``label<TAB>status<TAB>numbers`` to ``--rows``; status is ``ok``, ``FAILED``,
``missed`` (a performance or issue-12 target not met: reported, not a failure), ``skipped`` or empty (information).
Exit status: 1 when a row FAILED, 77 when the whole stage was skipped, else 0.

Only torch is imported at module level: ``env`` and ``lazy-fid`` must run where nothing else is importable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, from anywhere
SKIP = 77


class Rows:
    def __init__(self, path: str) -> None:
        self.path, self.rows = Path(path), []

    def add(self, label: str, status: str, numbers: str) -> None:
        self.rows.append((label, status, " ".join(numbers.split())))

    def close(self) -> int:
        with self.path.open("a") as f:
            for row in self.rows:
                f.write("\t".join(row) + "\n")
        statuses = {s for _, s, _ in self.rows}
        return 1 if "FAILED" in statuses else (SKIP if statuses == {"skipped"} else 0)


def _met(ok: bool) -> str:
    return "ok" if ok else "missed"


# -- probes ------------------------------------------------------------------------------------------------------------

def env(args, rows: Rows) -> None:
    import torch

    line = f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    if args.device == "cuda":
        if not torch.cuda.is_available():
            rows.add("torch/GPU", "FAILED", f"{line}; torch.cuda.is_available() is False")
            return
        p = torch.cuda.get_device_properties(0)
        line += (f"; {torch.cuda.device_count()} x {p.name} sm_{p.major}{p.minor} {p.total_memory / 2**30:.0f} GiB, "
                 f"bf16 {torch.cuda.is_bf16_supported()}")
    else:
        line += f"; CPU dry run ({torch.get_num_threads()} threads)"
    rows.add("torch/GPU", "ok", line)
    try:
        import pytorch_fid

        where = Path(pytorch_fid.__file__).parent.parent
        rows.add("pytorch-fid", "ok", f"{getattr(pytorch_fid, '__version__', '?')} from {where}")
    except ImportError as err:
        rows.add("pytorch-fid", "FAILED", f"not importable ({err}); carry .gpu_wheels/ (see the script header)")


def lazy_fid(args, rows: Rows) -> None:
    """Config, models, runtime and SMYRF must import where pytorch-fid is not installed (issue 12, item 4)."""
    import importlib

    sys.modules["pytorch_fid"] = None  # type: ignore[assignment]  # any `import pytorch_fid` now raises ImportError
    import traceback

    names = ("smyrf", "biggan.config", "biggan.models", "biggan.runtime", "biggan.training.config",
             "biggan.training.loop")
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            ours = [f for f in traceback.extract_tb(err.__traceback__) if "/biggan/" in f.filename]
            if "pytorch_fid" in str(err) and ours:
                failed.append(f"{name} (pytorch_fid imported at {Path(ours[-1].filename).name}:{ours[-1].lineno})")
            else:
                failed.append(f"{name} ({str(err)[:80]})")
    rows.add("import w/o pytorch-fid", _met(not failed),
             f"{', '.join(names)} all import" if not failed else "fails: " + "; ".join(failed[:3]))


def fid_weights(args, rows: Rows) -> None:
    """A randomly initialised pytorch-fid InceptionV3 state dict (the real ~91 MB file cannot travel): it exercises
    the FID code path on the device (load, extract, statistics), not the FID number."""
    import torch

    from biggan.fid import load_extractor
    from biggan.fid.install import _skeleton

    torch.manual_seed(0)
    torch.save(_skeleton().state_dict(), args.path)
    extractor = load_extractor(args.path, args.device, dims=64)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, device=args.device)
    feats = extractor(images)
    ok = feats.shape == (4, 64) and bool(torch.isfinite(feats).all())
    rows.add("random Inception", "ok" if ok else "FAILED",
             f"{Path(args.path).stat().st_size / 2**20:.0f} MiB written; extractor on {args.device}: features "
             f"{tuple(feats.shape)} {feats.dtype} on {feats.device}")


# -- stage summaries ---------------------------------------------------------------------------------------------------

def smyrf(args, rows: Rows) -> None:
    """Rows of benchmarks/smyrf_cuda_check.py's JSON: fp32 vs CPU, bf16 accuracy per logit scale, syncs, time."""
    data = json.loads(Path(args.json).read_text())["rows"]
    fp32 = [r for r in data if r["stage"] == "fp32"]
    rows.add("SMYRF fp32 vs CPU", "ok" if fp32 and all(r["ok"] for r in fp32) else "FAILED",
             "out,dq,dk,dv: " + "; ".join(f"{r['case']} {r['value'].split()[-1]}" for r in fp32))
    for scale in (3, 14, 30):
        here = [r for r in data if r["stage"] == "bf16" and r["case"].endswith(f"@{scale}")]
        mine = [r for r in here if r["case"].startswith("smyrf")]
        dense = [r for r in here if r["case"].startswith("dense") and not r["value"].startswith("unavailable")]
        best = min(dense, key=lambda r: float(r["value"].split()[0]), default=None)
        text = "; ".join(f"{r['case'].split()[1]} {_percent(r['value'])}" for r in mine)
        if best:
            text += f"; dense {best['case'].split()[1].split('_')[0].lower()} {_percent(best['value'])}"
        status = "FAILED" if any(r["ok"] is False for r in mine) else "ok"
        target = " (target <= 1 %)" if scale == 30 else ""
        rows.add(f"bf16 row err @logit {scale}", status, f"out/dq/dk/dv %: {text}{target}")
    for r in data:
        if r["stage"] == "syncs":
            rows.add("SMYRF syncs", {True: "ok", False: "FAILED", None: "skipped"}[r["ok"]], r["value"])
    shapes = dict.fromkeys(r["case"].split(" dense")[0].split(" smyrf")[0] for r in data if r["stage"] == "time"
                           and (" dense " in r["case"] or " smyrf " in r["case"]))
    for shape in shapes:
        here = {r["case"][len(shape) + 1:]: r for r in data
                if r["stage"] == "time" and r["case"].startswith(shape + " ")}
        timed = {k: _ms(r["value"]) for k, r in here.items()}
        dense = {k.split()[1]: v for k, v in timed.items() if k.startswith("dense") and v}
        auto = here.get("smyrf auto")
        best = min(dense.items(), key=lambda kv: kv[1][0], default=None)
        parts = [f"smyrf auto {_fmt(timed.get('smyrf auto'))}"]
        if best:
            parts.append(f"best dense {best[0].split('_')[0].lower()} {_fmt(best[1])}")
        parts.append("dense " + ", ".join(f"{k.split('_')[0].lower()} {_fmt(v, peak=False)}" for k, v in dense.items()))
        parts += [f"{k} {_fmt(v, peak=False)}" for k, v in timed.items()
                  if k.startswith("smyrf ") and k != "smyrf auto"]
        ratio = auto["value"].split("GiB, ")[-1] if auto and "x best dense" in auto["value"] else "no ratio"
        status = "" if auto is None or auto["ok"] is None else _met(auto["ok"])
        rows.add(f"attn fwd+bwd {shape}", status, f"{ratio}; " + "; ".join(parts))
    for r in data:
        if r["case"] == "auto chose":
            rows.add("SMYRF auto chose", "", r["value"][:140])


def _percent(value: str) -> str:
    return "/".join(f"{100 * float(x):.2f}" for x in value.split()[:4])


def _ms(value: str):
    """(ms, GiB) from '12.3 ms, peak 1.20 GiB, ...'; None for 'failed'."""
    if not value or value.startswith("failed"):
        return None
    parts = value.replace(",", " ").split()
    return float(parts[0]), float(parts[3])


def _fmt(t, peak: bool = True) -> str:
    if not t:
        return "failed"
    return f"{t[0]:.1f} ms" + (f" {t[1]:.2f} GiB" if peak and t[1] == t[1] else "")


def steps(args, rows: Rows) -> None:
    """Rows of benchmarks/trainer_step.py's JSON: the first file's cases (ratios against bf16 from any file)."""
    files = [json.loads(Path(p).read_text())["rows"] if Path(p).is_file() else [] for p in args.json]
    by_case = {r["case"]: r for r in files[0]}
    measured = {k: r for k, r in by_case.items() if "img_per_s" in r}
    ref = next((r for rs in files for r in rs if r["case"] == "bf16" and "img_per_s" in r), None)
    for case, r in by_case.items():
        if case not in measured:
            rows.add(f"step {case}", "FAILED", r.get("error", ""))
    if not measured:
        if not by_case:
            rows.add("step", "FAILED", f"no results in {args.json[0]}")
        return
    one = next(iter(measured.values()))
    tf32 = "" if one.get("tf32") is None else f", TF32 {'on' if one['tf32'] else 'off'}"
    layout = f"@{one['resolution']} batch {one['batch']} x {one['num_d_steps']} D steps"
    head = f"{layout} (data.prefetch {one['prefetch']}{tf32}):"
    parts = []
    for case, r in measured.items():
        text = f"{case} {r['img_per_s']:.0f} img/s ({r['peak_gib']:.1f} GiB"
        if ref and case != "bf16":
            text += f", {r['img_per_s'] / ref['img_per_s']:.2f}x bf16"
        parts.append(text + (", compiled" if r.get("compiled") else "") + ")")
    rows.add("train-step img/s", "", head + " " + "; ".join(parts))
    if "bf16+compile" in measured and not measured["bf16+compile"].get("compiled"):
        rows.add("compile", "missed", "runtime.compile=true accepted but neither G nor D reached the step compiled")
    if "bf16" not in measured:
        return
    staged = measured.get("bf16+staged")
    if staged:
        ratio = ref["img_per_s"] / staged["img_per_s"]
        rows.add("input pipeline cost", "", f"img/s real pipeline / pre-staged = {ratio:.2f}")
    if ref.get("syncs_per_step") is not None:
        where = f" (first: {ref['first_sync']})" if ref.get("first_sync") else ""
        rows.add("host syncs / step", _met(ref["syncs_per_step"] == 0),
                 f"bf16 real pipeline {ref['syncs_per_step']:.2f}{where} (target 0)")
    else:
        rows.add("host syncs / step", "skipped", "CUDA only (torch.cuda.set_sync_debug_mode)")
    if ref.get("busy") is not None:
        extra = f", pre-staged {100 * staged['busy']:.0f} %" if staged and staged.get("busy") is not None else ""
        rows.add("GPU busy / step", _met(ref["busy"] >= 0.9),
                 f"bf16 real pipeline {100 * ref['busy']:.0f} %{extra} (profiler, lower bound; target >= 90 %)")
    else:
        rows.add("GPU busy / step", "skipped", "CUDA only (no device kernels in the profile)")


def train(args, rows: Rows) -> None:
    """The demo run: first invocation to the checkpoint, second resumes from it; FID at both."""
    run = Path(args.run_dir)
    second = Path(args.logs[1]).read_text(errors="replace")
    resumed = [line.split("resumed from")[-1] for line in second.splitlines() if "resumed from" in line]
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()] if (
        run / "stats.jsonl").is_file() else []
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] if (
        run / "metrics.jsonl").is_file() else []
    last = stats[-1] if stats else {}
    reached = int(last.get("progress/step", 0))
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.pt")) if (run / "checkpoints").is_dir() else []
    ok = bool(resumed) and reached == args.total and bool(ckpts)
    where = resumed[0].strip().split(" at step ")[-1].split()[0] if resumed else None
    speed = f", {last['speed/img_per_sec']:.0f} img/s" if "speed/img_per_sec" in last else ""
    rows.add("demo train + resume", "ok" if ok else "FAILED",
             f"second invocation {'resumed at step ' + where if where else 'did NOT resume'}, reached step "
             f"{reached}/{args.total}{speed}; checkpoints {', '.join(ckpts) or 'none'}")
    fids = [(m["step"], k, v) for m in metrics for k, v in m.items() if k.startswith("fid") and isinstance(v, float)]
    rows.add("FID path on device", "ok" if len({s for s, _, _ in fids}) >= 2 else "FAILED",
             "; ".join(f"{k} @{s} = {v:.3g}" for s, k, v in fids) + " (random Inception: exercises the path only)")


def table(args, rows: Rows) -> None:
    """Print the summary table (stage, status, seconds, numbers); long numbers wrap under their column."""
    import textwrap

    lines = [line.rstrip("\n").split("\t") for line in Path(args.tsv).read_text().splitlines() if line.strip()]
    lines = [(cells + [""] * 4)[:4] for cells in lines]
    head = ["stage", "status", "seconds", "numbers"]
    width = [max(len(c[i]) for c in [head, *lines]) for i in range(3)]
    indent = sum(width) + 6
    for cells in [head, *lines]:
        wrapped = textwrap.wrap(cells[3], max(40, args.width - indent)) or [""]
        print("  ".join(c.ljust(w) for c, w in zip(cells[:3], width)) + "  " + wrapped[0])
        for more in wrapped[1:]:
            print(" " * indent + more)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", required=True, help="append the rows here")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("env")
    p.add_argument("--device", default="cuda")
    sub.add_parser("lazy-fid")
    p = sub.add_parser("fid-weights")
    p.add_argument("path")
    p.add_argument("--device", default="cuda")
    p = sub.add_parser("smyrf")
    p.add_argument("json")
    p = sub.add_parser("steps")
    p.add_argument("json", nargs="+")
    p = sub.add_parser("train")
    p.add_argument("run_dir")
    p.add_argument("--logs", nargs=2, required=True)
    p.add_argument("--total", type=int, required=True)
    p = sub.add_parser("table")
    p.add_argument("tsv")
    p.add_argument("--width", type=int, default=150)
    args = parser.parse_args()
    rows = Rows(args.rows)
    try:
        {"env": env, "lazy-fid": lazy_fid, "fid-weights": fid_weights, "smyrf": smyrf, "steps": steps,
         "train": train, "table": table}[args.what](args, rows)
    except Exception as err:  # a summary that cannot be read is the stage's failure, named in the table
        rows.add(args.what, "FAILED", f"{type(err).__name__}: {str(err).splitlines()[0][:140] if str(err) else ''}")
    return rows.close()


if __name__ == "__main__":
    sys.exit(main())
