"""The house rules of docs/ARCHITECTURE.md, held against the imports of every module.

The table between the ``import rules`` markers of the architecture document is the rule: each row names a part and
the parts it may import. This test reads every ``import`` statement of every module of the project (at any depth of
the file: a lazy import inside a function counts) and fails naming the file, the line and the rule it breaks.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGES = ("smyrf", "biggan")  # parts live here; everything else of the tree is an entry point
ENTRY_POINTS = ("train.py", "sample.py", "data", "benchmarks", "scripts")
ONLY_RUNTIME = ("torch_xla", "torch.distributed")  # device/distributed modules only the seam may import


def _rules() -> dict[str, set[str]]:
    """{part: parts it may import}, read from the document's table."""
    text = DOC.read_text()
    block = re.search(r"<!-- import rules: begin -->(.*?)<!-- import rules: end -->", text, re.S)
    assert block, f"{DOC} lost its import-rules table markers"
    rules = {}
    for line in block.group(1).strip().splitlines()[2:]:  # skip the header and the |---| line
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        part = cells[0].strip("`")
        allowed = set(re.findall(r"`([\w.]+)`", cells[-1]))
        rules[part] = allowed
    return rules


def _part_of(module: str, parts: set[str]) -> str | None:
    """The longest part that ``module`` is or is inside (``biggan.models.attention`` -> ``biggan.models``)."""
    best = None
    for part in parts:
        if module == part or module.startswith(part + "."):
            if best is None or len(part) > len(best):
                best = part
    return best


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path).split(".")
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]  # `from pkg import sub`
    return found


def _project_files(*roots: str) -> list[Path]:
    files = []
    for root in roots:
        path = ROOT / root
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return [f for f in files if ".venv" not in f.parts]


def _problems(module_name: str, imports: list[tuple[int, str]], rules: dict[str, set[str]]) -> list[str]:
    """What breaks the rules among ``imports`` of the module ``module_name``."""
    parts = set(rules)
    owner = _part_of(module_name, parts)
    if owner is None and module_name in PACKAGES:  # the bare namespace (biggan/__init__.py) imports nothing
        return [f"{module_name}:{line} imports {module}: {module_name}/__init__.py imports nothing"
                for line, module in imports]
    if owner is None:
        return [f"{module_name}: belongs to no part of the architecture table"]
    problems: list[str] = []
    reported: set[tuple[int, str]] = set()  # `from pkg import a, b` yields pkg, pkg.a, pkg.b: report the part once
    for line, module in imports:
        where = f"{module_name}:{line} imports {module}"
        target = _part_of(module, parts)
        if target is not None:
            if target != owner and target not in rules[owner] and (line, target) not in reported:
                reported.add((line, target))
                problems.append(f"{where}: {owner} may not import {target}")
        elif module.split(".")[0] in PACKAGES:  # a project module that no row covers
            problems.append(f"{where}: no part of the architecture table holds {module}")
        elif owner == "smyrf" and module.split(".")[0] not in ("torch", *sys.stdlib_module_names):
            problems.append(f"{where}: smyrf imports only torch and the standard library")
        elif owner != "biggan.runtime" and any(module == m or module.startswith(m + ".") for m in ONLY_RUNTIME):
            problems.append(f"{where}: only biggan.runtime imports torch_xla / torch.distributed")
    return problems


def _violations() -> list[str]:
    rules = _rules()
    problems = []
    for path in _project_files(*PACKAGES):
        problems += _problems(_module_name(path), _imports(path), rules)
    for path in _project_files(*PACKAGES, *ENTRY_POINTS):
        if path.stem in ("utils", "util"):
            problems.append(f"{path.relative_to(ROOT)}: no file is called utils")
    return problems


def test_the_rules_table_covers_every_package_and_names_only_parts() -> None:
    rules = _rules()
    assert {"smyrf", "biggan.runtime", "biggan.models", "biggan.training"} <= set(rules)
    for part, allowed in rules.items():
        assert allowed <= set(rules), f"{part} may import unknown parts {sorted(allowed - set(rules))}"
    packages = {_module_name(p) for p in _project_files("biggan") if p.name == "__init__.py"} - {"biggan"}
    assert packages <= set(rules), f"packages without a row: {sorted(packages - set(rules))}"


def test_every_import_follows_the_architecture() -> None:
    problems = _violations()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "module, imported, message",
    [
        ("biggan.fid.evaluate", "biggan.training.loop", "biggan.fid may not import biggan.training"),
        ("biggan.data.prepare", "biggan.fid", "biggan.data may not import biggan.fid"),
        ("biggan.config", "biggan.training.config", "biggan.config may not import biggan.training"),
        ("biggan.models.attention", "biggan.runtime", "biggan.models may not import biggan.runtime"),
        ("smyrf.fused", "numpy", "smyrf imports only torch"),
        ("biggan.training.loop", "torch.distributed", "only biggan.runtime imports"),
        ("biggan.training.loop", "biggan.nowhere", "no part of the architecture table holds"),
    ],
)
def test_a_broken_rule_is_caught(module: str, imported: str, message: str) -> None:
    """The checker itself: each of these imports breaks a rule of the table, and is reported."""
    problems = _problems(module, [(1, imported)], _rules())
    assert len(problems) == 1 and message in problems[0], problems


def test_relative_imports_are_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "biggan" / "fid"
    package.mkdir(parents=True)
    (package / "x.py").write_text("from ..training import loop\nfrom . import stats\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert [m for _, m in _imports(package / "x.py")] == [
        "biggan.training", "biggan.training.loop", "biggan.fid", "biggan.fid.stats"]
