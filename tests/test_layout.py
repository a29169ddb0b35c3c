"""The package's import directions (STYLE.md section 2), read from every module with ``ast``.

    cli -> api -> reporting -> {attribution, audit, synthesis, views} -> inspector
        -> {graph, autodiff, io, render, runtime} -> {structs, errors}

A capability package never imports another; the core never imports a capability, the
inspector, ``api`` or ``cli``; ``graph`` and ``autodiff`` never import onnxruntime; nothing but
``__main__`` imports ``cli``. ``api`` (the facade) and the package ``__init__`` may import
anything below ``cli``; ``cli`` may use the facade and ``__version__``.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "onnx_featviz"

#: Level of each top-level unit: a unit may import units of a strictly lower level, or its own
#: unit. Capabilities share a level, so they cannot import each other.
LEVELS = {
    "errors": 0, "structs": 1,
    "graph": 2, "autodiff": 2, "io": 2, "render": 2, "runtime": 2,
    "inspector": 3,
    "attribution": 4, "audit": 4, "synthesis": 4, "views": 4,
    "reporting": 5,  # the report run gathers views, attribution and audit together
    "api": 6, "__init__": 7,
    "cli": 8, "__main__": 9,
}
#: Inside the core, these edges between units of one level are allowed.
CORE_EDGES = {("autodiff", "graph")}
#: Units that read protos only.
PURE = {"graph", "autodiff"}
#: Third-party modules a pure unit may not import.
IMPURE = {"onnxruntime"}


def unit_of(path: Path, root: Path) -> str:
    """``graph`` for graph/catalog.py, ``inspector`` for inspector.py, ``__init__``..."""
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_units(tree: ast.AST, package: str, root: Path) -> Iterator[tuple[str, int]]:
    """Yield (unit, line) for every import of ``package.<unit>`` in ``tree`` (lazy ones too).

    ``from package import name`` of a name that is no submodule (``__version__``) imports the
    package's ``__init__``.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == package:  # from onnx_featviz import api, cli
                names = [f"{package}.{a.name}" if (root / a.name).is_dir()
                         or (root / f"{a.name}.py").is_file() else f"{package}.__init__"
                         for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == package and len(parts) > 1:
                yield parts[1], node.lineno
            elif parts[0] in IMPURE:
                yield f"!{parts[0]}", node.lineno


def violations(root: Path, package: str = "onnx_featviz") -> list[str]:
    """Every import in the tree at ``root`` against the allowed directions, as readable lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        unit = unit_of(path, root)
        for target, line in imported_units(ast.parse(path.read_text()), package, root):
            where = f"{path.relative_to(root)}:{line}"
            if target.startswith("!"):
                if unit in PURE:
                    found.append(f"{where}: {unit} is pure but imports {target[1:]}")
                continue
            if target == unit or (unit, target) in CORE_EDGES:
                continue
            if target not in LEVELS:
                found.append(f"{where}: unknown unit {target!r}; add it to LEVELS")
            elif target == "cli" and unit != "__main__":
                found.append(f"{where}: {unit} imports cli (only __main__ may)")
            elif LEVELS[target] >= LEVELS[unit]:
                found.append(f"{where}: {unit} (level {LEVELS[unit]}) imports {target} "
                             f"(level {LEVELS[target]})")
    return found


def test_every_unit_has_a_level() -> None:
    units = {unit_of(p, PACKAGE) for p in PACKAGE.rglob("*.py")}
    assert units - set(LEVELS) == set()


def test_package_imports_follow_the_allowed_directions() -> None:
    assert violations(PACKAGE) == []


@pytest.mark.parametrize(("module", "line", "expected"), [
    ("audit/bad.py", "import onnx_featviz.attribution.run as r\n",
     "audit (level 4) imports attribution (level 4)"),
    ("graph/bad.py", "from onnx_featviz import inspector\n",
     "graph (level 2) imports inspector (level 3)"),
    ("render/bad.py", "from onnx_featviz.audit.metrics import drift_metrics\n",
     "render (level 2) imports audit (level 4)"),
    ("inspector_bad.py", "def lazy():\n    from onnx_featviz.cli import main\n",
     "imports cli (only __main__ may)"),
    ("graph/bad2.py", "import onnxruntime\n", "graph is pure but imports onnxruntime"),
    ("io/bad.py", "from onnx_featviz import api\n", "io (level 2) imports api (level 6)"),
])
def test_a_planted_bad_import_is_caught(tmp_path: Path, module: str, line: str,
                                        expected: str) -> None:
    tree = tmp_path / "onnx_featviz"
    shutil.copytree(PACKAGE, tree, ignore=shutil.ignore_patterns("__pycache__"))
    assert violations(tree) == []  # the copy is clean
    if module == "inspector_bad.py":  # a top-level module of the inspector's level
        (tree / "inspector.py").write_text((tree / "inspector.py").read_text() + "\n" + line)
    else:
        (tree / module).write_text(line)
    found = violations(tree)
    assert len(found) == 1 and expected in found[0], found
