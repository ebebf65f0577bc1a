"""The demo observatory generator, `crds-fs demo-data` and `crds-fs demo`.

The generated tree is checked three ways: structurally (checksums, FITS, sizes,
determinism), against the real crds 14.0.3 client (its best references must be the
intended ones), and through the commands that serve and mount it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest
import requests
from astropy.io import fits

from crds_fs.demo import spec
from crds_fs.demo.generate import INFO_FILE, generate
from crds_fs.demo.session import DemoSession
from crds_fs.engine.checksum import mapping_checksum

OBS = "hst"
MiB = 2**20
HAS_CRDS = importlib.util.find_spec("crds") is not None


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def tree_sha1s(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha1(p) for p in sorted(root.rglob("*")) if p.is_file()}


def header_value(text: str, key: str) -> str:
    match = re.search(rf"^\s*'{key}'\s*:\s*'([^']*)'", text, re.M)
    assert match, f"no {key!r} in mapping header"
    return match.group(1)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- structure ---------------------------------------------------------------------------


def test_mappings_are_well_formed(demo_root: Path) -> None:
    folder = demo_root / "mappings" / OBS
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([m.name for m in (*spec.PMAPS, *spec.IMAPS, *spec.RMAPS)])
    named_refs: set[str] = set()
    for name in names:
        text = (folder / name).read_text()
        assert header_value(text, "sha1sum") == mapping_checksum(text), name
        assert header_value(text, "name") == name
        assert header_value(text, "observatory") == "HST"
        tree = ast.parse(text)  # plain Python literal syntax, as crds expects
        assert [t.targets[0].id for t in tree.body] == ["header", "selector"]  # type: ignore
        named_refs |= set(re.findall(r"'(hst_\w+\.fits)'", text))
        for child in re.findall(r"'(hst_\w+\.[ir]map)'", text):
            assert (folder / child).is_file(), f"{name} names missing {child}"
    references = {p.name for p in (demo_root / "references" / OBS).iterdir()}
    assert named_refs == references  # every reference is selectable, none is missing


def test_mappings_use_the_selector_features(demo_root: Path) -> None:
    folder = demo_root / "mappings" / OBS
    rmaps = "".join(p.read_text() for p in folder.glob("*.rmap"))
    imaps = "".join(p.read_text() for p in folder.glob("*.imap"))
    assert "Match({" in rmaps and "UseAfter({" in rmaps
    assert "'A|B'" in rmaps and "'*'" in rmaps and "'N/A'" in rmaps
    assert ": 'N/A'," in imaps
    dark = (folder / "hst_acs_darkfile_9001.rmap").read_text()
    assert dark.count("-01 00:00:00' :") >= 4  # several UseAfter dates in one row
    assert "'biasfile'" not in imaps  # crds would run instrument hooks for it


def test_references_are_real_fits(demo_root: Path) -> None:
    folder = demo_root / "references" / OBS
    sizes = {}
    for ref in spec.REFERENCES:
        path = folder / ref.name
        sizes[ref.name] = path.stat().st_size
        with fits.open(path) as hdul:
            header = hdul[0].header
            assert header["INSTRUME"] == ref.instrument
            assert header["DETECTOR"] == ref.detector
            for key in ("FILETYPE", "USEAFTER", "PEDIGREE", "DESCRIP"):
                assert header[key], f"{ref.name} lacks {key}"
            assert len(hdul) >= 2
            data = hdul[1].data
            assert data is not None and len(data) > 0
    small = [s for n, s in sizes.items() if n not in ("hst_acs_pfltfile_9201.fits",
                                                       "hst_acs_darkfile_9106.fits")]
    assert 2 * 2880 <= min(small) and max(small) < 64 * 1024
    assert 24 * MiB <= sizes["hst_acs_pfltfile_9201.fits"] < 24 * MiB + 64 * 1024
    assert 12 * MiB <= sizes["hst_acs_darkfile_9106.fits"] < 12 * MiB + 64 * 1024


def test_config_and_datasets(demo_root: Path) -> None:
    config = demo_root / "config" / OBS
    server_config = ast.literal_eval((config / "server_config").read_text())
    assert server_config["observatory"] == OBS
    assert server_config["operational_context"] == spec.OPERATIONAL_CONTEXT
    assert server_config["force_remote_mode"] == 0 and server_config["last_synced"]
    assert server_config["bad_files_list"] == [spec.BAD_REFERENCE]
    assert set(server_config["mappings"]) == {p.name for p in (demo_root / "mappings" / OBS)
                                              .iterdir()}
    assert (config / "ref_cache_subdir_mode").read_text().strip() == "flat"
    assert (demo_root / "references" / OBS / spec.BAD_REFERENCE).is_file()
    info = json.loads((demo_root / INFO_FILE).read_text())
    for dataset in spec.DATASETS:
        path = demo_root / "datasets" / dataset.file_name
        with fits.open(path) as hdul:
            for key, value in dataset.keywords.items():
                assert hdul[0].header[key] == value, (dataset.file_name, key)
        expected = info["datasets"][dataset.file_name]["expected"]
        assert set(expected) == set(spec.CONTEXTS)
        for answers in expected.values():
            assert spec.BAD_REFERENCE not in answers.values()
    instruments = {d.keywords["INSTRUME"] for d in spec.DATASETS}
    assert instruments == {"ACS", "WFC3", "COS"}
    answers = [a for d in spec.DATASETS for a in d.expected[spec.OPERATIONAL_CONTEXT].values()]
    assert any(a.startswith("NOT FOUND") and a != spec.NA for a in answers)


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = tree_sha1s(generate(tmp_path / "a", large_mb=1).root)
    again = tree_sha1s(generate(tmp_path / "b", large_mb=1).root)
    other = tree_sha1s(generate(tmp_path / "c", large_mb=1, seed=7).root)
    assert first == again
    assert len(first) == 18 + 32 + 7 + 4  # mappings, references, datasets, config + info
    assert not any(name.endswith(".part") for name in first)
    refs = [n for n in first if n.startswith("references")]
    maps = [n for n in first if n.startswith("mappings")]
    assert all(first[n] != other[n] for n in refs)  # the seed changes the data ...
    assert all(first[n] == other[n] for n in maps)  # ... not the rules
    big = tmp_path / "a" / "references" / OBS / "hst_acs_pfltfile_9201.fits"
    assert MiB <= big.stat().st_size < MiB + 64 * 1024
    with pytest.raises(ValueError):
        generate(tmp_path / "d", large_mb=0)


# --- the real crds client ----------------------------------------------------------------

CRDS_SCRIPT = """
import json, sys
import crds
from crds import data_file
root, contexts, names = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
out = {}
for name in names:
    header = data_file.get_header(root + "/datasets/" + name)
    answers = {ctx: crds.getrecommendations(header, context=ctx, observatory="hst")
               for ctx in contexts}
    answers["default"] = crds.getrecommendations(header, observatory="hst")
    out[name] = answers
