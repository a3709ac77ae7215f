"""Template resources: one `[template]` TOML file each under `<confdir>/conf.d/`.

Field names follow confd so resource files port over; unknown keys are errors (confd ignores
typos silently, which is how a misspelt `check_cmd` ends up never running). A reload plugin's
settings live in its own table beside `[template]` (e.g. `[haproxy]`, see confsync/targets.py);
this module hands that table to the plugin and keeps what it returns, knowing nothing of it.
"""

# No `from __future__ import annotations` here: it makes each NamedTuple field's annotation a
# string, which typing compiles (a ForwardRef per field) as the class is made, on every run;
# the records of the one-shot path before etcd is asked cost 0.2 ms more so (issue 11).
import functools
import logging
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from confsync import tomlvalues as tv
from confsync.errors import ConfigError
from confsync.paths import absolute
from confsync.placeholders import unknown_placeholder
from confsync.plugins import PluginConfig, legacy_keys, plugin, plugin_tables
from confsync.render_limits import parse_size

log = logging.getLogger(__name__)


class _ResourceFields(NamedTuple):
    """A resource's settings, as its file gave them (Resource adds what they imply)."""

    name: str
    source: Path  # the .toml file it came from, for error messages
    src: Path  # absolute template path
    dest: Path
    keys: tuple[str, ...]  # as written, relative to `prefix`
    prefix: str  # global prefix + resource prefix, normalised ("" or "/a/b")
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    owner: str | None = None  # a user name, looked up at each write until found (owners.py)
    group: str | None = None  # a group name, likewise
    check_cmd: tuple[str, ...] = ()
    reload_cmd: tuple[str, ...] = ()
    check_timeout: float = 30.0
    reload_timeout: float = 30.0
    reload_signal: signal.Signals | None = None
    pidfile: Path | None = None
    process: str | None = None
    wait_min: float | None = None
    wait_max: float | None = None
    min_keys: int | None = None  # None: only refuse to go from some keys to none
    # A reload plugin's own table (e.g. [haproxy]), as the plugin parsed it; None: plain reload.
    plugin: PluginConfig | None = None
    # Render limits; None: the global defaults (settings `render_timeout`, `max_output_size`).
    render_timeout: float | None = None
    max_output_size: int | None = None


class Resource(_ResourceFields):
    """One template resource, validated and normalised; equal, hashed and shown by its fields.

    A NamedTuple, not a frozen dataclass: one `exec` to create, where the dataclass's six (one
    per generated method, Python 3.11) cost every one-shot run ~0.5 ms, and with the other
    records of that path gone, importing `dataclasses` (and `inspect`) ~4 ms (issue 11).
    Change one with `_replace`; what the fields imply is derived at its first use.
    """

    @functools.cached_property
    def watched_prefixes(self) -> tuple[str, ...]:
        """Absolute store prefixes this resource reads; derived once, used on every change."""
        return tuple(join_key(self.prefix, k) for k in self.keys)

    @functools.cached_property
    def key_dirs(self) -> tuple[str, ...]:
        """What they cover, by confd's rule: "/app" is the key /app and the directory "/app/",
        never /application (a key written with its slash, "/app/", is the directory alone)."""
        return merge_dirs(p if p.endswith("/") else p + "/" for p in self.watched_prefixes)

    @functools.cached_property
    def key_names(self) -> tuple[str, ...]:
        dirs = self.key_dirs
        return tuple(sorted({p for p in self.watched_prefixes
                             if not p.endswith("/") and not p.startswith(dirs)}))

    def covers(self, key: str) -> bool:
        """True when a change to absolute `key` can change this resource's output."""
        return key.startswith(self.key_dirs) or key in self.key_names


def merge_dirs(dirs: Iterable[str]) -> tuple[str, ...]:
    """Drop directories inside another one, so no key is counted twice."""
    merged: list[str] = []
    for directory in sorted(set(dirs)):
        if not (merged and directory.startswith(merged[-1])):
            merged.append(directory)
    return tuple(merged)


def normalise_prefix(prefix: str) -> str:
    """'/a/b/' and 'a/b' -> '/a/b'; '' and '/' -> ''."""
    parts = [p for p in prefix.split("/") if p]
    return "/" + "/".join(parts) if parts else ""


def join_key(prefix: str, key: str) -> str:
    """Join a prefix and a key the way confd does: '/app' + '/db/host' -> '/app/db/host'."""
    key = key if key.startswith("/") else "/" + key
    return (prefix + key) if prefix else key


# uid_t/gid_t are 32-bit unsigned, and (uid_t)-1 means "leave unchanged" to chown(2).
MAX_ID = 2**32 - 2


