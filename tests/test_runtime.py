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
from biggan.models import AttentionConfig, ModelConfig, NetworkConfig
from biggan.runtime import (
    CrossReplicaBatchNorm,
    Runtime,
    RuntimeConfig,
    SPMDBatchNorm,
    convert_cross_replica_bn,
    convert_spmd_bn,
)


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


@pytest.mark.parametrize("momentum", [0.1, None])
def test_spmd_bn_matches_batchnorm(momentum: float | None) -> None:
    """SPMDBatchNorm (plain sums, no process group): outputs, gradients, running stats and eval mode equal BatchNorm."""
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(5, momentum=momentum)
    nn.init.normal_(ref.weight), nn.init.normal_(ref.bias)
    bn = convert_spmd_bn(copy.deepcopy(ref))
    assert isinstance(bn, SPMDBatchNorm) and not dist.is_initialized()
    for _ in range(2):  # two updates of the running statistics
        x = (torch.randn(6, 5, 4, 3) * 3 + 2).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        upstream = torch.randn(6, 5, 4, 3)
        y_ref, y = ref(x), bn(x2)
        (y_ref * upstream).sum().backward()
        (y * upstream).sum().backward()
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    bn.eval(), ref.eval()
    x = torch.randn(2, 5, 4, 3)
    torch.testing.assert_close(bn(x), ref(x), rtol=1e-5, atol=1e-5)
    affine_free = convert_spmd_bn(nn.BatchNorm2d(5, affine=False)).eval()  # cBN's inner BatchNorm
    torch.testing.assert_close(affine_free(x), nn.BatchNorm2d(5, affine=False).eval()(x))


def _spmd_runtime(rank: int, hosts: int, devices: int) -> Runtime:
    """A Runtime laid out as host ``rank`` of an SPMD run (on the CPU: only the layout logic is exercised)."""
    return Runtime(RuntimeConfig(kind="cpu"), "xla", torch.device("cpu"), rank, hosts, 0, num_devices=devices,
                   mesh=object())


def test_spmd_layout_properties(rt: Runtime) -> None:
    spmd = _spmd_runtime(0, 1, 4)
    assert (spmd.batch_shards, spmd.hosts_share_model_rng, spmd.metric_shards) == (4, True, 1)
    assert (rt.batch_shards, rt.hosts_share_model_rng) == (1, False)
    net = spmd.place_model(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))
    assert isinstance(net[1], SPMDBatchNorm)  # G_ema too goes through place_model
    assert not isinstance(rt.place_model(nn.Sequential(nn.BatchNorm2d(4)))[0], SPMDBatchNorm)


def test_spmd_hosts_share_the_projection_seed_and_keep_their_own_z() -> None:
    """Under SPMD every host feeds the replicated SMYRF projections from its own generator, so host 1's must equal
    host 0's (they were re-seeded per rank); its z stream stays its own. Processes without a mesh (DDP) still get
    their own hashing streams."""
    from biggan.models import attention_rng_state
    from biggan.training.config import Config
    from biggan.training.state import TrainingState

    smyrf = AttentionConfig(res=16, kind="smyrf", n_hashes=2, q_cluster_size=64, k_cluster_size=16)
    cfg = Config(model=ModelConfig(resolution=32, dim_z=32, G=NetworkConfig(ch=4, attention=[smyrf]),
                                   D=NetworkConfig(ch=4, attention=[])))

    def draws(runtime: Runtime) -> tuple[dict, torch.Tensor]:
        state = TrainingState(cfg, runtime)
        return attention_rng_state(state.G_), torch.randn(4)

    host0, z0 = draws(_spmd_runtime(0, 2, 8))
    host1, z1 = draws(_spmd_runtime(1, 2, 8))
    assert host0.keys() == host1.keys() and all(torch.equal(host0[k], host1[k]) for k in host0)
    assert not torch.equal(z0, z1)
    ddp_like = Runtime(RuntimeConfig(kind="cpu"), "xla", torch.device("cpu"), 1, 2, 0, num_devices=2)  # no mesh
    other, _ = draws(ddp_like)
    assert not all(torch.equal(host0[k], other[k]) for k in host0)