bad = dict(data_file.get_header(root + "/datasets/j9demo01q_raw.fits"))  # crds memoises
bad["DATE-OBS"] = "2007-01-01"  # selects the dark on the bad files list
try:
    crds.getrecommendations(bad, observatory="hst")
    out["bad"] = "no error"
except Exception as exc:
    out["bad"] = type(exc).__name__
paths = crds.getreferences(data_file.get_header(root + "/datasets/j9demo01q_raw.fits"),
                           observatory="hst", reftypes=["darkfile", "pfltfile"])
out["paths"] = paths
print(json.dumps(out))
"""


def crds_offline_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    env.update(CRDS_PATH=str(root), CRDS_MODE="local", CRDS_READONLY_CACHE="1",
               CRDS_SERVER_URL="https://hst-serverless.stsci.edu", CRDS_OBSERVATORY="hst")
    return env


@pytest.mark.crds
@pytest.mark.skipif(not HAS_CRDS, reason="the crds package is not installed")
def test_real_crds_recommends_the_intended_references(demo_root: Path, tmp_path: Path) -> None:
    names = [d.file_name for d in spec.DATASETS]
    done = subprocess.run(
        [sys.executable, "-c", CRDS_SCRIPT, str(demo_root), ",".join(spec.CONTEXTS),
         ",".join(names)],
        env=crds_offline_env(demo_root), cwd=tmp_path, capture_output=True, text=True,
        timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for dataset in spec.DATASETS:
        for context in spec.CONTEXTS:
            assert got[dataset.file_name][context] == dataset.expected[context], (
                dataset.file_name, context)
        assert got[dataset.file_name]["default"] == dataset.expected[spec.OPERATIONAL_CONTEXT]
    assert got["bad"] == "CrdsBadReferenceError"
    refs = demo_root / "references" / OBS
    assert got["paths"] == {"darkfile": str(refs / "hst_acs_darkfile_9106.fits"),
                            "pfltfile": str(refs / "hst_acs_pfltfile_9201.fits")}
    assert "ERROR" not in done.stderr and "Traceback" not in done.stderr


# --- commands ----------------------------------------------------------------------------


def test_demo_data_command(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "crds_fs.cli", "demo-data", str(target), "--large-mb", "1"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "hst_9001.pmap" in done.stdout and spec.BAD_REFERENCE in done.stdout
    for dataset in spec.DATASETS:
        assert dataset.file_name in done.stdout
        assert (target / "datasets" / dataset.file_name).is_file()
    assert "18 mappings" in done.stdout and "32 references" in done.stdout
    assert (target / "config" / OBS / "server_config").is_file()
    bad = subprocess.run([sys.executable, "-m", "crds_fs.cli", "demo-data", str(target),
                          "--large-mb", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "large-mb" in bad.stderr


def test_session_serves_and_stops(demo_root: Path) -> None:
    session = DemoSession(demo_root)
    workdir = session.workdir
    try:
        url = session.start_server()
        body = {"jsonrpc": "1.0", "method": "get_server_info", "params": [], "id": 1}
        with requests.Session() as http:
            http.trust_env = False
            info = http.post(url + "/json/", json=body, timeout=10).json()["result"]
            assert info["operational_context"] == spec.OPERATIONAL_CONTEXT
            assert spec.BAD_REFERENCE in info["bad_files_list"]
            pmap = http.get(f"{url}/unchecked_get/mappings/hst/{spec.OPERATIONAL_CONTEXT}",
                            timeout=10)
            assert pmap.content == (demo_root / "mappings" / OBS /
                                    spec.OPERATIONAL_CONTEXT).read_bytes()
        assert session.problem() is None
    finally:
        problems = session.stop()
    assert problems == []
    assert not port_open(session.port)
    assert not workdir.exists()
    assert (demo_root / "mappings").is_dir()  # the data itself is never removed


def _fuse_usable() -> bool:
    return shutil.which("fusermount3") is not None and os.access("/dev/fuse", os.R_OK | os.W_OK)


def _mount_command_exists() -> bool:
    from crds_fs.cli import cli

    return "mount" in cli.commands


class _Lines:
    """The lines a child prints, readable with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not printed within {timeout}s:\n{''.join(self.seen)}")


