"""The CRDS protocol additions, each exercised by the real crds 14.0.3 client against
`crds-fs serve` (crds.client.api functions with CRDS_SERVER_URL set), plus the mount-side
behaviours (several observatories, mis-filed files, a missing operational context).

crds memoises server info in module globals, so every crds call runs in a subprocess.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from crds_fs.client.payload import crds_encode
from tests.catalog_server import catalog_server
from tests.helpers import TINY_REFERENCES, ServerProcess, make_tiny_root
from tests.mounting import fuse_available

needs_crds = pytest.mark.skipif(importlib.util.find_spec("crds") is None,
                                reason="the crds package is not installed")
needs_fuse = pytest.mark.skipif(not fuse_available(), reason="FUSE is not available")


@pytest.fixture(scope="module")
def mirror(shared_data: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    """`crds-fs serve` over the read-only shared data (HST, JWST and Roman)."""
    base = tmp_path_factory.mktemp("protocol-mirror")
    server = ServerProcess(shared_data, "--index", str(base / "index"), log_dir=base)
    server.start()
    yield server
    server.stop()


def run_client(script: str, server_url: str, tmp_path: Path, observatory: str | None = "hst",
               **extra_env: str) -> Any:
    """Run *script* (which prints one JSON line last) with crds pointed at *server_url*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    env.update(CRDS_SERVER_URL=server_url, CRDS_PATH=str(tmp_path / "crds-cache"), **extra_env)
    if observatory:
        env["CRDS_OBSERVATORY"] = observatory
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def history_of(shared_data: Path, obs: str) -> list[list[str]]:
    config = ast.literal_eval((shared_data / "config" / obs / "server_config").read_text())
    return config["context_history"]


def in_force(history: list[list[str]], date: str) -> str:
    """Oracle: the last context whose start (same text format as *date*) is <= date."""
    return [entry[1] for entry in sorted(history) if entry[0] <= date][-1]


CALLS = r"""
import json, sys
import crds.client.api as api
out = {}
for key, call in CALLS:
    try:
        out[key] = call()
    except Exception as exc:
        cause = exc.__cause__ or exc.__context__
        out[key] = ("ERROR " + type(exc).__name__ + ": " + str(exc)
                    + (" <- " + str(cause) if cause else ""))
print(json.dumps(out))
"""


def calls(*pairs: tuple[str, str]) -> str:
    """A client script evaluating each (key, python expression using `api`)."""
    body = ",\n".join(f"({key!r}, lambda: {expr})" for key, expr in pairs)
    return CALLS.replace("for key, call in CALLS:", f"for key, call in [{body}]:")


# --- context history, dates, build context -------------------------------------------------


@pytest.mark.shared
@needs_crds
def test_context_by_date_and_history(mirror: ServerProcess, shared_data: Path,
                                     tmp_path: Path) -> None:
    hst = history_of(shared_data, "hst")
    roman = history_of(shared_data, "roman")
    got = run_client(calls(
        ("date", "api.get_context_by_date('hst-2016-01-01', 'hst')"),
        ("datetime", "api.get_context_by_date('hst-2019-09-04T14:37:48', 'hst')"),
        ("before", "api.get_context_by_date('hst-2019-09-04T14:37:47', 'hst')"),
        ("acs", "api.get_context_by_date('hst-acs-2019-09-10T00:00:00', 'hst')"),
        ("bias", "api.get_context_by_date('hst-acs-biasfile-2019-09-10', 'hst')"),
        ("too_early", "api.get_context_by_date('hst-2001-01-01', 'hst')"),
        ("bad_instrument", "api.get_context_by_date('hst-foo-2019-09-10', 'hst')"),
        ("edit", "api.get_context_by_date('hst-acs-edit', 'hst')"),
        ("history", "api.get_context_history('hst')"),
        ("roman", "api.get_context_by_date('roman-2024-08-01', 'roman')"),
        ("roman_history", "api.get_context_history('roman')"),
    ), mirror.url, tmp_path)
    assert got["date"] == in_force(hst, "2016-01-01 00:00:00") == "hst_0379.pmap"
    assert got["datetime"] == "hst_0728.pmap"  # its era starts exactly then
    assert got["before"] == in_force(hst, "2019-09-04 14:37:47") != "hst_0728.pmap"
    assert got["acs"] == "hst_acs_0421.imap"  # what hst_0729.pmap selects for ACS
    assert got["bias"] == "hst_acs_biasfile_0345.rmap"
    assert got["too_early"].startswith("ERROR ServiceError") and "2013-07-02" in got["too_early"]
    assert "instrument 'foo' has no mapping" in got["bad_instrument"]
    assert got["edit"] == "hst_acs_0421.imap"
    assert [list(e) for e in got["history"]] == sorted(hst) and len(hst) == 398
    assert got["roman"] == "roman_0006.pmap"
    assert [list(e) for e in got["roman_history"]] == sorted(roman)


