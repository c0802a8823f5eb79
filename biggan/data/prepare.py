"""CelebA-HQ preparation: any common form -> prepared uint8 memmaps at each resolution + FID reference statistics.

Accepted sources: a folder (searched recursively) or a zip of one, holding square JPG/PNG images at any resolution
>= the target: CelebAMask-HQ ``CelebA-HQ-img/0.jpg…29999.jpg``, Google-Drive ``dataNNNxNNN/00001.jpg…``, Kaggle
re-uploads, StarGAN v2 ``{train,val}/{female,male}/`` (merged). Files are taken in natural path order.

With ``labelled`` the source is a folder with one sub-folder per class (torchvision ImageFolder rules,
:mod:`biggan.data.labels`): files are taken in ImageFolder order and each prepared directory also holds the labels
and the class names.

Steps: a cheap header pass checks the count, squareness and size of every file (so a bad file stops the run in
seconds, not after hours of decoding); a decode pass converts each image to RGB once and resizes it to every target
with an antialiasing PIL filter (BOX = ProGAN's 2×2 averaging, the default; LANCZOS = stylegan2-ada's), in parallel
worker processes. Each resolution directory is built under a temporary name and renamed when complete; a rerun skips
resolutions whose manifest matches the source fingerprint and filter. The FID reference statistics are the prepare
command's next step (``data/prepare_celebahq.py``): this package knows no metric.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import re
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from biggan.data.folder import RESAMPLE_FILTERS, resize_square
from biggan.data.labels import discover_classes
from biggan.data.prepared import PreparedWriter, read_manifest
from biggan.errors import DataError, UserError
from biggan.images import IMAGE_EXTENSIONS, decode_rgb, list_image_files, natural_key, to_chw

__all__ = ["CELEBAHQ_COUNT", "Source", "scan_source", "prepare_dataset", "PrepareReport"]

CELEBAHQ_COUNT = 30000


@dataclass
class Source:
    """The image files of a folder or zip, in natural order, with a fingerprint of names and sizes."""

    path: Path
    form: str  # "folder" | "zip"
    names: list[str]  # relative paths (folder) or member names (zip)
    layout: str  # recognised naming scheme, recorded in the manifest
    fingerprint: str  # sha256 of "name<TAB>size" lines (and the classes): a changed source is prepared again
    classes: list[str] | None = None  # labelled: class names in index order
    labels: list[int] | None = None  # labelled: the class of each name


def _layout(names: list[str]) -> str:
    """Name the CelebA-HQ distribution the file names look like (informational, for the manifest)."""
    parts = {p.lower() for name in names for p in Path(name).parts[:-1]}
    if any(re.fullmatch(r"data(\d+)x\1", p) for p in parts):
        return "dataNNNxNNN"
    if parts & {"train", "val"} and parts & {"female", "male"}:
        return "stargan-v2"
    stems = [Path(n).stem for n in names]
    if all(s.isdigit() and s == str(int(s)) for s in stems) and min(int(s) for s in stems) == 0:  # 0.jpg, unpadded
        return "celebamask-hq"
    return "generic"


def _labelled_files(src: Path) -> tuple[list[str], list[int], list[str]]:
    """Relative names, labels and class names of a class-folder source (ImageFolder order)."""
    if not src.is_dir():
        raise DataError(f"--labels needs a folder with one sub-folder per class; {src} is not a folder (unzip it "
                        "first)")
    classes, samples = discover_classes(src)
    return [path.relative_to(src).as_posix() for path, _ in samples], [label for _, label in samples], classes


def scan_source(src: str | Path, labelled: bool = False) -> Source:
    """List a folder or zip of images; DataError if it is missing, not an image container or empty.

    ``labelled``: a folder of class sub-folders (ImageFolder rules); the names then come with their labels.
    """
    src = Path(src)
    classes = labels = None
    if labelled:
        names, labels, classes = _labelled_files(src)
        sizes, form = [(src / n).stat().st_size for n in names], "folder"
    elif zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir() and Path(i.filename).suffix.lower() in IMAGE_EXTENSIONS
                     and not any(p.startswith((".", "__MACOSX")) for p in Path(i.filename).parts)]
        if not infos:
            raise DataError(f"zip {src} holds no images; point SRC at a zip or folder of CelebA-HQ images")
        infos.sort(key=lambda i: natural_key(i.filename))
        names, sizes, form = [i.filename for i in infos], [i.file_size for i in infos], "zip"
    elif src.is_dir():
        files = list_image_files(src)
        names, sizes, form = [f.relative_to(src).as_posix() for f in files], [f.stat().st_size for f in files], "folder"
    elif src.exists():
        raise DataError(f"{src} is neither a folder nor a zip; point SRC at a folder or zip of images")
    else:
        raise DataError(f"source {src} does not exist; check the SRC path")
    lines = "".join(f"{n}\t{s}\n" for n, s in zip(names, sizes))
    if classes is not None:  # unlabelled fingerprints stay what they were: prepared directories remain up to date
        lines = "classes\t" + "\t".join(classes) + "\n" + lines
    layout = "imagefolder" if classes is not None else _layout(names)
    return Source(src, form, names, layout, hashlib.sha256(lines.encode()).hexdigest(), classes, labels)


class _Reader:
    """Opens, checks and resizes source images; picklable so worker processes each open the zip once."""

    def __init__(self, source: Source, resolutions: Sequence[int], resample: str) -> None:
        self.path, self.form = source.path, source.form
        self.resolutions, self.resample = list(resolutions), resample
        self._zip: zipfile.ZipFile | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None}

    def _open(self, name: str):
        if self.form == "folder":
            return open(self.path / name, "rb")
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        return self._zip.open(name)

    def header(self, name: str) -> str | None:
        """Cheap check from the header only: readable, square, large enough. Returns the problem or None."""
        try:
            with self._open(name) as f, Image.open(f) as img:
                w, h = img.size
        except Exception as err:  # PIL raises many types for non-images
            return f"cannot read image {name} ({type(err).__name__}: {err}); remove or replace it, or pass --skip-bad"
        if w != h:
            return f"image {name} is {w}x{h}, not square; crop it to a square or pass --skip-bad"
        if w < max(self.resolutions):
            return (f"image {name} is {w}x{h}, smaller than the {max(self.resolutions)}px target; "
                    "use a larger source or pass --skip-bad")
        return None

    def __call__(self, name: str) -> tuple[str, dict[int, np.ndarray] | str]:
        """Decode once, resize to every resolution: ("ok", {res: uint8 (3, res, res)}) or ("bad", message)."""
        try:
            with self._open(name) as f:
                img = decode_rgb(f, name)
            return "ok", {res: to_chw(resize_square(img, res, name, self.resample)) for res in self.resolutions}
        except UserError as err:
            return "bad", str(err)


@dataclass
class PrepareReport:
    """What a run did, for the CLI summary and for tests ("a second run does no work")."""

    source: Source
    outputs: dict[int, Path] = field(default_factory=dict)
    prepared: list[int] = field(default_factory=list)  # resolutions whose images were (re)written
    stats_written: list[Path] = field(default_factory=list)  # FID reference statistics the prepare command wrote
    skipped: list[str] = field(default_factory=list)  # bad files skipped with --skip-bad (messages)


def _up_to_date(out: Path, source: Source, resample: str) -> bool:
    manifest = read_manifest(out)
    return bool(manifest) and manifest["source"].get("fingerprint") == source.fingerprint \
        and manifest.get("filter") == resample


def _check_headers(reader: _Reader, source: Source, skip_bad: bool, bad: list[str]) -> list[str]:
    good = []
    for name in tqdm(source.names, desc="checking headers", unit="img", mininterval=2, disable=None):
        problem = reader.header(name)
        if problem is None:
            good.append(name)
        elif skip_bad:
            bad.append(problem)
        else:
            raise DataError(problem)
    return good


def _decode_all(reader: _Reader, names: list[str], writers: dict[int, PreparedWriter], skip_bad: bool,
                bad: list[str], workers: int, label_of: dict[str, int] | None = None) -> None:
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    results = pool.imap(reader, names, chunksize=16) if pool else map(reader, names)
    try:
        for name, (status, payload) in tqdm(zip(names, results), total=len(names), desc="decoding + resizing",
                                            unit="img", mininterval=2, disable=None):
            if status == "bad":
                if not skip_bad:
                    raise DataError(payload)
                bad.append(payload)
                continue
            for res, image in payload.items():
                writers[res].append(image, None if label_of is None else label_of[name])
    finally:
        if pool:
            pool.terminate()


def prepare_dataset(src: str | Path, out: str | Path, resolutions: Sequence[int], resample: str = "box",
                    skip_bad: bool = False, expect_count: int | None = CELEBAHQ_COUNT,
                    workers: int = 1, labelled: bool = False) -> PrepareReport:
    """Prepare the images of ``src`` into ``out/<res>/`` for every resolution (resolutions already up to date are
    left alone).

    Args:
        expect_count: number of images the source must hold (None or 0 = any); CelebA-HQ has 30,000.
        labelled: ``src`` has one sub-folder per class; the labels and class names are prepared with the images.
    """
    if resample not in RESAMPLE_FILTERS:
        raise DataError(f"unknown resize filter {resample!r}; use one of {sorted(RESAMPLE_FILTERS)}")
    out = Path(out)
    source = scan_source(src, labelled)
    if expect_count and len(source.names) != expect_count:
        raise DataError(f"found {len(source.names)} images in {source.path}, expected {expect_count}; "
                        "pass --expect-count N (0 = any) if that is intended")
    report = PrepareReport(source, outputs={res: out / str(res) for res in resolutions})
    todo = [res for res in resolutions if not _up_to_date(out / str(res), source, resample)]
    if not todo:
        return report
    reader = _Reader(source, todo, resample)
    names = _check_headers(reader, source, skip_bad, report.skipped)
    if not names:
        raise DataError(f"every image in {source.path} was skipped as bad; check the source")
    writers = {res: PreparedWriter(out / str(res), res, len(names), source.classes) for res in todo}
    label_of = None if source.labels is None else dict(zip(source.names, source.labels))
    try:
        _decode_all(reader, names, writers, skip_bad, report.skipped, workers, label_of)
        for res, writer in writers.items():
            writer.finish()
            writer.commit({"source": {"path": str(source.path.resolve()), "form": source.form,
                                      "layout": source.layout, "fingerprint": source.fingerprint,
                                      "num_files": len(source.names)},
                           "filter": resample, "skipped": report.skipped,
                           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            report.prepared.append(res)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    return report
