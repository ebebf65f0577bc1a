"""File-name rules shared by the client, the cache and the server.

CRDS decides what a file is from its name alone (crds/core/config.py), and every layer that
builds a URL or a cache path must agree, so the rules live in one place.  The basename check
is the single guard against path traversal for names that arrive from a server or a request.
"""

from __future__ import annotations

import re
from typing import Literal

FileKind = Literal["mapping", "reference", "config"]

MAPPING_SUFFIXES = (".pmap", ".imap", ".rmap")
#: Files the server publishes under config/<obs>/ (crds only ever downloads server_config).
CONFIG_NAMES = frozenset({"server_config"})

# Conservative: letters, digits and the punctuation real CRDS names use; no separators.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-]{0,254}")


def is_mapping(name: str) -> bool:
    """True for rules files (.pmap/.imap/.rmap)."""
    return name.endswith(MAPPING_SUFFIXES)


def file_kind(name: str) -> FileKind:
    """"mapping" for .pmap/.imap/.rmap, "config" for server_config, else "reference"."""
    if is_mapping(name):
        return "mapping"
    if name in CONFIG_NAMES:
        return "config"
    return "reference"


def is_safe_basename(name: str) -> bool:
    """True when *name* is a plain file name that cannot escape its directory.

    Rejects empty names, '.', '..', anything with a path separator, NUL or other control
    characters, and names starting with '.' or '-' (hidden files, option-like names).
    """
    return bool(_SAFE_NAME.fullmatch(name)) and name not in (".", "..") and ".." not in name


def observatory_of(name: str) -> str | None:
    """The observatory a CRDS-style mapping name belongs to ('hst_0729.pmap' -> 'hst').

    Returns None for names without the '<obs>_' / '<obs>.' prefix (e.g. HST reference files
    such as '25815083j_bia.fits', which carry no observatory in their name).
    """
    match = re.match(r"([a-z]+)[_.]", name)
    return match.group(1) if match else None
