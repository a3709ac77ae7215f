"""`{% memo %}` blocks (confsync/block_memo.py): a kept output stands in only for the very
inputs it was rendered from, and a block that could read anything else does not compile."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from confsync.block_memo import BlockOutputs
from confsync.errors import ResourceError
from confsync.mirror import Mirror
from confsync.renderer import KV, Multiline, Renderer
from confsync.resources import Resource, parse_resource
from confsync.stores import Change, ChangeBatch, Snapshot

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates" / "haproxy" / "templates"
SHIPPED = TEMPLATES / "haproxy.cfg.tmpl"


def _mirror(data: dict[str, str]) -> Mirror:
    mirror = Mirror()
    mirror.load(Snapshot(1, {k: v.encode() for k, v in data.items()}))
    return mirror


def _resource(tmp_path: Path, template: str) -> tuple[Renderer, Resource]:
    tdir = tmp_path / "templates"
    tdir.mkdir(exist_ok=True)
    (tdir / "t.tmpl").write_text(template)
    return Renderer(tdir), Resource(name="r", source=tmp_path / "r.toml", src=tdir / "t.tmpl",
                                    dest=tmp_path / "out", keys=("/",), prefix="")


def _haproxy(src: Path) -> Resource:
    return parse_resource(Path("haproxy.toml"), {"template": {
        "src": str(src), "dest": "/unused", "keys": ["/services", "/haproxy"]}}, TEMPLATES)


def _instance(i: int, **fields: Any) -> str:
    return json.dumps({"address": f"10.0.{i // 256}.{i % 256}", "port": 8080, "weight": 100,
                       "state": "ready", **fields})


def _outcome(renderer: Renderer, resource: Resource, mirror: Mirror) -> object:
    try:
        rendered = renderer.render_result(resource, mirror)
    except ResourceError as exc:
        return "failed: " + str(exc).replace(str(resource.src), "<template>")
    return rendered.text, [str(w) for w in rendered.warnings]


def test_the_shipped_template_renders_what_it_renders_without_its_memo_blocks(
        tmp_path: Path) -> None:
    """Random changes over 300 instances (values seen before, refused ones, deletes, values
    that are not JSON): after each, the text, the values left out and the failures are those
    of the same template with its memo blocks taken out, rendered by a Renderer of its own."""
    plain = tmp_path / "plain.tmpl"
    plain.write_text(re.sub(r"\{% (memo kv|endmemo) %\}\n", "", SHIPPED.read_text()))
    assert "memo" not in re.sub(r"\{#.*?#\}", "", plain.read_text(), flags=re.S)
    data = {"/haproxy/frontends/main": '{"bind": ["127.0.0.1:8080"], "default_service": "web"}'}
    data.update({f"/services/web/instances/w{i:03d}": _instance(i) for i in range(300)})
    mirror = _mirror(data)
    kept, fresh = (Renderer(TEMPLATES), _haproxy(SHIPPED)), (Renderer(TEMPLATES), _haproxy(plain))
    variants = [{"port": 0}, {"address": "10.0.0.1\n    server x 1.2.3.4:1"}, {"state": "up"},
                {"weight": True}, {"weight": 1.0}, {"weight": "7"}, {"weight": 300},
                {"state": "drain"}, {"state": "maint"}, {"address": "::1"}, {"port": 8081}]
    rng = random.Random(11)
    failures = left_out = 0
    for revision in range(2, 402):
        i = rng.randrange(320)
        roll = rng.random()
        value = (None if roll < 0.1 else b"{not json" if roll < 0.14
                 else _instance(i, **rng.choice(variants)).encode())
        mirror.apply(ChangeBatch(revision, (Change(f"/services/web/instances/w{i:03d}",
                                                   value),)))
        mine = _outcome(*kept, mirror)
        assert mine == _outcome(*fresh, mirror), f"revision {revision}"
        failures += isinstance(mine, str)
        left_out += not isinstance(mine, str) and bool(mine[1])  # type: ignore[index]
    assert left_out > 100  # (the refused values were met, and left out)


COUNTED = ("{% for kv in gets('/i/*') %}{% memo kv %}{{ kv.value | counted }};{% endmemo %}"
           "{% endfor %}")


def _counting(renderer: Renderer) -> list[str]:
    seen: list[str] = []
    renderer.env.filters["counted"] = lambda value: seen.append(value) or value
    return seen


def test_a_block_renders_again_only_for_inputs_it_has_not_rendered(tmp_path: Path) -> None:
    renderer, resource = _resource(tmp_path, COUNTED)
    seen = _counting(renderer)
    mirror = _mirror({"/i/a": "1", "/i/b": "2", "/i/c": "3"})
    assert renderer.render(resource, mirror) == "1;2;3;"
    assert seen == ["1", "2", "3"]
    seen.clear()
    assert renderer.render(resource, mirror) == "1;2;3;"
    assert seen == []
    mirror.apply(ChangeBatch(2, (Change("/i/b", b"20"),)))
    assert renderer.render(resource, mirror) == "1;20;3;"
    assert seen == ["20"]
    mirror.apply(ChangeBatch(3, (Change("/i/b", b"2"), Change("/i/d", b"1"))))
    assert renderer.render(resource, mirror) == "1;2;3;1;"
    assert seen == ["20", "1"]  # b's earlier value was kept; d's key is new, not its value


def test_a_renderer_for_one_render_keeps_nothing(tmp_path: Path) -> None:
    renderer, resource = _resource(tmp_path, COUNTED)
    one_shot = Renderer(renderer.templates_dir, reuse_blocks=False)
    seen = _counting(one_shot)
    mirror = _mirror({"/i/a": "1", "/i/b": "2"})
    assert one_shot.render(resource, mirror) == one_shot.render(resource, mirror) == "1;2;"
    assert seen == ["1", "2", "1", "2"]


def test_keys_equal_in_python_but_printed_otherwise_are_not_confused(tmp_path: Path) -> None:
    """1 == 1.0 == True in Python: only text and gets items are kept, by their exact type."""
    renderer, resource = _resource(
        tmp_path, "{% for x in getv('/xs') | fromjson %}{% memo x %}{{ x }}|{% endmemo %}"
                  "{% endfor %}")
    mirror = _mirror({"/xs": '[1, true, 1.0, "1", 1, true]'})
    assert renderer.render(resource, mirror) == "1|True|1.0|1|1|True|"
    assert renderer.render(resource, mirror) == "1|True|1.0|1|1|True|"


def test_a_multiline_output_never_stands_in_for_text_that_finalize_refuses(
        tmp_path: Path) -> None:
    renderer, resource = _resource(
        tmp_path, "{% set v = getv('/v') %}{% for x in [v | multiline, v] %}{% memo x %}"
                  "{{ x }}{% endmemo %}{% endfor %}")
    with pytest.raises(ResourceError, match="line break"):
        renderer.render(resource, _mirror({"/v": "a\nb"}))


def test_each_block_keeps_its_own_outputs(tmp_path: Path) -> None:
    """Two blocks with the same key, in one template and in a template it includes."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "other.tmpl").write_text(
        "{% for kv in gets('/i/*') %}{% memo kv %}C{{ kv.value }}{% endmemo %}{% endfor %}")
    renderer, resource = _resource(
        tmp_path, "{% for kv in gets('/i/*') %}{% memo kv %}A{{ kv.value }}{% endmemo %}"
                  "{% memo kv %}B{{ kv.value }}{% endmemo %}{% endfor %}"
                  "{% include 'other.tmpl' %}")
    mirror = _mirror({"/i/a": "1", "/i/b": "2"})
    assert renderer.render(resource, mirror) == "A1B1A2B2C1C2"
    assert renderer.render(resource, mirror) == "A1B1A2B2C1C2"


