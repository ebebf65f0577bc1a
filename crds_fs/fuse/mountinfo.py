"""The one parser of /proc/self/mountinfo (mount points, devices, filesystem types).

Used by the FUSE glue (which device is our mount, for its readahead knob) and by
`crds-fs mount`/`umount` (is this path already a mount point; which processes keep a busy
mount in use, from /proc/<pid>/{cwd,root,exe,fd,maps}).  Deliberately free of mfusepy so
the CLI can import it without loading libfuse.
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


class MountUser(NamedTuple):
    """A process that keeps a mount busy, and how (as `fuser -m` would find it)."""

    pid: int
    #: the process's command name (/proc/<pid>/comm)
    command: str
    #: e.g. 'cwd /mnt/references', 'open file /mnt/references/hst/x.fits', 'mapped file ...'
    uses: tuple[str, ...]

    def describe(self, mountpoint: str | Path) -> str:
        """'pid 123 (bash: cwd references/hst)', paths relative to *mountpoint*."""
        base = os.path.abspath(mountpoint)
        uses = [use.replace(" " + base + "/", " ").replace(" " + base, " .")
                for use in self.uses]
        return f"pid {self.pid} ({self.command}: {', '.join(uses)})"


def _inside(path: str, base: str) -> bool:
    return path == base or path.startswith(base + "/")


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _uses_of(pid_dir: Path, base: str, limit: int) -> list[str]:
    """How the process of *pid_dir* uses the mount at *base* (readlink only: never a stat
    into the mount, which could wait on the filesystem being asked about)."""
    uses = [f"{name} {target}" for name in ("cwd", "root", "exe")
            if (target := _link(str(pid_dir / name))) and _inside(target, base)]
    try:
        fds = os.listdir(pid_dir / "fd")
    except OSError:
        fds = []
    for fd in fds:
        target = _link(str(pid_dir / "fd" / fd))
        if target and _inside(target, base) and len(uses) < limit:
            uses.append(f"open file {target}")
    uses = list(dict.fromkeys(uses))
    try:
        with open(pid_dir / "maps", encoding="utf-8", errors="surrogateescape") as maps:
            mapped = {line.split(None, 5)[5].strip() for line in maps
                      if line.count(" ") >= 5 and "/" in line}
    except (OSError, IndexError):
        mapped = set()
    for target in sorted(mapped):
        if _inside(target, base) and len(uses) < limit:
            uses.append(f"mapped file {target}")
    return uses


def mount_users(mountpoint: str | Path, proc: str | Path = "/proc",
                limit: int = 5) -> tuple[list[MountUser], bool]:
    """Processes using the mount at *mountpoint* (working directory, root, executable, open
    or mapped files inside it), and whether some processes could not be inspected (other
    users' processes, without root).  At most *limit* uses are listed per process."""
    base = os.path.abspath(mountpoint)
    users: list[MountUser] = []
    hidden = False
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        pid_dir = Path(entry.path)
        if _link(str(pid_dir / "cwd")) is None and not os.access(pid_dir / "fd", os.R_OK):
            hidden = hidden or pid_dir.exists()
            continue
        uses = _uses_of(pid_dir, base, limit)
        if uses:
            try:
                command = (pid_dir / "comm").read_text().strip()
            except OSError:
                command = "?"
            users.append(MountUser(int(entry.name), command, tuple(uses)))
    return users, hidden


__all__ = ["MountEntry", "MountUser", "find_mount", "mount_users", "parse_line",
           "read_mountinfo", "unescape"]
