"""`crds-fs mount` and `crds-fs umount`.

`mount` without --foreground starts a detached copy of itself in foreground mode (its own
session, output to the log file) and waits until the mount answers (`.crds-fs/stats` is
readable) or the child reports why it could not mount; the exit status says which.  The
child tells the parent over a pipe (`--status-fd`), so errors reach the terminal even
though the daemon's own output goes to the log.

`mount` checks the mount point as mount tools do (exists, is a directory, not mounted
already, empty unless --nonempty) and mounts read-only (`ro` in /proc/mounts).

`umount` asks the daemon's pid from `.crds-fs/stats`, runs `fusermount3 -u` and waits for
the daemon to exit.  A busy mount is left mounted and the processes using it are named
(from /proc), unless --lazy detaches it anyway.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..config import OBSERVATORIES, Settings, parse_size
from ..errors import CrdsFsError, MountError
from . import LOG_FORMAT, cli, proxy_option, verbosity
from . import log_file as given_log_file

log = logging.getLogger("crds_fs.mount")

#: how long `mount` waits for the daemon to be ready by default (catalog download included)
READY_TIMEOUT = 120.0
#: how long `umount` waits for the daemon to exit after the unmount
EXIT_TIMEOUT = 30.0
STATS = (".crds-fs", "stats")
#: kernel readahead for the mount (KiB): lets the kernel ask for 1 MiB reads, several ahead
READAHEAD_KB = 4096
#: -o options that crds-fs itself handles (libfuse 3 no longer knows `nonempty`)
OUR_FUSE_OPTS = frozenset({"nonempty"})


# --- mount ----------------------------------------------------------------------------------


@cli.command("mount")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--server", "server_url", multiple=True, metavar="URL",
              help="CRDS server (real or `crds-fs serve`); repeat for mirrors, tried in order "
                   "on failure [default: $CRDS_SERVER_URL, comma-separated].")
@proxy_option
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Cache folder [default: $CRDS_FS_CACHE or ~/.cache/crds-fs].")
@click.option("--context", default=None, metavar="NAME|operational",
              help="Context presented to crds as operational [default: $CRDS_CONTEXT, "
                   "else the server's operational context].")
@click.option("--observatory", type=click.Choice(OBSERVATORIES), default=None,
              help="Observatory [default: $CRDS_OBSERVATORY, else guessed from the server].")
@click.option("--foreground", "-f", is_flag=True,
              help="Stay in the foreground (logs to stderr); Ctrl-C unmounts.")
@click.option("--offline", is_flag=True,
              help="Do not contact the server: catalog and context from the cache index, "
                   "only cached files readable.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Daemon log [default: <cache>/logs/mount.log]; in --foreground, a copy.")
@click.option("--read-timeout", type=click.FloatRange(min=0.1), default=None,
              help="Seconds a stalled download may wait for data [default: "
                   "$CRDS_FS_READ_TIMEOUT or 30].")
@click.option("--retries", type=click.IntRange(min=0), default=None,
              help="Extra attempts after a failed request [default: $CRDS_FS_RETRIES or 3].")
@click.option("--cache-max-size", default=None, metavar="SIZE",
              help="Largest the cache may grow, e.g. 50G (LRU eviction of references, down "
                   "to 90%) [default: $CRDS_FS_CACHE_MAX_SIZE, else unlimited].")
@click.option("--ready-timeout", type=click.FloatRange(min=1), default=READY_TIMEOUT,
              show_default=True, help="Seconds to wait for the daemon to be ready.")
@click.option("-o", "fuse_opts", multiple=True, metavar="OPT[=VAL]",
              help="Extra libfuse option, e.g. -o allow_other (repeatable); "
                   "-o nonempty is --nonempty; -o rw mounts read-write (not ro) so that "
                   "`ln -s`/`rm` in bestrefs/ can register datasets.")
@click.option("--nonempty", is_flag=True,
              help="Mount even when MOUNTPOINT is not empty (its entries are hidden while "
                   "mounted).")
@click.option("--datasets", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Folder of datasets (FITS/ASDF) shown as "
                                 "bestrefs/<file name without extension>/.")
@click.option("--engine", type=click.Choice(["auto", "remote", "local"]), default=None,
              help="Who decides bestrefs/ answers: the server (remote), the local engine "
                   "over cached mappings (local), or remote while online (auto) "
                   "[default: auto].")
@click.option("--poll", type=click.FloatRange(min=0.1), default=None, metavar="SECONDS",
              help="How often bestrefs/ checks the server's operational context when the "
                   "mount follows it (no --context, or --context operational); given, it "
                   "shortens --refresh (one poller moves catalog and bestrefs/ together) "
                   "[default: 60, only with --refresh 0].")
@click.option("--refresh", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="How often the daemon checks the server for new files, a new operational "
                   "context or bad files (0 = never; `crds-fs refresh` and SIGHUP check at "
                   "once) [default: $CRDS_FS_REFRESH or 600].")
@click.option("--streams", type=click.IntRange(1, 32), default=None,
              help="Parallel byte ranges per download of a big file (CRDS_FS_RANGE_THRESHOLD, "
                   "default 64M) [default: CRDS_FS_STREAMS or 4].")
@click.option("--complete-partial", is_flag=True, default=None,
              help="Fetch the rest of a big file read in chunks in the background (it then "
                   "becomes a cached file); default: CRDS_FS_COMPLETE_PARTIAL, else only the "
                   "chunks read are fetched.")
@click.option("--status-fd", type=int, default=None, hidden=True)
@click.pass_context
def mount_command(ctx: click.Context, mountpoint: Path, server_url: tuple[str, ...],
                  proxy: str | None,
                  cache_dir: Path | None, context: str | None, observatory: str | None,
                  foreground: bool, offline: bool, log_file: Path | None,
                  read_timeout: float | None, retries: int | None,
                  cache_max_size: str | None, ready_timeout: float,
                  fuse_opts: tuple[str, ...], nonempty: bool, datasets: Path | None,
                  engine: str | None, poll: float | None, refresh: float | None,
                  streams: int | None, complete_partial: bool | None,
                  status_fd: int | None) -> None:
    """Mount CRDS at MOUNTPOINT: mappings/, references/, config/ as a CRDS cache.

    Files are listed from the server catalog and downloaded (verified) on first open;
    point CRDS_PATH at MOUNTPOINT with CRDS_READONLY_CACHE=1 to use it from crds.
    """
    settings = Settings.from_env(server_url=list(server_url) or None, proxy=proxy,
                                 cache_dir=cache_dir,
                                 observatory=observatory, context=context,
                                 read_timeout=read_timeout, retries=retries,
                                 streams=streams, complete_partial=complete_partial or None,
                                 cache_max_bytes=(parse_size(cache_max_size,
                                                             what="--cache-max-size")
                                                  if cache_max_size else None))
    mountpoint = Path(os.path.abspath(mountpoint))
    log_file = log_file or given_log_file(ctx)
    nonempty = nonempty or "nonempty" in _parse_fuse_opts(fuse_opts)
    _configure_bestrefs(datasets, engine, poll)
    if foreground or status_fd is not None:
        run_foreground(settings, mountpoint, offline=offline, log_file=log_file,
                       fuse_opts=fuse_opts, status_fd=status_fd, verbose=verbosity(ctx),
                       nonempty=nonempty, refresh=refresh, poll=poll)
        return
    check_mountpoint(mountpoint, nonempty=nonempty)
    log_path = Path(os.path.abspath(log_file or Path(settings.cache_dir) / "logs" / "mount.log"))
    args = _child_args(ctx, settings, mountpoint)
    info = start_daemon(args, mountpoint, log_path, ready_timeout)
    mount = info.get("mount", {})
    state = "online" if mount.get("online") else "OFFLINE (cached files only)"
    click.echo(f"crds-fs: mounted {mount.get('observatory')} {mount.get('context')} from "
               f"{mount.get('server')} at {mountpoint}, {state}; pid {mount.get('pid')}, "
               f"log {log_path}")


#: options the parent handles itself or states explicitly for the daemon
_NOT_FORWARDED = frozenset({"mountpoint", "foreground", "status_fd", "log_file", "ready_timeout",
                            "server_url", "cache_dir", "context", "observatory", "verbose"})


def _child_args(ctx: click.Context, settings: Settings, mountpoint: Path) -> list[str]:
    """The daemon's command line: this one, in foreground mode, with the settings explicit
    (the cache as an absolute path: the daemon runs in /) and every other option given on
    this command line forwarded as is (so options added later need no change here)."""
    args = ["mount", str(mountpoint), "--foreground"]
    for url in settings.server_list:
        args += ["--server", url]
    args += ["--cache", str(Path(settings.cache_dir).resolve())]
    if settings.context is not None:
        args += ["--context", settings.context]
    if settings.observatory is not None:
        args += ["--observatory", settings.observatory]
    for param in ctx.command.params:
        name = param.name or ""
        if (name in _NOT_FORWARDED or not isinstance(param, click.Option)
                or not _given_by_user(ctx, name)):
            continue
        value = ctx.params.get(name)
        if value is None or value == () or (param.is_flag and not value):
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            args.append(flag)
            continue
        for item in value if param.multiple else (value,):
            text = str(Path(item).resolve()) if isinstance(item, Path) else str(item)
            args += [flag, text]
    return ["-v"] * verbosity(ctx) + args


def _given_by_user(ctx: click.Context, name: str) -> bool:
    """True when the user set option *name* (command line or environment), never a default:
    click's documented parameter source, so a default's representation never matters."""
    source = ctx.get_parameter_source(name)
    return source in (click.core.ParameterSource.COMMANDLINE,
                      click.core.ParameterSource.ENVIRONMENT)


def _configure_bestrefs(datasets: Path | None, engine: str | None, poll: float | None) -> None:
    """Hand --datasets/--engine/--poll to the bestrefs/ provider (environment fills gaps)."""
    from dataclasses import replace

    from ..bestrefs.registry import ViewOptions
    from ..namespace.bestrefs import configure

    options = ViewOptions.from_env()
    changes: dict[str, Any] = {"datasets": datasets.resolve() if datasets else None,
                               "engine": engine, "poll": poll}
    configure(replace(options, **{k: v for k, v in changes.items() if v is not None}))


def check_mountpoint(mountpoint: Path, *, nonempty: bool = False) -> None:
    """Fail early, with advice, on mount points libfuse would refuse less clearly (or, for
    a non-empty folder, would accept and silently hide what is in it)."""
    try:
        st = mountpoint.stat()
    except FileNotFoundError:
        raise MountError(f"mount point {mountpoint} does not exist; create it first "
                         "(mkdir -p)") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise MountError(
                f"{mountpoint} is a dead FUSE mount (its daemon is gone); run "
                f"`crds-fs umount {mountpoint}` (or fusermount3 -u) first") from None
        raise MountError(f"mount point {mountpoint} is not usable: {exc.strerror}") from None
    if not os.path.isdir(mountpoint):
        raise MountError(f"mount point {mountpoint} is not a directory; mount on an (empty) "
                         "folder")
    if is_mounted(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point (st_dev {st.st_dev}); "
                         f"unmount it first (`crds-fs umount {mountpoint}`)")
    if not nonempty:
        try:
            with os.scandir(mountpoint) as entries:
                names = [entry.name for _, entry in zip(range(3), entries, strict=False)]
        except OSError as exc:
            raise MountError(f"mount point {mountpoint} cannot be read ({exc.strerror}); "
                             "mount on a folder you can read") from None
        if names:
            shown = ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")
            raise MountError(
                f"mount point {mountpoint} is not empty ({shown}): the mount would hide what "
                "is in it. Use an empty folder, or pass --nonempty (or -o nonempty) to mount "
                "over it anyway")


def is_mounted(path: Path) -> bool:
    """True when *path* is the mount point of some filesystem (from /proc/self/mountinfo)."""
    from ..fuse.mountinfo import find_mount

    try:
        return find_mount(path) is not None
    except OSError:
        return os.path.ismount(os.path.abspath(path))


def start_daemon(args: list[str], mountpoint: Path, log_path: Path,
                 ready_timeout: float) -> dict[str, Any]:
    """Start the detached daemon; return its stats once ready, or raise with its error."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "crds_fs.cli", *args, "--status-fd", str(write_fd)]
    with open(log_path, "ab") as log_out:
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log_out, stderr=subprocess.STDOUT,
                pass_fds=(write_fd,), start_new_session=True, close_fds=True,
                cwd="/",  # never pin the caller's directory (or its filesystem)
            )
        finally:
            os.close(write_fd)
    try:
        message = _wait_for_status(read_fd, proc, ready_timeout)
    finally:
        os.close(read_fd)
    if message != "ready":
        _stop_child(proc)
        detail = message or f"the daemon exited with status {proc.returncode}"
        raise MountError(f"mounting {mountpoint} failed: {detail}\n{_log_tail(log_path)}")
    deadline = time.monotonic() + ready_timeout
    while True:
        try:
            return read_stats(mountpoint)
        except (OSError, ValueError) as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop_child(proc)
                raise MountError(f"mount at {mountpoint} did not become readable "
                                 f"({exc})\n{_log_tail(log_path)}") from None
            time.sleep(0.05)


