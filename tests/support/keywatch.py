"""`python -m tests.support.keywatch ENDPOINT KEY`: reads KEY every 20 ms and prints one JSON
line per read: {"t": monotonic time, "value": ..., "create": create revision, "lease": id},
{"t": ..., "value": null} while it is absent, {"t": ..., "error": ...} while etcd does not
answer. For tests that cannot reach etcd themselves (it runs in a network namespace)."""

from __future__ import annotations

import json
import sys
import time

from tests.support.etcd_client import client


def main(endpoint: str, key: str) -> None:
    c = None
    while True:
        line: dict[str, object] = {"t": time.monotonic()}
        try:
            if c is None:
                c = client(endpoint, timeout=1)
            raw, meta = c.get(key)
            line["value"] = None if raw is None else json.loads(raw)
            if meta is not None:
                line["create"], line["lease"] = meta.create_revision, meta.lease_id
        except Exception as exc:  # etcd not up yet
            line["error"] = f"{type(exc).__name__}: {exc}"
            c = None
            time.sleep(0.1)
        print(json.dumps(line), flush=True)
        time.sleep(0.02)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
