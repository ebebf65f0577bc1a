"""HST header hooks, reimplemented from crds/hst/{acs_v1,acs_v2,acs_v3,wfc3,wfpc2}.py.

crds resolves a hook by name in the instrument module ``crds.<obs>.<instrument>``: the rmap
header ``hooks`` dict maps the generic name (``precondition_header``, ``fallback_header``) to
a versioned function name; without a ``hooks`` dict the default name is
``<generic>_<instrument>_<filekind>_v1``.  A name the module does not define means "no hook"
(e.g. Roman's ``precondition_header_wfi_epsf_v1``).  :data:`HOOKS` lists the functions the
crds 14.0.3 modules define, keyed by (observatory, instrument).

Hooks receive (and return) the instrument-level conditioned header; they may raise, and the
error text then becomes the reftype's ``NOT FOUND`` result, so they use the same operations
(``int(float(x))``, dict indexing, date parsing) crds does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .conditioning import condition_value
from .dates import reformat_date

Header = dict[str, Any]
Hook = Callable[[Header], Header | None]

_ACS_HALF_CHIP_COLS = 2048
_SM4 = reformat_date("2009-05-14 00:00:00.000000")  # servicing mission 4
_PRE_SM4_SUBARRAY = reformat_date("2002-03-30 00:00:00.000000")


def _exposure_time(header: Header) -> str:
    return reformat_date(header["DATE-OBS"] + " " + header["TIME-OBS"])


def _acs_bias_precondition(header_in: Header, cols: str, rows: str) -> Header:
    """Shared body of the ACS biasfile preconditions (v1 uses NUMCOLS/NUMROWS, v2+ NAXISn)."""
    header = dict(header_in)
    if _exposure_time(header) < _SM4:
        header["APERTURE"] = "N/A"
    try:
        ncols = int(float(header[cols]))
    except ValueError:
        pass
    else:
        header[cols] = condition_value(str(ncols))
        if _exposure_time(header) < _SM4 and ncols > _ACS_HALF_CHIP_COLS:
            if header["CCDAMP"] in ("A", "D"):
                header["CCDAMP"] = "AD"
            elif header["CCDAMP"] in ("B", "C"):
                header["CCDAMP"] = "BC"
    if header["DETECTOR"] == "WFC" and header["XCORNER"] == "0.0" and header["YCORNER"] == "0.0":
        try:
            nrows = int(float(header[rows])) / 2
        except ValueError:
            pass
        else:
            header[rows] = condition_value(str(nrows))
    return header


def precondition_header_acs_biasfile_v1(header: Header) -> Header:
    return _acs_bias_precondition(header, "NUMCOLS", "NUMROWS")


def precondition_header_acs_biasfile_v2(header: Header) -> Header:
    return _acs_bias_precondition(header, "NAXIS1", "NAXIS2")


def _full_frame(header: Header, ltv1: str, ltv2: str) -> Header:
    if header["DETECTOR"] == "WFC":
        header.update({"NAXIS1": "4144.0", "NAXIS2": "2068.0", ltv1: "24.0", ltv2: "0.0"})
    else:
        header.update({"NAXIS1": "1062.0", "NAXIS2": "1044.0", ltv1: "19.0"})
        header[ltv2] = "0.0" if header["CCDAMP"] in ("C", "D") else "20.0"
    return header


def fallback_header_acs_biasfile_v2(header: Header) -> Header:
    return _full_frame(precondition_header_acs_biasfile_v2(header), "LTV1", "LTV2")


def _acs_v3_precondition_required(header: Header, exposure: str) -> bool:
    if header["DETECTOR"] != "WFC" or exposure < _PRE_SM4_SUBARRAY:
        return True
    if "APERTURE" not in header or header["APERTURE"] == "UNDEFINED":
        return True
    if float(header["CCDGAIN"]) in (4.0, 8.0):
        return True
    return header["CCDAMP"] in ("AD", "BC")


def precondition_header_acs_biasfile_v3(header: Header) -> Header:
    if not _acs_v3_precondition_required(header, _exposure_time(header)):
        return dict(header)
    return _acs_bias_precondition(header, "NAXIS1", "NAXIS2")


def fallback_header_acs_biasfile_v3(header: Header) -> Header:
    return _full_frame(precondition_header_acs_biasfile_v3(header), "RAW_LTV1", "RAW_LTV2")


def precondition_header_wfc3_biasfile_v1(header_in: Header) -> Header:
    """Custom subarrays (SUBARRAY=T, no SUB in APERTURE) match any APERTURE."""
    header = dict(header_in)
    if header["SUBARRAY"] == "T" and "SUB" not in header["APERTURE"]:
        header["APERTURE"] = "N/A"
    return header


def fallback_header_wfpc2_flatfile_v1(header: Header) -> Header:
    """Second try with FILTER1 and FILTER2 swapped (mutates its argument, like crds)."""
    header["FILTER1"], header["FILTER2"] = header["FILTER2"], header["FILTER1"]
    return header


#: Hook functions defined by crds' instrument modules, by (observatory, instrument).
HOOKS: dict[tuple[str, str], dict[str, Hook]] = {
    ("hst", "acs"): {
        "precondition_header_acs_biasfile_v1": precondition_header_acs_biasfile_v1,
        "precondition_header_acs_biasfile_v2": precondition_header_acs_biasfile_v2,
        "fallback_header_acs_biasfile_v2": fallback_header_acs_biasfile_v2,
        "precondition_header_acs_biasfile_v3": precondition_header_acs_biasfile_v3,
        "fallback_header_acs_biasfile_v3": fallback_header_acs_biasfile_v3,
    },
    ("hst", "wfc3"): {"precondition_header_wfc3_biasfile_v1": precondition_header_wfc3_biasfile_v1},
    ("hst", "wfpc2"): {"fallback_header_wfpc2_flatfile_v1": fallback_header_wfpc2_flatfile_v1},
}


def resolve_hook(observatory: str, instrument: str, filekind: str, generic: str,
                 hooks: Any) -> Hook | None:
    """The hook crds would call for *generic* in this rmap, or None."""
    if hooks:
        name = hooks.get(generic, generic)
    else:
        name = "_".join([generic, instrument, filekind, "v1"])
    return HOOKS.get((observatory, instrument), {}).get(name)
