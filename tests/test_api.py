"""The seed's Python API (crds_fs.api) against the demo observatory served by `crds-fs serve`.

No mount here: the API works on the cache directly (mount paths are tested in
tests/test_bestrefs_view.py).  Every answer is compared with what the demo's rules intend.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crds_fs import api
from crds_fs.demo import spec
from crds_fs.errors import LookupFailure, OfflineError

CONTEXT = spec.OPERATIONAL_CONTEXT
EXPECTED = {d.file_name: d.expected for d in spec.DATASETS}


def found(answers: dict[str, str]) -> dict[str, str]:
    """The reftypes of an expected answer that name a file."""
    return {t: v for t, v in answers.items() if not v.startswith("NOT FOUND")}


def sha1(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def server(serve, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CRDS_FS_DATASETS_INDEX", str(tmp_path / "datasets-index"))
    return serve(demo_root, "--datasets", str(demo_root / "datasets"),
                 "--index", str(tmp_path / "serve-index"))


@pytest.fixture
def env(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CRDS_SERVER_URL / CRDS_FS_CACHE pointing at the served demo and a fresh cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CRDS_SERVER_URL", server.url)
    monkeypatch.setenv("CRDS_FS_CACHE", str(cache))
    monkeypatch.delenv("CRDS_OBSERVATORY", raising=False)
    monkeypatch.delenv("CRDS_CONTEXT", raising=False)
    yield cache
    api.close_sessions()


def test_seed_example(env: Path, demo_root: Path) -> None:
    """The issue's example, verbatim: a dict of existing, verified local paths."""
    from crds_fs import cache_best_references_for_dataset

    dataset = demo_root / "datasets" / "j9demo01q_raw.fits"
    result = cache_best_references_for_dataset("hst_9001.pmap", str(dataset))
    expected = found(EXPECTED["j9demo01q_raw.fits"][CONTEXT])
    assert {t: Path(p).name for t, p in result.items()} == expected
    for reftype, path in result.items():
        local = Path(path)
        assert local.is_file() and local.is_relative_to(env)
        assert sha1(local) == sha1(demo_root / "references" / "hst" / local.name), reftype
    # Step 1: every mapping of the context is cached too.
    assert (env / "mappings" / "hst" / CONTEXT).is_file()
    assert len(list((env / "mappings" / "hst").glob("*.rmap"))) >= 3


@pytest.mark.parametrize("engine", ["remote", "local"])
def test_every_demo_dataset_both_engines(env: Path, demo_root: Path, engine: str) -> None:
    session = api.session(engine=engine)
    for dataset in spec.DATASETS:
        expected = dataset.expected[CONTEXT]
        path = demo_root / "datasets" / dataset.file_name
        header = session.get_dataset_header(CONTEXT, path)
        assert session.get_best_references(CONTEXT, header) == expected, dataset.file_name
        result = session.cache_best_references_for_dataset(CONTEXT, path, strict=False)
        assert {t: Path(p).name for t, p in result.items()} == found(expected)


def test_old_context_and_operational_default(env: Path, demo_root: Path) -> None:
    dataset = demo_root / "datasets" / "i9demo01q_raw.fits"
    old = api.cache_best_references_for_dataset(spec.OLD_CONTEXT, dataset)
    new = api.cache_best_references_for_dataset(None, dataset)  # the operational context
    assert Path(old["bpixtab"]).name == "hst_wfc3_bpixtab_9701.fits"
    assert Path(new["bpixtab"]).name == "hst_wfc3_bpixtab_9702.fits"


def test_not_found_is_an_error_unless_not_strict(env: Path, demo_root: Path) -> None:
    dataset = demo_root / "datasets" / "j9demo03q_raw.fits"
    with pytest.raises(api.ReferenceLookupError, match="j9demo03q_raw.fits.*'pfltfile'"):
        api.cache_best_references_for_dataset(CONTEXT, dataset)
    # Nothing was downloaded for the failing call (crds raises before fetching).
    assert not (env / "references" / "hst" / "hst_acs_darkfile_9102.fits").exists()
    result = api.cache_best_references_for_dataset(CONTEXT, dataset, strict=False)
    assert sorted(result) == ["bpixtab", "darkfile"]


def test_get_best_references_and_cache_references(env: Path) -> None:
    header = dict(spec.DATASETS[1].keywords)  # ACS/HRC, values not yet strings
    bestrefs = api.get_best_references(CONTEXT, header)
    assert bestrefs == EXPECTED["j9demo02q_raw.fits"][CONTEXT]
    assert api.get_best_references(CONTEXT, header, ["darkfile"]) == {
        "darkfile": "hst_acs_darkfile_9101.fits"}
    paths = api.cache_references(CONTEXT, bestrefs)
    assert sorted(paths) == sorted(found(bestrefs)) and all(Path(p).is_file()
                                                            for p in paths.values())
    with pytest.raises(LookupFailure, match="FOO|instrument"):
        api.get_best_references(CONTEXT, {**header, "INSTRUME": "FOO"})


