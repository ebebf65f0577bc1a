"""A mount that stays current: real `crds-fs serve` over a copy of the demo, real mounts.

Each test serves its own copy of the demo observatory (hard links: files are replaced,
never written in place), changes it the way a CRDS server changes (a delivery, a removal,
a new operational context, a bad file) and checks what the mount shows after a refresh.
"""

from __future__ import annotations

import ast
import json
import os
import pprint
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from crds_fs.demo import spec
from tests.faultproxy import FaultProxy
from tests.helpers import ServerProcess
from tests.mounting import pid_alive, wait_until

OBS = "hst"
NEW_REF = "hst_acs_bpixtab_9399.fits"
#: a dataset whose darkfile differs between the demo's two contexts
DATASET = "j9demo01q_raw"
OLD_CONTEXT, NEW_CONTEXT = "hst_9000.pmap", "hst_9001.pmap"
#: marked bad by the "server" in a test (no dataset of the demo needs it)
NEWLY_BAD = "hst_acs_pfltfile_9202.fits"


def expected_darkfile(context: str) -> str:
    data = next(d for d in spec.DATASETS if d.file_name == DATASET + ".fits")
    return data.expected[context]["darkfile"]


@pytest.fixture
def root(demo_root: Path, tmp_path: Path) -> Path:
    """A private copy of the demo observatory (hard links, so it costs no space)."""
    copy = tmp_path / "root"
    shutil.copytree(demo_root, copy, copy_function=os.link)
    return copy


