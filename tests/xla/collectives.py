"""Collectives in the HLO that XLA actually runs: the after-optimisations modules it dumps, parsed and counted.

Values cannot show what the SPMD partitioner did between devices; the optimised HLO can. Run the XLA process with
:func:`dump_flags` in ``XLA_FLAGS`` (they must be set before the runtime starts, so in the environment of a fresh
process), mark the dump directory before the graph you care about (:func:`dumped`), run it and sync, then read the
modules it added (:func:`modules_since`) and their collectives (:func:`collectives`). Used by tests/xla/checks.py;
written to be reused by any check of a whole training step.

Every collective is reported as ``{"op", "shape", "elements", "module"}``: ``op`` is one of :data:`KINDS` (an async
``-start`` half counts once, its ``-done`` half not at all), ``shape`` the HLO result type (``f32[8192,12]``; a
tuple type for combined collectives) and ``elements`` the element count of the largest array in it.
"""

from __future__ import annotations

import re
from pathlib import Path

KINDS = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")

# `%name = TYPE op(`, where TYPE is `f32[8,12]{1,0}` or a tuple `(f32[], s64[2]{0})` and op may end in `-start`.
_INSTRUCTION = re.compile(
    r"=\s*(?P<shape>\([^=]*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+"
    r"(?P<op>" + "|".join(KINDS) + r")(?:-start)?\("
)
_ARRAY = re.compile(r"[a-z0-9]+\[([0-9,]*)\]")


def dump_flags(directory: Path | str) -> str:
    """XLA_FLAGS that make XLA write every module's HLO, before and after optimisation, as text into ``directory``."""
    return f"--xla_dump_to={directory} --xla_dump_hlo_as_text"


def dumped(directory: Path | str) -> set[str]:
    """The after-optimisations modules written so far (a mark to diff against)."""
    return {p.name for p in Path(directory).glob("*after_optimizations.txt")}


def modules_since(directory: Path | str, before: set[str]) -> dict[str, str]:
    """Name -> HLO text of the after-optimisations modules written since the mark ``before``."""
    return {name: (Path(directory) / name).read_text() for name in sorted(dumped(directory) - before)}


def _elements(shape: str) -> int:
    sizes = [1]
    for dims in _ARRAY.findall(shape):
        n = 1
        for dim in filter(None, dims.split(",")):
            n *= int(dim)
        sizes.append(n)
    return max(sizes)


def collectives(modules: dict[str, str]) -> list[dict]:
    """Every collective instruction of ``modules`` (name -> HLO text), in module and text order."""
    found = []
    for name, text in modules.items():
        for match in _INSTRUCTION.finditer(text):
            shape = re.sub(r"\{[^}]*\}", "", match["shape"])  # drop layouts: f32[8,12]{1,0} -> f32[8,12]
            found.append({"op": match["op"], "shape": shape, "elements": _elements(shape), "module": name})
    return found


def entry_result(text: str) -> str:
    """The result type of a module's ENTRY computation (what each device's program returns), layouts dropped: a
    partitioned program returns its own shard, ``f32[4,3,32,32]`` of a batch of 8 on 2 devices."""
    entry = text[text.index("\nENTRY"):]
    root = re.search(r"ROOT\s+\S+\s*=\s*(\(.*?\)|\S+)\s+[a-z][a-z0-9-]*\(", entry)
    return re.sub(r"\{[^}]*\}|/\*[^*]*\*/", "", root[1]) if root else ""


def count(found: list[dict]) -> dict[str, int]:
    """Number of collectives of each kind (every kind present, 0 when absent)."""
    return {kind: sum(c["op"] == kind for c in found) for kind in KINDS}
