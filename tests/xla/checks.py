"""XLA checks, run by tests/test_xla.py with the torch-xla venv's python and ``PJRT_DEVICE=CPU``.

    checks.py single --out DIR --cpu-ckpt FILE   # one XLA device (run with CPU_NUM_DEVICES=1)
    checks.py spmd   --out DIR                   # SPMD data parallel (run with CPU_NUM_DEVICES=2)
    checks.py smyrf_spmd --out DIR --dump DUMP   # SMYRF's collectives under SPMD (CPU_NUM_DEVICES=2, XLA_FLAGS dumping
                                                 # the HLO into DUMP: collectives.dump_flags)
    checks.py step_spmd --out DIR --dump DUMP    # one whole training step's collectives, and the FID sampling
                                                 # program's (CPU_NUM_DEVICES=2 or 4, XLA_FLAGS dumping as above)

``single``: SMYRF attention and DiffAugment on XLA against CPU (values, gradients, no recompilation for new values, no
host reads); a few BigGAN D+G steps with SMYRF in G on XLA against the same steps in CPU eager mode; compile and step
times; a checkpoint written from XLA (for the test to load on CPU) and the CPU-written ``--cpu-ckpt`` loaded onto XLA.
``spmd``: the same training steps and DiffAugment with the global batch sharded over the devices. ``smyrf_spmd``:
smyrf_attention forward + backward on batch-sharded q, k, v (both hashings): the collectives of the optimised HLO and
the values against CPU eager. ``step_spmd``: one D step + G step (SMYRF in G, accumulation 2) and one FID sampling
batch on batch-sharded inputs: the collectives of each optimised program. Results go to ``DIR/<mode>.json`` (+ files).

Shape legend: B batch, C channels, h×w spatial size; Nq, Nk queries/keys; d key dim; dv value dim.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import torch

from biggan.models import (
    AttentionConfig,
    ModelConfig,
    NetworkConfig,
    attention_rng_state,
    build_discriminator,
    build_generator,
    load_state_strict,
)
from biggan.runtime import Runtime, RuntimeConfig
from biggan.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from biggan.training.losses import hinge_d, hinge_g
from biggan.training.optimizer import LeanAdam
from biggan.training.steps import StepContext, d_step, g_step
from smyrf import smyrf_attention

RES, DIM_Z, GLOBAL_BATCH = 32, 64, 4
STEPS = 3  # steps 1 and 2 compile (Adam creates its state in step 1); step 3 is a steady-state step
CKPT_KEYS = ("G", "D", "opt_G", "opt_D")


def model_config() -> ModelConfig:
    """Demo-sized BigGAN-32 with real SMYRF clustering in G: 1024 queries / 256 keys in 4 clusters, 2 rounds.

    N(0, 0.02) init keeps the logits of this narrow D small, so no hinge term saturates and every loss moves.
    """
    smyrf = AttentionConfig(res=32, kind="smyrf", n_hashes=2, q_cluster_size=256, k_cluster_size=64)
    return ModelConfig(resolution=RES, dim_z=DIM_Z, init="normal", G=NetworkConfig(ch=8, attention=[smyrf]),
                       D=NetworkConfig(ch=8, attention=[AttentionConfig(res=16, kind="dense")]))


def num_compiles() -> int:
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    return 0 if data is None else int(data[0])


def compile_seconds() -> float:
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    return 0.0 if data is None else data[1] / 1e9


def transfers_to_host() -> int:
    import torch_xla.debug.metrics as met

    data = met.metric_data("TransferFromDeviceTime")
    return 0 if data is None else int(data[0])


def cpu_fallback_ops() -> list[str]:
    """Ops XLA could not lower since the last counter reset: each runs on the host and cuts the graph."""
    import torch_xla.debug.metrics as met

    return sorted(name for name in met.counter_names() if name.startswith("aten::"))


def check_smyrf(rt: Runtime) -> dict[str, Any]:
    """smyrf_attention forward and backward on XLA equal CPU; new values with the same shapes do not recompile.

    Differences are relative to each tensor's largest entry (the gradients of sum(out²) are O(10)).
    """
    def run(device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        q, k = torch.randn(2, 256, 16, generator=g), torch.randn(2, 64, 16, generator=g)  # (B, Nq, d), (B, Nk, d)
        v = torch.randn(2, 64, 8, generator=g)  # (B, Nk, dv)
        q, k, v = (t.to(device).requires_grad_() for t in (q, k, v))
        out = smyrf_attention(q, k, v, n_hashes=2, q_cluster_size=64, k_cluster_size=16, scale=1.0,
                              generator=torch.Generator().manual_seed(seed))  # (B, Nq, dv)
        (out * out).sum().backward()
        rt.mark_step()
        return tuple(t.detach().cpu() for t in (out, q.grad, k.grad, v.grad))

    cpu = run(torch.device("cpu"), 0)
    xla = run(rt.device, 0)
    compiles = num_compiles()
    xla_again = run(rt.device, 1)  # new values (and clusters), same shapes
    cpu_again = run(torch.device("cpu"), 1)
    return {
        "max_rel_diff": max(
            float((a - b).abs().max() / b.abs().max()) for a, b in zip(xla + xla_again, cpu + cpu_again)
        ),
        "recompiles_for_new_values": num_compiles() - compiles,
    }


def check_augment(rt: Runtime) -> dict[str, Any]:
    """DiffAugment on XLA (placed like a batch: sharded under SPMD) equals CPU for the same generator seed, values and
    input gradients; new draws reuse the compiled program; no op falls back to the host and nothing is read back."""
    import torch_xla.debug.metrics as met

    from biggan.training.augment import OPS, DiffAugment

    def run(device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(GLOBAL_BATCH, 3, RES, RES, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        on_xla = device.type == "xla"
        x = (rt.shard_batch(x) if on_xla else x).requires_grad_()  # (B, 3, h, w)
        augment = DiffAugment(OPS, torch.Generator().manual_seed(seed), place=rt.shard_batch if on_xla else None,
                              host_rows=rt.host_rows)
        out = augment(x)
        (out * out).sum().backward()
        if on_xla:
            rt.mark_step()
        return out.detach(), x.grad.detach()

    met.clear_counters()
    transfers = transfers_to_host()
    xla = run(rt.device, 0)
    compiles = num_compiles()
    xla_again = run(rt.device, 1)  # new images and new draws, same shapes
    result = {"recompiles_for_new_values": num_compiles() - compiles,
              "host_reads": transfers_to_host() - transfers, "cpu_fallback_ops": cpu_fallback_ops()}
    cpu = run(torch.device("cpu"), 0) + run(torch.device("cpu"), 1)
    result["max_abs_diff"] = max(float((a.cpu() - b).abs().max()) for a, b in zip(xla + xla_again, cpu))
    return result


def train(rt: Runtime, steps: int = STEPS) -> dict[str, Any]:
    """``steps`` D+G steps on a fixed global batch stream; per-step losses, step times, final states."""
    torch.manual_seed(0)
    G = rt.wrap_model(build_generator(model_config()))
    D = rt.wrap_model(build_discriminator(model_config()))
    opt_G = LeanAdam(G.parameters(), lr=2e-4, betas=(0.0, 0.999))
    opt_D = LeanAdam(D.parameters(), lr=4e-4, betas=(0.0, 0.999))
    data = torch.Generator().manual_seed(1234)
    stats, seconds = [], []
    transfers = transfers_to_host() if rt.kind == "xla" else 0
    for _ in range(steps):
        start = time.perf_counter()
        x_real = torch.rand(GLOBAL_BATCH, 3, RES, RES, generator=data) * 2 - 1  # (B, 3, h, w)
        z_d, z_g = torch.randn(GLOBAL_BATCH, DIM_Z, generator=data), torch.randn(GLOBAL_BATCH, DIM_Z, generator=data)
        ctx = StepContext(rt.optimizer_step, rt.autocast)
        out = d_step(G, D, opt_D, x_real=rt.shard_batch(x_real), z=rt.shard_batch(z_d), loss=hinge_d, ctx=ctx)
        rt.mark_step()
        out.update(g_step(G, rt.unwrap(D), opt_G, z=rt.shard_batch(z_g), loss=hinge_g, ctx=ctx))
        rt.mark_step()
        stats.append({k: out[k] for k in ("D_real", "D_fake", "G")})  # device tensors: no host sync in the loop
        rt.synchronize()  # timing only
        seconds.append(time.perf_counter() - start)
    transfers = (transfers_to_host() if rt.kind == "xla" else 0) - transfers
    losses = [rt.reduce_mean(s) for s in stats]  # the tick: one read per value
    return {"losses": losses, "seconds": seconds, "host_reads_in_steps": transfers,
            "G": G, "D": D, "opt_G": opt_G, "opt_D": opt_D}


def checkpoint_state(rt: Runtime, run: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint-format state built from host copies (what the trainer saves)."""
    G = rt.unwrap(run["G"])
    return rt.to_host({
        "format_version": FORMAT_VERSION, "config": {}, "model_args": dataclasses.asdict(model_config()),
        "step": STEPS, "images_seen": STEPS * GLOBAL_BATCH, "best_fid": None,
        "G": G.state_dict(), "D": rt.unwrap(run["D"]).state_dict(), "G_ema": None,
        "opt_G": run["opt_G"].state_dict(), "opt_D": run["opt_D"].state_dict(),
        "rng": {}, "data": {}, "attention_rng": attention_rng_state(G),
    })


