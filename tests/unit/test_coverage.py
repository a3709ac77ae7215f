"""Coverage (the index from changed keys to resources) answers as `Resource.covers` does."""

from __future__ import annotations

import random
from pathlib import Path

from confsync.coverage import Coverage
from confsync.resources import Resource


def resource(name: str, prefix: str, *keys: str) -> Resource:
    return Resource(name=name, source=Path(f"/x/{name}.toml"), src=Path("/x/t"),
                    dest=Path(f"/x/{name}"), keys=keys, prefix=prefix)


def brute(resources: list[Resource], changed: set[str]) -> list[tuple[str, set[str]]]:
    out = []
    for r in resources:
        keys = {k for k in changed if r.covers(k)}
        if keys:
            out.append((r.name, keys))
    return out


def names(coverage: Coverage, changed: set[str]) -> list[tuple[str, set[str]]]:
    return [(r.name, keys) for r, keys in coverage.touched(changed)]


def test_confd_rule_for_directories_and_names() -> None:
    resources = [resource("app", "", "/app"), resource("dir", "", "/app/"),
                 resource("all", "", "/"), resource("deep", "/p", "/a/b", "/a"),
                 resource("same-as-app", "", "/app")]
    changed = {"/app", "/app/x", "/application", "/app/", "plain", "/p/a", "/p/a/b/c", "/p/ab"}
    assert names(Coverage(resources), changed) == brute(resources, changed)
    assert dict(names(Coverage(resources), changed))["app"] == {"/app", "/app/x", "/app/"}


def test_random_sets_agree_with_covers() -> None:
    rng = random.Random(7)
    parts = ["a", "b", "ab", "", "c"]

    def path(depth: int) -> str:
        return "/".join(rng.choice(parts) for _ in range(depth))

    for _ in range(300):
        resources = [resource(f"r{i}", rng.choice(["", "/a", "/a/b", "/ab"]),
                              *(rng.choice(["/", "/" + path(rng.randint(1, 3)),
                                            "/" + path(rng.randint(1, 2)) + "/"])
                                for _ in range(rng.randint(1, 3))))
                     for i in range(rng.randint(1, 8))]
        changed = {rng.choice(["", "/"]) + path(rng.randint(0, 5)) + rng.choice(["", "/"])
                   for _ in range(rng.randint(0, 30))}
        assert names(Coverage(resources), changed) == brute(resources, changed)
