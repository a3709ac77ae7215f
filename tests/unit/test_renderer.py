"""Template functions with confd's semantics, and values that must never reach a file."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from confsync import render_limits
from confsync.errors import ResourceError
from confsync.mirror import Mirror
from confsync.render_limits import DEADLINE, Deadline, RenderTimeout, parse_size
from confsync.renderer import Renderer, glob_regex
from confsync.resources import Resource
from confsync.stores import Change, ChangeBatch, Snapshot


def make(tmp_path: Path, template: str, data: dict[str, bytes | str], prefix: str = "",
         keys: tuple[str, ...] = ("/",)) -> tuple[Renderer, Resource, Mirror]:
    tdir = tmp_path / "templates"
    tdir.mkdir(exist_ok=True)
    (tdir / "t.tmpl").write_text(template)
    res = Resource(name="r", source=tmp_path / "r.toml", src=tdir / "t.tmpl",
                   dest=tmp_path / "out", keys=keys, prefix=prefix)
    mirror = Mirror()
    mirror.load(Snapshot(5, {k: v.encode() if isinstance(v, str) else v for k, v in data.items()}))
    return Renderer(tdir), res, mirror


def render(tmp_path: Path, template: str, data: dict[str, bytes | str], **kw: object) -> str:
    renderer, res, mirror = make(tmp_path, template, data, **kw)  # type: ignore[arg-type]
    return renderer.render(res, mirror)


DATA = {"/app/db/host": "10.0.0.1", "/app/db/port": "5432", "/app/upstreams/a": "1",
        "/app/upstreams/b": "2", "/app/upstreams/c/d": "3", "/other/x": "no"}


def test_confd_functions_relative_to_prefix(tmp_path: Path) -> None:
    out = render(tmp_path, (
        "{{ getv('/db/host') }}:{{ getv('/db/port') }}|{{ getv('/db/user', 'app') }}|"
        "{% for kv in gets('/upstreams/*') %}{{ kv.key }}={{ kv.Value }},{% endfor %}|"
        "{{ getvs('/upstreams/*') | join(',') }}|{{ ls('/upstreams') | join(',') }}|"
        "{{ lsdir('/upstreams') | join(',') }}|{{ exists('/db/host') }}{{ exists('/nope') }}|"
        "{{ get('/db/port').key }}|{{ '/a/b/c' | base }}|{{ '/a/b/c' | dirname }}\n"),
        DATA, prefix="/app", keys=("/db", "/upstreams"))
    assert out == ("10.0.0.1:5432|app|/upstreams/a=1,/upstreams/b=2,|1,2|a,b,c|c|TrueFalse|"
                   "/db/port|c|/a/b\n")


def test_keys_outside_the_resource_prefixes_are_invisible(tmp_path: Path) -> None:
    # A template must not read keys whose changes would not re-render it.
    with pytest.raises(ResourceError, match="key /other/x not found"):
        render(tmp_path, "{{ getv('/other/x') }}", DATA, keys=("/app",))


def test_a_key_covers_itself_and_its_subtree_not_names_that_start_alike(
        tmp_path: Path) -> None:
    """confd 0.17's rule: keys = ["/app"] reads /app and /app/..., never /application/y
    (measured: `exists "/application/y"` is false there, `ls "/"` lists only app)."""
    data = {"/app": "self", "/app/x": "X", "/application/y": "Y", "/apps": "S"}
    out = render(tmp_path, (
        "{{ getv('/app') }} {{ getv('/app/x') }} {{ exists('/application/y') }} "
        "{{ exists('/apps') }} {{ getv('/application/y', '-') }}|"
        "{{ ls('/') | join(',') }}|{{ lsdir('/') | join(',') }}|{{ ls('/app') | join(',') }}|"
        "{% for kv in gets('/app*') %}{{ kv.key }},{% endfor %}|{{ getvs('/*/y') }}\n"),
        data, keys=("/app",))
    # ls of /app, a key and a directory, lists its own name too: confd gives [app x]
    # (measured with its env backend, APP=self APP_X=X)
    assert out == "self X False False -|app|app|app,x|/app,|[]\n"
    # A key given with its slash is a directory: the key of that name itself is not in it.
    out = render(tmp_path, "{{ exists('/app') }} {{ getv('/app/x') }}\n", data,
                 keys=("/app/",))
    assert out == "False X\n"
    # A deeper key makes its parents listable, as the keys under it are.
    out = render(tmp_path, "{{ ls('/') | join(',') }}|{{ lsdir('/') | join(',') }}\n",
                 {"/app/db/host": "h", "/app/dbx/y": "n"}, keys=("/app/db",))
    assert out == "app|app\n"


def test_glob_never_crosses_slash() -> None:
    assert glob_regex("/a/*").match("/a/b")
    assert not glob_regex("/a/*").match("/a/b/c")
    assert glob_regex("/a/?/[xy]").match("/a/b/x")
    assert not glob_regex("/a/[!x]").match("/a/x")


def test_missing_key_names_template_line_and_key(tmp_path: Path) -> None:
    with pytest.raises(ResourceError) as err:
        render(tmp_path, "line1\n{{ getv('/app/missing') }}\n", DATA)
    text = str(err.value)
    assert err.value.step == "render"
    assert "t.tmpl:2" in text and "/app/missing" in text


def test_undefined_variable_fails(tmp_path: Path) -> None:
    with pytest.raises(ResourceError, match=r"t\.tmpl:1: undefined: 'nope' is undefined"):
        render(tmp_path, "{{ nope }}\n", DATA)


def test_syntax_error_reports_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ResourceError, match=r"t\.tmpl:3: template syntax error"):
        render(tmp_path, "a\nb\n{% for x in %}\n", DATA)


@pytest.mark.parametrize("value", ["10.0.0.1\nserver evil 6.6.6.6:80", "a\rb", "x\x00", "a\u2028b"])
def test_line_breaks_in_values_can_never_reach_output(tmp_path: Path, value: str) -> None:
    data = {"/app/name": value}
    with pytest.raises(ResourceError, match="key /app/name: output value contains a line break"):
        render(tmp_path, "name {{ getv('/app/name') }}\n", data)
    # even when concatenated first
    with pytest.raises(ResourceError, match="line break or control character"):
        render(tmp_path, "{{ 'x' ~ getv('/app/name') ~ 'y' }}\n", data)


def test_multiline_is_an_explicit_opt_in(tmp_path: Path) -> None:
    out = render(tmp_path, "{{ getv('/pem') | multiline }}\n", {"/pem": "a\nb"})
    assert out == "a\nb\n"


def test_undecodable_value_is_reported_not_rendered(tmp_path: Path) -> None:
    with pytest.raises(ResourceError, match=r"key /app/bin: value is not valid UTF-8"):
        render(tmp_path, "{{ getv('/app/bin') }}", {"/app/bin": b"\xff\xfe"})


def test_validating_filter_error_names_key(tmp_path: Path) -> None:
    data = {"/svc/a": '{"address": "10.0.0.1 # x", "port": 80}'}
    with pytest.raises(ResourceError, match=r"key /svc/a: expected an IP address"):
        render(tmp_path, "{% for kv in gets('/svc/*') %}{% set i = kv.value | fromjson %}"
                         "{{ i.address | ipaddr }}{% endfor %}", data)


def test_bad_json_names_key(tmp_path: Path) -> None:
    with pytest.raises(ResourceError, match=r"key /svc/a: value is not valid JSON"):
        render(tmp_path, "{{ (getv('/svc/a') | fromjson).x }}", {"/svc/a": "{nope"})


def test_mirror_apply_incremental(tmp_path: Path) -> None:
    renderer, res, mirror = make(tmp_path, "{{ getvs('/s/*') | join(',') }}", {"/s/a": "1"})
    changed = mirror.apply(ChangeBatch(6, (Change("/s/b", b"2"), Change("/s/a", None),
                                           Change("/s/c", b"3"), Change("/s/c", b"3"))))
    assert changed == {"/s/a", "/s/b", "/s/c"}
    assert mirror.revision == 6
    assert renderer.render(res, mirror) == "2,3"
    assert mirror.apply(ChangeBatch(7, (Change("/s/zz", None),))) == set()


def test_a_big_batch_keeps_the_keys_sorted_and_costs_no_quadratic_time() -> None:
    """One DeleteRange of 300,000 keys is one batch: deleting them one by one from the sorted
    key list moved its tail each time and held the loop about 4 s (0.5 s at 100,000)."""
    keys = [f"/p/k{i:06d}" for i in range(300_000)]
    mirror = Mirror()
    mirror.load(Snapshot(1, dict.fromkeys(keys, b"x")))
    # CPU time, not wall time: the quadratic cost is CPU, and a loaded CI starves wall time
    started = time.process_time()
    changed = mirror.apply(ChangeBatch(2, tuple(Change(key, None) for key in keys)))
    assert time.process_time() - started < 2.0
    assert len(changed) == 300_000 and len(mirror) == 0 and list(mirror.keys_with_prefix("/")) == []
    # A bulk batch that adds, deletes, re-adds and rewrites: the same view as one change a time.
    batch = ChangeBatch(3, (*(Change(f"/q/{i:04d}", b"1") for i in range(999, -1, -1)),
                            Change("/q/0005", None), Change("/q/0007", None),
                            Change("/q/0007", b"again"), Change("/q/0009", b"2")))
    mirror.apply(batch)
    one_by_one = Mirror()
    for change in batch.changes:
        one_by_one.apply(ChangeBatch(3, (change,)))
    assert list(mirror.keys_with_prefix("/q/")) == list(one_by_one.keys_with_prefix("/q/"))
    assert len(mirror) == 999 and mirror.get("/q/0007") == "again" and mirror.get("/q/0009") == "2"


def test_child_names_jump_subtrees_and_see_leaf_and_dir_of_same_name(tmp_path: Path) -> None:
    data = {"/s/a": "leaf", "/s/a/x": "1", "/s/a/y/z": "2", "/s/b/1": "3", "/s/c": "4",
            "/s/c0/q": "5", "/t/x": "6"}
    out = render(tmp_path, "{{ ls('/s') | join(',') }}|{{ lsdir('/s') | join(',') }}|"
                           "{{ ls('/s/a') | join(',') }}|{{ ls('/nope') | join(',') }}", data)
    assert out == "a,b,c,c0|a,b,c0|a,x,y|"  # ls of a key lists its own name (confd: [a x y])


def test_fromjson_cache_is_per_resource_and_follows_changes(tmp_path: Path) -> None:
    renderer, res, mirror = make(tmp_path, "{% for kv in gets('/i/*') %}"
                                 "{{ (kv.value | fromjson)['a'] }},{% endfor %}",
                                 {"/i/1": '{"a": 1}', "/i/2": '{"a": 2}'})
    assert renderer.render(res, mirror) == "1,2,"
    mirror.apply(ChangeBatch(6, (Change("/i/2", b'{"a": 3}'),)))
    assert renderer.render(res, mirror) == "1,3,"


def test_unwritable_bytecode_cache_dir_never_fails_a_render(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "ro"
    blocked.write_text("a file where the cache directory would go")
    monkeypatch.setattr("tempfile.tempdir", str(blocked))  # mkdir under a file fails
    assert render(tmp_path, "{{ getv('/a') }}", {"/a": "ok"}) == "ok"


def test_compiled_templates_are_cached_per_confsync_and_jinja2_version(tmp_path: Path) -> None:
    """The cache is keyed by template name and source only: code compiled by another Jinja2
    (whose bytecode format number rarely moves) must not be loaded after an upgrade."""
    import jinja2

    from confsync import __version__

    renderer = Renderer(tmp_path)
    pattern = renderer.env.bytecode_cache.pattern
    assert __version__ in pattern and f"jinja2_{jinja2.__version__}" in pattern


# ---- render limits (issue 13 item 15)

def _limited(tmp_path: Path, template: str, **limits: object) -> tuple[Renderer, Resource, Mirror]:
    renderer, res, mirror = make(tmp_path, template, {"/a": "1"})
    return Renderer(renderer.templates_dir, **limits), res, mirror  # type: ignore[arg-type]


def test_an_include_renders_as_it_was_when_the_renderer_was_made(tmp_path: Path) -> None:
    """One resource set, one version of its templates: an include a render had not needed yet
    used to be read from disk at its first use (an edit waiting for its SIGHUP, or one a
    SIGHUP refused), beside the main template as loaded."""
    parts = tmp_path / "templates" / "parts"
    parts.mkdir(parents=True)
    (parts / "part.tmpl").write_text("old part\n")
    (parts / "other.tmpl").write_text("old other\n")
    template = ("{% if exists('/x') %}{% include 'parts/part.tmpl' %}{% endif %}"
                "{% include 'parts/' ~ getv('/which', 'none') ~ '.tmpl' ignore missing %}main\n")
    renderer, res, mirror = make(tmp_path, template, {})
    assert renderer.render(res, mirror) == "main\n"
    (parts / "part.tmpl").write_text("{% broken %}")
    (parts / "other.tmpl").unlink()
    (parts / "new.tmpl").write_text("added later\n")
    mirror.load(Snapshot(6, {"/x": b"1", "/which": b"other"}))
    assert renderer.render(res, mirror) == "old part\nold other\nmain\n"
    mirror.load(Snapshot(7, {"/which": b"new"}))
    assert renderer.render(res, mirror) == "main\n"  # not in the set as loaded
    mirror.load(Snapshot(8, {"/x": b"1"}))
    with pytest.raises(ResourceError, match=r"part\.tmpl:1: template syntax error"):
        Renderer(renderer.templates_dir).render(res, mirror)  # the next set reads the edit


def test_a_plain_range_loop_is_stopped_by_the_render_timeout(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "ok.tmpl").write_text("{{ getv('/a') }}")
    renderer, res, mirror = _limited(tmp_path, "{% for i in range(10**12) %}{% endfor %}",
                                     render_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ResourceError, match=r"render took longer than render_timeout \(0.3s\)"):
        renderer.render(res, mirror)
    assert time.monotonic() - started < 20  # generous: a loaded machine
    # The renderer is still usable, and no stray timeout lands in later work.
    res2 = Resource(name="ok", source=res.source, src=res.src.with_name("ok.tmpl"),
                    dest=res.dest, keys=res.keys, prefix="")
    for _ in range(200):
        assert renderer.render(res2, mirror) == "1"
    time.sleep(0.5)


def test_a_per_resource_timeout_wins_and_loops_in_filters_stop_too(tmp_path: Path) -> None:
    renderer, res, mirror = _limited(
        tmp_path, "{% for i in range(10**12) %}{{ (i % 65535 + 1) | string | port }}{% endfor %}",
        render_timeout=3600)
    res = res._replace(render_timeout=0.2)
    with pytest.raises(ResourceError, match=r"render_timeout \(0.2s\)"):
        renderer.render(res, mirror)


def test_the_timeout_never_fires_after_a_render_finished(tmp_path: Path) -> None:
    renderer, res, mirror = _limited(tmp_path, "{{ getv('/a') }}", render_timeout=0.05)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # renders that end just around their deadline
        assert renderer.render(res, mirror) == "1"
        time.sleep(0.01)


def test_a_timeout_that_fires_as_it_is_armed_is_a_render_failure_never_an_escape(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline was armed before the `try` that turns RenderTimeout into the resource's
    render failure: one that fired in between (a near-zero timeout, the thread pre-empted
    right after arming on a loaded machine) came out of the render as RenderTimeout, a
    BaseException that no handler of the watch loop takes."""
    renderer, res, mirror = _limited(tmp_path, "{{ getv('/a') }}", render_timeout=1e-9)
    arm = DEADLINE.arm

    def preempted(seconds: float) -> None:
        arm(seconds)
        # Pre-empted until the watchdog has fired (not a fixed sleep: on a loaded machine it
        # may take longer to run): the timeout is delivered here, before arm's caller goes on.
        armed = DEADLINE._armed[threading.get_ident()]
        until = time.monotonic() + 5
        while not armed[1] and time.monotonic() < until:
            time.sleep(0.0005)
        time.sleep(0.001)  # (delivered at the next bytecode boundary, if not already)

    monkeypatch.setattr(DEADLINE, "arm", preempted)
    for _ in range(100):
        with pytest.raises(ResourceError, match=r"render_timeout \(1e-09s\)") as failed:
            renderer.render(res, mirror)
        assert failed.value.step == "render"
    monkeypatch.undo()
    time.sleep(0.05)  # nothing lands later either
    assert _limited(tmp_path, "{{ getv('/a') }}")[0].render(res, mirror) == "1"