@pytest.mark.shared
@needs_crds
def test_date_based_context_in_other_calls(mirror: ServerProcess, shared_data: Path,
                                           tmp_path: Path) -> None:
    """A date spec is a context for every RPC (here best references and mapping names)."""
    with open(shared_data / "cases" / "hst_0729.jsonl", encoding="utf-8") as lines:
        case = json.loads(next(lines))
    got = run_client(calls(
        ("refs", f"api.get_best_references('hst-2019-09-10', {case['header']!r})"),
        ("names", "len(api.get_mapping_names('hst-2019-09-10T12:00:00'))"),
        ("symbolic", "api.get_mapping_names('hst-operational')[0]"),
    ), mirror.url, tmp_path)
    assert got["refs"] == case["expected"]
    assert got["names"] == 137 and got["symbolic"] == "hst_0729.pmap"


@pytest.mark.shared
@needs_crds
def test_build_and_default_context(mirror: ServerProcess, tmp_path: Path) -> None:
    got = run_client(calls(
        ("build", "api.S.get_build_context('jwst', '1.15.0')"),
        ("default_jwst", "api.get_default_context('jwst')"),
        ("build_state", "api.S.get_default_context('jwst', 'build')"),
        ("versions", "api.S.get_default_context('jwst', 'versions')"),
    ), mirror.url + "/jwst", tmp_path, observatory=None)
    # jwst's server_config names no build_context: the operational context answers
    assert got["build"] == got["default_jwst"] == got["build_state"] == "jwst_0541.pmap"
    assert got["versions"] == "jwst_0526.pmap"


@needs_crds
def test_build_context_from_server_config(tmp_path: Path) -> None:
    root = make_tiny_root(tmp_path / "root")
    config = root / "config" / "hst" / "server_config"
    info = ast.literal_eval(config.read_text())
    config.write_text(repr({**info, "build_context": "hst_0002.pmap"}))
    server = ServerProcess(root, "--index", str(tmp_path / "index"), log_dir=tmp_path)
    server.start()
    try:
        got = run_client(calls(
            ("build", "api.S.get_build_context('hst', '1.0')"),
            ("default", "api.get_default_context('hst')"),
            ("derived_history", "api.get_context_history('hst')"),
        ), server.url, tmp_path)
    finally:
        server.stop()
    assert got["build"] == "hst_0002.pmap" and got["default"] == "hst_0001.pmap"
    # no context_history in this server_config: derived from the two pmaps present
    assert sorted(e[1] for e in got["derived_history"]) == ["hst_0001.pmap", "hst_0002.pmap"]
    assert all(len(e) == 3 and e[0][:2] == "20" for e in got["derived_history"])


# --- URLs and methods a mirror does not offer ------------------------------------------------


@pytest.mark.shared
@needs_crds
def test_url_methods_and_not_offered(mirror: ServerProcess, shared_data: Path,
                                     tmp_path: Path) -> None:
    got = run_client(calls(
        ("url", "api.S.get_url('hst_0729.pmap', 'hst_acs_0421.imap')"),
        ("mapping_url", "api.S.get_mapping_url('hst_0729.pmap', 'hst_0729.pmap')"),
        ("known", "api.is_known_mapping('hst_0729.pmap')"),
        ("unknown", "api.is_known_mapping('hst_9999.pmap')"),
        ("remote", "api.get_remote_context('hst', 'pipeline')"),
        ("push", "api.push_remote_context('hst', 'operational', 'key', 'hst_0729.pmap')"),
        ("versions", "api.get_system_versions('1.0', None)"),
        ("jpoll", "api.jpoll_abort('key')"),
        ("aui", "api.get_aui_best_references('2020-01-01', ['X'])"),
        ("unknown_method", "api.S.no_such_method(1)"),
    ), mirror.url, tmp_path)
    assert got["url"] == f"{mirror.url}/unchecked_get/mappings/hst/hst_acs_0421.imap"
    assert requests.get(got["url"], timeout=10).content == (
        shared_data / "mappings" / "hst" / "hst_acs_0421.imap").read_bytes()
    assert got["mapping_url"].endswith("/unchecked_get/mappings/hst/hst_0729.pmap")
    assert got["known"] is True and got["unknown"] is False
    for key in ("remote", "push", "versions", "jpoll", "aui"):
        assert "is not offered by this server" in got[key], (key, got[key])
    assert "NotOfferedError" in got["jpoll"]
    assert "unknown JSON-RPC method 'no_such_method'" in got["unknown_method"]
    assert "get_context_by_date" in got["unknown_method"]  # the methods it does answer
    assert "jpoll_abort" not in got["unknown_method"]