def test_dump_mappings(env: Path, demo_root: Path) -> None:
    paths = api.dump_mappings(CONTEXT)
    assert CONTEXT in paths and spec.OLD_CONTEXT not in paths
    assert all(name.startswith("hst") for name in paths)
    for name, path in paths.items():
        assert Path(path).read_bytes() == (demo_root / "mappings" / "hst" / name).read_bytes()


def test_offline_answers_locally_from_the_cache(env: Path, demo_root: Path, server) -> None:
    dataset = demo_root / "datasets" / "i9demo02q_raw.fits"
    online = api.cache_best_references_for_dataset(CONTEXT, dataset)
    api.close_sessions()
    server.stop()
    offline = api.cache_best_references_for_dataset(CONTEXT, dataset, offline=True)
    assert offline == online
    assert api.session(offline=True).resolver.use_remote() is False
    # A reference never fetched cannot appear offline: the error says so.
    with pytest.raises(OfflineError):
        api.cache_best_references_for_dataset(CONTEXT, demo_root / "datasets" /
                                              "l9demo01q_rawtag.fits", offline=True)


def test_explicit_server_and_cache_arguments(server, demo_root: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRDS_SERVER_URL", "http://127.0.0.1:9")  # never used
    cache = tmp_path / "explicit-cache"
    try:
        result = api.cache_best_references_for_dataset(
            CONTEXT, demo_root / "datasets" / "l9demo01q_rawtag.fits", server=server.url,
            cache_dir=cache, engine="local")
    finally:
        api.close_sessions()
    assert result == {t: str(cache / "references" / "hst" / n)
                      for t, n in found(EXPECTED["l9demo01q_rawtag.fits"][CONTEXT]).items()}


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crds_fs.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=120)


def test_cli_dataset_ids_and_cache_references(server, demo_root: Path, tmp_path: Path) -> None:
    env = {"CRDS_SERVER_URL": server.url, "CRDS_FS_CACHE": str(tmp_path / "cli-cache")}
    dataset = demo_root / "datasets" / "l9demo01q_rawtag.fits"
    result = run_cli("bestrefs", "--context", CONTEXT, "--remote", "--json",
                     "--cache-references", "J9DEMO01Q", "i9demo02q", "NOSUCH01Q", str(dataset),
                     env=env)
    assert result.returncode == 1, result.stderr  # the unknown ID's lookup failed
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["input"] for r in records] == ["J9DEMO01Q", "i9demo02q", "NOSUCH01Q",
                                             str(dataset)]
    for record, name in zip(records, ["j9demo01q_raw.fits", "i9demo02q_raw.fits", None,
                                      "l9demo01q_rawtag.fits"], strict=True):
        if name is None:
            assert "NOSUCH01Q" in record["error"] and "bestrefs" not in record
            continue
        expected = EXPECTED[name][CONTEXT]
        assert record["bestrefs"] == expected
        assert {t: Path(p).name for t, p in record["paths"].items()} == found(expected)
        assert all(Path(p).is_file() for p in record["paths"].values())
    table = run_cli("bestrefs", "--context", CONTEXT, "--remote", "--cache-references",
                    "J9DEMO02Q", env=env)
    assert str(tmp_path / "cli-cache" / "references" / "hst" / "hst_acs_flshfile_9401.fits") \
        in table.stdout
    # Computed locally, the ID's header still comes from the server.
    local = run_cli("bestrefs", "--context", CONTEXT, "--mappings", str(demo_root), "--json",
                    "J9DEMO01Q", env=env)
    assert local.returncode == 0, local.stderr
    assert json.loads(local.stdout)["bestrefs"] == EXPECTED["j9demo01q_raw.fits"][CONTEXT]


@pytest.mark.parametrize("engine", ["remote", "local"])
def test_bad_reference_fails_like_crds(env: Path, engine: str) -> None:
    """A header selecting the reference on the server's bad files list is an error, whether
    the server (check done client-side, as crds does) or the local engine decides."""
    header = {**spec.DATASETS[0].keywords, "DATE-OBS": "2007-01-01"}
    with pytest.raises(LookupFailure, match="CrdsBadReferenceError.*" + spec.BAD_REFERENCE):
        api.get_best_references(CONTEXT, header, engine=engine)
