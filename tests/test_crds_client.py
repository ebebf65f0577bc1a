"""The real crds 14.0.3 client against `crds-fs serve` over the shared test data.

crds memoises server info and configuration in module globals, so every crds call runs in
its own subprocess with its own environment (CRDS_SERVER_URL, CRDS_PATH, ...).
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

import pytest

from tests.helpers import ServerProcess

pytestmark = [
    pytest.mark.shared,
    pytest.mark.crds,
    pytest.mark.skipif(importlib.util.find_spec("crds") is None,
                       reason="the crds package is not installed"),
]

EXPECTED_CLOSURE = {"hst": ("hst_0729.pmap", 137), "jwst": ("jwst_0541.pmap", 124)}


@pytest.fixture(scope="module")
def mirror(shared_data: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    """`crds-fs serve` over the read-only shared data (index kept in a temp dir)."""
    base = tmp_path_factory.mktemp("crds-mirror")
    server = ServerProcess(shared_data, "--index", str(base / "index"), log_dir=base)
    server.start()
    yield server
    server.stop()


def crds_env(server_url: str, cache: Path, observatory: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    env.update(CRDS_SERVER_URL=server_url, CRDS_PATH=str(cache))
    if observatory:
        env["CRDS_OBSERVATORY"] = observatory
    return env


def run_crds(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=240)


def test_crds_api_calls(mirror: ServerProcess, tmp_path: Path) -> None:
    script = (
        "import json, crds.client.api as api\n"
        "info = api.get_server_info()\n"
        "names = api.get_mapping_names('hst_0729.pmap')\n"
        "print(json.dumps({'observatory': info['observatory'],\n"
        "    'operational': info['operational_context'],\n"
        "    'metadata': len(api.get_download_metadata()),\n"
        "    'names': names,\n"
        "    'default': api.get_default_context('hst'),\n"
        "    'refs': len(api.get_reference_names('hst_0729.pmap'))}))\n"
    )
    done = run_crds(["-c", script], crds_env(mirror.url, tmp_path / "cache", "hst"), tmp_path)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["observatory"] == "hst" and answer["operational"] == "hst_0729.pmap"
    assert answer["default"] == "hst_0729.pmap"
    assert answer["metadata"] == 137  # every mapping served (no references in shared data)
    assert len(answer["names"]) == 137 and answer["names"][0] == "hst_0729.pmap"
    assert answer["names"] == sorted(answer["names"])
    assert answer["refs"] == 20530


@pytest.mark.parametrize("observatory, url_suffix", [("hst", ""), ("jwst", "/jwst")])
def test_crds_sync_downloads_and_verifies(mirror: ServerProcess, shared_data: Path,
                                         tmp_path: Path, observatory: str,
                                         url_suffix: str) -> None:
    """`python -m crds.sync --contexts <ctx> --check-files`: every mapping arrives, verified
    by crds against our size+sha1, byte-identical to the served originals.  JWST goes
    through the /jwst URL prefix with no CRDS_OBSERVATORY (crds guesses it from the URL)."""
    context, count = EXPECTED_CLOSURE[observatory]
    cache = tmp_path / "cache"
    env = crds_env(mirror.url + url_suffix, cache, observatory if not url_suffix else None)
    done = run_crds(["-m", "crds.sync", "--contexts", context, "--check-files"], env, tmp_path)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "CRDS - INFO -  0 errors" in log, log
    assert "ERROR" not in log, log
    assert f"Syncing {count} files" in log or log.count("Fetching") == count, log
    fetched = sorted(p.name for p in (cache / "mappings" / observatory).iterdir())
    originals = sorted(p.name for p in (shared_data / "mappings" / observatory).iterdir())
    assert len(fetched) == count and fetched == originals
    match, mismatch, errors = filecmp.cmpfiles(cache / "mappings" / observatory,
                                               shared_data / "mappings" / observatory,
                                               fetched, shallow=False)
    assert (len(match), mismatch, errors) == (count, [], [])
    config = (cache / "config" / observatory / "server_config").read_text()
    assert f"'observatory': '{observatory}'" in config and mirror.url in config


def test_crds_context_by_date_end_to_end(mirror: ServerProcess, shared_data: Path,
                                         tmp_path: Path) -> None:
    """CRDS_CONTEXT=hst-2019-09-10T00:00:00 (a date-based context): crds asks our server
    get_context_by_date, syncs the answer's mappings from it and computes locally."""
    with open(shared_data / "cases" / "hst_0729.jsonl", encoding="utf-8") as lines:
        case = json.loads(next(lines))
    script = (
        "import json, sys, crds\n"
        "header = json.loads(sys.argv[1])\n"
        "print(json.dumps({'context': crds.get_context_name('hst'),\n"
        "    'refs': crds.getrecommendations(header, observatory='hst')}))\n"
    )
    env = crds_env(mirror.url, tmp_path / "cache", "hst")
    env["CRDS_CONTEXT"] = "hst-2019-09-10T00:00:00"
    done = run_crds(["-c", script, json.dumps(case["header"])], env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["context"] == "hst_0729.pmap"  # in use from 2019-09-09 16:09:51
    assert answer["refs"] == case["expected"]
    assert len(list((tmp_path / "cache" / "mappings" / "hst").iterdir())) == 137
