"""The design picture's arrows go one way: no module of confsync imports, even lazily inside a
function, a module that imports it back (directly or through others). Imports only for type
checking (`if TYPE_CHECKING:`) do not count: they never run."""

from __future__ import annotations

import ast
from pathlib import Path

import confsync

PACKAGE = Path(confsync.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every confsync module `path` imports at run time, wherever the import statement is."""
    tree = ast.parse(path.read_text())
    type_only = {id(node) for block in ast.walk(tree)
                 if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                 for node in ast.walk(block)}
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parents, *([node.module] if node.module else [])])
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: imported_modules(path, known) - {name} for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "confsync.stores.base" in graph["confsync.stores.etcd"]
    assert "confsync.confd_funcs" in graph["confsync.convert.runtime"]
    # A lazy import inside a function counts: the factory imports its backends.
    assert "confsync.stores.etcd" in graph["confsync.stores"]


def test_no_module_imports_itself_back() -> None:
    assert cycles(import_graph()) == []


def test_a_cycle_would_be_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_registrar_does_not_load_the_render_path() -> None:
    """`register` shares the store, settings, supervisor and metrics server with `watch`, not
    its render path: it loaded sync, renderer and mirror through the metrics server and the
    supervisor (memory on every node, and one more thing a registrar could break on)."""
    import subprocess
    import sys

    code = ("import sys, confsync.cli, confsync.register.run\n"
            "print(sorted(m for m in sys.modules if m in ('confsync.sync', 'confsync.renderer',"
            " 'confsync.mirror', 'confsync.daemon', 'jinja2')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout
