"""`crds-fs cache ...`: status, pin/unpin/pins, verify, prune of a cache (or a mount's).

Every subcommand takes `--cache DIR` (default as `mount`: $CRDS_FS_CACHE or
~/.cache/crds-fs) or the mount point of a running crds-fs mount (its own cache and server
are used).  Without --server the server the cache's catalog came from is used, so a cache
filled once needs no more arguments.  The work is in `crds_fs.lifecycle`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ..config import OBSERVATORIES, Settings
from ..errors import ConfigError
from ..progress import ProgressBar
from . import cli

#: How long `cache status` waits for a mount's .crds-fs/stats (a wedged daemon must not
#: hang the command).
STATS_TIMEOUT = 5.0


@cli.group("cache")
def cache_group() -> None:
    """Inspect and maintain a crds-fs cache: status, pins, verify, prune."""


def _target_options(func: Any) -> Any:
    func = click.option("--observatory", type=click.Choice(OBSERVATORIES), default=None,
                        help="Observatory [default: $CRDS_OBSERVATORY, else the one the "
                             "cache was last used for].")(func)
    func = click.option("--server", "server_url", default=None, metavar="URL",
                        help="CRDS server [default: $CRDS_SERVER_URL, else the server the "
                             "cache's catalog came from].")(func)
    func = click.option("--cache", "cache_path", default=None,
                        type=click.Path(file_okay=False, path_type=Path),
                        help="Cache folder, or the mount point of a running crds-fs mount "
                             "[default: $CRDS_FS_CACHE or ~/.cache/crds-fs].")(func)
    return func


def resolve_target(cache_path: Path | None, server_url: str | None,
                   observatory: str | None) -> tuple[Settings, Path | None]:
    """Settings for --cache PATH (a mount point lends its cache, server and observatory);
    returns them and the mount point (None for a plain folder)."""
    from ..lifecycle import cache_defaults

    if cache_path is not None and _is_mount(cache_path):
        from ..api import resolve_settings

        mount = Path(os.path.abspath(cache_path))
        return resolve_settings(server=server_url, mount=mount, observatory=observatory), mount
    settings = Settings.from_env(server_url=server_url, cache_dir=cache_path,
                                 observatory=observatory)
    known_obs, known_server = cache_defaults(settings.cache_dir)
    changes: dict[str, Any] = {}
    if observatory is None and not os.environ.get("CRDS_OBSERVATORY") and known_obs:
        changes["observatory"] = known_obs
    if server_url is None and not os.environ.get("CRDS_SERVER_URL") and known_server:
        changes["server_url"] = known_server
    return Settings.from_env(**{"server_url": server_url, "cache_dir": cache_path,
                                "observatory": observatory, **changes}), None


def _is_mount(path: Path) -> bool:
    from .mount import is_mounted

    return is_mounted(Path(os.path.abspath(path))) and (path / ".crds-fs" / "stats").exists()


@contextmanager
def opened(cache_path: Path | None, server_url: str | None, observatory: str | None, *,
           offline: bool) -> Iterator[Any]:
    """The FileCache of the target (never trimmed at opening: these commands only look, or
    remove exactly what they report)."""
    from ..cache import FileCache

    settings, _mount = resolve_target(cache_path, server_url, observatory)
    if not (Path(settings.cache_dir) / "index").is_dir():
        raise ConfigError(f"{settings.cache_dir} is not a crds-fs cache (it has no index/); "
                          "give --cache DIR or a mount point")
    cache = FileCache.open(settings, observatory=settings.observatory, offline=offline,
                           trim=False)
    try:
        yield cache
    finally:
        cache.close()


def human(nbytes: float) -> str:
    """1536 -> '1.5 KiB' (powers of 1024, as --cache-max-size reads them)."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


# --- status ----------------------------------------------------------------------------------


