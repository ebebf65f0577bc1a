"""Roman: the engine equals crds 14.0.3 on every shared Roman case, errors included.

/work/shared/crds-data/cases/roman_000N.jsonl (550 cases, 62 whole-call errors) over the
test-cache closures in mappings/roman/; crds loads the context inside getrecommendations, so
a context that cannot load (roman_0007.pmap: one rmap's header sha1sum is wrong) is every
case's answer.  The ASDF exposures' expected.json gives crds' answers for the headers crds
read from them, with and without CRDS_IGNORE_MAPPING_CHECKSUM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crds_fs.bestrefs.sources import cache_root_source
from crds_fs.engine import crds_name_of
from crds_fs.errors import ChecksumError, UnknownInstrumentError
from tests.test_engine_cases import describe_mismatch, run_case

CONTEXTS = [f"roman_000{n}.pmap" for n in range(1, 8)]
COUNTS = {"roman_0001.pmap": (10, 10), "roman_0002.pmap": (10, 1), "roman_0003.pmap": (20, 1),
          "roman_0004.pmap": (60, 1), "roman_0005.pmap": (120, 5), "roman_0006.pmap": (300, 8),
          "roman_0007.pmap": (30, 30)}


def describe(exc: BaseException) -> str:
    return f"{crds_name_of(exc)}: {str(exc).rstrip()}"


def answer(source: Any, context: str, header: dict[str, Any], *,
           ignore_checksum: bool = False) -> Any:
    """crds.getrecommendations' answer: the context is loaded inside the call."""
    try:
        loaded = source.load_context(context, ignore_checksum=ignore_checksum)
    except Exception as exc:  # noqa: BLE001 - a whole-call failure is an answer
        return describe(exc)
    return run_case(loaded, source.bad_files, {"header": header})


@pytest.mark.shared
@pytest.mark.parametrize("context", CONTEXTS)
def test_every_roman_case_agrees(shared_data: Path, context: str) -> None:
    source = cache_root_source(shared_data, "roman")
    mismatches: list[str] = []
    total = errors = 0
    path = shared_data / "cases" / context.replace(".pmap", ".jsonl")
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            case = json.loads(line)
            assert case["context"] == context and case["observatory"] == "roman"
            total += 1
            if "expected" in case:
                expected = case["expected"]
            else:
                errors += 1
                expected = str(case["expected_error"]).rstrip()
            got = answer(source, context, case["header"])
            if got != expected:
                mismatches.append(describe_mismatch(number, case, got, expected))
    assert (total, errors) == COUNTS[context]
    assert not mismatches, (f"{len(mismatches)} of {total} cases disagree with crds:\n"
                            + "\n".join(mismatches[:5]))


@pytest.mark.shared
def test_roman_whole_call_error_classes(shared_data: Path) -> None:
    """The exception classes behind the error answers (crds' names and ours)."""
    source = cache_root_source(shared_data, "roman")
    with pytest.raises(ChecksumError) as checksum:
        source.load_context("roman_0007.pmap").best_references(
            {"ROMAN.META.INSTRUMENT.NAME": "WFI"})
    assert crds_name_of(checksum.value) == "ChecksumError"
    assert "roman_wfi_epsf_0001.rmap" in str(checksum.value)
    with pytest.raises(UnknownInstrumentError) as unknown:
        source.load_context("roman_0001.pmap").best_references(
            {"ROMAN.META.INSTRUMENT.NAME": "WFI"})
    assert crds_name_of(unknown.value) == "CrdsUnknownInstrumentError"
    with pytest.raises(Exception) as missing:
        source.load_context("roman_0006.pmap").best_references({"ROMAN.META.FILENAME": "x"})
    assert crds_name_of(missing.value) == "CrdsError"


@pytest.mark.shared
def test_roman_dataset_headers_match_expected(shared_data: Path) -> None:
    """crds' answers for the headers it read from the Roman ASDF exposures, including the
    roman_0007 answers when mapping checksums are ignored (epsf rows, N/A detector row)."""
    source = cache_root_source(shared_data, "roman")
    folder = shared_data / "cases" / "roman-datasets"
    expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    assert len(expected) == 4
    for name, info in expected.items():
        header = info["crds_header"]
        for context, refs in info["expected"].items():
            assert answer(source, context, header) == refs, (name, context)
        for context, refs in info["expected_ignore_mapping_checksum"].items():
            got = answer(source, context, header, ignore_checksum=True)
            assert got == refs, (name, context)
