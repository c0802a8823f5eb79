"""BigGAN generator and discriminator with dense or SMYRF self-attention at any block output resolution.

Shape legend: B batch; C channels; h×w spatial size; N = h·w tokens; Nq, Nk queries/keys; d query/key dim; dv value dim;
H hash rounds; nc clusters per round; cq, ck cluster sizes.

Entry points: ``build_generator(cfg)`` / ``build_discriminator(cfg)`` from a :class:`ModelConfig`;
``set_attention`` switches attention kinds in place; ``model_config_from_dict`` rebuilds the config stored in a
checkpoint (``dataclasses.asdict(cfg)``).
"""

from biggan.models.attention import SelfAttention2d
from biggan.models.config import (
    AttentionConfig,
    ModelConfig,
    NetworkConfig,
    architecture_differences,
    model_config_from_dict,
)
from biggan.models.discriminator import Discriminator, build_discriminator
from biggan.models.ema import EMA
from biggan.models.generator import Generator, build_generator
from biggan.models.inspection import (
    attention_gammas,
    attention_rng_state,
    count_parameters,
    describe_attention,
    load_attention_rng_state,
    load_state_strict,
    set_attention,
    spectral_norm_values,
)
from biggan.models.regularizers import orthogonal_regularization

__all__ = [
    "AttentionConfig",
    "NetworkConfig",
    "ModelConfig",
    "model_config_from_dict",
    "architecture_differences",
    "Generator",
    "Discriminator",
    "build_generator",
    "build_discriminator",
    "SelfAttention2d",
    "set_attention",
    "load_state_strict",
    "attention_rng_state",
    "load_attention_rng_state",
    "spectral_norm_values",
    "attention_gammas",
    "count_parameters",
    "describe_attention",
    "EMA",
    "orthogonal_regularization",
]
