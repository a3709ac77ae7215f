"""The apply step: stage beside `dest`, check, set mode/owner, fsync, rename, fsync the directory.

Whatever fails, `dest` stays byte-for-byte as it was: the only write to it is the final rename,
and the staged file is removed on every failure path.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from confsync.errors import ResourceError
from confsync.fdlimit import describe
from confsync.owners import NotAnswered, UnknownName, group_id, user_id
from confsync.placeholders import substitute
from confsync.resources import Resource
from confsync.running_copy import keep_running, reloaded

DEFAULT_MODE = 0o644
log = logging.getLogger(__name__)


# A NamedTuple, not a dataclass: one `exec` to create, where a frozen dataclass's six (one
# per generated method, Python 3.11) were ~0.3 ms of every one-shot run (issue 11).
class FileState(NamedTuple):
    """What is at `dest` now: its bytes and metadata, or nothing."""

    content: bytes | None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    @classmethod
    def read(cls, path: Path) -> FileState:
        return _read_with_signature(path)[1]


Signature = tuple[int, ...]
_NOT_SEEN: Signature = ()  # matches no file's: read it at the next look


def _signature(st: os.stat_result) -> Signature:
    # Any write, chmod, chown or replacement changes one of these.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode,
            st.st_uid, st.st_gid)


def _read_with_signature(path: Path) -> tuple[Signature | None, FileState]:
    # Only a regular file is read: opening a FIFO waits for a writer (the whole loop with it,
    # for good), and a device is opened with its side effects and read for as long as it
    # gives (/dev/zero). Anything else at dest is no file of ours, and is never renamed over
    # (a FIFO, or /dev/null through a link). Looked at before opening, and again once open
    # (O_NONBLOCK: a FIFO put there in between does not block either).
    try:
        _regular(os.stat(path), path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, FileState(None)
    with open(fd, "rb") as fh:
        st = _regular(os.fstat(fd), path)
        state = FileState(fh.read(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        return _signature(st), state


def _regular(st: os.stat_result, path: Path) -> os.stat_result:
    """`st`, or the error that says why the file at `path` is not one confsync replaces."""
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device); "
                      "confsync only replaces regular files", str(path))
    return st


class DestCache:
    """What each dest held after our last look, so an unchanged file is not read again.

    A stat signature (inode, size, mtime, ctime, mode, owner) validates the memory: if anyone
    else touched the file, it is read afresh.
    """

    def __init__(self) -> None:
        self._known: dict[Path, tuple[Signature, FileState]] = {}

    def current(self, path: Path) -> FileState:
        known = self._known.get(path)
        if known is not None:
            try:
                if _signature(os.stat(path)) == known[0]:
                    return known[1]
            except FileNotFoundError:
                self._known.pop(path, None)
                return FileState(None)
        signature, state = _read_with_signature(path)
        if signature is not None:
            self._known[path] = (signature, state)
        return state

    def changed(self, path: Path) -> bool:
        """True when `path` is known and no longer what was seen last (rewritten, replaced,
        chmodded, chowned or deleted by someone else); one stat, nothing read."""
        known = self._known.get(path)
        if known is None:
            return False
        try:
            return _signature(os.stat(path)) != known[0]
        except OSError:
            return True

    def peek(self, path: Path) -> tuple[FileState | None, FileState]:
        """(What was seen last, or None; what is there now), read without updating the memory,
        so `changed` still says the file changed."""
        known = self._known.get(path)
        return (known[1] if known is not None else None), _read_with_signature(path)[1]

    def last(self, path: Path) -> FileState | None:
        """What was seen at `path` last (None: never looked at); no I/O."""
        known = self._known.get(path)
        return known[1] if known is not None else None

    def remember(self, path: Path, state: FileState, seen: Seen | None = None) -> None:
        """`state` was just put at `path`. What another writer put there since (between our
        rename and the look) is not taken for ours: it was, and with its signature, so the
        edit was never repaired (each look found "ours", each render "up to date"). The file
        is read back once (an install, not a heartbeat): a size alone let an edit of the same
        size (`port 80` -> `port 81`) pass for ours. Other bytes than `state`'s make the next
        look read the file (and `changed` say so). Only the bytes: the kernel may give the
        file another group (a setgid directory) or mode bits than asked, and a heartbeat took
        that for an outside edit after every install. `seen`: that read-back, done by the
        caller where its file work runs (`look`); else it is done here."""
        signature, found = look(path) if seen is None else seen
        if signature is None and found is not None:  # (nothing there)
            self._known.pop(path, None)
            return
        ours = found is not None and found.content == state.content
        self._known[path] = (signature if ours and signature is not None else _NOT_SEEN, state)


# What `look` found: (its signature, None when nothing is there; what is there, None when it
# cannot be read).
Seen = tuple[Signature | None, FileState | None]


def look(path: Path) -> Seen:
    """The file at `path` as DestCache.remember compares it with what was put there."""
    try:
        return _read_with_signature(path)
    except OSError:  # (not a regular file now, unreadable: the next look says why)
        return None, None


class NotDurable(ResourceError):
    """The new file is in place (renamed over `dest`), but its directory could not be synced."""


class Target(NamedTuple):
    """The desired file: content plus the metadata it must end up with."""

    content: bytes
    mode: int
    uid: int
    gid: int

    @classmethod
    def for_resource(cls, resource: Resource, content: bytes, current: FileState) -> Target:
        """Raises ResourceError (step "owner", to be tried again) for an owner or group name
        the system does not know (yet), or whose lookup has not returned in time (owners.py)."""
        # Unset mode/owner keep what the file has (or defaults for a new file), like confd.
        # Mode 0 is a mode to keep (`chmod 000`), not a missing one.
        try:
            uid = resource.uid if resource.owner is None else user_id(resource.owner)
            gid = resource.gid if resource.group is None else group_id(resource.group)
        except (UnknownName, NotAnswered) as exc:
            raise ResourceError(resource.name, "owner", str(exc), retry=True) from None
        return cls(
            content,
            resource.mode if resource.mode is not None else _mode_or_default(current.mode),
            uid if uid is not None else (
                current.uid if current.uid is not None else os.geteuid()),
            gid if gid is not None else (
                current.gid if current.gid is not None else os.getegid()),
        )

    def matches(self, current: FileState) -> bool:
        return (current.content == self.content and current.mode == self.mode
                and current.uid == self.uid and current.gid == self.gid)


def _mode_or_default(mode: int | None) -> int:
    return DEFAULT_MODE if mode is None else mode


def written_path(dest: Path) -> Path:
    """The file an apply replaces: `dest`, or, when `dest` is a symbolic link, the file it
    points to (followed to the end, created when missing), so the link stays a link.

    Config repositories and packaging often link /etc/<service>/<file> to a managed copy; a
    rename over the link itself would turn it into a plain file and leave its target stale.
    Only links owned by root or by confsync's own user are followed (raises PermissionError
    otherwise), as the kernel's protected_symlinks does: someone who can only plant a link
    beside a dest must not get a root daemon to write the file of their choice.
    """
    if not dest.is_symlink():
        return dest
    link = dest
    for _ in range(40):  # the kernel's own limit on links in one path
        try:
            info = link.lstat()
        except FileNotFoundError:  # a dangling link: its target is created
            break
        if not stat.S_ISLNK(info.st_mode):
            break
        if info.st_uid not in (0, os.geteuid()):
            raise PermissionError(errno.EPERM, f"{link} is a symbolic link owned by uid "
                                  f"{info.st_uid}; confsync follows only links owned by root "
                                  f"or by its own user (uid {os.geteuid()})", str(dest))
        link = link.parent / os.readlink(link)
    return Path(os.path.realpath(dest))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_staged_names = itertools.count()
STAGED_SUFFIX = ".confsync"


def _staged_name(dest: Path, pid: int, attempt: int) -> str:
    return f".{dest.name}.{pid}.{attempt}{STAGED_SUFFIX}"


# What _staged_name makes: the dest's name is everything before the last two numbers.
_STAGED = re.compile(rf"\.(.+)\.([0-9]+)\.[0-9]+{re.escape(STAGED_SUFFIX)}")


# When this module was imported (wall clock, as file times are): every staged file this
# process writes is written later. One named with our own pid but older is a predecessor's
# that had the same pid (a container's PID 1 started again after a SIGKILL), not ours.
_IMPORTED_AT = time.time()  # wall clock: compared with file mtimes


def pid_exists(pid: int) -> bool:
    """psutil.pid_exists without importing psutil (every `once` runs this): signal 0 tells."""
    if pid <= 0:
        return True  # never a writer of ours; leave its file alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def writer_alive(pid: int, mtime: float) -> bool:
    """Whether the writer a file's (or directory's) name carries, `pid`, may still use it,
    modified at `mtime`: any other pid while it runs; our own only for one not older than
    this process (an older one is a predecessor's that had our pid). Staged files and
    `check`'s directories (check_dirs.py) are judged alike."""
    if pid == os.getpid():
        return mtime >= _IMPORTED_AT
    return pid_exists(pid)


# Staged files this process could not remove: one whose apply failed after the filesystem
# went read-only (or its directory immutable) during it, or a dead writer's found by the
# start-up sweep on a read-only filesystem. Removed by a later pass once it is writable.
_undeleted: set[Path] = set()


def remove_stale_staged(dests: Iterable[Path], min_age: float = 0.0) -> list[Path]:
    """Delete staged files (`.<name>.<pid>.<n>.confsync`) beside `dests` whose writer is dead.

    A SIGKILL between staging and rename leaves one behind; nothing else ever removes it.
    Only exact matches of our naming are touched, and never a file of a live pid (our own pid
    only for a file older than this process), nor one modified within `min_age` seconds (a
    writer of another pid namespace has a pid we cannot see). Returns the files removed.
    """
    by_directory: dict[Path, set[str]] = {}
    for dest in dests:
        by_directory.setdefault(dest.parent, set()).add(dest.name)
    removed = []
    for directory, names in by_directory.items():
        try:
            entries = os.listdir(directory)
        except OSError:
            continue  # a missing or unreadable directory is reported by the apply itself
        for entry in entries:
            match = _STAGED.fullmatch(entry)
            if match is None or match[1] not in names:
                continue
            pid = int(match[2])
            path = directory / entry
            try:
                info = os.lstat(path)
                if not stat.S_ISREG(info.st_mode) or writer_alive(pid, info.st_mtime):
                    continue
                if min_age and time.time() - info.st_mtime < min_age:  # wall clock: file ages
                    continue
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as exc:  # read-only for now: a later pass removes it
                log.warning("cannot remove stale staged file %s now (%s); removing it later",
                            path, exc.strerror)
                _undeleted.add(path)
                continue
            log.info("removed stale staged file %s (its writer, pid %d, is gone)", path, pid)
            removed.append(path)
    return removed


def _discard_staged(staged: Path) -> None:
    """Remove a staged file after a failed apply. One that cannot be removed now is kept in
    mind for `remove_undeleted`, and the apply's own error (why it failed) is what is raised."""
    try:
        os.unlink(staged)
    except FileNotFoundError:
        pass
    except OSError as exc:
        _undeleted.add(staged)
        log.warning("cannot remove staged file %s now (%s); removing it later",
                    staged, exc.strerror)


def undeleted_waiting() -> bool:
    """Whether staged files wait for `remove_undeleted` (nearly never: it is looked at at each
    heartbeat and apply, and a call on a worker costs a thread hop)."""
    return bool(_undeleted)


def remove_undeleted() -> None:
    """Remove the staged files this process could not remove earlier (see `_undeleted`)."""
    for path in list(_undeleted):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            continue  # still read-only: the next pass tries again
        else:
            log.info("removed staged file %s (it could not be removed before)", path)
        _undeleted.discard(path)


def write_staged(dest: Path, directory: Path, content: bytes) -> Path:
    """Write `content` to a new 0600 file in `directory` named after `dest`, data synced;
    return its path.

    The name is unique per process and attempt; O_EXCL makes a clash an error, never a reuse.
    """
    while True:
        name = directory / _staged_name(dest, os.getpid(), next(_staged_names))
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            break
        except FileExistsError:
            continue  # a leftover from a crashed run with the same pid
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.fdatasync(fd)
    except BaseException:
        os.close(fd)
        _discard_staged(name)
        raise
    os.close(fd)
    return name


def run_check(resource: Resource, staged: Path) -> float | None:
    """Run `check_cmd` on the staged file; raise ResourceError(step='check') with its output.

    Returns how long the check took (None: no check configured).
    """
    if not resource.check_cmd:
        return None
    # Here, not at the top: `subprocess` and the command runner are ~8M instructions of a
    # `once` whose resources check nothing (the daemon loads them at start: ops/supervisor).
    from confsync.commands import run_command

    argv = substitute(resource.check_cmd, staged, resource.dest)
    # What it leaves in its process group goes at its exit: a check's work ends with it, and a
    # helper left at each render piled up in a watch for months (a reload may start a daemon:
    # not there).
    result = run_command(argv, resource.check_timeout, end_group=True)
    if not result.ok:
        raise ResourceError(resource.name, "check", result.describe(argv))
    return result.seconds


def _no_progress(step: str, extra: float) -> None:
    pass


def install(resource: Resource, target: Target, check: bool = True, keep: bool = False,
            progress: Callable[[str, float], None] = _no_progress) -> float | None:
    """Stage, check, chown/chmod, rename over `dest` (over its target when it is a link),
    fsync the directory. `keep`: the file replaced is kept until the reload (running_copy).
    `progress(step, extra)` is told when check_cmd starts (it may take `extra` seconds more
    than a file step) and ends, for a caller that waits with a deadline (dest_io.py).

    Returns the check's duration (None when there was none).
    """
    check_seconds = None
    try:
        path = written_path(resource.dest)
    except OSError as exc:
        raise ResourceError(resource.name, "stage", exc.strerror or str(exc)) from None
    directory = path.parent
    try:
        staged = write_staged(path, directory, target.content)
    except OSError as exc:
        raise ResourceError(resource.name, "stage",
                            f"cannot write a staged file in {directory}: {describe(exc)}"
                            ) from None
    try:
        if check and resource.check_cmd:
            progress("check", resource.check_timeout)
            check_seconds = run_check(resource, staged)
            progress("install", 0.0)
        try:
            if (target.uid, target.gid) != (os.geteuid(), os.getegid()):
                os.chown(staged, target.uid, target.gid)
            os.chmod(staged, target.mode)  # after chown: chown clears set-id bits
        except (OSError, OverflowError) as exc:  # OverflowError: an id beyond uid_t
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise ResourceError(resource.name, "install",
                                f"cannot set owner {target.uid}:{target.gid} and mode "
                                f"{target.mode:04o}: {reason}") from None
        copied = keep and keep_running(path)
        held = _hold(path)
        try:
            os.replace(staged, path)
        except BaseException as exc:
            if held is not None:
                os.close(held)
            if copied:
                reloaded(path)  # still the file the service runs: nothing owed
            if isinstance(exc, OSError):
                raise ResourceError(resource.name, "install", _rename_failed(path, exc)) from None
            raise
    except BaseException:
        _discard_staged(staged)
        raise
    try:
        _fsync_dir(directory)
    except OSError as exc:
        raise NotDurable(resource.name, "install",
                         f"renamed, but cannot fsync {directory}: {exc.strerror}") from None
    finally:
        if held is not None:
            os.close(held)  # the replaced file's inode is freed here, after the rename
    return check_seconds


# Local filesystems, where a replaced file held open is freed at its close. A network one
# (NFS, SMB) "silly-renames" a replaced file that is open instead: one more round trip before
# the rename, and a .nfsXXXX file beside dest until the close.
_DEFERRED_FREE_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "tmpfs"})
_fs_types: dict[int, str] = {}  # st_dev -> filesystem type ("" unknown)


