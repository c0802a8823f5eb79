"""The CelebA-HQ prepare command on folders and zips it writes itself in every common naming scheme."""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biggan.data import PreparedDataset
from data.prepare_celebahq import prepare
from biggan.data.synthetic import render_face
from biggan.errors import DataError, WeightsError
from biggan.fid import default_weights_path, load_stats
from biggan.fid.reference_features import load_features

SCHEMES = {  # relative file names of 6 images in each distribution's layout
    "celebamask-hq": [f"CelebA-HQ-img/{i}.jpg" for i in range(6)],
    "dataNNNxNNN": [f"data64x64/{i:05d}.jpg" for i in range(1, 7)],
    "stargan-v2": [f"celeba_hq/{split}/{sex}/{i:06d}.jpg" for split in ("train", "val")
                   for sex in ("female", "male") for i in range(2 if split == "train" else 1)],
    "generic": [f"celeba_hq_256/{i:05d}.png" for i in range(6)],  # a Kaggle-style re-upload
}


def _face(i: int, res: int = 64) -> Image.Image:
    return render_face(np.random.default_rng([9, i]), res)


def _write_tree(root: Path, names: list[str]) -> Path:
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _face(i).save(root / name, quality=95)
    return root


def _zip(folder: Path) -> Path:
    path = folder.with_suffix(".zip")
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(folder.rglob("*")):
            zf.write(f, f.relative_to(folder.parent).as_posix())
    return path


def _expected(path: Path, res: int, resample=Image.Resampling.BOX) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((res, res), resample)).transpose(2, 0, 1)  # (3, res, res)


def _prepare(src, out, **kwargs):
    kwargs = {"resolutions": [32, 16], "expect_count": 6, "fid_dims": (), **kwargs}
    return prepare(src, out, **kwargs)


@pytest.mark.parametrize("container", ["folder", "zip"])
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_every_scheme_and_container(tmp_path, scheme, container):
    folder = _write_tree(tmp_path / "src", SCHEMES[scheme])
    src = folder if container == "folder" else _zip(folder)
    report = _prepare(src, tmp_path / "out")
    assert report.source.layout == scheme and report.source.form == container
    for res in (32, 16):
        ds = PreparedDataset(tmp_path / "out" / str(res), res)
        manifest = ds.manifest
        assert (manifest["count"], manifest["filter"], manifest["source"]["layout"]) == (6, "box", scheme)
        for i, name in enumerate(SCHEMES[scheme]):  # natural order; pixels = decode + BOX resize
            assert np.array_equal(ds[i].numpy(), _expected(folder / name, res))
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_natural_order_and_lanczos_recorded(tmp_path):
    folder = _write_tree(tmp_path / "src", [f"imgs/{i}.jpg" for i in (10, 2, 1, 0, 3, 100)])
    _prepare(folder, tmp_path / "out", resolutions=[16], resample="lanczos")
    ds = PreparedDataset(tmp_path / "out" / "16", 16)
    assert ds.manifest["filter"] == "lanczos"
    assert np.array_equal(ds[3].numpy(), _expected(folder / "imgs/3.jpg", 16, Image.Resampling.LANCZOS))
    assert np.array_equal(ds[5].numpy(), _expected(folder / "imgs/100.jpg", 16, Image.Resampling.LANCZOS))