def _wait_for_status(read_fd: int, proc: subprocess.Popen, timeout: float) -> str:
    """The first line the daemon writes on the status pipe ('' if it died silently)."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return f"the daemon was not ready after {timeout:.0f}s"
        ready, _, _ = select.select([read_fd], [], [], min(left, 0.5))
        if not ready:
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:  # every writer closed: the daemon is gone
            proc.wait(5)
            break
        data += chunk
    line = data.decode("utf-8", "replace").split("\n", 1)[0].strip()
    return line.removeprefix("error: ") if line.startswith("error: ") else line


def _stop_child(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"last lines of {path}:\n" + "\n".join("  " + line for line in text)


def read_stats(mountpoint: Path) -> dict[str, Any]:
    """The mount's `.crds-fs/stats` as a dict (raises OSError/ValueError when unreadable)."""
    return json.loads(mountpoint.joinpath(*STATS).read_text())


class _StatusPipe:
    """The daemon's side of the status pipe: one line, then closed."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def send(self, line: str) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.write(fd, (line.replace("\n", " ") + "\n").encode())
        except OSError:
            pass  # the parent gave up waiting; the log has everything
        finally:
            os.close(fd)


def configure_logging(log_file: Path | None, verbose: int) -> None:
    """INFO from crds-fs (mounts, downloads, failures) with times; DEBUG with -vv."""
    from .journal import stderr_formatter

    root = logging.getLogger()
    formatter = logging.Formatter(LOG_FORMAT)
    for handler in root.handlers:  # stderr: under systemd, journal-style (no times)
        handler.setFormatter(stderr_formatter(formatter))
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    logging.getLogger("crds_fs").setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)


def run_foreground(settings: Settings, mountpoint: Path, *, offline: bool,
                   log_file: Path | None, fuse_opts: tuple[str, ...], status_fd: int | None,
                   verbose: int, nonempty: bool = False, refresh: float | None = None,
                   poll: float | None = None) -> None:
    """Open the cache, build the namespace, mount and serve until unmounted or signalled."""
    status = _StatusPipe(status_fd)
    configure_logging(log_file, verbose)
    try:
        check_mountpoint(mountpoint, nonempty=nonempty)
        cache, operations = _prepare(settings, mountpoint, offline, status, refresh, poll)
    except CrdsFsError as exc:
        log.error("%s", exc)
        status.send(f"error: {exc}")
        raise
    except Exception as exc:
        log.exception("mount of %s failed", mountpoint)
        status.send(f"error: {type(exc).__name__}: {exc}")
        raise
    from ..fuse import fuse_options, run_fuse
    from ..namespace.refresh import watch_sighup

    refresher = operations.source.refresher
    unwatch = watch_sighup(refresher) if refresher is not None else None
    try:
        extra = {k: v for k, v in _parse_fuse_opts(fuse_opts).items() if k not in OUR_FUSE_OPTS}
        extra.setdefault("fsname", mount_source(settings.server_url))  # df, findmnt, status
        options = fuse_options(extra=extra)
        if options.pop("rw", False):  # -o rw: writable, for `ln -s`/`rm` in bestrefs/ only
            options.pop("ro", None)
        run_fuse(operations, str(mountpoint), **options)
    except CrdsFsError as exc:
        status.send(f"error: {exc}")
        raise
    finally:
        status.send("error: the FUSE loop ended before the mount was ready")
        if refresher is not None:
            refresher.stop()
        if unwatch is not None:
            unwatch()
        cache.close()
    log.info("unmounted %s; daemon exiting", mountpoint)


def _prepare(settings: Settings, mountpoint: Path, offline: bool,
             status: _StatusPipe, refresh: float | None = None,
             poll: float | None = None) -> tuple[Any, Any]:
    from ..cache import FileCache
    from ..fuse import CrdsOperations
    from ..namespace import MountSource
    from ..namespace.refresh import Refresher, attach, mount_interval

    started = time.perf_counter()
    cache = FileCache.open(settings, observatory=settings.observatory, offline=offline)
    try:
        source = MountSource(cache, context=settings.context, mountpoint=str(mountpoint))
        refresher = attach(source, Refresher(source, interval=mount_interval(refresh, poll),
                                             offline=offline))
    except BaseException:
        cache.close()
        raise
    catalog = cache.catalog
    state = "online" if cache.online else "OFFLINE: only cached files can be opened"
    log.info("mounting %s: %s context %s from %s (%d mappings, %d references), cache %s, %s;"
             " prepared in %.2fs", mountpoint, cache.observatory, source.context,
             settings.server_url, len(catalog.mappings()), len(catalog.references()),
             settings.cache_dir, state, time.perf_counter() - started)

    def ready() -> None:
        log.info("mounted %s (pid %d); checking the server for changes %s", mountpoint,
                 os.getpid(), f"every {refresher.interval:g}s" if refresher.interval
                 else "only when asked (crds-fs refresh, SIGHUP)")
        refresher.start()
        status.send("ready")

    # The catalog and everything loaded so far live as long as the mount: keep them out of
    # the garbage collector's scans (which otherwise walk 44k catalog entries repeatedly).
    gc.collect()
    gc.freeze()
    return cache, CrdsOperations(source, on_init=ready, readahead_kb=READAHEAD_KB)


def mount_source(url: str | None) -> str:
    """The server as /proc/mounts shows the mount's source (like sshfs's host:path): no
    credentials (the table is world-readable), no query, no characters -o cannot carry."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url or "")
    except ValueError:
        return "crds-fs"
    if not parts.scheme or not parts.netloc:
        return "crds-fs"
    host = parts.netloc.rpartition("@")[2]  # without user:password@
    text = f"{parts.scheme}://{host}{parts.path}".rstrip("/")
    return "".join(ch for ch in text if ch.isprintable() and ch not in ", \\\t") or "crds-fs"


