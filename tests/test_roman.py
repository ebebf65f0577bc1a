"""Roman end to end: `crds-fs serve` over the shared Roman folder, the real crds 14.0.3
client syncing from it, mounts of it (references byte-identical, bestrefs/ on the Roman ASDF
exposures), `crds-fs bestrefs` on them, and a mount over the real 1,672-file Roman catalog.

The exposures' expected answers are crds' own (cases/roman-datasets/expected.json).  Tests
comparing dataset headers depend on crds' reading of ASDF times (fractional seconds
dropped).
"""

from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crds_fs.client.payload import crds_decode
from tests.catalog_server import catalog_server, read_snapshot
from tests.helpers import ServerProcess

pytestmark = [pytest.mark.shared]
needs_crds = pytest.mark.skipif(importlib.util.find_spec("crds") is None,
                                reason="the crds package is not installed")

ROMAN_REFERENCES = 5
ROMAN_MAPPINGS = 19


@pytest.fixture(scope="module")
def roman_server(shared_data: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[ServerProcess]:
    """`crds-fs serve` over the shared data (hst, jwst and roman; /json/ answers hst)."""
    base = tmp_path_factory.mktemp("roman-serve")
    server = ServerProcess(shared_data, "--index", str(base / "index"), log_dir=base)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def expected(shared_data: Path) -> dict[str, Any]:
    return json.loads((shared_data / "cases" / "roman-datasets" / "expected.json").read_text())


def crds_env(server_url: str, cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    env.update(CRDS_SERVER_URL=server_url, CRDS_PATH=str(cache), **extra)
    return env


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=240, check=False)


# --- the real crds client syncs from crds-fs serve -------------------------------------------

CHECK_SYNCED = r"""
import json, sys
import crds
from crds import data_file
out = {}
path = sys.argv[1]
header = data_file.get_header(path)
for context in ("roman_0006.pmap", "roman_0007.pmap"):
    try:
        out[context] = crds.getrecommendations(header, context=context, observatory="roman")
    except Exception as exc:
        out[context] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(out))
"""


@needs_crds
@pytest.mark.timeout(400)
def test_crds_syncs_roman_0007_with_sha1_checks(roman_server: ServerProcess, shared_data: Path,
                                                expected: dict, tmp_path: Path) -> None:
    """`crds.sync --contexts roman_0007.pmap --fetch-references --check-files
    --check-sha1sum` through http://HOST:PORT/roman (observatory guessed from the URL).

    What crds does with roman_0007's wrong rmap header checksum: sync only checks whole-file
    sizes and sha1s (which our catalog gets right), so it succeeds with 0 errors; best
    references under the context afterwards fail with the ChecksumError of expected.json
    (and succeed with CRDS_IGNORE_MAPPING_CHECKSUM=1)."""
    cache = tmp_path / "cache"
    env = crds_env(roman_server.url + "/roman", cache)
    done = run(["-m", "crds.sync", "--contexts", "roman_0007.pmap", "--fetch-references",
                "--check-files", "--check-sha1sum"], env, tmp_path)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "CRDS - INFO -  0 errors" in log and "ERROR" not in log, log
    assert "Syncing 7 files" in log and f"Syncing {ROMAN_REFERENCES} files" in log, log
    mappings = sorted(p.name for p in (cache / "mappings" / "roman").iterdir())
    assert len(mappings) == 7 and "roman_wfi_epsf_0001.rmap" in mappings
    _, mismatch, errors = filecmp.cmpfiles(cache / "mappings" / "roman",
                                           shared_data / "mappings" / "roman", mappings,
                                           shallow=False)
    assert (mismatch, errors) == ([], [])
    # Roman caches use crds' "instrument" layout: references/roman/wfi/<name>
    fetched = sorted((cache / "references" / "roman").rglob("*.asdf"))
    assert len(fetched) == ROMAN_REFERENCES
    for path in fetched:
        assert path.read_bytes() == (shared_data / "references" / "roman" / path.name
                                     ).read_bytes(), path.name
    dataset = "r0000101001001001001_0001_wfi01_grism_uncal.asdf"
    local = crds_env(roman_server.url + "/roman", cache, CRDS_MODE="local")
    check = run(["-c", CHECK_SYNCED,
                 str(shared_data / "cases" / "roman-datasets" / dataset)], local, tmp_path)
    assert check.returncode == 0, check.stderr[-3000:]
    got = json.loads(check.stdout.strip().splitlines()[-1])
    want = expected[dataset]["expected"]
    assert got["roman_0007.pmap"].startswith("ChecksumError")
    assert got["roman_0007.pmap"] == want["roman_0007.pmap"]
    assert got["roman_0006.pmap"] == want["roman_0006.pmap"]
    relaxed = run(["-c", CHECK_SYNCED,
                   str(shared_data / "cases" / "roman-datasets" / dataset)],
                  {**local, "CRDS_IGNORE_MAPPING_CHECKSUM": "1"}, tmp_path)
    assert relaxed.returncode == 0, relaxed.stderr[-3000:]
    got = json.loads(relaxed.stdout.strip().splitlines()[-1])
    assert got["roman_0007.pmap"] == (
        expected[dataset]["expected_ignore_mapping_checksum"]["roman_0007.pmap"])


# --- mounts of the Roman folder ----------------------------------------------------------------


def test_mount_reads_roman_references_byte_identical(roman_server: ServerProcess,
                                                     shared_data: Path, mounter: Any) -> None:
    """`--observatory roman` against the multi-observatory server (found at /roman)."""
    mount = mounter(roman_server.url, "--observatory", "roman")
    assert mount.stats()["mount"]["context"] == "roman_0006.pmap"
    refs = shared_data / "references" / "roman"
    listed = {entry.name: entry.stat().st_size
              for entry in os.scandir(mount.path("references", "roman"))}
    assert listed == {p.name: p.stat().st_size for p in refs.iterdir()}
    assert len(listed) == ROMAN_REFERENCES
    for name in listed:
        assert mount.path("references", "roman", name).read_bytes() == (
            refs / name).read_bytes(), name
    mappings = sorted(os.listdir(mount.path("mappings", "roman")))
    assert mappings == sorted(os.listdir(shared_data / "mappings" / "roman"))
    assert len(mappings) == ROMAN_MAPPINGS
    name = "roman_wfi_epsf_0001.rmap"  # the one with the wrong header checksum: served as is
    assert mount.path("mappings", "roman", name).read_bytes() == (
        shared_data / "mappings" / "roman" / name).read_bytes()


def dataset_names(expected: dict) -> dict[str, str]:
    """bestrefs/ directory name (file name without extension) -> file name."""
    return {Path(name).stem: name for name in expected}


@pytest.mark.parametrize("engine", ["remote", "local"])
def test_bestrefs_view_of_roman_datasets(roman_server: ServerProcess, shared_data: Path,
                                         expected: dict, mounter: Any, engine: str) -> None:
    """bestrefs/<exposure>/ under roman_0006.pmap: one symlink per reference crds names,
    bestrefs.json with every outcome and the header as crds reads it.  The header check
    (and the 2020-01-01T00:00:00.000 exposure's answers) need crds' ASDF time reading:
    fractional seconds dropped."""
    datasets = shared_data / "cases" / "roman-datasets"
    mount = mounter(roman_server.url + "/roman", "--context", "roman_0006.pmap",
                    "--datasets", str(datasets), "--engine", engine)
    names = dataset_names(expected)
    assert set(names) <= set(os.listdir(mount.path("bestrefs")))
    for directory, file_name in names.items():
        want = expected[file_name]["expected"]["roman_0006.pmap"]
        folder = mount.path("bestrefs", directory)
        document = json.loads((folder / "bestrefs.json").read_text())
        assert document["error"] is None, document
        assert document["bestrefs"] == want, (file_name, document["bestrefs"])
        header = {k: v for k, v in document["header"].items()
                  if k in expected[file_name]["header"]}
        assert header == expected[file_name]["header"], file_name
        links = {entry.name: os.readlink(entry.path) for entry in os.scandir(folder)
                 if entry.is_symlink() and entry.name != "dataset"}
        assert links == {reftype: f"../../references/roman/{ref}" for reftype, ref in
                         want.items() if not ref.startswith("NOT FOUND")}, file_name
        for reftype, target in links.items():  # the links open the served references
            assert (folder / reftype).read_bytes() == (
                shared_data / "references" / "roman" / Path(target).name).read_bytes()


# --- crds-fs bestrefs on the Roman exposures ---------------------------------------------------


def crds_fs_bestrefs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crds_fs.cli", "bestrefs", "--json", *args],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("context", ["roman_0005.pmap", "roman_0006.pmap", "roman_0007.pmap"])
@pytest.mark.parametrize("where", ["local", "remote"])
def test_crds_fs_bestrefs_equals_expected(roman_server: ServerProcess, shared_data: Path,
                                          expected: dict, context: str, where: str) -> None:
    """`crds-fs bestrefs` (local engine over the folder, or remote via our server) answers
    each exposure as crds does; roman_0007.pmap fails as crds fails (ChecksumError)."""
    datasets = shared_data / "cases" / "roman-datasets"
    files = [str(datasets / name) for name in expected]
    source = (["--mappings", str(shared_data)] if where == "local"
              else ["--remote", "--server", roman_server.url + "/roman"])
    done = crds_fs_bestrefs("--context", context, *source, *files)
    wanted = {name: expected[name]["expected"][context] for name in expected}
    if all(isinstance(w, str) for w in wanted.values()):  # a whole-context failure
        message = next(iter(wanted.values())).partition(": ")[2]
        output = done.stdout + done.stderr
        assert message in output, output
        if where == "local":
            assert done.returncode == 1, output
        return
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    got = {Path(line["input"]).name: line.get("bestrefs", line.get("error")) for line in lines}
    assert got == wanted


# --- a mount over the real 1,672-file Roman catalog ---------------------------------------------


def test_mount_lists_the_real_roman_catalog_without_downloading(shared_data: Path,
                                                                mounter: Any) -> None:
    """The real roman server-info snapshot (roman_0055.pmap, 207 mappings, 1,465 references)
    served by a test server that serves no files: every name is listed with its catalog
    size, and not one byte is downloaded."""
    info = read_snapshot(shared_data / "server-info" / "roman" / "server_config")
    catalog = crds_decode(info["download_metadata"])
    assert len(catalog) == 1672
    with catalog_server(info) as server:
        mount = mounter(server.url, "--observatory", "roman")
        assert mount.stats()["mount"]["context"] == "roman_0055.pmap"
        listed: dict[str, int] = {}
        for kind in ("mappings", "references"):
            for entry in os.scandir(mount.path(kind, "roman")):
                listed[entry.name] = entry.stat().st_size
        assert listed == {name: int(record["size"]) for name, record in catalog.items()}
        assert sum(name.endswith("map") for name in listed) == 207
        assert server.downloads == [], server.downloads[:5]
