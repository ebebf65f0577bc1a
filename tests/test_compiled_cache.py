"""The compiled-context cache: restored mappings equal built ones, damage is rebuilt.

Real files on disk (a temporary cache folder per test), the real shared mappings and their
crds-computed cases; the CLI as a subprocess.
"""

from __future__ import annotations

import json
import logging
import marshal
import os
import pickle
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from crds_fs.bestrefs import compiled as disk
from crds_fs.bestrefs.compiled import CompiledCache, compiled_cache, default_directory
from crds_fs.bestrefs.sources import MappingSource, cache_root_loader, read_bad_files
from crds_fs.engine import compiled, parse_mapping, set_mapping_checksum
from crds_fs.engine.rules import ReferenceRules, build_rules
from crds_fs.engine.selectors import export_selector
from tests.test_engine_cases import run_case

REPO = Path(__file__).resolve().parents[1]
CONTEXTS = [("hst", "hst_0729.pmap"), ("jwst", "jwst_0541.pmap"), ("roman", "roman_0006.pmap")]


def source(root: Path, observatory: str, cache: CompiledCache | None) -> MappingSource:
    """A source with its own memo identity, so every call really loads again."""
    return MappingSource(cache_root_loader(root, observatory), ("test", uuid.uuid4().hex),
                         f"test source {observatory}", read_bad_files(root, observatory),
                         cache)


def cases(root: Path, context: str) -> list[dict[str, Any]]:
    path = root / "cases" / context.replace(".pmap", ".jsonl")
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def expected(case: dict[str, Any]) -> Any:
    return case["expected"] if "expected" in case else str(case["expected_error"]).rstrip()


def answers_agree(src: MappingSource, context: str, all_cases: list[dict[str, Any]]) -> int:
    """Number of cases whose answer differs from crds' (loading the context as crds does,
    inside the call)."""
    try:
        loaded = src.load_context(context)
    except Exception as exc:  # noqa: BLE001 - a load failure is every case's answer
        loaded = exc
    wrong = 0
    for case in all_cases:
        if isinstance(loaded, Exception):
            from crds_fs.engine import crds_name_of
            got: Any = f"{crds_name_of(loaded)}: {str(loaded).rstrip()}"
        else:
            got = run_case(loaded, src.bad_files, case)
        wrong += got != expected(case)
    return wrong


def entry_files(cache: CompiledCache) -> list[Path]:
    return sorted(cache.folder.iterdir()) if cache.folder.is_dir() else []


@pytest.mark.shared
@pytest.mark.parametrize(("observatory", "context"), CONTEXTS)
def test_restored_mappings_equal_built_ones(shared_data: Path, observatory: str,
                                            context: str, tmp_path: Path) -> None:
    """Every mapping of the closure: the restored selector tree is the built one."""
    cache = CompiledCache(tmp_path)
    names = source(shared_data, observatory, cache).load_context(context).mapping_names()
    cache.flush()
    loader = cache_root_loader(shared_data, observatory)
    rmaps = 0
    for name in names:
        text = loader(name)
        built = build_rules(parse_mapping(text, name))
        data = cache.get(compiled.text_key(text))
        assert data is not None, f"{name} was not cached"
        doc, prebuilt = compiled.unpack(data, name)
        restored = build_rules(doc, prebuilt)
        assert type(restored) is type(built) and restored.raw_header == built.raw_header
        if isinstance(built, ReferenceRules):
            rmaps += 1
            assert prebuilt is not None and doc.selector is None  # the built form was kept
            assert export_selector(restored.selector) == export_selector(built.selector), name
            assert restored.required_parkeys == built.required_parkeys
            assert restored.reference_names() == built.reference_names()
        else:
            assert restored.selections == built.selections
    assert rmaps == len(names) - 1 - len({n for n in names if n.endswith(".imap")})


