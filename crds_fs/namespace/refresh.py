"""Keeping a mount current: poll the server, reload the catalog only when it changed.

A mount lives for weeks while references are delivered, contexts become operational and
files are marked bad.  The `Refresher` of a mount asks the server a cheap question every
`interval` seconds and downloads the catalog only when the answer moved:

* `crds-fs serve` offers `get_catalog_digest` (a few hundred bytes, docs/protocol.md);
* a real CRDS server does not: then the cheap token is its operational and edit contexts
  (two tiny RPCs; every delivery makes a new edit context), and the whole catalog is
  compared when they moved, on a forced check, and at least every `FULL_CHECK_INTERVAL`
  (bad-file markings move no context).

A changed catalog is swapped in with plain assignments (`FileCache.replace_catalog`), so
readers of cached files never wait for a refresh.  New files appear in listings; a file
the server dropped stays listed and readable while a copy is cached, an uncached one is
gone (ENOENT); a mount that follows the operational context (no --context, or
`--context operational`) moves to the new one, with config/<obs>/ and bestrefs/.  The
kernel's cached attributes of removed or changed files are dropped through the FUSE glue
(`MountSource.invalidate`).  A failed check keeps the last catalog and is retried after
`BACKOFF_START` seconds, doubling up to the interval.

Checks run in one background thread; `request()` asks for one now (`crds-fs refresh`
reads `.crds-fs/refresh`, SIGHUP via `watch_sighup`) and may wait for its report, bounded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..client.catalog import Catalog, catalog_digest, fetch_catalog
from ..client.rpc import CrdsClient
from ..errors import ConfigError, CrdsFsError, OfflineError, OpenInterruptedError
from .base import Attrs, BytesHandle, Handle, Parts, is_write_open
from .providers import ControlProvider

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .source import MountSource

log = logging.getLogger("crds_fs.refresh")

#: seconds between checks by default (CRDS_FS_REFRESH, `--refresh`; 0 = never)
DEFAULT_INTERVAL = 600.0
ENV_VAR = "CRDS_FS_REFRESH"
#: first retry after a failed check (seconds); doubles per failure, never beyond the interval
BACKOFF_START = 30.0
#: servers without a digest: the whole catalog is compared at least this often (seconds)
FULL_CHECK_INTERVAL = 3600.0
#: how long opening `.crds-fs/refresh` waits for the check it asked for (seconds)
COMMAND_WAIT = 60.0
#: names listed per kind in a report (the counts are always complete)
REPORT_NAMES = 50
#: kernel invalidations sent per refresh (more removed files: their attributes expire)
MAX_INVALIDATIONS = 20_000
CONTROL_FILE = "refresh"
_TOP_DIRS = {"mapping": "mappings", "reference": "references", "config": "config"}


def refresh_interval(option: float | None = None) -> float:
    """Seconds between checks: *option* (`--refresh`), else $CRDS_FS_REFRESH, else 600."""
    if option is not None:
        return max(0.0, float(option))
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{ENV_VAR}={text!r}: expected seconds between checks of the "
                          "server (0 = never)") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{ENV_VAR}={text!r}: must be 0 (never) or a positive number")
    return value


def mount_interval(refresh: float | None, poll: float | None = None) -> float:
    """The interval of a mount's refresher: `refresh_interval(refresh)`, shortened by an
    explicit bestrefs/ `--poll` (or $CRDS_FS_BESTREFS_POLL): one poller now serves both,
    moving bestrefs/ together with the catalog.  With 0 (never) the poll stays bestrefs/'s."""
    interval = refresh_interval(refresh)
    if poll is None and os.environ.get("CRDS_FS_BESTREFS_POLL", "").strip():
        try:
            poll = float(os.environ["CRDS_FS_BESTREFS_POLL"])
        except ValueError:
            raise ConfigError("CRDS_FS_BESTREFS_POLL must be a number of seconds") from None
    if poll is not None and interval > 0 and math.isfinite(poll):
        interval = min(interval, max(0.1, poll))
    return interval


