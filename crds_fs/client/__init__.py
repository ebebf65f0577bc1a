"""CRDS protocol client: JSON-RPC calls, the crds_encode payload, the server catalog.

Names are loaded on first use, so importing a light submodule (e.g. ``client.names``)
does not import requests (keeps `crds-fs bestrefs --mappings` fast to start).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Catalog": "catalog", "FileInfo": "catalog", "load_catalog": "catalog",
            "crds_decode": "payload", "crds_encode": "payload", "CrdsClient": "rpc",
            "iter_chunks": "rpc"}

__all__ = ["Catalog", "CrdsClient", "FileInfo", "crds_decode", "crds_encode", "iter_chunks",
           "load_catalog"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
