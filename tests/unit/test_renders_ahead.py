"""A render made while the daemon waits for the rest of a revision stands in for the apply's
only when the inputs are the same (renders_ahead.py).

Each test renders a resource once (the file at dest), changes the data, renders ahead as the
daemon's settle wait does (`Syncer.render_ahead`), then applies. Taken: the apply renders
nothing and writes what the render ahead gave. Data that moved since, another resource
definition, a render that read more than its data, or one that failed: the apply renders again.
"""

from __future__ import annotations

from pathlib import Path

from confsync.mirror import Mirror
from confsync.outcome import FAILED, UPDATED
from confsync.renderer import Rendered, Renderer
from confsync.resources import Resource
from confsync.stores import Change, ChangeBatch, Snapshot
from confsync.sync import Syncer

POOL = "{% for kv in gets('/pool/*') %}server {{ kv.value | hostport }}\n{% endfor %}"


class Setup:
    def __init__(self, tmp_path: Path, template: str = POOL) -> None:
        self.dir = tmp_path
        (tmp_path / "t.tmpl").write_text(template)
        self.resource = self.make()
        self.mirror = Mirror()
        self.mirror.load(Snapshot(1, {"/pool/a": b"10.0.0.1:80", "/pool/b": b"10.0.0.2:80"}))
        self.renderer = Renderer(tmp_path)
        self.renders: list[str] = []
        inner = self.renderer.render_result

        def counted(resource: Resource, mirror: Mirror) -> Rendered:
            self.renders.append(resource.name)
            return inner(resource, mirror)

        self.renderer.render_result = counted  # type: ignore[method-assign]
        self.syncer = Syncer(self.renderer, self.mirror)
        (first,) = self.syncer.apply([self.resource])
        assert first.status == UPDATED, first.error
        self.revision = 1

    def make(self, **kw: object) -> Resource:
        return Resource(name="pool", source=self.dir / "pool.toml", src=self.dir / "t.tmpl",
                        dest=self.dir / "pool.cfg", **{"keys": ("/pool",), "prefix": "", **kw})  # type: ignore[arg-type]

    def put(self, key: str, value: str) -> None:
        self.revision += 1
        self.mirror.apply(ChangeBatch(self.revision, (Change(key, value.encode()),)))

    def ahead(self) -> None:
        self.syncer.render_ahead(self.resource)
        self.renders.clear()

    def dest(self) -> str:
        return (self.dir / "pool.cfg").read_text()


def test_the_apply_takes_the_render_made_ahead_from_the_same_data(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.put("/pool/a", "10.0.0.9:80")
    s.ahead()
    (outcome,) = s.syncer.apply([s.resource])
    assert outcome.status == UPDATED and s.renders == []
    assert s.dest() == "server 10.0.0.9:80\nserver 10.0.0.2:80\n"
    s.put("/pool/a", "10.0.0.8:80")
    s.syncer.apply([s.resource])  # a render ahead stands in once
    assert s.renders == ["pool"] and s.dest() == "server 10.0.0.8:80\nserver 10.0.0.2:80\n"


def test_data_changed_after_the_render_ahead_is_rendered_anew(tmp_path: Path) -> None:
    """The rest of the revision (the other prefix's part of a txn) arrives during the wait."""
    s = Setup(tmp_path)
    s.put("/pool/a", "10.0.0.9:80")
    s.ahead()
    s.put("/pool/b", "10.0.0.7:80")
    (outcome,) = s.syncer.apply([s.resource])
    assert outcome.status == UPDATED and s.renders == ["pool"]
    assert s.dest() == "server 10.0.0.9:80\nserver 10.0.0.7:80\n"


def test_a_value_refused_ahead_is_refused_by_the_apply(tmp_path: Path) -> None:
    """A failing render keeps nothing: the apply renders, fails the same way and says why,
    and the last good file stays."""
    s = Setup(tmp_path)
    s.put("/pool/a", "10.0.0.9:80 backup")
    s.ahead()
    (outcome,) = s.syncer.apply([s.resource])
    assert outcome.status == FAILED and s.renders == ["pool"]
    assert outcome.error is not None and "/pool/a" in str(outcome.error)
    assert s.dest() == "server 10.0.0.1:80\nserver 10.0.0.2:80\n"


def test_another_resource_definition_renders_again(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.put("/pool/a", "10.0.0.9:80")
    s.ahead()
    edited = s.make(mode=0o600)
    (outcome,) = s.syncer.apply([edited])
    assert outcome.status == UPDATED and s.renders == ["pool"]


def test_a_render_that_read_more_than_its_data_is_not_kept(tmp_path: Path) -> None:
    s = Setup(tmp_path, POOL + "{{ getenv('HOME') }}\n")
    s.put("/pool/a", "10.0.0.9:80")
    s.ahead()
    s.syncer.apply([s.resource])
    assert s.renders == ["pool"]