def _ignore_sigint() -> None:  # pragma: no cover - runs in the child before exec
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stats(mountpoint: Path) -> dict:
    return json.loads((mountpoint / ".crds-fs" / "stats").read_text())["cache"]


@pytest.mark.fuse
@pytest.mark.skipif(not _fuse_usable(), reason="needs /dev/fuse and fusermount3")
@pytest.mark.skipif(not _mount_command_exists(), reason="crds-fs mount not available")
def test_demo_command_mounts_and_cleans_up(tmp_path: Path) -> None:
    """The demo as a script starts it: SIGINT ignored (what a background job of a
    non-interactive shell inherits) and an empty HOME, which must stay empty."""
    from tests.helpers import free_port

    mountpoint, data, port = tmp_path / "mnt", tmp_path / "data", free_port()
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if (not k.startswith(("CRDS_", "XDG_")) or k == "CRDS_FS_TESTING")}
    env["HOME"] = str(home)
    proc = subprocess.Popen(
        [sys.executable, "-m", "crds_fs.cli", "demo", str(mountpoint), "--port", str(port),
         "--data", str(data), "--large-mb", "1"], env=env, preexec_fn=_ignore_sigint,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = _Lines(proc.stdout)
    try:
        workdir = Path(lines.wait_for("Work folder:", 60).split(":", 1)[1].split(" (")[0]
                       .strip())
        lines.wait_for("ready", 120)
        assert os.path.ismount(mountpoint)
        assert port_open(port)
        printed = "".join(lines.seen)
        # nothing fetched before "ready": the examples are printed, not run
        assert _stats(mountpoint)["downloads_done"] == 0
        assert _stats(mountpoint)["cached_files"] == 0
        assert "{'bpixtab'" not in printed
        # bestrefs/ lists the demo datasets
        assert sorted(os.listdir(mountpoint / "bestrefs")) == sorted(
            Path(d.file_name).stem for d in spec.DATASETS)
        ref = "references/hst/hst_acs_pfltfile_9201.fits"
        assert sha1(mountpoint / ref) == sha1(data / ref)
        assert _stats(mountpoint)["downloads_done"] == 1 == _stats(mountpoint)["cached_files"]
        with fits.open(mountpoint / ref) as hdul:
            assert hdul[0].header["INSTRUME"] == "ACS"
        assert (mountpoint / "mappings" / OBS / spec.OPERATIONAL_CONTEXT).read_bytes() == (
            data / "mappings" / OBS / spec.OPERATIONAL_CONTEXT).read_bytes()
        # the printed API example works, and its downloads are the mount's (counted)
        api = next(line for line in printed.splitlines() if "crds_fs.api as api" in line)
        user_home = tmp_path / "user-home"  # the user's own run: astropy < 7 writes HOME
        user_home.mkdir()
        done = subprocess.run(api.strip(), shell=True, env={**env, "HOME": str(user_home)},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"'pfltfile': '{mountpoint}/{ref}'" in done.stdout
        stats = _stats(mountpoint)
        assert stats["downloads_done"] == stats["cached_files"] > 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0, "".join(lines.seen)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
    assert not os.path.ismount(mountpoint)
    assert not port_open(port)
    assert not workdir.exists()
    assert (data / "mappings" / OBS / spec.OPERATIONAL_CONTEXT).is_file()  # --data is kept
    assert sorted(str(p) for p in home.rglob("*")) == []  # nothing left in ~/.cache


@pytest.mark.skipif(not _mount_command_exists(), reason="crds-fs mount not available")
def test_demo_refuses_a_non_empty_mountpoint_and_stops_its_server(tmp_path: Path) -> None:
    from tests.helpers import free_port

    mountpoint, port = tmp_path / "mnt", free_port()
    mountpoint.mkdir()
    (mountpoint / "precious.txt").write_text("keep me\n")
    done = subprocess.run(
        [sys.executable, "-m", "crds_fs.cli", "demo", str(mountpoint), "--port", str(port),
         "--large-mb", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "not empty" in done.stderr
    assert (mountpoint / "precious.txt").read_text() == "keep me\n"
    assert not os.path.ismount(mountpoint) and not port_open(port)
    workdir = re.search(r"Work folder: (\S+)", done.stdout)
    assert workdir and not Path(workdir.group(1)).exists()
