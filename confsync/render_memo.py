"""`once` and `check` skip a render whose inputs are those of a render before it.

Jinja2's import and the render are a third of a one-shot run (~25 of ~75 ms at 5,000 keys),
and a `once` from cron or a systemd timer finds the same data nearly every time. A render's
output is a function of: confsync's, Jinja2's and Python's code; the template files; the
resource's definition and the render limits; and the keys and values the resource can see.
Unless it called a function that reads the world (render_purity.py): those renders are never
memoized, nor one that left a value out.

After a render, the digest of those inputs and the digest of its output are kept, per
resource. A later run whose inputs have the same digest, and whose dest holds bytes with that
output digest, takes dest's bytes as the render's output: the file already is what the render
would write. Nothing rendered is kept (dest may hold secrets): digests only, in a directory of
the user's own (`$TMPDIR/confsync-memo-<uid>`, mode 0700, owned by the user: else no memo).
Everything here is best effort: a memo that cannot be read or written is a render, never an
error. Entries of resources renamed or removed since are swept after a week (cache_prune.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from confsync import cache_prune
from confsync.mirror import Mirror
from confsync.private_tmp import private_directory
from confsync.resources import Resource
from confsync.template_files import TemplateSources

try:  # what hashlib.blake2b is, without hashlib's loading of OpenSSL (2.6 ms of a `once`)
    from _blake2 import blake2b
except ImportError:  # (another Python)
    from hashlib import blake2b

log = logging.getLogger(__name__)

FORMAT = "confsync-render-memo-2"  # -2: the store revision the data was read at (a hint)
# Code that shapes a render: confsync's own, the template engine's, and the standard library's
# (by the interpreter's version). By each file's size and mtime, so that an upgrade in place, or
# an edited checkout at the same version number, never meets a memo of the code before.
_CODE_PACKAGES = ("confsync", "jinja2", "markupsafe")


def output_digest(content: bytes) -> str:
    """The digest a render's output is known by (here and in SIGHUP's judged renders)."""
    return _digest(content)


def _digest(*parts: bytes) -> str:
    h = blake2b(digest_size=20)
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def _package_dir(name: str) -> Path | None:
    """Where package `name` would be imported from, without importing it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def code_identity() -> bytes:
    """Every Python file of the packages that shape a render, by path, size and mtime, and
    the installed distribution's RECORD (each file's sha256) where there is one: an upgrade
    built reproducibly can keep a file's size and mtime (SOURCE_DATE_EPOCH)."""
    entries: list[str] = [sys.version]
    for package in _CODE_PACKAGES:
        directory = _package_dir(package)
        if directory is None:
            entries.append(f"{package}: none")
        else:
            _code_files(str(directory), entries)
            entries.append(_record(directory))
    return "\n".join(entries).encode("utf-8", "surrogateescape")


def _record(directory: Path) -> str:
    """The RECORD of the distribution installed beside package `directory`, "" if none."""
    prefix = f"{directory.name.lower()}-"
    try:
        found = [e for e in os.listdir(directory.parent)
                 if e.lower().startswith(prefix) and e.endswith(".dist-info")]
        return "".join((directory.parent / e / "RECORD").read_text("utf-8", "replace")
                       for e in sorted(found))
    except OSError:
        return ""


def _code_files(directory: str, entries: list[str]) -> None:
    try:
        found = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError:
        return
    for entry in found:
        try:
            if entry.is_dir():
                if entry.name != "__pycache__":
                    _code_files(entry.path, entries)
            elif entry.name.endswith((".py", ".so")):
                st = entry.stat()
                entries.append(f"{entry.path} {st.st_size} {st.st_mtime_ns}")
        except OSError:
            continue


def templates_identity(sources: TemplateSources) -> bytes:
    """The template files a render can load: the templates directory, and the `src` files
    resources name outside it (a render reads nothing else)."""
    parts = [FORMAT.encode()]
    for name in sorted(sources.files):
        data = sources.files[name]
        parts.append(name.encode("utf-8", "surrogateescape"))
        parts.append(data if isinstance(data, bytes) else f"unreadable {data!r}".encode())
    for path in sorted(sources.explicit):
        found = sources.explicit[path]
        parts.append(str(path).encode("utf-8", "surrogateescape"))
        parts.append(found if isinstance(found, bytes) else f"unreadable {found.errno}".encode())
    return _digest(*parts).encode()


def data_digest(mirror: Mirror, resource: Resource) -> str:
    """The keys and values `resource` can see (TemplateData shows it nothing else). By the
    repr of the list of keys and that of their values, which tells every str and bytes apart
    (a BadValue's is its bytes'): 0.7 ms for 5,000 keys, where the repr of one list of
    (key, value) pairs took 1.5 (a Python loop of `get` made it more; one update per key and
    value took 2)."""
    keys: list[str] = []
    for directory in resource.key_dirs:
        keys.extend(mirror.keys_with_prefix(directory))
    values = mirror.values_of(keys)
    get = mirror.get
    for key in resource.key_names:
        if (value := get(key)) is not None:
            keys.append(key)
            values.append(value)
    return _digest(repr(keys).encode(), repr(values).encode())


