"""Sampling a trained generator with other attention: dense for a SMYRF-trained G, or other SMYRF budgets.

SMYRF has no parameters, so the weights are the same whatever the attention kind; only the layers' settings change
(:func:`biggan.models.set_attention`).
"""

from __future__ import annotations

from typing import Literal, Optional

from biggan.errors import ConfigError
from biggan.models import AttentionConfig, ModelConfig

__all__ = ["attention_overrides"]


def attention_overrides(
    cfg: ModelConfig,
    kind: Optional[Literal["dense", "smyrf"]],
    n_hashes: Optional[int] = None,
    q_cluster_size: Optional[int] = None,
    k_cluster_size: Optional[int] = None,
) -> list[AttentionConfig]:
    """New specs for every attention layer of G: another kind and/or other SMYRF settings (unset ones are kept)."""
    specs = []
    for spec in cfg.G.attention:
        new_kind = kind or spec.kind
        if new_kind == "dense":
            if any(v is not None for v in (n_hashes, q_cluster_size, k_cluster_size)):
                raise ConfigError("--n-hashes/--q-cluster-size/--k-cluster-size act only with --attention smyrf")
            specs.append(AttentionConfig(res=spec.res, kind="dense"))
            continue
        values = {
            "n_hashes": n_hashes if n_hashes is not None else spec.n_hashes,
            "q_cluster_size": q_cluster_size if q_cluster_size is not None else spec.q_cluster_size,
            "k_cluster_size": k_cluster_size if k_cluster_size is not None else spec.k_cluster_size,
        }
        missing = [f"--{k.replace('_', '-')}" for k, v in values.items() if v is None]
        if missing:
            raise ConfigError(f"G's attention at res {spec.res} was trained dense; give {', '.join(missing)} for smyrf")
        specs.append(AttentionConfig(res=spec.res, kind="smyrf", hashing=spec.hashing, summary=spec.summary, **values))
    if not specs and kind is not None:
        raise ConfigError("this generator has no attention layer; drop --attention")
    return specs
