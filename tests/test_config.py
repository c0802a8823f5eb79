"""Config loader: every shipped config resolves; strict keys/types; overrides; dump -> load round trip."""

from pathlib import Path

import pytest

from biggan.config import apply_overrides, from_dict, to_dict
from biggan.training.config import Config, dump_config, load_config
from biggan.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"demo.yaml", "celebahq128_smyrf.yaml", "celebahq128_dense64.yaml", "celebahq256_smyrf.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # Each config states attention placement for both networks explicitly (even when empty).
    text = path.read_text()
    assert "G:" in text and "D:" in text and text.count("attention:") >= 2
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(dump_config(cfg))
    assert load_config(dumped) == cfg


def test_paper_config_values():
    cfg = load_config(Path(CONFIGS[0]).parent / "celebahq128_smyrf.yaml")
    (att,) = cfg.model.G.attention
    assert (att.res, att.kind, att.n_hashes, att.q_cluster_size, att.k_cluster_size) == (128, "smyrf", 4, 2048, 512)
    assert cfg.model.D.attention == []
    assert (cfg.train.lr_g, cfg.train.lr_d, cfg.train.betas, cfg.train.num_d_steps) == (5e-5, 2e-4, (0.0, 0.999), 2)
    assert cfg.train.loss == "hinge"


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name != "demo.yaml"], ids=lambda p: p.name)
def test_gpu_configs_default_to_bf16_and_the_cpu_demo_to_fp32(path):
    """The CelebA-HQ configs are GPU runs: bf16 autocast is their documented default (issue 12; the SMYRF kernels keep
    scores, logsumexp and the merge in fp32). The demo is the CPU quick start and stays at the fp32 default."""
    assert load_config(path).runtime.precision == "bf16"
    assert load_config(path.parent / "demo.yaml").runtime.precision == "fp32"


