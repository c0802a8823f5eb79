"""Generation: images from a generator, shared by the training tick, FID and ``sample.py``.

``latents.py`` (seed-per-image z, interpolation paths), ``generate.py`` (batched eval-mode G), ``checkpoint.py``
(a generator rebuilt from a checkpoint alone: the generator part of the checkpoint schema) and ``attention.py``
(sampling a trained G with another attention kind or SMYRF budget). Pixels and PNG files are :mod:`biggan.images`.
"""
