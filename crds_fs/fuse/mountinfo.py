"""The one parser of /proc/self/mountinfo (mount points, devices, filesystem types).

Used by the FUSE glue (which device is our mount, for its readahead knob) and by
`crds-fs mount`/`umount` (is this path already a mount point).  Deliberately free of
mfusepy so the CLI can import it without loading libfuse.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(r"\\([0-7]{3})")


class MountEntry(NamedTuple):
    """One line of mountinfo (proc(5)): the fields crds-fs needs."""

    #: 'major:minor' of the filesystem (its bdi in /sys/class/bdi/)
    device: str
    #: absolute mount point, unescaped
    mountpoint: str
    #: e.g. 'fuse', 'fuse.crds-fs', 'ext4'
    fstype: str
    #: mount source, unescaped (e.g. 'crds-fs', '/dev/sda1')
    source: str


def unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return _OCTAL.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_line(line: str) -> MountEntry | None:
    """The entry of one mountinfo line; None for a line that does not have the format.

    Fields: id, parent id, major:minor, root, mount point, options, optional fields
    ended by a lone '-', then filesystem type, source and super options.
    """
    fields = line.split()
    try:
        separator = fields.index("-", 6)
    except ValueError:
        return None
    if len(fields) < separator + 3:
        return None
    return MountEntry(fields[2], unescape(fields[4]), fields[separator + 1],
                      unescape(fields[separator + 2]))


def read_mountinfo(path: str | Path = MOUNTINFO) -> list[MountEntry]:
    """Every mount seen by this process (raises OSError when *path* cannot be read)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as lines:
        return [entry for line in lines if (entry := parse_line(line)) is not None]


def find_mount(mountpoint: str | Path, path: str | Path = MOUNTINFO) -> MountEntry | None:
    """The last (topmost) mount at *mountpoint*, or None when nothing is mounted there."""
    target = os.path.abspath(mountpoint)
    found = None
    for entry in read_mountinfo(path):
        if entry.mountpoint == target:
            found = entry
    return found


__all__ = ["MountEntry", "find_mount", "parse_line", "read_mountinfo", "unescape"]
