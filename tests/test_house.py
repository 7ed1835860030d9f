"""The house rules of docs/architecture.md: imports go down, no import cycles, units stay small.

Every import inside ``src/convlens`` is read with ``ast`` (module-level, in-function and under
``if TYPE_CHECKING:`` alike), so an import written inside a function to dodge a cycle is still
seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "convlens"

# the layers, bottom first: a module may import its own layer and the ones below
LAYERS = {"core": 0, "data": 0, "techniques": 1, "workflows": 2, "apps": 3}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the convlens modules it imports (a package's own members excepted)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in mods:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if not target or target == name:
                    continue
                own = (path.name == "__init__.py" and target.startswith(name + ".")) or (
                    mods[target].name == "__init__.py" and name.startswith(target + ".")
                )
                if not own:
                    graph[name].add(target)
    return graph


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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


def test_no_import_cycles() -> None:
    assert cycles(imports(modules())) == []


def test_cycle_finder_sees_imports_inside_functions(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    source = "def f():\n    from convlens.core import model\n"
    found = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    assert found and found[0].module == "convlens.core"


def test_every_module_is_in_a_layer() -> None:
    loose = [m for m in modules() if m != "convlens" and layer(m) is None]
    assert loose == [], f"modules outside core/, data/, techniques/, workflows/, apps/: {loose}"


def test_imports_go_down() -> None:
    graph = imports(modules())
    upward = [
        f"{m} ({layer(m)}) imports {t} ({layer(t)})"
        for m, targets in sorted(graph.items())
        for t in sorted(targets)
        if layer(m) is not None and layer(t) is not None and layer(t) > layer(m)  # type: ignore[operator]
    ]
    assert upward == []


@pytest.mark.parametrize("limit_module, limit_function", [(700, 100)])
def test_units_stay_small(limit_module: int, limit_function: int) -> None:
    long_modules = []
    long_functions = []
    for name, path in sorted(modules().items()):
        text = path.read_text()
        if len(text.splitlines()) > limit_module:
            long_modules.append(f"{name} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > limit_function:
                    long_functions.append(f"{name}.{node.name} ({length} lines)")
    assert long_modules == []
    assert long_functions == []
