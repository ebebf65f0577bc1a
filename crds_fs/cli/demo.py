"""`crds-fs demo-data` (write the demo observatory) and `crds-fs demo` (serve + mount it).

Generation lives in `crds_fs.demo.generate`, process orchestration in
`crds_fs.demo.session`; this module only parses options, prints and waits.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from ..bestrefs.headers import dataset_name
from ..errors import DemoError
from . import cli

if TYPE_CHECKING:  # imported lazily at run time: numpy/astropy are slow to import
    from ..demo.generate import DemoInfo
    from ..demo.session import DemoSession

#: the dataset used in the printed examples
EXAMPLE_DATASET = "j9demo01q_raw.fits"


def _size(num: float) -> str:
    """Human-readable size: 8640 -> '8.4 KB'."""
    if num < 1024:
        return f"{num:.0f} B"
    for unit in ("KB", "MB"):
        num /= 1024
        if num < 1024:
            return f"{num:.1f} {unit}"
    return f"{num / 1024:.1f} GB"


def _summary(info: DemoInfo) -> str:
    lines = [f"Demo observatory '{info.observatory}' in {info.root}",
             f"  contexts: {', '.join(info.contexts)} (operational: {info.context})",
             f"  bad files: {', '.join(info.bad_files)} (selected by no dataset below)"]
    for title, folder, names in (("mappings", info.mapping_dir, info.mappings),
                                 ("references", info.reference_dir, info.references)):
        total = sum((folder / n).stat().st_size for n in names)
        lines.append(f"  {folder}: {len(names)} {title}, {_size(total)}")
    lines.append(f"  {info.dataset_dir}: {len(info.datasets)} datasets; best references "
                 f"under {info.context}:")
    for path in info.datasets:
        answers = info.expected_for(path)
        lines.append(f"    {path.name}")
        lines.extend(f"      {reftype:9s} {answer}" for reftype, answer in sorted(answers.items()))
    return "\n".join(lines)


@cli.command("demo-data")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--large-mb", default=24, show_default=True, type=click.IntRange(1, 4096),
              help="Size of the biggest reference file in MB (one more is half of it).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the synthetic data (same seed, same bytes).")
def demo_data(directory: Path, large_mb: int, seed: int) -> None:
    """Write a small HST-like observatory (CRDS cache layout) into DIRECTORY.

    DIRECTORY gets mappings/hst/, references/hst/ (real FITS files), config/hst/ and
    datasets/ (raw exposures), plus demo-info.json listing the intended best references.
    Serve it with `crds-fs serve DIRECTORY`, or point crds at it with CRDS_PATH=DIRECTORY.
    """
    from ..demo.generate import generate
    from ..progress import ProgressBar

    started = time.monotonic()
    with ProgressBar("writing demo data") as bar:
        info = generate(directory, large_mb=large_mb, seed=seed, progress=bar)
    click.echo(_summary(info))
    click.echo(f"Written in {time.monotonic() - started:.1f}s.")


def _keep_home_clean(workdir: Path) -> None:
    """Point the per-user config and cache folders (XDG) of this process and its children
    into the work folder, so the demo leaves nothing in HOME: astropy < 7 creates
    ~/.astropy/config on import unless $XDG_CONFIG_HOME/astropy exists (its documented
    rule, hence the mkdir), and crds-fs's own defaults follow XDG_CACHE_HOME."""
    for variable, folder in (("XDG_CONFIG_HOME", "xdg-config"), ("XDG_CACHE_HOME", "xdg-cache")):
        path = workdir / folder
        (path / "astropy").mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(path)


