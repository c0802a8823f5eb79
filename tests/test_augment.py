"""DiffAugment: each op against hand-computed values, parameter ranges, gradients, determinism, and its place in the
D and G steps (the same policy for the reals and the fakes of a D step; G's gradient flows through it)."""

from __future__ import annotations

import pytest
import torch

from biggan.training.augment import OPS, DiffAugment, adjust_color, cutout, cutout_size, translate, translation_shift
from biggan.training.losses import hinge_d, hinge_g
from biggan.training.steps import StepContext, d_step, g_step

CTX = StepContext(optimizer_step=lambda opt: opt.step(), autocast=lambda: torch.autocast("cpu", enabled=False))


def _augment(seed: int = 0, policy=OPS) -> DiffAugment:
    return DiffAugment(policy, torch.Generator().manual_seed(seed))


def test_color_matches_hand_computed_values():
    # One image, 3 channels, 1x2 pixels. Brightness +0.25 -> R [.25 .85] G [.55 -.05] B [.85 .25]; per-pixel grey
    # .55 / .35; saturation 0.5 -> R [.40 .60] G [.55 .15] B [.70 .30]; image mean .45; contrast 2 -> the values below.
    x = torch.tensor([[[[0.0, 0.6]], [[0.3, -0.3]], [[0.6, 0.0]]]])  # (1, 3, 1, 2)
    out = adjust_color(x, torch.tensor([0.25]), torch.tensor([0.5]), torch.tensor([2.0]))
    expected = torch.tensor([[[[0.35, 0.75]], [[0.65, -0.15]], [[0.95, 0.15]]]])
    torch.testing.assert_close(out, expected)


def test_translation_matches_hand_computed_values():
    x = torch.arange(9.0).reshape(1, 1, 3, 3)  # [[0 1 2] [3 4 5] [6 7 8]]
    out = translate(x, torch.tensor([1]), torch.tensor([-1]))  # out[i, j] = x[i - 1, j + 1], zero outside
    assert torch.equal(out, torch.tensor([[[[0.0, 0, 0], [1, 2, 0], [4, 5, 0]]]]))
    both = translate(torch.cat([x, x]), torch.tensor([0, -2]), torch.tensor([0, 2]))  # per image: none; up 2, right 2
    assert torch.equal(both[0], x[0])
    assert torch.equal(both[1], torch.tensor([[[0.0, 0, 6], [0, 0, 0], [0, 0, 0]]]))


def test_cutout_matches_hand_computed_values():
    x = torch.ones(2, 1, 4, 4)
    out = cutout(x, torch.tensor([1, 0]), torch.tensor([3, 0]), size=2)  # rows cy-1..cy, cols cx-1..cx
    first = torch.ones(4, 4)
    first[0:2, 2:4] = 0
    second = torch.ones(4, 4)
    second[0, 0] = 0  # the square at (-1..0, -1..0) is cut by the border
    assert torch.equal(out[0, 0], first) and torch.equal(out[1, 0], second)


def test_paper_sizes():
    assert (translation_shift(32), translation_shift(128), translation_shift(4)) == (4, 16, 1)  # round(size / 8)
    assert (cutout_size(32), cutout_size(128), cutout_size(5)) == (16, 64, 3)  # round(size / 2)


def test_parameters_cover_the_paper_ranges():
    aug = _augment(1)
    params = aug.draw(20000, 32, 32)  # (B, 3 + 2 + 2): color, translation, cutout
    b, s, c = params[:, 0], params[:, 1], params[:, 2]
    assert -0.5 <= b.min() < -0.49 and 0.49 < b.max() <= 0.5
    assert 0.0 <= s.min() < 0.01 and 1.99 < s.max() <= 2.0
    assert 0.5 <= c.min() < 0.51 and 1.49 < c.max() <= 1.5
    shifts = params[:, 3:5]
    assert set(shifts.unique().tolist()) == set(float(v) for v in range(-4, 5))  # [-r, r], both ends included
    centres = params[:, 5:7]
    assert set(centres.unique().tolist()) == set(float(v) for v in range(0, 33))  # [0, size + 1 - size % 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shape_and_dtype_are_preserved(dtype):
    x = (torch.rand(4, 3, 16, 16) * 2 - 1).to(dtype)
    out = _augment()(x)
    assert out.shape == x.shape and out.dtype == dtype


