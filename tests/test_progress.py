"""Progress reporting (bars on a terminal's stderr only, server hashing log lines) and the
two small shared helpers (file SHA-1, /proc/self/mountinfo parsing).

Bars are checked through a real pseudo-terminal: stderr is a pty, stdout a pipe, so the
test sees exactly what a user and a script piping ``--json`` would see.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from crds_fs import api
from crds_fs.demo import spec
from crds_fs.fuse.mountinfo import find_mount, parse_line, read_mountinfo
from crds_fs.hashing import sha1_file

pytestmark = pytest.mark.timeout(120)
CONTEXT = spec.OPERATIONAL_CONTEXT


def run_with_tty_stderr(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """(exit status, stdout, what the terminal on stderr received) of a crds-fs command."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "crds_fs.cli", *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    received: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not chunk:
                return
            received.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        stdout, _ = proc.communicate(timeout=100)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(10)
        os.close(master)
    return proc.returncode, stdout.decode(), b"".join(received).decode(errors="replace")


@pytest.fixture
def server(serve, demo_root: Path, tmp_path: Path):
    return serve(demo_root, "--datasets", str(demo_root / "datasets"),
                 "--index", str(tmp_path / "serve-index"))


def test_bestrefs_bars_on_a_terminal_never_in_json_stdout(server, demo_root: Path,
                                                          tmp_path: Path) -> None:
    env = {**os.environ, "CRDS_SERVER_URL": server.url,
           "CRDS_FS_CACHE": str(tmp_path / "cache")}
    datasets = [str(demo_root / "datasets" / d.file_name) for d in spec.DATASETS]
    args = ["bestrefs", "--context", CONTEXT, "--remote", "--json", "--cache-references",
            *datasets]
    status, stdout, terminal = run_with_tty_stderr(args, env)
    assert status == 0, terminal
    assert "best references" in terminal and "fetching references" in terminal
    records = [json.loads(line) for line in stdout.splitlines()]  # nothing else on stdout
    assert [r["input"] for r in records] == datasets
    assert "\r" not in stdout and "it/s" not in stdout
    assert all(Path(p).is_file() for r in records for p in r.get("paths", {}).values())
    # Not a terminal: no bar anywhere.
    piped = subprocess.run([sys.executable, "-m", "crds_fs.cli", *args], env=env,
                           capture_output=True, text=True, timeout=100, check=False)
    assert piped.returncode == 0, piped.stderr
    assert "best references" not in piped.stderr and "\r" not in piped.stderr
    assert piped.stdout == stdout


def test_demo_data_bar_on_a_terminal(tmp_path: Path) -> None:
    status, stdout, terminal = run_with_tty_stderr(
        ["demo-data", str(tmp_path / "demo"), "--large-mb", "1"], dict(os.environ))
    assert status == 0, terminal
    assert "writing demo data" in terminal and "writing demo data" not in stdout
    assert "Written in" in stdout


def test_api_progress_callback(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRDS_SERVER_URL", server.url)
    monkeypatch.setenv("CRDS_FS_CACHE", str(tmp_path / "cache"))
    calls: list[tuple[int, int, str]] = []
    try:
        paths = api.dump_mappings(CONTEXT, progress=lambda *call: calls.append(call))
        assert calls[0] == (0, len(paths), "")
        assert sorted(done for done, _, _ in calls) == list(range(len(paths) + 1))
        assert {name for _, _, name in calls[1:]} == set(paths)
        # Several datasets naming the same references: each file is fetched (and
        # reported) once, and every dataset gets its paths.
        bestrefs = dict(spec.DATASETS[1].expected[CONTEXT])
        calls.clear()
        many = api.session().cache_many_references(CONTEXT, [bestrefs, bestrefs],
                                                   strict=False, progress=lambda *c:
                                                   calls.append(c))
    finally:
        api.close_sessions()
    distinct = {v for v in bestrefs.values() if not v.startswith("NOT FOUND")}
    assert many[0] == many[1] and set(map(os.path.basename, many[0].values())) == distinct
    assert calls[-1][0] == calls[-1][1] == len(distinct) and len(calls) == len(distinct) + 1


def test_server_logs_progress_while_hashing(demo_root: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    from crds_fs.server.store import ServedRoot

    caplog.set_level(logging.INFO, logger="crds_fs.server.store")
    store = ServedRoot(demo_root, tmp_path / "index", progress_interval=0)
    store.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hashing")]
    references = len(spec.REFERENCES)
    assert any(f"/{references} files" in line and "GB" in line for line in lines), lines
    caplog.clear()
    store = ServedRoot(demo_root, tmp_path / "index", progress_interval=0)  # all indexed
    store.close()
    assert not [r for r in caplog.records if r.getMessage().startswith("hashing")]


def test_sha1_file_is_shared_and_exact(tmp_path: Path) -> None:
    import crds_fs.cache as cache
    import crds_fs.server.store as server_store

    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha1_file(path) == (len(data), hashlib.sha1(data).hexdigest())
    assert cache.sha1_file is sha1_file
    # the server hashes through checked descriptors with the same digest code
    import crds_fs.hashing as hashing
    assert server_store.digest_stream is hashing.digest_stream
    with open(path, "rb") as handle:
        assert hashing.sha1_stream(handle) == sha1_file(path)
    with open(path, "rb", buffering=0) as handle:  # sha1 and chunk manifest in one pass
        digests = hashing.digest_stream(handle, 1 << 20)
    assert (digests.size, digests.sha1) == sha1_file(path)
    assert digests.chunks == tuple(hashlib.sha256(data[i:i + (1 << 20)]).hexdigest()
                                   for i in range(0, len(data), 1 << 20))


def test_mountinfo_parsing(tmp_path: Path) -> None:
    line = ("36 35 0:52 / /mnt/with\\040space\\011tab rw,nosuid shared:7 master:1 - "
            "fuse.crds-fs crds\\134fs rw,user_id=0\n")
    entry = parse_line(line)
    assert entry is not None
    assert entry.device == "0:52" and entry.mountpoint == "/mnt/with space\ttab"
    assert entry.fstype == "fuse.crds-fs" and entry.source == "crds\\fs"
    assert parse_line("not a mountinfo line") is None
    table = tmp_path / "mountinfo"
    table.write_text("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n" + line
                     + "40 36 0:60 / /mnt/with\\040space\\011tab rw - tmpfs tmpfs rw\n")
    assert [e.fstype for e in read_mountinfo(table)] == ["ext4", "fuse.crds-fs", "tmpfs"]
    assert find_mount("/mnt/with space\ttab", table).fstype == "tmpfs"  # the topmost
    assert find_mount("/mnt", table) is None
    assert find_mount("/") is not None  # the real table of this process
