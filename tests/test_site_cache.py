"""The site tier: mounts behind one real nginx (and squid, when installed) HTTP cache.

The caches run the configuration files of docs/site/ with only paths, port and user
rewritten, so the recipe in docs/site-cache.md is the one tested.  The origin is a real
`crds-fs serve`; its access log counts the downloads that crossed "the wide-area link".
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import ServerProcess, free_port
from tests.mounting import Mounter, needs_fuse, wait_until

SITE = Path(__file__).resolve().parents[1] / "docs" / "site"
#: mounts talk to the cache on 127.0.0.1: NO_PROXY (set for every test) must not exempt it
PROXIED_ENV = {"NO_PROXY": "", "no_proxy": ""}


class NginxCache:
    """nginx with docs/site/nginx-crds-fs.conf, in the foreground, under *base*."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.cache_dir = base / "cache"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        text = (SITE / "nginx-crds-fs.conf").read_text()
        base = str(self.base)
        text = text.replace("/var/cache/nginx/crds-fs", str(self.cache_dir))
        text = text.replace("/var/log/nginx/", base + "/")
        text = text.replace("listen 3128;", f"listen 127.0.0.1:{self.port};")
        user = "user root;" if os.geteuid() == 0 else ""  # workers must reach tmp dirs
        text = text.replace("user www-data;", user)
        # the compiled-in temp paths of other modules live in /var/lib/nginx: keep them here
        extra = "".join(f"    {kind}_temp_path {base}/{kind}-tmp;\n"
                        for kind in ("fastcgi", "uwsgi", "scgi"))
        return text.replace("    client_body_temp_path", extra + "    client_body_temp_path")

    def start(self) -> NginxCache:
        conf = self.base / "nginx.conf"
        conf.write_text(self.config())
        self.log = open(self.base / "nginx.err", "wb")  # noqa: SIM115 - child's lifetime
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.base), "-c", str(conf),
             "-g", f"daemon off; pid {self.base}/nginx.pid; error_log {self.base}/error.log;"],
            stdout=self.log, stderr=subprocess.STDOUT)
        _wait_listening(self.proc, self.port, self.base / "error.log")
        return self

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def entry_of(self, name: str) -> Path:
        """The cache file holding *name* (nginx writes 'KEY: <key>' into its header)."""
        for path in self.cache_dir.rglob("*"):
            if path.is_file() and f"/{name}\n".encode() in path.read_bytes()[:4096]:
                return path
        raise AssertionError(f"{name} is not in the nginx cache {self.cache_dir}")


