"""Context facts of a served folder: operational/edit/build contexts, history, date specs.

A CRDS server keeps these in its database; a mirror has only its folder, so each fact has a
documented source (docs/protocol.md):

* ``config/<obs>/server_config`` (the CRDS cache's copy of the server info) wins when it
  names a context that is present under ``mappings/<obs>/``;
* a named context that is *not* present is not advertised: the newest ``.pmap`` present is
  used instead and a warning names both (a mirror must not send clients to rules it cannot
  serve);
* the context history is server_config's ``context_history`` when present (it is the
  record), else derived from the ``.pmap`` files present: ordered by modification time
  (then serial number), dated by modification time, described by the pmap header's
  ``description``;
* date-based specs (``hst-2016-01-01``, ``jwst-miri-2015-01-01T00:20:05``,
  ``jwst-miri-flat-...``) resolve against that history: the context whose era contains the
  date, then (for qualified specs) the instrument's .imap or the type's .rmap it selects.
"""

from __future__ import annotations

import ast
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..client.names import is_mapping
from ..errors import ServiceError
from .store import ServedRoot

log = logging.getLogger(__name__)

#: Symbolic context states crds understands (crds.core.config CONTEXT_RE).
STATES = ("operational", "latest", "edit", "build", "versions")
#: crds' context date: YYYY-MM-DD, optionally THH:MM:SS[.fff] (a blank is accepted for T).
_DATE = r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?)?"
_SPEC = re.compile(
    rf"(?:(?P<qualifier>[a-z][a-z0-9_\-]{{0,80}}?)-)?(?P<when>{_DATE}|{'|'.join(STATES)})"
)
_PMAP_SERIAL = re.compile(r"_(\d+)\.pmap$")
#: Longest mapping text read to find a selector (a real .imap is < 100 kB).
MAX_SELECTOR_TEXT = 4 * 1024 * 1024


@dataclass(frozen=True)
class ObsFacts:
    """Per-observatory server state, from server_config when usable, else from files."""

    operational_context: str
    edit_context: str
    versions_context: str
    build_context: str
    bad_files: frozenset[str]
    #: [start_date, context, description] entries, newest first (as server info has them)
    context_history: list[list[str]]
    #: "server_config" or "files": where the history came from
    history_source: str
    last_synced: str


def pmap_serial(name: str) -> int:
    match = _PMAP_SERIAL.search(name)
    return int(match.group(1)) if match else -1


def newest_pmap(names: list[str]) -> str:
    """The .pmap with the highest serial number (else the last in name order, else '')."""
    pmaps = sorted(n for n in names if n.endswith(".pmap"))
    if not pmaps:
        return ""
    return max(pmaps, key=lambda n: (pmap_serial(n), n))


_warned_lock = threading.Lock()
_warned: set[tuple[str, ...]] = set()


def _warn_once(key: tuple[str, ...], message: str, *args: Any) -> None:
    """Log a warning once per process and *key* (facts are recomputed on every request)."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message, *args)


def obs_facts(store: ServedRoot, obs: str, header_of: Any = None) -> ObsFacts:
    """Contexts, bad files and history for *obs*.

    *header_of(name)* returns a mapping's literal header (for derived history descriptions);
    None means "no descriptions".
    """
    config = store.server_config(obs) or {}
    mappings = store.files(obs, "mapping")
    newest = newest_pmap(list(mappings))
    operational = _present(store, obs, "operational_context",
                           config.get("operational_context") or config.get("latest_context"),
                           newest, mappings)
    edit = _present(store, obs, "edit_context", config.get("edit_context"), operational,
                    mappings)
    build = _present(store, obs, "build_context", config.get("build_context"), operational,
                     mappings)
    history = config.get("context_history")
    source = "server_config"
    if not isinstance(history, list) or not history:
        history = derived_history(store, obs, header_of)
        source = "files"
    bad_files = config.get("bad_files_list") or ()
    if not isinstance(bad_files, (list, tuple)):
        _warn_once((str(store.root), obs, "bad_files_list"),
                   "server_config of %s: bad_files_list is not a list; ignored", obs)
        bad_files = ()
    return ObsFacts(
        operational_context=operational,
        edit_context=edit,
        versions_context=str(config.get("versions_context") or ""),
        build_context=build,
        bad_files=frozenset(str(name) for name in bad_files),
        context_history=[[str(part) for part in entry[:3]] for entry in history
                         if isinstance(entry, (list, tuple)) and len(entry) >= 2],
        history_source=source,
        last_synced=str(config.get("last_synced") or stamp(time.time())),
    )


def _present(store: ServedRoot, obs: str, field: str, configured: Any, fallback: str,
             mappings: dict[str, Any]) -> str:
    """*configured* when it is a mapping present in the folder, else *fallback* (warned)."""
    if not configured:
        return fallback
    name = str(configured)
    if name in mappings:
        return name
    _warn_once(
        (str(store.root), obs, field, name),
        "config/%s/server_config names %s %s, which is not under %s/mappings/%s/; "
        "serving %s instead (copy the missing mappings, or fix server_config)",
        obs, field, name, store.root, obs, fallback or "no context",
    )
    return fallback


def stamp(seconds: float) -> str:
    """A context-history date like the real server's ('YYYY-MM-DD HH:MM:SS')."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def derived_history(store: ServedRoot, obs: str, header_of: Any = None) -> list[list[str]]:
    """History from the .pmap files present: newest first, dated by modification time."""
    mappings = store.files(obs, "mapping")
    pmaps = sorted((name for name in mappings if name.endswith(".pmap")),
                   key=lambda n: (mappings[n].mtime_ns, pmap_serial(n), n), reverse=True)
    history = []
    for name in pmaps:
        description = ""
        if header_of is not None:
            try:
                description = str((header_of(name) or {}).get("description") or "")
            except Exception:  # an unreadable pmap still has a date
                description = ""
        history.append([stamp(mappings[name].mtime_ns / 1e9), name,
                        description or "served by crds-fs (date: file modification time)"])
    return history