def test_yaml_is_a_delta_over_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr_g: 1e-4\n")  # YAML 1.1 reads 1e-4 as a string; float fields accept it
    cfg = load_config(path)
    assert cfg.train.lr_g == 1e-4
    assert cfg.train.lr_d == Config().train.lr_d and cfg.model == Config().model


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr_gg=1", "unknown config key 'train.lr_gg'; allowed keys in train: total_steps"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("train.batch_size=abc", "train.batch_size: expected int, got 'abc'"),
        ("train.batch_size=2.5", "train.batch_size: expected int"),
        ("log.progress_bar=3", "log.progress_bar: expected bool"),
        ("train.loss=wgan", "train.loss: expected 'hinge' | 'ns'"),
        ("train.betas=[0.1]", "train.betas: expected tuple[float, float]"),
        ("model.G.attention.0.kind=sparse", "model.G.attention[0].kind: expected 'dense' | 'smyrf'"),
        ("model.G.attention.5.res=8", "not an index of a list of length 1"),
        ("train.batch_size", "not of the form key.sub=value"),
        ("train.batch_size=0", "train.batch_size must be >= 1"),
    ],
)
def test_bad_overrides_raise_one_clear_error(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(Path(CONFIGS[0]).parent / "demo.yaml", [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  G:\n    chh: 8\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.G.chh'; allowed keys in model.G: ch, attention"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_are_typed_and_reach_lists():
    cfg = load_config(
        Path(CONFIGS[0]).parent / "demo.yaml",
        ["train.lr_g=3e-4", "train.betas=[0.5, 0.99]", "model.G.attention.0.n_hashes=4", "log.progress_bar=false",
         "fid.every=0"],
    )
    assert cfg.train.lr_g == 3e-4 and cfg.train.betas == (0.5, 0.99)
    assert cfg.model.G.attention[0].n_hashes == 4
    assert cfg.log.progress_bar is False and cfg.fid.every == 0


def test_int_accepted_for_float_but_not_bool_for_int():
    assert from_dict(Config, {"train": {"lr_g": 1}}).train.lr_g == 1.0
    with pytest.raises(ConfigError, match="train.total_steps: expected int"):
        from_dict(Config, {"train": {"total_steps": True}})


def test_apply_overrides_plain_dict():
    data = to_dict(Config())
    apply_overrides(data, ["train.batch_size=7", "name=x"])
    assert data["train"]["batch_size"] == 7 and data["name"] == "x"


def _leaves(data, path=()):
    """(key path, value) of every scalar in a YAML mapping; lists are leaves (they replace the default whole)."""
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*path, key))
        else:
            yield (*path, key), value


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_configs_list_only_deltas_over_the_defaults(path):
    import copy

    import yaml

    data = yaml.safe_load(path.read_text())
    full = from_dict(Config, data)
    restated = []
    for keys, _ in _leaves(data):
        if keys[-1] == "attention":  # placement is stated per network on purpose, even when it is the default []
            continue
        without = copy.deepcopy(data)
        node = without
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
        try:
            same = from_dict(Config, without) == full
        except ConfigError:  # the value is needed (e.g. dim_z at another resolution)
            same = False
        if same:
            restated.append(".".join(keys))
    assert not restated, f"{path.name} restates defaults: {restated}"


def test_a_key_written_twice_an_empty_file_and_non_finite_numbers_are_refused(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  lr_g: 1e-4\n  batch_size: 8\n  lr_g: 2e-4\n")
    with pytest.raises(ConfigError, match=r"key 'lr_g' is written twice \(lines 2 and 4\)"):
        load_config(twice)
    nested_twice = tmp_path / "nested.yaml"
    nested_twice.write_text("model:\n  G: {ch: 8, ch: 16}\n")
    with pytest.raises(ConfigError, match="'ch' is written twice"):
        load_config(nested_twice)
    for text in ("", "# only a comment\n"):
        empty = tmp_path / "empty.yaml"
        empty.write_text(text)
        with pytest.raises(ConfigError, match="is empty"):
            load_config(empty)
    for override in ("train.lr_g=.nan", "train.lr_d=.inf", "train.betas=[0.0, .nan]", "model.bn_eps=-.inf"):
        with pytest.raises(ConfigError, match="must be a finite number") as info:
            load_config(Path(CONFIGS[0]).parent / "demo.yaml", [override])
        assert override.split("=")[0] in str(info.value)
    bad = tmp_path / "nan.yaml"
    bad.write_text("train:\n  ema_decay: .nan\n")
    with pytest.raises(ConfigError, match="train.ema_decay must be a finite number"):
        load_config(bad)


def _sections():
    """Every config dataclass reachable from the run config."""
    import dataclasses
    import typing

    seen, todo = [], [Config]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for tp in typing.get_type_hints(cls).values():
            for arg in (tp, *typing.get_args(tp)):
                if dataclasses.is_dataclass(arg):
                    todo.append(arg)
    return seen


def test_every_numeric_field_declares_its_range():
    import dataclasses
    import typing

    missing = []
    for cls in _sections():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kinds = {hints[f.name], *typing.get_args(hints[f.name])}
            if kinds & {int, float} and "range" not in f.metadata:
                missing.append(f"{cls.__name__}.{f.name}")
    assert len(_sections()) >= 9 and not missing, f"numeric fields without a range: {missing}"


@pytest.mark.parametrize(
    "override, message",
    [
        ("seed=-1", "seed must be >= 0, got -1"),
        ("model.dim_z=0", "model.dim_z must be >= 1"),
        ("model.G.ch=0", "model.G.ch must be >= 1, got 0"),
        ("model.sn_eps=0", "model.sn_eps must be > 0"),
        ("model.G.attention.0.n_hashes=0", "model.G.attention[0].n_hashes must be >= 1, got 0"),
        ("data.synthetic_num_images=0", "data.synthetic_num_images must be >= 1"),
        ("fid.num_samples=1", "fid.num_samples must be >= 2"),
        ("runtime.threads=-2", "runtime.threads must be >= 0"),
        ("train.ema_decay=1.0", "train.ema_decay must be in [0, 1), got 1.0"),
        ("train.betas=[0.0, 1.0]", "train.betas must be in [0, 1), got (0.0, 1.0)"),
        ("train.max_rollbacks=-1", "train.max_rollbacks must be >= 0"),
        ("log.num_samples=0", "log.num_samples must be >= 1"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(Path(CONFIGS[0]).parent / "demo.yaml", [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_sections_made_in_code_are_checked_once_when_made():
    from biggan.models import AttentionConfig, ModelConfig

    with pytest.raises(ConfigError, match=r"attention \(res 16\) is smyrf: set q_cluster_size"):
        AttentionConfig(res=16, kind="smyrf", n_hashes=2)
    with pytest.raises(ConfigError, match="model.dim_z 100 does not split"):
        ModelConfig(dim_z=100)
    assert from_dict(ModelConfig, to_dict(ModelConfig()), "model") == ModelConfig()
