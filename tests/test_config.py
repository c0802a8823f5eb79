"""Config loader: every shipped config resolves; strict keys/types; overrides; dump -> load round trip."""

from pathlib import Path

import pytest

from biggan.config import Config, apply_overrides, dump_config, from_dict, load_config, to_dict
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
