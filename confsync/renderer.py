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

import functools
import json
import posixpath
import re
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confsync.errors import ResourceError
from confsync.filters import VALIDATING_FILTERS, InvalidValue
from confsync.mirror import BadValue, Mirror
from confsync.resources import Resource, join_key

if TYPE_CHECKING:
    import jinja2


class RenderFailure(Exception):
    """Raised inside a template; carries the key at fault when one is known."""

    def __init__(self, message: str, key: str | None = None) -> None:
        self.key = key
        super().__init__(message)


class Multiline(str):
    """Marks template output that may span lines (a PEM block, a banner)."""

    __slots__ = ()


# Characters that end or split a line in some parser: C0 controls but tab, DEL, NEL, LS, PS.
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


@dataclass(frozen=True)
class KV:
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


class TemplateData:
    """The confd-named functions, bound to one resource's view of the mirror for one render."""

    def __init__(self, mirror: Mirror, resource: Resource) -> None:
        self._mirror = mirror
        self._prefix = resource.prefix
        self._roots = resource.watched_prefixes
        # value -> key it came from, so a filter rejecting a value can name the key.
        self.provenance: dict[str, str] = {}

    def _full(self, key: str) -> str:
        return join_key(self._prefix, key)

    def _visible(self, full: str) -> bool:
        # Only keys under the resource's own prefixes: anything else would not re-render it.
        return any(full.startswith(root) for root in self._roots)

    def _value(self, full: str) -> str | None:
        if not self._visible(full):
            return None
        value = self._mirror.get(full)
        if isinstance(value, BadValue):
            raise RenderFailure(f"key {full}: {value.reason()}", full)
        if value is not None:
            self.provenance[value] = full
        return value

    def _relative(self, full: str) -> str:
        return full[len(self._prefix):] if self._prefix else full

    def _matching(self, pattern: str) -> list[str]:
        full_pattern = self._full(pattern)
        regex = glob_regex(full_pattern)
        return [k for k in self._mirror.keys_with_prefix(literal_prefix(full_pattern))
                if regex.match(k) and self._visible(k)]

    def getv(self, key: str, default: str | None = None) -> str:
        value = self._value(self._full(key))
        if value is None:
            if default is None:
                raise RenderFailure(f"key {self._full(key)} not found (getv without default)",
                                    self._full(key))
            return default
        return value

    def get(self, key: str) -> KV:
        return KV(key, self.getv(key))

    def exists(self, key: str) -> bool:
        full = self._full(key)
        return self._visible(full) and self._mirror.get(full) is not None

    def gets(self, pattern: str) -> list[KV]:
        return [KV(self._relative(k), self._value(k) or "") for k in self._matching(pattern)]

    def getvs(self, pattern: str) -> list[str]:
        return sorted(self._value(k) or "" for k in self._matching(pattern))

    def _children(self, directory: str) -> tuple[set[str], set[str]]:
        base = self._full(directory).rstrip("/") + "/"
        names: set[str] = set()
        dirs: set[str] = set()
        for key in self._mirror.keys_with_prefix(base):
            if not self._visible(key):
                continue
            head, sep, _ = key[len(base):].partition("/")
            if head:
                names.add(head)
                if sep:
                    dirs.add(head)
        return names, dirs

    def ls(self, directory: str) -> list[str]:
        return sorted(self._children(directory)[0])

    def lsdir(self, directory: str) -> list[str]:
        return sorted(self._children(directory)[1])

    def fromjson(self, text: str) -> Any:
        key = self.provenance.get(text)
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise RenderFailure(f"{'key ' + key + ': ' if key else ''}value is not valid JSON: "
                                f"{exc}", key) from None
        if key:
            self._trace(data, key)
        return data

    def _trace(self, data: Any, key: str) -> None:
        if isinstance(data, str):
            self.provenance[data] = key  # latest wins: renders are sequential
        elif isinstance(data, dict):
            for value in data.values():
                self._trace(value, key)
        elif isinstance(data, list):
            for value in data:
                self._trace(value, key)

    def functions(self) -> dict[str, Callable[..., Any]]:
        return {"getv": self.getv, "get": self.get, "exists": self.exists, "gets": self.gets,
                "getvs": self.getvs, "ls": self.ls, "lsdir": self.lsdir}


def _unsafe_output(text: str, provenance: dict[str, str]) -> RenderFailure:
    bad = _UNSAFE.search(text)
    assert bad is not None
    key = next((k for v, k in provenance.items() if _UNSAFE.search(v) and v in text), None)
    return RenderFailure(
        f"{'key ' + key + ': ' if key else ''}output value contains a line break or control "
        f"character (U+{ord(bad.group()):04X}): {text[:60]!r}; refusing to write it (a template "
        f"that really emits several lines from one value says so with '| multiline')", key)


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
            cache_size=-1,
        )
        self.env.finalize = self._finalizer()
        for name, check in VALIDATING_FILTERS.items():
            self.env.filters[name] = self._traced_filter(check)
        self.env.filters["fromjson"] = jinja2.pass_context(
            lambda ctx, text: ctx["__confsync_data"].fromjson(text))
        self.env.filters["multiline"] = Multiline
        self.env.filters["base"] = posixpath.basename
        self.env.filters["dirname"] = posixpath.dirname
        self._template_files: set[str] = set()

    def _finalizer(self) -> Callable[..., Any]:
        @self._jinja.pass_context
        def finalize(ctx: Any, value: Any) -> Any:
            if isinstance(value, Multiline):
                return value
            text = value if isinstance(value, str) else str(value)
            if not text.isprintable() and _UNSAFE.search(text):
                raise _unsafe_output(text, ctx["__confsync_data"].provenance)
            return value

        return finalize

    def _traced_filter(self, check: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a validating filter so its error names the key the value came from."""

        @self._jinja.pass_context
        def traced(ctx: Any, value: Any, *args: Any) -> Any:
            try:
                return check(value, *args)
            except InvalidValue as exc:
                bad = exc.value if exc.value is not None else value
                key = ctx["__confsync_data"].provenance.get(bad) if isinstance(bad, str) else None
                raise RenderFailure(f"key {key}: {exc}" if key else str(exc), key) from None

        return traced

    def _name(self, src: Path) -> str:
        try:
            return str(src.relative_to(self.templates_dir))
        except ValueError:
            return str(src).lstrip("/")

    def compile(self, resource: Resource) -> jinja2.Template:
        """Load and compile once (cached by Jinja); a syntax error names file and line."""
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
        return template

    def render(self, resource: Resource, mirror: Mirror) -> str:
        """Render `resource` against the mirror, or raise ResourceError(step='render')."""
        template = self.compile(resource)
        data = TemplateData(mirror, resource)
        context: dict[str, Any] = data.functions()
        context["fromjson"] = data.fromjson
        context["__confsync_data"] = data  # for filters that name the key at fault
        try:
            return template.render(context)
        except Exception as exc:
            raise self._explain(resource, data, exc) from None

    def _explain(self, resource: Resource, data: TemplateData, exc: Exception) -> ResourceError:
        where = _template_location(exc.__traceback__, self._template_files) or str(resource.src)
        if isinstance(exc, RenderFailure | InvalidValue):
            reason = str(exc)
        elif isinstance(exc, self._jinja.TemplateSyntaxError):
            where = f"{exc.filename}:{exc.lineno}"
            reason = f"template syntax error: {exc.message}"
        elif isinstance(exc, self._jinja.UndefinedError):
            reason = f"undefined: {exc.message}"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        return ResourceError(resource.name, "render", f"{where}: {reason}")
