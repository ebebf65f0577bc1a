"""Hostile or broken mappings and headers: each is a clear error or crds' answer, nothing runs.

Mapping text is only ever parsed (``ast.parse``) and converted by a whitelist; these tests
try code injection through every place text flows (mapping bodies, header values,
expressions, hook names, header keys/values at lookup time) and assert that a sentinel file
the payload would create never appears.  Size, nesting and structure limits keep time and
memory bounded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from crds_fs.bestrefs.sources import folder_loader, loader_from_callable
from crds_fs.engine import Context, parse_mapping, set_mapping_checksum
from crds_fs.engine.parser import MAX_MAPPING_CHARS
from crds_fs.errors import ChecksumError, MappingFormatError, MissingMappingError
from tests.test_engine_core import Rules, lookup, mapping_text, one_rmap

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    path = tmp_path / "sentinel"
    yield path
    assert not path.exists(), "an injected payload was executed"


def payloads(sentinel: Path) -> dict[str, str]:
    target = str(sentinel)
    return {
        "import_call": f"__import__('os').system('touch {target}')",
        "open_call": f"open({target!r}, 'w')",
        "attribute": "().__class__.__bases__[0].__subclasses__()",
        "lambda": "(lambda: 1)()",
        "list_comprehension": "[x for x in (1, 2)]",
        "dict_comprehension": "{x: x for x in (1, 2)}",
        "generator": "(x for x in (1, 2))",
        "fstring": "f'{1+1}'",
        "subscript": "('a', 'b')[0]",
        "name": "os",
        "binary_op": "'a' + 'b'",
        "set_literal": "{'a', 'b'}",
        "starred_dict": "{**{'a': 1}}",
        "walrus": "(x := 1)",
        "exec_call": f"exec(\"open({target!r}, 'w')\")",
        "eval_call": "eval('1')",
        "ellipsis": "...",
        "bytes": "b'abc'",
        "not_op": "not 'x'",
        "yield": "(yield)",
        "await": "(await x)",
    }


def rmap_with(value: str) -> str:
    return mapping_text(
        {"derived_from": "x", "filekind": "THING", "instrument": "INST",
         "mapping": "REFERENCE", "name": "tobs_inst_thing_0001.rmap", "observatory": "TOBS",
         "parkey": (("MODE",),)},
        f"Match({{'A' : {value}}})",
    )


@pytest.mark.parametrize("kind", sorted(payloads(Path("/x")).keys()))
def test_injected_expressions_in_selector_are_refused(kind: str, sentinel: Path) -> None:
    text = rmap_with(payloads(sentinel)[kind])
    with pytest.raises(MappingFormatError) as info:
        parse_mapping(text, "tobs_inst_thing_0001.rmap")
    assert "tobs_inst_thing_0001.rmap" in str(info.value)
    assert "line" in str(info.value)


@pytest.mark.parametrize("kind", sorted(payloads(Path("/x")).keys()))
def test_injected_expressions_in_header_are_refused(kind: str, sentinel: Path) -> None:
    text = "header = {'name' : " + payloads(sentinel)[kind] + "}\nselector = {}\n"
    with pytest.raises(MappingFormatError, match="evil.pmap"):
        parse_mapping(text, "evil.pmap")


@pytest.mark.parametrize("statement", [
    "import os",
    "from os import system",
    "def f():\n    return 1",
    "class C:\n    pass",
    "for i in ():\n    pass",
    "while False:\n    pass",
    "if True:\n    header = {}",
    "with open('x') as f:\n    pass",
    "x = 1",
    "header, selector = {}, {}",
    "header.update({})",
    "del header",
    "assert True",
    "raise SystemExit",
    "global header",
    "header += {}",
    "print('hi')",
])
def test_forbidden_statements(statement: str, sentinel: Path) -> None:
    text = f"header = {{'name' : 'a.pmap'}}\nselector = {{}}\n{statement}\n"
    with pytest.raises(MappingFormatError, match="a.pmap"):
        parse_mapping(text, "a.pmap")


@pytest.mark.parametrize(("text", "fragment"), [
    ("header = {'a' : (1, 2\nselector = {}\n", "syntax error"),
    ("header = {'a' : 1}}\nselector = {}\n", "syntax error"),
    ("header = {'a' : 1}\n", "no 'selector"),
    ("selector = {}\n", "no 'header"),
    ("header = []\nselector = {}\n", "'header' must be a dict"),
    ("header = {}\nselector = 'x'\n", "'selector' must be"),
    ("header = {}\nselector = Foo({})\n", "Selector 'Foo' is not one of supported Selectors"),
    ("header = {}\nselector = Match({}, {})\n", "exactly one dict literal"),
    ("header = {}\nselector = Match(x={})\n", "exactly one dict literal"),
    ("header = {}\nselector = Match([])\n", "exactly one dict literal"),
    ("header = {}\nselector = os.Match({})\n", "is not one of supported"),
    ("header = {('a', [1]) : 1}\nselector = {}\n", "unhashable"),
    ("header = {'a' : Match({})}\nselector = {}\n", "Illegal"),
    ("header = {}\nselector = {Match({}) : 1}\n", "Illegal"),
    ("header = {}\x00\nselector = {}\n", "null bytes"),
])
def test_malformed_text_is_a_clear_error(text: str, fragment: str) -> None:
    with pytest.raises(MappingFormatError, match=fragment) as info:
        parse_mapping(text, "bad.rmap")
    assert "bad.rmap" in str(info.value)


def test_duplicate_keys_last_wins_like_python() -> None:
    doc = parse_mapping(
        "header = {'a' : 1, 'a' : 2}\n"
        "selector = Match({('X', 1) : 'first', ('Y', 2) : 'y', ('X', 1.0) : 'last'})\n",
        "dup.rmap",
    )
    assert doc.header == {"a": 2}
    entries = list(doc.selector.entries.items())  # type: ignore[union-attr]
    assert entries == [(("X", 1), "last"), (("Y", 2), "y")]
    context = one_rmap((("A", "B"),), "Match({('X', 1) : 'first', ('X', 1.0) : 'last'})")
    assert lookup(context, A="X", B="1") == "last"


def test_keys_equal_after_conditioning_are_a_load_error() -> None:
    context = one_rmap((("A",),), "Match({'wfc' : 'a.fits', 'WFC' : 'b.fits'})")
    with pytest.raises(MappingFormatError, match="appears more than once"):
        lookup(context, A="WFC")


def test_checksum_missing_and_wrong(sentinel: Path) -> None:
    rules = Rules()
    rules.rmap("inst", "thing", (("MODE",),), "Match({'A' : 'a.fits'})")
    rules.context()
    pmap = rules.texts["tobs_0001.pmap"]
    loader = loader_from_callable(rules.texts.__getitem__)
    rules.texts["tobs_0001.pmap"] = pmap.replace("'derived_from' : 'generated'",
                                                 "'derived_from' : 'tampered'")
    with pytest.raises(ChecksumError, match="sha1sum mismatch in 'tobs_0001.pmap'"):
        Context.load("tobs_0001.pmap", loader)
    assert Context.load("tobs_0001.pmap", loader, ignore_checksum=True).name == "tobs_0001.pmap"
    rules.texts["tobs_0001.pmap"] = "\n".join(
        line for line in pmap.splitlines() if "sha1sum" not in line) + "\n"
    with pytest.raises(ChecksumError, match="sha1sum is missing in 'tobs_0001.pmap'"):
        Context.load("tobs_0001.pmap", loader)


def test_huge_mapping_is_refused_quickly(tmp_path: Path) -> None:
    body = "".join(f"    '{2000 + i % 100}-01-01 00:00:{i % 60:02d}' : 'f{i}.fits',\n"
                   for i in range(50 * 1024 * 1024 // 40))
    text = "header = {'name' : 'big.rmap'}\nselector = UseAfter({\n" + body + "})\n"
    assert len(text) > 50 * 1024 * 1024 > MAX_MAPPING_CHARS
    started = time.monotonic()
    with pytest.raises(MappingFormatError, match="over the limit"):
        parse_mapping(text, "big.rmap")
    path = tmp_path / "big.rmap"
    path.write_text(text)
    with pytest.raises(MappingFormatError, match="over the limit"):
        parse_mapping(folder_loader(tmp_path)("big.rmap"), "big.rmap")
    assert time.monotonic() - started < 30


def test_deep_nesting_is_refused() -> None:
    nested = "(" * 150 + "1" + ",)" * 150
    with pytest.raises(MappingFormatError, match="nesting deeper|syntax error|cannot parse"):
        parse_mapping(f"header = {{'a' : {nested}}}\nselector = {{}}\n", "deep.pmap")
    very = "[" * 100_000 + "]" * 100_000
    with pytest.raises(MappingFormatError):
        parse_mapping(f"header = {{'a' : {very}}}\nselector = {{}}\n", "deeper.pmap")


def test_pmap_naming_itself_or_wrong_kinds_is_refused() -> None:
    rules = Rules()
    rules.rmap("inst", "thing", (("MODE",),), "Match({'A' : 'a.fits'})")
    rules.context()
    base = dict(rules.texts)
    loader = loader_from_callable(rules.texts.__getitem__)
    rules.texts["tobs_0001.pmap"] = mapping_text(
        {"derived_from": "x", "mapping": "PIPELINE", "name": "tobs_0001.pmap",
         "observatory": "TOBS", "parkey": ("INSTRUME",)}, "{'INST' : 'tobs_0001.pmap'}")
    with pytest.raises(MappingFormatError, match="not a .imap mapping"):
        Context.load("tobs_0001.pmap", loader)
    rules.texts.update(base)
    rules.texts["tobs_inst_0001.imap"] = mapping_text(
        {"derived_from": "x", "instrument": "INST", "mapping": "INSTRUMENT",
         "name": "tobs_inst_0001.imap", "observatory": "TOBS", "parkey": ("REFTYPE",)},
        "{'thing' : 'tobs_inst_0001.imap'}")
    context = Context.load("tobs_0001.pmap", loader)
    with pytest.raises(MappingFormatError, match="not a .rmap mapping"):
        context.compute_best_references({"INSTRUME": "INST"})


def test_missing_child_and_bad_names(tmp_path: Path) -> None:
    loader = folder_loader(tmp_path)
    for name in ("../etc/passwd", "/etc/passwd", ".hidden.rmap", "a/b.rmap", "x" * 500):
        with pytest.raises(MissingMappingError):
            loader(name)
    with pytest.raises(MissingMappingError, match="nope.pmap"):
        Context.load("nope.pmap", loader)


def test_expression_injection_in_rmap_header(sentinel: Path) -> None:
    for expression in (f"(__import__('os').system('touch {sentinel}'))",
                       "(DETECTOR.__class__)", "(lambda: 1)", "([x for x in DETECTOR])",
                       "(DETECTOR[0])", "(open('x'))"):
        context = one_rmap((("DETECTOR",),), "Match({'WFC' : 'a.fits'})",
                           rmap_relevance=expression)
        with pytest.raises(MappingFormatError, match="tobs_inst_thing_0001.rmap"):
            lookup(context, DETECTOR="WFC")


def test_hook_names_cannot_reach_arbitrary_functions(sentinel: Path) -> None:
    context = one_rmap((("DETECTOR",),), "Match({'WFC' : 'a.fits'})",
                       hooks={"precondition_header": "os.system",
                              "fallback_header": "__import__"})
    assert lookup(context, DETECTOR="WFC") == "a.fits"


def test_header_keys_and_values_are_only_data(sentinel: Path) -> None:
    context = one_rmap((("DETECTOR",),), "Match({'WFC' : 'a.fits', 'N/A' : 'na.fits'})")
    evil = f"__import__('os').system('touch {sentinel}')"
    refs = context.best_references({"INSTRUME": "INST", "DETECTOR": evil, evil: evil})
    assert refs == {"thing": "na.fits"}


def test_odd_header_values_and_keys() -> None:
    context = one_rmap((("DETECTOR", "GAIN"),), """Match({
        ('WFC', '2.0') : 'wfc.fits',
        ('HRC', 'N/A') : 'hrc.fits',
    })""")
    base = {"INSTRUME": "INST", "DETECTOR": "WFC", "GAIN": 2}
    assert context.best_references(base) == {"thing": "wfc.fits"}
    # non-simple values are dropped by crds' screening (then UNDEFINED)
    odd: dict[str, Any] = {**base, "GAIN": None}
    assert context.best_references(odd) == {"thing": "NOT FOUND No match found."}
    for value in ([1, 2], {"a": 1}, object()):
        assert context.best_references({**base, "GAIN": value}) == context.best_references(odd)
    assert context.best_references({**base, "DETECTOR": True})["thing"] == (
        "NOT FOUND  parameter='DETECTOR' value='T' is not in ['HRC', 'WFC']")
    unicode = context.best_references({**base, "DETECTOR": "wfc\u00e9\u4e2d"})
    assert unicode["thing"] == (
        "NOT FOUND  parameter='DETECTOR' value='WFC\u00c9\u4e2d' is not in ['HRC', 'WFC']")
    assert context.best_references({**base, "d\u00e9tecteur": "x"}) == {"thing": "wfc.fits"}
    many = {**base, **{f"KEY{i}": str(i) for i in range(10_000)}}
    started = time.monotonic()
    assert context.best_references(many) == {"thing": "wfc.fits"}
    assert time.monotonic() - started < 10
    assert context.best_references({"INSTRUME": "INST"}) == {
        "thing": "NOT FOUND  parameter='DETECTOR' value='UNDEFINED' is not in ['HRC', 'WFC']"}
    with pytest.raises(TypeError):
        context.best_references({1: "x", "INSTRUME": "INST"})  # type: ignore[dict-item]


def test_crlf_mapping_files_verify_like_crds(tmp_path: Path) -> None:
    rules = Rules()
    rules.rmap("inst", "thing", (("MODE",),), "Match({'A' : 'a.fits'})")
    rules.context()
    for name, text in rules.texts.items():
        (tmp_path / name).write_bytes(text.replace("\n", "\r\n").encode())
    context = Context.load("tobs_0001.pmap", folder_loader(tmp_path))
    assert context.compute_best_references({"INSTRUME": "INST", "MODE": "A"}) == {
        "thing": "a.fits"}


def test_set_mapping_checksum_round_trip() -> None:
    text = set_mapping_checksum("header = {\n    'sha1sum' : '0',\n}\nselector = {}\n")
    assert parse_mapping(text, "x.pmap").checksum_error is None


# --- hostile regexes (issue 9, "Also") ------------------------------------------------------


@pytest.mark.parametrize("pattern", ["((A|AA)+$)", "((a+)+b)", "((x*)*y)", "(.*.*.*.*Z)",
                                     "((a)\\1)", "(a{5000})"])
def test_catastrophic_regex_values_are_refused_at_load(pattern: str) -> None:
    """crds spends ~20 s per lookup on '((A|AA)+$)' with a 30-character value (x8 per 4
    characters); the engine refuses such Match values when the rmap is built."""
    context = one_rmap((("MODE",),), f"Match({{{pattern!r} : 'r.fits', 'B' : 'b.fits'}})")
    started = time.monotonic()
    with pytest.raises(MappingFormatError) as info:
        context.best_references({"INSTRUME": "INST", "MODE": "A" * 40 + "B"})
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "tobs_inst_thing_0001.rmap" in message and "is refused" in message
    assert pattern in message


def test_safe_regexes_still_match_and_long_values_are_bounded() -> None:
    context = one_rmap((("MODE",),), "Match({'(F1.*W)' : 'f1.fits', '(.*.*X)' : 'x.fits'})")
    assert lookup(context, MODE="F125W") == "f1.fits"
    assert lookup(context, MODE="AAAX") == "x.fits"
    started = time.monotonic()
    long_value = "A" * 100_000  # over MAX_REGEX_INPUT: never regex-matched
    assert lookup(context, MODE=long_value) == "NOT FOUND No match found."
    assert lookup(context, MODE="F1" + "W" * 300) == "NOT FOUND No match found."
    assert time.monotonic() - started < 5