def _parse_id(source: str, key: str, value: int) -> int:
    if not 0 <= value <= MAX_ID:
        raise ConfigError(source, f"expected a numeric id from 0 to {MAX_ID}, found {value}", key)
    return value


def _parse_owner(source: str, key: str, value: Any, kind: str) -> int | str:
    """A numeric id, or a name kept as written: it is looked up when the file is written
    (confsync/owners.py), so a user the system does not know yet fails that write, not conf.d."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _parse_id(source, key, value)
    name = tv.convert(source, key, tv.nonempty, value)
    if "\0" in name:  # no name has one: a mistake in the file, not a user still to come
        raise ConfigError(source, f"no such {kind} {name!r} on this system", key)
    return name


_KNOWN_KEYS = frozenset(
    {
        "src", "dest", "keys", "prefix", "mode", "owner", "group", "uid", "gid",
        "check_cmd", "reload_cmd", "check_timeout", "reload_timeout", "reload_signal",
        "pidfile", "process", "wait_min", "wait_max", "min_keys",
        "render_timeout", "max_output_size",
    }
)  # fmt: skip


def parse_resource(
    source: Path, data: dict[str, Any], templates_dir: Path, global_prefix: str = ""
) -> Resource:
    """Validate one resource file's parsed TOML; every error names the file and the key."""
    src_name = str(source)
    known_tables = {"template", *plugin_tables()}
    unknown_tables = set(data) - known_tables
    if unknown_tables:
        raise ConfigError(src_name, "unknown table or key (expected [template], or a plugin "
                          f"table: {', '.join(f'[{t}]' for t in plugin_tables())})",
                          sorted(unknown_tables)[0])
    table = data.get("template")
    if not isinstance(table, dict):
        raise ConfigError(src_name, "missing [template] table")
    where = src_name
    moved = legacy_keys()
    for key in table:
        if key not in _KNOWN_KEYS and key not in moved:
            raise ConfigError(where, f"unknown key (known keys: {', '.join(sorted(_KNOWN_KEYS))})",
                              f"template.{key}")
    for required in ("src", "dest", "keys"):
        if required not in table:
            raise ConfigError(where, "required key is missing", f"template.{required}")

    src = Path(tv.convert(where, "template.src", tv.nonempty_path_text, table["src"]))
    src = absolute(src if src.is_absolute() else templates_dir / src)
    try:
        # Not there yet is no error (a deploy writing conf.d/ before templates/): the render
        # fails saying so, and is retried until the file appears (renderer.py).
        src.is_file()
    except OSError as exc:  # a name too long, a directory on the way not searchable: no ENOENT
        raise ConfigError(where, f"cannot look up template file {src}: {exc.strerror}",
                          "template.src") from None
    dest = Path(tv.convert(where, "template.dest", tv.nonempty_path_text, table["dest"]))
    dest = absolute(dest)

    keys = table["keys"]
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        # `[]`: a template that reads no keys (getenv, lookups), as confd allows.
        raise ConfigError(where, f"expected a list of key prefixes ([] for none), found "
                          f"{keys!r}", "template.keys")
    own_prefix = table.get("prefix", "")
    if not isinstance(own_prefix, str):
        raise ConfigError(where, f"expected a string, found {own_prefix!r}", "template.prefix")
    prefix = normalise_prefix(normalise_prefix(global_prefix) + "/" + own_prefix)

    kwargs: dict[str, Any] = {}
    if "mode" in table:
        kwargs["mode"] = tv.convert(where, "template.mode", tv.octal_mode, table["mode"])
    if "uid" in table and "owner" in table:
        raise ConfigError(where, "give owner or uid, not both", "template.uid")
    if "gid" in table and "group" in table:
        raise ConfigError(where, "give group or gid, not both", "template.gid")
    for key, kind in (("owner", "user"), ("uid", "user"), ("group", "group"), ("gid", "group")):
        if key in table:  # an id goes to uid/gid, a name to owner/group
            parsed = _parse_owner(where, f"template.{key}", table[key], kind)
            number, name = ("uid", "owner") if kind == "user" else ("gid", "group")
            kwargs[number if isinstance(parsed, int) else name] = parsed
    for key in ("check_cmd", "reload_cmd"):
        if key in table:
            raw = table[key]
            kwargs[key] = tv.convert(where, f"template.{key}", tv.optional_command_strict, raw)
            for arg in [raw] if isinstance(raw, str) else kwargs[key]:
                if (bad := unknown_placeholder(arg)) is not None:
                    raise ConfigError(where, f"{bad} is not substituted: only {{{{src}}}} and "
                                      f"{{{{dest}}}} (or {{{{.src}}}}, {{{{.dest}}}}) are",
                                      f"template.{key}")
    for key in ("check_timeout", "reload_timeout", "wait_min", "wait_max"):
        if key in table:
            kwargs[key] = tv.convert(where, f"template.{key}", tv.duration, table[key])
    if "render_timeout" in table:
        kwargs["render_timeout"] = tv.convert(where, "template.render_timeout",
                                              tv.positive_duration, table["render_timeout"])
    if "max_output_size" in table:
        kwargs["max_output_size"] = tv.convert(where, "template.max_output_size", parse_size,
                                               table["max_output_size"])
    if "reload_signal" in table:
        kwargs["reload_signal"] = tv.convert(where, "template.reload_signal", tv.signal_name,
                                             table["reload_signal"])
        if "pidfile" not in table and "process" not in table:
            raise ConfigError(where, "reload_signal needs pidfile or process to find the target",
                              "template.reload_signal")
    if "pidfile" in table:
        kwargs["pidfile"] = tv.convert(where, "template.pidfile", tv.nonempty_late_user_path,
                                       table["pidfile"])
    if "process" in table:
        kwargs["process"] = tv.convert(where, "template.process", tv.nonempty, table["process"])
    if "min_keys" in table:
        kwargs["min_keys"] = tv.convert(where, "template.min_keys", tv.non_negative_int,
                                        table["min_keys"])
    if kwargs.get("reload_cmd") and kwargs.get("reload_signal"):
        raise ConfigError(where, "give reload_cmd or reload_signal, not both",
                          "template.reload_signal")
    kwargs["plugin"] = _parse_plugin(where, data, table, kwargs, moved)
    return Resource(name=source.stem, source=source, src=src, dest=dest, keys=tuple(keys),
                    prefix=prefix, **kwargs)


