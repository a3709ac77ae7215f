"""The render step: Jinja2 templates, compiled once, fed from the mirror.

Safety is the default, not something each template must remember:
- `StrictUndefined` and a failing `getv` turn a missing key into an error with file and line;
- every `{{ expression }}` whose text holds a line break or another control character fails
  the render, so a value can never add a line to a config (templates that really want
  multi-line text say so with `| multiline`);
- validating filters (`ipaddr`, `port`, `hostport`, `identifier`, ...) reject anything that is
  not what it claims to be; errors name the key the value came from.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from confsync.confd_funcs import register as register_confd_functions
from confsync.errors import ResourceError
from confsync.filters import VALIDATING_FILTERS, InvalidValue
from confsync.mirror import BadValue, Mirror, Value
from confsync.resources import Resource, join_key

if TYPE_CHECKING:
    import jinja2


class RenderFailure(Exception):
    """Raised inside a template; the message names the key at fault when one is known."""


class Multiline(str):
    """Marks template output that may span lines (a PEM block, a banner)."""

    __slots__ = ()


# Characters that end or split a line in some parser: C0 controls but tab, DEL, NEL, LS, PS.
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


class KV(NamedTuple):
    """A key (relative to the resource prefix) and its value, as confd's `gets` returns."""

    key: str
    value: str

    @property
    def Key(self) -> str:
        return self.key

    @property
    def Value(self) -> str:
        return self.value


@functools.lru_cache(maxsize=512)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """confd's path.Match: `*` and `?` never cross a '/', `[...]` classes, `\\` escapes."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                if body.startswith("^"):
                    body = "!" + body[1:]
                negate = body.startswith("!")
                body = body[1:] if negate else body
                body = body.replace("\\", "\\\\")
                out.append(f"[{'^/' if negate else ''}{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def literal_prefix(pattern: str) -> str:
    for index, c in enumerate(pattern):
        if c in "*?[\\":
            return pattern[:index]
    return pattern


_MISSING = object()
_JSON_KINDS: dict[str, type | tuple[type, ...]] = {"object": dict, "array": list,
                                                   "string": str, "number": (int, float)}


class TemplateData:
    """The confd-named functions, bound to one resource's view of the mirror for one render."""

    def __init__(self, mirror: Mirror, resource: Resource,
                 json_cache: dict[str, Any] | None = None,
                 kv_cache: dict[str, KV] | None = None) -> None:
        self._mirror = mirror
        self._prefix = resource.prefix
        # Only keys under the resource's own prefixes are visible: anything else would not
        # re-render it when it changes.
        self._visible = resource.covers
        self._roots = resource.watched_prefixes
        # value -> key it came from, so a filter rejecting a value can name the key.
        self.provenance: dict[str, str] = {}
        # Parsed JSON by text, from the previous render of this resource and for the next one:
        # a one-key change to a 5,000-instance pool parses one document, not 5,000.
        self._json_previous = json_cache or {}
        self.json_used: dict[str, Any] = {}
        # KV items by key, reused while the mirror holds the very same value object.
        self.kv_cache: dict[str, KV] = kv_cache if kv_cache is not None else {}

    def _full(self, key: str) -> str:
        return join_key(self._prefix, key)

    def _checked(self, key: str, value: Value) -> str:
        """Text of a present value: records where it came from, refuses undecodable bytes."""
        if isinstance(value, BadValue):
            raise RenderFailure(f"key {key}: {value.reason()}")
        self.provenance[value] = key
        return value

    def _value(self, full: str) -> str | None:
        value = self._mirror.get(full) if self._visible(full) else None
        return None if value is None else self._checked(full, value)

    def _matching(self, pattern: str) -> list[str]:
        full_pattern = self._full(pattern)
        regex = glob_regex(full_pattern)
        literal = literal_prefix(full_pattern)
        keys = self._mirror.keys_with_prefix(literal)
        if self._visible(literal):  # every match is under one of our roots
            return [k for k in keys if regex.match(k)]
        return [k for k in keys if regex.match(k) and self._visible(k)]

    def getv(self, key: str, default: str | None = None) -> str:
        value = self._value(self._full(key))
        if value is None:
            if default is None:
                raise RenderFailure(f"key {self._full(key)} not found (getv without default)")
            return default
        return value

    def get(self, key: str) -> KV:
        return KV(key, self.getv(key))

    def exists(self, key: str) -> bool:
        full = self._full(key)
        return self._visible(full) and self._mirror.get(full) is not None

    def _values(self, keys: list[str]) -> list[str]:
        get = self._mirror.get
        # keys come from _matching: visible and present
        return [self._checked(key, get(key)) for key in keys]  # type: ignore[arg-type]

    def gets(self, pattern: str) -> list[KV]:
        keys = self._matching(pattern)
        cut = len(self._prefix)
        cache = self.kv_cache
        items = []
        for key, value in zip(keys, self._values(keys), strict=True):
            kv = cache.get(key)
            if kv is None or kv[1] is not value:
                kv = cache[key] = KV(key[cut:], value)
            items.append(kv)
        return items

    def getvs(self, pattern: str) -> list[str]:
        return sorted(self._values(self._matching(pattern)))

    def _children(self, directory: str) -> list[tuple[str, bool]]:
        base = self._full(directory).rstrip("/") + "/"
        if not any(base.startswith(r) or r.startswith(base) for r in self._roots):
            return []
        return [(name, is_dir) for name, is_dir in self._mirror.child_names(base)
                if name and self._visible(base + name + ("/" if is_dir else ""))]

    def ls(self, directory: str) -> list[str]:
        return [name for name, _ in self._children(directory)]

    def lsdir(self, directory: str) -> list[str]:
        return [name for name, is_dir in self._children(directory) if is_dir]

    def fromjson(self, text: str, expect: str | None = None) -> Any:
        """Parse JSON; `expect="object"` (or "array") also fails unless it is one.

        Results are shared between renders: templates treat them as read-only.
        """
        parsed = self._json_previous.get(text, _MISSING) if isinstance(text, str) else _MISSING
        if parsed is _MISSING:
            try:
                parsed = json.loads(text)
            except (TypeError, ValueError) as exc:
                raise self._about(text, f"value is not valid JSON: {exc}") from None
        if expect is not None and not isinstance(parsed, _JSON_KINDS[expect]):
            raise self._about(text, f"expected a JSON {expect}, found {text[:60]!r}")
        if isinstance(text, str):
            self.json_used[text] = parsed
        return parsed

    def _about(self, text: object, message: str) -> RenderFailure:
        key = self.provenance.get(text) if isinstance(text, str) else None
        return RenderFailure(f"key {key}: {message}" if key else message)

    def key_of(self, value: object) -> str | None:
        """The key a rejected value most likely came from: looked up only when a render fails.

        Exact match first; else the most recently read value that contains it (a field of a
        JSON document). Nothing is tracked per value on the happy path.
        """
        if isinstance(value, str) and value in self.provenance:
            return self.provenance[value]
        if not isinstance(value, str | int | float | bool):
            return None  # a missing field, a list...: the caller falls back to the last key read
        needles = {str(value), json.dumps(value)} if not isinstance(value, str) else {
            value, json.dumps(value)[1:-1]}
        for text, key in reversed(self.provenance.items()):
            if any(n and n in text for n in needles):
                return key
        return None

    def functions(self) -> dict[str, Callable[..., Any]]:
        return {"getv": self.getv, "get": self.get, "exists": self.exists, "gets": self.gets,
                "getvs": self.getvs, "ls": self.ls, "lsdir": self.lsdir}


