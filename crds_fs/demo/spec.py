"""What the demo observatory contains, as plain data (no I/O).

The demo is a miniature HST: three instruments (ACS, WFC3, COS), two contexts
(``hst_9000.pmap`` and the operational ``hst_9001.pmap``, which adds newer ACS darks and
WFC3 bad-pixel tables), rmaps with ``Match``/``UseAfter`` selectors, and raw datasets whose
headers select known references.  Keeping the content here, separate from the writers,
lets the intended best references sit next to the rules that produce them, so a reader (and
the test that asks the real crds client) can check one against the other.

Names use the 9xxx serial range and CRDS "new style" reference names
(``hst_acs_darkfile_9101.fits``), so they never collide with real HST files while still
telling crds the instrument and type from the name alone.

The rules avoid the reference types for which crds runs instrument hooks (ACS and WFC3
``biasfile``, WFPC2 ``flatfile``), so crds answers from the rules alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OBSERVATORY = "hst"
OPERATIONAL_CONTEXT = "hst_9001.pmap"
OLD_CONTEXT = "hst_9000.pmap"
CONTEXTS = (OLD_CONTEXT, OPERATIONAL_CONTEXT)
DATE_KEYS = ("DATE-OBS", "TIME-OBS")
AMPS = "A|ABCD|AD|B|BC|C|D"

#: Recommended by no documented dataset; selecting it (an ACS WFC ABCD exposure dated
#: between 2006-07-04 and 2009-05-14) makes crds raise CrdsBadReferenceError.
BAD_REFERENCE = "hst_acs_darkfile_9104.fits"

NA = "NOT FOUND n/a"
NO_MATCH = "NOT FOUND No match found."


class _NamedFile:
    """Instrument read from a demo file name (hst_<instr>_...): crds reads names the same
    way, so the name is the single source of truth."""

    name: str

    @property
    def instrument(self) -> str:
        return self.name.split("_")[1].upper()


class _KindedFile(_NamedFile):
    """A file named hst_<instr>_<kind>_NNNN.ext (references and rmaps)."""

    @property
    def filekind(self) -> str:
        return self.name.split("_")[2].upper()


@dataclass(frozen=True)
class Reference(_KindedFile):
    """One reference file: what its header says and how big/what shape it is."""

    name: str
    detector: str
    useafter: str  # 'YYYY-MM-DD HH:MM:SS', as in the rmap
    descrip: str
    #: selection keywords written into the primary header (CCDAMP, FILTER, ...)
    keywords: dict[str, Any] = field(default_factory=dict)
    #: "image" (SCI/DQ extensions) or "table" (a binary table)
    form: str = "image"
    #: "small" (tens of KB), "large" (large_mb MB) or "half" (large_mb / 2 MB)
    size: str = "small"


@dataclass(frozen=True)
class Rmap(_KindedFile):
    """One reference mapping: header fields plus ``Match`` rows of ``UseAfter`` dates."""

    name: str
    derived_from: str
    parkey: tuple[tuple[str, ...], ...]
    rows: tuple[tuple[tuple[Any, ...], tuple[tuple[str, str], ...]], ...]
    reffile_format: str
    reffile_switch: str
    rmap_relevance: str
    reffile_required: str = "YES"
    parkey_relevance: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Imap(_NamedFile):
    name: str
    derived_from: str
    #: reftype (lower case) -> rmap name or 'N/A'
    selector: dict[str, str]


@dataclass(frozen=True)
class Pmap:
    name: str
    derived_from: str
    description: str
    selector: dict[str, str]


@dataclass(frozen=True)
class Dataset:
    """A raw exposure: its primary header and what each context should recommend for it."""

    file_name: str
    keywords: dict[str, Any]
    #: context -> {reftype: reference name or crds' "NOT FOUND ..." string}
    expected: dict[str, dict[str, str]]
    note: str = ""


# --- references ---------------------------------------------------------------------------

_D = "2002-03-01 00:00:00"

REFERENCES: tuple[Reference, ...] = (
    # ACS darks
    Reference("hst_acs_darkfile_9101.fits", "HRC", _D, "HRC dark, all amps",
              {"CCDAMP": "ANY", "CCDGAIN": -1.0}),
    Reference("hst_acs_darkfile_9102.fits", "SBC", _D, "SBC dark"),
    Reference("hst_acs_darkfile_9103.fits", "WFC", _D, "WFC full-frame dark, first epoch",
              {"CCDAMP": "ABCD", "CCDGAIN": 2.0}),
    Reference("hst_acs_darkfile_9104.fits", "WFC", "2006-07-04 00:00:00",
              "WFC full-frame dark, 2006 epoch (on the bad files list)",
              {"CCDAMP": "ABCD", "CCDGAIN": 2.0}),
    Reference("hst_acs_darkfile_9105.fits", "WFC", "2009-05-14 00:00:00",
              "WFC full-frame dark after SM4", {"CCDAMP": "ABCD", "CCDGAIN": 2.0}),
    Reference("hst_acs_darkfile_9106.fits", "WFC", "2016-01-01 00:00:00",
              "WFC full-frame dark, 2016 epoch (new in hst_9001.pmap)",
              {"CCDAMP": "ABCD", "CCDGAIN": 2.0}, size="half"),
    Reference("hst_acs_darkfile_9107.fits", "WFC", _D, "WFC single-amp dark, any gain",
              {"CCDAMP": "ANY", "CCDGAIN": -1.0}),
    # ACS pixel-to-pixel flats
    Reference("hst_acs_pfltfile_9201.fits", "WFC", _D, "WFC F606W flat",
              {"CCDAMP": "ANY", "FILTER1": "F606W", "FILTER2": "CLEAR2L", "OBSTYPE": "IMAGING"},
              size="large"),
    Reference("hst_acs_pfltfile_9202.fits", "WFC", _D, "WFC F814W flat",
              {"CCDAMP": "ANY", "FILTER1": "CLEAR1L", "FILTER2": "F814W", "OBSTYPE": "IMAGING"}),
    Reference("hst_acs_pfltfile_9203.fits", "HRC", _D, "HRC F250W/F330W flat",
              {"CCDAMP": "ANY", "FILTER1": "CLEAR1S", "FILTER2": "F250W|F330W",
               "OBSTYPE": "IMAGING"}),
    # ACS bad pixel tables
    Reference("hst_acs_bpixtab_9301.fits", "HRC", _D, "HRC bad pixels", form="table"),
    Reference("hst_acs_bpixtab_9302.fits", "SBC", "1993-01-01 00:00:00", "SBC bad pixels",
              form="table"),
    Reference("hst_acs_bpixtab_9303.fits", "WFC", "2002-03-02 00:00:00", "WFC bad pixels",
              form="table"),
    Reference("hst_acs_bpixtab_9304.fits", "WFC", "2017-05-05 00:00:00",
              "WFC bad pixels, 2017 update", form="table"),
    # ACS post-flash
    Reference("hst_acs_flshfile_9401.fits", "HRC", _D, "HRC post-flash",
              {"CCDAMP": "ANY", "CCDGAIN": 2.0, "FLASHCUR": "ANY", "SHUTRPOS": "ANY"}),
    Reference("hst_acs_flshfile_9402.fits", "WFC", _D, "WFC post-flash",
              {"CCDAMP": "ABCD", "CCDGAIN": -1.0, "FLASHCUR": "ANY", "SHUTRPOS": "ANY"}),
    Reference("hst_acs_flshfile_9403.fits", "WFC", "2012-01-01 00:00:00",
              "WFC post-flash, 2012 epoch",
              {"CCDAMP": "ABCD", "CCDGAIN": -1.0, "FLASHCUR": "ANY", "SHUTRPOS": "ANY"}),
    # WFC3 darks
    Reference("hst_wfc3_darkfile_9501.fits", "UVIS", "2009-06-01 00:00:00", "UVIS dark",
              {"CCDAMP": "ANY", "CCDGAIN": 1.5}),
    Reference("hst_wfc3_darkfile_9502.fits", "UVIS", "2012-01-01 00:00:00",
              "UVIS dark, 2012 epoch", {"CCDAMP": "ANY", "CCDGAIN": 1.5}),
    Reference("hst_wfc3_darkfile_9503.fits", "IR", "2009-06-01 00:00:00", "IR dark, SPARS",
              {"CCDGAIN": 2.5, "SAMP_SEQ": "SPARS25|SPARS50|SPARS100"}),
    Reference("hst_wfc3_darkfile_9504.fits", "IR", "2009-06-01 00:00:00", "IR dark, RAPID",
              {"CCDGAIN": 2.5, "SAMP_SEQ": "RAPID"}),
    # WFC3 flats
    Reference("hst_wfc3_pfltfile_9601.fits", "UVIS", "2009-06-01 00:00:00", "UVIS F606W flat",
              {"FILTER": "F606W"}),
    Reference("hst_wfc3_pfltfile_9602.fits", "UVIS", "2009-06-01 00:00:00", "UVIS F814W flat",
              {"FILTER": "F814W"}),
    Reference("hst_wfc3_pfltfile_9603.fits", "IR", "2009-06-01 00:00:00", "IR F140W/F160W flat",
              {"FILTER": "F140W|F160W"}),
    # WFC3 bad pixel tables
    Reference("hst_wfc3_bpixtab_9701.fits", "UVIS", "2009-06-01 00:00:00", "UVIS bad pixels",
              form="table"),
    Reference("hst_wfc3_bpixtab_9702.fits", "UVIS", "2013-01-01 00:00:00",
              "UVIS bad pixels, 2013 update (new in hst_9001.pmap)", form="table"),
    Reference("hst_wfc3_bpixtab_9703.fits", "IR", "2009-06-01 00:00:00", "IR bad pixels",
              form="table"),
    # COS flats and bad pixel tables
    Reference("hst_cos_flatfile_9801.fits", "FUV", "2009-05-11 00:00:00", "FUV G130M/G160M flat",
              {"OPT_ELEM": "G130M|G160M"}),
    Reference("hst_cos_flatfile_9802.fits", "FUV", "2009-05-11 00:00:00", "FUV G140L flat",
              {"OPT_ELEM": "G140L"}),
    Reference("hst_cos_flatfile_9803.fits", "NUV", "2009-05-11 00:00:00", "NUV flat, any grating",
              {"OPT_ELEM": "ANY"}),
    Reference("hst_cos_bpixtab_9901.fits", "FUV", "1996-10-01 00:00:00", "FUV bad pixels",
              form="table"),
    Reference("hst_cos_bpixtab_9902.fits", "NUV", "1996-10-01 00:00:00", "NUV bad pixels",
              form="table"),
)

# --- rules ------------------------------------------------------------------------------

_ACS_DARK_ROWS_9000 = (
    (("HRC", AMPS, "1.0|2.0|4.0"), ((_D, "hst_acs_darkfile_9101.fits"),)),
    (("SBC", "N/A", "N/A"), ((_D, "hst_acs_darkfile_9102.fits"),)),
    (("WFC", "A|B|C|D", "*"), ((_D, "hst_acs_darkfile_9107.fits"),)),
    (("WFC", "ABCD", "2.0"), (
        (_D, "hst_acs_darkfile_9103.fits"),
        ("2006-07-04 00:00:00", "hst_acs_darkfile_9104.fits"),
        ("2009-05-14 00:00:00", "hst_acs_darkfile_9105.fits"),
    )),
)
_ACS_DARK_ROWS_9001 = (
    *_ACS_DARK_ROWS_9000[:3],
    (("WFC", "ABCD", "2.0"), (
        *_ACS_DARK_ROWS_9000[3][1],
        ("2016-01-01 00:00:00", "hst_acs_darkfile_9106.fits"),
    )),
)
_ACS_DARK = {
    "parkey": (("DETECTOR", "CCDAMP", "CCDGAIN"), DATE_KEYS),
    "parkey_relevance": {"ccdamp": '(DETECTOR != "SBC")', "ccdgain": '(DETECTOR != "SBC")'},
    "reffile_format": "IMAGE",
    "reffile_switch": "DARKCORR",
    "rmap_relevance": '(DARKCORR != "OMIT")',
}

_WFC3_BPIX_ROWS_9000 = (
    (("IR",), (("2009-06-01 00:00:00", "hst_wfc3_bpixtab_9703.fits"),)),
    (("UVIS",), (("2009-06-01 00:00:00", "hst_wfc3_bpixtab_9701.fits"),)),
)
_WFC3_BPIX_ROWS_9001 = (
    _WFC3_BPIX_ROWS_9000[0],
    (("UVIS",), (*_WFC3_BPIX_ROWS_9000[1][1],
                 ("2013-01-01 00:00:00", "hst_wfc3_bpixtab_9702.fits"))),
)
_WFC3_BPIX = {
    "parkey": (("DETECTOR",), DATE_KEYS),
    "reffile_format": "TABLE",
    "reffile_switch": "DQICORR",
    "rmap_relevance": '(DQICORR != "OMIT")',
}

RMAPS: tuple[Rmap, ...] = (
    Rmap("hst_acs_darkfile_9000.rmap", "Hand made for the crds-fs demo",
         rows=_ACS_DARK_ROWS_9000, **_ACS_DARK),
    Rmap("hst_acs_darkfile_9001.rmap", "hst_acs_darkfile_9000.rmap",
         rows=_ACS_DARK_ROWS_9001, **_ACS_DARK),
    Rmap("hst_acs_pfltfile_9000.rmap", "Hand made for the crds-fs demo",
         parkey=(("DETECTOR", "CCDAMP", "FILTER1", "FILTER2", "OBSTYPE"), DATE_KEYS),
         parkey_relevance={"ccdamp": '(DETECTOR != "SBC")'},
         reffile_format="IMAGE", reffile_switch="FLATCORR",
         rmap_relevance='((OBSTYPE != "INTERNAL") and (FLATCORR != "OMIT"))',
         rows=(
             (("HRC", AMPS, "CLEAR1S", "F250W|F330W", "IMAGING"),
              ((_D, "hst_acs_pfltfile_9203.fits"),)),
             (("WFC", AMPS, "CLEAR1L", "F814W", "IMAGING"),
              ((_D, "hst_acs_pfltfile_9202.fits"),)),
             (("WFC", AMPS, "F606W", "CLEAR2L", "IMAGING"),
              ((_D, "hst_acs_pfltfile_9201.fits"),)),
         )),
    Rmap("hst_acs_bpixtab_9000.rmap", "Hand made for the crds-fs demo",
         parkey=(("DETECTOR",), DATE_KEYS), reffile_format="TABLE", reffile_switch="DQICORR",
         rmap_relevance='(DQICORR != "OMIT")',
         rows=(
             (("HRC",), ((_D, "hst_acs_bpixtab_9301.fits"),)),
             (("SBC",), (("1993-01-01 00:00:00", "hst_acs_bpixtab_9302.fits"),)),
             (("WFC",), (("2002-03-02 00:00:00", "hst_acs_bpixtab_9303.fits"),
                         ("2017-05-05 00:00:00", "hst_acs_bpixtab_9304.fits"))),
         )),
    Rmap("hst_acs_flshfile_9000.rmap", "Hand made for the crds-fs demo",
         parkey=(("DETECTOR", "CCDAMP", "CCDGAIN", "FLASHCUR", "SHUTRPOS"), DATE_KEYS),
         reffile_format="IMAGE", reffile_switch="FLSHCORR",
         rmap_relevance='((DETECTOR != "SBC" and FLASHCUR != "OFF") and (FLSHCORR != "OMIT"))',
         rows=(
             (("HRC", AMPS, 2.0, "HIGH|LOW|MED", "A|B"),
              ((_D, "hst_acs_flshfile_9401.fits"),)),
             (("WFC", "ABCD", "*", "HIGH|LOW|MED", "A|B"),
              ((_D, "hst_acs_flshfile_9402.fits"),
               ("2012-01-01 00:00:00", "hst_acs_flshfile_9403.fits"))),
         )),
    Rmap("hst_wfc3_darkfile_9000.rmap", "Hand made for the crds-fs demo",
         parkey=(("DETECTOR", "CCDAMP", "CCDGAIN", "SAMP_SEQ"), DATE_KEYS),
         parkey_relevance={"ccdamp": '(DETECTOR == "UVIS")', "samp_seq": '(DETECTOR == "IR")'},
         reffile_format="IMAGE", reffile_switch="DARKCORR",
         rmap_relevance='(DARKCORR != "OMIT")',
         rows=(
             (("IR", "N/A", "2.5", "RAPID"),
              (("2009-06-01 00:00:00", "hst_wfc3_darkfile_9504.fits"),)),
             (("IR", "N/A", "2.5", "SPARS100|SPARS25|SPARS50"),
              (("2009-06-01 00:00:00", "hst_wfc3_darkfile_9503.fits"),)),
             (("UVIS", "A|ABCD|AC|AD|B|BC|BD|C|D", "1.5", "N/A"),
              (("2009-06-01 00:00:00", "hst_wfc3_darkfile_9501.fits"),
               ("2012-01-01 00:00:00", "hst_wfc3_darkfile_9502.fits"))),
         )),
    Rmap("hst_wfc3_pfltfile_9000.rmap", "Hand made for the crds-fs demo",
         parkey=(("DETECTOR", "FILTER"), DATE_KEYS),
         reffile_format="IMAGE", reffile_switch="FLATCORR",
         rmap_relevance='((FILTER != "BLANK") and (FLATCORR != "OMIT"))',
         rows=(
             (("IR", "F140W|F160W"), (("2009-06-01 00:00:00", "hst_wfc3_pfltfile_9603.fits"),)),
             (("UVIS", "F606W"), (("2009-06-01 00:00:00", "hst_wfc3_pfltfile_9601.fits"),)),
             (("UVIS", "F814W"), (("2009-06-01 00:00:00", "hst_wfc3_pfltfile_9602.fits"),)),
         )),
    Rmap("hst_wfc3_bpixtab_9000.rmap", "Hand made for the crds-fs demo",
         rows=_WFC3_BPIX_ROWS_9000, **_WFC3_BPIX),
    Rmap("hst_wfc3_bpixtab_9001.rmap", "hst_wfc3_bpixtab_9000.rmap",
         rows=_WFC3_BPIX_ROWS_9001, **_WFC3_BPIX),
    Rmap("hst_cos_flatfile_9000.rmap", "Hand made for the crds-fs demo",
         parkey=(("DETECTOR", "OPT_ELEM"), DATE_KEYS),
         reffile_format="IMAGE", reffile_switch="FLATCORR",
         rmap_relevance='(FLATCORR != "OMIT")',
         rows=(
             (("FUV", "G130M|G160M"), (("2009-05-11 00:00:00", "hst_cos_flatfile_9801.fits"),)),
             (("FUV", "G140L"), (("2009-05-11 00:00:00", "hst_cos_flatfile_9802.fits"),)),
             (("NUV", "*"), (("2009-05-11 00:00:00", "hst_cos_flatfile_9803.fits"),)),
         )),
    Rmap("hst_cos_bpixtab_9000.rmap", "Hand made for the crds-fs demo",
         parkey=(("DETECTOR",), DATE_KEYS), reffile_format="TABLE", reffile_switch="NONE",
         reffile_required="NONE", rmap_relevance="ALWAYS",
         rows=(
             (("FUV",), (("1996-10-01 00:00:00", "hst_cos_bpixtab_9901.fits"),)),
             (("NUV",), (("1996-10-01 00:00:00", "hst_cos_bpixtab_9902.fits"),)),
         )),
)

_ACS_TYPES = {
    "bpixtab": "hst_acs_bpixtab_9000.rmap",
    "darkfile": "hst_acs_darkfile_9000.rmap",
    "flshfile": "hst_acs_flshfile_9000.rmap",
    "pfltfile": "hst_acs_pfltfile_9000.rmap",
    "shadfile": "N/A",
    "spottab": "N/A",
}
_WFC3_TYPES = {
    "bpixtab": "hst_wfc3_bpixtab_9000.rmap",
    "darkfile": "hst_wfc3_darkfile_9000.rmap",
    "flshfile": "N/A",
    "pfltfile": "hst_wfc3_pfltfile_9000.rmap",
}

IMAPS: tuple[Imap, ...] = (
    Imap("hst_acs_9000.imap", "Hand made for the crds-fs demo", _ACS_TYPES),
    Imap("hst_acs_9001.imap", "hst_acs_9000.imap",
         {**_ACS_TYPES, "darkfile": "hst_acs_darkfile_9001.rmap"}),
    Imap("hst_wfc3_9000.imap", "Hand made for the crds-fs demo", _WFC3_TYPES),
    Imap("hst_wfc3_9001.imap", "hst_wfc3_9000.imap",
         {**_WFC3_TYPES, "bpixtab": "hst_wfc3_bpixtab_9001.rmap"}),
    Imap("hst_cos_9000.imap", "Hand made for the crds-fs demo", {
        "bpixtab": "hst_cos_bpixtab_9000.rmap",
        "flatfile": "hst_cos_flatfile_9000.rmap",
        "spottab": "N/A",
    }),
)

PMAPS: tuple[Pmap, ...] = (
    Pmap(OLD_CONTEXT, "Hand made for the crds-fs demo",
         "crds-fs demo observatory, first context (not real HST rules).",
         {"ACS": "hst_acs_9000.imap", "COS": "hst_cos_9000.imap", "WFC3": "hst_wfc3_9000.imap"}),
    Pmap(OPERATIONAL_CONTEXT, OLD_CONTEXT,
         "crds-fs demo observatory: new ACS WFC dark and WFC3 UVIS bad pixel table "
         "(not real HST rules).",
         {"ACS": "hst_acs_9001.imap", "COS": "hst_cos_9000.imap", "WFC3": "hst_wfc3_9001.imap"}),
)

# --- datasets -----------------------------------------------------------------------------


def _same(answers: dict[str, str], **changes: str) -> dict[str, dict[str, str]]:
    """Expected answers under both contexts, with *changes* applying to the old one only."""
    return {OPERATIONAL_CONTEXT: dict(answers), OLD_CONTEXT: {**answers, **changes}}


_ACS_SWITCHES = {"DARKCORR": "PERFORM", "FLATCORR": "PERFORM", "DQICORR": "PERFORM",
                 "FLSHCORR": "OMIT"}
_WFC3_SWITCHES = {"DARKCORR": "PERFORM", "FLATCORR": "PERFORM", "DQICORR": "PERFORM",
                  "FLSHCORR": "OMIT"}
_COS_SWITCHES = {"FLATCORR": "PERFORM", "DQICORR": "PERFORM"}

DATASETS: tuple[Dataset, ...] = (
    Dataset("j9demo01q_raw.fits", {
        "INSTRUME": "ACS", "DETECTOR": "WFC", "CCDAMP": "ABCD", "CCDGAIN": 2.0,
        "FILTER1": "F606W", "FILTER2": "CLEAR2L", "OBSTYPE": "IMAGING",
        "FLASHCUR": "OFF", "SHUTRPOS": "A", "DATE-OBS": "2017-06-01", "TIME-OBS": "12:00:00",
        **_ACS_SWITCHES,
    }, _same({
        "bpixtab": "hst_acs_bpixtab_9304.fits",
        "darkfile": "hst_acs_darkfile_9106.fits",
        "flshfile": NA,
        "pfltfile": "hst_acs_pfltfile_9201.fits",
        "shadfile": NA,
        "spottab": NA,
    }, darkfile="hst_acs_darkfile_9105.fits"),
        "ACS/WFC F606W: the big flat and (hst_9001 only) the big 2016 dark"),
    Dataset("j9demo02q_raw.fits", {
        "INSTRUME": "ACS", "DETECTOR": "HRC", "CCDAMP": "C", "CCDGAIN": 2.0,
        "FILTER1": "CLEAR1S", "FILTER2": "F330W", "OBSTYPE": "IMAGING",
        "FLASHCUR": "LOW", "SHUTRPOS": "A", "DATE-OBS": "2004-05-01", "TIME-OBS": "03:30:00",
        **_ACS_SWITCHES, "FLSHCORR": "PERFORM",
    }, _same({
        "bpixtab": "hst_acs_bpixtab_9301.fits",
        "darkfile": "hst_acs_darkfile_9101.fits",
        "flshfile": "hst_acs_flshfile_9401.fits",
        "pfltfile": "hst_acs_pfltfile_9203.fits",
        "shadfile": NA,
        "spottab": NA,
    }), "ACS/HRC with post-flash: alternatives 'A|B' and a float match value"),
    Dataset("j9demo03q_raw.fits", {
        "INSTRUME": "ACS", "DETECTOR": "SBC", "FILTER1": "F122M", "FILTER2": "N/A",
        "OBSTYPE": "IMAGING", "DATE-OBS": "2008-07-01", "TIME-OBS": "08:15:00",
        **_ACS_SWITCHES,
    }, _same({
        "bpixtab": "hst_acs_bpixtab_9302.fits",
        "darkfile": "hst_acs_darkfile_9102.fits",
        "flshfile": NA,
        "pfltfile": "NOT FOUND  parameter='DETECTOR' value='SBC' is not in ['HRC', 'WFC']",
        "shadfile": NA,
        "spottab": NA,
    }), "ACS/SBC: no flat for SBC in the rules (NOT FOUND), N/A match columns"),
    Dataset("i9demo01q_raw.fits", {
        "INSTRUME": "WFC3", "DETECTOR": "UVIS", "CCDAMP": "ABCD", "CCDGAIN": 1.5,
        "FILTER": "F606W", "DATE-OBS": "2014-03-01", "TIME-OBS": "22:10:05",
        **_WFC3_SWITCHES,
    }, _same({
        "bpixtab": "hst_wfc3_bpixtab_9702.fits",
        "darkfile": "hst_wfc3_darkfile_9502.fits",
        "flshfile": NA,
        "pfltfile": "hst_wfc3_pfltfile_9601.fits",
    }, bpixtab="hst_wfc3_bpixtab_9701.fits"), "WFC3/UVIS: the bad pixel table differs by context"),
    Dataset("i9demo02q_raw.fits", {
        "INSTRUME": "WFC3", "DETECTOR": "IR", "CCDAMP": "ABCD", "CCDGAIN": 2.5,
        "SAMP_SEQ": "SPARS50", "FILTER": "F160W", "DATE-OBS": "2015-08-01",
        "TIME-OBS": "01:02:03", **_WFC3_SWITCHES,
    }, _same({
        "bpixtab": "hst_wfc3_bpixtab_9703.fits",
        "darkfile": "hst_wfc3_darkfile_9503.fits",
        "flshfile": NA,
        "pfltfile": "hst_wfc3_pfltfile_9603.fits",
    }), "WFC3/IR: parkey relevance blanks CCDAMP"),
    Dataset("l9demo01q_rawtag.fits", {
        "INSTRUME": "COS", "DETECTOR": "FUV", "OPT_ELEM": "G130M",
        "DATE-OBS": "2011-03-01", "TIME-OBS": "10:00:00", **_COS_SWITCHES,
    }, _same({
        "bpixtab": "hst_cos_bpixtab_9901.fits",
        "flatfile": "hst_cos_flatfile_9801.fits",
        "spottab": NA,
    }), "COS/FUV"),
    Dataset("l9demo02q_rawtag.fits", {
        "INSTRUME": "COS", "DETECTOR": "NUV", "OPT_ELEM": "G230L",
        "DATE-OBS": "2008-01-01", "TIME-OBS": "00:00:00", **_COS_SWITCHES,
    }, _same({
        "bpixtab": "hst_cos_bpixtab_9902.fits",
        "flatfile": NO_MATCH,
        "spottab": NA,
    }), "COS/NUV dated before the first NUV flat: NOT FOUND No match found."),
)

BAD_FILES: tuple[str, ...] = (BAD_REFERENCE,)
