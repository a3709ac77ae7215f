"""`once`'s render memo stands in for a render only when every input is the same.

Each test runs `confsync once` (file backend) as a process, with its own TMPDIR (where the memo
lives), and reads from the debug log whether the memo stood in for the render. The danger is a
memo that keeps a stale file, so most tests change one input and check the file follows it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from confsync import cache_prune, render_purity
from confsync.convert.runtime import RUNTIME_FUNCTIONS
from confsync.filters import VALIDATING_FILTERS
from confsync.renderer import Renderer
from tests.support.cli import REPO, write_resource

MEMO = "a render with the same inputs wrote it"
TEMPLATE = "{% for kv in gets('/svc/*') %}server {{ kv.key | base }} {{ kv.value }}\n{% endfor %}"


class Setup:
    def __init__(self, tmp_path: Path, template: str = TEMPLATE, body: str = "") -> None:
        self.confdir = tmp_path / "cd"
        self.dest = tmp_path / "out.conf"
        self.data = tmp_path / "data.yaml"
        self.tmpdir = tmp_path / "tmp"
        self.tmpdir.mkdir()
        self.data.write_text("svc:\n  a: 10.0.0.1:80\n  b: 10.0.0.2:80\n")
        write_resource(self.confdir, "pool", template,
                       f'dest = "{self.dest}"\nkeys = ["/svc"]\n{body}')

    def once(self, *extra: str, env: dict[str, str] | None = None,
             cwd: Path = REPO) -> tuple[int, bool]:
        """Run `once`: its exit status, and whether the memo stood in for the render."""
        done = subprocess.run(
            [sys.executable, "-m", "confsync", "once", "--confdir", str(self.confdir),
             "--backend", "file", "--file", str(self.data), "--log-level", "debug", *extra],
            capture_output=True, text=True, cwd=cwd, timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(self.tmpdir),
                 **(env or {})})
        return done.returncode, MEMO in done.stderr


def test_the_same_inputs_again_skip_the_render_and_leave_the_file_as_it_is(
        tmp_path: Path) -> None:
    s = Setup(tmp_path)
    assert s.once() == (0, False)
    written = s.dest.read_bytes()
    assert written == b"server a 10.0.0.1:80\nserver b 10.0.0.2:80\n"
    assert s.once() == (0, True)
    assert s.dest.read_bytes() == written
    entries = [p for p in (s.tmpdir / f"confsync-memo-{os.geteuid()}").iterdir()
               if p.name != cache_prune.MARKER]
    assert len(entries) == 1 and written not in entries[0].read_bytes()  # digests only
    assert s.once(env={"CONFSYNC_RENDER_MEMO": "false"}) == (0, False)


@pytest.mark.parametrize("variable", ["TMPDIR", "TEMP"])
def test_run_from_the_temporary_directory_the_memo_is_used(tmp_path: Path,
                                                            variable: str) -> None:
    """`cd /tmp && confsync once` (a cron job, a container whose WORKDIR is /tmp; here TEMP
    names it, as /tmp names itself): the working directory is the temporary directory that
    was asked for, not tempfile's last resort, yet the memo was refused and every run
    rendered."""
    s = Setup(tmp_path)
    env = {"TMPDIR": "", variable: str(s.tmpdir)}  # (an empty TMPDIR is passed over)
    assert s.once(env=env, cwd=s.tmpdir) == (0, False)
    assert s.once(env=env, cwd=s.tmpdir) == (0, True)
    assert s.dest.read_text() == "server a 10.0.0.1:80\nserver b 10.0.0.2:80\n"


def test_changed_data_is_rendered(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.once()
    s.data.write_text("svc:\n  a: 10.0.0.1:80\n  b: 10.0.0.9:80\n")
    assert s.once() == (0, False)
    assert s.dest.read_text() == "server a 10.0.0.1:80\nserver b 10.0.0.9:80\n"


def test_an_edited_template_or_included_file_is_rendered(tmp_path: Path) -> None:
    s = Setup(tmp_path, "{% include 'part.tmpl' %}" + TEMPLATE)
    (s.confdir / "templates" / "part.tmpl").write_text("# one\n")
    s.once()
    (s.confdir / "templates" / "part.tmpl").write_text("# two\n")  # same size
    assert s.once() == (0, False)
    assert s.dest.read_text().startswith("# two\n")
    (s.confdir / "templates" / "pool.tmpl").write_text("{% include 'part.tmpl' %}end\n")
    assert s.once() == (0, False)
    assert s.dest.read_text() == "# two\nend\n"


def test_an_edited_resource_or_global_setting_is_rendered(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.once()
    (s.confdir / "conf.d" / "pool.toml").write_text(
        f'[template]\nsrc = "pool.tmpl"\ndest = "{s.dest}"\nkeys = ["/svc/a"]\n')
    assert s.once() == (0, False)
    assert s.dest.read_text() == "server a 10.0.0.1:80\n"
    assert s.once() == (0, True)
    assert s.once(env={"CONFSYNC_MAX_OUTPUT_SIZE": "1MiB"}) == (0, False)


def test_a_dest_changed_by_hand_is_rendered_again(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.once()
    written = s.dest.read_bytes()
    s.dest.write_bytes(written.replace(b"10.0.0.2", b"10.6.6.6"))
    assert s.once() == (0, False)
    assert s.dest.read_bytes() == written


def test_a_render_that_reads_the_environment_is_never_memoized(tmp_path: Path) -> None:
    s = Setup(tmp_path, "{{ getenv('ZONE') }}\n")
    assert s.once(env={"ZONE": "eu"}) == (0, False)
    assert s.once(env={"ZONE": "eu"}) == (0, False)
    assert s.once(env={"ZONE": "us"}) == (0, False)
    assert s.dest.read_text() == "us\n"


def test_a_render_that_left_a_value_out_is_never_memoized(tmp_path: Path) -> None:
    s = Setup(tmp_path, "{% for kv in gets('/svc/*', skip_invalid=True) %}"
                        "{{ kv.value | hostport }}\n{% endfor %}")
    s.data.write_text("svc:\n  a: 10.0.0.1:80\n  b: 'not an address'\n")
    assert s.once() == (0, False)
    assert s.once() == (0, False)
    assert s.dest.read_text() == "10.0.0.1:80\n"


@pytest.mark.parametrize("spoil", ["mode", "link", "garbage"])
def test_a_memo_that_is_not_private_or_not_readable_is_a_render(tmp_path: Path,
                                                                spoil: str) -> None:
    s = Setup(tmp_path)
    s.once()
    memo = s.tmpdir / f"confsync-memo-{os.geteuid()}"
    if spoil == "mode":
        memo.chmod(0o777)  # anyone could write entries
    elif spoil == "link":
        other = tmp_path / "elsewhere"
        memo.rename(other)
        memo.symlink_to(other)
    else:
        for entry in memo.iterdir():
            entry.write_text("confsync-render-memo-1 x y z\n")
    s.dest.write_text("edited\n")
    assert s.once() == (0, False)
    assert s.dest.read_text().startswith("server a")
    assert s.once() == (0, spoil == "garbage")  # a good one is written again over garbage


# Every function a template can call is either a function of its arguments (a render using
# only these is a function of its inputs) or counted as impure (render_purity.py). A new
# function must be put in one of the two.
PURE = {
    # Jinja's own
    "abs", "attr", "batch", "d", "capitalize", "center", "count", "cycler", "default", "dict",
    "dictsort", "e", "escape", "filesizeformat", "first", "float", "forceescape", "format",
    "groupby", "indent", "int", "items", "join", "joiner", "last", "length", "list", "lower",
    "map", "max", "min", "namespace", "pprint", "range", "reject", "rejectattr", "replace",
    "reverse", "round", "safe", "select", "selectattr", "slice", "sort", "string", "striptags",
    "sum", "title", "tojson", "trim", "truncate", "unique", "upper", "urlencode", "urlize",
    "wordcount", "wordwrap", "xmlattr",
    # confd's
    "base", "dir", "split", "jsonArray", "toUpper", "toLower", "contains", "trimSuffix",
    "base64Encode", "base64Decode", "parseBool", "sortByLength", "sortKVByLength", "add", "sub",
    "div", "mod", "mul", "seq", "atoi", "trimPrefix", "toJson", "sha256sum",
    # confsync's
    "fromjson", "multiline", "dirname",
    # what a `{% memo %}` block calls (block_memo.py): outputs by the exact inputs
    "memo:lookup", "memo:keep",
}


def test_every_template_function_is_known_pure_or_counted_as_impure(tmp_path: Path) -> None:
    env = Renderer(tmp_path).env
    known = PURE | set(VALIDATING_FILTERS) | set(RUNTIME_FUNCTIONS) | {"go_str"} | \
        render_purity.IMPURE_FUNCTIONS
    assert set(env.globals) | set(env.filters) <= known, \
        sorted((set(env.globals) | set(env.filters)) - known)
    before = render_purity.calls()
    env.from_string("{{ getenv('HOME') }}{{ [1, 2] | random }}{{ 'a' | upper }}").render()
    assert render_purity.calls() == before + 2


def test_the_hostname_filter_checks_a_name_and_counts_as_pure(tmp_path: Path) -> None:
    """The validating `hostname` filter (a DNS name or an address) is not confd's `hostname()`
    (this host's name): counted as impure, a template that checked a name with it was never
    kept (the render memo, the renders made during the settle wait, SIGHUP's judged renders),
    and no `{% memo %}` block could use it."""
    env = Renderer(tmp_path).env
    before = render_purity.calls()
    assert env.from_string("{{ 'a.example' | hostname }}").render() == "a.example"
    assert render_purity.calls() == before
    env.from_string("{{ hostname() }}").render()
    assert render_purity.calls() == before + 1


def test_the_code_is_known_by_every_file_of_its_packages(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgrade in place, or an edit of a checkout at the same version, is other code."""
    from confsync import render_memo

    package = tmp_path / "fakepkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    module = package / "sub" / "filters.py"
    module.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(render_memo, "_CODE_PACKAGES", ("fakepkg",))
    before = render_memo.code_identity()
    assert str(module).encode() in before
    module.write_text("X = 2\n")  # same size
    os.utime(module, ns=(1, 1))
    assert render_memo.code_identity() != before


def test_data_digests_tell_text_from_bytes_and_keys_from_values() -> None:
    from confsync.mirror import Mirror
    from confsync.render_memo import data_digest
    from confsync.resources import Resource
    from confsync.stores.base import Snapshot

    resource = Resource(name="r", source=Path("/c/r.toml"), src=Path("/t"), dest=Path("/d"),
                        keys=("/a",), prefix="")

    def digest(values: dict[str, bytes]) -> str:
        mirror = Mirror()
        mirror.load(Snapshot(1, values, 0))
        return data_digest(mirror, resource)

    seen = {digest({"/a/x": b"1", "/a/y": b"2"}), digest({"/a/x": b"12"}),
            digest({"/a/x1": b"2"}), digest({"/a/x": b"\xff"}), digest({"/a/x": b"\\xff"}),
            digest({}), digest({"/a": b"1"}), digest({"/a": b"1", "/a/x": b"2"}),
            digest({"/a": b"2", "/a/x": b"1"})}  # ("/a" itself is a key it reads)
    assert len(seen) == 9
    assert digest({"/a/x": b"1", "/a/y": b"2", "/b": b"3"}) == \
        digest({"/a/x": b"1", "/a/y": b"2"})  # a key it cannot see is no input of it


@pytest.mark.parametrize("where", ["templates", "outside"])
def test_a_template_edited_during_a_run_never_leaves_a_memo_of_another_template(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """A deploy while `once` waits for etcd: the render used the templates the memo digested.
    It read them again later (lazily, after etcd answered) and kept the new template's output
    under the old one's digest: rolled back before the next run, the file stayed the new one's,
    "up to date"."""
    import tempfile

    from confsync import oneshot
    from confsync.render_memo import RenderMemo
    from confsync.settings import Settings

    s = Setup(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(s.tmpdir))
    settings = Settings(confdir=s.confdir, backend="file", file_paths=(s.data,))
    template = s.confdir / "templates" / "pool.tmpl"
    if where == "outside":  # a `src` outside templates/, read when its template is loaded
        template = tmp_path / "pool.tmpl"
        template.write_text(TEMPLATE)
        (s.confdir / "conf.d" / "pool.toml").write_text(
            f'[template]\nsrc = "{template}"\ndest = "{s.dest}"\nkeys = ["/svc"]\n')
    assert oneshot.run_once(settings) == 0
    s.data.write_text("svc:\n  a: 10.0.0.1:80\n  b: 10.0.0.9:80\n")
    opened = RenderMemo.open

    def open_then_deploy(*args: object) -> RenderMemo | None:
        memo = opened(*args)  # type: ignore[arg-type]
        template.write_text(TEMPLATE.replace("server", "backend"))  # lands mid-run
        return memo

    monkeypatch.setattr(RenderMemo, "open", open_then_deploy)
    assert oneshot.run_once(settings) == 0
    monkeypatch.setattr(RenderMemo, "open", opened)
    template.write_text(TEMPLATE)  # rolled back
    assert oneshot.run_once(settings) == 0
    assert s.dest.read_text() == "server a 10.0.0.1:80\nserver b 10.0.0.9:80\n"


@pytest.mark.parametrize("included", ["a", "z"])
def test_an_include_of_another_resources_src_renders_whichever_render_was_skipped(
        tmp_path: Path, included: str) -> None:
    """Templates may load the absolute `src` files resources name (README), an include of one
    too: it was served only once that resource's own render had compiled it, so a memo that
    stood in for that render (or a resource named after the includer) failed the includer:
    `once` exited 1 and left its file stale."""
    s = Setup(tmp_path)
    part = tmp_path / "part.tmpl"
    part.write_text("part {{ getv('/x/v') }}\n")
    (s.confdir / "conf.d" / f"{included}.toml").write_text(
        f'[template]\nsrc = "{part}"\ndest = "{tmp_path / "part.out"}"\nkeys = ["/x"]\n')
    (s.confdir / "templates" / "pool.tmpl").write_text(f'{{% include "{part}" %}}{TEMPLATE}')
    (s.confdir / "conf.d" / "pool.toml").write_text(
        f'[template]\nsrc = "pool.tmpl"\ndest = "{s.dest}"\nkeys = ["/svc", "/x"]\n')
    s.data.write_text("x:\n  v: '1'\nsvc:\n  a: 10.0.0.1:80\n")
    assert s.once()[0] == 0
    s.data.write_text("x:\n  v: '1'\nsvc:\n  a: 10.0.0.2:80\n")  # part's data unchanged
    assert s.once()[0] == 0
    assert s.dest.read_text() == "part 1\nserver a 10.0.0.2:80\n"


def test_a_dest_written_after_the_memo_looked_is_rendered_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest of dest's bytes that `expects` took (before etcd answered) stands for those
    bytes only: a dest written between that look and the apply is never taken for the last
    render's output."""
    import tempfile

    from confsync import oneshot
    from confsync.render_memo import RenderMemo
    from confsync.resources import Resource
    from confsync.settings import Settings

    s = Setup(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(s.tmpdir))
    settings = Settings(confdir=s.confdir, backend="file", file_paths=(s.data,))
    assert oneshot.run_once(settings) == 0
    rendered = s.dest.read_text()
    looked = RenderMemo.expects

    def look_then_write(memo: RenderMemo, resource: Resource) -> bool:
        expected = looked(memo, resource)
        s.dest.write_text("written by hand\n")
        return expected

    monkeypatch.setattr(RenderMemo, "expects", look_then_write)
    assert oneshot.run_once(settings) == 0
    assert s.dest.read_text() == rendered
