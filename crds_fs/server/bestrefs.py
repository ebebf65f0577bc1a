"""Best-reference RPC answers for `crds-fs serve`, computed by the local engine.

Owned by the engine issue; the server app only dispatches to these functions.
Each function receives the served ROOT (CRDS cache layout) and raw RPC params and returns
the JSON-able result, raising CrdsFsError subclasses for JSON-RPC error envelopes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ServiceError

_NOT_YET = "best references are not available on this server yet (engine not built)"


def get_best_references(root: Path, context: str, header: dict, reftypes: list | None) -> Any:
    raise ServiceError(_NOT_YET)


def get_best_references_by_header_map(
    root: Path, context: str, headers: dict, reftypes: list | None
) -> Any:
    raise ServiceError(_NOT_YET)


def get_required_parkeys(root: Path, context: str) -> Any:
    raise ServiceError(_NOT_YET)
