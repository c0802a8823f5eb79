"""The BigGAN-PyTorch importer, proven without that code.

- Layout: at ch 96 (the JSON listing of their code, 128 and 256, G and D) every key of theirs is consumed by exactly
  the recipes our networks need, with equal shapes and the counts the listing gives (meta tensors, no memory).
- Exactness: random weights in their layout (tests/biggan_pytorch_files.py, small ch): our imported network in eval
  mode equals the reference forward that reads their keys directly (biggan.convert.reference), at 128 and 256.
- Every source tensor lands where it is used: perturbing any one of them moves our output exactly as it moves the
  reference's; the provably unused ones (sv0, and the u0 of D's one-row linear) move nothing.
- The conv1-bias fold (exact in eval; dead in training), SN eval semantics, dtypes, the one-class start, the CLI.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from biggan.convert.biggan_pytorch import (
    ImportRequest,
    convert_state,
    import_biggan_pytorch,
    model_config_for,
    network_from_state,
    plan_for,
    read_source,
)
from biggan.convert.layout import infer_architecture
from biggan.convert.mapping import Recipe, apply_plan, check_plan
from biggan.convert.reference import BigGANPyTorchReference
from biggan.models import build_discriminator, build_generator, count_parameters
from tests.biggan_pytorch_files import ENTRIES, LAYOUT, their_shapes, their_state, write_their_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]
HERE = Path("theirs.pth")  # a name for messages
BUILD = {"G": build_generator, "D": build_discriminator}


def _arch(entry: str, shapes: dict) -> object:
    return infer_architecture(shapes, entry[0], HERE)


def _config(res: int, **kwargs):
    """Our model config for the pair (G, D) of their layout at ``res`` (shapes only)."""
    g = _arch(f"G{res}", their_shapes(f"G{res}", **kwargs))
    d = _arch(f"D{res}", their_shapes(f"D{res}", **kwargs))
    return model_config_for(g, d, 1e-6)


# --- the layout at ch 96: every key, shape and count of the JSON ------------------------------------------------------

@pytest.mark.parametrize("entry", ENTRIES)
def test_every_key_of_the_released_layout_maps_with_equal_shapes(entry):
    network, res = entry[0], int(entry[1:])
    theirs = their_shapes(entry)  # exactly the JSON: ch 96, 1000 classes, shared_dim 128
    cfg = _config(res)
    with torch.device("meta"):
        net = BUILD[network](cfg)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    plan = plan_for(ours, network, cfg)
    check_plan(plan, theirs, ours, HERE, entry)  # raises on a missing, unused or mis-shaped key
    assert set(plan) == set(ours)
    used = [source for recipe in plan.values() for source in recipe.sources]
    assert sorted(set(used)) == sorted(theirs) and len(used) == len(set(used)), "each of their keys read once"

    folds = [r for r in plan.values() if r.kind == "fold"]
    counters = [k for k, r in plan.items() if r.kind == "zero"]
    blocks = len(cfg.G.attention) and (5 if res == 128 else 6)
    expected_keys = {"G128": (166, 172), "D128": (88, 88), "G256": (194, 201), "D256": (100, 100)}[entry]
    assert (len(theirs), len(ours)) == expected_keys
    their_params = LAYOUT[entry]["params"]
    if network == "G":
        assert len(folds) == blocks and len(counters) == 2 * blocks + 1  # bn1, bn2 per block + out_bn
        folded = sum(theirs[r.sources[1]][0] for r in folds)  # the dropped conv1 biases
        assert count_parameters(net) == their_params - folded  # G-128: 70,433,988 - 2,976
        assert cfg.dim_z == (120 if res == 128 else 119)  # their hier silently rounds 120 down to 7 x 17 at 256
    else:
        assert not folds and not counters and count_parameters(net) == their_params
    assert [a.res for a in getattr(cfg, network).attention] == [64]
    assert (cfg.n_classes, cfg.shared_dim, cfg.G.ch, cfg.D.ch, cfg.sn_iters) == (1000, 128, 96, 96, 1)


# --- exactness on random weights ---------------------------------------------------------------------------------------

def _imported(entry: str, theirs: dict, dtype: torch.dtype = torch.float64, ch: int = 8):
    """(our network in eval mode, its state, the recipes, the reference over ``theirs`` in ``dtype``)."""
    network, res = entry[0], int(entry[1:])
    cfg = _config(res, ch=ch, n_classes=5, shared_dim=8)
    state, plan = convert_state(network, cfg, theirs, HERE, entry, dtype=dtype)
    net = network_from_state(BUILD[network], cfg, {k: v.float() if v.is_floating_point() else v
                                                   for k, v in state.items()}, entry).to(dtype)
    net.load_state_dict(state)
    ref = BigGANPyTorchReference({k: v.to(dtype) for k, v in theirs.items()}, cfg.sn_eps, cfg.bn_eps)
    return net, state, plan, ref, cfg


def _inputs(entry: str, cfg, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    y = torch.tensor([0, 3, 4])  # (B,)
    if entry[0] == "G":
        return torch.randn(3, cfg.dim_z, generator=gen, dtype=dtype), y
    return torch.rand(3, 3, cfg.resolution, cfg.resolution, generator=gen, dtype=dtype) * 2 - 1, y


def _forward(net, ref, entry, inputs):
    with torch.no_grad():
        ours = net(*inputs)
        theirs = ref.generator(*inputs) if entry[0] == "G" else ref.discriminator(*inputs)
    return ours, theirs


@pytest.mark.parametrize("entry", ENTRIES)
def test_imported_network_equals_the_reference_forward(entry):
    net, _, _, ref, cfg = _imported(entry, their_state(entry))
    ours, theirs = _forward(net, ref, entry, _inputs(entry, cfg))
    assert ours.shape == theirs.shape == ((3, 3, cfg.resolution, cfg.resolution) if entry[0] == "G" else (3,))
    assert theirs.abs().max() > 0.1 and theirs.std() > 0.01  # not a degenerate output
    assert (ours - theirs).abs().max() < 1e-12  # float64: the mapping and the fold are exact (rounding only)


def test_float32_import_matches_to_rounding():
    for entry in ("G128", "D128"):
        net, _, _, ref, cfg = _imported(entry, their_state(entry, seed=1), dtype=torch.float32)
        ours, theirs = _forward(net, ref, entry, _inputs(entry, cfg, torch.float32))
        assert (ours - theirs).abs().max() < 1e-5


def _provably_unused(key: str, shape: tuple[int, ...]) -> str | None:
    """Why no eval forward reads this source key (None: it must move the output).

    - ``sv0`` only logs the last sigma; their forward recomputes sigma from u0 (bit-identical output);
    - the ``u0`` of a weight with ONE output row (D's linear (1, 16ch); at these small widths also attention's theta
      and phi, C/8 = 1 row): the power iteration gives sigma = ||W|| whatever u0 is (identical up to rounding).
    """
    if key.endswith(".sv0"):
        return "sv0"
    if key.endswith(".u0") and shape == (1, 1):
        return "one-row u0"
    return None


def _perturbed(key: str, value: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if key.endswith("stored_var"):
        return value * (1 + 0.5 * torch.rand(value.shape, generator=gen, dtype=value.dtype))  # stays positive
    noise = torch.randn(value.shape, generator=gen, dtype=value.dtype)
    return value + (0.3 if value.dim() == 0 else 0.2 * (value.abs().mean() + 0.05)) * noise


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["G128", "D128"])
def test_every_source_tensor_moves_the_output(entry):
    """Perturb one source tensor at a time: our output must move, except for the provably unused keys, which must
    leave it bit-identical. With the exactness test (every key at once, against the reference) this pins that each
    tensor is read, and read where the reference reads it. G at ch 4 (its narrowest layer, attention's C/8, is 24
    at ch 96), D at ch 8 (12 at ch 96): one forward per key, so the widths are the smallest the layout allows."""
    ch = 4 if entry[0] == "G" else 8
    theirs = their_state(entry, ch=ch)
    net, _, plan, _, cfg = _imported(entry, theirs, dtype=torch.float32, ch=ch)
    z, y = _inputs(entry, cfg, torch.float32)
    inputs = (z[:1], y[1:2])  # one sample (class 3): eval mode is per sample
    with torch.no_grad():
        base = net(*inputs)
    gen = torch.Generator().manual_seed(9)
    unused = {}
    for key, value in theirs.items():
        net.load_state_dict(apply_plan(plan, dict(theirs, **{key: _perturbed(key, value, gen)})))
        with torch.no_grad():
            change = (net(*inputs) - base).abs().max().item()
        why = _provably_unused(key, tuple(value.shape))
        if why == "sv0":
            assert change == 0, f"{key} is only logged, yet it moved the output by {change:.1e}"
        elif why is not None:
            assert change < 1e-6, f"{key}: {why} moved the output by {change:.1e}"
        else:
            assert change > 1e-5, f"{key} moves the output by only {change:.1e}: is it read?"  # rounding: < 4e-7
        if why:
            unused[key] = why
    assert sum(w == "sv0" for w in unused.values()) == {"G128": 41, "D128": 23}[entry]
    assert "linear.u0" in unused or entry[0] == "G"
    assert len(theirs) - len(unused) > 100 if entry[0] == "G" else 55


# --- the conv1-bias fold -----------------------------------------------------------------------------------------------

def test_without_the_fold_the_output_is_wrong():
    """The mutation the exactness test must catch: conv1's bias dropped without folding it into bn2's mean."""
    theirs = their_state("G128", dtype=torch.float64)
    net, _, plan, ref, cfg = _imported("G128", theirs)
    unfolded = {k: Recipe("copy", r.sources[:1]) if r.kind == "fold" else r for k, r in plan.items()}
    net.load_state_dict(apply_plan(unfolded, theirs, torch.float64))
    ours, expected = _forward(net, ref, "G128", _inputs("G128", cfg))
    assert (ours - expected).abs().max() > 1e-2


def test_the_folded_bias_is_dead_in_training():
    """In training mode bn2 normalises with the batch statistics, whose mean absorbs conv1's bias exactly: ours
    (no bias) equals the reference WITH the bias, so fine-tuning from the import loses nothing."""
    theirs = their_state("G128", dtype=torch.float64)
    net, _, _, ref, cfg = _imported("G128", theirs)
    z, y = _inputs("G128", cfg)
    with torch.no_grad():
        ours = net.train()(z, y)
        expected = ref.generator(z, y, batch_stats=True)
    assert (ours - expected).abs().max() < 1e-10


def test_fold_identity():
    """BN(h + b; m, v) == BN(h; m - b, v): the identity the fold rests on."""
    gen = torch.Generator().manual_seed(0)
    h, b, m = (torch.randn(shape, generator=gen, dtype=torch.float64) for shape in ((4, 6, 5, 5), (6,), (6,)))
    v = torch.rand(6, generator=gen, dtype=torch.float64) + 0.5
    bn = torch.nn.functional.batch_norm
    assert torch.allclose(bn(h + b[:, None, None], m, v, training=False), bn(h, m - b, v, training=False), atol=1e-14)


# --- spectral norm in eval mode ----------------------------------------------------------------------------------------

def test_spectral_norm_eval_semantics_are_theirs():
    """sigma from one power iteration on the stored u0 (kept as is, not renormalised), no update in eval, and the
    import pins sn_iters 1 (our eval runs sn_iters iterations; theirs always one)."""
    theirs = their_state("G128", dtype=torch.float64)
    net, state, plan, ref, cfg = _imported("G128", theirs)
    assert cfg.sn_iters == 1
    layers = {name: m for name, m in net.named_modules() if hasattr(m, "sn_iters")}
    for name, layer in layers.items():
        source = plan[f"{name}.u"].sources[0].removesuffix(".u0")
        assert torch.equal(layer.u, theirs[f"{source}.u0"])  # u0 kept as stored (norm 0.9·sqrt(out)-ish, not 1)
        assert torch.equal(layer.sigma(), ref.sigma(source))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _forward(net, ref, "G128", _inputs("G128", cfg))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "an eval forward changed a buffer"
    for layer in layers.values():
        layer.sn_iters = 2  # what an un-pinned config would do: a second iteration moves sigma
    ours, expected = _forward(net, ref, "G128", _inputs("G128", cfg))
    assert (ours - expected).abs().max() > 1e-6


# --- files, dtypes, the one-class start, the CLI ---------------------------------------------------------------------

def test_fp16_file_is_cast_to_float32(tmp_path):
    path = write_their_file(tmp_path / "G_ema.pth", "G128", dtype=torch.float16)
    result = import_biggan_pytorch(ImportRequest(path))
    state = result.checkpoint["G"]
    assert all(v.dtype == torch.float32 for k, v in state.items() if not k.endswith("num_batches_tracked"))
    theirs, _ = read_source(path, "G")
    assert torch.equal(state["linear.weight"], theirs["linear.weight"].float())
    assert any("checked" in line for line in result.lines)


def test_legacy_file_saved_from_cuda_imports_on_a_cpu(tmp_path, monkeypatch):
    """The released files were written by PyTorch 1.0 from CUDA tensors: the legacy (non-zip) format with storages
    tagged cuda:0. Forged here by tagging the storages while saving; the import reads it on a CPU-only machine."""
    import torch.serialization

    state = their_state("G128")
    path = tmp_path / "G_ema.pth"
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, path, _use_new_zipfile_serialization=False)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # what a loader without map_location meets
    theirs, arch = read_source(path, "G")
    assert arch.resolution == 128 and all(torch.equal(theirs[k], v) for k, v in state.items())


def test_one_class_start(tmp_path):
    g = write_their_file(tmp_path / "G_ema.pth", "G128")
    d = write_their_file(tmp_path / "D.pth", "D128")
    full = import_biggan_pytorch(ImportRequest(g, d)).checkpoint
    one = import_biggan_pytorch(ImportRequest(g, d, one_class="3", verify=False)).checkpoint
    mean = import_biggan_pytorch(ImportRequest(g, one_class="mean", verify=False)).checkpoint
    assert one["model_args"]["n_classes"] == 1 and one["class_names"] == ["class 3"]
    assert mean["class_names"] == ["mean of 5 classes"] and "D" not in mean
    assert torch.equal(mean["G"]["shared.weight"], full["G"]["shared.weight"].mean(0, keepdim=True))
    from biggan.models import model_config_from_dict

    nets = [network_from_state(build_generator, model_config_from_dict(c["model_args"]), c["G"], "G")
            for c in (full, one)]
    z = torch.randn(2, 120, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(nets[1](z, torch.zeros(2, dtype=torch.long)), nets[0](z, torch.full((2,), 3)))
    assert torch.equal(one["D"]["embed.weight"], full["D"]["embed.weight"][3:4])
    assert one["D"]["embed.u"].shape == (1, 1)
    for key in full["D"]:
        if not key.startswith("embed."):
            assert torch.equal(one["D"][key], full["D"][key]), key


def _convert_main(monkeypatch, *args: str) -> int:
    from biggan.convert.__main__ import main
    from biggan.errors import cli_main

    monkeypatch.setattr(sys, "argv", ["python -m biggan.convert", *args])
    with pytest.raises(SystemExit) as info:
        cli_main(main)
    return info.value.code


def test_cli_writes_a_checkpoint_that_samples_like_the_reference(tmp_path, monkeypatch, capsys):
    g = write_their_file(tmp_path / "138k" / "G_ema.pth", "G128")
    d = write_their_file(tmp_path / "138k" / "D.pth", "D128")
    names = tmp_path / "names.txt"
    names.write_text("tench\ngoldfish\nshark\nhen\nostrich\n")
    out = tmp_path / "imported.pt"
    assert _convert_main(monkeypatch, "biggan-pytorch", str(g), "--D", str(d), "--out", str(out), "--resolution",
                         "128", "--attention-res", "64", "--class-names", str(names)) == 0
    printed = capsys.readouterr().out
    assert "166 tensors -> 172" in printed and "checked: our G" in printed and "checked: our D" in printed

    from biggan.checkpoint import load_checkpoint
    from biggan.generation.checkpoint import GENERATOR_KEYS, load_generator

    state = load_checkpoint(out, required=GENERATOR_KEYS + ("D",))
    assert state["class_names"][1] == "goldfish" and state["step"] == 0
    G, cfg, _ = load_generator(out)
    ref = BigGANPyTorchReference(their_state("G128"))
    z, y = torch.randn(2, cfg.dim_z), torch.tensor([1, 4])
    with torch.no_grad():
        assert (G(z, y) - ref.generator(z, y)).abs().max() < 1e-5
    # never overwritten: the same command again is refused, the file unchanged
    before = out.read_bytes()
    assert _convert_main(monkeypatch, "biggan-pytorch", str(g), "--out", str(out)) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before


def test_the_shipped_fine_tuning_config_fits_the_released_model():
    """configs/finetune128_imagenet_faces.yaml builds exactly the architecture of the released 128 model reduced to
    one class (the JSON layout at ch 96), so --init-from loads G and D; only attention kinds differ."""
    import dataclasses

    from biggan.models import architecture_differences
    from biggan.training.config import load_config

    released = dataclasses.replace(_config(128), n_classes=1)  # what --one-class writes
    run = load_config(ROOT / "configs" / "finetune128_imagenet_faces.yaml").model
    assert architecture_differences(released, run) == []
    assert [a.kind for a in run.G.attention] == ["smyrf"] and released.G.attention[0].kind == "dense"
