"""The shipped HAProxy template's instance schema, as one function.

`/services/<service>/instances/<id>` holds `{"address", "port", "weight", "state"}`. The template
(templates/haproxy/templates/haproxy.cfg.tmpl) checks each field with the validating filters of
confsync.filters; `validate_instance` applies the very same filters, so `confsync register` can
never publish a value the template would refuse (tests/unit/test_register_schema.py renders the
template to prove the two agree).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from confsync.filters import InvalidValue, addrport, identifier, integer, oneof, port

STATES = ("ready", "drain", "maint")
SCHEMA_FIELDS = ("address", "port", "weight", "state")
MAX_EXTRA_TEXT = 1024
_SERVICE_KEY = re.compile(r"/services/([^/]+)/instances/([^/]+)\Z")


def instance_key(service: str, instance_id: str) -> str:
    """The shipped schema's key (relative to confsync's prefix)."""
    return f"/services/{service}/instances/{instance_id}"


def validate_instance(key: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """The value as the template will read it, or InvalidValue naming the field and the reason.

    Checks what the template checks: the id (last key element) and a schema key's service are
    identifiers, `address` an IP address and `port` 1-65535 (`addrport`), `state` one of
    ready/drain/maint, `weight` 0-256. Other fields are not read by the template; they must be
    JSON scalars (strings printable and short) so no other template can be handed a document.
    """
    instance_id = key.rstrip("/").rpartition("/")[2]
    _field("id (last element of the key)", identifier, instance_id)
    match = _SERVICE_KEY.search(key)
    if match:
        _field("service", identifier, match.group(1))
    if "address" not in value or "port" not in value:
        raise InvalidValue(f"{'address' if 'address' not in value else 'port'}: missing")
    _field("address", lambda a: addrport(a, 1), value["address"])
    _field("port", port, value["port"])
    state = value.get("state", "ready")
    _field("state", lambda s: oneof(s, *STATES), state)
    _field("weight", lambda w: integer(w, 0, 256), value.get("weight", 100))
    for name, extra in value.items():
        if name in SCHEMA_FIELDS:
            continue
        _field(f"field name {name!r}", identifier, name)
        if isinstance(extra, str):
            if len(extra) > MAX_EXTRA_TEXT or not extra.isprintable():
                raise InvalidValue(f"{name}: expected printable text of at most "
                                   f"{MAX_EXTRA_TEXT} characters, found {extra[:60]!r}", extra)
        elif extra is not None and not isinstance(extra, bool | int | float):
            raise InvalidValue(f"{name}: expected a string, number, boolean or null, found "
                               f"{_shown(extra)}", extra)
    return dict(value)


def _shown(value: object) -> str:
    """A refused extra value as JSON; a TOML date or time, which JSON has no form for (and
    json.dumps raised TypeError for), as its type and text."""
    try:
        return json.dumps(value)[:60]
    except (TypeError, ValueError):
        return f"a {type(value).__name__} ({value})"[:60]


def _field(name: str, check: Any, value: object) -> None:
    try:
        check(value)
    except InvalidValue as exc:
        raise InvalidValue(f"{name}: {exc}", value) from None