@cache_group.command("status")
@_target_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(cache_path: Path | None, server_url: str | None, observatory: str | None,
                   as_json: bool) -> None:
    """Size, files by kind and instrument, quota, pins, hit rate (no network used)."""
    from ..lifecycle import cache_status

    with opened(cache_path, server_url, observatory, offline=True) as cache:
        data = cache_status(cache, mounts=mounts_using(Path(cache.store.root)))
    if as_json:
        _echo_json(data)
        return
    click.echo(f"cache {data['cache_dir']} ({data['observatory']}, server {data['server']})")
    click.echo(f"  size: {human(data['bytes'])} in {data['files']} files")
    for kind, row in data["by_kind"].items():
        click.echo(f"    {kind + 's':<11} {row['files']:>7} files  {human(row['bytes']):>11}")
    if data["by_instrument"]:
        click.echo("  by instrument:")
        for name, row in data["by_instrument"].items():
            label = {"-": "(contexts)", "?": "(unknown)"}.get(name, name)
            click.echo(f"    {label:<11} {row['files']:>7} files  {human(row['bytes']):>11}")
    quota = data["quota"]
    limit = (f"{human(quota['max_bytes'])} ({quota['used_fraction']:.0%} used)"
             if quota["max_bytes"] else "none (CRDS_FS_CACHE_MAX_SIZE / --cache-max-size)")
    click.echo(f"  limit: {limit}")
    click.echo(f"  free-space floor: {human(quota['min_free_bytes'])} "
               f"(CRDS_FS_CACHE_MIN_FREE={quota['min_free_setting']}); disk free "
               f"{human(quota['disk_free_bytes'])} of {human(quota['disk_bytes'])}")
    if data["pins"]:
        click.echo("  pins:")
        for pin in data["pins"]:
            what = "mappings + references" if pin["references"] else "mappings"
            click.echo(f"    {pin['context']} ({what}): {pin['cached_files']} of "
                       f"{pin['files']} files cached, {human(pin['cached_bytes'])}")
    else:
        click.echo("  pins: none")
    rate = "n/a" if data["hit_rate"] is None else f"{data['hit_rate']:.1%}"
    click.echo(f"  hit rate: {rate} ({data['hits']} hits, {data['misses']} misses)")
    if data["quarantined_files"]:
        click.echo(f"  quarantined: {data['quarantined_files']} file(s) in "
                   f"{Path(data['cache_dir']) / 'quarantine'}")
    for mount in data["mounts"]:
        state = "online" if mount.get("online") else "offline"
        click.echo(f"  mounted at {mount.get('mountpoint')} (pid {mount.get('pid')}, "
                   f"{state}, context {mount.get('context')})")


def mounts_using(cache_dir: Path) -> list[dict[str, Any]]:
    """The `.crds-fs/stats` of every crds-fs mount on this machine whose cache is
    *cache_dir* (each read with a timeout, so a wedged mount cannot hang the caller)."""
    from ..fuse.mountinfo import read_mountinfo

    try:
        entries = [e for e in read_mountinfo() if e.fstype == "fuse.crds-fs"]
    except OSError:
        return []
    target = os.path.realpath(cache_dir)
    found = []
    for entry in entries:
        stats = _read_stats(Path(entry.mountpoint))
        cache = stats.get("mount", {}).get("cache_dir") if stats else None
        if cache and os.path.realpath(cache) == target:
            found.append(stats)
    return found


def _read_stats(mountpoint: Path) -> dict[str, Any] | None:
    result: list[Any] = []

    def read() -> None:
        try:
            result.append(json.loads((mountpoint / ".crds-fs" / "stats").read_text()))
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=read, daemon=True, name="crds-fs-stats")
    thread.start()
    thread.join(STATS_TIMEOUT)
    return result[0] if result and isinstance(result[0], dict) else None


# --- pins ------------------------------------------------------------------------------------


@cache_group.command("pin")
@click.argument("contexts", nargs=-1, required=True, metavar="CTX...")
@click.option("--references", is_flag=True,
              help="Also keep the contexts' references (not only their mappings).")
@_target_options
def pin_command(contexts: tuple[str, ...], references: bool, cache_path: Path | None,
                server_url: str | None, observatory: str | None) -> None:
    """Keep CTX's mappings (and with --references its references) from eviction.

    Pins are stored in the cache index: they survive restarts and hold for every mount,
    sync and program sharing the cache.  Pinning downloads nothing (`crds-fs sync` does).
    CTX may be 'operational'.
    """
    from ..lifecycle import pin_context

    with opened(cache_path, server_url, observatory, offline=False) as cache:
        entries = cache.index.names()
        for context in contexts:
            pin = pin_context(cache, context, references=references)
            cached = sum(1 for n in pin.names if n in entries)
            what = "mappings and references" if references else "mappings"
            click.echo(f"pinned {pin.context} ({what}): {len(pin.names)} files, "
                       f"{cached} cached now")


@cache_group.command("unpin")
@click.argument("contexts", nargs=-1, required=True, metavar="CTX...")
@_target_options
def unpin_command(contexts: tuple[str, ...], cache_path: Path | None, server_url: str | None,
                  observatory: str | None) -> None:
    """Drop the pins of CTX... (their files become evictable again)."""
    from ..lifecycle import unpin_context

    missing = []
    with opened(cache_path, server_url, observatory, offline=True) as cache:
        for context in contexts:
            if unpin_context(cache, context):
                click.echo(f"unpinned {context}")
            else:
                missing.append(context)
    if missing:
        raise click.ClickException(f"not pinned: {', '.join(missing)} (`crds-fs cache pins` "
                                   "lists the pins)")