def test_a_render_stopped_as_it_ended_leaves_the_timeout_working(tmp_path: Path) -> None:
    """A render that ends as its deadline passes: its disarm waits for the deadline's lock
    while the watchdog holds it to fire, and the RenderTimeout landed in the Python code of
    the lock's `with`, after the lock was taken: it was never released, and no render of the
    process was stopped again (a runaway template then held the watch loop for good)."""
    renderer, res, mirror = _limited(tmp_path, "{{ getv('/a') }}", render_timeout=1e-9)
    fired, until = 0, time.monotonic() + 3
    while fired < 3 and time.monotonic() < until:
        try:
            renderer.render(res, mirror)
        except ResourceError:
            fired += 1
    assert fired
    runaway, res, mirror = _limited(tmp_path, "{% for i in range(10**8) %}{% endfor %}",
                                    render_timeout=0.2)
    with pytest.raises(ResourceError, match=r"render_timeout \(0.2s\)"):
        runaway.render(res, mirror)


def test_output_cap(tmp_path: Path) -> None:
    renderer, res, mirror = _limited(tmp_path, "{% for i in range(10**9) %}{{ 'x' * 100 }}"
                                     "{% endfor %}", max_output_size=100_000)
    with pytest.raises(ResourceError, match=r"exceeds max_output_size \(100000 bytes\)"):
        renderer.render(res, mirror)
    small = res._replace(max_output_size=2 * 1024 * 1024)
    renderer, res, mirror = _limited(tmp_path, "{{ 'x' * 2097152 }}")
    assert len(renderer.render(small, mirror)) == 2 * 1024 * 1024


