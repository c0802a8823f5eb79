"""The device seam on one CPU process: config checks, placement, autocast, host copies, reductions, and the
cross-replica BatchNorm against torch's BatchNorm (a one-process gloo group; tests/test_ddp.py runs two)."""

from __future__ import annotations

import copy
import importlib.util
import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

from biggan.errors import ConfigError
from biggan.runtime import CrossReplicaBatchNorm, Runtime, RuntimeConfig, convert_cross_replica_bn


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PJRT_DEVICE"):
        monkeypatch.delenv(key, raising=False)
    return Runtime.setup(RuntimeConfig(kind="cpu"))


def test_cpu_single_process(rt: Runtime) -> None:
    assert (rt.kind, rt.device.type, rt.rank, rt.world_size, rt.is_main) == ("cpu", "cpu", 0, 1, True)
    assert (rt.num_devices, rt.num_data_shards, rt.metric_shards, rt.local_batch_size(6)) == (1, 1, 1, 6)
    model = nn.Linear(3, 2)
    assert rt.wrap_model(model) is model and rt.unwrap(model) is model
    x = torch.randn(4, 3)
    assert torch.equal(rt.shard_batch(x), x)
    rt.mark_step(), rt.synchronize(), rt.barrier()
    assert rt.peak_memory_bytes() > 10 * 2**20  # peak RSS of a process that imported torch
    rt.reset_peak_memory()
    before = rt.peak_memory_bytes()
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert rt.peak_memory_bytes() >= before + 32 * 2**20
    del big
    rt.shutdown()


def test_auto_picks_cpu_without_cuda_or_pjrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PJRT_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert Runtime.setup(RuntimeConfig(kind="auto")).kind == expected


def test_unavailable_kinds_are_config_errors() -> None:
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="runtime.kind=cuda"):
            Runtime.setup(RuntimeConfig(kind="cuda"))
    if importlib.util.find_spec("torch_xla") is None:
        with pytest.raises(ConfigError, match="xla_env.sh"):
            Runtime.setup(RuntimeConfig(kind="xla"))
    with pytest.raises(ConfigError, match="runtime.threads"):
        RuntimeConfig(threads=-1).validate()


def test_autocast_follows_precision() -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with Runtime.setup(RuntimeConfig(kind="cpu", precision="bf16")).autocast():
        assert (a @ b).dtype == torch.bfloat16
    with Runtime.setup(RuntimeConfig(kind="cpu", precision="fp32")).autocast():
        assert (a @ b).dtype == torch.float32


def test_to_host_copies_nested_tensors(rt: Runtime) -> None:
    w = torch.ones(2, requires_grad=True)
    state = {"G": {"w": w * 2}, "rng": [torch.zeros(3, dtype=torch.uint8), (1, "x")], "step": 7, "best": None}
    host = rt.to_host(state)
    assert host["step"] == 7 and host["best"] is None and host["rng"][1] == (1, "x")
    assert isinstance(host["rng"][1], tuple)
    assert not host["G"]["w"].requires_grad and torch.equal(host["G"]["w"], torch.full((2,), 2.0))


def test_reduce_mean_single_process(rt: Runtime) -> None:
    out = rt.reduce_mean({"loss": torch.tensor(1.5), "vec": torch.tensor([1.0, 2.0, 6.0])})
    assert out == {"loss": 1.5, "vec": 3.0} and all(type(v) is float for v in out.values())
    assert rt.reduce_mean({}) == {}
    t = torch.arange(3.0, dtype=torch.float64)
    assert rt.reduce_sum_(t) is t and torch.equal(t, torch.arange(3.0, dtype=torch.float64))


def test_reduce_sum_refuses_a_host_tensor_off_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12 item 1: NCCL has no CPU tensors. A cuda runtime (here a stand-in device, no GPU needed) refuses a host
    tensor before any collective runs, and reduces a tensor on its metric device."""
    called: list[torch.Tensor] = []
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: called.append(t))
    rt = Runtime(RuntimeConfig(kind="cpu"), "cuda", torch.device("meta"), rank=0, world_size=2, local_rank=0,
                 num_devices=2)
    assert rt.metric_device == torch.device("meta")
    with pytest.raises(ValueError, match="metric_device"):
        rt.reduce_sum_(torch.zeros(3, dtype=torch.float64))
    assert called == []
    on_device = torch.zeros(3, dtype=torch.float64, device="meta")
    assert rt.reduce_sum_(on_device) is on_device and called == [on_device]
    one_gpu = Runtime(RuntimeConfig(kind="cpu"), "cuda", torch.device("meta"), 0, 1, 0, 1)
    with pytest.raises(ValueError, match="metric_device"):  # one GPU finds the mistake too, not only 8 of them
        one_gpu.reduce_sum_(torch.zeros(3))


def test_convert_reuses_parameters_and_buffers() -> None:
    inner = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU())
    net = nn.Sequential(nn.Conv2d(3, 4, 1), inner, nn.BatchNorm1d(5, affine=False))
    bn = net[1][0]
    out = convert_cross_replica_bn(net)
    assert out is net and isinstance(net[1][0], CrossReplicaBatchNorm) and isinstance(net[2], CrossReplicaBatchNorm)
    assert net[1][0].weight is bn.weight and net[1][0].running_mean is bn.running_mean
    assert net[2].weight is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("momentum", [0.1, None])
def test_cross_replica_bn_matches_batchnorm_on_one_process(momentum: float | None) -> None:
    """With one process the global batch is the local batch: outputs, gradients and running stats equal BatchNorm."""
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(5, momentum=momentum)
    nn.init.normal_(ref.weight), nn.init.normal_(ref.bias)
    crbn = convert_cross_replica_bn(copy.deepcopy(ref))
    assert isinstance(crbn, CrossReplicaBatchNorm)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        for _ in range(2):  # two updates of the running statistics
            x = (torch.randn(6, 5, 4, 3) * 3 + 2).requires_grad_()
            x2 = x.detach().clone().requires_grad_()
            upstream = torch.randn(6, 5, 4, 3)
            y_ref, y = ref(x), crbn(x2)
            (y_ref * upstream).sum().backward()
            (y * upstream).sum().backward()
            torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(crbn.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(crbn.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(crbn.running_mean, ref.running_mean)
        torch.testing.assert_close(crbn.running_var, ref.running_var)
        assert int(crbn.num_batches_tracked) == int(ref.num_batches_tracked)
        crbn.eval(), ref.eval()
        x = torch.randn(2, 5, 4, 3)
        torch.testing.assert_close(crbn(x), ref(x))
    finally:
        dist.destroy_process_group()
