"""The device seam (cpu | cuda | xla): the only package that knows devices, processes, ``torch.distributed`` and
``torch_xla`` (imported lazily). ``seam.py`` is the :class:`Runtime`; ``batchnorm.py`` the cross-replica BatchNorm;
``memory.py`` peak-memory probes; ``config.py`` its config section.
"""

from biggan.runtime.batchnorm import CrossReplicaBatchNorm, SPMDBatchNorm, convert_cross_replica_bn, convert_spmd_bn
from biggan.runtime.config import RuntimeConfig
from biggan.runtime.seam import Runtime

__all__ = ["Runtime", "RuntimeConfig", "CrossReplicaBatchNorm", "SPMDBatchNorm", "convert_cross_replica_bn",
           "convert_spmd_bn"]
