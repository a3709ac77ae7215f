"""Template functions with confd's semantics, and values that must never reach a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from confsync.errors import ResourceError
from confsync.mirror import Mirror
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


def test_child_names_jump_subtrees_and_see_leaf_and_dir_of_same_name(tmp_path: Path) -> None:
    data = {"/s/a": "leaf", "/s/a/x": "1", "/s/a/y/z": "2", "/s/b/1": "3", "/s/c": "4",
            "/s/c0/q": "5", "/t/x": "6"}
    out = render(tmp_path, "{{ ls('/s') | join(',') }}|{{ lsdir('/s') | join(',') }}|"
                           "{{ ls('/s/a') | join(',') }}|{{ ls('/nope') | join(',') }}", data)
    assert out == "a,b,c,c0|a,b,c0|x,y|"


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
