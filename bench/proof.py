"""CPU of the check-skip proof and the reload step's models, per server-only change.

The shipped HAProxy template with N servers in one backend; each change is one instance
joining, leaving or changing weight (in turn). Prints the median CPU time (process time, on
this thread) of: the proof as `may_skip_check` makes it (from what changed) and the models the
reload step then reads with the runtime changes from them; and the same done the full way
(`server_only_change` with the checked file kept parsed, then the new and old files parsed
again), as the code before it did.
Usage: python -m bench.proof [--instances 5000] [--changes 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.render import TEMPLATES, _instance, pool_mirror
from confsync.haproxy.config_model import parse, runtime_changes
from confsync.haproxy.control import CheckedBase, HAProxyController, server_only_change
from confsync.haproxy.settings import HAProxySettings, Strategy
from confsync.plugins import PluginConfig
from confsync.renderer import Renderer
from confsync.resources import Resource
from confsync.stores import Change, ChangeBatch


def _cpu(step: Callable[[], object]) -> float:
    start = time.thread_time()
    step()
    return time.thread_time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--changes", type=int, default=60)
    args = parser.parse_args()
    mirror = pool_mirror(args.instances)
    src = TEMPLATES / "haproxy.cfg.tmpl"
    work = Path(tempfile.mkdtemp(prefix="bench-proof-"))
    settings = HAProxySettings(strategy=Strategy.RUNTIME, runtime_socket=work / "no.sock",
                               check_server_changes=False)
    resource = Resource(name="h", source=work / "h.toml", src=src, dest=work / "h.cfg",
                        keys=("/services", "/haproxy"), prefix="",
                        plugin=PluginConfig("haproxy", settings), reload_cmd=("true",),
                        check_cmd=("true",))
    renderer = Renderer(TEMPLATES)
    checked = previous = renderer.render(resource, mirror).encode()
    controller = HAProxyController(resource, settings)
    controller._parsed(checked)  # (the reload after the check parsed it)
    base = CheckedBase.of(checked)
    fast: list[float] = []
    full: list[float] = []
    for n in range(args.changes):
        key = f"/services/web/instances/w{(n * 37) % args.instances:05d}"
        value = None if n % 3 == 1 else _instance(n * 37 % args.instances, 8080 + n % 3)
        if n % 3 == 0:
            key = f"/services/web/instances/x{n:05d}"
        mirror.apply(ChangeBatch(n + 2, (Change(key, value),)))
        content = renderer.render(resource, mirror).encode()
        last = previous

        def delta(content: bytes = content, last: bytes = last) -> None:
            assert controller.may_skip_check(last, content, checked)
            runtime_changes(controller._parsed(last), controller._parsed(content))

        def whole(content: bytes = content, last: bytes = last) -> None:
            assert server_only_change(checked, content, base)
            runtime_changes(parse(last.decode()), parse(content.decode()))

        if n % 2:  # (interleaved, each first half the time)
            full.append(_cpu(whole))
            fast.append(_cpu(delta))
        else:
            fast.append(_cpu(delta))
            full.append(_cpu(whole))
        previous = content
    load = os.getloadavg()
    print(f"HAProxy template, {args.instances} servers, {args.changes} server-only changes "
          f"(load {load[0]:.2f} {load[1]:.2f}), CPU per change:")
    for name, times in (("from what changed", fast), ("whole files (before)", full)):
        print(f"  {name:22s} median {statistics.median(times) * 1000:.2f} ms, "
              f"max {max(times) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
