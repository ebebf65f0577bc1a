"""Unmodified crds 14.0.3 with CRDS_PATH pointing at a mount (crds-reference 3.5-3.7).

crds runs in a subprocess with CRDS_READONLY_CACHE=1: it reads config/<obs>/server_config
and the mappings through the mount, only stats references, and returns paths inside the
mount; reading those paths then fetches the references lazily.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ServerProcess
from tests.mounting import Mounter, needs_fuse

pytestmark = [pytest.mark.fuse, pytest.mark.crds, needs_fuse]

CRDS_SCRIPT = r"""
import json, sys
import crds
from astropy.io import fits

results = []
for call in json.load(sys.stdin):
    try:
        if call["fn"] == "getrecommendations":
            answer = crds.getrecommendations(call["header"], context=call["context"],
                                             observatory="hst")
        else:
            header = dict(fits.getheader(call["dataset"]))
            header = {k: v for k, v in header.items() if isinstance(v, (str, int, float))}
            answer = crds.getreferences(header, reftypes=call["reftypes"],
                                        context=call["context"], observatory="hst")
    except Exception as exc:
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    results.append(answer)
print("RESULTS " + json.dumps(results))
"""


def run_crds(mountpoint: Path, server_url: str, calls: list[dict[str, Any]]) -> list[Any]:
    """Run crds in a fresh interpreter against the mount; returns one answer per call."""
    if importlib.util.find_spec("crds") is None:  # not imported here: it sets CRDS_* vars
        pytest.skip("needs the crds package")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    env.update(CRDS_PATH=str(mountpoint), CRDS_READONLY_CACHE="1",
               CRDS_SERVER_URL=server_url, CRDS_OBSERVATORY="hst",
               CRDS_ALLOW_BAD_REFERENCES="1", CRDS_ALLOW_BAD_RULES="1")
    result = subprocess.run([sys.executable, "-c", CRDS_SCRIPT], input=json.dumps(calls),
                            capture_output=True, text=True, env=env, timeout=240)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    assert result.returncode == 0 and lines, result.stdout + result.stderr
    return json.loads(lines[-1].removeprefix("RESULTS "))


@pytest.fixture(scope="module")
def shared_server(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("shared-serve")
    server = ServerProcess(shared_data, "--index", str(logs / "index"), "--observatory", "hst",
                           log_dir=logs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_crds_getrecommendations_on_shared_cases(mounter: Mounter, shared_server,
                                                 shared_data: Path) -> None:
    cases = []
    with open(shared_data / "cases" / "hst_0729.jsonl", encoding="utf-8") as lines:
        for line in lines:
            case = json.loads(line)
            if "expected" in case:
                cases.append(case)
            if len(cases) == 40:
                break
    mount = mounter(shared_server.url, "--observatory", "hst")
    calls = [{"fn": "getrecommendations", "header": case["header"], "context": case["context"]}
             for case in cases]
    answers = run_crds(mount.mountpoint, shared_server.url, calls)
    for case, answer in zip(cases, answers, strict=True):
        assert answer == case["expected"], case["header"]
    assert mount.stats()["cache"]["cached_files"] > 0  # the mappings crds read came through us


def test_crds_getreferences_returns_mount_paths_read_lazily(mounter: Mounter, demo_proxy,
                                                            demo_root: Path) -> None:
    info = json.loads((demo_root / "demo-info.json").read_text())
    context = info["operational_context"]
    calls, wanted = [], []
    for dataset, facts in sorted(info["datasets"].items()):
        expected = facts["expected"][context]
        found = {t: n for t, n in expected.items() if not n.startswith("NOT FOUND")}
        if found:
            calls.append({"fn": "getreferences", "dataset": str(demo_root / "datasets" / dataset),
                          "reftypes": sorted(found), "context": context})
            wanted.append(found)
    assert calls
    mount = mounter(demo_proxy.url)
    answers = run_crds(mount.mountpoint, demo_proxy.url, calls)
    refdir = mount.mountpoint / "references" / "hst"
    names = set()
    for found, answer in zip(wanted, answers, strict=True):
        assert answer == {t: str(refdir / n) for t, n in found.items()}
        names.update(found.values())
    for name in names:  # crds only stat'ed them: nothing was downloaded
        assert demo_proxy.count("GET", f"/references/hst/{name}") == 0
    for name in sorted(names):
        served = demo_root / "references" / "hst" / name
        assert (refdir / name).read_bytes() == served.read_bytes()
        assert demo_proxy.count("GET", f"/references/hst/{name}") == 1
    assert mount.stats()["cache"]["cached_files"] >= len(names)
