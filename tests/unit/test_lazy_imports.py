"""`watch` and `register` import at start every module they could first need later.

A module imported inside a function is loaded when that function first runs: for a daemon that
may be days after its start, after an operator upgraded confsync (or Jinja2, psutil, ...) in
place, and then the new version's file (or none, mid-upgrade) meets the old code in memory.
So every function-level import in a module the long-running commands load must be in
`confsync.preload.LAZY_MODULES`, which they import up front. Add a lazy import on a daemon path
without adding it there and these tests fail, naming the file and line.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import confsync
from confsync.plugins import plugin_modules
from confsync.preload import LAZY_MODULES

PACKAGE = Path(confsync.__file__).parent
REPO = PACKAGE.parent
# What `confsync watch` and `confsync register` import before they start (cli.main).
DAEMON_ROOTS = ("confsync.cli", "confsync.daemon", "confsync.ops.wiring", "confsync.register.run")
# cli.main dispatches: its own function-level imports run at start or are another command's.
START_UP_ONLY = ("confsync.cli",)


@dataclass(frozen=True)
class Import:
    module: str  # where the statement is
    line: int
    target: str  # the module it loads
    names: tuple[str, ...] = ()  # `from target import names` (some may be submodules)
    lazy: bool = False  # inside a function: runs when that function first does
    dynamic: bool = False  # importlib.import_module(<not a literal>)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(module: str, source: str, is_package: bool) -> list[Import]:
    """Every import a module runs (not `if TYPE_CHECKING:` ones), marked lazy when inside a
    function; `importlib.import_module("x")` and `__import__("x")` count as imports of x."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for orelse in child.orelse:
                    visit(orelse, lazy)
                continue
            if isinstance(child, ast.Import):
                found.extend(Import(module, child.lineno, alias.name, lazy=lazy)
                             for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parents = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parents, *([child.module] if child.module else [])])
                found.append(Import(module, child.lineno, base,
                                    tuple(alias.name for alias in child.names), lazy=lazy))
            elif isinstance(child, ast.Call) and ast.unparse(child.func) in (
                    "importlib.import_module", "import_module", "__import__"):
                argument = child.args[0] if child.args else None
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    found.append(Import(module, child.lineno, argument.value, lazy=lazy))
                else:
                    found.append(Import(module, child.lineno, "", lazy=lazy, dynamic=True))
            visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                    ast.Lambda)))

    visit(ast.parse(source), False)
    return found


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def daemon_imports() -> list[Import]:
    """The imports of every confsync module the long-running commands can load, eagerly or
    lazily (closed over both: a lazily imported module's own imports count too)."""
    modules = package_modules()
    seen: set[str] = set()
    todo = list(DAEMON_ROOTS)
    found: list[Import] = []
    while todo:
        name = todo.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parents run first
        for imp in imports_of(name, modules[name].read_text(), modules[name].name == "__init__.py"):
            found.append(imp)
            if name in START_UP_ONLY and imp.lazy:
                continue
            todo.extend([imp.target, *(f"{imp.target}.{n}" for n in imp.names)])
    return found


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def needed(imp: Import) -> list[str]:
    """The modules an import statement loads: `from a.b import c` loads a.b, and a.b.c when c
    is a submodule."""
    return [imp.target, *(f"{imp.target}.{n}" for n in imp.names if is_module(f"{imp.target}.{n}"))]


def loaded_by(code: str) -> frozenset[str]:
    """sys.modules of a fresh interpreter that ran `code`."""
    done = subprocess.run([sys.executable, "-c", f"import json, sys\n{code}\n"
                           "print(json.dumps(sorted(sys.modules)))\n"],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=True)
    return frozenset(json.loads(done.stdout))


@functools.cache
def loaded_after_preload() -> frozenset[str]:
    """sys.modules of a fresh interpreter that did what `watch` and `register` do at start."""
    return loaded_by("import confsync.cli, confsync.daemon, confsync.ops.wiring, "
                     "confsync.register.run\n"
                     "import confsync.preload\n"
                     "confsync.preload.preload_lazy_modules()")


