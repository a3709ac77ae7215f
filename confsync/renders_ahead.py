"""Renders made while the loop waits for the rest of a revision, for the apply that follows.

A resource set watching several prefixes waits until the queue is quiet for BATCH_SETTLE after
each change (daemon.py `_settle`: etcd sends a txn over two prefixes as two responses). That
wait and the render used to run one after the other: 10 ms of waiting, then 16-20 ms of a
5,000-server render. Rendered during the wait instead, the output stands in for the apply's
render when nothing moved since: the same resource definition, the same Renderer (its compiled
templates), the same Mirror unchanged (`Mirror.version`), and a render that read nothing but
its data (no impure function, as the render memo and SIGHUP's judged renders ask). A part of the
revision that arrives during the wait changes the mirror, and the apply renders again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from confsync import render_purity
from confsync.judged_renders import RenderInputs
from confsync.mirror import Mirror
from confsync.resources import Resource

if TYPE_CHECKING:
    from confsync.renderer import Renderer, RenderWarning


class _Ahead(NamedTuple):
    inputs: RenderInputs
    content: bytes
    warnings: tuple[RenderWarning, ...]


class RendersAhead:
    """Per resource name, an output rendered ahead and what it was rendered from."""

    def __init__(self) -> None:
        self._by_name: dict[str, _Ahead] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def render(self, renderer: Renderer, resource: Resource, mirror: Mirror) -> None:
        """Render `resource` now and keep its output if the render read only its data. A
        failing render keeps nothing: the apply renders again and reports the failure."""
        self._by_name.pop(resource.name, None)
        try:
            rendered, pure = render_purity.counting(
                lambda: renderer.render_result(resource, mirror))
        except Exception:  # (ResourceError, or a bug: the apply's own render says which)
            return
        if pure:
            self._by_name[resource.name] = _Ahead(RenderInputs.of(resource, renderer, mirror),
                                                  rendered.text.encode("utf-8"),
                                                  rendered.warnings)

    def take(self, resource: Resource, renderer: Renderer, mirror: Mirror
             ) -> tuple[bytes, tuple[RenderWarning, ...]] | None:
        """The output and warnings a render of `resource` by `renderer` from `mirror` would
        give now, when rendered ahead from the same inputs, else None; each stands in once."""
        ahead = self._by_name.pop(resource.name, None)
        if ahead is None or not ahead.inputs.still(resource, renderer, mirror):
            return None
        return ahead.content, ahead.warnings

    def clear(self) -> None:
        self._by_name.clear()
