"""The self-describing run directory ``<out_dir>/<name>/``.

Layout (stylegan2-ada's, with our fixes)::

    config.yaml            resolved config (also in TensorBoard text and in every checkpoint)
    log.txt                status lines of every tick, teed from stdout
    stats.jsonl            one JSON line per tick: step, images seen, losses, timings, memory
    metrics.jsonl          one JSON line per FID evaluation
    events.out.tfevents.*  TensorBoard scalars, sample grids, config text
    samples/               PNG grids from a fixed z: G_ema-<step>.png and G-<step>.png
    checkpoints/           step-<step>.pt (last k), latest.pt, best.pt (by FID)

Running the same command again finds ``checkpoints/latest.pt`` and resumes, so the name is stable (no run counter).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from biggan.errors import RunDirError

__all__ = ["RunDir"]


@dataclass(frozen=True)
class RunDir:
    """Paths of one run; :meth:`create` makes the folders (rank 0 only)."""

    root: Path

    @classmethod
    def for_run(cls, out_dir: str | Path, name: str) -> "RunDir":
        return cls(Path(out_dir) / name)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    @property
    def stats(self) -> Path:
        return self.root / "stats.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def create(self) -> None:
        """Create the run, samples and checkpoints folders; one-line error if the location is not writable."""
        try:
            for path in (self.root, self.samples, self.checkpoints):
                path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunDirError(
                f"cannot create run directory {str(self.root)!r} ({err.strerror}); set out_dir=... to a writable folder"
            ) from None

    def write_config(self, text: str) -> None:
        """Write the resolved config (overwritten on resume: the file always describes the latest invocation)."""
        try:
            self.config.write_text(text)
        except OSError as err:
            raise RunDirError(f"cannot write {str(self.config)!r} ({err.strerror}); check disk space/permissions") from None
