"""Which filesystem holds a folder, and so which observer watches it (inotify misses other machines' writes)."""

from __future__ import annotations

import os
import re
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "ceph", "glusterfs", "davfs",
                        "afs", "lustre", "gpfs", "beegfs", "ncpfs", "fakeowner", "grpcfuse"})


def mounts(mountinfo: str = MOUNTINFO) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount, from /proc/self/mountinfo (empty if unreadable)."""
    try:
        lines = Path(mountinfo).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        mount_point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])  # \040 is a space
        found.append((mount_point, line.split(" - ", 1)[1].split()[0]))
    return found


def filesystem_type(path: Path, mountinfo: str = MOUNTINFO) -> str | None:
    """The filesystem type of the mount holding `path`, from /proc/self/mountinfo (None if unknown)."""
    target = os.path.realpath(path)
    best, best_type = "", None
    for mount_point, fs_type in mounts(mountinfo):
        if (target == mount_point or target.startswith(mount_point.rstrip("/") + "/")) and len(mount_point) > len(best):
            best, best_type = mount_point, fs_type
    return best_type


def network_mounts_under(path: Path, mountinfo: str = MOUNTINFO) -> list[tuple[Path, str]]:
    """Network filesystems mounted strictly inside `path` (a recursive folder polls those, whatever it uses)."""
    root = os.path.realpath(path).rstrip("/") + "/"
    return sorted({(Path(m), t) for m, t in mounts(mountinfo) if m.startswith(root) and is_network_fs(t)})


def is_network_fs(fs_type: str | None) -> bool:
    return fs_type is not None and (fs_type in NETWORK_FS or fs_type.startswith("fuse"))


def choose_observer(setting: str, path: Path, mountinfo: str = MOUNTINFO) -> str:
    """The observer for a folder: the configured one, or for `auto`, polling on a network filesystem."""
    if setting != "auto":
        return setting
    return "polling" if is_network_fs(filesystem_type(path, mountinfo)) else "inotify"