def test_every_lazy_import_on_a_daemon_path_is_imported_at_start() -> None:
    loaded = loaded_after_preload()
    lazy = [imp for imp in daemon_imports()
            if imp.lazy and not imp.dynamic and imp.module not in START_UP_ONLY]
    missing = sorted({f"{imp.module.replace('.', '/')}.py:{imp.line}: {name}"
                      for imp in lazy for name in needed(imp) if name not in loaded})
    assert missing == [], (
        "imported inside a function on a path `watch` or `register` can take, and not "
        f"imported at their start: add each to confsync.preload.LAZY_MODULES: {missing}")


def test_modules_imported_by_name_are_the_plugins_and_are_imported_at_start() -> None:
    dynamic = sorted((imp.module, imp.line) for imp in daemon_imports()
                     if imp.dynamic and imp.module not in START_UP_ONLY)
    assert [module for module, _ in dynamic] == ["confsync.plugins"], (
        f"an import by a computed name on a daemon path: {dynamic}; list what it can load in "
        "confsync.preload.LAZY_MODULES and teach this test about it")
    assert set(plugin_modules()) <= set(LAZY_MODULES)


def test_the_scan_sees_lazy_imports() -> None:
    """The check above can fail: it finds the lazy imports we know of, and tells a function's
    import from a module-level one, a TYPE_CHECKING one and an import by name."""
    found = {(imp.module, imp.target) for imp in daemon_imports() if imp.lazy}
    assert {("confsync.renderer", "jinja2"), ("confsync.processes", "psutil"),
            ("confsync.stores", "confsync.stores.file"),
            ("confsync.render_limits", "ctypes")} <= found
    source = ("from typing import TYPE_CHECKING\nimport os\nif TYPE_CHECKING:\n    import typed\n"
              "def f():\n    import late\n    from .sib import thing\n"
              "    importlib.import_module('named')\n    importlib.import_module(x)\n")
    got = imports_of("pkg.mod", source, is_package=False)
    assert [(i.target, i.names, i.lazy, i.dynamic) for i in got] == [
        ("typing", ("TYPE_CHECKING",), False, False), ("os", (), False, False),
        ("late", (), True, False), ("pkg.sib", ("thing",), True, False),
        ("named", (), True, False), ("", (), True, True)]


def test_a_missing_lazy_module_would_be_reported() -> None:
    loaded = loaded_after_preload() - {"confsync.stores.file"}
    lazy = [imp for imp in daemon_imports() if imp.lazy and not imp.dynamic]
    assert any("confsync.stores.file" in needed(imp) and "confsync.stores.file" not in loaded
               for imp in lazy)


def one_shot_confdir(tmp_path: Path) -> None:
    """A confdir rendering /a of `tmp_path/data.json` (file backend) into a.conf."""
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "a.tmpl").write_text('{{ getv("/a") }}\n')
    (tmp_path / "conf.d" / "a.toml").write_text(
        f'[template]\nsrc = "a.tmpl"\ndest = "{tmp_path}/a.conf"\nkeys = ["/a"]\n')
    (tmp_path / "data.json").write_text('{"a": "1"}')


def test_one_shot_commands_stay_lazy(tmp_path: Path) -> None:
    """`once` imports none of it but what its run needs (Jinja2 and the renderer's `memo` tag
    to render, the file backend it reads): its start-up time is the point of the laziness."""
    one_shot_confdir(tmp_path)
    code = ("import json, sys\n"
            "from confsync.cli import main\n"
            "from confsync.preload import LAZY_MODULES\n"
            "code = main(sys.argv[1:])\n"
            "print(json.dumps([code, [m for m in LAZY_MODULES if m in sys.modules]]))\n")
    done = subprocess.run([sys.executable, "-c", code, "once", "--confdir", str(tmp_path),
                           "--backend", "file", "--file", str(tmp_path / "data.json")],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          # (a CONFSYNC_TEST_* of the suite's own is warned about: difflib)
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("CONFSYNC_")})
    assert json.loads(done.stdout.splitlines()[-1]) == [
        0, ["confsync.stores.file", "confsync.block_memo", "jinja2"]], done.stderr
    assert (tmp_path / "a.conf").read_text() == "1\n"


