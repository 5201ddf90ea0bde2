"""The shape of the code, checked: no import cycles, no Prefect in the library, small modules,
one reader of the environment, and a module map (docs/architecture.md) that matches the tree.

Static checks over the source (ast), so they are fast and see function-level imports too.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
from helpers_ast import parse

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "omnifer"
MAX_LINES = 400
SETTINGS_MODULE = "omnifer.config"


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules(root: Path = LIBRARY) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(root.rglob("*.py"))}


def _imports(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (function-level included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(path, name) if m in modules and m != name}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_library() -> None:
    graph = _graph()
    assert len(graph) > 50  # the walk found the package
    assert _cycles(graph) == []


def test_no_library_module_imports_prefect() -> None:
    offenders = sorted(name for name, path in _modules().items()
                       if any(m == "prefect" or m.startswith("prefect.")
                              for m in _imports(path, name)))
    assert offenders == []


def test_library_modules_are_small() -> None:
    big = {name: n for name, path in _modules().items()
           if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def _environment_reads(path: Path) -> list[int]:
    """Lines of ``path`` that touch ``os.environ``/``os.getenv``/``os.putenv`` (any form)."""
    tree = parse(path)
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv",
                                                              "environb", "getenvb"):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os" and any(
                a.name in ("environ", "getenv", "environb", "getenvb") for a in node.names):
            lines.append(node.lineno)
    return lines


def test_only_the_settings_module_reads_the_environment() -> None:
    code = {**_modules(), **_modules(REPO / "tasks"), **_modules(REPO / "flows")}
    readers = {name: lines for name, path in code.items()
               if name != SETTINGS_MODULE and (lines := _environment_reads(path))}
    assert readers == {}
    assert _environment_reads(code[SETTINGS_MODULE])  # the check can see a read


MAP_ENTRY = re.compile(r"^\|\s*`((?:omnifer|tasks|flows)/[\w/]+\.py)`\s*\|\s*(.+?)\s*\|\s*$")


def test_architecture_map_lists_every_module_once() -> None:
    text = (REPO / "docs" / "architecture.md").read_text()
    listed = [m.group(1) for line in text.splitlines() if (m := MAP_ENTRY.match(line))]
    described = [m.group(2) for line in text.splitlines() if (m := MAP_ENTRY.match(line))]
    tree = sorted(str(p.relative_to(REPO)) for d in ("omnifer", "tasks", "flows")
                  for p in (REPO / d).rglob("*.py"))
    duplicates = sorted({p for p in listed if listed.count(p) > 1})
    assert duplicates == []
    assert sorted(set(tree) - set(listed)) == []  # in the tree, not on the map
    assert sorted(set(listed) - set(tree)) == []  # on the map, not in the tree
    assert all(len(d) > 10 for d in described)  # each with its one line


@pytest.mark.parametrize("module", ["omnifer.truth"])
def test_documented_old_paths_still_import(module: str) -> None:
    import importlib

    with pytest.warns(DeprecationWarning):
        sys.modules.pop(module, None)
        importlib.import_module(module)


# Each library package and its layer: a module may import its own layer and the ones below,
# never above (docs/architecture.md, "Layers of the library").
LAYERS: dict[str, int] = {
    "omnifer": 0, "errors": 0, "labels": 0, "version": 0, "config": 0, "devices": 0, "logs": 0,
    "runtime": 0, "params": 0, "config_sections": 0,
    "storage": 1, "imaging": 1,
    "sources": 2, "catalog": 2, "labeled": 2,
    "models": 3, "faces": 3,
    "curation": 4, "demo": 4,
    "distill": 5,
    "training": 6, "pipeline": 6, "report": 6, "erasure": 6,
    "testing": 7, "truth": 7, "cli": 7, "__main__": 7,
}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_package_has_a_layer_and_imports_only_downwards() -> None:
    graph = _graph()
    assert sorted({_package(m) for m in graph} - set(LAYERS)) == []
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                    if LAYERS[_package(b)] > LAYERS[_package(a)])
    assert upward == []


def test_benchmarks_import_what_exists() -> None:
    """Benchmarks run by hand, not in the suite: every ``omnifer`` module and name they import
    (function-level imports included) must exist, or a benchmark breaks unseen after a move."""
    import importlib

    missing = []
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Import):
                pairs = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                pairs = [(node.module or "", a.name) for a in node.names]
            else:
                continue
            for module, name in pairs:
                if module.split(".")[0] not in ("omnifer", "flows", "tasks"):
                    continue
                try:
                    found = importlib.import_module(module)
                    if name and not hasattr(found, name):
                        importlib.import_module(f"{module}.{name}")
                except ImportError:
                    missing.append(f"{path.name}:{node.lineno} {module} {name or ''}".strip())
    assert missing == []
