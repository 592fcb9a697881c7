"""The import structure: dependencies point analysis → segcompass → sae, never back; no cycle between
subpackages; no `importlib` / `__import__` of the project's own packages (every link is a plain import that
static tools see). Walks every import statement of the package code, function-level ones included."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("sae", "segcompass", "analysis")
LAYER = {"sae": 0, "segcompass": 1, "analysis": 2}


def _files() -> list[Path]:
    return sorted(p for top in TOPS for p in (ROOT / top).rglob("*.py"))


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """Every project module `path` imports (`from a import b` counts as `a.b` when b is a module)."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}"))
    return {name for name in found if name.split(".")[0] in TOPS}


def _unit(module: str) -> str:
    """The subpackage (or top-level module) a module belongs to: `segcompass.head.model` → `segcompass.head`."""
    return ".".join(module.split(".")[:2])


def _graph() -> dict[str, dict[str, list[str]]]:
    """unit → imported unit → the files that import it."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in _files():
        source = _unit(_module(path))
        for target in map(_unit, _imports(path)):
            if target != source and target not in TOPS:
                graph.setdefault(source, {}).setdefault(target, []).append(str(path.relative_to(ROOT)))
    return graph


def test_nothing_imports_upwards():
    bad = []
    for path in _files():
        low = LAYER[_module(path).split(".")[0]]
        bad += [
            f"{path.relative_to(ROOT)} imports {m}" for m in _imports(path) if LAYER[m.split(".")[0]] > low
        ]
    assert not bad, bad


def test_no_importlib_of_own_packages():
    pattern = re.compile(r"""(import_module|__import__)\(\s*f?["'](\.|sae|segcompass|analysis)""")
    bad = [str(p.relative_to(ROOT)) for p in _files() if pattern.search(p.read_text(encoding="utf-8"))]
    assert not bad, bad


def _cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_subpackages():
    graph = _graph()
    cycles = _cycles(graph)
    detail = {tuple(c): {a: sorted(set(graph[a]) & set(c)) for a in c} for c in cycles}
    assert not cycles, detail


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}) == [["a", "b", "c"]]