def _parse_fuse_opts(opts: tuple[str, ...]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for group in opts:
        for opt in group.split(","):
            if not opt:
                continue
            key, sep, value = opt.partition("=")
            parsed[key] = value if sep else True
    return parsed


# --- umount ---------------------------------------------------------------------------------


@cli.command("umount")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--timeout", type=click.FloatRange(min=0), default=EXIT_TIMEOUT,
              show_default=True, help="Seconds to wait for the daemon to exit.")
@click.option("-l", "--lazy", is_flag=True,
              help="Detach a busy mount anyway (umount -l): it disappears now and the "
                   "daemon exits when the last process using it lets go.")
def umount_command(mountpoint: Path, timeout: float, lazy: bool) -> None:
    """Unmount a crds-fs mount and wait for its daemon to exit.

    A busy mount (a shell inside it, an open file) stays mounted and the processes using
    it are named; --lazy detaches it anyway.
    """
    mountpoint = Path(os.path.abspath(mountpoint))
    message = unmount(mountpoint, timeout=timeout, lazy=lazy)
    click.echo(message)


def busy_message(mountpoint: Path) -> str:
    """Why *mountpoint* cannot be unmounted: the processes using it, and what to do."""
    from ..fuse.mountinfo import mount_users

    try:
        users, hidden = mount_users(mountpoint)
    except OSError:
        users, hidden = [], True
    me = os.getpid()
    shown = [u.describe(mountpoint) + (" (this command)" if u.pid == me else "")
             for u in users[:10]]
    if len(users) > 10:
        shown.append(f"and {len(users) - 10} more")
    if shown:
        who = "in use by " + "; ".join(shown)
    else:
        who = "in use, by no process visible here (another mount namespace, or a mount inside it?)"
    if hidden:
        who += " (processes of other users could not be inspected)"
    return (f"{mountpoint} is busy: {who}. Close those files or leave the folder (cd), then "
            f"run again; or detach it now with `crds-fs umount --lazy {mountpoint}`")