@pytest.fixture
def server(root: Path, tmp_path: Path) -> Any:
    proc = ServerProcess(root, "--index", str(tmp_path / "serve-index"), log_dir=tmp_path)
    proc.start()
    yield proc
    proc.stop()


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    return subprocess.run([sys.executable, "-m", "crds_fs.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def refresh(mount: Any) -> subprocess.CompletedProcess:
    result = cli("refresh", str(mount.mountpoint))
    assert result.returncode == 0, (result.stdout, result.stderr, mount.log())
    return result


def deliver(root: Path, name: str = NEW_REF, source: str = "hst_acs_bpixtab_9301.fits") -> bytes:
    """A new reference on the server (atomically, as a delivery would land)."""
    folder = root / "references" / OBS
    data = (folder / source).read_bytes() + b"delivered later"
    temp = folder.parent / f".{name}.tmp"
    temp.write_bytes(data)
    os.replace(temp, folder / name)
    return data


def edit_server_config(root: Path, **changes: Any) -> None:
    """Rewrite config/hst/server_config (a new file: the demo copy is hard-linked)."""
    path = root / "config" / OBS / "server_config"
    config = ast.literal_eval(path.read_text())
    config.update(changes)
    temp = path.with_name("server_config.tmp")
    temp.write_text(pprint.pformat(config) + "\n")
    os.replace(temp, path)


def refresh_stats(mount: Any) -> dict[str, Any]:
    return mount.stats()["refresh"]


# --- tests ----------------------------------------------------------------------------------


def test_new_reference_appears_after_crds_fs_refresh(server: Any, root: Path,
                                                     mounter: Any) -> None:
    mount = mounter(server.url, "--refresh", "0")
    listing = mount.path("references", OBS)
    assert NEW_REF not in os.listdir(listing)
    with pytest.raises(FileNotFoundError):
        os.stat(listing / NEW_REF)  # also leaves a negative entry in the kernel
    data = deliver(root)

    result = refresh(mount)
    assert "1 file added, 0 removed" in result.stdout
    assert NEW_REF in result.stdout
    assert NEW_REF in os.listdir(listing)
    assert (listing / NEW_REF).stat().st_size == len(data)
    assert (listing / NEW_REF).read_bytes() == data
    again = refresh(mount)
    assert "no change" in again.stdout
    stats = refresh_stats(mount)
    assert stats["digest_offered"] is True
    assert stats["last"]["check"] == "digest"  # nothing downloaded when nothing changed
    assert stats["last_change"]["names_added"] == [NEW_REF]
    # the next start finds the refreshed catalog in the index (offline, too)
    mount.cleanup()
    offline = mounter(server.url, "--offline", cache_dir=mount.cache_dir)
    assert NEW_REF in os.listdir(offline.path("references", OBS))


def test_removed_file_enoent_unless_cached(server: Any, root: Path, mounter: Any,
                                           tmp_path: Path) -> None:
    mount = mounter(server.url, "--refresh", "0")
    refs = mount.path("references", OBS)
    cached, uncached = "hst_acs_bpixtab_9302.fits", "hst_acs_bpixtab_9303.fits"
    content = (refs / cached).read_bytes()
    os.stat(refs / uncached)  # known to the kernel: its attributes must be dropped
    away = tmp_path / "away"
    away.mkdir()
    for name in (cached, uncached):
        os.replace(root / "references" / OBS / name, away / name)

    result = refresh(mount)
    assert "0 files added, 2 removed (1 still readable: cached)" in result.stdout
    with pytest.raises(FileNotFoundError):
        os.stat(refs / uncached)
    with pytest.raises(FileNotFoundError):
        (refs / uncached).read_bytes()
    assert uncached not in os.listdir(refs)
    assert (refs / cached).read_bytes() == content
    assert cached in os.listdir(refs)


def test_operational_context_followed_with_config_and_bestrefs(server: Any, root: Path,
                                                               mounter: Any) -> None:
    datasets = root / "datasets"
    follow = mounter(server.url, "--refresh", "0", "--datasets", str(datasets))
    pinned = mounter(server.url, "--refresh", "0", "--context", NEW_CONTEXT)
    answer = follow.path("bestrefs", DATASET, "bestrefs.json")
    before = json.loads(answer.read_text())
    assert before["context"] == NEW_CONTEXT
    assert before["bestrefs"]["darkfile"] == expected_darkfile(NEW_CONTEXT)
    config = follow.path("config", OBS, "server_config")
    assert ast.literal_eval(config.read_text())["operational_context"] == NEW_CONTEXT
    bad_before = follow.path("config", OBS, "bad_files.txt").read_text().split()

    edit_server_config(root, operational_context=OLD_CONTEXT,
                       bad_files_list=[*bad_before, NEWLY_BAD])
    result = refresh(follow)
    assert f"context {NEW_CONTEXT} → {OLD_CONTEXT}" in result.stdout
    assert "bad files changed" in result.stdout
    assert follow.stats()["mount"]["context"] == OLD_CONTEXT
    assert ast.literal_eval(config.read_text())["operational_context"] == OLD_CONTEXT
    assert NEWLY_BAD in (
        follow.path("config", OBS, "bad_files.txt").read_text().split())
    after = json.loads(answer.read_text())
    assert after["context"] == OLD_CONTEXT
    assert after["bestrefs"].get("darkfile") == expected_darkfile(OLD_CONTEXT), after

    pinned_result = refresh(pinned)
    assert f"stays on {NEW_CONTEXT}" in pinned_result.stdout
    assert pinned.stats()["mount"]["context"] == NEW_CONTEXT
    assert (ast.literal_eval(pinned.path("config", OBS, "server_config").read_text())
            ["operational_context"] == NEW_CONTEXT)


def test_polling_notices_changes_by_itself(server: Any, root: Path, mounter: Any) -> None:
    mount = mounter(server.url, "--refresh", "0.5")
    deliver(root)
    assert wait_until(lambda: NEW_REF in os.listdir(mount.path("references", OBS)), 30), (
        mount.log())
    assert refresh_stats(mount)["last_change"]["trigger"] == "poll"


def test_server_down_keeps_catalog_and_serves(server: Any, root: Path, mounter: Any) -> None:
    with FaultProxy(server.url) as proxy:
        mount = mounter(proxy.url, "--refresh", "0.5")
        refs = mount.path("references", OBS)
        content = (refs / "hst_acs_bpixtab_9301.fits").read_bytes()
        names = sorted(os.listdir(refs))
        proxy.set_fault("refuse")
        assert wait_until(lambda: refresh_stats(mount)["consecutive_failures"] >= 2, 30), (
            mount.log())
        assert sorted(os.listdir(refs)) == names
        assert (refs / "hst_acs_bpixtab_9301.fits").read_bytes() == content
        failed = cli("refresh", str(mount.mountpoint))
        assert failed.returncode == 1
        assert "refresh failed" in failed.stdout and "keeps its catalog" in failed.stdout
        assert "refresh of" in mount.log() and "keeping the catalog" in mount.log()
        deliver(root)
        proxy.clear_fault()
        assert wait_until(lambda: NEW_REF in os.listdir(refs), 60), mount.log()
        assert refresh_stats(mount)["consecutive_failures"] == 0


def test_sighup_checks_now_and_logs_the_change(server: Any, root: Path, mounter: Any) -> None:
    mount = mounter(server.url, "--refresh", "0")
    deliver(root)
    assert mount.pid is not None
    os.kill(mount.pid, signal.SIGHUP)
    assert wait_until(lambda: (refresh_stats(mount)["last"] or {}).get("trigger") == "signal",
                      30), mount.log()
    assert pid_alive(mount.pid)  # SIGHUP no longer means "unmount"
    assert NEW_REF in os.listdir(mount.path("references", OBS))
    assert "(signal): 1 file added, 0 removed" in mount.log()


def test_refresh_of_a_non_mount_says_so(tmp_path: Path) -> None:
    result = cli("refresh", str(tmp_path))
    assert result.returncode == 1
    assert "not a crds-fs mount" in result.stderr


# --- without FUSE: the namespace and a real server ----------------------------------------


def test_without_digest_compares_catalogs(server: Any, root: Path, tmp_path: Path) -> None:
    """Against a server without get_catalog_digest (a real CRDS server) contexts come first
    and the catalog is compared; the swap is seen by MountSource at once."""
    from crds_fs.cache import FileCache
    from crds_fs.config import Settings
    from crds_fs.namespace import MountSource
    from crds_fs.namespace.refresh import Refresher, attach

    settings = Settings.from_env(server_url=server.url, cache_dir=tmp_path / "cache",
                                 observatory=OBS)
    with FileCache.open(settings, observatory=OBS) as cache:
        source = MountSource(cache)
        refresher = attach(source, Refresher(source, interval=0, use_digest=False))
        first = refresher.check("command")
        assert first.result == "unchanged" and first.check == "contexts+catalog"
        deliver(root)
        report = refresher.check("command")
        assert report.result == "changed" and report.names_added == [NEW_REF]
        assert NEW_REF in [name for name, _ in source.readdir(f"/references/{OBS}")]
        assert source.getattr(f"/references/{OBS}/{NEW_REF}")["st_size"] > 0
        control = json.loads(source.read("/.crds-fs/refresh", 1 << 20, 0,
                                          source.open("/.crds-fs/refresh", os.O_RDONLY).fh))
        assert control["result"] == "unchanged"
        assert source.status()["refresh"]["changes"] == 1
        source.close()


def test_dropped_file_stays_while_cached_then_goes(server: Any, root: Path,
                                                   tmp_path: Path) -> None:
    from crds_fs.cache import FileCache
    from crds_fs.config import Settings
    from crds_fs.errors import NoSuchPathError
    from crds_fs.namespace import MountSource
    from crds_fs.namespace.refresh import Refresher, attach

    name = "hst_acs_bpixtab_9302.fits"
    path = f"/references/{OBS}/{name}"
    settings = Settings.from_env(server_url=server.url, cache_dir=tmp_path / "cache",
                                 observatory=OBS)
    with FileCache.open(settings, observatory=OBS) as cache:
        source = MountSource(cache)
        refresher = attach(source, Refresher(source, interval=0))
        cache.ensure(name)
        os.replace(root / "references" / OBS / name, tmp_path / name)
        report = refresher.check("command")
        assert (report.removed, report.retained) == (1, 1)
        assert source.getattr(path)["st_size"] == (tmp_path / name).stat().st_size
        cache.local_path(name).unlink()  # evicted (e.g. by another process sharing it)
        refresher.check("command")
        with pytest.raises(NoSuchPathError):
            source.getattr(path)
        assert name not in cache.catalog.retained
        source.close()


def test_catalog_digest_moves_with_the_catalog(server: Any, root: Path) -> None:
    from crds_fs.client.catalog import catalog_digest
    from crds_fs.client.rpc import CrdsClient

    with CrdsClient(server.url) as client:
        first = catalog_digest(client, OBS)
        assert first is not None and first["operational_context"] == NEW_CONTEXT
        assert catalog_digest(client, OBS) == first
        deliver(root)
        second = catalog_digest(client, OBS)
        assert second is not None and second["digest"] != first["digest"]
        assert second["files"] == first["files"] + 1
        edit_server_config(root, bad_files_list=[NEWLY_BAD])
        third = catalog_digest(client, OBS)
        assert third is not None and third["digest"] != second["digest"]
        assert third["files"] == second["files"]


def test_refresh_zero_never_polls(server: Any, root: Path, tmp_path: Path) -> None:
    """--refresh 0: the thread runs (for crds-fs refresh) but never checks by itself."""
    import time

    from crds_fs.cache import FileCache
    from crds_fs.config import Settings
    from crds_fs.namespace import MountSource
    from crds_fs.namespace.refresh import Refresher, attach

    settings = Settings.from_env(server_url=server.url, cache_dir=tmp_path / "cache",
                                 observatory=OBS)
    with FileCache.open(settings, observatory=OBS) as cache:
        source = MountSource(cache)
        refresher = attach(source, Refresher(source, interval=0))
        refresher.start()
        time.sleep(1.0)
        assert refresher.checks == 0 and refresher.status()["next_check_in_s"] is None
        report = refresher.request("command", wait=30)
        assert report is not None and report.trigger == "command"
        assert refresher.checks == 1
        source.close()


def test_a_stalled_check_never_blocks_readers(server: Any, root: Path, mounter: Any) -> None:
    with FaultProxy(server.url) as proxy:
        mount = mounter(proxy.url, "--refresh", "0")
        refs = mount.path("references", OBS)
        content = (refs / "hst_acs_bpixtab_9301.fits").read_bytes()  # cached now
        deliver(root)
        posts = proxy.count("POST", "/json/")
        proxy.set_fault("slow", path_contains="/json/", delay=8)
        assert mount.pid is not None
        os.kill(mount.pid, signal.SIGHUP)
        assert wait_until(lambda: proxy.count("POST", "/json/") > posts, 20)
        # the check waits for the server; cached files, listings and stats do not
        assert (refs / "hst_acs_bpixtab_9301.fits").read_bytes() == content
        assert NEW_REF not in os.listdir(refs)
        assert refresh_stats(mount)["checks"] == 0
        proxy.clear_fault()
        assert wait_until(lambda: NEW_REF in os.listdir(refs), 60), mount.log()
        assert refresh_stats(mount)["checks"] == 1


def test_interval_from_options_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from crds_fs.errors import ConfigError
    from crds_fs.namespace.refresh import mount_interval, refresh_interval

    monkeypatch.delenv("CRDS_FS_REFRESH", raising=False)
    monkeypatch.delenv("CRDS_FS_BESTREFS_POLL", raising=False)
    assert refresh_interval(None) == 600
    monkeypatch.setenv("CRDS_FS_REFRESH", "30")
    assert refresh_interval(None) == 30 and refresh_interval(5) == 5
    assert mount_interval(None, 0.2) == 0.2  # bestrefs/ --poll shortens it
    assert mount_interval(0, 0.2) == 0  # never polls: bestrefs/ keeps its own poll
    monkeypatch.setenv("CRDS_FS_BESTREFS_POLL", "7")
    assert mount_interval(None) == 7
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("CRDS_FS_REFRESH", bad)
        with pytest.raises(ConfigError, match="CRDS_FS_REFRESH"):
            refresh_interval(None)
