"""Where the tick's numbers go: stdout + ``log.txt``, ``stats.jsonl``, ``metrics.jsonl`` and TensorBoard.

Only the main process writes (``RunLogger(..., enabled=False)`` elsewhere turns every method into a no-op), so a
multi-device run produces one event file and one set of grids (the SMYRF fork wrote them from every process).
Everything passed in here is already on the host: the loop reduces device tensors once per tick.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from biggan.training.run_dir import RunDir

__all__ = ["RunLogger", "format_status"]


def format_status(step: int, total: int, stats: dict[str, float]) -> str:
    """One tick's status line (stylegan2-ada style): progress, speed, losses, memory, maintenance time."""
    parts = [
        f"step {step}/{total}",
        f"kimg {stats['progress/kimg']:.2f}",
        f"s/step {stats['speed/sec_per_step']:.3f}",
        f"img/s {stats['speed/img_per_sec']:.1f}",
        f"D_real {stats['loss/D_real']:.3f}",
        f"D_fake {stats['loss/D_fake']:.3f}",
        f"G {stats['loss/G']:.3f}",
        f"peak_mem {stats['memory/peak_gib']:.2f}GiB",
        f"maint {stats['speed/maintenance_sec']:.1f}s",
    ]
    return "  ".join(parts)


class RunLogger:
    """Rank-0 writer for the run directory and TensorBoard (the SummaryWriter is created lazily on first use)."""

    def __init__(self, run_dir: RunDir, enabled: bool = True, echo: bool = True) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.echo = echo
        self._writer: Any = None

    @property
    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imported here: tensorboard is slow to import

            self._writer = SummaryWriter(log_dir=str(self.run_dir.root))
        return self._writer

    def _append(self, path: Path, line: str) -> None:
        with path.open("a") as fh:
            fh.write(line + "\n")

    def line(self, text: str, echo: bool | None = None) -> None:
        """Print a line (unless ``echo`` is False, e.g. a progress bar printed it) and append it to log.txt."""
        if not self.enabled:
            return
        if self.echo if echo is None else echo:
            print(text, flush=True)
        self._append(self.run_dir.log, f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {text}")

    def stats(self, step: int, stats: dict[str, float]) -> None:
        """One tick: a stats.jsonl record and one TensorBoard scalar per key (keys are 'group/name')."""
        if not self.enabled:
            return
        self._append(self.run_dir.stats, json.dumps({"step": step, "time": time.time(), **stats}))
        for key, value in stats.items():
            self.writer.add_scalar(key, value, step)

    def metric(self, step: int, record: dict[str, Any]) -> None:
        """One FID evaluation: metrics.jsonl plus the numeric fields as TensorBoard scalars under 'metrics/'."""
        if not self.enabled:
            return
        self._append(self.run_dir.metrics, json.dumps({"step": step, "time": time.time(), **record}))
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"metrics/{key}", value, step)

    def image(self, tag: str, grid: Tensor, step: int) -> None:
        """A (3, h, w) float grid in [0, 1] to TensorBoard."""
        if self.enabled:
            self.writer.add_image(tag, grid.clamp(0, 1).to(torch.float32), step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Markdown-safe text (the config is shown in a code block so YAML indentation survives)."""
        if self.enabled:
            body = "\n".join("    " + line for line in text.splitlines())
            self.writer.add_text(tag, body, step)

    def flush(self) -> None:
        if self.enabled and self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