def unmount(mountpoint: Path, *, timeout: float = EXIT_TIMEOUT, lazy: bool = False) -> str:
    """Unmount *mountpoint*, wait for the daemon; returns what happened (raises MountError,
    for a busy mount naming the processes using it unless *lazy*)."""
    pid = _daemon_pid(mountpoint)
    if not is_mounted(mountpoint):
        raise MountError(f"{mountpoint} is not mounted")
    result = _fusermount("-u", mountpoint)
    busy = False
    if result.returncode != 0:
        text = (result.stderr or result.stdout).strip()
        if "busy" not in text.lower():
            raise MountError(f"unmounting {mountpoint} failed: {text}")
        if not lazy:
            raise MountError(busy_message(mountpoint))
        busy = True
        click.echo(f"crds-fs: {mountpoint} is busy; detaching it lazily (--lazy): it "
                   "disappears now and the daemon exits when the last user lets go", err=True)
        result = _fusermount("-u", "-z", mountpoint)
        if result.returncode != 0:
            raise MountError(f"lazy unmount of {mountpoint} failed: "
                             f"{(result.stderr or result.stdout).strip()}")
    if pid is None:
        return f"crds-fs: unmounted {mountpoint}"
    # after a lazy unmount the daemon lives on until the last user lets go: do not wait long
    if _wait_exit(pid, min(timeout, 2.0) if busy else timeout):
        return f"crds-fs: unmounted {mountpoint}; daemon {pid} exited"
    if busy:
        return (f"crds-fs: unmounted {mountpoint} lazily; daemon {pid} exits when the mount "
                "is no longer in use")
    raise MountError(f"unmounted {mountpoint} but daemon {pid} is still running after "
                     f"{timeout:.0f}s; stop it with kill {pid}")


def _daemon_pid(mountpoint: Path) -> int | None:
    """The daemon's pid as its stats file reports it (None for a dead or foreign mount)."""
    try:
        mount = read_stats(mountpoint).get("mount", {})
    except (OSError, ValueError):
        return None
    pid = mount.get("pid")
    if mount.get("mountpoint") not in (None, str(mountpoint)) or not isinstance(pid, int):
        return None
    return pid


def _fusermount(*args: object) -> subprocess.CompletedProcess:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise MountError("fusermount3 not found: install fuse3 (apt-get install fuse3)")
    return subprocess.run([tool, *map(str, args)], capture_output=True, text=True, timeout=60)


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

