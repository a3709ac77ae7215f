"""The renders that judged a new resource set stand in for the apply's only when sound.

Each test renders a resource once (the file at dest), judges it as a SIGHUP does
(`JudgedRenders.render` with the new set's Renderer and the live Mirror), hands the judged
renders to the successor Syncer, and applies. Reused: the apply renders nothing. Any input
that differs from the judge's (the data, the template, the resource) or a render that read
more than its data must render again; the guards and an owed reload still act.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from confsync.judged_renders import JudgedRenders
from confsync.mirror import Mirror
from confsync.outcome import FAILED, UNCHANGED, UPDATED
from confsync.renderer import Rendered, Renderer
from confsync.resources import Resource
from confsync.stores import Change, ChangeBatch, Snapshot
from confsync.sync import Syncer

POOL = "{% for kv in gets('/pool/*') %}server {{ kv.value }}\n{% endfor %}"
REUSED = "not rendered again"


class Setup:
    def __init__(self, tmp_path: Path, template: str = POOL, **kw: object) -> None:
        self.dir = tmp_path
        (tmp_path / "t.tmpl").write_text(template)
        self.resource = self.make(**kw)
        self.mirror = Mirror()
        self.mirror.load(Snapshot(1, {"/pool/a": b"10.0.0.1:80", "/pool/b": b"10.0.0.2:80"}))
        self.renderer = Renderer(tmp_path)
        self.renders: list[str] = []
        self.count(self.renderer)
        self.syncer = Syncer(self.renderer, self.mirror)
        (first,) = self.syncer.apply([self.make()])  # the file the running set wrote
        assert first.status == UPDATED, first.error

    def make(self, **kw: object) -> Resource:
        return Resource(name="pool", source=self.dir / "pool.toml", src=self.dir / "t.tmpl",
                        dest=self.dir / "pool.cfg", **{"keys": ("/pool",), "prefix": "", **kw})  # type: ignore[arg-type]

    def count(self, renderer: Renderer) -> None:
        inner = renderer.render_result

        def counted(resource: Resource, mirror: Mirror) -> Rendered:
            self.renders.append(resource.name)
            return inner(resource, mirror)

        renderer.render_result = counted  # type: ignore[method-assign]

    def judge_and_switch(self, judged_with: Resource | None = None,
                         renderer: Renderer | None = None,
                         resources: Sequence[Resource] | None = None,
                         mirror: Mirror | None = None) -> None:
        """The judge's render, then the successor Syncer (of `renderer` and `mirror`, by
        default the judge's)."""
        judged = JudgedRenders()
        judged.render(self.renderer, judged_with or self.resource, self.mirror)
        self.renders.clear()
        self.syncer = self.syncer.successor(renderer or self.renderer, mirror or self.mirror,
                                            resources or [self.resource], judged)


def test_a_dest_holding_the_judged_render_is_not_rendered_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = Setup(tmp_path)
    s.judge_and_switch()
    with caplog.at_level(logging.DEBUG, logger="confsync"):
        (outcome,) = s.syncer.apply([s.resource])
    assert outcome.status == UNCHANGED and s.renders == []
    assert REUSED in caplog.text
    s.syncer.apply([s.resource])  # a judged render stands in once
    assert s.renders == ["pool"]


