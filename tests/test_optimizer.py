"""LeanAdam: torch.optim.Adam's updates bit for bit, without a first-moment buffer when beta1 = 0."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from biggan.training.optimizer import LeanAdam


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _train(opt_class, steps: int = 5, **kwargs) -> tuple[nn.Module, torch.optim.Optimizer]:
    """``steps`` updates on fixed random data (the same for every optimiser under test)."""
    net = _net()
    opt = opt_class(net.parameters(), lr=1e-2, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    return net, opt


def _assert_same_params(a: nn.Module, b: nn.Module) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("kernel", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_beta1_zero_equals_torch_adam_bit_for_bit_without_a_first_moment(kernel) -> None:
    settings = dict(betas=(0.0, 0.999), eps=1e-6, **kernel)
    lean_net, lean = _train(LeanAdam, **settings)
    torch_net, reference = _train(torch.optim.Adam, **settings)
    _assert_same_params(lean_net, torch_net)
    for p_lean, p_torch in zip(lean_net.parameters(), torch_net.parameters()):
        lean_state, torch_state = lean.state[p_lean], reference.state[p_torch]
        assert set(lean_state) == {"step", "exp_avg_sq"}  # one buffer per parameter instead of two
        assert torch.equal(lean_state["exp_avg_sq"], torch_state["exp_avg_sq"])
        assert torch.equal(lean_state["step"], torch_state["step"])


@pytest.mark.parametrize("settings", [dict(betas=(0.5, 0.999)), dict(betas=(0.0, 0.999), weight_decay=0.1),
                                      dict(betas=(0.0, 0.999), maximize=True), dict(betas=(0.0, 0.999), amsgrad=True)])
def test_anything_else_is_torch_adam_unchanged(settings) -> None:
    lean_net, lean = _train(LeanAdam, **settings)
    torch_net, _ = _train(torch.optim.Adam, **settings)
    _assert_same_params(lean_net, torch_net)
    assert all("exp_avg" in state for state in lean.state.values())


def test_state_dict_round_trip_continues_identically_and_beta1_may_change_on_resume() -> None:
    straight_net, _ = _train(LeanAdam, steps=6, betas=(0.0, 0.999))
    half_net, half = _train(LeanAdam, steps=3, betas=(0.0, 0.999))
    saved = half.state_dict()
    resumed = LeanAdam(half_net.parameters(), lr=1e-2, betas=(0.0, 0.999))
    resumed.load_state_dict(saved)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):  # replay the data stream; update only on its second half
        x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
        if step >= 3:
            resumed.zero_grad(set_to_none=True)
            nn.functional.mse_loss(half_net(x), y).backward()
            resumed.step()
    _assert_same_params(half_net, straight_net)

    momentum = LeanAdam(half_net.parameters(), lr=1e-2, betas=(0.0, 0.999))
    momentum.load_state_dict(saved)
    momentum.param_groups[0]["betas"] = (0.9, 0.999)  # a resume that turns momentum on (the trainer sets the config's)
    half_net(torch.randn(2, 6)).sum().backward()
    momentum.step()  # the missing first moment starts from zero instead of failing
    assert all(state["exp_avg"].abs().sum() > 0 for state in momentum.state.values())
