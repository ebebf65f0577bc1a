"""Server failover: several `crds-fs serve` processes in order behind one mount or client.

Real servers on 127.0.0.1, stopped and restarted on their port; the pool's own rules are
also checked with an explicit clock (they are pure logic).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crds_fs.client.rpc import CrdsClient, bypasses_proxy
from crds_fs.client.servers import ServerPool, parse_server_list
from crds_fs.config import Settings
from crds_fs.errors import ServerUnreachableError
from tests.helpers import TINY_REFERENCES, ServerProcess, free_port, make_tiny_root
from tests.mounting import Mounter, wait_until

# --- the pool's rules (explicit clock) -------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pool_fails_over_backs_off_and_resets_to_primary() -> None:
    clock = Clock()
    pool = ServerPool(["http://a", "http://b/", "http://c"], backoff=10, reset_after=60,
                      clock=clock)
    assert [s.url for s in pool.servers] == ["http://a", "http://b", "http://c"]
    assert pool.candidates() == [0, 1, 2]
    pool.failed(0, "connection refused")
    pool.succeeded(1)
    assert pool.current == 1 and pool.status()["in_use"] == "http://b"
    # a down server goes last, until its backoff has passed
    assert pool.candidates() == [1, 2, 0]
    clock.now += 11
    assert pool.candidates() == [1, 0, 2]
    assert pool.status()["servers"][0]["state"] == "standby"
    clock.now += 50  # 61 s after leaving the primary
    assert pool.current == 0 and pool.candidates()[0] == 0
    assert pool.status()["reset_to_primary_in"] is None


def test_pool_conflicts_name_both_servers() -> None:
    pool = ServerPool(["http://a", "http://b"])
    pool.set_reference({"x.fits": "1" * 40, "y.fits": "2" * 40}, "http://a")
    assert not pool.needs_check(0) and pool.needs_check(1)
    assert pool.compare(1, {"x.fits": "1" * 40, "y.fits": "3" * 40, "z.fits": "4" * 40}) == 1
    why = pool.conflict("y.fits")
    assert why is not None and "http://a" in why and "http://b" in why
    assert pool.conflict("x.fits") is None and pool.conflict("z.fits") is None


def test_server_lists_from_env_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_server_list("http://a/, http://b,,http://a") == ["http://a", "http://b"]
    monkeypatch.setenv("CRDS_SERVER_URL", "http://a:1,http://b:2/")
    monkeypatch.setenv("CRDS_FS_FAILOVER_RESET", "7")
    settings = Settings.from_env()
    assert settings.server_url == "http://a:1"
    assert settings.server_list == ("http://a:1", "http://b:2")
    assert settings.failover_reset == 7.0
    settings = Settings.from_env(server_url=["http://c", "http://d"], proxy="http://p:3128")
    assert settings.server_list == ("http://c", "http://d") and settings.proxy == "http://p:3128"


def test_no_proxy_matching(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1, .stsci.edu,example.org:8080")
    assert bypasses_proxy("http://127.0.0.1:5000/json/")
    assert bypasses_proxy("https://jwst-crds.stsci.edu/x")
    assert bypasses_proxy("http://example.org:8080/x")
    assert not bypasses_proxy("http://example.org/x")
    assert not bypasses_proxy("http://10.0.0.1/x")
    monkeypatch.setenv("NO_PROXY", "*")
    assert bypasses_proxy("http://anything/x")
    monkeypatch.setenv("NO_PROXY", "")
    assert not bypasses_proxy("http://127.0.0.1/x")


# --- a client over real servers ---------------------------------------------------------------


@pytest.fixture
def two_servers(tmp_path: Path):
    root = make_tiny_root(tmp_path / "root")
    servers = [ServerProcess(root, "--index", str(tmp_path / f"index{i}"),
                             log_dir=tmp_path) for i in (1, 2)]
    for server in servers:
        server.start()
    try:
        yield root, servers
    finally:
        for server in servers:
            server.stop()


def _gets(server: ServerProcess, name: str) -> int:
    return sum(1 for line in server.log().splitlines()
               if '"GET /unchecked_get/' in line and name in line and '" 200 ' in line)


def _logged(server: ServerProcess, name: str, count: int = 1) -> bool:
    """The server's access log shows *count* downloads of *name* (it is written just after
    the response, so it may lag the client a moment)."""
    return wait_until(lambda: _gets(server, name) == count, 10)


def test_client_skips_a_dead_primary_for_rpc_and_downloads(two_servers) -> None:
    _root, (primary, secondary) = two_servers
    dead = f"http://127.0.0.1:{free_port()}"
    with CrdsClient([dead, primary.url], retries=0, connect_timeout=2) as client:
        assert client.get_server_info()["observatory"] == "hst"
        assert client.server_url == primary.url
        status = client.servers_status()
        assert status["in_use"] == primary.url
        assert status["servers"][0]["state"] == "down" and status["servers"][0]["failures"] == 1
    with CrdsClient([primary.url, secondary.url], retries=0, connect_timeout=2) as client:
        url = client.file_url("aaa00001j_bia.fits", "hst")
        assert url.startswith(primary.url)
        primary.stop()
        response = client.open_stream(url)  # relocated to the secondary
        try:
            assert response.content == TINY_REFERENCES["aaa00001j_bia.fits"]
            assert response.url.startswith(secondary.url)
        finally:
            response.close()
        assert client.server_url == secondary.url
        assert _logged(secondary, "aaa00001j_bia.fits")
        secondary.stop()
        with pytest.raises(ServerUnreachableError) as info:
            client.call("get_default_context", "hst")
        assert primary.url in str(info.value) and secondary.url in str(info.value)


def test_client_fails_over_on_5xx_and_timeout(two_servers) -> None:
    from tests.faultproxy import FaultProxy

    _root, (primary, secondary) = two_servers
    with FaultProxy(primary.url) as broken:
        broken.set_fault("503")
        with CrdsClient([broken.url, secondary.url], retries=0) as client:
            assert client.get_default_context("hst") == "hst_0001.pmap"
            assert client.server_url == secondary.url
            assert "503" in client.servers_status()["servers"][0]["last_error"]
        broken.set_fault("slow", delay=5.0)  # answers after 5 s: the read timeout is 1 s
        with CrdsClient([broken.url, secondary.url], retries=0, read_timeout=1) as client:
            assert client.get_default_context("hst") == "hst_0001.pmap"
            assert "timed out" in client.servers_status()["servers"][0]["last_error"]


# --- mounts -----------------------------------------------------------------------------------


def test_mount_fails_over_and_returns_to_primary(two_servers, mounter: Mounter) -> None:
    _root, (primary, secondary) = two_servers
    mount = mounter(primary.url, "--server", secondary.url, "--retries", "1",
                    env={"CRDS_FS_FAILOVER_RESET": "3", "CRDS_FS_FAILOVER_BACKOFF": "1"})
    refs = mount.path("references", "hst")
    assert (refs / "aaa00001j_bia.fits").read_bytes() == TINY_REFERENCES["aaa00001j_bia.fits"]
    assert _logged(primary, "aaa00001j_bia.fits")
    assert mount.stats()["mount"]["servers"]["in_use"] == primary.url

    primary.stop()  # mid-run: the next read goes to the secondary, well within the timeout
    name = "ccc00003j_drk.fits"
    assert (refs / name).read_bytes() == TINY_REFERENCES[name]
    assert _logged(secondary, name) and _gets(primary, name) == 0
    servers = mount.stats()["mount"]["servers"]
    assert servers["in_use"] == secondary.url, servers
    assert mount.stats()["mount"]["server"] == secondary.url
    assert "failed" in mount.log() and primary.url in mount.log()

    primary.start()  # back on its port: traffic returns after the reset interval (3 s)
    assert wait_until(lambda: mount.stats()["mount"]["servers"]["in_use"] == primary.url, 30)
    name = "ddd00004j_drk.fits"
    assert (refs / name).read_bytes() == TINY_REFERENCES[name]
    assert _logged(primary, name) and _gets(secondary, name) == 0


def test_disagreeing_catalogs_are_eio_naming_both(tmp_path: Path, mounter: Mounter) -> None:
    root_a = make_tiny_root(tmp_path / "a")
    root_b = tmp_path / "b"
    shutil.copytree(root_a, root_b)
    victim = "ccc00003j_drk.fits"
    (root_b / "references" / "hst" / victim).write_bytes(b"another dark\n" * 1000)
    servers = [ServerProcess(root, "--index", str(tmp_path / f"index-{root.name}"),
                             log_dir=tmp_path) for root in (root_a, root_b)]
    try:
        for server in servers:
            server.start()
        mount = mounter(servers[0].url, "--server", servers[1].url, "--retries", "0")
        refs = mount.path("references", "hst")
        with pytest.raises(OSError) as info:
            (refs / victim).read_bytes()
        assert info.value.errno == errno.EIO
        lines = [line for line in mount.log().splitlines() if victim in line and "ERROR" in line]
        assert lines and all(s.url in lines[-1] for s in servers), mount.log()
        # never fetched from either server
        assert not any(_gets(server, victim) for server in servers)
        # the files they agree on are served
        good = "aaa00001j_bia.fits"
        assert (refs / good).read_bytes() == TINY_REFERENCES[good]
        assert mount.stats()["mount"]["servers"]["conflicts"] == 1
    finally:
        for server in servers:
            server.stop()


def test_dead_proxy_is_named(two_servers, monkeypatch: pytest.MonkeyPatch) -> None:
    _root, (primary, _secondary) = two_servers
    monkeypatch.setenv("NO_PROXY", "")
    dead = f"http://127.0.0.1:{free_port()}"
    with CrdsClient(primary.url, retries=0, proxy=dead) as client, \
            pytest.raises(ServerUnreachableError) as info:
        client.get_server_info()
    assert f"the HTTP proxy {dead} failed" in str(info.value)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # exempt: the proxy is not used at all
    with CrdsClient(primary.url, retries=0, proxy=dead) as client:
        assert client.get_server_info()["observatory"] == "hst"


@pytest.mark.parametrize("command", ["sync", "bestrefs"])
def test_sync_and_bestrefs_take_proxy(two_servers, tmp_path: Path, command: str) -> None:
    """`--proxy` on sync and bestrefs reaches their client, as on mount (NO_PROXY applies)."""
    _root, (primary, _secondary) = two_servers
    dead = f"http://127.0.0.1:{free_port()}"
    args = {"sync": ["--cache", str(tmp_path / "cache"), "--contexts", "hst_0001.pmap"],
            "bestrefs": ["--remote", "--context", "hst_0001.pmap", str(tmp_path / "x.json")]}
    env = {**os.environ, "NO_PROXY": "", "no_proxy": "", "CRDS_FS_RETRIES": "0",
           "CRDS_FS_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "crds_fs.cli", command, "--server",
                           primary.url, "--proxy", dead, *args[command]],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    assert f"the HTTP proxy {dead} failed" in done.stderr
    if command == "sync":  # exempted by NO_PROXY: the proxy is not used at all
        done = subprocess.run([sys.executable, "-m", "crds_fs.cli", command, "--server",
                               primary.url, "--proxy", dead, *args[command]],
                              capture_output=True, text=True, timeout=120,
                              env={**env, "NO_PROXY": "127.0.0.1"})
        assert done.returncode == 0, done.stderr
