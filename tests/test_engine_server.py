"""`crds-fs serve` answers best-reference RPCs with the engine, checked by the real crds client.

A real `crds-fs serve` subprocess serves the shared data; the real crds 14.0.3 client runs in
another subprocess in remote mode (``CRDS_MODE=remote``, empty cache) and must reproduce the
shared cases' expected answers (computed offline by crds).  The batched and parkeys RPCs are
checked with plain JSON-RPC.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from crds_fs.client.payload import crds_decode

pytestmark = [pytest.mark.shared, pytest.mark.timeout(240)]

CLIENT_SCRIPT = r"""
import json, sys
import crds
from crds.client import api

cases_path, context, observatory, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cases = []
with open(cases_path) as lines:
    for line in lines:
        cases.append(json.loads(line))
        if len(cases) >= limit:
            break
mismatches = []
for number, case in enumerate(cases, 1):
    try:
        got = crds.getrecommendations(case["header"], context=context, observatory=observatory)
    except Exception as exc:
        got = type(exc).__name__ + ": " + str(exc)
    expected = case.get("expected", case.get("expected_error"))
    if isinstance(expected, str) and isinstance(got, str):
        # remote mode: crds wraps the server's error as CrdsLookupError(<its message>)
        name, _, message = expected.partition(": ")
        if name in got and message in got:
            continue
    if got != expected:
        mismatches.append({"case": number, "got": got, "expected": expected})
try:
    parkeys = api.get_required_parkeys(context)
except Exception as exc:
    parkeys = str(exc)
print(json.dumps({"checked": len(cases), "mismatches": mismatches[:5],
                  "count": len(mismatches), "parkeys": parkeys}))
"""


def rpc(url: str, method: str, *params: Any) -> Any:
    """Plain JSON-RPC POST; large results arrive crds_encode'd, so decode them."""
    body = {"jsonrpc": "1.0", "method": method, "params": list(params), "id": 1}
    answer = requests.post(url + "/json/", json=body, timeout=60).json()
    answer["result"] = crds_decode(answer.get("result"))
    return answer


def crds_env(server_url: str, observatory: str, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    env.update(CRDS_MODE="remote", CRDS_SERVER_URL=server_url, CRDS_OBSERVATORY=observatory,
               CRDS_PATH=str(cache))
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(proxy, None)
    return env


@pytest.fixture(scope="module")
def crds_available() -> None:
    pytest.importorskip("crds")


@pytest.mark.crds
@pytest.mark.parametrize(("observatory", "context", "limit"), [
    ("hst", "hst_0729.pmap", 300), ("jwst", "jwst_0541.pmap", 100),
    ("roman", "roman_0006.pmap", 300), ("roman", "roman_0007.pmap", 30)])
def test_real_crds_client_gets_the_expected_answers(
        crds_available: None, shared_data: Path, serve: Any, tmp_path: Path,
        observatory: str, context: str, limit: int) -> None:
    server = serve(shared_data, "--index", str(tmp_path / "index"))
    url = server.url if observatory == "hst" else f"{server.url}/{observatory}"
    cases = shared_data / "cases" / f"{context.replace('.pmap', '')}.jsonl"
    (tmp_path / "crds-cache").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, str(cases), context, observatory, str(limit)],
        env=crds_env(url, observatory, tmp_path / "crds-cache"), capture_output=True,
        text=True, timeout=200, check=False)
    assert done.returncode == 0, done.stderr[-3000:] + server.log()[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["checked"] == limit
    assert result["count"] == 0, json.dumps(result["mismatches"], indent=1)[:4000]
    if context == "roman_0007.pmap":  # one rmap's header checksum is wrong: crds refuses it
        assert "ChecksumError: sha1sum mismatch in 'roman_wfi_epsf_0001.rmap'" in (
            result["parkeys"])
        return
    instrument = {"hst": "acs", "jwst": "nirspec", "roman": "wfi"}[observatory]
    assert result["parkeys"][instrument][0] in (
        "INSTRUME", "META.INSTRUMENT.NAME", "ROMAN.META.INSTRUMENT.NAME")


def test_batched_and_parkeys_rpcs(shared_data: Path, serve: Any, tmp_path: Path) -> None:
    server = serve(shared_data, "--index", str(tmp_path / "index"))
    with open(shared_data / "cases" / "hst_0729.jsonl", encoding="utf-8") as lines:
        cases = [json.loads(next(lines)) for _ in range(20)]
    headers = {f"id{i}": case["header"] for i, case in enumerate(cases)}
    headers["broken"] = {"INSTRUME": "FOO"}
    answer = rpc(server.url, "get_best_references_by_header_map", "hst_0729.pmap", headers, None)
    assert answer["error"] is None, answer
    result = answer["result"]
    for i, case in enumerate(cases):
        assert result[f"id{i}"] == [True, case["expected"]]
    assert result["broken"] == [
        False, "FAILED: Unknown instrument 'foo' for context 'hst_0729.pmap'"]
    picked = rpc(server.url, "get_best_references", "hst_0729.pmap", cases[0]["header"],
                 ["biasfile", "darkfile"])["result"]
    assert set(picked) == {"biasfile", "darkfile"}
    assert picked == {k: cases[0]["expected"][k] for k in picked}
    error = rpc(server.url, "get_best_references", "hst_0729.pmap", {"INSTRUME": "FOO"}, None)
    assert error["result"] is None
    assert "CrdsUnknownInstrumentError" in json.dumps(error["error"])
    bad_header = rpc(server.url, "get_best_references", "hst_0729.pmap", {"A": [1]}, None)
    assert bad_header["error"] and "Bad value" in json.dumps(bad_header["error"])
    parkeys = rpc(server.url, "get_required_parkeys", "hst_0729.pmap")["result"]
    assert parkeys["acs"][0] == "INSTRUME" and "BIASCORR" in parkeys["acs"]
    rmap = rpc(server.url, "get_required_parkeys", "hst_acs_biasfile_0345.rmap")["result"]
    assert rmap[:3] == ["DETECTOR", "CCDAMP", "CCDGAIN"] and "BIASCORR" in rmap
    imap = rpc(server.url, "get_required_parkeys", "hst_acs_0421.imap")["result"]
    assert imap == sorted(imap) and "REFTYPE" in imap
