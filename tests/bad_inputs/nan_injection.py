"""Run ``train.py`` with non-finite D losses injected: ``python nan_injection.py FIRST_CALL MODE train.py ARGS...``.

The D step's returned statistics become NaN at its ``FIRST_CALL``-th call (1-based, counted over the whole process) and,
with MODE ``always``, at every later call; with ``once`` only that call. The weights are untouched, so a rollback that
works lets a ``once`` run finish exactly, while an ``always`` run must stop after ``train.max_rollbacks`` rollbacks.
"""

from __future__ import annotations

import runpy
import sys

import biggan.training.loop as loop

_first, _mode = int(sys.argv[1]), sys.argv[2]
_real_d_step = loop.d_step
_calls = 0


def _d_step(*args, **kwargs):
    global _calls
    _calls += 1
    out = _real_d_step(*args, **kwargs)
    if _calls == _first or (_mode == "always" and _calls > _first):
        out = {key: value * float("nan") for key, value in out.items()}
    return out


if __name__ == "__main__":
    loop.d_step = _d_step
    sys.argv = sys.argv[3:]
    runpy.run_path(sys.argv[0], run_name="__main__")