def test_a_one_shot_run_creates_no_dataclass(tmp_path: Path) -> None:
    """`once` imports neither `dataclasses` (with `inspect`, `ast` and `dis`: ~4 ms when the
    render memo stands in; Jinja2 imports `inspect` for a render) nor the watch loop's failure
    bookkeeping: on Python 3.11 each frozen dataclass execs six generated methods (~0.3 ms
    each), and the ~25 of the one-shot path were a fifth of its instructions (issue 11). A
    record that path creates is a NamedTuple or a plain class."""
    one_shot_confdir(tmp_path)
    code = ("import json, sys\n"
            "from confsync.cli import main\n"
            "code = main(sys.argv[1:])\n"
            "print(json.dumps([code, [m for m in ('dataclasses', 'jinja2', "
            "'confsync.repeated_failures') if m in sys.modules]]))\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CONFSYNC_")},
           "TMPDIR": str(tmp_path)}  # (a render memo of this test's own)
    runs = [subprocess.run([sys.executable, "-c", code, "once", "--confdir", str(tmp_path),
                            "--backend", "file", "--file", str(tmp_path / "data.json")],
                           capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
            for _ in range(2)]
    assert [json.loads(done.stdout.splitlines()[-1]) for done in runs] == [
        [0, ["jinja2"]],  # the first run renders
        [0, []]], [done.stderr for done in runs]  # the second: the memo's render is in place
    assert (tmp_path / "a.conf").read_text() == "1\n"


# Standard-library modules a one-shot run does without (issue 11), by what brought them in:
# argparse (and the gettext and locale its messages go through) for a plain command line
# (fast_argv.py); the log writer's queue; tempfile, and the shutil, bz2 and lzma it imports,
# for the memo's directory (private_tmp.py: a render imports them anyway, with Jinja2).
NOT_FOR_A_PLAIN_RUN = ("argparse", "gettext", "locale", "queue")
NOT_WHEN_THE_MEMO_STANDS_IN = (*NOT_FOR_A_PLAIN_RUN, "tempfile", "shutil", "bz2", "lzma")


def test_a_one_shot_run_leaves_out_the_standard_library_it_does_not_use(tmp_path: Path) -> None:
    one_shot_confdir(tmp_path)
    code = ("import json, sys\n"
            "from confsync.cli import main\n"
            "code = main(sys.argv[1:])\n"
            f"print(json.dumps([code, [m for m in {NOT_WHEN_THE_MEMO_STANDS_IN!r} "
            "if m in sys.modules]]))\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CONFSYNC_")},
           "TMPDIR": str(tmp_path)}  # (a render memo of this test's own)
    runs = [subprocess.run([sys.executable, "-c", code, "once", "--confdir", str(tmp_path),
                            "--backend", "file", "--file", str(tmp_path / "data.json"),
                            "--log-level", "info"],
                           capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
            for _ in range(2)]
    first, second = (json.loads(done.stdout.splitlines()[-1]) for done in runs)
    assert first[0] == 0 and not set(first[1]) & set(NOT_FOR_A_PLAIN_RUN), runs[0].stderr
    assert second == [0, []], runs[1].stderr  # the memo's render is in place
    assert (tmp_path / "a.conf").read_text() == "1\n"


# The modules whose records a one-shot run makes before it asks etcd, written without
# `from __future__ import annotations` for it (see their heads).
RECORDS_BEFORE_THE_READ = ("confsync.settings", "confsync.resources", "confsync.stores.base")


def test_the_records_made_before_the_read_compile_no_annotation() -> None:
    """A NamedTuple's annotations given as strings (`from __future__ import annotations`) are
    each compiled into a typing.ForwardRef as the class is made: ~40,000 instructions a field,
    60 fields of these modules, on every run before its request to etcd goes out (issue 11)."""
    import importlib
    import typing

    for name in RECORDS_BEFORE_THE_READ:
        module = importlib.import_module(name)
        records = [v for v in vars(module).values() if isinstance(v, type)
                   and v.__module__ == name and issubclass(v, tuple) and hasattr(v, "_fields")]
        assert records, name
        for record in records:
            compiled = [field for field, annotation in record.__annotations__.items()
                        if isinstance(annotation, typing.ForwardRef)]
            assert not compiled, f"{name}.{record.__name__}: {compiled}"


def test_the_sync_step_loads_after_the_read_starts() -> None:
    """`prepare` starts the read of etcd, then loads the sync step while the answer is
    awaited: as an import of `oneshot` itself it would delay the request (issue 11)."""
    assert not loaded_by("import confsync.oneshot") & {"confsync.sync", "confsync.targets"}
