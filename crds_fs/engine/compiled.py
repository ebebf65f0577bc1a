"""Compiled mappings: a parsed mapping as bytes of plain data, and back (pure, no I/O).

Parsing is most of the cost of loading a context (``ast.parse`` plus the tree walk: ~85% of
a full load of hst_0729.pmap) and building the indexed selectors most of the rest, so the
parsed header and the *built* selector tree of each mapping are kept on disk by the mapping
sources (:mod:`crds_fs.bestrefs.compiled`), keyed by the SHA-1 of the mapping text, and
restored from there the next time.  An entry is written only after the mapping parsed and
built successfully from its text, so a restored mapping is the same object tree the build
makes (tests compare the two); the rules around the selector (header checks, expressions,
hooks) are built from the stored header each time.

Format: ``MAGIC + FORMAT_TAG + b"\\n" + blake2b-256(payload) + payload`` where the payload
is :mod:`marshal` data of plain values only (dict, tuple, list, str, int, float, bool,
None, bytes) that this module built itself.  Nothing is ever executed: no pickle, no code
objects.  The digest is checked before ``marshal.loads`` so a damaged (truncated, flipped)
entry is rejected without being decoded; any entry that does not decode to the expected
shape is rejected too.  A rejected entry is simply rebuilt by the caller.

:data:`FORMAT_TAG` names the format version, the marshal version and the Python version:
entries of another engine format or interpreter are not read (the cache directory is
per tag, so they are not even looked at).
"""

from __future__ import annotations

import hashlib
import marshal
import sys
from typing import Any

from .parser import MappingDoc, SelectorCall
from .selectors import NotExportable, Selector, export_selector

#: Bump when the parsed form (MappingDoc / SelectorCall / parser semantics) changes.
FORMAT_VERSION = 1

FORMAT_TAG = (f"v{FORMAT_VERSION}-m{marshal.version}-"
              f"py{sys.version_info[0]}{sys.version_info[1]}")

MAGIC = b"CRDSFS-COMPILED "
_HEAD = MAGIC + FORMAT_TAG.encode("ascii") + b"\n"
_DIGEST_SIZE = 32

# A SelectorCall is stored as (b"C", kind, entries, line, keys-to-decode) and a plain dict
# that holds calls as (b"D", dict, keys-to-decode): parsed values are never bytes, so a
# tuple starting with bytes cannot be mistaken for mapping data.  Only the listed keys are
# visited when decoding, so the thousands of constant UseAfter rows are not walked.
_CALL = b"C"
_DICT = b"D"

_CHECKSUM_VERDICTS = {None: 0, "missing": 1, "mismatch": 2}


class DamagedEntry(ValueError):
    """A compiled entry that is not what this engine writes (damaged or foreign)."""


def text_key(text: str) -> str:
    """The cache key of a mapping text: SHA-1 hex of its UTF-8 bytes (the file's sha1)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def pack(doc: MappingDoc, selector: Selector | None = None) -> bytes:
    """*doc* as compiled-entry bytes (see the module docstring for the format).

    With *selector* (an rmap's selector tree as just built from *doc*), the built tree is
    stored instead of the parsed one, so loading skips conditioning, sorting and indexing
    too; a tree the exporter does not know is stored as parsed.
    """
    verdict = _verdict(doc)
    built = None
    if selector is not None:
        try:
            built = export_selector(selector)
        except NotExportable:
            built = None
    parsed = None if built is not None else _encode(doc.selector)
    payload = marshal.dumps(
        (doc.header, parsed, doc.comment, _CHECKSUM_VERDICTS[verdict], built))
    return _HEAD + hashlib.blake2b(payload, digest_size=_DIGEST_SIZE).digest() + payload


def unpack(data: bytes, name: str) -> tuple[MappingDoc, Any]:
    """(MappingDoc, built selector export or None) of compiled-entry *data* for mapping
    *name*; DamagedEntry if *data* is not an intact entry of this format.  When the built
    selector is given, the doc's ``selector`` is None (the parse was not stored)."""
    if not data.startswith(_HEAD):
        raise DamagedEntry("not a compiled mapping of this engine format")
    start = len(_HEAD)
    digest, payload = data[start:start + _DIGEST_SIZE], data[start + _DIGEST_SIZE:]
    if hashlib.blake2b(payload, digest_size=_DIGEST_SIZE).digest() != digest:
        raise DamagedEntry("digest mismatch (truncated or altered)")
    try:
        header, selector, comment, verdict, built = marshal.loads(payload)
        if not isinstance(header, dict) or not (comment is None or isinstance(comment, str)):
            raise DamagedEntry("unexpected shape")
        if built is None:
            selector = _decode(selector)
            if not isinstance(selector, (dict, SelectorCall)):
                raise DamagedEntry("unexpected selector")
        elif selector is not None or type(built) is not tuple:
            raise DamagedEntry("unexpected built selector")
        problem = _checksum_message(verdict, name)
    except DamagedEntry:
        raise
    except Exception as exc:  # marshal/shape errors: any of them means "not ours"
        raise DamagedEntry(f"cannot decode: {type(exc).__name__}: {exc}") from None
    return MappingDoc(name, header, selector, comment, problem), built


# -- encoding -------------------------------------------------------------------------------


def _verdict(doc: MappingDoc) -> str | None:
    message = doc.checksum_error
    if message is None:
        return None
    return "missing" if message.startswith("sha1sum is missing") else "mismatch"


def _checksum_message(verdict: Any, name: str) -> str | None:
    """The parser's checksum message for *verdict*, naming *name* (see parser)."""
    basename = name.rsplit("/", 1)[-1]
    if verdict == 0:
        return None
    if verdict == 1:
        return f"sha1sum is missing in {basename!r}"
    if verdict == 2:
        return f"sha1sum mismatch in {basename!r}"
    raise DamagedEntry(f"unknown checksum verdict {verdict!r}")


def _encode(value: Any) -> Any:
    if isinstance(value, SelectorCall):
        entries, keys = _encode_entries(value.entries)
        return (_CALL, value.kind, entries, value.line, keys)
    if type(value) is dict:
        entries, keys = _encode_entries(value)
        return (_DICT, entries, keys) if keys else entries
    return value


def _encode_entries(entries: dict[Any, Any]) -> tuple[dict[Any, Any], tuple[Any, ...]]:
    """(entries with nested calls encoded, the keys whose values were encoded)."""
    keys = [key for key, value in entries.items()
            if isinstance(value, SelectorCall) or (type(value) is dict and _has_call(value))]
    if not keys:
        return entries, ()
    encoded = dict(entries)
    for key in keys:
        encoded[key] = _encode(entries[key])
    return encoded, tuple(keys)


def _has_call(value: dict[Any, Any]) -> bool:
    return any(isinstance(v, SelectorCall) or (type(v) is dict and _has_call(v))
               for v in value.values())


def _decode(value: Any) -> Any:
    if type(value) is tuple and value and type(value[0]) is bytes:
        if value[0] == _CALL:
            _, kind, entries, line, keys = value
            if type(kind) is not str or type(entries) is not dict or type(line) is not int:
                raise DamagedEntry("bad selector call")
            return SelectorCall(kind, _decode_entries(entries, keys), line)
        if value[0] == _DICT:
            _, entries, keys = value
            if type(entries) is not dict:
                raise DamagedEntry("bad dict")
            return _decode_entries(entries, keys)
        raise DamagedEntry("unknown node")
    return value


def _decode_entries(entries: dict[Any, Any], keys: tuple[Any, ...]) -> dict[Any, Any]:
    for key in keys:
        entries[key] = _decode(entries[key])  # replaces values only: order kept
    return entries