# --- best references with an .imap or .rmap context ------------------------------------------

LOCAL_HV = r"""
import json, sys
from crds.core import heavy_client
jobs = json.loads(sys.argv[1])
out = []
for context, header, reftypes in jobs:
    try:
        out.append(heavy_client.hv_best_references(context, header, include=reftypes))
    except Exception as exc:
        out.append("ERROR " + type(exc).__name__ + ": " + str(exc))
print(json.dumps(out))
"""


def crds_local(shared_data: Path, tmp_path: Path, jobs: list) -> list:
    """crds' own hv_best_references (what a CRDS server computes), offline on shared data."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    env.update(CRDS_PATH=str(shared_data), CRDS_MODE="local", CRDS_READONLY_CACHE="1",
               CRDS_SERVER_URL="https://crds-serverless.stsci.edu")
    done = subprocess.run([sys.executable, "-c", LOCAL_HV, json.dumps(jobs)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def first_cases(shared_data: Path, name: str, count: int) -> list[dict]:
    with open(shared_data / "cases" / name, encoding="utf-8") as lines:
        return [json.loads(next(lines)) for _ in range(count)]


@pytest.mark.shared
@needs_crds
@pytest.mark.timeout(300)
def test_best_references_for_imap_and_rmap(mirror: ServerProcess, shared_data: Path,
                                           tmp_path: Path) -> None:
    """The real client asks our server with an .imap/.rmap context; the answers equal crds'
    own hv_best_references for the same mapping (HST, JWST and Roman)."""
    hst = [c["header"] for c in first_cases(shared_data, "hst_0729.jsonl", 12)]
    jwst = [c["header"] for c in first_cases(shared_data, "jwst_0541.jsonl", 6)]
    roman = [c["header"] for c in first_cases(shared_data, "roman_0006.jsonl", 6)]
    jwst_imap = next(n for n in sorted(os.listdir(shared_data / "mappings" / "jwst"))
                     if n.startswith("jwst_nircam_") and n.endswith(".imap"))
    jobs: list[tuple[str, str, dict, list | None]] = []
    for header in hst:
        jobs += [("hst", "hst_acs_0421.imap", header, None),
                 ("hst", "hst_acs_biasfile_0345.rmap", header, ["biasfile"]),
                 ("hst", "hst_acs_0421.imap", header, ["biasfile", "darkfile", "nosuch"])]
    jobs.append(("hst", "hst_acs_biasfile_0345.rmap", hst[0], None))  # crds refuses
    jobs.append(("hst", "hst_acs_biasfile_0345.rmap", hst[0], ["darkfile"]))
    jobs += [("jwst", jwst_imap, header, None) for header in jwst]
    jobs += [("roman", "roman_wfi_0005.imap", header, None) for header in roman]
    jobs += [("roman", "roman_wfi_dark_0001.rmap", header, ["dark"]) for header in roman]
    expected = crds_local(shared_data, tmp_path, [[c, h, r] for _, c, h, r in jobs])
    script = (
        "import json, sys\nimport crds.client.api as api\nout = []\n"
        "for obs, context, header, reftypes in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        out.append(api.get_best_references(context, header, reftypes))\n"
        "    except Exception as exc:\n"
        "        out.append(str(exc))\n"
        "print(json.dumps(out))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    env.update(CRDS_SERVER_URL=mirror.url, CRDS_OBSERVATORY="hst",
               CRDS_PATH=str(tmp_path / "crds-cache"))
    done = subprocess.run([sys.executable, "-c", script, json.dumps(jobs)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(got) == len(expected) == len(jobs)
    for job, ours, theirs in zip(jobs, got, expected, strict=True):
        if isinstance(theirs, str):  # crds raised: our server answers an error envelope
            name, _, message = theirs.removeprefix("ERROR ").partition(": ")
            assert name in ours and message in ours, (job[1], ours, theirs)
        else:
            assert ours == theirs, (job[1], job[3])
    assert any(isinstance(e, dict) and any(not v.startswith("NOT FOUND") for v in e.values())
               for e in expected)  # some real files among the answers


# --- several observatories, mis-filed files, missing operational context --------------------


@pytest.mark.shared
@needs_fuse
def test_mount_finds_the_observatory_prefix(mirror: ServerProcess, shared_data: Path,
                                           mounter: Any) -> None:
    """`--server http://HOST:PORT --observatory jwst` on a server answering hst at /json/:
    the mount finds /jwst/ by itself."""
    mount = mounter(mirror.url, "--observatory", "jwst")
    stats = mount.stats()["mount"]
    assert stats["observatory"] == "jwst" and stats["context"] == "jwst_0541.pmap"
    assert stats["server"] == mirror.url + "/jwst"
    listed = sorted(os.listdir(mount.path("mappings", "jwst")))
    assert listed == sorted(os.listdir(shared_data / "mappings" / "jwst"))
    name = "jwst_0541.pmap"
    assert mount.path("mappings", "jwst", name).read_bytes() == (
        shared_data / "mappings" / "jwst" / name).read_bytes()


def test_misfiled_files_are_skipped_consistently(tmp_path: Path) -> None:
    root = make_tiny_root(tmp_path / "root")
    (root / "mappings" / "hst" / "README.txt").write_text("not a mapping\n")
    (root / "references" / "hst" / "hst_acs_0099.imap").write_text("a mapping in references\n")
    server = ServerProcess(root, "--index", str(tmp_path / "index"), log_dir=tmp_path)
    server.start()
    try:
        body = {"jsonrpc": "1.0", "method": "get_server_info", "params": [], "id": 1}
        info = requests.post(server.url + "/json/", json=body, timeout=10).json()["result"]
        from crds_fs.client.payload import crds_decode
        catalog = crds_decode(info["download_metadata"])
        assert "README.txt" not in catalog and "hst_acs_0099.imap" not in catalog
        assert "README.txt" not in info["mappings"]
        assert set(TINY_REFERENCES) <= set(catalog)
        for name in catalog:  # everything listed downloads
            kind = "mappings" if name.endswith("map") else "references"
            assert requests.get(f"{server.url}/unchecked_get/{kind}/hst/{name}",
                                timeout=10).status_code == 200, name
        assert requests.get(f"{server.url}/unchecked_get/mappings/hst/README.txt",
                            timeout=10).status_code == 404
    finally:
        server.stop()
    log = server.log()
    assert "not serving" in log and "README.txt" in log and "hst_acs_0099.imap" in log
    assert log.count("README.txt: a reference file") == 1  # warned once, not every rescan


@needs_crds
def test_operational_context_missing_from_root(tmp_path: Path) -> None:
    """serve warns at start and falls back to the newest context present."""
    root = make_tiny_root(tmp_path / "root")
    config = root / "config" / "hst" / "server_config"
    info = ast.literal_eval(config.read_text())
    config.write_text(repr({**info, "operational_context": "hst_0099.pmap",
                            "edit_context": "hst_0100.pmap"}))
    server = ServerProcess(root, "--index", str(tmp_path / "index"), log_dir=tmp_path)
    server.start()
    try:
        log = server.log()
        assert "operational_context hst_0099.pmap, which is not under" in log, log
        assert "serving hst_0002.pmap instead" in log
        got = run_client(calls(
            ("default", "api.get_default_context('hst')"),
            ("info", "api.get_server_info()['operational_context']"),
            ("edit", "api.get_default_context('hst', 'edit')"),
        ), server.url, tmp_path)
    finally:
        server.stop()
    assert got == {"default": "hst_0002.pmap", "info": "hst_0002.pmap", "edit": "hst_0002.pmap"}


@needs_fuse
def test_mount_refuses_operational_context_it_cannot_read(tmp_path: Path,
                                                         mounter: Any) -> None:
    """A server (here a test server) advertising an operational context absent from its
    catalog: the mount fails and says which context and what to do."""
    catalog = {name: {"sha1sum": "0" * 40, "size": str(len(data))}
               for name, data in TINY_REFERENCES.items()}
    catalog["hst_0001.pmap"] = {"sha1sum": "0" * 40, "size": "100"}
    info = {"observatory": "hst", "operational_context": "hst_0099.pmap",
            "edit_context": "hst_0099.pmap", "bad_files_list": [], "mappings": ["hst_0001.pmap"],
            "download_metadata": crds_encode(catalog), "force_remote_mode": 0,
            "last_synced": "2024-01-01 00:00:00", "context_history": []}
    with catalog_server(info) as server:
        mount = mounter(server.url, "--observatory", "hst", start=False).start(check=False)
        assert mount.result is not None and mount.result.returncode != 0
        message = mount.result.stdout + mount.result.stderr
        assert "hst_0099.pmap" in message and "not in its hst catalog" in message, message
        assert "--context" in message
        ok = mounter(server.url, "--observatory", "hst", "--context", "hst_0001.pmap")
        assert ok.stats()["mount"]["context"] == "hst_0001.pmap"
        assert server.downloads == []
