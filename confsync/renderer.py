"""The render step: Jinja2 templates, compiled once, fed from the mirror.

Safety is the default, not something each template must remember:
- `StrictUndefined` and a failing `getv` turn a missing key into an error with file and line;
- every `{{ expression }}` whose text holds a line break or another control character fails
  the render, so a value can never add a line to a config (templates that really want
  multi-line text say so with `| multiline`);
- validating filters (`ipaddr`, `port`, `hostport`, `identifier`, ...) reject anything that is
  not what it claims to be; errors name the key the value came from, found by rendering once
  more with key-tagged values (confsync.provenance) only after a render failed;
- `gets(..., skip_invalid=True)` leaves out an item whose value is refused, as a warning;
- renders are bounded in time and output size (confsync.render_limits), and templates load only
  from the templates directory (plus each resource's explicit `src`): templates are code.
"""

from __future__ import annotations

import contextlib
import functools
import json
import operator
import os
import re
import types
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from confsync.confd_funcs import LookupUnavailable, not_json
from confsync.confd_funcs import register as register_confd_functions
from confsync.convert.runtime import register as register_converted_runtime
from confsync.errors import ResourceError, TemplateMissing
from confsync.filters import VALIDATING_FILTERS, InvalidValue, show_value
from confsync.mirror import BadValue, Mirror, Value
from confsync.paths import absolute
from confsync.provenance import forget, plain_key, show_key, source_key, tag
from confsync.render_limits import (
    DEADLINE,
    DEFAULT_MAX_OUTPUT_SIZE,
    DEFAULT_RENDER_TIMEOUT,
    OutputTooLarge,
    RenderTimeout,
    join_capped,
)
from confsync.render_purity import mark_impure
from confsync.resources import Resource, join_key
from confsync.template_args import TemplateFunctionError, checked_method, wrong_argument
from confsync.template_files import TemplateSources, read_templates

if TYPE_CHECKING:
    import jinja2


