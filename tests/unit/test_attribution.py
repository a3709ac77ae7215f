"""A refused value names the key it came from, exactly, never a look-alike (issue 12).

Every case puts the bad value in one key among several whose documents hold the same text,
with the innocent ones read *after* it: a guess by text (the old `key_of`) blames an innocent key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from confsync.errors import ResourceError
from confsync.mirror import Mirror
from confsync.renderer import Renderer
from confsync.resources import Resource, parse_resource
from confsync.stores import Snapshot

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "templates" / "haproxy" / "templates" / "haproxy.cfg.tmpl"


def _mirror(data: dict[str, Any]) -> Mirror:
    mirror = Mirror()
    mirror.load(Snapshot(1, {k: (v if isinstance(v, str) else json.dumps(v)).encode()
                             for k, v in data.items()}))
    return mirror


def _render_error(tmp_path: Path, template: str, data: dict[str, Any]) -> str:
    tdir = tmp_path / "templates"
    tdir.mkdir(exist_ok=True)
    (tdir / "t.tmpl").write_text(template)
    res = Resource(name="r", source=tmp_path / "r.toml", src=tdir / "t.tmpl",
                   dest=tmp_path / "out", keys=("/",), prefix="")
    with pytest.raises(ResourceError) as err:
        Renderer(tdir).render(res, _mirror(data))
    return str(err.value)


# ---- the shipped HAProxy schema, field by field

BASE: dict[str, Any] = {
    "/haproxy/frontends/main": {"bind": ["127.0.0.1:8080"], "default_service": "web"},
    "/services/web/config": {"balance": "roundrobin"},
}
# (field, bad value, what the reason says). Every innocent document carries the same text.
INSTANCE_FIELDS = [
    ("address", "10.0.0.1 backup", "expected an IP address"),
    ("address", "0", "expected an IP address"),
    ("port", 0, "port number 1-65535, found 0"),
    ("port", "80x", "port number 1-65535"),
    ("port", True, "found True"),
    ("weight", 999, "whole number from 0 to 256"),
    ("weight", "1 check", "whole number"),
    ("state", "ready\n", "ready, drain, maint"),
    ("state", "up", "ready, drain, maint"),
]


def _instances(field: str, bad: Any) -> dict[str, Any]:
    """w1 holds the bad value; w2 and w3 (read after it) hold the same text elsewhere."""
    good = {"address": "10.0.0.2", "port": 8080, "weight": 10, "state": "ready"}
    return {
        "/services/web/instances/w1": {**good, field: bad},
        "/services/web/instances/w2": {**good, "note": bad, "tag": json.dumps(bad)},
        "/services/web/instances/w3": {**good, "note": bad, "tag": str(bad)},
    }


def _strict_template(tmp_path: Path) -> Path:
    """The shipped template without `skip_invalid`: every refused value fails the render."""
    tdir = tmp_path / "strict"
    tdir.mkdir()
    text = SHIPPED.read_text()
    assert ", skip_invalid=True)" in text
    (tdir / "haproxy.cfg.tmpl").write_text(text.replace(", skip_invalid=True)", ")"))
    return tdir


def _haproxy(templates: Path, tmp_path: Path) -> tuple[Renderer, Resource]:
    res = parse_resource(Path("haproxy.toml"), {"template": {
        "src": "haproxy.cfg.tmpl", "dest": str(tmp_path / "haproxy.cfg"),
        "keys": ["/services", "/haproxy"]}}, templates)
    return Renderer(templates), res


@pytest.mark.parametrize("field, bad, reason", INSTANCE_FIELDS,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(INSTANCE_FIELDS)])
def test_strict_template_names_exactly_the_bad_instance(
        tmp_path: Path, field: str, bad: Any, reason: str) -> None:
    renderer, res = _haproxy(_strict_template(tmp_path), tmp_path)
    with pytest.raises(ResourceError) as err:
        renderer.render(res, _mirror({**BASE, **_instances(field, bad)}))
    message = str(err.value)
    assert "key /services/web/instances/w1:" in message, message
    assert "/w2" not in message and "/w3" not in message and "last key read" not in message
    assert reason in message, message


@pytest.mark.parametrize("field, bad, reason", INSTANCE_FIELDS,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(INSTANCE_FIELDS)])
def test_shipped_template_leaves_out_exactly_the_bad_instance(
        tmp_path: Path, field: str, bad: Any, reason: str) -> None:
    renderer, res = _haproxy(SHIPPED.parent, tmp_path)
    rendered = renderer.render_result(res, _mirror({**BASE, **_instances(field, bad)}))
    assert [w.key for w in rendered.warnings] == ["/services/web/instances/w1"]
    assert reason in rendered.warnings[0].reason
    assert "server w1 " not in rendered.text
    assert "server w2 10.0.0.2:8080" in rendered.text and "server w3 " in rendered.text


def test_missing_field_and_bad_document_name_the_instance(tmp_path: Path) -> None:
    renderer, res = _haproxy(_strict_template(tmp_path), tmp_path)
    good = {"address": "10.0.0.2", "port": 8080}
    for bad, reason in (({"address": "10.0.0.2"}, "found nothing"), ("[8080]", "JSON object"),
                        ("{8080", "not valid JSON")):
        data = {**BASE, "/services/web/instances/w1": bad,
                "/services/web/instances/w2": {**good, "x": "[8080]"},
                "/services/web/instances/w3": good}
        with pytest.raises(ResourceError) as err:
            renderer.render(res, _mirror(data))
        assert "key /services/web/instances/w1:" in str(err.value), err.value
        assert reason in str(err.value)


def test_bad_instance_id_names_its_key(tmp_path: Path) -> None:
    renderer, res = _haproxy(SHIPPED.parent, tmp_path)
    good = {"address": "10.0.0.2", "port": 8080}
    data = {**BASE, "/services/web/instances/a b": good, "/services/web/instances/b": good}
    rendered = renderer.render_result(res, _mirror(data))
    assert [w.key for w in rendered.warnings] == ["/services/web/instances/a b"]
    assert "identifier" in rendered.warnings[0].reason


# Structural values fail the whole render and name their own key, not a look-alike.
STRUCTURAL = [
    ("/services/{}/config", {"balance": "fastest"}, "one of"),
    ("/services/{}/config", {"check_path": "/ok #"}, "URL path"),
    ("/services/{}/config", {"check_interval": "2x"}, "duration"),
    ("/services/{}/config", {"hosts": ["a b"]}, "host name"),
    ("/services/{}/config", {"path_prefix": "api"}, "URL path"),
]


@pytest.mark.parametrize("pattern, bad, reason", STRUCTURAL,
                         ids=[next(iter(b)) for _, b, _ in STRUCTURAL])
def test_service_config_names_exactly_its_service(
        tmp_path: Path, pattern: str, bad: dict[str, Any], reason: str) -> None:
    renderer, res = _haproxy(SHIPPED.parent, tmp_path)
    value = next(iter(bad.values()))
    data = {**BASE, "/services/api/config": bad,  # "api" is read before "web"
            "/services/web/config": {"balance": "roundrobin", "note": value,
                                     "tag": json.dumps(value)}}
    with pytest.raises(ResourceError) as err:
        renderer.render(res, _mirror(data))
    assert "key /services/api/config:" in str(err.value), err.value
    assert reason in str(err.value)


@pytest.mark.parametrize("key, bad, reason", [
    ("/haproxy/global", {"maxconn": 0}, "from 1 to 1000000"),
    ("/haproxy/global", {"admin_socket": "a.sock"}, "file path"),
    ("/haproxy/global", {"state_file": "/x y"}, "file path"),
    ("/haproxy/global", {"hard_stop_after": "30 s"}, "duration"),
    ("/haproxy/frontends/main", {"bind": ["127.0.0.1:0"]}, "port number"),
    ("/haproxy/frontends/main", {"bind": ["127.0.0.1:80"], "default_service": "a b"},
     "identifier"),
], ids=["maxconn", "admin_socket", "state_file", "hard_stop_after", "bind", "default_service"])
def test_global_and_frontend_fields_name_their_key(
        tmp_path: Path, key: str, bad: dict[str, Any], reason: str) -> None:
    renderer, res = _haproxy(SHIPPED.parent, tmp_path)
    value = next(iter(bad.values()))
    data = {**BASE, key: bad, "/haproxy/frontends/zz": {"bind": ["127.0.0.1:8081"],
                                                        "note": value}}
    with pytest.raises(ResourceError) as err:
        renderer.render(res, _mirror(data))
    assert f"key {key}:" in str(err.value), err.value
    assert reason in str(err.value)


def test_bad_service_and_frontend_names_name_a_key_under_them(tmp_path: Path) -> None:
    renderer, res = _haproxy(SHIPPED.parent, tmp_path)
    with pytest.raises(ResourceError, match=r"key /haproxy/frontends/a b: expected an identif"):
        renderer.render(res, _mirror({**BASE, "/haproxy/frontends/a b": {"bind": []}}))
    with pytest.raises(ResourceError, match=r"key /services/a b: expected an identifier"):
        renderer.render(res, _mirror({**BASE, "/services/a b/config": {}}))


# ---- the template language: loops, macros, get/gets items, fromjson fields, str methods

SAME_TEXT = {"/x/a": '{"port": 0, "name": "ok"}', "/x/b": '{"port": 80, "name": "0"}',
             "/x/c": '{"port": 80, "name": "0"}'}


@pytest.mark.parametrize("template", [
    # a loop over gets items, a fromjson field
    "{% for kv in gets('/x/*') %}{{ (kv.value | fromjson).port | port }}{% endfor %}",
    # a macro called with a field
    "{% macro srv(p) %}{{ p | port }}{% endmacro %}"
    "{% for kv in gets('/x/*') %}{{ srv((kv.value | fromjson)['port']) }}{% endfor %}",
    # a value kept in a variable, used after every document was read
    "{% set docs = gets('/x/*') | map(attribute='value') | map('fromjson') | list %}"
    "{% for d in docs %}{{ d.get('port') | port }}{% endfor %}",
    # get(), and fromjson as a function
    "{{ fromjson(get('/x/a').value)['port'] | string | trim | port }}"
    "{{ fromjson(getv('/x/b'))['port'] | port }}",
    # getvs: values only
    "{% for v in getvs('/x/*') %}{{ json(v).port | port }}{% endfor %}",
])
def test_template_constructs_keep_the_key(tmp_path: Path, template: str) -> None:
    message = _render_error(tmp_path, template, SAME_TEXT)
    assert "key /x/a: expected a port number 1-65535" in message, message


def test_str_methods_and_slices_keep_the_key(tmp_path: Path) -> None:
    data = {"/h/a": "0:80x", "/h/b": "80x.example.com:80", "/h/c": "80x.example.com:81"}
    template = "{% for v in getvs('/h/*') %}{{ v.rpartition(':')[2][:5] | lower | port }}{% endfor %}"
    assert "key /h/a:" in _render_error(tmp_path, template, data)
    template = "{% for kv in gets('/h/*') %}{{ kv.value | hostport }}{% endfor %}"
    assert "key /h/a: expected a port number" in _render_error(tmp_path, template, data)


def test_unsafe_output_names_the_key(tmp_path: Path) -> None:
    data = {"/n/a": '{"v": "x\\ny"}', "/n/b": '{"v": "x\\ny", "w": 1}'}
    message = _render_error(tmp_path, "{% for kv in gets('/n/*') %}{{ (kv.value | fromjson).v }}"
                            "{% endfor %}", data)
    assert "key /n/a: output value contains a line break" in message, message


def test_missing_field_of_a_document_names_it(tmp_path: Path) -> None:
    data = {"/m/a": "{}", "/m/b": '{"port": 80}'}
    message = _render_error(tmp_path, "{% for kv in gets('/m/*') %}{{ (kv.value | fromjson).port }}"
                            "{% endfor %}", data)
    assert "key /m/a: undefined" in message, message


def test_value_mixed_from_several_keys_says_last_key_read(tmp_path: Path) -> None:
    # Concatenation loses the tag: the error says which key was read last, and not "key X:".
    message = _render_error(tmp_path, "{{ (getv('/a') ~ getv('/b')) | port }}",
                            {"/a": "1", "/b": "x"})
    assert "expected a port number" in message
    assert "key /" not in message and "(last key read: /b)" in message, message


def test_many_bad_instances_are_left_out_over_two_renders(tmp_path: Path) -> None:
    renderer, res = _haproxy(SHIPPED.parent, tmp_path)
    bad = {f"/services/web/instances/b{i:02d}": {"address": "10.0.0.1", "port": 0}
           for i in range(Renderer.MAX_NEW_LEFT_OUT + 5)}
    mirror = _mirror({**BASE, **bad, "/services/web/instances/ok": {"address": "10.0.0.9",
                                                                    "port": 80}})
    with pytest.raises(ResourceError, match=r"and 32 other values refused in this render"):
        renderer.render(res, mirror)
    rendered = renderer.render_result(res, mirror)  # goes on from the remembered ones
    assert sorted(w.key for w in rendered.warnings) == sorted(bad)
    assert "server ok 10.0.0.9:80" in rendered.text
