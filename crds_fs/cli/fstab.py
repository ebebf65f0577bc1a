"""The mount(8) calling form: `crds-fs SOURCE MOUNTPOINT -o OPTIONS` -> `crds-fs mount ...`.

`mount -t fuse.crds-fs URL /crds -o ro,cache=/var/cache/crds-fs` (or the same fstab line)
makes mount(8) run /sbin/mount.fuse3, which strips `user`, `users`, `nouser`, `auto`,
`noauto`, `_netdev`, `nofail`, `setuid=` and `drop_privileges` (it handles the last two
itself) and executes `crds-fs SOURCE MOUNTPOINT -o REST` through `/bin/sh -c` with the PATH
mount(8) leaves (none: /bin/sh's default, so crds-fs must be in /usr/local/bin or /usr/bin).

This module only rewrites that argv into the `crds-fs mount` command line, so click stays
the one parser: crds-fs options get their long spelling (`cache=DIR` -> `--cache DIR`),
mount(8)'s own options are dropped, everything else goes to libfuse as `-o` (allow_other,
ro, rw, default_permissions...).  mount(8) passes `rw` when `ro` is not written: in this
form the mount is read-only only when the options say `ro` (as mount(8) users expect).
"""

from __future__ import annotations

from collections.abc import Iterable

#: `-o NAME=VALUE` -> `--option VALUE` (names also accepted with '-' for '_')
VALUE_OPTIONS = {
    "cache": "--cache",
    "context": "--context",
    "observatory": "--observatory",
    "server": "--server",  # more mirrors, after SOURCE; repeat server= for several
    "proxy": "--proxy",
    "refresh": "--refresh",
    "poll": "--poll",
    "datasets": "--datasets",
    "engine": "--engine",
    "cache_max_size": "--cache-max-size",
    "read_timeout": "--read-timeout",
    "retries": "--retries",
    "log_file": "--log-file",
    "ready_timeout": "--ready-timeout",
}
#: `-o NAME` -> `--flag`
FLAG_OPTIONS = {
    "offline": "--offline",
    "foreground": "--foreground",
    "nonempty": "--nonempty",
    "verbose": "-v",
    "debug": "-vv",
}
#: mount(8)/fstab options that are not the filesystem's business: dropped.  `dev`/`suid`
#: (which mount.fuse3 adds for root) are dropped too: crds-fs mounts stay nosuid,nodev.
IGNORED = frozenset({"defaults", "auto", "noauto", "user", "users", "nouser", "owner",
                     "group", "_netdev", "nofail", "dev", "suid"})
IGNORED_PREFIXES = ("x-", "comment=")
#: SOURCE values that name no server (the server comes from server= or $CRDS_SERVER_URL)
NO_SOURCE = frozenset({"crds-fs", "none", ""})


class FstabError(ValueError):
    """An argv in the mount(8) form that cannot be translated (the message says why)."""


def is_mount_form(argv: list[str], commands: Iterable[str]) -> bool:
    """True for `SOURCE MOUNTPOINT [-o OPTS]`: the first word is neither a subcommand nor
    an option, a second positional word follows, and the first is a URL (or `crds-fs`,
    `none`) or options follow; so a mistyped subcommand (`crds-fs moutn /x`) still gets
    click's "No such command"."""
    if len(argv) < 2 or argv[0] in set(commands) or argv[0].startswith("-"):
        return False
    if argv[1].startswith("-"):
        return False
    return ("://" in argv[0] or argv[0] in NO_SOURCE
            or any(arg.startswith("-o") for arg in argv[2:]))


def split_options(argv: list[str]) -> list[str]:
    """Every option of the `-o a,b=c` / `-oa,b` groups after SOURCE MOUNTPOINT, in order."""
    options: list[str] = []
    rest = iter(argv)
    for arg in rest:
        if arg == "-o":
            group = next(rest, None)
            if group is None:
                raise FstabError("-o needs a value (e.g. -o ro,cache=/var/cache/crds-fs)")
        elif arg.startswith("-o"):
            group = arg[2:]
        elif arg in ("-n", "-s", "-v", "-f"):  # mount(8)'s nomtab/sloppy/verbose/fake
            if arg == "-v":
                options.append("verbose")
            if arg == "-f":
                raise FstabError("fake mounts (-f) are not supported")
            continue
        else:
            raise FstabError(f"unexpected argument {arg!r}: the mount(8) form is "
                             "`crds-fs SOURCE MOUNTPOINT -o OPTIONS`")
        options += [opt for opt in group.split(",") if opt]
    return options


def translate(argv: list[str]) -> list[str]:
    """The `crds-fs mount` argv for mount(8)'s `SOURCE MOUNTPOINT -o OPTIONS`."""
    source, mountpoint, *rest = argv
    if mountpoint.startswith("/dev/fd/"):
        raise FstabError("drop_privileges (a pre-opened /dev/fd/N mount point) is not "
                         "supported; use setuid=USER in the mount options instead")
    args = ["mount", mountpoint]
    if source not in NO_SOURCE:
        if "://" not in source:
            raise FstabError(f"mount source {source!r} is not a server URL: write "
                             "https://host (or crds-fs with -o server=URL)")
        args += ["--server", source]
    fuse: list[str] = []
    for opt in split_options(rest):
        key, sep, value = opt.partition("=")
        name = key.replace("-", "_")
        if opt in IGNORED or opt.startswith(IGNORED_PREFIXES):
            continue
        if name in VALUE_OPTIONS:
            if not sep or not value:
                raise FstabError(f"mount option {key} needs a value ({key}=...)")
            args += [VALUE_OPTIONS[name], value]
        elif name in FLAG_OPTIONS and not sep:
            args.append(FLAG_OPTIONS[name])
        else:
            fuse.append(opt)
    if fuse:
        args += ["-o", ",".join(fuse)]
    return args