class RenderMemo:
    """The digests of the last memoizable render of each resource, kept between runs."""

    def __init__(self, directory: Path, templates_dir: Path, resources: Sequence[Resource],
                 limits: tuple[float, int]) -> None:
        self.directory = directory
        # What this run's Renderer is to render (`Renderer(sources=...)`): the bytes digested.
        self.sources = TemplateSources.read(
            templates_dir, (r.src for r in resources if not r.src.is_relative_to(templates_dir)))
        self._common = _digest(code_identity(), templates_identity(self.sources),
                               repr(limits).encode())
        self._dest_digests: dict[str, tuple[bytes, str]] = {}  # resource name: (dest, digest)

    @classmethod
    def open(cls, templates_dir: Path, resources: Sequence[Resource],
             limits: tuple[float, int]) -> RenderMemo | None:
        """The memo of this user, or None when there is no private directory to keep it in."""
        directory = _private_directory()
        if directory is None:
            return None
        try:
            return cls(directory, templates_dir, resources, limits)
        except OSError as exc:
            log.debug("render memo not used: %s", exc)
        except Exception:  # a defect here must not stop a render: it only costs time
            log.warning("render memo not used: unexpected error", exc_info=True)
        return None

    def _inputs(self, resource: Resource) -> str:
        return _digest(self._common.encode(), repr(resource).encode("utf-8", "surrogateescape"))

    def _entry(self, resource: Resource) -> Path:
        return self.directory / _digest(resource.name.encode(), bytes(resource.dest))

    def _read(self, resource: Resource) -> list[str] | None:
        try:
            fd = os.open(self._entry(resource), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, "rb") as fh:
                fields = fh.read(512).decode("ascii", "replace").split()
                cache_prune.refresh(fd)  # in use: not swept
        except OSError:
            return None
        return fields if len(fields) == 5 and fields[0] == FORMAT else None

    def expects(self, resource: Resource) -> bool:
        """Whether the last render of `resource` had these inputs but for the data, and its
        dest still holds that render's output: the memo stands in for this run's render unless
        the data changed (`once` then does not set up the render path while it waits for
        etcd)."""
        fields = self._read(resource)
        if fields is None or fields[1] != self._inputs(resource):
            return False
        content = _regular_file(resource.dest)
        return content is not None and self._dest_digest(resource, content) == fields[3]

    def stands_for(self, resource: Resource, data: str, dest_content: bytes | None) -> bool:
        """Whether a render of `resource` with `data` (data_digest) would write exactly
        `dest_content`, the bytes at its dest: a render with the same inputs wrote them."""
        if dest_content is None:
            return False
        fields = self._read(resource)
        return (fields is not None and fields[1] == self._inputs(resource) and fields[2] == data
                and fields[3] == self._dest_digest(resource, dest_content))

    def _dest_digest(self, resource: Resource, content: bytes) -> str:
        """output_digest(content), kept for the bytes `expects` read at dest: `stands_for` is
        asked about the same bytes once etcd answered (a compare, where a digest was 0.2 ms
        for 150 kB, after the wait for etcd)."""
        known = self._dest_digests.get(resource.name)
        if known is None or known[0] != content:
            known = self._dest_digests[resource.name] = (content, output_digest(content))
        return known[1]

    def revision(self, resource: Resource) -> int | None:
        """The store revision the data of the kept render was read at (by the last run it
        stood in for, or its render): a hint of whether the data moved since, never proof."""
        fields = self._read(resource)
        return int(fields[4]) if fields is not None and fields[4].isdigit() else None

    def record(self, resource: Resource, data: str, output: bytes, revision: int = 0) -> None:
        """Keep the digests of a render of `resource` that read nothing but its inputs, and
        the store revision its data was read at."""
        entry = self._entry(resource)
        line = (f"{FORMAT} {self._inputs(resource)} {data} {output_digest(output)} "
                f"{revision}\n").encode()
        staged = entry.with_name(f".{entry.name}.{os.getpid()}")
        try:
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            os.replace(staged, entry)
        except OSError as exc:
            log.debug("render memo of %s not kept: %s", resource.name, exc)
            with contextlib.suppress(OSError):
                os.unlink(staged)
        cache_prune.maybe_sweep(str(self.directory), _is_entry, _is_staged)


def _is_entry(name: str) -> bool:
    """A memo entry's name: `_digest`'s 40 hex digits."""
    return len(name) == 40 and name.isalnum()


def _is_staged(name: str) -> bool:
    """An entry being written (`.<entry>.<pid>`), or left by a writer killed before its rename."""
    return name.startswith(".") and _is_entry(name[1:41])


def _regular_file(path: Path) -> bytes | None:
    """The bytes of `path` if it is a regular file (a FIFO at dest must not block the read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with open(fd, "rb") as fh:
        try:
            return fh.read() if stat.S_ISREG(os.fstat(fd).st_mode) else None
        except OSError:
            return None


def _private_directory() -> Path | None:
    """`$TMPDIR/confsync-memo-<uid>` (private_tmp.py), None when it is not private."""
    return private_directory(f"confsync-memo-{os.geteuid()}")
