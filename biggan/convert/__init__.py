"""Importers of other programs' checkpoints into ours: ``python -m biggan.convert FORMAT SOURCE --out FILE``.

One format today, ``biggan-pytorch`` (ajbrock/BigGAN-PyTorch, MIT: the released ImageNet 128 model and anything that
code trains at 128 or 256). The result is a generator checkpoint (:data:`biggan.generation.checkpoint.GENERATOR_KEYS`,
optionally with ``D``) that ``sample.py`` loads and ``train.py --init-from`` fine-tunes.

``layout`` (their keys, variants and what the shapes say), ``mapping`` (one recipe per tensor of ours, every key of
theirs consumed), ``reference`` (the oracle: their eval forward on their keys), ``one_class`` (the fine-tuning start
on unlabelled data), ``biggan_pytorch`` (the steps, checked before anything is written).

Shape legend: B batch; C channels; h×w spatial size; N = h·w.
"""

from biggan.convert.biggan_pytorch import ImportRequest, ImportResult, import_biggan_pytorch
from biggan.convert.reference import BigGANPyTorchReference

__all__ = ["ImportRequest", "ImportResult", "import_biggan_pytorch", "BigGANPyTorchReference"]
