"""Training: the ``run(cfg, runtime)`` loop, its hot steps, losses, the tick's logging, run directory and checkpoints.

Import the submodules directly (``biggan.training.loop``, ``biggan.training.steps`` ...); this package file stays empty so
that importing one piece (e.g. the checkpoint store from ``sample.py``) does not pull in the rest.
"""