def _finalize(value: Any) -> Any:
    """Runs on every `{{ expression }}`: text that could start a new config line is refused."""
    kind = type(value)
    if kind is int or kind is Multiline:
        return value
    text = value if kind is str else str(value)
    if not text.isprintable() and (bad := _UNSAFE.search(text)):
        raise UnsafeOutput(text, bad.group())
    return value


def _bytecode_cache(jinja2: Any) -> Any:
    """Compiled templates cached by source checksum in a private per-user temp directory, so
    repeated `confsync once` runs skip compilation. Strictly best effort: a read-only or full
    /tmp means no cache, never a failed render."""

    class BestEffortCache(jinja2.FileSystemBytecodeCache):  # type: ignore[misc]
        def load_bytecode(self, bucket: Any) -> None:
            try:
                super().load_bytecode(bucket)
            except (OSError, EOFError, ValueError):
                bucket.reset()

        def dump_bytecode(self, bucket: Any) -> None:
            with contextlib.suppress(OSError):
                super().dump_bytecode(bucket)

    try:
        return BestEffortCache()
    except (OSError, RuntimeError):
        return None


def _fromjson_outside_render(text: str, expect: str | None = None) -> Any:
    return json.loads(text)


def _base(path: str) -> str:
    return path.rpartition("/")[2]


class UnsafeOutput(Exception):
    def __init__(self, text: str, char: str) -> None:
        self.text = text
        super().__init__(
            f"output value contains a line break or control character (U+{ord(char):04X}): "
            f"{text[:60]!r}; refusing to write it (a template that really emits several lines "
            f"from one value says so with '| multiline')")


