"""Run a CLI script with a disk that fills up while a checkpoint is written: ``python disk_full.py SCRIPT ARGS...``.

Simulates ENOSPC (no root, no tmpfs needed): ``torch.save`` writes the first kilobyte of the file and then fails the way
a full disk does. Everything else (imports, signal handling, ``cli_main``'s exit status) is the real script's.
"""

from __future__ import annotations

import errno
import io
import os
import runpy
import sys

import torch

_real_save = torch.save


def _save_until_full(obj: object, f: object, *args: object, **kwargs: object) -> None:
    buffer = io.BytesIO()
    _real_save(obj, buffer, *args, **kwargs)
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as out:
            out.write(buffer.getvalue()[:1024])
    else:
        f.write(buffer.getvalue()[:1024])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


if __name__ == "__main__":
    torch.save = _save_until_full
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
