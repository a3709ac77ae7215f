"""A client closed while another thread makes its first stub: an error, never a SIGSEGV.

gRPC (1.85) ends the process when a generated stub is made on a closed channel; the library
makes stubs lazily. `watch` died without a line when a watch session's position check made
its first stub as the main loop closed the session (a SIGHUP refused while new prefixes were
read). Run in a child interpreter: the old failure kills the process, not a test worker."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support.etcd_server import free_port

PROLOGUE = """
from confsync.stores.etcd import _Client
from pyetcd.client import Endpoint
import threading

def client():
    ep = Endpoint("127.0.0.1", PORT, secure=False)
    return _Client(endpoints=[ep], timeout=1, failover=True)
"""


def run(body: str) -> subprocess.CompletedProcess[str]:
    code = PROLOGUE.replace("PORT", str(free_port())) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                          capture_output=True, text=True, timeout=60)


def test_a_stub_asked_for_after_close_is_a_value_error() -> None:
    done = run("""
        for name in ("kvstub", "clusterstub", "leasestub", "maintenancestub", "authstub"):
            c = client()
            c.close()
            try:
                getattr(c, name)
            except ValueError as exc:
                assert "closed channel" in str(exc), exc
            else:
                raise SystemExit(f"{name}: no error")
        c = client()
        c.close()
        try:
            c.get_watcher()
        except ValueError:
            pass
        else:
            raise SystemExit("watcher: no error")
        print("ok")
        """)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "ok"


def test_close_racing_the_first_stub_never_kills_the_process() -> None:
    """Many clients, each closed by one thread while another makes its first stub."""
    done = run("""
        errors = 0
        for _ in range(300):
            c = client()
            go = threading.Event()
            def closer():
                go.wait()
                c.close()
            t = threading.Thread(target=closer)
            t.start()
            go.set()
            try:
                c.clusterstub
            except ValueError:
                errors += 1
            t.join()
        print("ok", errors)
        """)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("ok")


def test_a_watch_whose_client_closed_before_its_stream_began_is_no_thread_death() -> None:
    """A session cancelled as it was made: the library's watch thread died of gRPC's
    ValueError, and `watch` logged it as a thread death with a traceback (ERROR)."""
    done = run("""
        deaths = []
        threading.excepthook = lambda args: deaths.append(repr(args.exc_value))
        c = client()
        w = c.get_watcher()
        c.close()
        try:
            w.add_callback(b"/a", lambda response: None, range_end=b"/b")
        except Exception:
            pass  # (the library says WatchTimedOut at once)
        w._callback_thread.join(10)
        print("deaths", deaths)
        """)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "deaths []", done.stdout