def eval_sample(G: torch.nn.Module, device: torch.device, z: torch.Tensor) -> torch.Tensor:
    """G in eval mode (running BN stats, fixed SMYRF eval seed) on ``z``; returned on the CPU."""
    G.eval()
    with torch.no_grad():
        x = G(z.to(device))  # (B, 3, h, w)
    G.train()
    return x.cpu()


def single(out: Path, cpu_ckpt: Path) -> dict[str, Any]:
    rt = Runtime.setup(RuntimeConfig(kind="xla", spmd=False))
    result: dict[str, Any] = {"device": str(rt.device), "smyrf": check_smyrf(rt), "augment": check_augment(rt)}

    import torch_xla.debug.metrics as met

    compile_before, compiles_before = compile_seconds(), num_compiles()
    met.clear_counters()
    run = train(rt)
    result.update(losses=run["losses"], seconds=run["seconds"], compiles=num_compiles() - compiles_before,
                  compile_seconds=compile_seconds() - compile_before, host_reads_in_steps=run["host_reads_in_steps"],
                  cpu_fallback_ops=cpu_fallback_ops())
    eager = train(Runtime.setup(RuntimeConfig(kind="cpu")))
    result["cpu_losses"] = eager["losses"]

    # XLA -> CPU: save through the checkpoint store; the test loads it with the main (torch 2.14) stack.
    save_checkpoint(checkpoint_state(rt, run), out / "xla_ckpt", step=STEPS, keep_last=1)
    z = torch.randn(2, DIM_Z, generator=torch.Generator().manual_seed(7))
    torch.save({"z": z, "x": eval_sample(rt.unwrap(run["G"]), rt.device, z)}, out / "xla_sample.pt")

    # CPU -> XLA: a checkpoint written by the main stack, loaded into fresh networks and optimisers on the device.
    state = load_checkpoint(cpu_ckpt, required=CKPT_KEYS)
    G = rt.wrap_model(build_generator(model_config()))
    D = rt.wrap_model(build_discriminator(model_config()))
    load_state_strict(G, state["G"], "G"), load_state_strict(D, state["D"], "D")
    opt_G = LeanAdam(G.parameters(), lr=2e-4, betas=(0.0, 0.999))
    opt_G.load_state_dict(state["opt_G"])
    exp_avg_sq = next(iter(opt_G.state.values()))["exp_avg_sq"]
    sample = torch.load(cpu_ckpt.parent / "cpu_sample.pt", weights_only=True)
    result["cpu_ckpt_on_xla"] = {
        "max_abs_diff": float((eval_sample(G, rt.device, sample["z"]) - sample["x"]).abs().max()),
        "opt_state_device": str(exp_avg_sq.device),
    }
    return result


