"""A Kubernetes ConfigMap volume as the kubelet's atomic writer updates it, on a real disk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def swap_data(volume: Path, target: Path) -> None:
    """Point `volume/..data` at `target` (a directory inside `volume`) by rename, and delete
    the directory it pointed at before: what every ConfigMap update does."""
    link = volume / "..data"
    old = os.readlink(link) if link.is_symlink() else None
    (volume / "..data_tmp").symlink_to(target.name)
    os.replace(volume / "..data_tmp", link)
    if old is not None:
        shutil.rmtree(volume / old)