def test_bf16_matches_fp32():
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    fp32 = _augment(5)(x)
    bf16 = _augment(5)(x.bfloat16())
    assert float((bf16.float() - fp32).abs().max()) < 0.04  # bf16 rounding of values up to ~3: 8 bits of mantissa


def test_each_op_alone_changes_the_images_and_the_full_policy_composes_them():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    for op in OPS:
        assert not torch.equal(_augment(2, [op])(x), x), op
    # The full policy equals its ops applied in order with the same packed parameters.
    aug = _augment(3)
    params = aug.draw(4, 16, 16)
    expected = cutout(translate(adjust_color(x, *params[:, :3].unbind(1)), params[:, 3].long(), params[:, 4].long()),
                      params[:, 5].long(), params[:, 6].long(), cutout_size(16))
    torch.testing.assert_close(aug.apply(x, params), expected)


def test_gradients_flow_to_the_input():
    x = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_()
    (_augment(4)(x) * torch.randn(4, 3, 16, 16)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.abs().flatten(1).sum(1) > 0).all()  # every image gets a gradient (cutout hides only a quarter)


def test_same_seed_same_augmentation_other_seed_another():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    assert torch.equal(_augment(7)(x), _augment(7)(x))
    assert not torch.equal(_augment(7)(x), _augment(8)(x))
    aug = _augment(7)
    assert not torch.equal(aug(x), aug(x))  # fresh draws each call


def test_policy_is_checked():
    with pytest.raises(ValueError, match="distinct ops"):
        _augment(policy=["color", "color"])
    with pytest.raises(ValueError, match="distinct ops"):
        _augment(policy=["colour"])


# --- in the steps -----------------------------------------------------------------------------------------------------

class _Recording:
    """Wraps an augmentation and records the batches it sees."""

    def __init__(self, augment: DiffAugment) -> None:
        self.augment, self.seen = augment, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.augment(x)


def _nets():
    from biggan.models import AttentionConfig, ModelConfig, NetworkConfig, build_discriminator, build_generator

    torch.manual_seed(0)
    cfg = ModelConfig(resolution=32, dim_z=64, G=NetworkConfig(ch=4, attention=[]),
                      D=NetworkConfig(ch=4, attention=[AttentionConfig(res=16, kind="dense")]))
    G, D = build_generator(cfg), build_discriminator(cfg)
    return G, D, torch.optim.Adam(G.parameters(), 1e-4), torch.optim.Adam(D.parameters(), 1e-4)


def test_reals_and_fakes_of_one_d_step_go_through_the_same_augmentation():
    G, D, _, opt_D = _nets()
    x_real, z = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randn(4, 64)
    recording = _Recording(_augment(9))
    d_step(G, D, opt_D, x_real=x_real, z=z, loss=hinge_d, ctx=CTX, augment=recording)
    assert len(recording.seen) == 2  # the fakes, then the reals: one augmentation object, one policy
    with torch.no_grad():
        fakes = G(z)
    torch.testing.assert_close(recording.seen[0], fakes)
    assert torch.equal(recording.seen[1], x_real)


def test_d_step_without_augment_is_unchanged_and_with_it_differs():
    results = []
    for augment in (None, None, _augment(9)):
        G, D, _, opt_D = _nets()
        torch.manual_seed(1)
        x_real, z = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randn(4, 64)
        results.append(d_step(G, D, opt_D, x_real=x_real, z=z, loss=hinge_d, ctx=CTX, augment=augment))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    assert not torch.equal(results[0]["D_out_real"], results[2]["D_out_real"])


def test_g_gradient_flows_through_the_augmentation():
    G, D, opt_G, _ = _nets()
    recording = _Recording(_augment(10))
    seen_grads = {}

    def step(opt):
        seen_grads.update({n: p.grad.clone() for n, p in G.named_parameters() if p.grad is not None})
        opt.step()

    ctx = StepContext(optimizer_step=step, autocast=CTX.autocast)
    out = g_step(G, D, opt_G, z=torch.randn(4, 64), loss=hinge_g, ctx=ctx, augment=recording)
    assert len(recording.seen) == 1 and torch.isfinite(out["G"])
    assert set(seen_grads) == {n for n, _ in G.named_parameters()}  # every parameter of G got a gradient
    assert all(torch.isfinite(g).all() for g in seen_grads.values())
