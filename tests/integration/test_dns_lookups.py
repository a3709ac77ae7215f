"""A template's DNS lookup that fails for now (a resolver timeout, SERVFAIL) is not an answer.

confd's lookupIP returns no addresses then, and so did confsync: a render that happened to run
during a resolver hiccup wrote a file with every resolved server gone (HAProxy or nginx left
without backends), and `watch` kept it until the next change in etcd. Now the render fails,
the last file stays, and it is tried again until the resolver answers.

The resolver is faked inside the `watch` process (a sitecustomize on its PYTHONPATH replaces
socket.getaddrinfo for names under .fake.test): glibc offers no per-process way to point
getaddrinfo at a test DNS server.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.cli import REPO, write_resource
from tests.support.daemon import WatchProcess, read, wait_for

FAKE_RESOLVER = '''
import json, os, socket
_real = socket.getaddrinfo
_dir = os.environ["FAKE_DNS_DIR"]

def getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if not isinstance(name, str) or not name.endswith(".fake.test"):
        return _real(host, *args, **kwargs)
    if os.path.exists(os.path.join(_dir, "servfail")):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    with open(os.path.join(_dir, "hosts.json")) as fh:
        hosts = json.load(fh)
    if name not in hosts:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0)) for ip in hosts[name]]

socket.getaddrinfo = getaddrinfo
'''


def test_a_lookup_that_fails_for_now_keeps_the_file_and_is_retried(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sitecustomize.py").write_text(FAKE_RESOLVER)
    (fake / "hosts.json").write_text(json.dumps({"db.fake.test": ["10.0.0.1"]}))
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  port: 5432\n")
    out = tmp_path / "out"
    write_resource(tmp_path / "cd", "db",
                   "{% for ip in lookupIP('db.fake.test') %}server {{ ip }}:"
                   "{{ getv('/app/port') }}\n{% endfor %}"
                   "{% for ip in lookupIP('gone.fake.test') %}never {{ ip }}\n{% endfor %}",
                   f'dest = "{out}"\nkeys = ["/app"]\n')
    env = {"PYTHONPATH": f"{fake}{os.pathsep}{REPO}", "FAKE_DNS_DIR": str(fake)}
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--backend", "file", "--file",
                     str(data), "--wait-min", "0", log=tmp_path / "watch.log", env=env)
    try:
        # A name that does not exist is an answer: no addresses (as in confd).
        wait_for(lambda: read(out) == "server 10.0.0.1:5432\n", 20, what="first render")
        (fake / "servfail").touch()
        data.write_text("app:\n  port: 5433\n")  # a change renders while DNS fails
        w.wait_log("DNS lookup failed for now", timeout=10)
        assert read(out) == "server 10.0.0.1:5432\n", "a resolver failure emptied the pool"
        (fake / "hosts.json").write_text(json.dumps({"db.fake.test": ["10.0.0.2"]}))
        (fake / "servfail").unlink()
        # No data change: the retry renders once the resolver answers.
        wait_for(lambda: read(out) == "server 10.0.0.2:5433\n", 15, what="the retry")
    finally:
        assert w.stop() == 0