# --- date-based context specs ---------------------------------------------------------------


@dataclass(frozen=True)
class ContextSpec:
    """A parsed symbolic or date-based context spec."""

    observatory: str | None
    instrument: str | None
    filekind: str | None
    #: a state from STATES, or None for a date
    state: str | None
    date: datetime | None


def parse_spec(spec: str, default_observatory: str) -> ContextSpec | None:
    """The parts of *spec* (None when it is not a symbolic/date spec at all)."""
    match = _SPEC.fullmatch(spec.strip())
    if match is None:
        return None
    parts = match.group("qualifier").split("-", 2) if match.group("qualifier") else []
    obs = parts[0] if parts else default_observatory
    instrument = parts[1] if len(parts) > 1 else None
    filekind = parts[2] if len(parts) > 2 else None
    when = match.group("when")
    if when in STATES:
        return ContextSpec(obs, instrument, filekind, when, None)
    try:
        date = parse_date(when)
    except ValueError:
        raise ServiceError(f"invalid date in context spec {spec!r}: {when!r}") from None
    return ContextSpec(obs, instrument, filekind, None, date)


def parse_date(text: str) -> datetime:
    """A naive UTC datetime from crds/context-history date text (raises ValueError)."""
    value = datetime.fromisoformat(str(text).strip().replace(" ", "T", 1))
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def context_at(history: list[list[str]], date: datetime, obs: str) -> str:
    """The context whose era (history start date ... next start date) contains *date*."""
    eras = []
    for position, entry in enumerate(history):
        try:
            eras.append((parse_date(entry[0]), -position, entry[1]))
        except (ValueError, IndexError):
            continue
    # ascending by date; entries with the same date keep the history's newest-first order
    # meaning: the one listed first is the later one
    eras.sort(key=lambda era: era[:2])
    chosen = None
    for start, _, context in eras:
        if start <= date:
            chosen = context
        else:
            break
    if chosen is None:
        first = eras[0][0].isoformat(" ") if eras else None
        raise ServiceError(
            f"no {obs} context was in use on {date.isoformat(' ')}: "
            + (f"the context history starts on {first}" if first
               else "this server has no context history")
        )
    return chosen


def selector_dict(text: str, name: str) -> dict[str, str]:
    """The selector of a .pmap/.imap as {KEY (upper): file name or special value}.

    Read with ast.literal_eval (never eval); a selector that is not a plain dict (an .rmap's
    Match(...)) raises ServiceError.
    """
    if len(text) > MAX_SELECTOR_TEXT:
        raise ServiceError(f"mapping '{name}' is larger than {MAX_SELECTOR_TEXT} characters")
    try:
        tree = ast.parse(text, filename=name)
    except (SyntaxError, ValueError) as exc:
        raise ServiceError(f"mapping '{name}' is not valid mapping syntax: {exc}") from None
    for stmt in tree.body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name) and stmt.targets[0].id == "selector"):
            try:
                value = ast.literal_eval(stmt.value)
            except (ValueError, TypeError, SyntaxError):
                break
            if isinstance(value, dict):
                return {str(k).upper(): str(v) for k, v in value.items()}
            break
    raise ServiceError(f"mapping '{name}' has no plain selector dict (is it a .pmap/.imap?)")


def qualify(store: ServedRoot, obs: str, pmap: str, instrument: str | None,
            filekind: str | None) -> str:
    """*pmap*, or the .imap it selects for *instrument*, or that imap's .rmap for *filekind*."""
    if instrument is None:
        return pmap
    imap = _select(store, obs, pmap, instrument, "instrument")
    if filekind is None:
        return imap
    return _select(store, obs, imap, filekind, "reference type")


def _select(store: ServedRoot, obs: str, mapping: str, key: str, what: str) -> str:
    text = store.read_text(obs, "mapping", mapping)
    if text is None:
        raise ServiceError(
            f"'{mapping}' is not on this server, so its {what} '{key}' cannot be resolved")
    value = selector_dict(text, mapping).get(key.upper())
    if value is None or not is_mapping(value):
        raise ServiceError(f"{what} '{key}' has no mapping in '{mapping}'"
                           + (f" (it is {value})" if value else ""))
    return value


__all__ = ["ContextSpec", "ObsFacts", "context_at", "derived_history", "newest_pmap",
           "obs_facts", "parse_date", "parse_spec", "qualify"]