@cache_group.command("pins")
@_target_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def pins_command(cache_path: Path | None, server_url: str | None, observatory: str | None,
                 as_json: bool) -> None:
    """List the pinned contexts."""
    from ..lifecycle import cache_status

    with opened(cache_path, server_url, observatory, offline=True) as cache:
        pins = cache_status(cache)["pins"]
    if as_json:
        _echo_json(pins)
        return
    if not pins:
        click.echo("no pins")
    for pin in pins:
        what = "mappings + references" if pin["references"] else "mappings"
        click.echo(f"{pin['context']}\t{what}\t{pin['cached_files']}/{pin['files']} cached\t"
                   f"{human(pin['cached_bytes'])}")


# --- verify ----------------------------------------------------------------------------------


@cache_group.command("verify")
@click.option("--repair", is_flag=True,
              help="Move bad files to <cache>/quarantine/ and download them again.")
@click.option("--delete", is_flag=True, help="With --repair: delete bad files instead of "
                                             "quarantining them.")
@click.option("--no-fetch", is_flag=True, help="With --repair: only remove bad files (the "
                                               "next use fetches them again).")
@_target_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify_command(repair: bool, delete: bool, no_fetch: bool, cache_path: Path | None,
                   server_url: str | None, observatory: str | None, as_json: bool) -> None:
    """Re-hash every cached file against the catalog (size and sha1).

    Exit status 1 when bad files remain (or could not be fetched again).  Safe while the
    cache is mounted: the mount fetches a removed file again on its next open.
    """
    from ..lifecycle import verify_cache

    if (delete or no_fetch) and not repair:
        raise click.UsageError("--delete and --no-fetch go with --repair")
    bar = ProgressBar("verifying", unit="B", unit_scale=True, unit_divisor=1024)
    try:
        with opened(cache_path, server_url, observatory,
                    offline=not (repair and not no_fetch)) as cache:
            result = verify_cache(cache, repair=repair, delete=delete, fetch=not no_fetch,
                                  progress=bar)
    finally:
        bar.close()
    failed_fetch = [b for b in result.bad if "fetch failed" in b.action]
    if as_json:
        _echo_json(result.to_dict())
    else:
        click.echo(f"verified {result.checked} files ({human(result.bytes)}): {result.ok} ok, "
                   f"{len(result.bad)} bad, {result.repaired} repaired")
        for bad in result.bad:
            action = bad.action or "left in place (--repair replaces it)"
            click.echo(f"  BAD {bad.name}: {bad.size} bytes, sha1 {bad.sha1}; the catalog "
                       f"says {bad.expected_size} bytes, sha1 {bad.expected_sha1}: {action}")
        for name in result.busy:
            click.echo(f"  {name}: being downloaded by another process; not repaired, run "
                       "verify again")
        if result.missing:
            click.echo(f"  {len(result.missing)} file(s) recorded but gone from disk: "
                       "forgotten (fetched again on next use)")
        if result.unknown:
            shown = ", ".join(result.unknown[:5]) + (" ..." if len(result.unknown) > 5 else "")
            click.echo(f"  {len(result.unknown)} file(s) not in the catalog: not checked "
                       f"({shown})")
    if result.remaining_bad or failed_fetch:
        sys.exit(1)


# --- prune -----------------------------------------------------------------------------------


@cache_group.command("prune")
@click.option("--keep-contexts", "keep", multiple=True, metavar="CTX",
              help="Contexts whose mappings and references stay (repeatable; more names "
                   "may follow, as in crds: --keep-contexts A B C).")
@click.argument("more", nargs=-1, metavar="[CTX...]")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--ignore-pins", is_flag=True, help="Prune pinned contexts' files too.")
@_target_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def prune_command(keep: tuple[str, ...], more: tuple[str, ...], dry_run: bool,
                  ignore_pins: bool, cache_path: Path | None, server_url: str | None,
                  observatory: str | None, as_json: bool) -> None:
    """Remove every cached mapping and reference none of the kept contexts needs.

    Also kept: pinned contexts (unless --ignore-pins), config files, files open anywhere.
    """
    from ..lifecycle import prune_cache

    contexts = [c for item in (*keep, *more) for c in item.split(",") if c.strip()]
    if not contexts:
        raise click.UsageError("give the contexts to keep: --keep-contexts CTX [CTX...]")
    with opened(cache_path, server_url, observatory, offline=False) as cache:
        result = prune_cache(cache, contexts, dry_run=dry_run, keep_pinned=not ignore_pins)
    if as_json:
        _echo_json(result.to_dict())
        return
    verb = "would remove" if dry_run else "removed"
    pinned = f" and pinned {', '.join(result.pinned)}" if result.pinned else ""
    click.echo(f"keeping {', '.join(result.contexts)}{pinned}: {result.kept} files kept; "
               f"{verb} {len(result.removed)} files ({human(result.freed)})")
    for name, size in result.removed:
        click.echo(f"  {name} ({human(size)})")
    for name in result.in_use:
        click.echo(f"  {name}: open, kept")
