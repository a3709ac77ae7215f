"""confsync under a locale that is not UTF-8 (a cron job's or an old host's LANG): the files,
their names and the commands' arguments are what a UTF-8 locale gives, byte for byte."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import etcd_client
from tests.support.cli import REPO, write_resource
from tests.support.daemon import WatchProcess, reads, wait_for
from tests.support.etcd_server import EtcdMember

LATIN1 = "en_US.ISO-8859-1"
# What the environment may carry that would change the encoding the child picks.
_LOCALE_VARS = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "PYTHONUTF8", "PYTHONIOENCODING",
                "PYTHONCOERCECLOCALE")


@pytest.fixture(scope="module")
def latin1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a latin-1 locale, compiled into a directory of the test's own
    (LOCPATH), so the host's locales are not touched."""
    localedef = shutil.which("localedef")
    if localedef is None or not Path("/usr/share/i18n/locales/en_US").exists():
        pytest.skip("no localedef or locale sources to make a latin-1 locale")
    locales = tmp_path_factory.mktemp("locales")
    subprocess.run([localedef, "-i", "en_US", "-f", "ISO-8859-1", str(locales / LATIN1)],
                   capture_output=True, timeout=60)
    env = _env(LC_ALL=LATIN1, LOCPATH=str(locales))
    probe = subprocess.run([sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"],
                           env=env, capture_output=True, text=True, timeout=30)
    if probe.stdout.strip() != "iso8859-1":
        pytest.skip(f"the latin-1 locale does not load: {probe.stdout} {probe.stderr}")
    yield env


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in _LOCALE_VARS and not k.startswith("CONFSYNC_")}
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


def _confdir(base: Path, prefix: str, endpoint: str) -> Path:
    """One resource whose template, values, dest path and check argument are not ASCII."""
    confdir = base / "etc"
    (confdir / "conf.d").mkdir(parents=True)
    (confdir / "templates").mkdir()
    out = base / "ausgabe-ü"
    out.mkdir()
    (confdir / "templates" / "app.tmpl").write_text(
        "# café ☃ {{ getv('/app/name') }}\n"
        "{% for kv in gets('/app/pool/*') %}server {{ kv.key | base }} {{ kv.value }}\n"
        "{% endfor %}", encoding="utf-8")
    (confdir / "conf.d" / "app.toml").write_text(
        f'[template]\nsrc = "app.tmpl"\ndest = "{out / "café-☃.conf"}"\nkeys = ["/app"]\n'
        f'prefix = "{prefix}"\ncheck_cmd = ["grep", "-q", "café ☃ naïve €", "{{{{src}}}}"]\n',
        encoding="utf-8")
    (confdir / "confsync.toml").write_text(f'[etcd]\nendpoints = ["{endpoint}"]\n')
    return confdir


def _once(confdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "confsync", "once", "--config",
                           str(confdir / "confsync.toml"), "--confdir", str(confdir)],
                          env=env, cwd=REPO, capture_output=True, timeout=60)


@pytest.fixture(params=["latin-1", "ascii"])
def non_utf8(request: pytest.FixtureRequest) -> dict[str, str]:
    """A latin-1 locale, or ASCII (the C locale with UTF-8 mode turned off, no localedef
    needed)."""
    if request.param == "ascii":
        return _env(LC_ALL="C", PYTHONUTF8="0")
    return dict(request.getfixturevalue("latin1"))


def test_once_in_a_non_utf8_locale_writes_what_a_utf8_locale_writes(
        non_utf8: dict[str, str], etcd: EtcdMember, prefix: str, tmp_path: Path) -> None:
    client = etcd_client.client(etcd.endpoint)
    client.put(f"{prefix}/app/name", "naïve € ☃")
    client.put(f"{prefix}/app/pool/zürich", "10.0.0.1:80")
    utf8_dir = _confdir(tmp_path / "utf8", prefix, etcd.endpoint)
    latin1_dir = _confdir(tmp_path / "latin1", prefix, etcd.endpoint)

    reference = _once(utf8_dir, _env(LC_ALL="C.UTF-8"))
    assert reference.returncode == 0, reference.stderr.decode()
    done = _once(latin1_dir, non_utf8)
    # Was 1: "stage failed: UnicodeEncodeError: 'latin-1' codec can't encode character '\u2603'";
    # without the snowman, the check's argument reached grep in latin-1 and did not match.
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")

    expected = (tmp_path / "utf8" / "ausgabe-ü" / "café-☃.conf").read_bytes()
    assert expected == "# café ☃ naïve € ☃\nserver zürich 10.0.0.1:80\n".encode()
    assert os.listdir(os.fsencode(tmp_path / "latin1" / "ausgabe-ü")) == ["café-☃.conf".encode()]
    assert (tmp_path / "latin1" / "ausgabe-ü" / "café-☃.conf").read_bytes() == expected
    assert "café-☃.conf".encode() in done.stderr  # the log line names it in UTF-8