def test_a_dest_that_differs_from_the_judged_render_is_rendered_and_written(
        tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.resource.dest.write_text("edited by hand\n")
    s.judge_and_switch()
    (outcome,) = s.syncer.apply([s.resource])
    assert outcome.status == UPDATED and s.renders == ["pool"]
    assert s.resource.dest.read_text() == "server 10.0.0.1:80\nserver 10.0.0.2:80\n"


@pytest.mark.parametrize("change", ["batch", "reset", "another mirror"])
def test_data_changed_between_judge_and_apply_is_rendered(tmp_path: Path, change: str) -> None:
    s = Setup(tmp_path)
    changed = {"/pool/a": b"10.0.0.1:80", "/pool/b": b"10.0.0.9:80"}
    if change == "another mirror":  # (at the same revision and version as the judge's)
        other = Mirror()
        other.load(Snapshot(1, changed))
        s.judge_and_switch(mirror=other)
    else:
        s.judge_and_switch()
    if change == "batch":
        s.mirror.apply(ChangeBatch(2, (Change("/pool/b", b"10.0.0.9:80"),)))
    elif change == "reset":  # a store reset: another store's snapshot, at the judge's revision
        s.mirror.load(Snapshot(1, changed))
    (outcome,) = s.syncer.apply([s.resource])
    assert outcome.status == UPDATED and s.renders == ["pool"]
    assert s.resource.dest.read_text() == "server 10.0.0.1:80\nserver 10.0.0.9:80\n"


def test_a_template_edited_since_the_judge_is_rendered(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    (tmp_path / "t.tmpl").write_text("edited " + POOL)
    newer = Renderer(tmp_path)  # (a Renderer compiles each template once: the next SIGHUP's)
    s.count(newer)
    s.judge_and_switch(renderer=newer)
    (outcome,) = s.syncer.apply([s.resource])
    assert outcome.status == UPDATED and s.renders == ["pool"]
    assert s.resource.dest.read_text().startswith("edited server")


def test_a_resource_edited_since_the_judge_is_rendered(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    narrower = s.make(keys=("/pool/a",))
    s.judge_and_switch(resources=[narrower])  # judged: the resource as it was
    (outcome,) = s.syncer.apply([narrower])
    assert outcome.status == UPDATED and s.renders == ["pool"]
    assert s.resource.dest.read_text() == "server 10.0.0.1:80\n"


def test_a_render_calling_an_impure_function_is_rendered_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZONE", "eu")
    s = Setup(tmp_path, "zone {{ getenv('ZONE') }}\n" + POOL)
    s.judge_and_switch()
    monkeypatch.setenv("ZONE", "us")
    (outcome,) = s.syncer.apply([s.resource])
    assert outcome.status == UPDATED and s.renders == ["pool"]
    assert s.resource.dest.read_text().startswith("zone us\n")


def test_a_render_that_left_a_value_out_is_rendered_again_and_warns(tmp_path: Path) -> None:
    s = Setup(tmp_path, "{% for kv in gets('/pool/*', skip_invalid=True) %}"
                        "{{ kv.value | hostport }}\n{% endfor %}")
    s.mirror.apply(ChangeBatch(2, (Change("/pool/c", b"not an address"),)))
    s.syncer.apply([s.resource])
    s.judge_and_switch()
    (outcome,) = s.syncer.apply([s.resource])
    assert outcome.status == UNCHANGED and s.renders == ["pool"]
    assert [w.key for w in outcome.warnings] == ["/pool/c"]


def test_min_keys_still_guards_a_judged_render(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    guarded = s.make(min_keys=3)
    s.judge_and_switch(judged_with=guarded, resources=[guarded])  # (the judge has no guard)
    (outcome,) = s.syncer.apply([guarded])
    assert outcome.status == FAILED and outcome.error is not None
    assert outcome.error.step == "guard"


def test_keys_that_vanished_still_guard_a_judged_render(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.mirror.apply(ChangeBatch(2, (Change("/pool/a", None), Change("/pool/b", None))))
    s.resource.dest.write_bytes(b"")  # what the judge renders from no keys
    s.judge_and_switch()
    (outcome,) = s.syncer.apply([s.resource])
    assert outcome.status == FAILED and outcome.error is not None
    assert outcome.error.step == "guard" and "vanished" in str(outcome.error)


def test_an_owed_reload_is_made_with_a_judged_render(tmp_path: Path) -> None:
    marker = tmp_path / "reloaded"
    s = Setup(tmp_path, reload_cmd=("touch", str(marker)))
    s.syncer.reload_owed.add(s.resource.name)  # installed, never made live
    s.judge_and_switch()
    (outcome,) = s.syncer.apply([s.resource])
    assert outcome.status == UPDATED and s.renders == []
    assert marker.exists() and not s.syncer.reload_owed
