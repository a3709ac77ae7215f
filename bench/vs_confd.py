"""confsync beside confd 0.17 on the same etcd (issue 11), one table.

(a) `once`: 5,000 keys -> a 5,000-line file; wall and peak RSS of the process alone, median of
    --runs, three ways: "writes" (dest removed first: a render and a write), "unchanged"
    (dest in place and etcd unchanged since the last run: confsync's render memo stands in for
    the render) and "one key changed" (a put before each run: the render and a write). The
    renders are compared.
(b) `watch`, small template, wait_min 0: put -> file renamed into place, p50/p99.
(c) `watch`, 5,000 servers: confsync renders the shipped, validating HAProxy template; confd a
    plain Go template of the same 5,000 server lines (confd cannot run the Jinja one).
(d) HAProxy pool join through `confsync watch` (bench/haproxy_churn.py --driver daemon, runtime
    strategy, the shipped resource's check_server_changes = false), at --wait-min 10ms and 0.

confd columns are skipped when --confd does not name an executable. Loopback only, bounded.
    python -m bench.vs_confd [--confd /tmp/confd-bin/confd] [--runs 9] [--samples 100]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    REPO,
    compile_sources,
    haproxy_confdir,
    load_instances,
    pct,
    put_many,
    run_measured,
    start_etcd,
)
from bench.watch import put_to_file, put_to_files, small_resource, start_confsync, wait_until

CONFD_FIVE_THOUSAND = (
    '{{range gets "/services/web/instances/*"}}{{$i := json .Value}}'
    "    server {{base .Key}} {{$i.address}}:{{$i.port}} weight {{$i.weight}} check\n{{end}}")


def confd_resource(confdir: Path, name: str, template: str, dest: Path, keys: list[str],
                   reload_cmd: str = "") -> Path:
    """A confd confdir with one template resource (confd's own TOML and Go template)."""
    (confdir / "conf.d").mkdir(parents=True, exist_ok=True)
    (confdir / "templates").mkdir(parents=True, exist_ok=True)
    (confdir / "templates" / f"{name}.tmpl").write_text(template)
    (confdir / "conf.d" / f"{name}.toml").write_text(
        f'[template]\nsrc = "{name}.tmpl"\ndest = "{dest}"\nkeys = {json.dumps(keys)}\n'
        + (f"reload_cmd = {json.dumps(reload_cmd)}\n" if reload_cmd else ""))
    return confdir


def confd_argv(confd: str, endpoint: str, confdir: Path, prefix: str, *mode: str) -> list[str]:
    return [confd, *mode, "-backend", "etcdv3", "-node", endpoint, "-confdir", str(confdir),
            "-prefix", prefix, "-log-level", "error"]


def start_confd(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:.2f} ms, p99 {pct(values, 99) * 1000:.1f} ms"


# ---- (a) once


def bench_once(base: Path, endpoint: str, confd: str | None, keys: int,
               runs: int, confsyncs: dict[str, list[str]]) -> dict[str, str]:
    """`confsyncs`: name -> command, each timed in turn within every run (builds compared in
    the same noise)."""
    put_many(endpoint, ((f"/o/svc/k{i:05d}", f"10.{i >> 8 & 255}.{i & 255}.1:8080")
                        for i in range(keys)))
    theirs, cd_dir = base / "once-confd.conf", base / "once-cd"
    commands: dict[str, tuple[list[str], Path]] = {}
    for n, (name, confsync) in enumerate(confsyncs.items()):
        # A confdir and dest each: one build's render memo never meets another's.
        mine, cs_dir = base / f"once-confsync-{n}.conf", base / f"once-cs-{n}"
        (cs_dir / "conf.d").mkdir(parents=True)
        (cs_dir / "templates").mkdir()
        (cs_dir / "templates" / "list.tmpl").write_text(
            "{% for kv in gets('/svc/*') %}server {{ kv.key | base }} {{ kv.value }}\n"
            "{% endfor %}")
        (cs_dir / "conf.d" / "list.toml").write_text(
            f'[template]\nsrc = "list.tmpl"\ndest = "{mine}"\nkeys = ["/svc"]\n')
        commands[name] = ([*confsync, "once", "--confdir", str(cs_dir), "--endpoints", endpoint,
                           "--prefix", "/o", "--log-level", "error"], mine)
    confd_resource(cd_dir, "list", '{{range gets "/svc/*"}}server {{base .Key}} {{.Value}}\n'
                   "{{end}}", theirs, ["/svc"])
    if confd:
        commands["confd"] = (confd_argv(confd, endpoint, cd_dir, "/o", "-onetime"), theirs)
    cases = ("writes", "unchanged", "one key changed")
    walls: dict[tuple[str, str], list[float]] = {(c, n): [] for c in cases for n in commands}
    rss: dict[tuple[str, str], list[int]] = {(c, n): [] for c in cases for n in commands}
    named = list(commands.items())
    for run in range(runs):  # alternating, so both see the same noise
        # In an order that rotates each run: with a fixed one, the later of two builds was
        # favoured (by 2-18 ms in the writing cases, whichever build it was).
        order = named[run % len(named):] + named[:run % len(named)]
        for case in cases:
            if case == "one key changed":
                put_many(endpoint, [("/o/svc/k00000", f"10.0.0.{run % 200 + 2}:8080")])
            for name, (argv, dest) in order:
                if case == "writes":
                    dest.unlink(missing_ok=True)
                seconds, peak, code = run_measured(argv)
                assert code == 0, f"{name} once exited {code}"
                walls[case, name].append(seconds)
                rss[case, name].append(peak)
    mine = commands[next(iter(confsyncs))][1]
    lines = mine.read_text().count("\n")
    assert lines == keys, f"confsync rendered {lines} lines"
    for name, (_, dest) in commands.items():
        assert dest.read_text() == mine.read_text(), f"{name} rendered differently"
    startup, _, _ = run_measured([sys.executable, "-c", "pass"])
    print(f"(a) once, {keys} keys -> {lines}-line file, {runs} runs each "
          f"(python -c pass: {startup:.3f} s)")
    return {f"{name}, {case}": f"{statistics.median(walls[case, name]):.3f} s (min "
                               f"{min(walls[case, name]):.3f}), "
                               f"{statistics.median(rss[case, name]) / 1024:.0f} MB"
            for case in cases for name in commands}


# ---- (b), (c) watch


def measure_watch(start: Callable[[], subprocess.Popen[bytes]], dest: Path, endpoint: str,
                  key: str, make_value: Callable[[int], str], samples: int) -> list[float]:
    """Start a watcher, wait for its first render, then time put -> file."""
    proc = start()
    try:
        wait_until(dest.exists, timeout=60)
        put_to_file(endpoint, key, make_value, dest, 5)  # warm-up, not counted
        return put_to_file(endpoint, key, make_value, dest, samples)
    finally:
        stop(proc)


# A daemon run beside others: (name, its start, the key it watches, its dest).
Resident = tuple[str, Callable[[], subprocess.Popen[bytes]], str, Path]


def puts_in_turn(endpoint: str, daemons: list[Resident],
                 targets: list[tuple[str, Callable[[int], str], Path | None]],
                 samples: int) -> list[list[float]]:
    """Start every daemon (each up to its first file), then time the puts to `targets`, taken
    in turn (`put_to_files`); every daemon stopped after."""
    procs = []
    try:
        for _, start, _, dest in daemons:
            procs.append(start())
            wait_until(dest.exists, timeout=60)
        put_to_files(endpoint, targets, 5)  # warm-up, not counted
        return put_to_files(endpoint, targets, samples)
    finally:
        for proc in procs:
            stop(proc)


def bench_small(base: Path, endpoint: str, confd: str | None, samples: int,
                trees: list[str]) -> dict[str, str]:
    """Every daemon resident at once on its own key and dest, the puts taken in turn (one run
    of one after the other compared two different minutes of a shared machine: p50 ratios of
    0.92-1.4x between runs of the same code). `trees`: other confsync checkouts run beside
    this one (old and new code in the same noise)."""
    daemons: list[Resident] = []
    for n, tree in enumerate([str(REPO), *trees]):
        name = "confsync" if n == 0 else f"confsync {tree}"
        cs = base / f"small-cs{n}"
        dest = cs / "out" / "small.conf"
        dest.parent.mkdir(parents=True)
        small_resource(cs, dest, cs / "reloads")
        put_many(endpoint, [(f"/s{n}/small/v", "init")])
        daemons.append((name, functools.partial(
            start_confsync, cs, endpoint, f"/s{n}", base / f"small-cs{n}.log", "--wait-min", "0",
            tree=Path(tree)), f"/s{n}/small/v", dest))
    if confd:
        cd = base / "small-cd"
        dest = cd / "out" / "small.conf"
        dest.parent.mkdir(parents=True)
        confd_resource(cd, "small", 'value = {{getv "/small/v"}}\n', dest, ["/small"],
                       f"sh -c 'echo r >> {cd / 'reloads'}'")
        put_many(endpoint, [("/c/small/v", "init")])
        daemons.append(("confd", functools.partial(
            start_confd, confd_argv(confd, endpoint, cd, "/c", "-watch"), base / "small-cd.log"),
            "/c/small/v", dest))
    targets: list[tuple[str, Callable[[int], str], Path | None]] = [
        (key, (lambda i: f"v{i}"), dest) for _, _, key, dest in daemons]
    targets.append(("/f/small/v", lambda i: f"v{i}", None))  # the floor, in turn too
    *results, floor = puts_in_turn(endpoint, daemons, targets, samples)
    out = {name: ms(values) for (name, _, _, _), values in zip(daemons, results, strict=True)}
    out["put -> event (pyetcd, floor)"] = ms(floor)
    if confd:
        ratio = statistics.median(results[0]) / statistics.median(results[-1])
        out["confsync / confd, p50"] = f"{ratio:.2f}x"
    print(f"(b) watch, small template, put -> file, {samples} samples each, interleaved")
    return out


def bench_five_thousand(base: Path, endpoint: str, confd: str | None,
                        samples: int, trees: list[str]) -> dict[str, str]:
    """`trees`: other confsync checkouts whose `watch` runs beside this one's, each on 5,000
    instances of its own prefix, the puts taken in turn (old and new code in the same noise,
    as `bench_small`)."""
    def value(i: int) -> str:
        return json.dumps({"address": f"10.200.{i // 250}.{i % 250}", "port": 8080,
                           "weight": 100, "state": "ready"})

    out: dict[str, str] = {}
    daemons: list[Resident] = []
    for n, tree in enumerate([str(REPO), *trees]):
        prefix = "/h" if n == 0 else f"/h{n}"
        load_instances(endpoint, prefix, 5000)
        dest_cs = base / f"h-cs{n}" / "haproxy.cfg"
        dest_cs.parent.mkdir()
        cs = haproxy_confdir(base / f"h-cs{n}", dest_cs, tree=Path(tree))
        daemons.append(("confsync" if n == 0 else f"confsync {tree}", functools.partial(
            start_confsync, cs, endpoint, prefix, base / f"h-cs{n}.log", "--wait-min", "0",
            tree=Path(tree)), f"{prefix}/services/web/instances/i00042", dest_cs))
    results = puts_in_turn(endpoint, daemons, [(key, value, dest) for _, _, key, dest in daemons],
                           samples)
    for (name, _, _, _), values in zip(daemons, results, strict=True):
        out[name] = ms(values)
    if len(results) > 1:
        ratio = statistics.median(results[0]) / statistics.median(results[1])
        out["this / the other tree, p50"] = f"{ratio:.2f}x"
    if confd:
        dest_cd = base / "h-cd" / "haproxy.cfg"
        dest_cd.parent.mkdir()
        cd = confd_resource(base / "h-cd" / "confdir", "servers", CONFD_FIVE_THOUSAND, dest_cd,
                            ["/services"])
        out["confd"] = ms(measure_watch(
            lambda: start_confd(confd_argv(confd, endpoint, cd, "/h", "-watch"),
                                base / "h-cd.log"),
            dest_cd, endpoint, "/h/services/web/instances/i00042", lambda i: value(i + 1000),
            samples))
    print(f"(c) watch, 5,000 servers, put -> file, {samples} samples (confsync: shipped HAProxy "
          f"template; confd: Go template of the server lines)")
    return out


# ---- (d) HAProxy


def bench_haproxy(seconds: float, wait_mins: list[str]) -> dict[str, str]:
    out = {}
    for wait_min in wait_mins:
        done = subprocess.run(
            [sys.executable, str(REPO / "bench" / "haproxy_churn.py"), "--driver", "daemon",
             "--strategy", "runtime", "--skip-server-checks", "--seconds", str(seconds),
             "--wait-min", wait_min], capture_output=True, text=True, timeout=seconds + 180,
            cwd=REPO)
        served = re.search(r"put -> first served: (p50 [\d.]+ ms, p99 [\d.]+ ms)", done.stdout)
        failed = re.search(r"failed requests:\s+(\d+)", done.stdout)
        out[f"wait_min {wait_min}"] = (
            f"{served[1]}, {failed[1] if failed else '?'} failed requests" if served
            else f"no result (exit {done.returncode}): {done.stdout[-300:]}{done.stderr[-300:]}")
    print(f"(d) HAProxy pool join, confsync watch (runtime strategy), {seconds:.0f} s of churn")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--confd", default="/tmp/confd-bin/confd",
                        help="confd 0.17 binary; its columns are skipped when absent")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--haproxy-seconds", type=float, default=20.0)
    parser.add_argument("--wait-min", action="append", dest="wait_mins",
                        help="(d) daemon --wait-min values (default: 10ms and 0)")
    parser.add_argument("--confsync", action="append", help="(a) a confsync executable to "
                        "time, e.g. the console script of a regular (not editable) install; "
                        "repeatable, the runs interleaved (old and new builds side by side); "
                        "default: this checkout through `python -m confsync`")
    parser.add_argument("--tree", action="append", help="(b), (c) another confsync checkout whose "
                        "`watch` runs beside this one's, interleaved (old and new code in the "
                        "same noise); repeatable")
    parser.add_argument("--only", choices=("once", "small", "5000", "haproxy"), action="append",
                        help="run only these figures (repeatable)")
    args = parser.parse_args()
    if args.runs > 50 or args.samples > 1000 or args.haproxy_seconds > 120:
        parser.error("bounded benchmark: at most 50 runs, 1,000 samples, 120 s of churn")
    confd = args.confd if args.confd and os.access(args.confd, os.X_OK) else None
    if confd is None:
        print(f"confd not found at {args.confd}: confd columns skipped")
    only = set(args.only or ("once", "small", "5000", "haproxy"))
    compile_sources()
    rows: list[tuple[str, dict[str, str]]] = []
    with tempfile.TemporaryDirectory(prefix="confsync-vs-confd-") as tmp:
        base = Path(tmp)
        etcd = start_etcd(base / "etcd")
        try:
            if "once" in only:
                paths = args.confsync or []
                confsyncs = {f"confsync {i + 1}" if len(paths) > 1 else "confsync": [path]
                             for i, path in enumerate(paths)} \
                    or {"confsync": [sys.executable, "-m", "confsync"]}
                if len(confsyncs) > 1:
                    for name, (path,) in confsyncs.items():
                        print(f"{name}: {path}")
                rows.append(("once", bench_once(base, etcd.endpoint, confd, args.keys,
                                                args.runs, confsyncs)))
            if "small" in only:
                rows.append(("watch small", bench_small(base, etcd.endpoint, confd,
                                                        args.samples, args.tree or [])))
            if "5000" in only:
                rows.append(("watch 5,000", bench_five_thousand(base, etcd.endpoint, confd,
                                                                args.samples, args.tree or [])))
        finally:
            etcd.stop()
    if "haproxy" in only:
        rows.append(("haproxy join", bench_haproxy(args.haproxy_seconds,
                                                   args.wait_mins or ["10ms", "0"])))
    load = os.getloadavg()[0]
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, load average {load:.2f}")
    for name, results in rows:
        for column, text in results.items():
            print(f"  {name:<13} {column:<27} {text}")


if __name__ == "__main__":
    main()