def _parse_plugin(where: str, data: dict[str, Any], table: dict[str, Any],
                  parsed: dict[str, Any], moved: dict[str, str]) -> PluginConfig | None:
    """The one plugin table of the file, if any, parsed by its plugin.

    Keys that once lived in `[template]` (e.g. `master_socket`) are still read from there,
    with a warning saying where they belong now.
    """
    names = [name for name in plugin_tables() if name in data]
    legacy = {key: moved[key] for key in table if key in moved}
    for owner in legacy.values():
        if owner not in names:
            names.append(owner)
    if len(names) > 1:
        raise ConfigError(where, "one reload plugin table per resource", names[1])
    if not names:
        return None
    name = names[0]
    own = data.get(name, {})
    if not isinstance(own, dict):
        raise ConfigError(where, "expected a table", name)
    if legacy:
        both = sorted(set(legacy) & set(own))
        if both:
            raise ConfigError(where, f"given in [template] and in [{name}]; keep the [{name}] "
                              "one", f"template.{both[0]}")
        log.warning("%s: %s in [template] is deprecated; move %s to a [%s] table", where,
                    ", ".join(sorted(legacy)), "it" if len(legacy) == 1 else "them", name)
        own = {**own, **{key: table[key] for key in legacy}}
    settings = plugin(name).parse(where, own, parsed, "template" if legacy and not
                                  data.get(name) else name)
    return PluginConfig(name, settings)


# A NamedTuple, not a dataclass: one `exec` to create, where a frozen dataclass's six (one
# per generated method, Python 3.11) were ~0.3 ms of every one-shot run (issue 11).
class ResourceSet(NamedTuple):
    """The resources that loaded, and an error line for each file that did not."""

    resources: tuple[Resource, ...]
    errors: tuple[str, ...]


def load_resources(confdir: Path, global_prefix: str = "") -> ResourceSet:
    """Read every `conf.d/*.toml`. A bad file is reported, never fatal to the good ones."""
    confd = confdir / "conf.d"
    try:
        found = confd.is_dir()
    except OSError as exc:  # a name too long, a directory on the way not searchable
        raise ConfigError(str(confd), f"cannot look up the conf.d directory: {exc.strerror}") \
            from None
    if not found:
        raise ConfigError(str(confd), "conf.d directory does not exist")
    templates_dir = confdir / "templates"
    resources: list[Resource] = []
    errors: list[str] = []
    dests: dict[Path, str] = {}
    for path in sorted(confd.glob("*.toml")):
        try:
            data = tv.read_toml(path)
            res = parse_resource(path, data, templates_dir, global_prefix)
            if res.dest in dests:
                raise ConfigError(str(path), f"dest {res.dest} is also written by resource "
                                  f"{dests[res.dest]}", "template.dest")
        except ConfigError as exc:
            errors.append(str(exc))
        else:
            dests[res.dest] = res.name
            resources.append(res)
    if not resources and not errors:
        errors.append(f"{confd}: no template resources (*.toml) found")
    return ResourceSet(tuple(resources), tuple(errors))
