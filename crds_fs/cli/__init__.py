"""`crds-fs` command line: one click group, one module per subcommand family.

The CLI only parses arguments, calls the Python API / layers and prints; logic lives below.

`-v/--verbose` and `--log-file` are accepted before the subcommand (`crds-fs -v mount`)
and after it (`crds-fs mount -v`), as users of mount tools and crds expect; both places
add up (`-v` counts) into `ctx.meta`, read with `verbosity()` and `log_file()`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from ..errors import CrdsFsError

#: log lines of daemons and servers (mount log, serve log): when, which process, what
LOG_FORMAT = "%(asctime)s crds-fs[%(process)d] %(levelname)s %(name)s: %(message)s"
#: warnings of interactive commands on stderr
CONSOLE_FORMAT = "crds-fs %(levelname)s %(name)s: %(message)s"
_VERBOSE = "crds_fs.verbose"
_LOG_FILE = "crds_fs.log_file"
#: subcommands that use --log-file for a log of their own (the mount daemon's)
_OWN_LOG_FILE = frozenset({"mount"})


def verbosity(ctx: click.Context) -> int:
    """How many -v were given, before and after the subcommand together."""
    return int(ctx.meta.get(_VERBOSE, 0))


def log_file(ctx: click.Context) -> Path | None:
    """The --log-file given before or after the subcommand (after wins)."""
    return ctx.meta.get(_LOG_FILE)


def _set_level(verbose: int) -> None:
    logging.getLogger().setLevel(logging.WARNING - 10 * min(verbose, 2))


def attach_log_file(path: Path) -> None:
    """Copy every log record to *path* too (with times), once per path."""
    root = logging.getLogger()
    target = str(Path(path).resolve())
    if any(getattr(h, "baseFilename", None) == target for h in root.handlers):
        return
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(target)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)


def use_log_format() -> None:
    """Give every log handler the timestamped LOG_FORMAT (daemons and servers)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format=LOG_FORMAT)
    formatter = logging.Formatter(LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)


def _add_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        ctx.meta[_VERBOSE] = verbosity(ctx) + value
        _set_level(verbosity(ctx))


def _add_log_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.meta[_LOG_FILE] = value
        if ctx.info_name not in _OWN_LOG_FILE:
            attach_log_file(value)


_LOG_FILE_TYPE = click.Path(dir_okay=False, path_type=Path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--log-file", type=_LOG_FILE_TYPE, default=None,
              help="Also write the log to this file (for mount: the daemon's log).")
@click.version_option(package_name="crds-fs")
@click.pass_context
def cli(ctx: click.Context, verbose: int, log_file: Path | None) -> None:
    """crds-fs: CRDS mappings and references as a lazily fetching filesystem.

    Also `crds-fs SOURCE MOUNTPOINT -o OPTIONS`, as mount(8) runs it for
    `mount -t fuse.crds-fs` and fstab (docs/systemd.md).
    """
    ctx.meta[_VERBOSE] = verbose
    logging.basicConfig(level=logging.WARNING, format=CONSOLE_FORMAT)
    _set_level(verbose)
    if log_file is not None:
        ctx.meta[_LOG_FILE] = log_file
        if ctx.invoked_subcommand not in _OWN_LOG_FILE:
            attach_log_file(log_file)


#: `--proxy URL`, the same on every command that talks to a server (mount, sync, bestrefs)
proxy_option = click.option(
    "--proxy", default=None, metavar="URL",
    help="HTTP proxy / site cache for JSON-RPC and downloads (NO_PROXY applies) "
         "[default: $CRDS_FS_PROXY, else $HTTP_PROXY/$HTTPS_PROXY].")


def _common_options(command: click.Command) -> None:
    """Accept -v/--verbose and --log-file after the subcommand's name too."""
    names = {param.name for param in command.params}
    opts = {opt for param in command.params for opt in getattr(param, "opts", [])}
    if "verbose" not in names and "-v" not in opts:
        command.params.append(click.Option(
            ["-v", "--verbose"], count=True, expose_value=False, callback=_add_verbose,
            help="More log output (-vv for debug); same as before the subcommand."))
    if "log_file" not in names and "--log-file" not in opts:
        command.params.append(click.Option(
            ["--log-file"], type=_LOG_FILE_TYPE, default=None, expose_value=False,
            callback=_add_log_file, help="Also write the log to this file."))


def _register() -> None:
    # Imported for their side effect of adding commands to `cli`.
    from . import bestrefs, cache, demo, mount, refresh, serve, status, sync  # noqa: F401

    for command in cli.commands.values():
        _common_options(command)


_register()


def main() -> None:
    """Console-script entry point: turn our errors into one clear line and exit status 1.

    mount(8)'s calling form `crds-fs SOURCE MOUNTPOINT -o OPTIONS` (fstab, via
    mount.fuse3) is rewritten to `crds-fs mount ...` first (see cli/fstab.py).
    """
    from . import fstab

    args = sys.argv[1:]
    try:
        if fstab.is_mount_form(args, cli.commands):
            args = fstab.translate(args)
    except fstab.FstabError as exc:
        click.echo(f"crds-fs: error: {exc}", err=True)
        sys.exit(1)
    try:
        cli.main(args=args, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except CrdsFsError as exc:
        click.echo(f"crds-fs: error: {exc}", err=True)
        sys.exit(1)
