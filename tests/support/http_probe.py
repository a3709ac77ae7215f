"""GET /health and /ready of a running `confsync watch` (its --metrics-address)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any


def probe(base: str, path: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body); (0, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(base + path, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return 0, {}


def ready(port: int, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    """/ready of a watch whose metrics server listens on 127.0.0.1:`port`."""
    return probe(f"http://127.0.0.1:{port}", "/ready", timeout)


def haproxy_not_running(port: int) -> bool:
    """/ready says 503 because the HAProxy of a resource does not run."""
    status, body = ready(port)
    return status == 503 and any(str(r).startswith("not running: haproxy")
                                 for r in body.get("reasons", []))


def config_errors_gauge(base: str) -> float:
    """`confsync_config_errors` on /metrics: the conf.d files left out of the running set."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r"^confsync_config_errors (\S+)$", text, re.M)
    assert found, text[-2000:]
    return float(found.group(1))


def series_value(port: int, series: str) -> float | None:
    """The value of one `/metrics` series (`name{labels}` as exported) of a watch whose metrics
    server listens on 127.0.0.1:`port`; None while it is not exported."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rpartition(" ")[2])
    return None
