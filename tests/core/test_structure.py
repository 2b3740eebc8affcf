"""The package's layers point one way, and no module imports itself round a cycle.

Read from the source (``ast``), so every import counts, the ones inside functions too, and nothing has to be
importable for the check to run. The layers, lowest first::

    core        schema, corpora, prompts, parsing, metrics, aggregation, compression, sampling, ...  (pure)
    models      fedmedlora.lm, fedmedlora.encoder                      (torch, transformers, peft)
    flower      fedmedlora.federation, fedmedlora.deploy               (flwr, Flower's processes)
    recipes     fedmedlora.recipes                                     (orchestration)
    cli         fedmedlora.cli

A module may import modules of its own layer or a lower one. Every module of ``src/fedmedlora`` must belong to a
layer (a new top-level module has to be placed here), and an import of a ``fedmedlora`` module that does not exist
fails too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "fedmedlora"

#: layer name -> module-name prefixes (a prefix matches the module itself and everything below it)
LAYERS: dict[str, tuple[str, ...]] = {
    "core": (
        "fedmedlora",  # the package __init__ only (exact match, see layer_of)
        "fedmedlora.aggregation",
        "fedmedlora.benchmark",
        "fedmedlora.benchmark_stats",
        "fedmedlora.compression",
        "fedmedlora.config",
        "fedmedlora.constraints",
        "fedmedlora.corpora",
        "fedmedlora.extract",
        "fedmedlora.html_report",
        "fedmedlora.intervals",
        "fedmedlora.jsonl",
        "fedmedlora.metrics",
        "fedmedlora.parsing",
        "fedmedlora.partition",
        "fedmedlora.prepare",
        "fedmedlora.privacy",
        "fedmedlora.progress",
        "fedmedlora.prompts",
        "fedmedlora.reports",
        "fedmedlora.runs",
        "fedmedlora.sampling",
        "fedmedlora.schema",
        "fedmedlora.screening",
        "fedmedlora.segment",
        "fedmedlora.span_errors",
        "fedmedlora.splits",
        "fedmedlora.stopping",
    ),
    "models": ("fedmedlora.lm", "fedmedlora.encoder"),
    "flower": ("fedmedlora.federation", "fedmedlora.deploy"),
    "recipes": ("fedmedlora.recipes",),
    "cli": ("fedmedlora.cli",),
}
ORDER = list(LAYERS)
#: third-party libraries a layer must never import (not even lazily inside a function)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": ("torch", "transformers", "peft", "flwr", "safetensors", "opacus"),
    "models": ("flwr",),
}


def discover(src: Path = SRC) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` under ``src/fedmedlora``."""
    mods = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def imports_of(name: str, path: Path) -> list[tuple[int, str]]:
    """``(line, imported module or module.attribute)`` for every import statement in the file, nested ones too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return found


def layer_of(module: str) -> str | None:
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if module == prefix or (prefix != PACKAGE and module.startswith(prefix + ".")):
                return layer
    return None


def internal_edges(mods: dict[str, Path], src: Path = SRC) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the fedmedlora modules it imports; and the problems found on the way (unknown modules)."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    problems: list[str] = []
    for name, path in mods.items():
        for line, target in imports_of(name, path):
            if target.split(".")[0] != PACKAGE:
                continue
            if target in mods:
                if target != name:
                    edges[name].add(target)
                continue
            parent = target.rpartition(".")[0]
            if parent in mods:  # ``from fedmedlora.x import name``: an attribute of a known module
                continue
            problems.append(f"{path.relative_to(src)}:{line}: imports {target}, which is no module of {PACKAGE}")
    return edges, problems


def layer_violations(mods: dict[str, Path], edges: dict[str, set[str]]) -> list[str]:
    out = []
    for name, targets in edges.items():
        here = layer_of(name)
        for target in sorted(targets):
            there = layer_of(target)
            if here is not None and there is not None and ORDER.index(there) > ORDER.index(here):
                out.append(f"{name} ({here}) imports {target} ({there}): layers point the other way")
    return out


def forbidden_imports(mods: dict[str, Path]) -> list[str]:
    out = []
    for name, path in mods.items():
        banned = FORBIDDEN.get(layer_of(name) or "", ())
        for line, target in imports_of(name, path):
            if target.split(".")[0] in banned:
                out.append(f"{path.relative_to(SRC)}:{line}: {name} ({layer_of(name)}) imports {target}")
    return out


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a closed path of module names), or ``None``."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


# ---- the checks on this repository ------------------------------------------------------------------------------


MODS = discover()
EDGES, UNKNOWN = internal_edges(MODS)


def test_every_module_has_a_layer():
    assert len(MODS) > 40, f"found only {len(MODS)} modules under {SRC / PACKAGE}"
    unplaced = sorted(m for m in MODS if layer_of(m) is None)
    assert not unplaced, f"modules in no layer (add them to LAYERS in {Path(__file__).name}): {unplaced}"


def test_every_package_folder_is_a_regular_package():
    # a folder without __init__.py is a namespace package: it imports in a checkout, but setuptools does not ship it
    folders = {p.parent for p in (SRC / PACKAGE).rglob("*.py")}
    missing = sorted(str(f.relative_to(SRC)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"package folders without __init__.py: {missing}"


def test_imports_name_existing_modules():
    assert not UNKNOWN, "\n".join(UNKNOWN)


def test_layers_point_one_way():
    violations = layer_violations(MODS, EDGES)
    assert not violations, "\n".join(violations)


def test_core_and_models_avoid_the_heavy_libraries_of_higher_layers():
    found = forbidden_imports(MODS)
    assert not found, "\n".join(found)


def test_no_import_cycle():
    cycle = find_cycle(EDGES)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# ---- the checker itself catches what it must ---------------------------------------------------------------------


@pytest.fixture
def fake_tree(tmp_path):
    """A copy of this package's source in which one file can be edited."""
    import shutil

    shutil.copytree(SRC / PACKAGE, tmp_path / PACKAGE, ignore=shutil.ignore_patterns("sample_data", "__pycache__"))
    return tmp_path


def _check(src: Path) -> tuple[list[str], list[str], list[str] | None]:
    mods = discover(src)
    edges, unknown = internal_edges(mods, src)
    return unknown, layer_violations(mods, edges), find_cycle(edges)


def _add_function_import(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + f"\n\ndef _late():\n    {line}\n", encoding="utf-8")


def test_checker_flags_orchestration_imported_from_the_core(fake_tree):
    # the old extract.py reached up for the session through a function-local import
    _add_function_import(fake_tree / PACKAGE / "extract.py", "from fedmedlora.experiments import Session")
    unknown, _, _ = _check(fake_tree)
    assert any("extract.py" in u and "fedmedlora.experiments" in u for u in unknown)
    _add_function_import(fake_tree / PACKAGE / "extract.py", "from fedmedlora.lm.session import Session")
    _, violations, _ = _check(fake_tree)
    assert any(v.startswith("fedmedlora.extract (core) imports fedmedlora.lm.session") for v in violations)


def test_checker_flags_a_cycle_inside_one_layer(fake_tree):
    # corpora.common <-> corpora.brat was such a cycle, hidden in a function
    _add_function_import(fake_tree / PACKAGE / "corpora" / "common.py", "from fedmedlora.corpora.brat import read_brat")
    _, violations, cycle = _check(fake_tree)
    assert not violations
    assert cycle is not None and "fedmedlora.corpora.common" in cycle and "fedmedlora.corpora.brat" in cycle
