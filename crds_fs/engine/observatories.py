"""Per-observatory lookup policies (crds/<obs>/__init__.py and locate.py equivalents).

* HST: parameters are FITS keywords as given; the "do not reprocess" rule turns a failed
  lookup into ``NOT FOUND n/a`` for ACS/WFC-like headers with CCDGAIN 0.5 or 1.4.
* JWST: every rmap also needs ``META.VISIT.TSOVISIT`` and ``META.INSTRUMENT.LAMP_STATE``;
  header keys that do not start with ``META.`` are translated from FITS keywords to data-model
  paths with a table generated from stdatamodels (``data/jwst_keywords.json``, made by
  ``scripts/gen_jwst_keywords.py``), so stdatamodels is not needed at run time.
* Roman: input keys whose first dotted part is ``META`` get the ``ROMAN.`` prefix.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

#: Keys tried, after the pmap's own parkey, to find the instrument (crds INSTRUMENT_KEYWORDS).
INSTRUMENT_KEYWORDS = (
    "INSTRUME", "META.INSTRUMENT.NAME", "META_INSTRUMENT_NAME", "INSTRUMENT",
    "ROMAN.META.INSTRUMENT.NAME", "META.INSTRUMENT.TYPE", "META_INSTRUMENT_TYPE",
)

#: Lower-case instrument synonyms of all observatories (crds INSTRUMENT_FIXERS).
INSTRUMENT_FIXERS = {"hst": "synphot", "wfii": "wfpc2"}

#: Lookup-time instrument aliases applied by PipelineContext.get_imap.
INSTRUMENT_ALIASES = {"wfii": "wfpc2"}


@cache
def jwst_keyword_table() -> Mapping[str, tuple[str, ...]]:
    """FITS keyword -> data-model paths (upper case), from the packaged generated table."""
    text = resources.files("crds_fs.engine").joinpath("data/jwst_keywords.json").read_text()
    raw = json.loads(text)["keywords"]
    return {key: tuple(paths) for key, paths in raw.items()}


class KeywordAmbiguityError(AssertionError):
    """A FITS keyword maps to several data-model paths (crds asserts against this)."""


def identity_parkeys(header: Mapping[str, Any]) -> dict[str, Any]:
    return dict(header)


def jwst_fits_to_parkeys(header: Mapping[str, Any]) -> dict[str, str]:
    """crds.jwst.locate.fits_to_parkeys: FITS keywords -> upper-case model paths."""
    table = jwst_keyword_table()
    result: dict[str, str] = {}
    for key, value in header.items():
        key, value = str(key), str(value)
        if key.lower().startswith("meta."):
            path = key
        else:
            paths = table.get(key.upper(), ())
            if not paths:
                path = key
            elif len(paths) == 1:
                path = paths[0]
            else:
                raise KeywordAmbiguityError(
                    "CRDS JWST Data Model ambiguity on " + repr(key) + " = " + repr(list(paths))
                )
        result[path.upper()] = value
    return result


def roman_prefix(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """crds.roman.locate.dataset_to_ref_header: ``META.X`` -> ``ROMAN.META.X``."""
    result: dict[str, Any] = {}
    for key, value in parameters.items():
        result["ROMAN." + key if key.split(".")[0].upper() == "META" else key] = value
    return result


def hst_do_not_reprocess(header: Mapping[str, Any]) -> bool:
    """crds.hst.locate.dnr_check, with its errors meaning "no"."""
    try:
        return header["DETECTOR"] == "WFC" and float(header["CCDGAIN"]) in (0.5, 1.4)
    except Exception:
        return False


@dataclass(frozen=True)
class Observatory:
    """What differs between observatories during a lookup."""

    name: str
    extra_keys: tuple[str, ...] = ()
    fits_to_parkeys: Callable[[Mapping[str, Any]], dict[str, Any]] = identity_parkeys
    do_not_reprocess: Callable[[Mapping[str, Any]], bool] | None = None
    prepare_parameters: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None


_POLICIES = {
    "hst": Observatory("hst", do_not_reprocess=hst_do_not_reprocess),
    "jwst": Observatory(
        "jwst",
        extra_keys=("META.VISIT.TSOVISIT", "META.INSTRUMENT.LAMP_STATE"),
        fits_to_parkeys=jwst_fits_to_parkeys,
    ),
    "roman": Observatory("roman", prepare_parameters=roman_prefix),
}


def observatory_policy(name: str) -> Observatory:
    """Policy for *name* (lower case); unknown observatories behave like plain HST rules."""
    return _POLICIES.get(name, Observatory(name))
