"""Registration files: `<confdir>/register.d/<name>.toml`, one instance each.

    service = "web"
    port = 8080
    # id = "<hostname>-<port>"   address = "<local address used to reach etcd>"
    weight = 100
    ttl = "10s"                 # the lease; a dead registrar's key is gone after this
    drain = "5s"                # SIGTERM: state "drain" this long, then delete
    on_unhealthy = "delete"     # or "maint"
    maintenance_file = "/var/lib/web/maintenance"
    [extra]                     # more JSON fields in the value
    zone = "eu-1"
    [[check]]
    type = "http"               # http | tcp | exec
    path = "/healthz"

Unknown keys are errors, like conf.d. The value is validated with the template's own schema
(confsync.instances) here, at load time: a bad file is exit 2, never a published value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from confsync import tomlvalues as tv
from confsync.errors import ConfigError
from confsync.filters import InvalidValue, addrport, identifier, port
from confsync.instances import SCHEMA_FIELDS, instance_key, validate_instance
from confsync.resources import join_key

CHECK_TYPES = ("http", "tcp", "exec")
ON_UNHEALTHY = ("delete", "maint")
RESERVED_FIELDS = (*SCHEMA_FIELDS, "host")


@dataclass(frozen=True)
class CheckSpec:
    type: str
    interval: float = 1.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    url: str = ""  # http
    expect_status: tuple[int, ...] = ()  # http: empty = 200-399
    # https: verify against this CA bundle instead of the system's; or not at all (a local
    # service's self-signed certificate, probed on an address its name does not cover).
    ca_file: Path | None = None
    tls_skip_verify: bool = False
    host: str = ""  # tcp
    port: int = 0  # tcp
    command: tuple[str, ...] = ()  # exec
    # The url (http, built from `path`) or host (tcp) is the registration's address, not
    # written in the file: it moves with a detected address (see address.py).
    follows_address: bool = False
    path: str = ""  # http with follows_address: the path the url is built from

    @property
    def target(self) -> str:
        """What it probes, for logs and metric labels."""
        if self.type == "http":
            return self.url
        if self.type == "tcp":
            return f"{self.host}:{self.port}"
        return " ".join(self.command)

    def with_address(self, address: str, port_number: int) -> CheckSpec:
        """This check for a registration moved to `address`: a url or host derived from the old
        address is derived again; one written in the file stays as written."""
        if not self.follows_address:
            return self
        if self.type == "http":
            return replace(self, url=_http_url(address, port_number, self.path))
        return replace(self, host=address)


@dataclass(frozen=True)
class Registration:
    name: str  # the file name without .toml
    source: Path
    service: str
    instance_id: str
    key: str  # full etcd key (global prefix included)
    address: str
    port: int
    weight: int = 100
    ttl: int = 10
    drain: float = 5.0
    on_unhealthy: str = "delete"
    maintenance_file: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    checks: tuple[CheckSpec, ...] = ()
    # No `address` in the file: it is the one this host uses to reach etcd, and follows it.
    address_detected: bool = False

    def value(self, state: str, host: str) -> dict[str, Any]:
        """The JSON document published for `state`; `host` records the owner."""
        return {"address": self.address, "port": self.port, "weight": self.weight,
                "state": state, **self.extra, "host": host}

    def with_address(self, address: str) -> Registration:
        """This registration publishing `address`, its derived checks probing it."""
        return replace(self, address=address,
                       checks=tuple(c.with_address(address, self.port) for c in self.checks))


_TOP = {"service", "id", "address", "port", "weight", "key", "ttl", "drain", "on_unhealthy",
        "maintenance_file", "extra", "check"}
_CHECK = {"type", "interval", "timeout", "rise", "fall", "url", "path", "expect_status",
          "ca_file", "tls_skip_verify", "host", "port", "command"}


class _Reader:
    """Typed access to one TOML table; every error names the file and the key."""

    def __init__(self, source: Path, table: dict[str, Any], where: str = "") -> None:
        self.source = source
        self.table = table
        self.where = where

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(str(self.source), message, self.where + key)

    def get(self, key: str, convert: Callable[[Any], Any], default: Any = None) -> Any:
        if key not in self.table:
            return default
        try:
            return convert(self.table[key])
        except (ValueError, TypeError) as exc:
            raise self.error(key, str(exc)) from None


def _statuses(value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599
                            for v in items):
        raise ValueError(f"expected HTTP status codes (100-599), found {value!r}")
    return tuple(items)


def _unknown(reader: _Reader, known: set[str]) -> None:
    for key in reader.table:
        if key not in known:
            raise reader.error(key, "unknown key")


def _address(value: Any) -> str:
    """`address` as written, refused where it is read when the published value could not hold
    it (the template's own check, `addrport`): an http check's url is built from it, and its
    error blamed the check's `path` ("expected a host in the URL" for an empty address)."""
    text: str = tv.string(value)
    addrport(text, 1)  # raises InvalidValue (a ValueError): "expected an IP address, ..."
    return text


def _http_url(address: str, port_number: int, path: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port_number}{path}"


def _bad_url(url: str) -> str | None:
    """Why the probe could never GET `url` (None: it can): each probe would fail with the same
    error instead of the file being refused with it."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return f"a URL cannot contain spaces or control characters, found {url!r}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is no port)
    except ValueError as exc:
        return f"not a usable URL ({exc}): {url!r}"
    if not parts.hostname:
        return f"expected a host in the URL, found {url!r}"
    return None


def _check(reader: _Reader, address: str, port_number: int) -> CheckSpec:
    _unknown(reader, _CHECK)
    kind = reader.get("type", tv.choice(*CHECK_TYPES))
    if kind is None:
        raise reader.error("type", f"missing: one of {', '.join(CHECK_TYPES)}")
    interval = reader.get("interval", tv.positive_duration, 1.0)
    timeout = reader.get("timeout", tv.positive_duration, min(interval, 1.0))
    spec: dict[str, Any] = {"type": kind, "interval": interval, "timeout": timeout,
                            "rise": reader.get("rise", tv.positive_int, 2),
                            "fall": reader.get("fall", tv.positive_int, 3)}
    allowed = {"http": {"url", "path", "expect_status", "ca_file", "tls_skip_verify"},
               "tcp": {"host", "port"},
               "exec": {"command"}}[kind]
    for key in _CHECK - {"type", "interval", "timeout", "rise", "fall"} - allowed:
        if key in reader.table:
            raise reader.error(key, f"not a setting of a {kind} check")
    if kind == "http":
        url = reader.get("url", tv.string)
        path = reader.get("path", tv.string)
        if url and path:
            raise reader.error("path", "give url or path, not both")
        if url is None:
            path = path or "/"
            if not path.startswith("/"):
                raise reader.error("path", f"expected an absolute path such as /healthz, "
                                   f"found {path!r}")
            url = _http_url(address, port_number, path)
            spec["follows_address"] = True
            spec["path"] = path
        elif not url.startswith(("http://", "https://")):
            raise reader.error("url", f"expected an http:// or https:// URL, found {url!r}")
        if (bad := _bad_url(url)) is not None:
            raise reader.error("path" if spec.get("path") else "url", bad)
        spec["url"] = url
        spec["expect_status"] = reader.get("expect_status", _statuses, ())
        spec["ca_file"] = reader.get("ca_file", lambda v: Path(tv.nonempty(v)))
        spec["tls_skip_verify"] = reader.get("tls_skip_verify", tv.boolean, False)
        if (spec["ca_file"] or spec["tls_skip_verify"]) and not url.startswith("https://"):
            key = "ca_file" if spec["ca_file"] else "tls_skip_verify"
            raise reader.error(key, "only for an https:// url")
        if spec["ca_file"] and spec["tls_skip_verify"]:
            raise reader.error("tls_skip_verify", "give ca_file or tls_skip_verify, not both")
        if spec["ca_file"] is not None:
            # A file not there (yet) is no error here: cert-manager or vault-agent may write
            # it after the registrar starts at boot, and exit 2 is never restarted. The check
            # fails, saying so, until it can be read.
            try:
                spec["ca_file"].is_file()
            except OSError as exc:  # a name too long, a directory on the way not searchable
                raise reader.error("ca_file", f"{spec['ca_file']}: cannot look it up: "
                                   f"{exc.strerror}") from None
    elif kind == "tcp":
        spec["host"] = reader.get("host", tv.nonempty, address)
        spec["follows_address"] = "host" not in reader.table
        spec["port"] = reader.get("port", port, port_number)
    else:
        command = reader.get("command", tv.command)
        if command is None:
            raise reader.error("command", "missing: the probe to run (argv list or string; no "
                               "shell runs it)")
        spec["command"] = command
    return CheckSpec(**spec)


def parse_registration(path: Path, data: dict[str, Any], prefix: str, hostname: str,
                       local_address: Callable[[], str]) -> Registration:
    """One file's table -> Registration. Raises ConfigError naming the file and the key."""
    r = _Reader(path, data)
    _unknown(r, _TOP)
    service = r.get("service", identifier)
    if service is None:
        raise r.error("service", "missing: the service this instance belongs to")
    port_number = r.get("port", port)
    if port_number is None:
        raise r.error("port", "missing: the port the service listens on")
    instance_id = r.get("id", identifier)
    if instance_id is None:
        try:
            instance_id = identifier(f"{hostname}-{port_number}")
        except InvalidValue as exc:
            raise r.error("id", f"the default <hostname>-<port> is not usable: {exc}") from None
    address = r.get("address", _address)
    detected = address is None
    if address is None:
        address = local_address()
    ttl_seconds = r.get("ttl", tv.duration, 10.0)
    if ttl_seconds < 1:
        raise r.error("ttl", f"must be at least 1s (etcd leases count whole seconds), found "
                      f"{ttl_seconds:g}s")
    key = r.get("key", tv.string, instance_key(service, instance_id))
    if not key.startswith("/") or "//" in key or key.endswith("/"):
        raise r.error("key", f"expected an absolute key such as /services/web/instances/a, "
                      f"found {key!r}")
    extra = r.get("extra", lambda v: dict(v) if isinstance(v, dict) else _no_table(v), {})
    for name, value in extra.items():
        if name in RESERVED_FIELDS:
            raise r.error(f"extra.{name}", f"{name!r} is set by confsync register, not by extra")
        if isinstance(value, float) and not math.isfinite(value):  # JSON has no NaN/Infinity
            raise r.error(f"extra.{name}", f"expected a finite number, found {value!r}")
    # "" would be the start directory, which exists: maintenance for good.
    maintenance = r.get("maintenance_file", tv.nonempty_late_user_path)
    checks_raw = data.get("check", [])
    if not isinstance(checks_raw, list) or not all(isinstance(c, dict) for c in checks_raw):
        raise r.error("check", "expected [[check]] tables")
    registration = Registration(
        name=path.stem, source=path, service=service, instance_id=instance_id,
        key=join_key(prefix, key), address=address, port=port_number,
        weight=r.get("weight", lambda v: v, 100), ttl=math.ceil(ttl_seconds),
        drain=r.get("drain", tv.duration, 5.0),
        on_unhealthy=r.get("on_unhealthy", tv.choice(*ON_UNHEALTHY), "delete"),
        maintenance_file=maintenance, extra=extra, address_detected=detected,
        checks=tuple(_check(_Reader(path, c, f"check[{i}]."), address, port_number)
                     for i, c in enumerate(checks_raw)))
    # The template's own validators, on the value as it will be published.
    try:
        validate_instance(key, registration.value("ready", hostname))
    except InvalidValue as exc:
        raise ConfigError(str(path), f"would publish {registration.key} with a value the "
                          f"HAProxy template refuses: {exc}",
                          _toml_key(str(exc).split(":", 1)[0], data, extra)) from None
    return registration


def _toml_key(field_name: str, data: dict[str, Any], extra: dict[str, Any]) -> str:
    """The file's key behind a refused field of the value."""
    if field_name.startswith("id "):
        return "id" if "id" in data else "key"
    if field_name in extra or field_name.startswith("field name"):
        return "extra." + field_name.split("'")[1] if "'" in field_name else "extra." + field_name
    return field_name


def _no_table(value: Any) -> dict[str, Any]:
    raise ValueError(f"expected a table ([extra]), found {value!r}")


def load_registrations(confdir: Path, prefix: str, hostname: str,
                       local_address: Callable[[], str]) -> list[Registration]:
    """Every `register.d/*.toml`, sorted by name. The first bad file raises ConfigError; keys
    claimed twice are an error too (one owner per key)."""
    directory = confdir / "register.d"
    try:
        found_dir = directory.is_dir()
    except OSError as exc:  # a name too long, a directory on the way not searchable
        raise ConfigError(str(directory), f"cannot look it up: {exc.strerror}") from None
    if not found_dir:
        raise ConfigError(str(directory), "no such directory: put one <name>.toml per "
                          "registration there")
    found: list[Registration] = []
    keys: dict[str, Path] = {}
    for path in sorted(directory.glob("*.toml")):
        data = tv.read_toml(path)
        registration = parse_registration(path, data, prefix, hostname, local_address)
        if registration.key in keys:
            raise ConfigError(str(path), f"key {registration.key} is registered by "
                              f"{keys[registration.key]} too", "key")
        keys[registration.key] = path
        found.append(registration)
    if not found:
        raise ConfigError(str(directory), "no registrations (*.toml) found")
    return found