def _template_location(tb: types.TracebackType | None, templates: set[str]) -> str:
    """The innermost template file and line in a traceback (Jinja maps frames to them)."""
    where = ""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename in templates:
            where = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


class Renderer:
    def __init__(self, templates_dir: Path) -> None:
        import jinja2  # lazy: ~25 ms of import that `confsync --version` should not pay

        self._jinja = jinja2
        self.templates_dir = templates_dir.absolute()
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader([str(self.templates_dir), "/"]),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
            finalize=_finalize,
            cache_size=-1,
        )
        self.env.filters.update(VALIDATING_FILTERS)
        # `fromjson` is rebound to each render's data (renders run one at a time, on the loop's
        # thread; a template looks its filters up when its render starts).
        self.env.filters["fromjson"] = _fromjson_outside_render
        self.env.filters["multiline"] = Multiline
        self.env.filters["base"] = _base
        self.env.filters["dirname"] = lambda path: path.rpartition("/")[0] or "/"
        register_confd_functions(self.env)
        self._template_files: set[str] = set()
        self._json_caches: dict[str, dict[str, Any]] = {}
        self._kv_caches: dict[str, dict[str, KV]] = {}
        self._compiled: dict[Path, jinja2.Template] = {}

    def _name(self, src: Path) -> str:
        try:
            return str(src.relative_to(self.templates_dir))
        except ValueError:
            return str(src).lstrip("/")

    def compile(self, resource: Resource) -> jinja2.Template:
        """Load and compile once; a syntax error names file and line."""
        compiled = self._compiled.get(resource.src)
        if compiled is not None:
            return compiled
        jinja2 = self._jinja
        try:
            template = self.env.get_template(self._name(resource.src))
        except jinja2.TemplateSyntaxError as exc:
            raise ResourceError(resource.name, "render",
                                f"{exc.filename or resource.src}:{exc.lineno}: template "
                                f"syntax error: {exc.message}") from None
        except jinja2.TemplateNotFound as exc:
            raise ResourceError(resource.name, "render",
                                f"template {resource.src} not found ({exc.name})") from None
        except OSError as exc:
            raise ResourceError(resource.name, "render",
                                f"cannot read template {resource.src}: {exc.strerror}") from None
        if template.filename:
            self._template_files.add(template.filename)
        self._compiled[resource.src] = template
        return template

    def render(self, resource: Resource, mirror: Mirror) -> str:
        """Render `resource` against the mirror, or raise ResourceError(step='render')."""
        template = self.compile(resource)
        kv_cache = self._kv_caches.setdefault(resource.name, {})
        if len(kv_cache) > 2 * len(mirror):
            kv_cache.clear()  # keys deleted since: drop them now and then
        data = TemplateData(mirror, resource, self._json_caches.get(resource.name), kv_cache)
        context: dict[str, Any] = data.functions()
        context["fromjson"] = context["json"] = data.fromjson  # `json` is confd's name
        self.env.filters["fromjson"] = data.fromjson
        try:
            text = template.render(context)
        except Exception as exc:
            raise self._explain(resource, data, exc) from None
        finally:
            self.env.filters["fromjson"] = _fromjson_outside_render
        self._json_caches[resource.name] = data.json_used
        return text

    def _explain(self, resource: Resource, data: TemplateData, exc: Exception) -> ResourceError:
        where = _template_location(exc.__traceback__, self._template_files) or str(resource.src)
        if isinstance(exc, RenderFailure):
            reason = str(exc)
        elif isinstance(exc, InvalidValue):
            key = data.key_of(exc.value)
            reason = f"key {key}: {exc}" if key else str(exc)
        elif isinstance(exc, UnsafeOutput):
            key = next((k for v, k in reversed(data.provenance.items())
                        if not v.isprintable() and _UNSAFE.search(v) and v in exc.text), None)
            reason = f"key {key}: {exc}" if key else str(exc)
        elif isinstance(exc, self._jinja.TemplateSyntaxError):
            where = f"{exc.filename}:{exc.lineno}"
            reason = f"template syntax error: {exc.message}"
        elif isinstance(exc, self._jinja.UndefinedError):
            reason = f"undefined: {exc.message}"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        if "key " not in reason and data.provenance:
            # Most failures inside a loop come from the value read last: say which it was.
            reason += f" (last key read: {next(reversed(data.provenance.values()))})"
        return ResourceError(resource.name, "render", f"{where}: {reason}")