@pytest.mark.parametrize("text, size", [(1000, 1000), ("64MiB", 64 * 1024**2), ("500kB", 500_000),
                                        ("1 GiB", 1024**3)])
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", [0, -1, "10 parsecs", "", True, 1.5])
def test_parse_size_refuses(text: object) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(text)


# ---- templates are code: the loader serves the templates directory only (issue 13 item 18)

@pytest.mark.parametrize("include", ["/etc/passwd", "../secret", "x/../../secret",
                                     "/{tmp}/secret"])
def test_include_cannot_leave_the_templates_directory(tmp_path: Path, include: str) -> None:
    (tmp_path / "secret").write_text("s3cret")
    include = include.replace("/{tmp}", str(tmp_path))
    with pytest.raises(ResourceError, match=r"not found under .*templates include only") as err:
        render(tmp_path, f'{{% include "{include}" %}}', {})
    assert "s3cret" not in str(err.value)


def test_includes_inside_the_directory_and_an_absolute_src_work(tmp_path: Path) -> None:
    (tmp_path / "templates" / "parts").mkdir(parents=True)
    (tmp_path / "templates" / "parts" / "head.tmpl").write_text("head")
    renderer, res, mirror = make(tmp_path, '{% include "parts/head.tmpl" %}|{{ getv("/a") }}',
                                 {"/a": "1"})
    assert renderer.render(res, mirror) == "head|1"
    outside = tmp_path / "elsewhere" / "own.tmpl"
    outside.parent.mkdir()
    outside.write_text('{% include "parts/head.tmpl" %}+own')
    own = res._replace(name="own", src=outside)
    assert renderer.render(own, mirror) == "head+own"


