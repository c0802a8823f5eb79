"""Per-resolution BigGAN architecture tables (Brock et al. 2019, appendix B; BigGAN-PyTorch ``G_arch``/``D_arch``).

Widths are multiples of the base width ``ch``. Every G block upsamples 2x from a 4x4 stem; D blocks downsample 2x except
the last (or last two at 32), which keep 4x4 (8x8 at 32). The resolution a block *outputs* is what attention placement
refers to, so the tables expose exactly that list and nothing else is matched.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GArch", "DArch", "G_ARCHS", "D_ARCHS", "BOTTOM_WIDTH", "SUPPORTED_RESOLUTIONS"]

BOTTOM_WIDTH = 4  # G's stem reshapes the linear output to (B, stem_mult·ch, 4, 4)


@dataclass(frozen=True)
class GArch:
    """Generator table: stem width and the output width of each up-block (all ×ch)."""

    stem_mult: int
    out_mults: tuple[int, ...]

    def in_mults(self) -> tuple[int, ...]:
        return (self.stem_mult,) + self.out_mults[:-1]

    def out_resolutions(self) -> tuple[int, ...]:
        return tuple(BOTTOM_WIDTH * 2 ** (i + 1) for i in range(len(self.out_mults)))


@dataclass(frozen=True)
class DArch:
    """Discriminator table: output width (×ch) and whether each block halves the resolution. Block 0 takes RGB."""

    resolution: int
    out_mults: tuple[int, ...]
    downsample: tuple[bool, ...]

    def out_resolutions(self) -> tuple[int, ...]:
        res, out = self.resolution, []
        for down in self.downsample:
            res = res // 2 if down else res
            out.append(res)
        return tuple(out)


G_ARCHS: dict[int, GArch] = {
    32: GArch(4, (4, 4, 4)),
    64: GArch(16, (16, 8, 4, 2)),
    128: GArch(16, (16, 8, 4, 2, 1)),
    256: GArch(16, (16, 8, 8, 4, 2, 1)),
}

D_ARCHS: dict[int, DArch] = {
    32: DArch(32, (4, 4, 4, 4), (True, True, False, False)),
    64: DArch(64, (1, 2, 4, 8, 16), (True, True, True, True, False)),
    128: DArch(128, (1, 2, 4, 8, 16, 16), (True, True, True, True, True, False)),
    256: DArch(256, (1, 2, 4, 8, 8, 16, 16), (True, True, True, True, True, True, False)),
}

SUPPORTED_RESOLUTIONS = tuple(sorted(G_ARCHS))
