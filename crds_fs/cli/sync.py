"""`crds-fs sync`: fill a crds-fs cache (or a mount's cache) ahead of time, in parallel.

Usage::

    crds-fs sync [--contexts CTX... | --range A:B | --last N | --all]
                 [--fetch-references [--instruments I...] [--types T...]]
                 [--dataset-files FILE...] [--dataset-ids ID...]
                 [--check-files] [--check-sha1sum] [--repair-files] [--dry-run]
                 [--cache DIR|MOUNTPOINT] [--server URL] [--jobs 8] [--json]

Options taking several values accept them as crds does (``--contexts A B``), repeated
(``--contexts A --contexts B``) or, for names, comma separated (``--types darkfile,biasfile``).
The logic is in `crds_fs.sync`; this module parses, shows progress and prints the summary.

Exit status: 0 when every file is cached and verified, 1 when anything failed (each failure
is named), 130 when interrupted (everything finished so far stays; rerun to continue).
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from ..config import Settings, parse_size
from ..errors import ConfigError
from ..progress import human_size, new_bar
from ..sync import (
    DEFAULT_JOBS,
    MAX_JOBS,
    PROCESS_MIN_FILES,
    Syncer,
    SyncReport,
    SyncRequest,
    parse_range,
)
from . import cli, proxy_option

#: Options that take several values (crds' argparse ``nargs='*'``).
_MULTI = ("--contexts", "--dataset-files", "--dataset-ids", "--instruments", "--types")
EXIT_INTERRUPTED = 130


class _CrdsStyleCommand(click.Command):
    """Accepts ``--contexts A B C`` as crds does, by rewriting it to repeated options."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rewritten: list[str] = []
        current: str | None = None
        has_value = False
        for arg in args:
            if arg in _MULTI:
                if current is not None and not has_value:
                    rewritten.append(current)  # no value: click reports it
                current, has_value = arg, False
                continue
            if current is not None:
                if not arg.startswith("-"):
                    rewritten += [current, arg]
                    has_value = True
                    continue
                if not has_value:
                    rewritten.append(current)
                current = None
            rewritten.append(arg)
        if current is not None and not has_value:
            rewritten.append(current)
        return super().parse_args(ctx, rewritten)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _names(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def _ids(values: tuple[str, ...]) -> tuple[str, ...]:
    """Dataset IDs, with ``@FILE`` read as one ID per line (as crds sync does)."""
    found: list[str] = []
    for value in values:
        if value.startswith("@"):
            path = Path(value[1:])
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(f"--dataset-ids {value}: cannot read {path}: "
                                  f"{exc.strerror}") from None
            found += [line.strip() for line in lines if line.strip()]
        else:
            found.append(value)
    return tuple(found)


def _mount_settings(path: Path, server: str | None) -> tuple[Settings, Path | None]:
    """Settings for --cache PATH: a running crds-fs mount lends its server and cache."""
    from ..api import resolve_settings

    if (path / ".crds-fs" / "stats").exists():
        return resolve_settings(server=server, mount=path), path
    return Settings.from_env(server_url=server, cache_dir=path), None


def _pin_contexts(cache: Any, contexts: list[str], *, references: bool) -> None:
    """`--pin`: what was synced stays through eviction (crds_fs.lifecycle owns the pins)."""
    from ..lifecycle import pin_context

    for context in contexts:
        pin_context(cache, context, references=references)
        click.echo(f"crds-fs sync: pinned {context}"
                   f"{' and its references' if references else ''}", err=True)


class _Bar:
    """The progress bar: bytes with rate and ETA, files done in the postfix (stderr, tty)."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int, nbytes: int, total_bytes: int) -> None:
        if self.bar is None or stage != self.stage:
            self.close()
            self.stage = stage
            if total_bytes:
                self.bar = new_bar(total_bytes, stage, unit="B", unit_scale=True,
                                   unit_divisor=1024)
            else:
                self.bar = new_bar(total, stage)
        count = nbytes if total_bytes else done
        self.bar.set_postfix_str(f"{done}/{total} files", refresh=False)
        self.bar.update(max(0, count - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _files(count: int) -> str:
    return f"{count} file{'s' * (count != 1)}"


def print_summary(report: SyncReport, mount: Path | None) -> None:
    where = f"{report.cache_dir} (the cache of mount {mount})" if mount else report.cache_dir
    contexts = ", ".join(report.contexts) or "(no context)"
    click.echo(f"crds-fs sync: {contexts} -> {where}")
    wanted = len(report.wanted)
    click.echo(f"  wanted          {_files(wanted)}, {human_size(report.bytes_of(report.wanted))}")
    fetched = report.bytes_of(report.fetched)
    if report.dry_run:
        click.echo(f"  would fetch     {_files(len(report.fetched))}, {human_size(fetched)}")
    else:
        rate = (f" in {report.seconds:.1f} s ({human_size(int(fetched / report.seconds))}/s)"
                if report.seconds > 0 and fetched else "")
        click.echo(f"  fetched         {_files(len(report.fetched))}, {human_size(fetched)}{rate}")
    click.echo(f"  already cached  {_files(len(report.cached))}")
    if report.repaired:
        verb = "would repair" if report.dry_run else "repaired"
        click.echo(f"  {verb:<15} {_files(len(report.repaired))}: "
                   + ", ".join(sorted(report.repaired)))
    if report.interrupted:
        click.echo(f"  interrupted     {_files(len(report.not_done))} not fetched yet; run the "
                   "same command again to fetch only those")
    click.echo(f"  failed          {_files(len(report.failed))}" + (":" if report.failed else ""))
    for name, reason in sorted(report.failed.items()):
        click.echo(f"    {name}: {reason}")


@cli.command("sync", cls=_CrdsStyleCommand)
@click.option("--contexts", multiple=True, metavar="CTX...",
              help="Contexts to sync: pmap names, 'operational' or 'edit' [default: "
                   "$CRDS_CONTEXT, else the server's operational context].")
@click.option("--range", "context_range", default=None, metavar="MIN:MAX",
              help="Contexts whose serial is in MIN..MAX, e.g. 720:729.")
@click.option("--last", "--last-n-contexts", "last", type=click.IntRange(min=1), default=None,
              metavar="N", help="The newest N contexts.")
@click.option("--all", "all_contexts", is_flag=True, help="Every context of the server.")
@click.option("--fetch-references", is_flag=True,
              help="Also every reference the contexts name (narrow: --instruments, --types).")
@click.option("--instruments", multiple=True, metavar="I...",
              help="With --fetch-references: only these instruments' references.")
@click.option("--types", multiple=True, metavar="T...",
              help="With --fetch-references: only these reference types (e.g. darkfile).")
@click.option("--dataset-files", multiple=True, metavar="FILE...",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Fetch only the best references of these dataset files (FITS/ASDF).")
@click.option("--dataset-ids", multiple=True, metavar="ID...",
              help="Fetch only the best references of these dataset IDs (headers from the "
                   "server); @FILE reads one ID per line.")
@click.option("-k", "--check-files", is_flag=True,
              help="Check cached files of the set: present, right size (mappings: sha1).")
@click.option("-s", "--check-sha1sum", is_flag=True,
              help="--check-files with the sha1 of every file (reads every byte).")
@click.option("-r", "--repair-files", is_flag=True,
              help="Delete files failing the check and fetch them again (implies -k).")
@click.option("--dry-run", is_flag=True,
              help="Change nothing: say what would be fetched (files, bytes).")
@click.option("--cache", "cache", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Cache folder, or a crds-fs mount point (its cache is filled "
                                 "and it serves the files at once) [default: $CRDS_FS_CACHE "
                                 "or ~/.cache/crds-fs].")
@click.option("--server", default=None, metavar="URL",
              help="CRDS server [default: the mount's, else $CRDS_SERVER_URL].")
@proxy_option
@click.option("-j", "--jobs", type=click.IntRange(1, MAX_JOBS), default=DEFAULT_JOBS,
              show_default=True, help="Parallel downloads.")
@click.option("--processes", type=click.IntRange(1, MAX_JOBS), default=None,
              help="Worker processes sharing the --jobs downloads [default: one per core "
                   f"once there are {PROCESS_MIN_FILES} files per process, else 1].")
@click.option("--cache-max-size", default=None, metavar="SIZE",
              help="Cache size limit while syncing, e.g. 50G [default: "
                   "$CRDS_FS_CACHE_MAX_SIZE, else none]; least recently used references "
                   "are evicted to 90% of it (pinned and open files never).")
@click.option("--pin", is_flag=True,
              help="Pin the synced contexts' mappings (and, with --fetch-references, their "
                   "references) against eviction, as `crds-fs cache pin` does.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def sync_command(contexts: tuple[str, ...], context_range: str | None, last: int | None,
                 all_contexts: bool, fetch_references: bool, instruments: tuple[str, ...],
                 types: tuple[str, ...], dataset_files: tuple[Path, ...],
                 dataset_ids: tuple[str, ...], check_files: bool, check_sha1sum: bool,
                 repair_files: bool, dry_run: bool, cache: Path | None, server: str | None,
                 proxy: str | None, jobs: int, processes: int | None,
                 cache_max_size: str | None, pin: bool, as_json: bool) -> None:
    """Download the mappings (and references) of CRDS contexts into the crds-fs cache,
    in parallel, each verified and committed atomically, as `crds sync` would.

    Examples: `crds-fs sync --last 3`; `crds-fs sync --contexts hst_0729.pmap
    --fetch-references --instruments acs`; `crds-fs sync --dataset-files *_raw.fits`;
    `crds-fs sync --fetch-references --check-sha1sum --repair-files --cache /crds`.
    """
    from ..cache import FileCache

    request = SyncRequest(
        contexts=_names(contexts), range=parse_range(context_range) if context_range else None,
        last=last, all=all_contexts, fetch_references=fetch_references,
        instruments=_names(instruments), types=_names(types), dataset_files=dataset_files,
        dataset_ids=_ids(dataset_ids), check_files=check_files or repair_files,
        check_sha1sum=check_sha1sum, repair_files=repair_files)
    mount = None
    if cache is not None:
        settings, mount = _mount_settings(cache, server)
    else:
        settings = Settings.from_env(server_url=server)
    if proxy is not None:
        settings = replace(settings, proxy=proxy)
    if cache_max_size is not None:
        settings = replace(settings, cache_max_bytes=parse_size(cache_max_size,
                                                                what="--cache-max-size"))
    with FileCache.open(settings, observatory=settings.observatory) as opened:
        if not opened.online and not dry_run:
            raise ConfigError(f"CRDS server {settings.server_url} is unreachable; sync needs "
                              "it (--dry-run works from the stored catalog)")
        bar = _Bar()
        syncer = Syncer(opened, jobs=jobs, progress=bar, processes=processes)
        previous = signal.signal(signal.SIGTERM, _interrupt)  # a service stop: as Ctrl-C
        try:
            report = syncer.run(request, dry_run=dry_run)
        finally:
            signal.signal(signal.SIGTERM, previous)
            bar.close()
        if pin and not dry_run and not report.interrupted:
            _pin_contexts(opened, report.contexts, references=fetch_references)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        print_summary(report, mount)
    sys.stdout.flush()
    if report.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if report.failed:
        sys.exit(1)
