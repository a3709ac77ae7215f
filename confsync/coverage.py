"""Which resources a set of changed keys touches, without asking every resource about every key.

`Resource.covers` per resource and key made a DeleteRange of 50,000 keys under 1,000 resources
cost 5 s on the loop (no heartbeat meanwhile). Here each key costs one dictionary look-up per
'/' in it (a resource's directories all end with '/': one of them covers a key exactly when it
is the key up to one of its slashes), and resources with the same directories and names share
one entry, so keys are sorted into groups once however many resources read them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from confsync.resources import Resource


class Coverage:
    def __init__(self, resources: Sequence[Resource]) -> None:
        self._resources = tuple(resources)
        groups: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}
        self._members: list[list[int]] = []  # group -> positions of its resources
        self._dirs: dict[str, list[int]] = {}  # directory ("/a/b/") -> groups it covers
        self._names: dict[str, list[int]] = {}  # exact key -> groups
        for position, resource in enumerate(self._resources):
            signature = (resource.key_dirs, resource.key_names)
            group = groups.get(signature)
            if group is None:
                group = groups[signature] = len(self._members)
                self._members.append([])
                for directory in resource.key_dirs:
                    self._dirs.setdefault(directory, []).append(group)
                for name in resource.key_names:
                    self._names.setdefault(name, []).append(group)
            self._members[group].append(position)

    def touched(self, changed: Iterable[str]) -> list[tuple[Resource, set[str]]]:
        """(resource, the changed keys it covers) for every resource covering one, in the
        order the resources were given; the same as asking `Resource.covers` of each. Resources
        that read the same keys share one set: copy it before changing it."""
        found: dict[int, set[str]] = {}
        dirs, names = self._dirs, self._names
        for key in changed:
            hits = names.get(key)
            if hits is not None:
                for group in hits:
                    found.setdefault(group, set()).add(key)
            slash = key.find("/")
            while slash >= 0:
                hits = dirs.get(key[:slash + 1])
                if hits is not None:
                    for group in hits:
                        found.setdefault(group, set()).add(key)
                slash = key.find("/", slash + 1)
        touched = [(position, keys) for group, keys in found.items()
                   for position in self._members[group]]
        touched.sort(key=lambda item: item[0])
        return [(self._resources[position], keys) for position, keys in touched]
