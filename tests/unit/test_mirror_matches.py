"""Glob matches are remembered per key set (Mirror.keys_matching): exact as keys come and go.

A render's `gets` of a 5,000-item pool matched every key again at every render; the match is
now kept until a key is added or removed. A value changed in place keeps it; any insert or
delete (one at a time, in bulk, or by a new snapshot) matches again.
"""

from __future__ import annotations

from pathlib import Path

from confsync.mirror import Mirror
from confsync.renderer import Renderer, glob_regex
from confsync.resources import Resource
from confsync.stores import Change, ChangeBatch, Snapshot

POOL = "/pool/"


def _mirror(keys: list[str]) -> Mirror:
    mirror = Mirror()
    mirror.load(Snapshot(1, {k: b"v" for k in keys}))
    return mirror


def _match(mirror: Mirror) -> list[str]:
    return mirror.keys_matching(POOL, glob_regex(POOL + "*"))


def test_a_value_changed_in_place_keeps_the_match() -> None:
    mirror = _mirror(["/pool/a", "/pool/b", "/pool/b/deeper"])
    first = _match(mirror)
    assert first == ["/pool/a", "/pool/b"]
    mirror.apply(ChangeBatch(2, (Change("/pool/a", b"w"),)))
    assert _match(mirror) is first


def test_keys_added_or_removed_are_matched_anew() -> None:
    mirror = _mirror(["/pool/a", "/pool/b"])
    assert _match(mirror) == ["/pool/a", "/pool/b"]
    mirror.apply(ChangeBatch(2, (Change("/pool/c", b"v"),)))
    assert _match(mirror) == ["/pool/a", "/pool/b", "/pool/c"]
    mirror.apply(ChangeBatch(3, (Change("/pool/a", None),)))
    assert _match(mirror) == ["/pool/b", "/pool/c"]
    # In bulk (the key list sorted anew) and by a snapshot.
    mirror.apply(ChangeBatch(4, tuple(Change(f"/pool/k{i:03d}", b"v") for i in range(300))))
    assert len(_match(mirror)) == 302
    mirror.load(Snapshot(5, {"/pool/z": b"v"}))
    assert _match(mirror) == ["/pool/z"]


def test_a_render_sees_a_key_added_between_two_renders(tmp_path: Path) -> None:
    (tmp_path / "t.tmpl").write_text("{% for kv in gets('/pool/*') %}{{ kv.key }}\n{% endfor %}")
    resource = Resource(name="pool", source=tmp_path / "pool.toml", src=tmp_path / "t.tmpl",
                        dest=tmp_path / "pool.cfg", keys=("/pool",), prefix="")
    mirror = _mirror(["/pool/a"])
    renderer = Renderer(tmp_path)
    assert renderer.render(resource, mirror) == "/pool/a\n"
    mirror.apply(ChangeBatch(2, (Change("/pool/b", b"v"),)))
    assert renderer.render(resource, mirror) == "/pool/a\n/pool/b\n"
    mirror.apply(ChangeBatch(3, (Change("/pool/a", None),)))
    assert renderer.render(resource, mirror) == "/pool/b\n"