class RenderFailure(Exception):
    """Raised inside a template; `key` is the key at fault when it is known."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class RenderWarning(NamedTuple):
    """A value left out of a render (its item skipped), and why. (A NamedTuple, not a
    dataclass: the render path of `once` creates no dataclass, issue 11.)"""

    key: str
    reason: str

    def __str__(self) -> str:
        return f"key {show_key(self.key)}: {self.reason}; left out"


class Rendered(NamedTuple):
    text: str
    warnings: tuple[RenderWarning, ...] = ()


class Multiline(str):
    """Marks template output that may span lines (a PEM block, a banner)."""

    __slots__ = ()


# Characters that end or split a line in some parser: C0 controls but tab, DEL, NEL, LS, PS;
# and lone surrogates, which stand for bytes of a key that is not UTF-8.
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]")


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


# Bounded (patterns may come from data), but above what a big node's resource set uses: each
# resource's patterns are their own (its prefix is in them), and past the cache's size every
# full pass (start, SIGHUP, interval) compiled each of them again (LRU, taken in turn: no hit).
@functools.lru_cache(maxsize=4096)
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
        elif c == "\\" or (c == "[" and pattern.find("]", i + 2) < 0):
            # Go's path.Match: ErrBadPattern, so confd's gets/getvs fail (they matched nothing)
            what = "an unclosed [" if c == "[" else "a trailing backslash"
            raise RenderFailure(f"syntax error in pattern {pattern!r}: {what}")
        elif c == "[":
            end = pattern.find("]", i + 2)
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


# KV((key, value)) without NamedTuple's __new__, a Python function per item.
_new_kv = functools.partial(tuple.__new__, KV)
_TEXT = frozenset((str,))  # the type of every value a template may be handed as it is

_MISSING = object()
_JSON_KINDS: dict[str, type | tuple[type, ...]] = {"object": dict, "array": list,
                                                   "string": str, "number": (int, float)}


class TemplateData:
    """The confd-named functions, bound to one resource's view of the mirror for one render.

    Two modes. The normal one hands out plain values and tracks nothing but the last key read.
    The attribution mode, used only to explain a render that already failed, hands out values
    tagged with their key (see confsync.provenance), so the error names the key exactly.
    """

    def __init__(self, mirror: Mirror, resource: Resource,
                 json_cache: dict[str, Any] | None = None,
                 kv_cache: dict[str, KV] | None = None, *, attributing: bool = False,
                 left_out: Collection[str] = ()) -> None:
        self._mirror = mirror
        self._prefix = resource.prefix
        # Only keys under the resource's own prefixes are visible: anything else would not
        # re-render it when it changes.
        self._visible = resource.covers
        self._dirs = resource.key_dirs
        self._roots = resource.watched_prefixes
        self.attributing = attributing
        self.last_key: str | None = None
        # Keys handed out by `gets(..., skip_invalid=True)`: a refused value of one of them
        # leaves that item out instead of failing the render.
        self.skippable: set[str] = set()
        self._left_out = left_out
        # Parsed JSON by text, from the previous render of this resource and for the next one:
        # a one-key change to a 5,000-instance pool parses one document, not 5,000.
        self._json_previous = {} if attributing else (json_cache or {})
        self.json_used: dict[str, Any] = {}
        # KV items by key, reused while the mirror holds the very same value object.
        self.kv_cache: dict[str, KV] = kv_cache if kv_cache is not None and not attributing \
            else {}

    def _full(self, key: str) -> str:
        return join_key(self._prefix, key)

    def _checked(self, key: str, value: Value) -> str:
        """Text of a present value; refuses undecodable bytes (tagged when attributing)."""
        self.last_key = key
        if isinstance(value, BadValue):
            raise RenderFailure(value.reason(), key)
        return tag(value, key) if self.attributing else value

    def _value(self, full: str) -> str | None:
        value = self._mirror.get(full) if self._visible(full) else None
        return None if value is None else self._checked(full, value)

    def _matching(self, pattern: str) -> list[str]:
        full_pattern = self._full(pattern)
        regex = glob_regex(full_pattern)
        literal = literal_prefix(full_pattern)
        if literal.startswith(self._dirs):  # every match is inside one of our directories
            return self._mirror.keys_matching(literal, regex)  # (shared: never changed here)
        keys = self._mirror.keys_with_prefix(literal)
        return [k for k in keys if regex.match(k) and self._visible(k)]

    def getv(self, key: str, default: str | None = None) -> str:
        value = self._value(self._full(key))
        if value is None:
            if default is None:
                full = self._full(key)
                raise RenderFailure(f"key {show_key(full)} not found (getv without default)",
                                    full)
            return default
        return value

    def get(self, key: str) -> KV:
        value = self.getv(key)
        return KV(tag(key, self._full(key)) if self.attributing else key, value)

    def exists(self, key: str) -> bool:
        full = self._full(key)
        return self._visible(full) and self._mirror.get(full) is not None

    def _values(self, keys: list[str]) -> list[str]:
        # keys come from _matching: visible and present. All text (nothing to refuse or tag):
        # one C loop, as a 5,000-item `gets` is a fifth of its render.
        values = self._mirror.values_of(keys)
        if self.attributing or not _TEXT.issuperset(map(type, values)):
            checked = [self._checked(key, value) for key, value in zip(keys, values, strict=True)]
        else:
            checked = values  # type: ignore[assignment]  # each one a str: nothing to check
        if keys:
            self.last_key = keys[-1]
        return checked

    def gets(self, pattern: str, skip_invalid: bool = False) -> list[KV]:
        """Items whose keys match; with `skip_invalid`, an item whose value a filter refuses
        is left out of the render (and reported) instead of failing it."""
        keys = self._matching(pattern)
        if skip_invalid and self._left_out:
            keys = [k for k in keys if k not in self._left_out]
        cut = len(self._prefix)
        if self.attributing:
            if skip_invalid:
                self.skippable.update(keys)
            return [KV(tag(key[cut:], key), value)
                    for key, value in zip(keys, self._values(keys), strict=True)]
        cache = self.kv_cache
        values = self._values(keys)
        if not cache:  # a first render (every `once`): no item to reuse, C builds them all
            items = list(map(_new_kv, zip(map(operator.itemgetter(slice(cut, None)), keys),
                                          values, strict=True)))
            cache.update(zip(keys, items, strict=True))
            return items
        items = []
        for key, value in zip(keys, values, strict=True):
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
        names = [(name, is_dir) for name, is_dir in self._mirror.child_names(base)
                 if name and (self._dir_visible(base + name + "/") if is_dir
                              else self._visible(base + name))]
        if self.attributing:
            return [(tag(name, base + name), is_dir) for name, is_dir in names]
        return names

    def _dir_visible(self, directory: str) -> bool:
        """A directory is listed when a key in it is visible: it is one of ours, or it holds
        one of our roots that has keys (keys = ["/app/db"] lists "app" under "/")."""
        if self._visible(directory):
            return True
        mirror = self._mirror
        return any(root.startswith(directory) and (
            mirror.get(root) is not None or mirror.count((root.rstrip("/") + "/",)) > 0)
            for root in self._roots)

    def ls(self, directory: str) -> list[str]:
        """Names under `directory`; and, as confd's memkv List does, the name of a key that
        is `directory` itself: `{{if ls $key}}` is how real templates test that a key is
        there (Calico's route-reflector template), so without it they rendered nothing."""
        names = [name for name, _ in self._children(directory)]
        if directory.endswith("/") or not self.exists(directory):
            return names
        full = self._full(directory)
        own = full.rsplit("/", 1)[1]
        if not own or own in names:
            return names
        return sorted([*names, tag(own, full) if self.attributing else own])

    def lsdir(self, directory: str) -> list[str]:
        return [name for name, is_dir in self._children(directory) if is_dir]

    def fromjson(self, text: str, expect: str | None = None) -> Any:
        """Parse JSON; `expect="object"` (or "array") also fails unless it is one.

        Results are shared between renders: templates treat them as read-only.
        """
        if not isinstance(text, str):  # (a filter per item: not through `checked`)
            raise wrong_argument("fromjson", self.fromjson, (text,), {}) or TypeError(text)
        if self.attributing:
            key = source_key(text)
            try:
                parsed = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise RenderFailure(not_json(exc), key) from None
            if expect is not None and not isinstance(parsed, _JSON_KINDS[expect]):
                raise RenderFailure(f"expected a JSON {expect}, found {text[:60]!r}", key)
            return tag(parsed, key) if key is not None else parsed
        parsed = self._json_previous.get(text, _MISSING)
        if parsed is _MISSING:
            try:
                parsed = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise RenderFailure(not_json(exc)) from None
        if expect is not None and not isinstance(parsed, _JSON_KINDS[expect]):
            raise RenderFailure(f"expected a JSON {expect}, found {text[:60]!r}")
        self.json_used[text] = parsed
        return parsed

    def functions(self) -> dict[str, Callable[..., Any]]:
        """What templates call by name; `Renderer.functions` hooks can add more. A wrong
        argument (`getv(["/a"])`) fails naming the function and the argument."""
        return {name: types.MethodType(call, self) for name, call in _DATA_FUNCTIONS.items()}


# TemplateData's template functions, checked once for the class (see `checked_method`).
_DATA_FUNCTIONS = {name: checked_method(name, method) for name, method in (
    ("getv", TemplateData.getv), ("get", TemplateData.get), ("exists", TemplateData.exists),
    ("gets", TemplateData.gets), ("getvs", TemplateData.getvs), ("ls", TemplateData.ls),
    ("lsdir", TemplateData.lsdir), ("fromjson", TemplateData.fromjson),
    ("json", TemplateData.fromjson))}  # `json` is confd's name


def _finalize(value: Any) -> Any:
    """Runs on every `{{ expression }}`: text that could start a new config line is refused."""
    kind = type(value)
    if kind is int or kind is Multiline:
        return value
    text = value if kind is str else str(value)
    if not text.isprintable() and (bad := _UNSAFE.search(text)):
        raise UnsafeOutput(value, text, bad.group())
    return value


def _bytecode_cache(jinja2: Any) -> Any:
    """Compiled templates cached by template path in a private per-user temp directory, so
    repeated `confsync once` runs skip compilation. Strictly best effort: a read-only or full
    /tmp, or a directory there that is not private, means no cache; a cache file that cannot
    be read (truncated, or zeros after a power cut) means a compile, never a failed render.
    Swept as it grows (cache_prune.py)."""
    from confsync import __version__, cache_prune
    from confsync.private_tmp import private_directory

    prefix = f"__confsync_{__version__}_jinja2_{jinja2.__version__}_"

    def is_entry(name: str) -> bool:  # any confsync's and Jinja2's: an upgrade leaves the old
        return name.startswith("__confsync_") and name.endswith(".cache")

    def is_staged(name: str) -> bool:  # Jinja2 writes `<entry><random>.tmp`, then renames it
        return name.startswith("__confsync_") and name.endswith(".tmp")

    class BestEffortCache(jinja2.FileSystemBytecodeCache):  # type: ignore[misc]
        def load_bytecode(self, bucket: Any) -> None:  # Jinja2's, and the use marked
            try:
                fd = os.open(self._get_cache_filename(bucket),
                             os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                return
            try:
                with open(fd, "rb") as fh:
                    bucket.load_bytecode(fh)
                    if bucket.code is not None:
                        cache_prune.refresh(fh.fileno())
            except Exception:  # pickle.UnpicklingError, EOFError, ValueError, OSError, ...
                bucket.reset()

        def dump_bytecode(self, bucket: Any) -> None:
            with contextlib.suppress(OSError):
                super().dump_bytecode(bucket)
            # (also when /tmp is full: what it frees is the remedy)
            cache_prune.maybe_sweep(self.directory, is_entry, is_staged)

    try:
        # Our own file names, with our version and Jinja2's: the cache key is the template's
        # name and path only, and this Environment's options (finalize, trim_blocks, ...) and
        # Jinja2's code generator shape the compiled code, so another Jinja user, another
        # confsync or an upgraded Jinja2 (whose bytecode format number rarely moves) must never
        # load ours.
        # In a directory we made or checked ourselves (Jinja2's default chmods through a link).
        directory = private_directory(f"_jinja2-cache-{os.geteuid()}")
        if directory is None:
            return None
        return BestEffortCache(directory=str(directory), pattern=f"{prefix}%s.cache")
    except (OSError, RuntimeError):
        return None


def _fromjson_outside_render(text: str, expect: str | None = None) -> Any:
    return json.loads(text)


def _base(path: str) -> str:
    try:  # (a filter per item: not through `checked`)
        return path.rpartition("/")[2]
    except AttributeError:
        raise wrong_argument("base", _base, (path,), {}) or TypeError(path) from None


def _dirname(path: str) -> str:
    try:
        return path.rpartition("/")[0] or "/"
    except AttributeError:
        raise wrong_argument("dirname", _dirname, (path,), {}) or TypeError(path) from None


class UnsafeOutput(Exception):
    def __init__(self, value: object, text: str, char: str) -> None:
        self.value = value
        self.text = text
        if "\ud800" <= char <= "\udfff":
            message = (f"output value is not UTF-8 text (it holds bytes of a key or value that "
                       f"is not UTF-8): {show_value(text)}; refusing to write it")
        else:
            message = (f"output value contains a line break or control character "
                       f"(U+{ord(char):04X}): {show_value(text)}; refusing to write it (a "
                       f"template that really emits several lines from one value says so with "
                       f"'| multiline')")
        super().__init__(message)


def _template_location(tb: types.TracebackType | None, templates: set[str]) -> str:
    """The innermost template file and line in a traceback (Jinja maps frames to them)."""
    where = ""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename in templates:
            where = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def _attributing(check: Callable[..., Any]) -> Callable[..., Any]:
    """A validating filter that, when it refuses a value, records the key the value came from:
    the refused value's own tag, else the piped value's (`hostport` refusing the port part of
    a tagged 'host:port' string)."""

    @functools.wraps(check)
    def attributed(*args: Any) -> Any:
        try:
            return check(*args)
        except InvalidValue as exc:
            key = source_key(exc.value)
            if key is None and args and not any(exc.value is arg for arg in args[1:]):
                key = source_key(args[0])
            exc.key = key
            raise

    return attributed


def _failure_key(exc: BaseException) -> str | None:
    """The key an exception raised during an attribution render names, when it is known."""
    if isinstance(exc, RenderFailure | InvalidValue):
        return exc.key
    if isinstance(exc, TemplateFunctionError):  # the argument at fault
        return source_key(exc.value)
    if isinstance(exc, UnsafeOutput):
        return source_key(exc.value)
    key = getattr(exc, "key", None)  # UndefinedError from _KeyedUndefined
    return key if isinstance(key, str) else None


def _rooted_loader(jinja2: Any, templates_dir: Path, explicit: dict[str, Path],
                   sources: TemplateSources | None, late: Collection[str] = ()) -> Any:
    """Templates are code: serve the templates directory (no absolute names, no '..'), as read
    when the loader was made, and the absolute `src` files that resources name explicitly,
    nothing else on the filesystem. `sources`: those files as read already (`once`'s render
    memo digested them), served instead of reading them again. `late`: the names of the set's
    own templates, read when they appear if they were not there (the only files read late)."""
    from jinja2.loaders import split_template_path

    files = read_templates(templates_dir) if sources is None else sources.files
    read = {} if sources is None else sources.explicit

    class RootedLoader(jinja2.BaseLoader):  # type: ignore[misc]
        def get_source(self, environment: Any, template: str) -> tuple[str, str, Any]:
            path = explicit.get(template)
            if path is None:
                name = "/".join(split_template_path(template))  # refuses '..'
                found = files.get(name)
                if found is None and sources is None and name in late:
                    # A set's own template not there when it loaded (a deploy writing conf.d/
                    # before templates/), read once it is, with the files that came with it
                    # (its includes); a file the set read keeps its bytes until a reload.
                    now = read_templates(templates_dir)
                    if name in now:
                        for other, bytes_or_error in now.items():
                            files.setdefault(other, bytes_or_error)
                        found = files[name]
                if found is None:
                    raise jinja2.TemplateNotFound(template)
                if isinstance(found, OSError):
                    raise OSError(found.errno, found.strerror, found.filename)
                return found.decode("utf-8"), str(templates_dir / name), lambda: True
            try:
                data = read.get(path)
                if isinstance(data, OSError):
                    raise data
                source = path.read_text("utf-8") if data is None else data.decode("utf-8")
            except FileNotFoundError:
                raise jinja2.TemplateNotFound(template) from None
            return source, str(path), lambda: True

    return RootedLoader()


FunctionsHook = Callable[[TemplateData], Mapping[str, Callable[..., Any]]]


class Renderer:
    # At most this many new items are left out in one render (each costs two more renders);
    # past it the render fails, and the next one goes on from there: items left out are
    # remembered while their value stays the same.
    MAX_NEW_LEFT_OUT = 32
    # `{% memo %}` outputs kept: twice the mirror's keys, and at least this many.
    MIN_BLOCK_OUTPUTS = 1024

    def __init__(self, templates_dir: Path, *, render_timeout: float = DEFAULT_RENDER_TIMEOUT,
                 max_output_size: int = DEFAULT_MAX_OUTPUT_SIZE,
                 sources: TemplateSources | None = None, srcs: Iterable[Path] = (),
                 reuse_blocks: bool = True) -> None:
        """`srcs`: the set's resources' `src` files, served from the start: a template may
        include another resource's (README), and it was served only once that resource's
        render had compiled it (a `once` whose memo stood in for it failed the includer).
        `reuse_blocks`: keep `{% memo %}` outputs for later renders (a one-shot run renders
        each template once: keeping them would only cost time)."""
        import jinja2  # lazy: ~25 ms of import that `confsync --version` should not pay

        from confsync.block_memo import BlockOutputs
        from confsync.block_memo import install as install_block_memo

        self._jinja = jinja2
        self.templates_dir = absolute(templates_dir)
        self.render_timeout = render_timeout
        self.max_output_size = max_output_size
        self._explicit: dict[str, Path] = {}
        own = {self._name(src) for src in srcs}
        self.env = jinja2.Environment(
            loader=_rooted_loader(jinja2, self.templates_dir, self._explicit, sources, own),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
            finalize=_finalize,
            cache_size=-1,
            bytecode_cache=_bytecode_cache(jinja2),
        )
        self.env.filters.update(VALIDATING_FILTERS)
        # `{% memo %}` blocks' outputs, reused while their keys are the same (block_memo.py).
        self._block_outputs = BlockOutputs((str, KV), Multiline)
        self._reuse_blocks = reuse_blocks
        install_block_memo(self.env, self._block_outputs)
        self._attributing_filters = {name: _attributing(check)
                                     for name, check in VALIDATING_FILTERS.items()}

        class KeyedUndefined(jinja2.StrictUndefined):
            """A missing field of a tagged document names the document's key."""

            __slots__ = ()

            def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> Any:
                try:
                    return super()._fail_with_undefined_error(*args, **kwargs)
                except jinja2.UndefinedError as exc:
                    exc.key = source_key(self)  # type: ignore[attr-defined]
                    raise

        # StrictUndefined aliases its dunders (__str__, __iter__, ...) to the base method.
        for name, member in vars(jinja2.StrictUndefined).items():
            if member is jinja2.Undefined._fail_with_undefined_error:
                setattr(KeyedUndefined, name, KeyedUndefined._fail_with_undefined_error)
        self._keyed_undefined = KeyedUndefined
        # `fromjson` is rebound to each render's data (renders run one at a time, on the loop's
        # thread; a template looks its filters up when its render starts).
        self.env.filters["fromjson"] = _fromjson_outside_render
        self.env.filters["multiline"] = Multiline
        self.env.filters["base"] = _base
        self.env.filters["dirname"] = _dirname
        register_confd_functions(self.env)
        register_converted_runtime(self.env)
        mark_impure(self.env.globals)  # (the render memo's purity: render_purity.py)
        mark_impure(self.env.filters, pure=VALIDATING_FILTERS)  # (`hostname` checks a name)
        # Extra template functions (each called with the render's TemplateData).
        self.function_hooks: list[FunctionsHook] = []
        self._template_files: set[str] = set()
        self._json_caches: dict[str, dict[str, Any]] = {}
        # By resource prefix, not by resource: a KV depends on the key, that prefix and the
        # value alone, and a cache per resource held resources x keys items (1,000 resources
        # reading 10 prefixes of 5,000 keys: 5 million KVs, 850 MB).
        self._kv_caches: dict[str, dict[str, KV]] = {}
        # resource -> {key: (its value when refused, reason)}: still left out while unchanged.
        self._left_out: dict[str, dict[str, tuple[Value | None, str]]] = {}
        self._compiled: dict[Path, jinja2.Template] = {}
        # Each template's globals (the ~60 confd and runtime functions), flattened once; see
        # `_run`.
        self._flat_globals: dict[jinja2.Template, dict[str, Any]] = {}
        self._deadline = DEADLINE

    def add_functions(self, hook: FunctionsHook) -> None:
        """Register more template functions: `hook(data)` returns {name: callable}."""
        self.function_hooks.append(hook)

    def _name(self, src: Path) -> str:
        try:
            return str(src.relative_to(self.templates_dir))
        except ValueError:
            self._explicit[str(src)] = src  # an absolute `src` outside the templates directory
            return str(src)

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
        except jinja2.TemplateNotFound:
            # Retried: the file is machine state still to come (a deploy half done, a
            # template deleted before its conf.d file); left out of the set, it waited for a
            # SIGHUP that nothing sent.
            raise TemplateMissing(resource.name, str(resource.src)) from None
        except OSError as exc:
            raise ResourceError(resource.name, "render",
                                f"cannot read template {resource.src}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:  # a ValueError, raised by the loader's read
            raise ResourceError(resource.name, "render",
                                f"cannot read template {resource.src}: not UTF-8 ({exc.reason} "
                                f"at byte {exc.start})") from None
        if template.filename:
            self._template_files.add(template.filename)
        self._compiled[resource.src] = template
        return template

    def render(self, resource: Resource, mirror: Mirror) -> str:
        """Render `resource` against the mirror, or raise ResourceError(step='render')."""
        return self.render_result(resource, mirror).text

    def render_result(self, resource: Resource, mirror: Mirror) -> Rendered:
        """Render, with the values left out (see `gets(..., skip_invalid=True)`) as warnings."""
        template = self.compile(resource)
        timeout = resource.render_timeout or self.render_timeout
        try:
            try:
                # Armed inside the `try`: a timeout that fires as `arm` returns (a near-zero
                # one, a thread pre-empted there) is this render's failure too; armed before
                # it, RenderTimeout escaped into the watch loop.
                self._deadline.arm(timeout)
                return self._render_leaving_out(template, resource, mirror)
            finally:
                self._deadline.disarm()
        except RenderTimeout:
            self._deadline.disarm()
            # It may have landed while the attribution render's swaps were being undone.
            self.env.filters.update(VALIDATING_FILTERS)
            self.env.filters["fromjson"] = _fromjson_outside_render
            self.env.undefined = self._jinja.StrictUndefined
            self._block_outputs.end()
            # Retried: how long a render takes depends on the machine too (a loaded host, a
            # big template), not only on the data; without a retry the file stayed stale, and
            # /ready 503, until the next data change.
            raise ResourceError(resource.name, "render",
                                f"{template.filename or resource.src}: render took longer than "
                                f"render_timeout ({timeout:g}s); stopped it",
                                retry=True) from None

    def _data(self, resource: Resource, mirror: Mirror, left_out: Collection[str],
              attributing: bool) -> TemplateData:
        if attributing:
            return TemplateData(mirror, resource, attributing=True, left_out=left_out)
        kv_cache = self._kv_caches.setdefault(resource.prefix, {})
        if len(kv_cache) > 2 * len(mirror):
            kv_cache.clear()  # keys deleted since: drop them now and then
        return TemplateData(mirror, resource, self._json_caches.get(resource.name), kv_cache,
                            left_out=left_out)

    def _run(self, template: jinja2.Template, data: TemplateData, limit: int) -> str:
        context: dict[str, Any] = data.functions()
        self.env.filters["fromjson"] = data.fromjson
        for hook in self.function_hooks:
            context.update(hook(data))
        # Jinja's own new_context copies the globals out of their ChainMap key by key in
        # Python (~20 us a render warm, ~55 us at a watch's one render per change: half of a
        # small template's render); the same dict, built from a flat copy made once, is
        # handed over as is (`shared`). Globals are all set before the first compile.
        flat = self._flat_globals.get(template)
        if flat is None:
            flat = self._flat_globals[template] = dict(template.globals)
        try:
            # What `template.render` does, but joined under the size cap.
            return join_capped(template.root_render_func(
                template.new_context(flat | context, shared=True)), limit)
        except (OutputTooLarge, RenderTimeout):
            raise
        except Exception:
            # Jinja rewrites the traceback so that its frames carry template lines.
            self.env.handle_exception()
            raise  # not reached: handle_exception raises
        finally:
            self.env.filters["fromjson"] = _fromjson_outside_render

    def _render_leaving_out(self, template: jinja2.Template, resource: Resource,
                            mirror: Mirror) -> Rendered:
        limit = resource.max_output_size or self.max_output_size
        remembered = self._left_out.get(resource.name)
        left_out = {key: reason for key, (value, reason) in remembered.items()
                    if mirror.get(key) is value} if remembered else {}
        new = 0
        try:
            while True:
                data = self._data(resource, mirror, left_out, attributing=False)
                try:
                    # (Off again before an attribution render: its values are tagged.)
                    if self._reuse_blocks:
                        self._block_outputs.begin(2 * len(mirror) + self.MIN_BLOCK_OUTPUTS)
                    try:
                        text = self._run(template, data, limit)
                    finally:
                        self._block_outputs.end()
                except OutputTooLarge as exc:
                    raise ResourceError(resource.name, "render",
                                        f"{template.filename or resource.src}: {exc}") from None
                except Exception as exc:
                    message, key, skippable = self._explain(template, resource, mirror,
                                                            left_out, data, exc)
                    if key is None or not skippable or key in left_out:
                        raise ResourceError(resource.name, "render", message,
                                            retry=isinstance(exc, LookupUnavailable)) from None
                    if new >= self.MAX_NEW_LEFT_OUT:
                        raise ResourceError(resource.name, "render",
                                            f"{message} (and {new} other values refused in this "
                                            f"render; the next render goes on)") from None
                    left_out[key] = message.partition(f"key {show_key(key)}: ")[2] or message
                    new += 1
                    continue
                if not text.isascii():
                    self._refuse_undecodable(resource, mirror, text)
                self._json_caches[resource.name] = data.json_used
                if not left_out:
                    return Rendered(text)
                return Rendered(text, tuple(RenderWarning(key, reason)
                                            for key, reason in sorted(left_out.items())))
        finally:
            if left_out or remembered:
                self._left_out[resource.name] = {key: (mirror.get(key), reason)
                                                 for key, reason in left_out.items()}

    def _refuse_undecodable(self, resource: Resource, mirror: Mirror, text: str) -> None:
        """Last line of defence (`multiline` output is not checked by `finalize`)."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = [show_key(key) for prefix in resource.watched_prefixes
                   for key in mirror.keys_with_prefix(prefix)
                   if resource.covers(key) and not plain_key(key)]
            raise ResourceError(resource.name, "render",
                                f"rendered text is not UTF-8 at character {exc.start} (a "
                                f"'multiline' value holds bytes of a key that is not UTF-8; "
                                f"such keys here: {', '.join(bad[:5]) or 'none'})") from None

    def _explain(self, template: jinja2.Template, resource: Resource, mirror: Mirror,
                 left_out: Collection[str], data: TemplateData,
                 exc: Exception) -> tuple[str, str | None, bool]:
        """(message, key at fault or None, whether that key's item may be left out).

        Renders once more with values tagged by key, so the key named is the one the refused
        value came from: never a guess.
        """
        attributing = self._data(resource, mirror, left_out, attributing=True)
        filters = {name: self.env.filters[name] for name in self._attributing_filters}
        self.env.filters.update(self._attributing_filters)
        self.env.undefined = self._keyed_undefined
        forget()
        again: Exception | None = None
        try:
            self._run(template, attributing, resource.max_output_size or self.max_output_size)
        except Exception as second:
            again = second
        finally:
            self.env.filters.update(filters)
            self.env.undefined = self._jinja.StrictUndefined
        # The attribution render fails the same way: it tells the key. Otherwise (it should
        # not happen) fall back to the first failure and the last key read.
        same = again is not None and type(again) is type(exc)
        failure = again if same and again is not None else exc
        key = _failure_key(failure) if same else None
        where = (_template_location(failure.__traceback__, self._template_files)
                 or str(resource.src))
        reason = self._reason(failure)
        if isinstance(failure, self._jinja.TemplateSyntaxError):
            where = f"{failure.filename}:{failure.lineno}"
        if key is not None:
            named = reason if reason.startswith(f"key {show_key(key)} ") else \
                f"key {show_key(key)}: {reason}"
            # A template function's refusal names the key but leaves no item out: the wrong
            # argument may be the template's (`add(kv.value, 1)` without `atoi`), which would
            # leave every item out of the file; filters and `fromjson` judge values.
            skippable = key in attributing.skippable and not isinstance(
                failure, TemplateFunctionError)
            return f"{where}: {named}", key, skippable
        last = attributing.last_key if same else data.last_key
        if last is not None:
            reason += f" (last key read: {show_key(last)})"
        return f"{where}: {reason}", None, False

    def _reason(self, exc: Exception) -> str:
        jinja2 = self._jinja
        if isinstance(exc, RenderFailure | InvalidValue | UnsafeOutput | TemplateFunctionError):
            return str(exc)
        if isinstance(exc, jinja2.TemplateSyntaxError):
            return f"template syntax error: {exc.message}"
        if isinstance(exc, jinja2.TemplateNotFound):
            return (f"template {exc.name!r} not found under {self.templates_dir} (templates "
                    f"include only files there)")
        if isinstance(exc, jinja2.UndefinedError):
            return f"undefined: {exc.message}"
        return f"{type(exc).__name__}: {exc}"