@dataclass
class RefreshReport:
    """What one check found (JSON in `.crds-fs/refresh` and `.crds-fs/stats`)."""

    trigger: str
    started_at: str
    result: str = "unchanged"  # "unchanged" | "changed" | "failed"
    #: how the server was asked: "digest", "contexts", plus "+catalog" when downloaded
    check: str = ""
    duration_ms: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    added: int = 0
    removed: int = 0
    changed: int = 0
    #: dropped by the server but kept (cached copies stay readable)
    retained: int = 0
    names_added: list[str] = field(default_factory=list)
    names_removed: list[str] = field(default_factory=list)
    context_before: str = ""
    context_after: str = ""
    server_context: str = ""
    bad_files_changed: bool = False
    files: int = 0
    error: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for people: "3 files added, 1 removed, context A → B"."""
        if self.result == "failed":
            return (f"refresh failed: {self.error} (the mount keeps its catalog of "
                    f"{self.files} files)")
        if self.result == "unchanged":
            return f"no change ({self.files} files, context {self.context_after})"
        parts = [f"{self.added} file{'s' if self.added != 1 else ''} added",
                 f"{self.removed} removed"
                 + (f" ({self.retained} still readable: cached)" if self.retained else "")]
        if self.changed:
            parts.append(f"{self.changed} changed")
        if self.context_before != self.context_after:
            parts.append(f"context {self.context_before} → {self.context_after}")
        else:
            parts.append(f"context {self.context_after}")
        if self.bad_files_changed:
            parts.append("bad files changed")
        return ", ".join(parts) + "".join(f"; {note}" for note in self.notes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.summary()
        return data

    def json_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n").encode()


class Refresher:
    """Polls the server for one mount and swaps in changed catalogs (thread-safe)."""

    def __init__(self, source: MountSource, *, interval: float = DEFAULT_INTERVAL,
                 offline: bool = False, client: CrdsClient | None = None,
                 backoff_start: float = BACKOFF_START, use_digest: bool = True) -> None:
        """*use_digest*=False skips `get_catalog_digest` (checks as against a real CRDS
        server: contexts first, then the whole catalog)."""
        self.source = source
        self.cache = source.cache
        # an --offline mount never polls (asked explicitly, it says why it cannot)
        self.interval = 0.0 if offline else max(0.0, float(interval))
        self.offline = offline
        self.backoff_start = backoff_start
        settings = self.cache.settings
        # One attempt per check (the backoff retries), own connection pool and memo.
        self.client = client or CrdsClient(
            self.cache.client.server_url, connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout, retries=0, observatory=self.cache.observatory)
        self.client.session.hooks["response"].append(self._count_bytes)
        #: the catalog as the server last listed it (the mount's may retain more names)
        self.server_catalog: Catalog = self.cache.catalog
        self._token: tuple[str, ...] | None = None
        self._digest_offered: bool | None = None if use_digest else False
        self._last_full = (time.monotonic() if self.cache.catalog.source == "server"
                           else -math.inf)
        self._sent = self._received = 0
        self._check_lock = threading.Lock()
        self._cond = threading.Condition()
        self._requested = 0
        self._served = 0
        self._trigger = "poll"
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._next_due = self._after(self.interval if self.interval > 0 else math.inf)
        self.last: RefreshReport | None = None
        self.last_change: RefreshReport | None = None
        self.checks = self.failures = self.changes = self.consecutive_failures = 0

    # --- thread -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread (idempotent); it polls when interval > 0 and
        answers `request()` in any case."""
        with self._cond:
            if self._thread is not None or self._stopping:
                return
            self._thread = threading.Thread(target=self._run, name="crds-fs-refresh",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.client.close()

    def request(self, trigger: str, *, wait: float = 0.0,
                interrupted: Callable[[], bool] | None = None) -> RefreshReport | None:
        """Ask for a check now; wait up to *wait* seconds for its report (None: not yet).

        Without the thread running (tests of the namespace alone) the check runs here.
        """
        with self._cond:
            if self._thread is None:
                inline = True
            else:
                inline = False
                self._requested += 1
                seq = self._requested
                self._trigger = trigger
                self._cond.notify_all()
        if inline:
            return self.check(trigger, forced=True)
        deadline = time.monotonic() + wait
        with self._cond:
            while self._served < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if interrupted is not None and interrupted():
                    raise OpenInterruptedError(f"refresh ({trigger}) interrupted while "
                                               "waiting for the check; it goes on")
                self._cond.wait(min(left, 0.25))
            return self.last

    def _run(self) -> None:
        while True:
            with self._cond:
                while (not self._stopping and self._served >= self._requested
                       and time.monotonic() < self._next_due):
                    left = self._next_due - time.monotonic()
                    self._cond.wait(None if math.isinf(left) else max(0.01, left))
                if self._stopping:
                    return
                seq = self._requested
                forced = seq > self._served
                trigger = self._trigger if forced else "poll"
            report = self.check(trigger, forced=forced)
            with self._cond:
                self._served = max(self._served, seq)
                self._next_due = self._after(self._delay(report))
                self._cond.notify_all()

    @staticmethod
    def _after(delay: float) -> float:
        return math.inf if math.isinf(delay) else time.monotonic() + delay

    def _delay(self, report: RefreshReport) -> float:
        """Seconds to the next poll: the interval; after failures 30 s, 60 s, ... up to it."""
        if self.interval <= 0:
            return math.inf
        if report.result != "failed":
            return self.interval
        start = min(self.backoff_start, self.interval)
        return min(start * 2 ** (self.consecutive_failures - 1), self.interval)

    # --- one check --------------------------------------------------------------------------

    def check(self, trigger: str = "command", *, forced: bool = True) -> RefreshReport:
        """Ask the server now; swap in its catalog when it changed.  Never raises for a
        server problem: a failed check is a report (and a log line), the catalog stays."""
        with self._check_lock:
            started = time.monotonic()
            report = RefreshReport(trigger=trigger,
                                   started_at=datetime.now(UTC).isoformat(timespec="seconds"))
            self._sent = self._received = 0
            try:
                if self.offline:
                    raise OfflineError("this mount was started --offline: it never asks the "
                                       "server; remount without --offline to refresh")
                self._check_once(report, forced)
                self._prune_retained()
            except CrdsFsError as exc:
                report.result, report.error = "failed", str(exc)
            except Exception as exc:  # a bug must not end the thread or the mount
                log.exception("refresh of %s: unexpected failure", self.source.env.mountpoint)
                report.result, report.error = "failed", f"{type(exc).__name__}: {exc}"
            report.duration_ms = round((time.monotonic() - started) * 1000, 1)
            report.bytes_sent, report.bytes_received = self._sent, self._received
            report.files = len(self.cache.catalog)
            report.context_before = report.context_before or self.source.context
            report.context_after = report.context_after or self.source.context
            self._record(report)
            return report

    def _check_once(self, report: RefreshReport, forced: bool) -> None:
        obs = self.cache.observatory
        token = self._cheap_token(obs)
        report.check = token[0]
        now = time.monotonic()
        full = token != self._token or (
            token[0] == "contexts" and (forced or now - self._last_full >= FULL_CHECK_INTERVAL))
        if not full:
            report.server_context = self.server_catalog.operational_context or ""
            return
        fresh = fetch_catalog(self.client, obs)
        report.check += "+catalog"
        self._last_full = now
        report.server_context = fresh.operational_context or ""
        if fresh.same_content(self.server_catalog):
            self._token = token
            return
        self._apply(fresh, report)
        self._token = token

    def _cheap_token(self, obs: str) -> tuple[str, ...]:
        if self._digest_offered is not False:
            answer = catalog_digest(self.client, obs)
            self._digest_offered = answer is not None
            if answer is not None:
                return ("digest", answer["digest"])
        operational = self.client.get_default_context(obs, "operational")
        edit = self.client.get_default_context(obs, "edit")
        return ("contexts", str(operational), str(edit))

    def _apply(self, fresh: Catalog, report: RefreshReport) -> None:
        """Swap *fresh* in: retain cached dropped files, follow the context, tell the kernel."""
        source, cache = self.source, self.cache
        old = cache.catalog
        diff = self.server_catalog.diff(fresh)
        dropped = set(old) - set(fresh)
        keep = {name for name in dropped if cache.is_cached(name)}
        mounted = fresh.with_retained(old, keep)
        before = source.context
        after = before
        wanted = fresh.operational_context
        if source.follow and wanted and wanted != before:
            if mounted.get(wanted) is not None and mounted.kind(wanted) == "mapping":
                after = wanted
            else:
                report.notes.append(f"the server's operational context {wanted} is not in "
                                    f"its catalog; the mount stays on {before}")
        elif not source.follow and wanted and wanted != (self.server_catalog
                                                         .operational_context):
            report.notes.append(f"the server's operational context is now {wanted}; this "
                                f"mount stays on {before} (mounted with --context)")
        cache.replace_catalog(mounted, stored=fresh)
        self.server_catalog = fresh
        source.catalog_replaced(after)
        report.result = "changed"
        report.added, report.removed, report.changed = (len(diff.added), len(diff.removed),
                                                        len(diff.changed))
        report.retained = len(mounted.retained)
        report.names_added = diff.added[:REPORT_NAMES]
        report.names_removed = diff.removed[:REPORT_NAMES]
        report.context_before, report.context_after = before, after
        report.bad_files_changed = diff.bad_files_changed
        gone = sorted(dropped - keep) + diff.changed
        self._invalidate(gone, mounted)

    def _prune_retained(self) -> None:
        """Drop retained names whose cached copy is gone (evicted): from then on they are
        ENOENT like any file the server no longer has."""
        catalog = self.cache.catalog
        gone = {name for name in catalog.retained if not self.cache.is_cached(name)}
        if not gone:
            return
        keep = set(catalog.retained) - gone
        self.cache.replace_catalog(self.server_catalog.with_retained(catalog, keep),
                                   stored=self.server_catalog)
        self.source.catalog_replaced(self.source.context)
        self._invalidate(sorted(gone), self.cache.catalog)
        log.info("refresh: %d file(s) the server dropped are no longer cached and now gone: "
                 "%s", len(gone), ", ".join(sorted(gone)[:10]))

    def _invalidate(self, names: list[str], catalog: Catalog) -> None:
        """Drop what the kernel caches about *names* and the regenerated config files."""
        obs = self.cache.observatory
        paths = [f"/{_TOP_DIRS[Catalog.kind(name)]}/{obs}/{name}"
                 for name in names[:MAX_INVALIDATIONS]]
        paths += [f"/config/{obs}/server_config", f"/config/{obs}/bad_files.txt"]
        try:
            known = self.source.invalidate(paths)
        except Exception as exc:  # best effort: attributes also expire on their own
            log.warning("could not drop the kernel's cached attributes after a refresh: %s",
                        exc)
            return
        log.debug("refresh: invalidated %d of %d paths in the kernel", known, len(paths))

    def _record(self, report: RefreshReport) -> None:
        self.checks += 1
        where = self.source.env.mountpoint or self.cache.settings.cache_dir
        if report.result == "failed":
            self.failures += 1
            self.consecutive_failures += 1
            delay = self._delay(report)
            retry = "" if math.isinf(delay) else f"; next try in {delay:.0f}s"
            log.warning("refresh of %s (%s) failed: %s; keeping the catalog of %d files%s",
                        where, report.trigger, report.error, report.files, retry)
        else:
            self.consecutive_failures = 0
            if report.result == "changed":
                self.changes += 1
                self.last_change = report
                log.info("refresh of %s (%s): %s", where, report.trigger, report.summary())
            else:
                log.log(logging.INFO if report.trigger != "poll" else logging.DEBUG,
                        "refresh of %s (%s): %s", where, report.trigger, report.summary())
        self.last = report

    def _count_bytes(self, response: Any, *args: Any, **kwargs: Any) -> None:
        """requests response hook: bytes of each request and answer (bodies and headers)."""
        request = response.request
        body = request.body or b""
        self._sent += len(body) + sum(len(k) + len(v) + 4 for k, v in request.headers.items())
        self._received += len(response.content) + sum(
            len(k) + len(v) + 4 for k, v in response.headers.items())

    # --- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For `.crds-fs/stats`: settings, counters, the last check and the last change."""
        with self._cond:
            due = self._next_due - time.monotonic()
        return {
            "interval_s": self.interval,
            "offline": self.offline,
            "digest_offered": self._digest_offered,
            "checks": self.checks,
            "changes": self.changes,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "next_check_in_s": None if math.isinf(due) else round(max(0.0, due), 1),
            "last": self.last.to_dict() if self.last else None,
            "last_change": self.last_change.to_dict() if self.last_change else None,
        }


class RefreshControlProvider(ControlProvider):
    """`.crds-fs/` with `refresh`: opening it runs a check now and reads back its report.

    stat and listings never trigger a check (the file shows size 0; reads are direct, so
    the whole report is read anyway); only open does, waiting at most `COMMAND_WAIT`.
    """

    def __init__(self, base: ControlProvider, refresher: Refresher) -> None:
        super().__init__(base.env)
        self.name = base.name
        self.files = dict(base.files)
        self.refresher = refresher

    def getattr(self, parts: Parts) -> Attrs:
        if parts == (CONTROL_FILE,):
            return self.env.file_attrs(0)
        return super().getattr(parts)

    def readdir(self, parts: Parts) -> list[tuple[str, Attrs]]:
        entries = list(super().readdir(parts))
        entries.append((CONTROL_FILE, self.getattr((CONTROL_FILE,))))
        return sorted(entries)

    def open(self, parts: Parts, flags: int) -> Handle:
        if parts != (CONTROL_FILE,):
            return super().open(parts, flags)
        if is_write_open(flags):
            raise self.refuse("open for writing", parts)
        report = self.refresher.request("command", wait=COMMAND_WAIT,
                                        interrupted=self.env.interrupted)
        if report is None:
            data = (json.dumps({"result": "pending", "summary":
                                f"the check did not finish within {COMMAND_WAIT:.0f}s; it "
                                "goes on (see .crds-fs/stats)"}) + "\n").encode()
        else:
            data = report.json_bytes()
        return BytesHandle(data, volatile=True)


def attach(source: MountSource, refresher: Refresher) -> Refresher:
    """Make *refresher* the one of *source*: stats, `.crds-fs/refresh`, bestrefs/ driven."""
    source.refresher = refresher
    control = source.providers.get(ControlProvider.name)
    if isinstance(control, ControlProvider) and not isinstance(control,
                                                               RefreshControlProvider):
        source.providers[control.name] = RefreshControlProvider(control, refresher)
    if refresher.interval > 0 and not refresher.offline:
        for provider in source.providers.values():
            view = getattr(provider, "view", None)
            if view is not None and hasattr(view, "driven"):
                view.driven = True  # its own poll of the context stops; we move it
    return refresher


def watch_sighup(refresher: Refresher) -> Callable[[], None]:
    """SIGHUP asks *refresher* for a check (call from the main thread, before the FUSE loop).

    Python's handler only runs when the main thread runs Python, and the main thread sits
    in libfuse's loop: the signal is taken from the wakeup fd by a small thread instead.
    Installing a handler also keeps libfuse from treating SIGHUP as "unmount" (it only
    claims signals left at their default).  Returns a function undoing it.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: None)
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    stop = threading.Event()

    def pump() -> None:
        import select

        while not stop.is_set():
            ready, _, _ = select.select([read_fd], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(read_fd, 512)
            except BlockingIOError:
                continue
            except OSError:
                return
            if signal.SIGHUP in data:
                log.info("SIGHUP: checking the server now")
                refresher.request("signal")

    thread = threading.Thread(target=pump, name="crds-fs-sighup", daemon=True)
    thread.start()

    def undo() -> None:
        stop.set()
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGHUP, previous)
        thread.join(2)
        os.close(read_fd)
        os.close(write_fd)

    return undo
