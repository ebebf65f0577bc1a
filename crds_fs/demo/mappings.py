"""Render the demo's mapping files in the exact layout of real CRDS mappings (pure).

crds checks each mapping's header ``sha1sum`` on load, so the text is built with a
placeholder and the checksum is filled in last with ``set_mapping_checksum``.  Header keys
are sorted and values are Python literals (``repr``), one per line, as in the files CRDS
itself writes; that keeps the demo readable next to real rules.
"""

from __future__ import annotations

from typing import Any

from ..engine.checksum import set_mapping_checksum
from .spec import OBSERVATORY, Imap, Pmap, Rmap


def _header(fields: dict[str, Any]) -> str:
    lines = ["header = {"]
    for key in sorted(fields):
        value = fields[key]
        if isinstance(value, dict):
            lines.append(f"    {key!r} : {{")
            lines.extend(f"        {k!r} : {v!r}," for k, v in sorted(value.items()))
            lines.append("    },")
        else:
            lines.append(f"    {key!r} : {value!r},")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _plain_selector(selector: dict[str, str]) -> str:
    body = "".join(f"    {key!r} : {value!r},\n" for key, value in sorted(selector.items()))
    return "selector = {\n" + body + "}\n"


def _finish(header: dict[str, Any], selector: str) -> str:
    text = _header({**header, "sha1sum": ""}) + "\n" + selector
    return set_mapping_checksum(text)


def render_pmap(pmap: Pmap) -> str:
    """Text of a pipeline mapping: instrument -> imap."""
    header = {
        "derived_from": pmap.derived_from,
        "description": pmap.description,
        "mapping": "PIPELINE",
        "name": pmap.name,
        "observatory": OBSERVATORY.upper(),
        "parkey": ("INSTRUME",),
    }
    return _finish(header, _plain_selector(pmap.selector))


def render_imap(imap: Imap) -> str:
    """Text of an instrument mapping: reftype -> rmap or 'N/A'."""
    header = {
        "derived_from": imap.derived_from,
        "instrument": imap.instrument,
        "mapping": "INSTRUMENT",
        "name": imap.name,
        "observatory": OBSERVATORY.upper(),
        "parkey": ("REFTYPE",),
    }
    return _finish(header, _plain_selector(imap.selector))


def render_rmap(rmap: Rmap) -> str:
    """Text of a reference mapping: ``Match`` rows, each a ``UseAfter`` of dates."""
    header: dict[str, Any] = {
        "derived_from": rmap.derived_from,
        "filekind": rmap.filekind,
        "instrument": rmap.instrument,
        "mapping": "REFERENCE",
        "name": rmap.name,
        "observatory": OBSERVATORY.upper(),
        "parkey": rmap.parkey,
        "reffile_format": rmap.reffile_format,
        "reffile_required": rmap.reffile_required,
        "reffile_switch": rmap.reffile_switch,
        "rmap_relevance": rmap.rmap_relevance,
    }
    if rmap.parkey_relevance:
        header["parkey_relevance"] = rmap.parkey_relevance
    lines = ["selector = Match({"]
    for key, dates in rmap.rows:
        lines.append(f"    {key!r} : UseAfter({{")
        lines.extend(f"        {date!r} : {name!r}," for date, name in dates)
        lines.append("    }),")
    lines.append("})")
    return _finish(header, "\n".join(lines) + "\n")
