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


def _check_bn_matches_batchnorm(convert, cls: type, momentum: float | None) -> None:
    """``convert(BatchNorm2d)``: outputs, input and affine gradients, running stats (two updates) and eval mode equal
    BatchNorm's, and an affine-free layer (conditional BN's inner one) converts too."""
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(5, momentum=momentum)
    nn.init.normal_(ref.weight), nn.init.normal_(ref.bias)
    bn = convert(copy.deepcopy(ref))
    assert isinstance(bn, cls)
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
    torch.testing.assert_close(bn.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked)
    bn.eval(), ref.eval()
    x = torch.randn(2, 5, 4, 3)
    torch.testing.assert_close(bn(x), ref(x), rtol=1e-5, atol=1e-5)
    affine_free = convert(nn.BatchNorm2d(5, affine=False)).eval()
    torch.testing.assert_close(affine_free(x), nn.BatchNorm2d(5, affine=False).eval()(x))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_cross_replica_bn_matches_batchnorm_on_one_process(momentum: float | None) -> None:
    """With one process the global batch is the local batch: CrossReplicaBatchNorm equals BatchNorm."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        _check_bn_matches_batchnorm(convert_cross_replica_bn, CrossReplicaBatchNorm, momentum)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_spmd_bn_matches_batchnorm(momentum: float | None) -> None:
    """SPMDBatchNorm (plain sums, no process group): equals BatchNorm."""
    assert not dist.is_initialized()
    _check_bn_matches_batchnorm(convert_spmd_bn, SPMDBatchNorm, momentum)


# -- DDP hooks, process group, CUDA settings, channels_last, compile (CPU checks of the CUDA path) ---------------------


class _Recorder(nn.Module):
    """A stand-in G or D: ``forward(x, y)`` maps to its output shape and notes whether a sync context is open."""

    def __init__(self, name: str, hooks: list, out: tuple[int, ...]) -> None:
        super().__init__()
        self.name, self.hooks, self.out = name, hooks, out
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.hooks.append((self.name, "forward", bool(self.hooks) and self.hooks[-1][1] == "enter"))
        if not self.out:  # D: a logit per image that depends on the image (so G gets a gradient through it)
            return self.w * x.reshape(x.shape[0], -1).mean(1)  # (B,)
        return self.w * torch.ones(x.shape[0], *self.out)  # G: (B, 3, h, w)


def test_steps_open_the_sync_hook_once_per_micro_batch_last_true_only_at_the_end() -> None:
    """accumulate=3: the trained network's forward and backward of micro-batches 1, 2 run under sync(net, False)
    (DDP's no_sync), the third under sync(net, True); the keyword API without ``sync`` still works (no-op)."""
    import contextlib

    from biggan.training.losses import hinge_d, hinge_g
    from biggan.training.steps import StepContext, d_step, g_step

    events: list = []

    @contextlib.contextmanager
    def sync(model: nn.Module, last: bool):
        events.append((model.name, "enter", last))
        yield
        events.append((model.name, "exit", last))

    G, D = _Recorder("G", events, (3, 2, 2)), _Recorder("D", events, ())
    ctx = StepContext(optimizer_step=lambda opt: opt.step(), autocast=contextlib.nullcontext, accumulate=3, sync=sync)
    opt = torch.optim.SGD([G.w, D.w], lr=0.1)
    d_step(G, D, opt, x_real=torch.zeros(6, 3, 2, 2), z=torch.zeros(6, 4), loss=hinge_d, ctx=ctx)
    entered = [(name, last) for name, kind, last in events if kind == "enter"]
    assert entered == [("D", False), ("D", False), ("D", True)]
    assert all(inside for name, kind, inside in events if kind == "forward" and name == "D")
    events.clear()
    g_step(G, D, opt, z=torch.zeros(6, 4), loss=hinge_g, ctx=ctx)
    assert [(name, last) for name, kind, last in events if kind == "enter"] == [("G", False), ("G", False), ("G", True)]
    assert all(inside for kind, inside in ((e[1], e[2]) for e in events if e[0] == "G") if kind == "forward")
    events.clear()
    plain = StepContext(optimizer_step=lambda opt: opt.step(), autocast=contextlib.nullcontext, accumulate=2)
    g_step(G, D, opt, z=torch.zeros(4, 4), loss=hinge_g, ctx=plain)  # default hook: a no-op context
    assert [kind for _, kind, _ in events] == ["forward", "forward", "forward", "forward"]


def test_runtime_sync_is_ddp_no_sync_except_on_the_last_micro_batch(rt: Runtime) -> None:
    from torch.nn.parallel import DistributedDataParallel

    plain = nn.Linear(2, 2)
    with rt.sync(plain, last=False):  # unwrapped: nothing to hold back
        pass
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(nn.Linear(2, 2))
        with rt.sync(ddp, last=False):
            assert ddp.require_backward_grad_sync is False
        with rt.sync(ddp, last=True):
            assert ddp.require_backward_grad_sync is True
    finally:
        dist.destroy_process_group()


def test_process_group_options_timeout_and_device_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL bound to the local GPU (device_id), gloo without; both with runtime.timeout_min (default 60)."""
    import datetime

    from biggan.runtime.seam import _process_group_options

    cpu = _process_group_options(RuntimeConfig(), "cpu", 0)
    assert cpu == {"backend": "gloo", "init_method": "env://", "timeout": datetime.timedelta(minutes=60)}
    cuda = _process_group_options(RuntimeConfig(timeout_min=90), "cuda", 3)
    assert (cuda["backend"], cuda["device_id"], cuda["timeout"]) == ("nccl", torch.device("cuda", 3),
                                                                     datetime.timedelta(minutes=90))
    seen: dict = {}
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("PJRT_DEVICE", raising=False)
    Runtime.setup(RuntimeConfig(kind="cpu", timeout_min=5))  # what setup hands to torch.distributed
    assert seen == {"backend": "gloo", "init_method": "env://", "timeout": datetime.timedelta(minutes=5)}
    for bad in (0, 1441):
        with pytest.raises(ConfigError, match="runtime.timeout_min"):
            RuntimeConfig(timeout_min=bad)


def test_cuda_settings_follow_tf32_and_turn_on_cudnn_benchmark() -> None:
    from biggan.runtime.seam import _configure_cuda

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        _configure_cuda(RuntimeConfig())
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
        assert torch.backends.cudnn.benchmark
        _configure_cuda(RuntimeConfig(tf32=False))
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def _tiny_generator() -> nn.Module:
    from biggan.models import AttentionConfig, ModelConfig, NetworkConfig, build_generator

    torch.manual_seed(0)
    smyrf = AttentionConfig(res=16, kind="smyrf", n_hashes=1, q_cluster_size=64, k_cluster_size=16)
    cfg = ModelConfig(resolution=32, dim_z=64, G=NetworkConfig(ch=4, attention=[smyrf]),
                      D=NetworkConfig(ch=4, attention=[]))
    return build_generator(cfg)


@pytest.mark.parametrize("kind, cls", [("cuda", nn.SyncBatchNorm), ("cpu", CrossReplicaBatchNorm)])
def test_convert_sync_bn_covers_every_bn_of_our_generator(kind: str, cls: type) -> None:
    """torch's SyncBatchNorm on cuda, ours elsewhere: every BN of G (in conditional BN and the output BN) converted,
    its parameters and buffers reused, state-dict keys unchanged, eval outputs unchanged."""
    from biggan.runtime.batchnorm import convert_sync_bn

    G = _tiny_generator().eval()
    bns = {name for name, m in G.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert any(name.endswith("bn1.bn") for name in bns) and "out_bn" in bns
    before = {k: v.data_ptr() for k, v in G.state_dict().items()}
    z = torch.randn(2, 64)
    with torch.no_grad():
        want = G(z)
        converted = convert_sync_bn(G, kind)
        got = converted(z)
    assert converted is G
    assert {name for name, m in G.named_modules() if isinstance(m, cls)} == bns
    assert {k: v.data_ptr() for k, v in G.state_dict().items()} == before
    torch.testing.assert_close(got, want)


def test_buffers_are_broadcast_only_where_bn_statistics_are_per_rank() -> None:
    from biggan.models import ModelConfig, build_discriminator

    G, D = _tiny_generator(), build_discriminator(ModelConfig(resolution=32))
    for sync_bn, want_g in ((False, True), (True, False)):
        rt = Runtime(RuntimeConfig(kind="cpu", sync_bn=sync_bn), "cpu", torch.device("cpu"), 0, 2, 0, 2)
        assert (rt._broadcast_buffers(G), rt._broadcast_buffers(D)) == (want_g, False)


def test_compile_and_channels_last_are_refused_on_xla(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("compile", "channels_last"):
        with pytest.raises(ConfigError, match=f"runtime.{key}=true .*kind=xla.*set runtime.{key}=false"):
            RuntimeConfig(kind="xla", **{key: True})
        with pytest.raises(ConfigError, match=f"runtime.{key}"):  # auto that resolves to xla: refused at setup
            RuntimeConfig(kind="auto", **{key: True}).check_kind("xla")


def test_channels_last_models_and_image_batches(rt: Runtime) -> None:
    rt = Runtime(RuntimeConfig(kind="cpu", channels_last=True), "cpu", torch.device("cpu"), 0, 1, 0, 1)
    net = rt.wrap_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(2, 2)))
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last) and not net[0].weight.is_contiguous()
    x = rt.shard_batch(torch.randn(2, 3, 4, 4))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert rt.shard_batch(torch.randn(2, 5)).is_contiguous()  # z and labels as they are


def test_compiled_model_keeps_plain_state_dict_keys() -> None:
    rt = Runtime(RuntimeConfig(kind="cpu", compile=True, compile_backend="eager"), "cpu", torch.device("cpu"),
                 0, 1, 0, 1)
    model = nn.Sequential(nn.Linear(3, 2))
    keys = set(model.state_dict())
    import torch._dynamo as dynamo

    limit = dynamo.config.recompile_limit
    try:
        wrapped = rt.wrap_model(model)
        assert dynamo.config.recompile_limit >= 64  # a graph per G block, mode and batch size (seam.py)
    finally:
        dynamo.config.recompile_limit = limit
    assert rt.unwrap(wrapped) is model and set(wrapped.state_dict()) == keys  # no "_orig_mod." prefixes
    x = torch.randn(4, 3)
    torch.testing.assert_close(wrapped(x), model.forward(x))


@pytest.mark.slow  # 40-65 s on the shared 2-core machine: Dynamo + AOTAutograd tracing of the demo G and D
@pytest.mark.usefixtures("one_torch_thread")
def test_compile_on_the_demo_model_trains_like_eager(tmp_path, tiny_config) -> None:
    """runtime.compile=true on the demo model (shrunk): the same losses and gradient norms as eager for 2 steps, and
    checkpoints with plain keys (G, D, G_ema) that an eager run loads. ``aot_eager``: Dynamo's graphs and AOTAutograd's
    joint forward/backward without codegen. Inductor works here too (g++): measured on this shrunk demo, 3 steps gave
    the eager losses to the printed digits, but the first step took 280 s to compile (and the eval graphs 84 s more),
    too slow for a test; later steps 0.060 s against eager's 0.068-0.077 s."""
    import json

    import torch._dynamo

    from biggan.checkpoint import load_checkpoint
    from biggan.training import loop

    runs = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        cfg = tiny_config(tmp_path / str(compiled), 2, f"runtime.compile={str(compiled).lower()}",
                          "runtime.compile_backend=aot_eager")  # the attention probe runs too (eval graphs)
        assert loop.run(cfg, Runtime.setup(cfg.runtime), echo=False) == 0
        run_dir = tmp_path / str(compiled) / "runs" / cfg.name
        stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
        runs[compiled] = stats, load_checkpoint(run_dir / "checkpoints" / "latest.pt")
        if compiled:
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    (eager_stats, eager_ckpt), (stats, ckpt) = runs[False], runs[True]
    for got, want in zip(stats, eager_stats, strict=True):
        for key in ("loss/D_real", "loss/D_fake", "loss/G", "grad_norm/D", "grad_norm/G"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), (got["step"], key)
    for net in ("G", "D", "G_ema"):
        assert set(ckpt[net]) == set(eager_ckpt[net]) and not any("_orig_mod" in k for k in ckpt[net])


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