def test_blocks_inside_blocks_and_what_a_body_sets_for_itself(tmp_path: Path) -> None:
    renderer, resource = _resource(
        tmp_path,
        "{% for kv in gets('/i/*') %}{% memo kv %}{% set doc = kv.value | fromjson %}"
        "{% macro port(p) %}:{{ p | port }}{% endmacro %}"
        "{% for h in doc.hosts %}{% memo h %}<{{ h | hostname }}>{% endmemo %}{{ port(doc.port) }}"
        "{% endfor %}{% if doc.hosts is defined %};{% endif %}{% endmemo %}{% endfor %}")
    mirror = _mirror({"/i/a": '{"hosts": ["x.example", "y"], "port": 80}',
                      "/i/b": '{"hosts": ["y"], "port": 81}'})
    assert renderer.render(resource, mirror) == "<x.example>:80<y>:80;<y>:81;"
    mirror.apply(ChangeBatch(2, (Change("/i/b", b'{"hosts": ["y"], "port": 82}'),)))
    assert renderer.render(resource, mirror) == "<x.example>:80<y>:80;<y>:82;"


@pytest.mark.parametrize("body, reason", [
    ("{{ loop.index }}", "reads loop"),
    ("{{ getv('/i/a') }}", "reads getv"),
    ("{{ outer }}", "reads outer"),
    ("{{ later }}{% set later = 1 %}", "reads later"),  # read before its set: the outer one
    ("{% for c in kv.value %}{{ outer }}{% endfor %}", "reads outer"),
    ("{{ hostname() }}", "reads hostname"),
    ("{{ range(3) | list }}", "reads range"),
    ("{{ kv.value | getenv }}", "may not use 'getenv'"),
    ("{{ [1, 2] | random }}", "may not use 'random'"),
    ("{% include 'x.tmpl' %}", "may not hold an include"),
    ("{% import 'x.tmpl' as x %}", "may not hold an import"),
    ("{% block b %}{% endblock %}", "may not hold a block"),
])
def test_a_block_that_could_read_more_than_its_keys_does_not_compile(
        tmp_path: Path, body: str, reason: str) -> None:
    renderer, resource = _resource(
        tmp_path, "{% set outer = 'o' %}\n{% for kv in gets('/i/*') %}\n"
                  f"{{% memo kv %}}{body}{{% endmemo %}}{{% endfor %}}")
    with pytest.raises(ResourceError) as failed:
        renderer.render(resource, _mirror({"/i/a": "1"}))
    assert failed.value.step == "render"
    assert "t.tmpl:3: template syntax error: a memo block may " in str(failed.value)
    assert reason in str(failed.value)