# ---- keys that are not UTF-8 (issue 13 item 1): stores keep their bytes as surrogates

BAD_KEY = b"/k/b\xff".decode("utf-8", "surrogateescape")


def test_emitting_a_non_utf8_key_fails_naming_it_escaped(tmp_path: Path) -> None:
    data = {"/k/a": "1", BAD_KEY: "2"}
    with pytest.raises(ResourceError, match=re.escape("key '/k/b\\xff': output value is not UTF-8")):
        render(tmp_path, "{% for kv in gets('/k/*') %}{{ kv.key }}{% endfor %}", data)
    with pytest.raises(ResourceError, match=re.escape("key '/k/b\\xff': expected an identifier")):
        render(tmp_path, "{% for n in ls('/k') %}{{ n | identifier }}{% endfor %}", data)
    with pytest.raises(ResourceError, match=re.escape("'/k/b\\xff'")):
        render(tmp_path, "{% for kv in gets('/k/*') %}{{ kv.key | multiline }}{% endfor %}", data)


def test_a_template_that_never_emits_the_bad_key_is_not_affected(tmp_path: Path) -> None:
    data = {"/k/a": "1", BAD_KEY: "2", "/o/x": "x"}
    assert render(tmp_path, "{{ getv('/o/x') }}{{ getvs('/k/*') | join(',') }}", data) == "x1,2"