@pytest.mark.shared
@pytest.mark.timeout(300)
def test_cold_and_warm_loads_answer_every_shared_case_like_crds(shared_data: Path,
                                                               tmp_path: Path) -> None:
    cache = CompiledCache(tmp_path / "compiled")
    for observatory, context in [*CONTEXTS, ("roman", "roman_0007.pmap")]:
        every = cases(shared_data, context)
        assert answers_agree(source(shared_data, observatory, cache), context, every) == 0
        cache.flush()
        writes, hits = cache.writes, cache.hits
        assert answers_agree(source(shared_data, observatory, cache), context, every) == 0
        cache.flush()
        assert cache.writes == writes, "a warm load wrote entries again"
        assert cache.hits > hits, "a warm load did not use the cache"
    assert cache.damaged == 0
    # no temporary files left behind: every file is a finished entry named by its sha1
    assert all(len(p.name) == 40 and not p.name.startswith(".") for p in entry_files(cache))


@pytest.mark.shared
@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage", "pickle",
                                    "other_version", "marshal_of_other_shape"])
def test_damaged_entries_are_rebuilt(shared_data: Path, tmp_path: Path, damage: str,
                                     sentinel_free: Path) -> None:
    context = "roman_0006.pmap"
    every = cases(shared_data, context)
    cache = CompiledCache(tmp_path / "compiled")
    assert answers_agree(source(shared_data, "roman", cache), context, every) == 0
    cache.flush()
    files = entry_files(cache)
    assert len(files) == 6  # pmap, imap, 4 rmaps
    pristine = {p: p.read_bytes() for p in files}
    for path, data in pristine.items():
        path.write_bytes(_damaged(data, damage, sentinel_free))
    fresh = CompiledCache(tmp_path / "compiled")
    assert answers_agree(source(shared_data, "roman", fresh), context, every) == 0
    fresh.flush()
    assert fresh.damaged == 6 and fresh.writes == 6
    assert {p: p.read_bytes() for p in entry_files(fresh)} == pristine  # rewritten intact
    again = CompiledCache(tmp_path / "compiled")
    assert answers_agree(source(shared_data, "roman", again), context, every) == 0
    again.flush()
    assert again.damaged == 0 and again.hits == 6 and again.writes == 0


@pytest.fixture
def sentinel_free(tmp_path: Path) -> Path:
    """A file a malicious entry would create if it were ever executed/unpickled."""
    path = tmp_path / "sentinel"
    yield path
    assert not path.exists(), "a cache entry was executed"


class _Payload:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (str(self.path), "w"))


