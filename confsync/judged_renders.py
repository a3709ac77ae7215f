"""The renders that judged a new resource set, by digest, for the apply that follows the switch.

A SIGHUP renders every resource of the new set against the live data before switching to it
(daemon.py `_judge`), and the switched set is then applied, each resource rendered again from
the same mirror by the same templates: 1,000 resources reading 10 prefixes of 5,000 keys held
the loop 7 s, half of it rendering twice. Keeping the judged outputs would cost their size
(~150 MB there); their digests cost nothing. Most files are already what the new set renders,
so the apply takes the bytes at dest as its render's output when they have the digest of the
judge's render, and that render was of the same resource definition, by the same Renderer (its
compiled templates), from the same Mirror unchanged since (`Mirror.version`), and read nothing
but its data (no impure function, no value left out: as `once`'s render memo, render_memo.py).
Anything else renders again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from confsync import render_purity
from confsync.mirror import Mirror
from confsync.render_memo import output_digest
from confsync.resources import Resource

if TYPE_CHECKING:
    from confsync.renderer import Renderer


class RenderInputs(NamedTuple):
    """What a render kept for a later apply was made from. It stands in for that apply's
    render only from the same inputs: the same resource definition, the same Renderer (its
    compiled templates), the same Mirror unchanged since (`Mirror.version`). (The renders
    kept are pure ones: render_purity.py.) Shared with renders_ahead.py."""

    resource: Resource
    renderer: Renderer
    mirror: Mirror
    version: int

    @classmethod
    def of(cls, resource: Resource, renderer: Renderer, mirror: Mirror) -> RenderInputs:
        return cls(resource, renderer, mirror, mirror.version)

    def still(self, resource: Resource, renderer: Renderer, mirror: Mirror) -> bool:
        """Whether a render of `resource` by `renderer` from `mirror` now has these inputs."""
        return (self.renderer is renderer and self.mirror is mirror
                and self.version == mirror.version and self.resource == resource)


class _Judged(NamedTuple):
    inputs: RenderInputs
    digest: str


class JudgedRenders:
    """Per resource name, the digest of the judge's render and what it was rendered from."""

    def __init__(self) -> None:
        self._by_name: dict[str, _Judged] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def render(self, renderer: Renderer, resource: Resource, mirror: Mirror) -> None:
        """Render `resource` as the judge does (raises ResourceError), keeping the digest of
        a render that read nothing but its data."""
        self._by_name.pop(resource.name, None)
        rendered, pure = render_purity.counting(
            lambda: renderer.render_result(resource, mirror))
        if pure and not rendered.warnings:
            self._by_name[resource.name] = _Judged(RenderInputs.of(resource, renderer, mirror),
                                                   output_digest(rendered.text.encode("utf-8")))

    def take(self, resource: Resource, renderer: Renderer, mirror: Mirror,
             dest_content: bytes | None) -> bytes | None:
        """`dest_content` when it is what a render of `resource` by `renderer` from `mirror`
        would give (the judge's render of the same inputs had its digest), else None; each
        judged render stands in once."""
        judged = self._by_name.pop(resource.name, None)
        if (judged is None or dest_content is None
                or not judged.inputs.still(resource, renderer, mirror)
                or judged.digest != output_digest(dest_content)):
            return None
        return dest_content

    def clear(self) -> None:
        self._by_name.clear()
