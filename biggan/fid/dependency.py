"""pytorch-fid, the one optional dependency of FID: imported when an extractor is built or a distance taken, never
when ``biggan.fid`` (and through it the run config) is imported.

Why: a bare GPU machine with PyTorch and no network must still load configs, build G and D and run SMYRF; only a run
with FID on (or ``python -m biggan.fid``) needs the package, and then the user gets one line saying how to get it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from biggan.errors import ConfigError

__all__ = ["INSTALL_PYTORCH_FID", "pytorch_fid_module"]

INSTALL_PYTORCH_FID = "pip install pytorch-fid==0.3.0"  # the version requirements/main.txt pins


def pytorch_fid_module(name: str) -> ModuleType:
    """``pytorch_fid.<name>`` (``inception``, ``fid_score``); ConfigError naming the fix when it is not installed."""
    try:
        return importlib.import_module(f"pytorch_fid.{name}")
    except ImportError as err:
        raise ConfigError(f"FID needs the pytorch-fid package, which is not importable ({err}); "
                          f"`{INSTALL_PYTORCH_FID}` (pure Python), or turn FID off with fid.every=0") from err