class _Stop(Exception):
    """Raised from the signal handler to leave the wait loop."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _crds_env(mountpoint: Path, server_url: str) -> str:
    return (f"CRDS_PATH={shlex.quote(str(mountpoint))} CRDS_READONLY_CACHE=1 "
            f"CRDS_SERVER_URL={server_url} CRDS_OBSERVATORY=hst")


def _instructions(info: DemoInfo, session: DemoSession, mountpoint: Path) -> str:
    """What to try, printed only: nothing is read or fetched until the user runs it (so
    "fetched on first read" is true, and `.crds-fs/stats` counts what the user caused)."""
    dataset = info.dataset_dir / EXAMPLE_DATASET
    q = shlex.quote
    python = q(sys.executable)  # the interpreter that has crds-fs (and crds, astropy)
    lines = ["", f"Server:  {session.url}/  (log: {session.server_log})"]
    big = mountpoint / "references" / "hst" / "hst_acs_pfltfile_9201.fits"
    view = mountpoint / "bestrefs" / dataset_name(dataset)
    lines += [
        f"Mounted: {mountpoint}  (cache: {session.cache_dir}, log: {session.mount_log})",
        "",
        "Try:",
        f"  ls {q(str(mountpoint))}",
        f"  ls -l {q(str(mountpoint / 'references' / 'hst'))}",
        f"  cat {q(str(mountpoint / 'mappings' / 'hst' / info.context))}",
        f"  sha1sum {q(str(big))}      # fetched on first read, then cached",
        f"  {python} -c \"from astropy.io import fits; fits.info('{big}')\"",
        f"  ls {q(str(mountpoint / 'bestrefs'))}/          # the demo datasets",
        f"  ls -l {q(str(view))}/        # best references as symlinks",
        f"  ls -l {q(str(mountpoint / 'bestrefs' / 'J9DEMO02Q'))}/   # an ID the server knows",
        f"  cat {q(str(mountpoint / '.crds-fs' / 'stats'))}",
        "  # unmodified crds, reading the mount as its cache:",
        f"  {_crds_env(mountpoint, session.url)} \\",
        f"    {python} -c \"import crds; from crds import data_file; print(crds.getreferences("
        f"data_file.get_header('{dataset}'), observatory='hst'))\"",
        "  # the Python API, through the mount (its downloads show in .crds-fs/stats):",
        f"  {python} -c \"import crds_fs.api as api; print(api.cache_best_references_for_dataset("
        f"{info.context!r}, '{dataset}', mount='{mountpoint}'))\"",
    ]
    lines += ["", f"Intended best references of {dataset.name} under {info.context}:"]
    lines += [f"  {k:9s} {v}" for k, v in sorted(info.expected_for(dataset).items())]
    return "\n".join(lines)


@cli.command("demo")
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option("--port", default=0, type=click.IntRange(0, 65535),
              help="Port of the demo server on 127.0.0.1 [default: a free one].")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Write (and keep) the demo data here [default: a temporary "
                                 "folder removed on exit].")
@click.option("--large-mb", default=24, show_default=True, type=click.IntRange(1, 4096),
              help="Size of the biggest reference file in MB.")
def demo(mountpoint: Path, port: int, data_dir: Path | None, large_mb: int) -> None:
    """Generate demo data, serve it on 127.0.0.1 and mount it at MOUNTPOINT.

    Runs until Ctrl-C (or SIGTERM), then unmounts, stops the server and removes its
    temporary files (the data too, unless --data was given).
    """
    # Started from a script (`crds-fs demo DIR &` in a non-interactive shell) the process
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler:
    # Ctrl-C / kill -INT must still stop the demo cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="crds-fs-demo-"))
    _keep_home_clean(workdir)  # before astropy is imported (by the generator)
    from ..demo.generate import generate
    from ..demo.session import DemoSession

    session = DemoSession(data_dir or workdir / "data", port=port or None, workdir=workdir,
                          remove_workdir=True)
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    failure = None
    try:
        info = generate(session.root, large_mb=large_mb, seed=0)
        click.echo(_summary(info))
        click.echo(f"Work folder: {workdir} (removed on exit)")
        session.start_server()
        session.mount(mountpoint)
        click.echo(_instructions(info, session, session.mountpoint))
        click.echo("\ncrds-fs demo: ready. Press Ctrl-C to unmount and stop.")
        while (failure := session.problem()) is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("\ncrds-fs demo: stopping (SIGINT)", err=True)
    except _Stop as why:
        click.echo(f"\ncrds-fs demo: stopping ({why})", err=True)
    finally:
        # No second signal may interrupt the clean-up: it is bounded by timeouts.
        for signum in (signal.SIGINT, *previous):
            signal.signal(signum, signal.SIG_IGN)
        problems = session.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for problem in problems:
            click.echo(f"crds-fs demo: {problem}", err=True)
        if not problems:
            click.echo("crds-fs demo: unmounted, server stopped, temporary files removed.",
                       err=True)
    if failure:
        raise DemoError(f"demo stopped because {failure}")