class SquidCache:
    """squid with docs/site/squid-crds-fs.conf, in the foreground (-N)."""

    def __init__(self) -> None:
        # squid's workers run as its own user when started by root: a world-readable dir
        self.base = Path(tempfile.mkdtemp(prefix="crds-fs-squid-"))
        os.chmod(self.base, 0o755)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SquidCache:
        text = (SITE / "squid-crds-fs.conf").read_text()
        text = text.replace("http_port 3128", f"http_port 127.0.0.1:{self.port}")
        text = text.replace("/var/spool/squid-crds-fs 500000", f"{self.base}/spool 2000")
        text = text.replace("/var/spool/squid-crds-fs", f"{self.base}/spool")
        text = text.replace("/var/log/squid/", f"{self.base}/")
        text = text.replace("/run/squid-crds-fs.pid", f"{self.base}/squid.pid")
        conf = self.base / "squid.conf"
        conf.write_text(text)
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("proxy")
            except KeyError:
                pytest.skip("squid runs as user 'proxy', which does not exist here")
            (self.base / "spool").mkdir()
            os.chown(self.base / "spool", user.pw_uid, user.pw_gid)
            os.chown(self.base, user.pw_uid, user.pw_gid)
        made = subprocess.run(["squid", "-N", "-z", "-f", str(conf)], capture_output=True,
                              text=True, timeout=60)
        assert made.returncode == 0, made.stdout + made.stderr
        self.log = open(self.base / "squid.out", "wb")  # noqa: SIM115 - child's lifetime
        self.proc = subprocess.Popen(["squid", "-N", "-f", str(conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        _wait_listening(self.proc, self.port, self.base / "crds-fs-cache.log")
        return self

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT)
        self.proc = None
        shutil.rmtree(self.base, ignore_errors=True)


def _wait_listening(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise AssertionError(f"the cache exited at start ({proc.returncode}): {text}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 2):
            return
        time.sleep(0.1)
    _stop(proc)
    raise AssertionError(f"the cache did not listen on port {port}")


def _stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def origin_gets(server: ServerProcess, name: str) -> int:
    """Downloads of *name* the origin answered (whole file or a range)."""
    pattern = re.compile(r'"GET /unchecked_get/[^ ]*/' + re.escape(name) + r'" 20[06] ')
    return sum(1 for line in server.log().splitlines() if pattern.search(line))


def assert_counts(origin: ServerProcess, want: dict[str, int]) -> None:
    """The origin's access log shows exactly *want* downloads per file (the log line is
    written just after the response, so it may lag the reader a moment)."""
    def counts() -> dict[str, int]:
        return {name: origin_gets(origin, name) for name in want}

    wait_until(lambda: counts() == want, 10)
    assert counts() == want


@pytest.fixture
def origin(demo_root: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh `crds-fs serve` of the demo observatory (fresh log: counts start at 0)."""
    server = ServerProcess(demo_root, "--index", str(tmp_path / "origin-index"),
                           log_dir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[NginxCache]:
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    base = tmp_path / "nginx"
    base.mkdir()
    cache = NginxCache(base).start()
    try:
        yield cache
    finally:
        cache.stop()


@pytest.fixture
def squid() -> Iterator[SquidCache]:
    if shutil.which("squid") is None:
        pytest.skip("squid is not installed (apt-get install squid)")
    cache = SquidCache()
    try:
        yield cache.start()
    finally:
        cache.stop()


def twenty_files(demo_root: Path) -> list[str]:
    """20 references: every small one and the 12 MB dark (the 24 MB flat left out)."""
    refs = sorted((demo_root / "references" / "hst").iterdir(), key=lambda p: p.stat().st_size)
    return sorted(p.name for p in refs[:-1][-20:])


def read_all_at_once(mounts: list, names: list[str], demo_root: Path) -> list[str]:
    """Every mount reads every file, all at the same time; returns the failures."""
    failures: list[str] = []
    start = threading.Barrier(len(mounts) * len(names))

    def read(mount, name: str) -> None:
        want = (demo_root / "references" / "hst" / name).read_bytes()
        start.wait(60)
        try:
            got = mount.path("references", "hst", name).read_bytes()
        except OSError as exc:
            failures.append(f"{mount.mountpoint}/{name}: {exc}")
            return
        if got != want:
            failures.append(f"{mount.mountpoint}/{name}: wrong bytes")

    threads = [threading.Thread(target=read, args=(m, n)) for m in mounts for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not any(t.is_alive() for t in threads), "reads hung"
    return failures


def _mounts(mounter: Mounter, origin: ServerProcess, proxy: str, count: int,
            *extra: str) -> list:
    return [mounter(origin.url, "--proxy", proxy, *extra, env=PROXIED_ENV)
            for _ in range(count)]


@needs_fuse
def test_four_mounts_behind_nginx_fetch_each_file_once(
        mounter: Mounter, origin: ServerProcess, nginx: NginxCache, demo_root: Path) -> None:
    names = twenty_files(demo_root)
    # the proxy three ways: --proxy, CRDS_FS_PROXY, and plain HTTP_PROXY (requests' own)
    mounts = _mounts(mounter, origin, nginx.url, 2)
    mounts.append(mounter(origin.url, env={**PROXIED_ENV, "CRDS_FS_PROXY": nginx.url}))
    mounts.append(mounter(origin.url, env={**PROXIED_ENV, "HTTP_PROXY": nginx.url}))
    for mount in mounts:
        assert mount.stats()["mount"]["servers"]["proxy"] == nginx.url
    assert read_all_at_once(mounts, names, demo_root) == []
    assert_counts(origin, dict.fromkeys(names, 1))
    # each mount downloaded each file itself (separate caches), all through nginx
    for mount in mounts:
        assert mount.stats()["cache"]["downloads_done"] >= len(names)
    def served() -> dict[str, int]:
        hits = (nginx.base / "crds-fs-access.log").read_text()
        return {name: hits.count(f"/unchecked_get/references/hst/{name} HTTP")
                for name in names}

    wait_until(lambda: served() == dict.fromkeys(names, 4), 10)
    assert served() == dict.fromkeys(names, 4)
    hits = (nginx.base / "crds-fs-access.log").read_text()
    assert re.search(r"\"POST http://[^ ]+/json/ ", hits)  # JSON-RPC went through it too


@needs_fuse
def test_poisoned_nginx_entry_is_detected_and_bypassed(
        mounter: Mounter, origin: ServerProcess, nginx: NginxCache, demo_root: Path) -> None:
    name = "hst_acs_darkfile_9101.fits"
    good = (demo_root / "references" / "hst" / name).read_bytes()
    first = mounter(origin.url, "--proxy", nginx.url, env=PROXIED_ENV)
    assert first.path("references", "hst", name).read_bytes() == good
    assert_counts(origin, {name: 1})
    # poison the cached body (same size, last bytes flipped): nginx serves it as a HIT
    entry = nginx.entry_of(name)
    data = bytearray(entry.read_bytes())
    data[-16:] = bytes(b ^ 0xFF for b in data[-16:])
    entry.write_bytes(bytes(data))
    proxies = {"http": nginx.url}
    url = f"{origin.url}/unchecked_get/references/hst/{name}"
    with requests.get(url, proxies=proxies, timeout=10) as answer:
        assert answer.headers.get("x-cache-status") == "HIT" and answer.content != good

    # no retries left: EIO, one clear line, nothing kept
    strict = mounter(origin.url, "--proxy", nginx.url, "--retries", "0", env=PROXIED_ENV)
    with pytest.raises(OSError) as info:
        strict.path("references", "hst", name).read_bytes()
    assert info.value.errno == errno.EIO
    lines = [line for line in strict.log().splitlines() if name in line and "ERROR" in line]
    assert len(lines) == 1 and "sha1" in lines[0], strict.log()
    assert os.getxattr(strict.path("references", "hst", name), "user.crds.cached") == b"no"

    # with a retry: the second attempt bypasses the cache (no-cache) and gets good bytes
    mount = mounter(origin.url, "--proxy", nginx.url, "--retries", "1", env=PROXIED_ENV)
    assert mount.path("references", "hst", name).read_bytes() == good
    assert "Cache-Control: no-cache" in mount.log()
    assert_counts(origin, {name: 2})
    # ... which also replaced the poisoned entry for everybody else
    with requests.get(url, proxies=proxies, timeout=10) as answer:
        assert answer.content == good
    assert_counts(origin, {name: 2})


@needs_fuse
def test_four_mounts_behind_squid_fetch_each_file_once(
        mounter: Mounter, origin: ServerProcess, squid: SquidCache, demo_root: Path) -> None:
    names = twenty_files(demo_root)
    mounts = _mounts(mounter, origin, squid.url, 4)
    assert read_all_at_once(mounts, names, demo_root) == []
    assert_counts(origin, dict.fromkeys(names, 1))


def test_serve_marks_immutable_files_and_answers_head(origin: ServerProcess) -> None:
    base = f"{origin.url}/unchecked_get"
    ref = requests.get(f"{base}/references/hst/hst_acs_darkfile_9101.fits", timeout=10)
    assert ref.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert re.fullmatch(r'"[0-9a-f]{40}"', ref.headers["etag"])  # strong: the sha1
    assert ref.headers["accept-ranges"] == "bytes"
    head = requests.head(f"{base}/references/hst/hst_acs_darkfile_9101.fits", timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(ref.content))
    assert head.headers["etag"] == ref.headers["etag"]
    pmap = requests.head(f"{base}/mappings/hst/hst_9000.pmap", timeout=10)
    assert pmap.status_code == 200 and "immutable" in pmap.headers["cache-control"]
    config = requests.get(f"{base}/config/hst/server_config", timeout=10)
    assert config.status_code == 200
    assert config.headers["cache-control"] == "public, max-age=60"
    missing = requests.head(f"{base}/references/hst/nope.fits", timeout=10)
    assert missing.status_code == 404 and missing.headers["cache-control"] == "no-cache"
    rpc = requests.post(f"{origin.url}/json/", timeout=10, json={
        "jsonrpc": "1.0", "method": "get_default_context", "params": ["hst"], "id": 1})
    assert rpc.headers["cache-control"] == "no-cache"
    assert requests.head(origin.url + "/", timeout=10).headers["cache-control"] == \
        "public, max-age=60"


def test_client_proxy_settings_and_no_proxy(origin: ServerProcess, nginx: NginxCache,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY from the environment, an explicit proxy, and NO_PROXY exempting a host."""
    from crds_fs.client.rpc import CrdsClient

    def via_cache(client: CrdsClient) -> bool:
        url = client.file_url("hst_acs_darkfile_9102.fits", "hst")
        response = client.open_stream(url)
        try:
            return "x-cache-status" in response.headers
        finally:
            response.close()

    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("HTTP_PROXY", nginx.url)
    with CrdsClient(origin.url, retries=0) as client:
        assert via_cache(client)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # exempt: straight to the origin
    with CrdsClient(origin.url, retries=0) as client:
        assert not via_cache(client)
    with CrdsClient(origin.url, retries=0, proxy=nginx.url) as client:
        assert not via_cache(client)  # NO_PROXY applies to an explicit proxy too (as curl)
    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.setenv("NO_PROXY", "")
    with CrdsClient(origin.url, retries=0, proxy=nginx.url) as client:
        assert via_cache(client)
        assert client.get_default_context("hst")
    assert "/json/ HTTP" in (nginx.base / "crds-fs-access.log").read_text()