def _hold(path: Path) -> int | None:
    """An O_PATH descriptor of the file a rename is about to replace on a local filesystem
    (None: nothing there, or another filesystem).

    Held across the rename, it keeps the old inode alive, so freeing it (its blocks and
    inode, journaled: ~60 us warm on ext4, ~150 us at a watch's pace, most of the rename)
    happens at the close after the directory fsync instead of inside the rename: the new
    file is in place that much sooner. O_PATH opens nothing (a FIFO or a device alike) and
    needs no read permission.
    """
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        dev = os.fstat(fd).st_dev
        fs = _fs_types.get(dev)
        if fs is None:
            fs = _fs_types[dev] = _fs_type(dev)
    except OSError:
        fs = ""
    if fs in _DEFERRED_FREE_FS:
        return fd
    os.close(fd)
    return None


def _fs_type(dev: int) -> str:
    """The type of the filesystem mounted from device `dev` ("" when not found), from
    /proc/self/mountinfo (field 3 is the device as major:minor; the type follows " - ")."""
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                fields = line.split(" ")
                if len(fields) > 2 and fields[2] == wanted and " - " in line:
                    return line.split(" - ", 1)[1].split(" ", 1)[0]
    except OSError:
        pass
    return ""


def _mount_points() -> set[str]:
    """Mount points of this process's mount namespace (/proc/self/mountinfo, field 5, with
    its octal escapes of space, tab, newline and backslash undone)."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        fields = [line.split(" ") for line in fh]
    return {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), f[4])
            for f in fields if len(f) > 4}


def _is_mount_point(path: Path) -> bool | None:
    """Whether `path` is a mount point of this process (None: cannot tell)."""
    try:
        return str(path) in _mount_points()
    except OSError:
        return None


def _mount_point_refused(path: Path, certain: bool) -> str:
    what = "is a mount point" if certain else "is busy (a mount point?)"
    return (f"cannot rename into {path}: it {what} (one file bind-mounted there, as `docker "
            f"run -v ./{path.name}:{path}` makes), which a rename cannot replace; the file is "
            f"unchanged (confsync never writes a live file in place). Mount its directory "
            f"{path.parent} instead, or set dest to a path that is not a mount point")


def _rename_failed(path: Path, exc: OSError) -> str:
    """Why the final rename failed, in an operator's words. A file that is itself a mount
    point (one file bind-mounted into a container: `docker run -v ./haproxy.cfg:/etc/haproxy/
    haproxy.cfg`) can never be replaced by a rename, only written in place, which would let
    the service read a half-written file: say so, and what to do instead."""
    if exc.errno != errno.EBUSY:
        return f"cannot rename into {path}: {exc.strerror}"
    return _mount_point_refused(path, bool(_is_mount_point(path)))


def unreplaceable(dest: Path) -> str | None:
    """Why a new file could not be renamed over `dest` (it is a mount point), or None: what
    `confsync check` says for a dest that would change, as `once` would fail."""
    try:
        path = written_path(dest)
    except OSError:
        return None  # the apply says why
    return _mount_point_refused(path, True) if _is_mount_point(path) else None


def restore(resource: Resource, previous: FileState) -> None:
    """Put back what was at `dest` before (used when the reload into the new file failed)."""
    if previous.content is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(written_path(resource.dest))  # a link stays, dangling as it was
        return
    install(resource, Target(previous.content, _mode_or_default(previous.mode),
                             previous.uid if previous.uid is not None else os.geteuid(),
                             previous.gid if previous.gid is not None else os.getegid()),
            check=False)
