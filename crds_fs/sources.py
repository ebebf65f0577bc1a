"""Mapping sources: where the (pure) engine gets mapping text from.

Owned by the engine issue.  A loader is a callable ``loader(name) -> str`` raising
MissingMappingError; this module builds loaders over a folder, a CRDS cache root, or the
fetcher of the cache layer.
"""

from __future__ import annotations
