"""Generator and discriminator: shapes, gradients, attention placement, cross-kind checkpoints, sizes, helpers."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from biggan.errors import CheckpointError, ConfigError
from biggan.models import (
    EMA,
    AttentionConfig,
    ModelConfig,
    NetworkConfig,
    attention_gammas,
    attention_rng_state,
    build_discriminator,
    build_generator,
    count_parameters,
    load_attention_rng_state,
    model_config_from_dict,
    orthogonal_regularization,
    set_attention,
    spectral_norm_values,
)

DIM_Z = {32: 20, 64: 20, 128: 24, 256: 28}  # divisible by G blocks + 1 (4, 5, 6, 7)


def smyrf(res: int, n_hashes: int = 2, cq: int = 32) -> AttentionConfig:
    return AttentionConfig(res=res, kind="smyrf", n_hashes=n_hashes, q_cluster_size=cq, k_cluster_size=cq // 4)


def tiny(res: int, conditioning: str = "zhier", g_attn=(), d_attn=(), **kw) -> ModelConfig:
    if conditioning == "class":
        kw = {"n_classes": 5, "shared_dim": 8, **kw}
    return ModelConfig(
        resolution=res,
        dim_z=kw.pop("dim_z", DIM_Z[res]),
        conditioning=conditioning,
        G=NetworkConfig(ch=8, attention=list(g_attn)),
        D=NetworkConfig(ch=8, attention=list(d_attn)),
        **kw,
    )


def labels(cfg: ModelConfig, batch: int = 2):
    return torch.randint(0, cfg.n_classes, (batch,)) if cfg.conditioning == "class" else None


@pytest.mark.parametrize("res", [32, 64, 128, 256])
def test_output_shapes(res: int) -> None:
    torch.manual_seed(0)
    cfg = tiny(res, "class", g_attn=[smyrf(16)], d_attn=[AttentionConfig(res=16)])
    G, D = build_generator(cfg), build_discriminator(cfg)
    y = labels(cfg)
    with torch.no_grad():
        x = G(torch.randn(2, cfg.dim_z), y)
        logits = D(x, y)
    assert x.shape == (2, 3, res, res) and logits.shape == (2,)
    assert x.abs().max() <= 1.0 and torch.isfinite(logits).all()


@pytest.mark.parametrize("conditioning", ["zhier", "smyrf_repro", "class"])
def test_every_parameter_gets_a_finite_nonzero_gradient(conditioning: str) -> None:
    torch.manual_seed(0)
    cfg = tiny(32, conditioning, g_attn=[smyrf(16)], d_attn=[AttentionConfig(res=16)])
    G, D = build_generator(cfg), build_discriminator(cfg)
    for gamma in list(attention_gammas(G).values()) + list(attention_gammas(D).values()):
        with torch.no_grad():
            gamma.fill_(0.5)  # at 0, theta/phi/g/o would get exact zeros
    y = labels(cfg, 4)
    D(G(torch.randn(4, cfg.dim_z), y), y).mean().backward()
    for net in (G, D):
        for name, p in net.named_parameters():
            assert p.grad is not None, f"{net.network_name}.{name} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{net.network_name}.{name} has a non-finite gradient"
            assert p.grad.abs().max() > 0, f"{net.network_name}.{name} has an all-zero gradient"


def test_dense_checkpoint_loads_into_smyrf_model_and_back_and_one_cluster_matches() -> None:
    torch.manual_seed(0)
    dense_cfg = tiny(64, "zhier", g_attn=[AttentionConfig(res=32)], d_attn=[AttentionConfig(res=32)])
    one_cluster = AttentionConfig(res=32, kind="smyrf", n_hashes=1, q_cluster_size=1024, k_cluster_size=256)
    smyrf_cfg = tiny(64, "zhier", g_attn=[one_cluster], d_attn=[smyrf(32, 4, 256)])
    G_dense, G_smyrf = build_generator(dense_cfg), build_generator(smyrf_cfg)
    with torch.no_grad():
        attention_gammas(G_dense)["attention.32"].fill_(1.0)
    G_smyrf.load_state_dict(G_dense.state_dict(), strict=True)
    build_discriminator(smyrf_cfg).load_state_dict(build_discriminator(dense_cfg).state_dict(), strict=True)
    G_dense.load_state_dict(G_smyrf.state_dict(), strict=True)
    G_dense.eval(), G_smyrf.eval()
    z = torch.randn(2, dense_cfg.dim_z)
    with torch.no_grad():
        torch.testing.assert_close(G_smyrf(z), G_dense(z), rtol=1e-4, atol=1e-5)


def test_set_attention_switches_kind_in_place() -> None:
    torch.manual_seed(0)
    G = build_generator(tiny(32, g_attn=[AttentionConfig(res=16)])).eval()
    with torch.no_grad():
        attention_gammas(G)["attention.16"].fill_(1.0)
    z = torch.randn(2, G.dim_z)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    with torch.no_grad():
        dense_out = G(z)
        set_attention(G, [smyrf(16, n_hashes=1, cq=256)])  # one cluster of all 256 queries = dense
        torch.testing.assert_close(G(z), dense_out, rtol=1e-4, atol=1e-5)
        set_attention(G, [smyrf(16, n_hashes=2, cq=32)])
        assert not torch.allclose(G(z), dense_out, atol=1e-5)
    assert G.cfg.G.attention == [smyrf(16, n_hashes=2, cq=32)]
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    with pytest.raises(ConfigError, match=r"no attention layer at res 32; it has \[16\]"):
        set_attention(G, [AttentionConfig(res=32)])


def test_placement_errors_name_the_valid_resolutions() -> None:
    valid_g = r"valid attention resolutions are \[128, 64, 32, 16, 8\]"
    with pytest.raises(ConfigError, match=r"no G-128 block outputs res 4; " + valid_g):
        build_generator(tiny(128, g_attn=[AttentionConfig(res=4)]))
    # BigGAN-PyTorch's "attention at 128" silently never reached D-128: here it is an error.
    valid_d = r"valid attention resolutions are \[64, 32, 16, 8, 4\]"
    with pytest.raises(ConfigError, match=r"no D-128 block outputs res 128; " + valid_d):
        build_discriminator(tiny(128, d_attn=[AttentionConfig(res=128)]))
    with pytest.raises(ConfigError, match="q_cluster_size 48 does not divide the 1024 queries"):
        build_generator(tiny(64, g_attn=[smyrf(32, cq=48)]))
    with pytest.raises(ConfigError, match="lists res 16 twice"):
        build_generator(tiny(32, g_attn=[AttentionConfig(res=16), AttentionConfig(res=16)]))


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"dim_z 100 does not split into 6 equal chunks .* multiple of 6"):
        build_generator(tiny(128, dim_z=100))
    tiny(128, "smyrf_repro", dim_z=100).validate()  # no hierarchy: any dim_z
    with pytest.raises(ConfigError, match="needs model.n_classes and model.shared_dim"):
        ModelConfig(conditioning="class").validate()
    with pytest.raises(ConfigError, match="model.n_classes act only with conditioning: class"):
        ModelConfig(conditioning="zhier", n_classes=10).validate()
    with pytest.raises(ConfigError, match="resolution 96 is not supported"):
        ModelConfig(resolution=96).validate()


def test_model_config_round_trips_through_asdict() -> None:
    cfg = tiny(128, "class", g_attn=[smyrf(128, 4, 2048)], d_attn=[AttentionConfig(res=64)])
    assert model_config_from_dict(dataclasses.asdict(cfg)) == cfg
    data = dataclasses.asdict(cfg)
    data["G"]["attention"][0]["r"] = 4
    with pytest.raises(ConfigError, match=r"model.G.attention\[0\]: unknown key\(s\) \['r'\]"):
        model_config_from_dict(data)


def _paper_cfg() -> ModelConfig:
    net = NetworkConfig(ch=96, attention=[AttentionConfig(res=64)])
    return ModelConfig(resolution=128, dim_z=120, conditioning="class", n_classes=1000, shared_dim=128, G=net, D=net)


def test_parameter_counts_match_the_biggan_paper() -> None:
    # Built on the meta device: shapes only, no orthogonal init of 1536x13824 matrices on a busy CPU.
    with torch.device("meta"):
        G, D = build_generator(_paper_cfg()), build_discriminator(_paper_cfg())
    assert count_parameters(G) == pytest.approx(70.4e6, rel=0.005)
    assert count_parameters(D) == pytest.approx(88.0e6, rel=0.005)


def test_attention_rng_state_restores_training_projections() -> None:
    torch.manual_seed(0)
    cfg = tiny(32, g_attn=[smyrf(16)])
    G = build_generator(cfg)
    with torch.no_grad():
        attention_gammas(G)["attention.16"].fill_(1.0)
    snapshot = copy.deepcopy(G.state_dict())
    state = attention_rng_state(G)
    assert set(state) == {"attention.16"}
    z = torch.randn(2, cfg.dim_z)
    expected = G(z)
    other = build_generator(dataclasses.replace(cfg, smyrf_seed=7))  # different generator seeds
    other.load_state_dict(snapshot)
    assert not torch.allclose(other(z), expected)
    other.load_state_dict(snapshot)
    load_attention_rng_state(other, state)
    torch.testing.assert_close(other(z), expected, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="same attention placement"):
        load_attention_rng_state(other, {})


def test_eval_projections_are_the_eval_seed_draw_made_once() -> None:
    """Eval mode reuses one draw per device and setting: the values a fresh generator seeded with ``eval_seed`` gives
    (as every eval forward drew before), without a host draw and copy per forward; training draws advance."""
    from smyrf import draw_projections

    G = build_generator(tiny(32, g_attn=[smyrf(16)])).eval()
    layer = G.attention["16"]
    z = torch.randn(2, G.cfg.dim_z)
    with torch.no_grad():
        attention_gammas(G)["attention.16"].fill_(1.0)
        first, again = G(z), G(z)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    (projections,) = layer._eval_projections.values()
    d = layer.channels // 8
    assert torch.equal(projections, draw_projections(d, 2, torch.Generator().manual_seed(layer.eval_seed)))
    set_attention(G, [AttentionConfig(res=16, kind="smyrf", n_hashes=2, q_cluster_size=32, k_cluster_size=8,
                                      hashing="kdtree")])
    with torch.no_grad():
        G(z)
    assert sorted(key[2] or 0 for key in layer._eval_projections) == [0, 3]  # kdtree: 8 clusters = 3 levels
    state = layer.generator.get_state()
    G.train()(z)
    assert not torch.equal(layer.generator.get_state(), state)


def test_spectral_norm_values_cover_every_sn_layer_but_not_the_shared_embedding() -> None:
    G = build_generator(tiny(32, "class"))
    values = spectral_norm_values(G)
    assert "linear" in values and "blocks.0.conv1" in values and "blocks.0.bn1.gain" in values
    assert "shared" not in values and all(v.shape == () for v in values.values())
    assert "embed" in spectral_norm_values(build_discriminator(tiny(32, "class")))


def test_ema_before_start_copies_then_averages() -> None:
    torch.manual_seed(0)
    G = build_generator(tiny(32))
    ema = EMA(G, decay=0.75, start_step=2, buffers="copy")
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    ema.update(G, step=1)  # before start: a copy
    assert all(torch.equal(a, b) for a, b in zip(ema.model.parameters(), G.parameters()))
    old = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
        G.blocks[0].bn1.bn.running_mean.fill_(3.0)
    ema.update(G, step=2)
    for a, b, o in zip(ema.model.parameters(), G.parameters(), old):
        torch.testing.assert_close(a, 0.75 * o + 0.25 * b)
    assert torch.equal(ema.model.blocks[0].bn1.bn.running_mean, G.blocks[0].bn1.bn.running_mean)
    averaged = EMA(build_generator(tiny(32)), decay=0.5, buffers="average")
    averaged.update(G, step=0)
    running_mean = averaged.model.blocks[0].bn1.bn.running_mean
    torch.testing.assert_close(running_mean, torch.full_like(running_mean, 1.5))


@pytest.mark.parametrize("buffers", ["copy", "average"])
def test_foreach_ema_is_bit_identical_to_the_per_tensor_loop(monkeypatch, buffers) -> None:
    """Issue 12 item 9: the EMA runs as fused foreach kernels (one lerp call for all parameters) and gives exactly
    what the per-tensor loop gave (the oracle below is the old code)."""

    @torch.no_grad()
    def oracle(ema_model: torch.nn.Module, G: torch.nn.Module, decay: float) -> None:
        ema_params = dict(ema_model.named_parameters())
        for name, param in G.named_parameters():
            ema_params[name].lerp_(param.detach(), 1.0 - decay)
        ema_buffers = dict(ema_model.named_buffers())
        for name, buf in G.named_buffers():
            if buffers == "average" and buf.is_floating_point():
                ema_buffers[name].lerp_(buf, 1.0 - decay)
            else:
                ema_buffers[name].copy_(buf)

    torch.manual_seed(0)
    G = build_generator(tiny(32))
    ema = EMA(G, decay=0.999, start_step=1, buffers=buffers)
    expected = copy.deepcopy(ema.model)
    lerp_calls = []
    real_lerp = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda a, b, w: (lerp_calls.append(len(a)), real_lerp(a, b, w)))
    for step in range(3):
        with torch.no_grad():
            for t in [*G.parameters(), *(b for b in G.buffers() if b.is_floating_point())]:
                t.add_(torch.randn_like(t))
        ema.update(G, step)
        oracle(expected, G, 0.999 if step >= 1 else 0.0)
    for (name, a), b in zip(ema.model.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(a, b), name
    assert lerp_calls[0] == len(list(G.parameters()))  # one fused call for all of them, not one kernel each


def test_standing_statistics_are_the_mean_over_g_emas_own_batches() -> None:
    """BN running statistics become the plain average over the given batches (torch's momentum=None cumulative average
    is the oracle); nothing else changes: SMYRF draws nothing, SN vectors stay, G_ema stays in eval mode."""
    torch.manual_seed(0)
    G = build_generator(tiny(32, g_attn=[smyrf(32)]))
    ema = EMA(G, decay=0.5, buffers="standing")
    latents = [torch.randn(4, G.cfg.dim_z) for _ in range(3)]
    oracle = copy.deepcopy(ema.model)
    norms = [m for m in oracle.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for z in latents:
            oracle(z)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    rng_before = attention_rng_state(ema.model)
    ema.standing_statistics((z, None) for z in latents)
    after = ema.model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    for k, v in oracle.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(after[k], v, rtol=1e-5, atol=1e-6)
    assert not any(m.training for m in ema.model.modules())
    assert all(torch.equal(a, b) for a, b in zip(attention_rng_state(ema.model).values(), rng_before.values()))


def test_orthogonal_regularization_matches_the_reference_gradient_and_skips_the_shared_embedding() -> None:
    torch.manual_seed(0)
    G = build_generator(tiny(32, "class"))
    beta = 1e-2
    orthogonal_regularization(G, beta).backward()
    assert G.shared.weight.grad is None
    w = G.blocks[0].conv1.weight.detach()
    flat = w.reshape(w.shape[0], -1)
    off = flat @ flat.t() * (1 - torch.eye(flat.shape[0]))
    torch.testing.assert_close(G.blocks[0].conv1.weight.grad, (2 * beta * off @ flat).reshape(w.shape))
    assert G.linear.bias.grad is None  # 1-D parameters are not regularised


def test_forward_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    cfg = tiny(32, g_attn=[smyrf(16)], d_attn=[AttentionConfig(res=16)])
    G, D = build_generator(cfg), build_discriminator(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = D(G(torch.randn(2, cfg.dim_z)))
    assert torch.isfinite(logits.float()).all()
    assert all(m.u.dtype == torch.float32 for m in G.modules() if hasattr(m, "u"))
