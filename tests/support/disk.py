"""Filesystems for tests of the dest's own faults: filling one, freezing one."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def fill(path: Path) -> None:
    """Write `path` until its filesystem is full (unbuffered: nothing left to flush at close)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def loop_ext4(path: Path, size_mb: int = 16) -> Iterator[Path]:
    """A small ext4 image of the test's own loop-mounted at `path` (one fsfreeze may freeze:
    tmpfs may not support it); thawed and unmounted after, whatever happened. Skips without
    root."""
    image = path.with_name(path.name + ".img")
    path.mkdir()
    with image.open("wb") as fh:
        fh.truncate(size_mb << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    mounted = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop", str(image), str(path)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip(f"cannot make and loop-mount an ext4 image (needs root): {made.stderr}")
    try:
        yield path
    finally:
        thaw(path)
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        image.unlink(missing_ok=True)


def freeze(path: Path) -> None:
    """fsfreeze -f: every write to the filesystem at `path` blocks until `thaw`."""
    subprocess.run(["fsfreeze", "-f", str(path)], check=True, timeout=10)


def thaw(path: Path) -> None:
    """fsfreeze -u (harmless on a filesystem that is not frozen)."""
    subprocess.run(["fsfreeze", "-u", str(path)], capture_output=True, timeout=10)


BLKIO = Path("/sys/fs/cgroup/blkio")


@contextlib.contextmanager
def hammered(path: Path, iops: int = 3, writers: int = 12) -> Iterator[Path]:
    """A slow but healthy disk: the loop-mounted filesystem at `path` limited to `iops`
    writes a second (a cgroup v1 blkio throttle of its device), which `writers` `dd`s keep
    busy with direct writes. A process moved into the returned cgroup (its `cgroup.procs`)
    shares that disk: each of its fsyncs waits behind theirs (~4 s with the defaults), while
    the device goes on completing writes. Skips without cgroup v1 blkio. Everything is
    stopped and removed after."""
    if not (BLKIO / "blkio.throttle.write_iops_device").exists():
        pytest.skip("no cgroup v1 blkio throttle to make a slow disk with")
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(path)], capture_output=True,
                            text=True, check=True).stdout.strip()
    device = os.stat(source).st_rdev
    group = BLKIO / f"confsync-test-{os.getpid()}-{path.name}"
    group.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        (group / "blkio.throttle.write_iops_device").write_text(
            f"{os.major(device)}:{os.minor(device)} {iops}")
        for n in range(writers):
            procs.append(subprocess.Popen(
                ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec dd if=/dev/zero '
                 f'of={path}/.hammer{n} bs=4k count=100000 oflag=direct status=none']))
        yield group
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(timeout=30)
        for pid in (group / "cgroup.procs").read_text().split():  # (a test's own process)
            (BLKIO / "cgroup.procs").write_text(pid)
        group.rmdir()


@contextlib.contextmanager
def hung_mount(path: Path) -> Iterator[Path]:
    """A FUSE filesystem mounted over the directory `path` whose server never answers (a hung
    NFS or FUSE mount, as far as a caller sees): every lookup under it blocks, killably, until
    the end, when the connection is aborted and the mount lazily detached. Skips without root
    or /dev/fuse."""
    import ctypes

    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        pytest.skip(f"no /dev/fuse to make a hung mount with: {exc}")
    libc = ctypes.CDLL(None, use_errno=True)
    options = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
    if libc.mount(b"confsync-test-hung", str(path).encode(), b"fuse", 0, options) != 0:
        os.close(fd)
        pytest.skip(f"cannot mount FUSE (needs root): {os.strerror(ctypes.get_errno())}")
    try:
        yield path
    finally:
        os.close(fd)  # aborts the connection: whatever waited on it fails at once
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)
