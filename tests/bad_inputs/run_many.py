"""Run many CLI invocations in one interpreter: ``python run_many.py JOBS.json RESULTS.json``.

Why: the bad-input table has ~50 rows, and a fresh interpreter per row spends most of its time importing torch (minutes
on a 2-core CI box). Each row here still runs the real script as ``__main__`` (``runpy``), through its real
``cli_main``, with its own ``sys.argv``; stdout/stderr are captured and ``SystemExit`` gives the exit status. An
exception escaping the script is printed as the traceback the user would have seen (status 1).

A job is ``{"argv": ["train.py", ...] | ["-m", "module", ...], "disk_full": bool}``; ``disk_full`` runs it with the
ENOSPC simulation of :mod:`disk_full`.
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import disk_full  # noqa: E402  (a sibling helper, not a package import)


def run_job(argv: list[str], full_disk: bool) -> dict:
    out, err = io.StringIO(), io.StringIO()
    saved_argv, real_save = sys.argv, torch.save
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if full_disk:
                torch.save = disk_full._save_until_full
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = list(argv)
                runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except BaseException:  # noqa: BLE001 - what the user would see: a traceback and status 1
            traceback.print_exc()
            code = 1
        finally:
            sys.argv, torch.save = saved_argv, real_save
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    results = [run_job(job["argv"], job.get("disk_full", False)) for job in jobs]
    Path(sys.argv[2]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