def _damaged(data: bytes, how: str, sentinel: Path) -> bytes:
    if how == "flip":
        middle = len(data) // 2
        return data[:middle] + bytes([data[middle] ^ 0x40]) + data[middle + 1:]
    if how == "truncate":
        return data[: len(data) // 2]
    if how == "empty":
        return b""
    if how == "garbage":
        return os.urandom(len(data))
    if how == "pickle":
        return pickle.dumps(_Payload(sentinel))
    if how == "other_version":
        return data.replace(compiled.FORMAT_TAG.encode("ascii"), b"v0-m0-py00", 1)
    # right header and digest, but a payload of another shape
    payload = marshal.dumps(("not", "a", "mapping"))
    import hashlib
    head = compiled.MAGIC + compiled.FORMAT_TAG.encode("ascii") + b"\n"
    return head + hashlib.blake2b(payload, digest_size=32).digest() + payload


@pytest.mark.shared
def test_changed_mapping_text_is_a_new_entry(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(shared_data / "mappings" / "roman", root / "mappings" / "roman")
    header = {"ROMAN.META.INSTRUMENT.NAME": "WFI", "ROMAN.META.INSTRUMENT.DETECTOR": "WFI01",
              "ROMAN.META.EXPOSURE.TYPE": "WFI_IMAGE",
              "ROMAN.META.INSTRUMENT.OPTICAL_ELEMENT": "F158",
              "ROMAN.META.EXPOSURE.START_TIME": "2026-10-15T08:30:00"}
    cache = CompiledCache(tmp_path / "compiled")
    before = source(root, "roman", cache).load_context("roman_0006.pmap")
    dark = before.best_references(header)["dark"]
    assert dark.endswith(".asdf")
    rmap = root / "mappings" / "roman" / "roman_wfi_dark_0001.rmap"
    rmap.write_text(set_mapping_checksum(rmap.read_text().replace(dark, "edited_dark.asdf")))
    after = source(root, "roman", cache).load_context("roman_0006.pmap")
    assert after.best_references(header)["dark"] == "edited_dark.asdf"
    cache.flush()
    assert len(entry_files(cache)) == 7


def test_unwritable_cache_still_loads_and_warns_once(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from tests.test_engine_core import Rules, lookup
    blocker = tmp_path / "compiled"
    blocker.write_text("a file where the cache folder should be")
    cache = CompiledCache(blocker)
    rules = Rules()
    rules.rmap("inst", "thing", (("A",),), "Match({'X' : 'x.fits', 'Y' : 'y.fits'})")
    rules.rmap("inst", "other", (("A",),), "Match({'X' : 'ox.fits'})")
    with caplog.at_level(logging.WARNING, logger=disk.__name__):
        context = rules.context(compiled=cache)
        assert lookup(context, A="Y") == "y.fits"
        cache.flush()
    assert cache.writes == 0
    warnings = [r for r in caplog.records if "cannot write the compiled-context cache" in
                r.getMessage()]
    assert len(warnings) == 1 and str(cache.folder) in warnings[0].getMessage()


def test_location_and_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(disk.ENV_VAR, raising=False)
    monkeypatch.setenv("CRDS_FS_CACHE", str(tmp_path / "home"))
    assert default_directory() == tmp_path / "home" / "compiled"
    assert default_directory(tmp_path / "mine") == tmp_path / "mine" / "compiled"
    monkeypatch.setenv(disk.ENV_VAR, str(tmp_path / "elsewhere"))
    assert default_directory(tmp_path / "mine") == tmp_path / "elsewhere"
    cache = compiled_cache()
    assert cache is not None and cache is compiled_cache()  # one per folder per process
    assert cache.folder.parent == tmp_path / "elsewhere"
    assert cache.folder.name.startswith(compiled.FORMAT_TAG + "-")  # versioned folder
    monkeypatch.setenv(disk.ENV_VAR, "off")
    assert compiled_cache() is None
    with pytest.raises(ValueError):
        cache.path("../../etc/passwd")


@pytest.mark.shared
@pytest.mark.timeout(120)
def test_cli_fills_and_uses_the_cache_without_heavy_imports(shared_data: Path,
                                                            tmp_path: Path) -> None:
    """`crds-fs bestrefs --mappings` on a JSON header: cache written once, then used, and
    neither astropy nor the HTTP or server stacks are imported."""
    all_cases = [c for c in cases(shared_data, "roman_0006.pmap") if "expected" in c][:20]
    headers = tmp_path / "headers.jsonl"
    headers.write_text("".join(json.dumps(c["header"]) + "\n" for c in all_cases))
    env = {**os.environ, disk.ENV_VAR: str(tmp_path / "compiled"),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-X", "importtime", "-m", "crds_fs.cli", "bestrefs",
               "--context", "roman_0006.pmap", "--mappings", str(shared_data), "--json",
               str(headers)]
    runs = [subprocess.run(command, capture_output=True, text=True, env=env, timeout=100,
                           check=False) for _ in range(2)]
    for done in runs:
        assert done.returncode == 0, done.stderr[-2000:]
        got = [json.loads(line)["bestrefs"] for line in done.stdout.splitlines()]
        assert got == [c["expected"] for c in all_cases]
        imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()
                    if line.startswith("import time:")}
        heavy = {name for name in imported if name.split(".")[0] in
                 ("astropy", "asdf", "numpy", "requests", "urllib3", "uvicorn", "starlette",
                  "diskcache", "tqdm", "mfusepy")}
        assert not heavy, f"bestrefs on a JSON header imported {sorted(heavy)}"
    folders = list((tmp_path / "compiled").iterdir())
    assert len(folders) == 1 and len(list(folders[0].iterdir())) == 6


def test_long_running_process_writes_entries_after_the_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without flush() or exit (a mount or server), queued entries are written by the
    background thread once loading has been quiet for WRITE_DELAY."""
    import time

    from tests.test_engine_core import Rules, lookup
    monkeypatch.setattr(disk, "WRITE_DELAY", 0.2)
    cache = CompiledCache(tmp_path / "compiled")
    rules = Rules()
    rules.rmap("inst", "thing", (("A",),), "Match({'X' : 'x.fits'})")
    assert lookup(rules.context(compiled=cache), A="X") == "x.fits"
    deadline = time.monotonic() + 20
    while len(entry_files(cache)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(entry_files(cache)) == 3 and cache.writes == 3
