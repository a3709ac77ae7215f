"""The seeded fault loop of the chaos tests (`watch`'s and `register`'s): pick a fault by
weight, inject it, then pause and check the process under test, until the time is up; and the
etcd they run against, one member or a 3-member cluster, picked by the seed."""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.daemon import wait_for
from tests.support.etcd_client import client, has_quorum
from tests.support.etcd_server import EtcdMember, discard, start_cluster, start_single


def inject_faults(rng: random.Random, faults: Mapping[str, Callable[[], object]],
                  weights: Mapping[str, int], seconds: float, actions: list[str],
                  after_each: Callable[[], None]) -> None:
    """Inject faults for `seconds`; each name picked is appended to `actions` (what a failure
    report shows), and `after_each` runs after every fault (it pauses, and asserts that the
    process under test lives)."""
    names = list(faults)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        name = rng.choices(names, [weights[n] for n in names])[0]
        actions.append(name)
        faults[name]()
        after_each()


@contextlib.contextmanager
def chaos_etcd(binary: str, base: Path, rng: random.Random,
               cluster_env: str) -> Iterator[list[EtcdMember]]:
    """One member or a 3-member cluster, half the seeds each (`cluster_env` = 1 or 0 forces
    it), serving; every member in the list when it ends is killed (a fault may replace
    members in it)."""
    cluster = bool(int(os.environ.get(cluster_env, str(int(rng.random() < 0.5)))))
    print(f"etcd: {'a 3-member cluster' if cluster else 'one member'}")
    members = (start_cluster(binary, base / "cluster") if cluster
               else [start_single(binary, base / "etcd")])
    try:
        wait_for(lambda: has_quorum(members[0].endpoint), timeout=30, what="etcd quorum")
        yield members
    finally:
        discard(members)


def call_any(members: Sequence[EtcdMember], fn: Callable[[Any], object],
             timeout: float = 2) -> None:
    """`fn(client)` through the first member that takes it; nothing when none does (etcd
    down, frozen or without quorum: that is the point of a chaos run)."""
    for m in members:
        try:
            c = client(m.endpoint, timeout=timeout)
        except Exception:
            continue
        try:
            fn(c)
            return
        except Exception:
            continue
        finally:
            c.close()