def spmd(out: Path) -> dict[str, Any]:
    rt = Runtime.setup(RuntimeConfig(kind="xla", spmd=True))
    import torch_xla

    x = rt.shard_batch(torch.zeros(GLOBAL_BATCH, 3, 2, 2))
    result: dict[str, Any] = {"num_devices": rt.num_devices, "world_size": rt.world_size,
                              "local_batch": rt.local_batch_size(GLOBAL_BATCH // rt.num_devices),
                              "batch_sharding": torch_xla._XLAC._get_xla_sharding_spec(x)}
    run = train(rt, steps=2)  # the compiled steps are what SPMD must get right; step 3 would repeat step 2's graph
    result.update(losses=run["losses"], seconds=run["seconds"], augment=check_augment(rt))
    return result


def _collectives_module():
    """tests/xla/collectives.py (this file is also imported by path from the main stack, so no package import)."""
    spec = importlib.util.spec_from_file_location("collectives", Path(__file__).with_name("collectives.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SMYRF_SPMD_SHAPES = dict(batch=4, nq=1024, nk=256, d=12, dv=48)  # the shapes of the measurement
SMYRF_SPMD_CASES = (("projection", "none"), ("kdtree", "none"), ("projection", "mean"), ("projection", "taylor"))


def smyrf_spmd(out: Path, dump: Path) -> dict[str, Any]:
    """smyrf_attention fwd+bwd on batch-sharded inputs: the collectives XLA inserted, and the values against CPU."""
    collectives = _collectives_module()
    rt = Runtime.setup(RuntimeConfig(kind="xla", spmd=True))
    import torch_xla
    b, nq, nk, d, dv = (SMYRF_SPMD_SHAPES[key] for key in ("batch", "nq", "nk", "d", "dv"))
    result: dict[str, Any] = {"num_devices": rt.num_devices}
    for hashing, summary in SMYRF_SPMD_CASES:
        g = torch.Generator().manual_seed(0)
        host = [torch.randn(b, n, c, generator=g) for n, c in ((nq, d), (nk, d), (nk, dv))]  # (B, N, .) q, k, v

        def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out = smyrf_attention(q, k, v, n_hashes=2, q_cluster_size=256, k_cluster_size=64, scale=1.0,
                                  hashing=hashing, summary=summary,
                                  generator=torch.Generator().manual_seed(1))  # (B, Nq, dv)
            (out * out).sum().backward()
            return out

        xla = [rt.shard_batch(x).requires_grad_() for x in host]  # batch axis split over the devices
        rt.mark_step()
        before = collectives.dumped(dump)
        xla_out = run(*xla)
        rt.mark_step()
        found = collectives.collectives(collectives.modules_since(dump, before))
        cpu = [x.clone().requires_grad_() for x in host]
        cpu_out = run(*cpu)
        pairs = zip([xla_out, *(x.grad for x in xla)], [cpu_out, *(x.grad for x in cpu)])
        result[hashing if summary == "none" else f"{hashing}+{summary}"] = {
            "collectives": found, "counts": collectives.count(found),
            "max_rel_diff": max(float((a.detach().cpu() - e).abs().max() / e.abs().max()) for a, e in pairs),
            "out_sharding": torch_xla._XLAC._get_xla_sharding_spec(xla_out),
        }
    return result


STEP_ACCUMULATE = 2  # micro-batches in step_spmd's D and G steps


def step_spmd(out: Path, dump: Path) -> dict[str, Any]:
    """One full training step under SPMD, as the loop runs it, and one FID sampling batch: their collectives.

    The global batch is 2 images per device per micro-batch (``STEP_ACCUMULATE`` micro-batches), so every device holds
    rows of every micro-batch. Reported per program: every collective of its optimised HLO, and the largest parameter
    (in elements), the bound for an all-reduce that can be a gradient's (or BN statistics', which are smaller).
    """
    collectives = _collectives_module()
    from biggan.generation.generate import generate

    rt = Runtime.setup(RuntimeConfig(kind="xla", spmd=True))
    torch.manual_seed(0)
    G = rt.wrap_model(build_generator(model_config()))
    D = rt.wrap_model(build_discriminator(model_config()))
    opt_G = LeanAdam(G.parameters(), lr=2e-4, betas=(0.0, 0.999))
    opt_D = LeanAdam(D.parameters(), lr=4e-4, betas=(0.0, 0.999))
    batch = 2 * STEP_ACCUMULATE * rt.num_devices
    data = torch.Generator().manual_seed(1234)
    x_real = torch.rand(batch, 3, RES, RES, generator=data) * 2 - 1  # (B, 3, h, w)
    z_d, z_g = torch.randn(batch, DIM_Z, generator=data), torch.randn(batch, DIM_Z, generator=data)  # (B, dim_z)
    ctx = StepContext(rt.optimizer_step, rt.autocast, STEP_ACCUMULATE, **_step_layout(rt))
    result: dict[str, Any] = {"num_devices": rt.num_devices, "batch": batch, "accumulate": STEP_ACCUMULATE,
                              "max_param_elements": max(p.numel() for net in (G, D) for p in net.parameters())}
    programs = {}
    before = collectives.dumped(dump)
    stats = d_step(G, D, opt_D, x_real=rt.shard_batch(x_real), z=rt.shard_batch(z_d), loss=hinge_d, ctx=ctx)
    rt.mark_step()
    programs["d_step"] = collectives.modules_since(dump, before)
    before = collectives.dumped(dump)
    stats.update(g_step(G, rt.unwrap(D), opt_G, z=rt.shard_batch(z_g), loss=hinge_g, ctx=ctx))
    rt.mark_step()
    programs["g_step"] = collectives.modules_since(dump, before)
    result["losses"] = rt.reduce_mean({k: stats[k] for k in ("D_real", "D_fake", "G")})
    before = collectives.dumped(dump)
    fakes = generate(rt.unwrap(G), z_g, batch, rt.device, **_sample_placement(rt))  # (B, 3, h, w) on the host
    programs["fid_sample"] = collectives.modules_since(dump, before)
    result["fid_sample_shape"] = list(fakes.shape)
    for name, modules in programs.items():
        found = collectives.collectives(modules)
        result[name] = {"modules": len(modules), "collectives": found, "counts": collectives.count(found),
                        "results": [collectives.entry_result(text) for text in modules.values()]}
    return result


def _step_layout(rt: Runtime) -> dict[str, Any]:
    """StepContext's batch layout arguments, where this tree has them (the check also runs on the code before)."""
    fields = {f.name for f in dataclasses.fields(StepContext)}
    return {"batch_shards": rt.batch_shards} if "batch_shards" in fields else {}


def _sample_placement(rt: Runtime) -> dict[str, Any]:
    """generate's placement argument, where this tree has it (the check also runs on the code before)."""
    import inspect

    from biggan.generation.generate import generate

    return {"place": rt.shard_batch} if "place" in inspect.signature(generate).parameters else {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["single", "spmd", "smyrf_spmd", "step_spmd"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cpu-ckpt", type=Path)
    parser.add_argument("--dump", type=Path, help="the --xla_dump_to directory (smyrf_spmd, step_spmd)")
    args = parser.parse_args()
    if args.mode == "single":
        result = single(args.out, args.cpu_ckpt)
    elif args.mode == "spmd":
        result = spmd(args.out)
    else:
        result = (smyrf_spmd if args.mode == "smyrf_spmd" else step_spmd)(args.out, args.dump)
    (args.out / f"{args.mode}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
