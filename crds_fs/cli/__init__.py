"""`crds-fs` command line: one click group, one module per subcommand family.

The CLI only parses arguments, calls the Python API / layers and prints; logic lives below.
"""

from __future__ import annotations

import logging
import sys

import click

from ..errors import CrdsFsError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="crds-fs")
def cli(verbose: int) -> None:
    """crds-fs: CRDS mappings and references as a lazily fetching filesystem."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="crds-fs %(levelname)s %(name)s: %(message)s")


def _register() -> None:
    # Imported for their side effect of adding commands to `cli`.
    from . import bestrefs, demo, mount, refresh, serve  # noqa: F401


_register()


def main() -> None:
    """Console-script entry point: turn our errors into one clear line and exit status 1."""
    try:
        cli.main(standalone_mode=False)
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
