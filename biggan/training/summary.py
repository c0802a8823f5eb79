"""What ``train.py --dry-run`` prints: the resolved config, parameter counts and where attention sits in G and D.

Building the networks here also runs every placement and cluster-size check, so a dry run catches a bad config in
seconds instead of after the dataset and FID statistics are prepared.
"""

from __future__ import annotations

from torch import nn

from biggan.config import Config, dump_config
from biggan.models import SelfAttention2d, build_discriminator, build_generator, count_parameters

__all__ = ["describe_attention", "describe_run"]


def describe_attention(net: nn.Module, name: str) -> list[str]:
    """One line per attention layer: resolution, channels, tokens and kind (or a line saying there is none)."""
    lines = []
    for module in net.modules():
        if not isinstance(module, SelfAttention2d):
            continue
        spec, n_q = module.spec, module.res**2
        n_k = n_q // 4  # keys and values are 2x2 max-pooled
        line = (f"  {name}: after the block with output {module.res}x{module.res}, C={module.channels} "
                f"(d={module.channels // 8}, dv={module.channels // 2}), Nq={n_q}, Nk={n_k}: {spec.kind}")
        if spec.kind == "smyrf":
            clusters = n_q // spec.q_cluster_size
            share = spec.n_hashes * spec.q_cluster_size * spec.k_cluster_size * clusters / (n_q * n_k)
            line += (f" H={spec.n_hashes} cq={spec.q_cluster_size} ck={spec.k_cluster_size} "
                     f"({clusters} clusters/round, {share:.1%} of dense score entries)")
        lines.append(line)
    return lines or [f"  {name}: no attention"]


def describe_run(cfg: Config) -> str:
    """Resolved config (YAML) followed by a short model summary."""
    G, D = build_generator(cfg.model), build_discriminator(cfg.model)
    lines = [
        dump_config(cfg).rstrip(),
        "",
        f"# G: {count_parameters(G) / 1e6:.2f}M parameters, D: {count_parameters(D) / 1e6:.2f}M parameters",
        "# attention placement:",
        *("#" + line[1:] for line in describe_attention(G, "G") + describe_attention(D, "D")),
        f"# run directory: {cfg.out_dir}/{cfg.name}",
    ]
    return "\n".join(lines)
