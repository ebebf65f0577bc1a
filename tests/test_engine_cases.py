"""Every shared differential case (answers produced by crds 14.0.3) must be reproduced exactly.

/work/shared/crds-data/cases/{hst_0729,jwst_0541}.jsonl hold 5000 headers with crds'
``getrecommendations`` result (or whole-call error).  The engine runs them over the shared
mappings with the shared server_config's bad-files list and must agree on 100%.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crds_fs.bestrefs.sources import cache_root_source
from crds_fs.engine import crds_name_of

CASE_FILES = [("hst_0729.jsonl", "hst", "hst_0729.pmap"),
              ("jwst_0541.jsonl", "jwst", "jwst_0541.pmap")]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
    return value


def run_case(context: Any, bad_files: frozenset[str], case: dict[str, Any]) -> Any:
    """The engine's answer in the cases' format: a result dict or "<Class>: <message>"."""
    try:
        return _plain(context.best_references(case["header"], bad_files=bad_files))
    except Exception as exc:  # a whole-call failure is an answer too
        return f"{crds_name_of(exc)}: {str(exc).rstrip()}"


def describe_mismatch(number: int, case: dict[str, Any], got: Any, expected: Any) -> str:
    lines = [f"case {number}: header {json.dumps(case['header'])}"]
    if isinstance(got, dict) and isinstance(expected, dict):
        for key in sorted(set(got) | set(expected)):
            if got.get(key) != expected.get(key):
                lines.append(f"    {key}: got {got.get(key, '<absent>')!r}")
                lines.append(f"    {' ' * len(key)}  exp {expected.get(key, '<absent>')!r}")
    else:
        lines.append(f"    got {got!r}\n    exp {expected!r}")
    return "\n".join(lines)


@pytest.mark.shared
@pytest.mark.parametrize(("case_file", "observatory", "context_name"), CASE_FILES)
def test_every_shared_case_agrees(shared_data: Path, case_file: str, observatory: str,
                                  context_name: str) -> None:
    source = cache_root_source(shared_data, observatory)
    assert source.bad_files, "the shared server_config should list bad files"
    context = source.load_context(context_name)
    mismatches: list[str] = []
    total = 0
    with open(shared_data / "cases" / case_file, encoding="utf-8") as cases:
        for number, line in enumerate(cases, start=1):
            case = json.loads(line)
            assert case["context"] == context_name
            total += 1
            expected = case.get("expected")
            if expected is None:
                expected = str(case["expected_error"]).rstrip()
            got = run_case(context, source.bad_files, case)
            if got != expected:
                mismatches.append(describe_mismatch(number, case, got, expected))
    assert total >= 2000
    assert not mismatches, (
        f"{len(mismatches)} of {total} cases disagree with crds; first ones:\n"
        + "\n".join(mismatches[:5])
    )


@pytest.mark.shared
def test_worked_hst_example_and_closure(shared_data: Path) -> None:
    """The worked example of the reference (5.10) and the context's closure sizes."""
    context = cache_root_source(shared_data, "hst").load_context("hst_0729.pmap")
    header = {
        "INSTRUME": "ACS", "DETECTOR": "WFC", "CCDAMP": "ABCD", "CCDGAIN": "2.0",
        "APERTURE": "WFC1", "NAXIS1": "4144", "NAXIS2": "2068", "LTV1": "24.0", "LTV2": "0.0",
        "XCORNER": "0", "YCORNER": "0", "CCDCHIP": "-999", "DATE-OBS": "2010-01-01",
        "TIME-OBS": "00:00:00", "OBSTYPE": "IMAGING", "FILTER1": "F606W", "FILTER2": "CLEAR2L",
        "BIASCORR": "PERFORM", "DARKCORR": "PERFORM", "FLSHCORR": "OMIT", "SHUTRPOS": "A",
        "FW1OFFST": "0", "FW2OFFST": "0", "FWSOFFST": "0", "FLASHCUR": "OFF",
        "DRIZCORR": "PERFORM", "PCTECORR": "PERFORM",
    }
    refs = context.best_references(header)
    assert refs["biasfile"] == "25815083j_bia.fits"  # precondition hook + 3-way UseAfter merge
    assert refs["darkfile"] == "25815086j_drk.fits"
    assert refs["flshfile"] == "NOT FOUND n/a"
    assert refs["atodtab"] == "NOT FOUND No match found."
    assert context.best_references({**header, "BIASCORR": "OMIT"})["biasfile"] == "NOT FOUND n/a"
    sbc = context.best_references({**header, "DETECTOR": "SBC"})
    assert sbc["darkfile"] == "NOT FOUND  parameter='DETECTOR' value='SBC' is not in ['HRC', 'WFC']"
    for date in ("2010/01/01", "01/02/2010"):
        assert context.best_references({**header, "DATE-OBS": date})["biasfile"].endswith(".fits")
    names = context.mapping_names()
    assert len(names) == 137 and names[0] == "hst_0729.pmap"
    assert len(context.reference_names()) == 20530
    acs = context.required_parkeys()["acs"]
    assert acs[0] == "INSTRUME" and "REFTYPE" in acs and "BIASCORR" in acs
    assert acs[1:] == sorted(acs[1:])