def test_undecodable_value_of_a_skippable_item_is_left_out(tmp_path: Path) -> None:
    renderer, res, mirror = make(tmp_path, "{% for kv in gets('/k/*', skip_invalid=True) %}"
                                 "{{ kv.value }}{% endfor %}", {"/k/a": "1", "/k/b": b"\xff"})
    rendered = renderer.render_result(res, mirror)
    assert rendered.text == "1"
    assert [str(w) for w in rendered.warnings] == [
        "key /k/b: value is not valid UTF-8 text (1 bytes); left out"]


def test_function_hooks_extend_the_template_functions(tmp_path: Path) -> None:
    renderer, res, mirror = make(tmp_path, "{{ shout(getv('/a')) }}", {"/a": "hi"})
    renderer.add_functions(lambda data: {"shout": lambda text: text.upper() + "!"})
    assert renderer.render(res, mirror) == "HI!"


def test_deadlines_of_concurrent_renders_are_per_thread(tmp_path: Path) -> None:
    import threading

    renderer, res, mirror = _limited(tmp_path, "{% for i in range(10**12) %}{% endfor %}",
                                     render_timeout=0.3)
    ok_dir = tmp_path / "ok"
    ok_dir.mkdir()
    fine, fine_res, _ = make(ok_dir, "{% for i in range(300000) %}{% endfor %}{{ getv('/a') }}",
                             {"/a": "1"})
    results: dict[str, object] = {}

    def loop_forever() -> None:
        try:
            renderer.render(res, mirror)
        except ResourceError as exc:
            results["forever"] = str(exc)

    def slow_but_fine() -> None:
        for _ in range(5):
            results["fine"] = Renderer(fine.templates_dir, render_timeout=60).render(
                fine_res, mirror)

    threads = [threading.Thread(target=loop_forever), threading.Thread(target=slow_but_fine)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert "render_timeout (0.3s)" in str(results["forever"])
    assert results["fine"] == "1"


def test_render_limits_settings_and_resource_fields(tmp_path: Path) -> None:
    from confsync.errors import ConfigError
    from confsync.resources import parse_resource
    from confsync.settings import load_settings

    settings = load_settings({"config": None}, {"CONFSYNC_CONFIG": "",
                                                "CONFSYNC_RENDER_TIMEOUT": "2s",
                                                "CONFSYNC_MAX_OUTPUT_SIZE": "1MiB"})
    assert (settings.render_timeout, settings.max_output_size) == (2.0, 1024 * 1024)
    with pytest.raises(ConfigError, match="RENDER_TIMEOUT: expected a duration above 0"):
        load_settings({}, {"CONFSYNC_RENDER_TIMEOUT": "0"})
    (tmp_path / "t.tmpl").write_text("")
    table = {"src": "t.tmpl", "dest": str(tmp_path / "out"), "keys": ["/a"]}
    res = parse_resource(tmp_path / "r.toml", {"template": {
        **table, "render_timeout": "250ms", "max_output_size": 4096}}, tmp_path)
    assert (res.render_timeout, res.max_output_size) == (0.25, 4096)
    with pytest.raises(ConfigError, match=r"template\.max_output_size"):
        parse_resource(tmp_path / "r.toml", {"template": {**table, "max_output_size": "lots"}},
                       tmp_path)


@pytest.mark.parametrize("pattern", ["/hosts/[a", "/hosts/a\\"])
def test_a_malformed_pattern_fails_as_in_confd(pattern: str) -> None:
    # Before: matched nothing, so `gets "/hosts/[a"` rendered [] where confd fails
    # (path.Match's ErrBadPattern).
    from confsync.renderer import RenderFailure

    with pytest.raises(RenderFailure, match="syntax error in pattern"):
        glob_regex(pattern)


def test_resources_of_one_prefix_share_their_items_and_each_sees_its_own_keys(
        tmp_path: Path) -> None:
    # One item cache per resource held resources x keys items (1,000 resources reading 10
    # prefixes of 5,000 keys: 850 MB); a KV depends on the key, the prefix and the value only.
    renderer, first, mirror = make(tmp_path, "{% for kv in gets('/*/*') %}{{ kv.key }}="
                                   "{{ kv.value }},{% endfor %}", DATA, prefix="/app",
                                   keys=("/db",))
    second = first._replace(name="s", keys=("/db", "/upstreams"))
    other = first._replace(name="o", prefix="", keys=("/app/db",))
    assert renderer.render(first, mirror) == "/db/host=10.0.0.1,/db/port=5432,"
    assert renderer.render(second, mirror) == ("/db/host=10.0.0.1,/db/port=5432,"
                                               "/upstreams/a=1,/upstreams/b=2,")
    assert renderer.render(other, mirror) == ""  # its keys are 3 deep, '/*/*' is 2
    mirror.apply(ChangeBatch(6, (Change("/app/db/port", b"6432"),)))
    assert renderer.render(second, mirror) == ("/db/host=10.0.0.1,/db/port=6432,"
                                               "/upstreams/a=1,/upstreams/b=2,")
    assert renderer.render(first, mirror) == "/db/host=10.0.0.1,/db/port=6432,"
    assert sorted(renderer._kv_caches) == ["", "/app"]  # one per prefix, not per resource


def test_a_template_not_there_when_the_set_loaded_is_read_once_it_is(tmp_path: Path) -> None:
    """A deploy that wrote conf.d/ before templates/: the render fails for now (retried by
    `watch`), and renders once the file is there; a file the set read keeps its bytes."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "kept.tmpl").write_text("kept\n")
    late = Resource(name="late", source=tmp_path / "late.toml", src=templates / "late.tmpl",
                    dest=tmp_path / "late.out", keys=("/a",), prefix="")
    kept = late._replace(name="kept", src=templates / "kept.tmpl")
    renderer = Renderer(templates, srcs=[late.src, kept.src])
    with pytest.raises(ResourceError, match=r"template file .*late\.tmpl does not exist") as exc:
        renderer.render(late, Mirror())
    assert exc.value.retry
    (templates / "part.tmpl").write_text("its include\n")  # written before it, by the deploy
    (templates / "late.tmpl").write_text("{% include 'part.tmpl' %}late\n")
    (templates / "kept.tmpl").write_text("edited, waiting for a reload\n")
    assert renderer.render(late, Mirror()) == "its include\nlate\n"
    assert renderer.render(kept, Mirror()) == "kept\n"


class _CountedCondition(threading.Condition):
    waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)


def test_a_render_does_not_wake_the_idle_deadline_watchdog() -> None:
    """Woken by every arm (it slept without end when idle), the watchdog took the GIL in the
    middle of each render's hand-off to the file worker: part of every put -> file. A deadline
    due after its next wake leaves it asleep."""
    deadline = Deadline()
    cond = deadline._cond = _CountedCondition(deadline._lock)
    for _ in range(30):
        deadline.arm(30.0)
        assert not deadline.disarm()
        time.sleep(0.01)  # (the old watchdog went back to sleep here, to be woken again)
    # The first wait, and a tick or two where it found a render armed, at most.
    assert cond.waits <= 5, cond.waits


def test_a_deadline_past_the_idle_wake_fires_all_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An arm that does not wake the watchdog is found at its next wake, and fires on time."""
    monkeypatch.setattr(render_limits, "_IDLE_WAKE", 0.05)
    deadline = Deadline()
    deadline.arm(30.0)
    deadline.disarm()  # the watchdog runs now, asleep for _IDLE_WAKE at a time
    started = time.monotonic()
    fired = False
    try:
        deadline.arm(0.3)
        while time.monotonic() - started < 20:  # generous: a loaded machine
            sum(range(100))
    except RenderTimeout:
        fired = True
    finally:
        deadline.disarm()
    assert fired
    assert time.monotonic() - started >= 0.3