def test_watch_in_a_latin1_locale_follows_etcd_and_leaves_no_signal_blocked(
        latin1: dict[str, str], etcd: EtcdMember, prefix: str, tmp_path: Path,
        watchers: list[WatchProcess]) -> None:
    client = etcd_client.client(etcd.endpoint)
    client.put(f"{prefix}/app/name", "naïve € ☃")
    confdir = _confdir(tmp_path, prefix, etcd.endpoint)
    dest = tmp_path / "ausgabe-ü" / "café-☃.conf"
    env = {k: v for k, v in latin1.items() if k in ("LC_ALL", "LOCPATH")}
    w = WatchProcess("--config", str(confdir / "confsync.toml"), "--confdir", str(confdir),
                     "--wait-min", "0", log=tmp_path / "watch.log",
                     env={**env, **{k: "" for k in _LOCALE_VARS if k not in env}})
    watchers.append(w)
    wait_for(lambda: reads(dest, "# café ☃ naïve € ☃\n"), what="the first render")
    client.put(f"{prefix}/app/pool/zürich", "10.0.0.2:80")
    wait_for(lambda: reads(dest, "# café ☃ naïve € ☃\nserver zürich 10.0.0.2:80\n"),
             what="the change")
    # The re-executed interpreter unblocked the signals it held across the exec: a child
    # (check, reload, exec mode's service) must never start with SIGTERM blocked.
    status = Path(f"/proc/{w.proc.pid}/status").read_text()
    blocked = int(next(x.split()[1] for x in status.splitlines() if x.startswith("SigBlk")), 16)
    assert not blocked & (1 << (signal.SIGTERM - 1) | 1 << (signal.SIGHUP - 1))
    assert w.stop() == 0
    assert "café-☃.conf" in w.output()
    assert "Traceback" not in w.output() and "UnicodeEncodeError" not in w.output()


def test_a_sighup_during_the_utf8_re_exec_is_held_not_fatal(
        latin1: dict[str, str], etcd: EtcdMember, prefix: str, tmp_path: Path,
        watchers: list[WatchProcess]) -> None:
    """SIGHUP's default action ends a process: one sent while the re-executed interpreter
    starts (before it holds SIGHUP) must wait for it, as one sent during a plain start does."""
    etcd_client.client(etcd.endpoint).put(f"{prefix}/app/name", "x")
    confdir = _confdir(tmp_path, prefix, etcd.endpoint)
    env = {k: v for k, v in latin1.items() if k in ("LC_ALL", "LOCPATH")}
    w = WatchProcess("--config", str(confdir / "confsync.toml"), "--confdir", str(confdir),
                     log=tmp_path / "watch.log",
                     env={**env, **{k: "" for k in _LOCALE_VARS if k not in env}})
    watchers.append(w)
    cmdline = Path(f"/proc/{w.proc.pid}/cmdline")
    wait_for(lambda: b"\0-X\0utf8\0" in cmdline.read_bytes(), timeout=10, interval=0.001,
             what="the re-exec")
    w.signal(signal.SIGHUP)  # the new interpreter is starting: tens of ms before it holds it
    w.wait_log("SIGHUP: reloading configuration")
    assert w.proc.poll() is None
    assert w.stop() == 0


def test_check_with_a_pythonioencoding_that_cannot_encode_the_output_escapes_it(
        tmp_path: Path) -> None:
    """PYTHONIOENCODING overrides UTF-8 mode's stdout, with strict errors."""
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  name: 'naïve'\n", encoding="utf-8")
    write_resource(tmp_path, "app", "name {{ getv('/app/name') }}\n",
                   f'dest = "{tmp_path / "café-☃.conf"}"\nkeys = ["/app"]')
    done = subprocess.run([sys.executable, "-m", "confsync", "check", "--diff", "--confdir",
                           str(tmp_path), "--backend", "file", "--file", str(data)],
                          env=_env(LC_ALL="C.UTF-8", PYTHONIOENCODING="ascii"), cwd=REPO,
                          capture_output=True, timeout=60)
    # Was 1: a UnicodeEncodeError traceback at the first line naming the dest.
    assert done.returncode == 4, done.stderr.decode("utf-8", "replace")
    assert b"# app: would change " + str(tmp_path).encode() + b"/caf\\xe9-\\u2603.conf" in done.stdout
    assert b"+name na\\xefve" in done.stdout
