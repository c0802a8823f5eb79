"""Preemption signals in-process, the bounded divergence guard, the sync-free finite monitor.

Preemption of real child processes (exit status, watchdog, train.py) is tested in test_preemption.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from biggan.errors import UserError
from biggan.training.divergence import DivergenceError, DivergenceGuard, FiniteMonitor
from biggan.training.preemption import PreemptionHandler


def test_signal_sets_request_and_close_restores_previous_handlers() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with PreemptionHandler(grace_seconds=30) as preempt:
        assert preempt.installed and not preempt.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # Python runs the handler at the next bytecode boundary of the main thread
        assert preempt.requested and preempt.signal_name == "SIGTERM"
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_second_signal_aborts_at_once() -> None:
    with PreemptionHandler(grace_seconds=30) as preempt:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert preempt.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)


def test_inert_outside_main_thread() -> None:
    result = {}

    def build() -> None:
        handler = PreemptionHandler(grace_seconds=1)
        result["installed"] = handler.installed
        handler.close()

    thread = threading.Thread(target=build)
    thread.start()
    thread.join()
    assert result == {"installed": False}


def test_bad_grace_period() -> None:
    with pytest.raises(ValueError):
        PreemptionHandler(grace_seconds=0)


def test_divergence_guard_rolls_back_a_bounded_number_of_times() -> None:
    guard = DivergenceGuard(max_rollbacks=2)
    decisions = [guard.check(finite) for finite in (True, False, True, False, True, False, False)]
    assert decisions == ["ok", "rollback", "ok", "rollback", "ok", "stop", "stop"]
    assert guard.rollbacks == 2
    restored = DivergenceGuard(max_rollbacks=2)
    restored.load_state_dict(guard.state_dict())
    assert restored.check(False) == "stop"
    err = guard.stop_error(step=120)
    assert isinstance(err, DivergenceError) and isinstance(err, UserError)
    assert "\n" not in str(err) and "step 120" in str(err) and "2 rollback(s)" in str(err)
    assert DivergenceGuard(max_rollbacks=0).check(False) == "stop"
    with pytest.raises(ValueError):
        DivergenceGuard(max_rollbacks=-1)


def test_finite_monitor_ands_over_the_tick() -> None:
    monitor = FiniteMonitor("cpu")
    for loss in (torch.tensor(0.5), torch.tensor([1.0, 2.0])):
        monitor.update(loss)
    assert monitor.flag().item() == 1.0
    monitor.update(torch.tensor(1.0))
    monitor.update(torch.tensor(float("nan")), torch.tensor(1.0))
    monitor.update(torch.tensor(1.0))  # a later finite step does not clear the flag
    assert monitor.flag().item() == 0.0
    monitor = FiniteMonitor("cpu")  # the loop starts a new monitor every tick

    # Gradients reach the monitor as the steps' global grad norms: one inf/NaN element makes the norm non-finite.
    from biggan.training.steps import grad_norm

    layer = torch.nn.Linear(3, 2)
    layer(torch.randn(4, 3)).sum().backward()
    monitor.update(grad_norm(layer))
    assert monitor.flag().item() == 1.0
    layer.weight.grad[0, 1] = float("inf")
    monitor.update(grad_norm(layer))
    assert monitor.flag().item() == 0.0


def test_grad_norm_is_one_fused_call_equal_to_the_norm_of_norms(monkeypatch):
    """Issue 12 item 9: grad norm through torch's foreach ``get_total_norm`` (one call, not a kernel per tensor), equal
    to the old stack of per-tensor norms to fp32 rounding; non-finite gradients stay non-finite."""
    from biggan.training.steps import grad_norm

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1))
    assert grad_norm(net).item() == 0.0  # no gradients yet
    (net(torch.randn(2, 3, 8, 8)) * 100).sum().backward()
    oracle = torch.stack([p.grad.float().norm() for p in net.parameters()]).norm()  # the old formula
    calls = []
    real = torch.nn.utils.get_total_norm
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    value = grad_norm(net)
    torch.testing.assert_close(value, oracle, rtol=2e-6, atol=0)
    assert calls == [1] and value.dtype == torch.float32
    net[0].bias.grad[0] = float("nan")
    assert grad_norm(net).isnan()
