"""Best-reference RPC answers for `crds-fs serve`, computed by the local engine.

Owned by the engine issue; the server app only dispatches to these functions.
Each function receives the served ROOT (CRDS cache layout) and raw RPC params and returns
the JSON-able result, raising CrdsFsError subclasses for JSON-RPC error envelopes.

Semantics follow the CRDS server (``crds_server/interactive/jsonapi_views.py``), which answers
with crds' ``hv_best_references``:

* ``get_best_references(context, header, reftypes)`` -> ``{reftype: name | "NOT FOUND ..."}``;
  whole-header failures (unknown instrument, ...) are error envelopes.  Bad-file checks are
  *not* applied here: crds clients apply them themselves with the server's
  ``bad_files_list`` (the real server behaves the same way).
* ``get_best_references_by_header_map(context, {id: header}, reftypes)`` ->
  ``{id: [true, bestrefs]}`` or ``{id: [false, "FAILED: <message>"]}`` per header.
* ``get_required_parkeys(context)`` -> pmap: ``{instrument: [parkey, ...]}``; imap/rmap: list.

Contexts are loaded once per (root, context) and kept; built mappings are shared between
contexts of the same root through :mod:`crds_fs.bestrefs.sources`' memo.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ..bestrefs.resolver import plain_bestrefs
from ..bestrefs.sources import MappingSource, shared_memo, source_for_path
from ..engine import Context, mapping_required_parkeys
from ..errors import CrdsFsError, ServiceError

#: Most headers accepted by one get_best_references_by_header_map call.
MAX_HEADERS_PER_CALL = 10_000

_CONTEXTS: dict[tuple[str, str], Context] = {}
_LOCK = threading.Lock()


def _source(root: Path, context: str) -> MappingSource:
    return source_for_path(Path(root), context)


def _context(root: Path, context: str) -> Context:
    if not isinstance(context, str) or not context.endswith(".pmap"):
        raise ServiceError(f"context {context!r} is not a pipeline mapping (*.pmap)")
    key = (str(Path(root).resolve()), context)
    loaded = _CONTEXTS.get(key)
    if loaded is None:
        with _LOCK:
            loaded = _CONTEXTS.get(key)
            if loaded is None:
                loaded = _source(root, context).load_context(context)
                _CONTEXTS[key] = loaded
    return loaded


def _check_header(header: Any, where: str = "header") -> dict[str, Any]:
    """The CRDS server's header rules: an object of string keys and simple values."""
    if not isinstance(header, dict):
        raise ServiceError(f"{where} parameter is not an object of keyword: value")
    for key, value in header.items():
        if not isinstance(key, str):
            raise ServiceError(f"Bad key in {where}: {key!r}")
        if not isinstance(value, (str, int, float, bool)):
            raise ServiceError(
                f"Bad value in {where} for {key!r}: not a str, int, float, or bool: {value!r}"
            )
    return header


def _check_reftypes(reftypes: Any) -> list[str] | None:
    if reftypes is None:
        return None
    if not isinstance(reftypes, (list, tuple)) or not all(isinstance(t, str) for t in reftypes):
        raise ServiceError("reftypes parameter should be a list of reftype strings or null")
    return [t.lower() for t in reftypes]


def _compute(root: Path, context: str, header: dict[str, Any],
             reftypes: list[str] | None) -> dict[str, Any]:
    try:
        return plain_bestrefs(_context(root, context).compute_best_references(header, reftypes))
    except CrdsFsError:
        raise
    except Exception as exc:  # the engine's contract is CrdsFsError; keep the envelope clean
        raise ServiceError(
            f"best references for {context} failed: {type(exc).__name__}: {exc}"
        ) from exc


def get_best_references(root: Path, context: str, header: dict, reftypes: list | None) -> Any:
    return _compute(root, context, _check_header(header), _check_reftypes(reftypes))


def get_best_references_by_header_map(
    root: Path, context: str, headers: dict, reftypes: list | None
) -> Any:
    if not isinstance(headers, dict):
        raise ServiceError("headers parameter must be an object {dataset_id: header}")
    if len(headers) > MAX_HEADERS_PER_CALL:
        raise ServiceError(
            f"{len(headers)} headers in one call; at most {MAX_HEADERS_PER_CALL} are accepted"
        )
    types = _check_reftypes(reftypes)
    _context(root, context)  # an unknown/unloadable context fails the whole call
    result: dict[str, Any] = {}
    for dataset_id, header in headers.items():
        try:
            refs = _compute(root, context, _check_header(header, f"header of {dataset_id}"), types)
            result[dataset_id] = [True, refs]
        except CrdsFsError as exc:
            result[dataset_id] = [False, "FAILED: " + str(exc)]
    return result


def get_required_parkeys(root: Path, context: str) -> Any:
    if not isinstance(context, str):
        raise ServiceError(f"context must be a mapping name, not {context!r}")
    if context.endswith(".pmap"):
        return _context(root, context).required_parkeys()
    source = _source(root, context)
    return mapping_required_parkeys(context, source.loader, memo=shared_memo(source.identity))


__all__ = [
    "get_best_references",
    "get_best_references_by_header_map",
    "get_required_parkeys",
]