def test_a_value_refused_after_its_line_was_kept_is_named_and_left_out(tmp_path: Path) -> None:
    data = {"/haproxy/frontends/main": '{"bind": ["127.0.0.1:8080"], "default_service": "web"}',
            "/services/web/instances/a": _instance(1), "/services/web/instances/b": _instance(2)}
    renderer, resource, mirror = Renderer(TEMPLATES), _haproxy(SHIPPED), _mirror(data)
    assert "server b 10.0.0.2:8080 " in renderer.render(resource, mirror)
    hostile = _instance(2, address="10.0.0.2:8080 weight 1\n    server x 1.2.3.4")
    mirror.apply(ChangeBatch(2, (Change("/services/web/instances/b", hostile.encode()),)))
    rendered = renderer.render_result(resource, mirror)
    assert [w.key for w in rendered.warnings] == ["/services/web/instances/b"]
    assert "expected an IP address" in str(rendered.warnings[0])
    assert "server b " not in rendered.text and "server x" not in rendered.text
    assert "server a 10.0.0.1:8080 " in rendered.text
    mirror.apply(ChangeBatch(3, (Change("/services/web/instances/b", _instance(2).encode()),)))
    assert "server b 10.0.0.2:8080 " in renderer.render(resource, mirror)


def test_outputs_are_kept_in_two_generations_of_at_most_the_limit() -> None:
    outputs = BlockOutputs((str, KV), Multiline)
    assert outputs.lookup(("block", "a")) is None  # off between renders
    assert outputs.keep(("block", "a"), "A") == "A" and len(outputs) == 0
    rng = random.Random(3)
    live = [f"k{i}" for i in range(20)]
    for _ in range(200):
        live[rng.randrange(20)] = f"k{rng.randrange(10**6)}"
        outputs.begin(50)
        for key in live:
            if outputs.lookup(("block", key)) is None:
                outputs.keep(("block", key), key.upper())
        assert type(outputs.lookup(("block", live[0]))) is Multiline
        outputs.end()
        assert len(outputs) <= 100
    outputs.begin(50)  # what the last render used is still kept, whatever turned over
    assert all(outputs.lookup(("block", key)) == key.upper() for key in live)
    assert outputs.lookup(("block", KV("a", "b"))) is None  # (never kept)
    assert outputs.lookup(("block", ("k1",))) is None  # a tuple is not text: never kept
    outputs.keep(("block", 1), "one")
    assert outputs.lookup(("block", 1)) is None
