"""Hinge and non-saturating losses against hand-computed values."""

import math

import pytest
import torch

from biggan.training.losses import LOSSES, hinge_d, hinge_g, ns_d, ns_g


def test_hinge_d_hand_computed():
    d_real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - x) = 0, 0.5, 2.0 -> mean 2.5/3
    d_fake = torch.tensor([-2.0, 0.0, 1.5])  # relu(1 + x) = 0, 1.0, 2.5 -> mean 3.5/3
    loss = hinge_d(d_real, d_fake)
    assert loss.real.item() == pytest.approx(2.5 / 3)
    assert loss.fake.item() == pytest.approx(3.5 / 3)
    assert loss.total.item() == pytest.approx(2.0)


def test_hinge_g_and_saturation():
    assert hinge_g(torch.tensor([1.0, -3.0])).item() == pytest.approx(1.0)
    # D confidently right on both sides: zero loss and zero gradient (the hinge margin).
    d_real = torch.tensor([3.0], requires_grad=True)
    d_fake = torch.tensor([-3.0], requires_grad=True)
    hinge_d(d_real, d_fake).total.backward()
    assert d_real.grad.item() == 0 and d_fake.grad.item() == 0


def test_ns_losses_hand_computed():
    loss = ns_d(torch.tensor([0.0]), torch.tensor([0.0]))
    assert loss.real.item() == pytest.approx(math.log(2))
    assert loss.fake.item() == pytest.approx(math.log(2))
    assert ns_g(torch.tensor([math.log(3.0)])).item() == pytest.approx(-math.log(0.75))


def test_registry():
    assert LOSSES["hinge"] == (hinge_d, hinge_g)
    assert set(LOSSES) == {"hinge", "ns"}
