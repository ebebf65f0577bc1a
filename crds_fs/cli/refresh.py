"""`crds-fs refresh MOUNTPOINT`: make a mount's daemon check the server now.

The daemon answers through its control file: opening `MOUNTPOINT/.crds-fs/refresh` runs a
check (bounded wait) and reads back its JSON report, so the command needs no pid, signal
or socket and works for any user who can read the mount.  SIGHUP to the daemon asks for
the same check; its result goes to the mount log and `.crds-fs/stats`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from ..errors import MountError
from . import cli

CONTROL = (".crds-fs", "refresh")


@cli.command("refresh")
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's whole JSON report.")
def refresh_command(mountpoint: Path, as_json: bool) -> None:
    """Check the CRDS server of the mount at MOUNTPOINT now; print what changed.

    New files appear in listings, files the server dropped disappear (cached copies stay
    readable), and a mount following the operational context moves to the new one.  Exit
    status 1 when the check failed (the mount keeps its catalog).
    """
    report = read_report(Path(os.path.abspath(mountpoint)))
    if as_json:
        click.echo(json.dumps(report, indent=1, ensure_ascii=False))
    else:
        click.echo(f"crds-fs: {mountpoint}: {report.get('summary', report)}")
        for label, key in (("added", "names_added"), ("removed", "names_removed")):
            names = report.get(key) or []
            count = report.get(label, 0)
            if names:
                more = f" (and {count - len(names)} more)" if count > len(names) else ""
                click.echo(f"  {label}: {', '.join(names)}{more}")
    if report.get("result") in ("failed", "pending"):
        sys.exit(1)


def read_report(mountpoint: Path) -> dict:
    """Trigger a check through the control file and return the daemon's report."""
    control = mountpoint.joinpath(*CONTROL)
    try:
        text = control.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MountError(f"{mountpoint} is not a crds-fs mount that refreshes (no {control}); "
                         "is it mounted (`crds-fs mount`) by this crds-fs version?") from None
    except OSError as exc:
        raise MountError(f"cannot ask the daemon of {mountpoint} to refresh ({control}: "
                         f"{exc.strerror}); is the mount alive?") from None
    try:
        report = json.loads(text)
    except ValueError:
        raise MountError(f"{control} did not return a JSON report: {text[:200]!r}") from None
    if not isinstance(report, dict):
        raise MountError(f"{control} returned {type(report).__name__}, expected an object")
    return report
