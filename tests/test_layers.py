"""The product's packages import one way, and nothing imports in a circle.

The layer list below is the rule, written once: a module may import its own unit and the floors
below its own, never a sibling unit on its floor nor anything above. Imports under
`if TYPE_CHECKING:` count too: a type-only import is still a dependency a reader must follow.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest floor first. Each floor lists its units (a package, or a group of modules that may
# import each other); units on one floor are siblings and never import each other.
LAYERS: list[list[tuple[str, ...]]] = [
    [
        (
            "rag_core.config",
            "rag_core.documents",
            "rag_core.errors",
            "rag_core.model_source",
            "rag_core.questions",
            "rag_core.golden",
        )
    ],
    [("rag_core.search",)],
    [("rag_core.ingest",), ("rag_core.answer",)],
    [("rag_core.quality",), ("rag_core.models",)],
    [("rag_core.runtime", "rag_core.__main__")],
    [("bot",)],
]
PACKAGES = ("rag_core", "bot")


def _place(module: str) -> tuple[int, int] | None:
    """(floor, unit) of a module; None when the layer list does not name it."""
    for floor, units in enumerate(LAYERS):
        for u, prefixes in enumerate(units):
            if any(module == p or module.startswith(p + ".") for p in prefixes):
                return floor, u
    return None


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The project modules `name` imports (resolving relative imports and `from pkg import mod`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target in known and target != name:
                yield target


def graph(root: Path) -> dict[str, set[str]]:
    found = modules(root)
    return {name: set(imports(name, path, set(found))) for name, path in found.items()}


def upward_imports(root: Path) -> list[str]:
    """Every import that breaks the layer list, as 'importer -> imported'."""
    bad = []
    for name, targets in sorted(graph(root).items()):
        here = _place(name)
        if here is None:
            continue
        for target in sorted(targets):
            there = _place(target)
            if there is None or there == here:
                continue
            if there[0] >= here[0]:
                bad.append(f"{name} -> {target}")
    return bad


def cycles(root: Path) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    edges = graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_product_module_has_a_place_in_the_layers() -> None:
    assert [m for m in modules(ROOT) if _place(m) is None and m not in PACKAGES] == []


def test_no_layer_imports_a_higher_one() -> None:
    assert upward_imports(ROOT) == []


def test_no_import_circles() -> None:
    assert cycles(ROOT) == []


def test_a_planted_upward_import_and_a_planted_circle_are_caught(tmp_path: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package)
    chunking = tmp_path / "rag_core" / "ingest" / "chunking.py"
    chunking.write_text(chunking.read_text() + "\nfrom ..quality import gate  # planted\n")
    assert "rag_core.ingest.chunking -> rag_core.quality.gate" in upward_imports(tmp_path)
    # Within one unit the layers allow it, but store <- retrieval <- store is a circle.
    store = tmp_path / "rag_core" / "search" / "store.py"
    store.write_text(store.read_text() + "\nfrom . import retrieval  # planted\n")
    assert any(
        {"rag_core.search.retrieval", "rag_core.search.store"} <= set(g) for g in cycles(tmp_path)
    )