def test_grayscale_rgba_cmyk_palette_inputs_become_rgb(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    modes = ["L", "RGBA", "CMYK", "P", "RGB", "LA"]
    for i, mode in enumerate(modes):
        _face(i).convert(mode).save(src / f"{i}.{'jpg' if mode in ('L', 'CMYK', 'RGB') else 'png'}")
    _prepare(src, tmp_path / "out", resolutions=[32])
    ds = PreparedDataset(tmp_path / "out" / "32", 32)
    for i, path in enumerate(sorted(src.iterdir(), key=lambda p: int(p.stem))):
        assert np.array_equal(ds[i].numpy(), _expected(path, 32)), modes[i]
    gray = ds[0].numpy()
    assert np.array_equal(gray[0], gray[1]) and np.array_equal(gray[1], gray[2])


def _bad_source(tmp_path: Path) -> Path:
    src = _write_tree(tmp_path / "src", [f"{i}.jpg" for i in range(6)])
    data = (src / "2.jpg").read_bytes()
    (src / "2.jpg").write_bytes(data[: len(data) // 2])  # truncated: header fine, decode fails
    Image.new("RGB", (64, 48)).save(src / "4.jpg")  # not square
    return src


def test_bad_files_fail_with_their_name(tmp_path):
    src = _bad_source(tmp_path)
    with pytest.raises(DataError, match=r"4\.jpg is 64x48, not square.*--skip-bad"):
        _prepare(src, tmp_path / "out")
    (src / "4.jpg").unlink()
    with pytest.raises(DataError, match=r"cannot decode image 2\.jpg.*--skip-bad"):
        _prepare(src, tmp_path / "out", expect_count=5)
    assert not (tmp_path / "out" / "32").exists() and not list((tmp_path / "out").glob(".*"))


def test_skip_bad_continues_and_reports(tmp_path):
    src = _bad_source(tmp_path)
    (src / "junk.png").write_bytes(b"definitely not a png")
    report = _prepare(src, tmp_path / "out", skip_bad=True, expect_count=7)
    assert len(report.skipped) == 3 and any("2.jpg" in s for s in report.skipped)
    ds = PreparedDataset(tmp_path / "out" / "32", 32)
    assert len(ds) == 4 and ds.manifest["skipped"] == report.skipped
    assert np.array_equal(ds[2].numpy(), _expected(src / "3.jpg", 32))  # survivors keep their order


def test_count_and_size_checks(tmp_path):
    src = _write_tree(tmp_path / "src", [f"{i}.jpg" for i in range(6)])
    with pytest.raises(DataError, match="found 6 images.*expected 30000.*--expect-count"):
        prepare(src, tmp_path / "out", [32], fid_dims=())
    with pytest.raises(DataError, match="smaller than the 128px target"):
        _prepare(src, tmp_path / "out", resolutions=[128])
    with pytest.raises(DataError, match="does not exist"):
        _prepare(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(WeightsError, match="install-weights"):
        _prepare(src, tmp_path / "out", fid_dims=(64,), weights_path=str(tmp_path / "none.pth"))


def test_cli_reports_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from biggan.errors import cli_main
    from data.prepare_celebahq import main

    src = _bad_source(tmp_path)
    monkeypatch.setattr(sys, "argv", ["prepare", str(src), str(tmp_path / "out"), "--resolution", "32",
                                      "--expect-count", "0", "--fid-dims", "--workers", "1"])
    with pytest.raises(SystemExit) as exit_info:
        cli_main(main)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # progress bars come before it on stderr
    assert last.startswith("error: image 4.jpg is 64x48, not square") and "--skip-bad" in last


def _weights_or_skip() -> None:
    if not default_weights_path().is_file():
        if os.environ.get("CI"):
            pytest.fail("FID weights missing in CI; run `python -m biggan.fid install-weights` first")
        pytest.skip("FID weights not installed (python -m biggan.fid install-weights)")


def test_statistics_in_same_run_and_second_run_does_no_work(tmp_path):
    _weights_or_skip()
    folder = _write_tree(tmp_path / "src", SCHEMES["dataNNNxNNN"])
    src = _zip(folder)
    report = _prepare(src, tmp_path / "out", fid_dims=(64,))
    assert report.prepared == [32, 16] and len(report.stats_written) == 4  # statistics and KID/PR features, each res
    stats = load_stats(tmp_path / "out" / "32" / "fid_stats_d64.npz")
    assert stats.n == 6 and stats.mu.shape == (64,) and "d64" in stats.extractor
    features = load_features(tmp_path / "out" / "32" / "fid_stats_d64.features.npz")
    assert features.features.shape == (6, 64) and features.extractor == stats.extractor  # all 6 (fewer than 10k)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    again = _prepare(src, tmp_path / "out", fid_dims=(64,))
    assert again.prepared == [] and again.stats_written == []
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    (tmp_path / "out" / "16" / "fid_stats_d64.npz").unlink()  # only the missing piece is redone
    third = _prepare(src, tmp_path / "out", fid_dims=(64,))
    assert third.prepared == [] and [p.name for p in third.stats_written] == ["fid_stats_d64.npz",
                                                                              "fid_stats_d64.features.npz"]
    stats_mtime = (tmp_path / "out" / "16" / "fid_stats_d64.npz").stat().st_mtime_ns
    (tmp_path / "out" / "16" / "fid_stats_d64.features.npz").unlink()  # features of a dataset prepared before KID/PR
    fourth = _prepare(src, tmp_path / "out", fid_dims=(64,))
    assert [p.name for p in fourth.stats_written] == ["fid_stats_d64.features.npz"]
    assert (tmp_path / "out" / "16" / "fid_stats_d64.npz").stat().st_mtime_ns == stats_mtime
    manifest = json.loads((tmp_path / "out" / "32" / "manifest.json").read_text())
    assert manifest["source"]["form"] == "zip" and len(manifest["sha256"]) == 64


@pytest.mark.slow
def test_parallel_workers_read_zip_identically(tmp_path):
    folder = _write_tree(tmp_path / "src", SCHEMES["celebamask-hq"])
    src = _zip(folder)
    _prepare(src, tmp_path / "one", workers=1)
    _prepare(src, tmp_path / "two", workers=2)
    for res in (32, 16):
        one = json.loads((tmp_path / "one" / str(res) / "manifest.json").read_text())
        two = json.loads((tmp_path / "two" / str(res) / "manifest.json").read_text())
        assert one["sha256"] == two["sha256"]


def test_labelled_prepare_writes_labels_and_class_names(tmp_path):
    names = ["cats/0.jpg", "cats/sub/1.jpg", "dogs/2.jpg", "dogs/3.jpg", "owls/4.jpg"]
    src = _write_tree(tmp_path / "src", names)
    (src / "dogs" / "2.jpg").write_bytes((src / "dogs" / "2.jpg").read_bytes()[:200])  # a cut download
    report = _prepare(src, tmp_path / "out", expect_count=5, labelled=True, skip_bad=True)
    assert report.source.layout == "imagefolder" and report.source.classes == ["cats", "dogs", "owls"]
    assert len(report.skipped) == 1 and "2.jpg" in report.skipped[0]
    for res in (32, 16):
        ds = PreparedDataset(tmp_path / "out" / str(res), res)
        assert ds.class_labels.names == ["cats", "dogs", "owls"]
        assert ds.class_labels.labels.tolist() == [0, 0, 1, 2]  # the skipped image took its label with it
        assert ds.manifest["class_counts"] == [2, 1, 1]
        assert np.array_equal(ds[2].numpy(), _expected(src / "dogs" / "3.jpg", res))
    again = _prepare(src, tmp_path / "out", expect_count=5, labelled=True, skip_bad=True)
    assert again.prepared == []  # up to date
    unlabelled = _prepare(src, tmp_path / "plain", expect_count=5, skip_bad=True)
    assert unlabelled.source.fingerprint != report.source.fingerprint
    assert PreparedDataset(tmp_path / "plain" / "32", 32).class_labels is None
    with pytest.raises(DataError, match="unzip it first"):
        _prepare(_zip(src), tmp_path / "zipped", expect_count=5, labelled=True)
