"""The best-references engine: CRDS mapping rules in, reference file names out.

Pure: no network, no FUSE, no file I/O (apart from reading its own packaged JWST keyword
table), no global mutable state.  Mapping text comes from a caller-supplied
``loader(name) -> str`` (see :mod:`crds_fs.bestrefs.sources`).  Behaviour equals crds 14.0.3's
``getrecommendations`` / ``hv_best_references``, quirks included (see docs/architecture.md).

Typical use::

    from crds_fs.engine import Context
    ctx = Context.load("hst_0729.pmap", loader)
    ctx.best_references({"INSTRUME": "ACS", ...})   # {reftype: filename | "NOT FOUND ..."}

``Context.load(..., compiled=store)`` keeps each mapping's parsed header and built selector
tree in a :class:`CompiledStore` (bytes by text SHA-1, see :mod:`.compiled`); the mapping
sources give it the on-disk compiled-context cache (:mod:`crds_fs.bestrefs.compiled`).
"""

from .checksum import mapping_checksum, set_mapping_checksum
from .conditioning import condition_header, condition_value
from .context import CompiledStore, Context, Instrument, mapping_required_parkeys
from .dates import reformat_date
from .exceptions import crds_name_of
from .parser import MAX_MAPPING_CHARS, MappingDoc, SelectorCall, parse_mapping

__all__ = [
    "MAX_MAPPING_CHARS",
    "CompiledStore",
    "Context",
    "Instrument",
    "MappingDoc",
    "SelectorCall",
    "condition_header",
    "condition_value",
    "crds_name_of",
    "mapping_checksum",
    "mapping_required_parkeys",
    "parse_mapping",
    "reformat_date",
    "set_mapping_checksum",
]
