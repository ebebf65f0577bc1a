"""`crds-fs status`: every crds-fs mount on this machine and how it is doing.

Mounts are found in /proc/self/mountinfo (filesystem type `fuse.crds-fs`: the daemon sets
subtype=crds-fs); each one's facts come from its `.crds-fs/stats`.  A stats read runs in a
worker thread bounded by --timeout, so a stopped or wedged daemon is reported as
"not answering" instead of freezing the command; a dead one (ENOTCONN) as "dead".
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import click

from ..progress import human_size
from . import cli

FSTYPE = "fuse.crds-fs"
#: seconds one mount's stats may take before it is reported as not answering
STATS_TIMEOUT = 5.0


def crds_mounts() -> list[str]:
    """Mount points of every crds-fs mount visible here, in mount order."""
    from ..fuse.mountinfo import read_mountinfo

    return [entry.mountpoint for entry in read_mountinfo() if entry.fstype == FSTYPE]


def _read_stats(mountpoint: str, timeout: float) -> tuple[dict[str, Any] | None, str | None]:
    """(stats, None) or (None, why not) within *timeout* seconds."""
    result: dict[str, Any] = {}

    def read() -> None:
        try:
            result["stats"] = json.loads(Path(mountpoint, ".crds-fs", "stats").read_text())
        except OSError as exc:
            result["error"] = ("dead (its daemon is gone; run `crds-fs umount "
                               f"{mountpoint}`)" if exc.errno == 107  # ENOTCONN
                               else f"stats unreadable: {exc.strerror}")
        except ValueError as exc:
            result["error"] = f"stats are not JSON: {exc}"

    worker = threading.Thread(target=read, daemon=True, name=f"status {mountpoint}")
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return None, f"not answering (no stats within {timeout:g}s)"
    return result.get("stats"), result.get("error")


def summarize(mountpoint: str, stats: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
    """The facts `crds-fs status` shows for one mount (JSON-able)."""
    if stats is None:
        return {"mountpoint": mountpoint, "state": "error", "error": error}
    mount = stats.get("mount", {})
    cache = stats.get("cache", {}) if isinstance(stats.get("cache"), dict) else {}
    refresh = stats.get("refresh", {}) or {}
    servers = mount.get("servers") if isinstance(mount.get("servers"), dict) else {}
    hits, misses = int(cache.get("hits") or 0), int(cache.get("misses") or 0)
    last = refresh.get("last") or {}
    return {
        "mountpoint": mountpoint,
        "state": "online" if mount.get("online") else "offline",
        "pid": mount.get("pid"),
        "observatory": mount.get("observatory"),
        "context": mount.get("context"),
        "server": servers.get("in_use") or mount.get("server"),
        "servers": [s.get("url") for s in servers.get("servers") or []
                    if isinstance(s, dict)] or None,
        "proxy": servers.get("proxy") if servers else None,
        "cache_dir": mount.get("cache_dir") or cache.get("cache_dir"),
        "cached_files": cache.get("cached_files"),
        "cached_bytes": cache.get("cached_bytes"),
        "max_bytes": cache.get("max_bytes") or None,
        "hits": hits,
        "misses": misses,
        "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
        "refresh_interval_s": refresh.get("interval_s"),
        "last_refresh": last.get("started_at"),
        "last_refresh_result": last.get("result"),
        "last_refresh_summary": last.get("summary"),
        "refresh_failures": refresh.get("consecutive_failures"),
        "uptime_s": mount.get("uptime_s"),
    }


def _size(nbytes: Any) -> str:
    return human_size(nbytes, binary=True) if isinstance(nbytes, int) else "?"


def _interval(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    return f"every {seconds:g}s" if seconds else "only on demand (crds-fs refresh, SIGHUP)"


def render(row: dict[str, Any]) -> str:
    """A few human lines for one mount."""
    if row["state"] == "error":
        return f"{row['mountpoint']}: {row['error']}"
    rate = "n/a" if row["hit_rate"] is None else f"{100 * row['hit_rate']:.1f}%"
    quota = f" of {_size(row['max_bytes'])}" if row["max_bytes"] else ""
    last = row["last_refresh"] or "never"
    if row["last_refresh_summary"]:
        last += f" ({row['last_refresh_summary']})"
    return "\n".join([
        f"{row['mountpoint']}: {row['state']}, {row['observatory']} {row['context']}, "
        f"pid {row['pid']}",
        f"  server     {row['server']}" + (f" via proxy {row['proxy']}" if row["proxy"]
                                            else ""),
        f"  refresh    {_interval(row['refresh_interval_s'])}, last {last}",
        f"  cache      {row['cache_dir']}: {row['cached_files']} files, "
        f"{_size(row['cached_bytes'])}{quota}; hit rate {rate} "
        f"({row['hits']} hits, {row['misses']} misses)",
    ])


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON list, one object per mount.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=STATS_TIMEOUT,
              show_default=True, help="Seconds to wait for each mount's stats.")
def status_command(as_json: bool, timeout: float) -> None:
    """Every crds-fs mount on this machine: server, context, online/offline, last refresh,
    cache size and hit rate (exit status 1 when some mount does not answer)."""
    rows = [summarize(mp, *_read_stats(mp, timeout)) for mp in crds_mounts()]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
    elif not rows:
        click.echo("crds-fs: no crds-fs mounts")
    else:
        click.echo("\n".join(render(row) for row in rows))
    if any(row["state"] == "error" for row in rows):
        sys.exit(1)  # click's Exit would be swallowed by main()'s standalone_mode=False
