"""`crds-fs sync` (crds_fs.sync + crds_fs/cli/sync.py) against the served demo observatory.

A real `crds-fs serve` of the demo data, behind the fault proxy (request counts, slowed or
failing downloads); the library is tested directly, the CLI as a real subprocess (SIGINT
mid-run, exit status, JSON report), and a real mount sharing the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crds_fs.bestrefs.sources import folder_source
from crds_fs.cache import FileCache
from crds_fs.config import Settings
from crds_fs.demo import spec
from crds_fs.errors import ConfigError
from crds_fs.sync import Syncer, SyncRequest, parse_range
from tests.faultproxy import FaultProxy
from tests.helpers import ServerProcess
from tests.mounting import wait_until

OPERATIONAL = spec.OPERATIONAL_CONTEXT  # hst_9001.pmap
OLD = "hst_9000.pmap"
EXPECTED = {d.file_name: d.expected for d in spec.DATASETS}


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def names_of(demo_root: Path, context: str, *, instrument: str | None = None,
             reftype: str | None = None) -> tuple[set[str], set[str]]:
    """(mappings, references) of *context*, computed from the demo files by the engine."""
    loaded = folder_source(demo_root / "mappings" / "hst").load_context(context)
    refs: set[str] = set()
    for instr in loaded.instruments():
        if instrument and instr != instrument:
            continue
        for kind, rmap in loaded.instrument(instr).rmaps.items():
            if reftype is None or kind == reftype:
                refs |= rmap.reference_names()
    return set(loaded.mapping_names()), refs


def expected_refs(dataset: str, context: str) -> set[str]:
    return {v for v in EXPECTED[dataset][context].values() if not v.startswith("NOT FOUND")}


@pytest.fixture(scope="module")
def sync_server(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`crds-fs serve` of the demo (with its datasets, for dataset IDs), one per module."""
    logs = tmp_path_factory.mktemp("sync-serve")
    saved = os.environ.get("CRDS_FS_DATASETS_INDEX")
    os.environ["CRDS_FS_DATASETS_INDEX"] = str(logs / "datasets-index")
    server = ServerProcess(demo_root, "--index", str(logs / "index"), "--datasets",
                           str(demo_root / "datasets"), log_dir=logs)
    try:
        server.start()
    finally:
        if saved is None:
            os.environ.pop("CRDS_FS_DATASETS_INDEX", None)
        else:
            os.environ["CRDS_FS_DATASETS_INDEX"] = saved
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def proxy_module(sync_server: Any) -> Iterator[FaultProxy]:
    with FaultProxy(sync_server.url) as proxy:
        yield proxy


@pytest.fixture
def proxy(proxy_module: FaultProxy) -> Iterator[FaultProxy]:
    proxy_module.clear_fault()
    proxy_module.reset_counts()
    yield proxy_module
    proxy_module.clear_fault()


@pytest.fixture
def open_cache(proxy: FaultProxy, tmp_path: Path) -> Iterator[Any]:
    """Factory: a FileCache on a cache dir (default tmp/cache) via the proxy; closed after."""
    opened: list[FileCache] = []

    def _open(cache_dir: Path | None = None) -> FileCache:
        settings = Settings.from_env(server_url=proxy.url, observatory="hst",
                                     cache_dir=cache_dir or tmp_path / "cache")
        cache = FileCache.open(settings, observatory="hst")
        opened.append(cache)
        return cache

    yield _open
    for cache in opened:
        cache.close()


def run_cli(proxy: FaultProxy, cache: Path, *args: str, timeout: float = 60) -> Any:
    return subprocess.run(cli_command(proxy, cache, *args), capture_output=True, text=True,
                          env=cli_env(), timeout=timeout)


def cli_command(proxy: FaultProxy | None, cache: Path, *args: str) -> list[str]:
    server = ["--server", proxy.url] if proxy is not None else []
    return [sys.executable, "-m", "crds_fs.cli", "sync", *server, "--cache", str(cache), *args]


def cli_env() -> dict[str, str]:
    """The environment without CRDS_* settings (crds, imported by other tests, sets some)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("CRDS_") or k == "CRDS_FS_TESTING"}


def cached_refs(cache: Path) -> set[str]:
    folder = cache / "references" / "hst"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


# --- which contexts, which files ------------------------------------------------------------


def test_context_selection(open_cache: Any) -> None:
    syncer = Syncer(open_cache())
    assert syncer.contexts(SyncRequest()) == [OPERATIONAL]
    assert syncer.contexts(SyncRequest(contexts=("operational",))) == [OPERATIONAL]
    assert syncer.contexts(SyncRequest(contexts=(OPERATIONAL, OLD))) == [OLD, OPERATIONAL]
    assert syncer.contexts(SyncRequest(range=parse_range("9000:9001"))) == [OLD, OPERATIONAL]
    assert syncer.contexts(SyncRequest(range=(9001, 9500))) == [OPERATIONAL]
    assert syncer.contexts(SyncRequest(last=1)) == [OPERATIONAL]
    assert syncer.contexts(SyncRequest(all=True)) == [OLD, OPERATIONAL]
    with pytest.raises(ConfigError, match="hst_0001.pmap"):
        syncer.contexts(SyncRequest(contexts=("hst_0001.pmap",)))
    with pytest.raises(ConfigError, match="pipeline contexts"):
        syncer.contexts(SyncRequest(contexts=("hst_acs_9001.imap",)))
    with pytest.raises(ConfigError, match="no context"):
        syncer.contexts(SyncRequest(range=(1, 2)))
    with pytest.raises(ConfigError, match="only one"):
        SyncRequest(last=1, all=True)
    with pytest.raises(ConfigError, match="MIN:MAX"):
        parse_range("9000-9001")


def test_contexts_fetch_mappings_only_then_nothing(open_cache: Any, demo_root: Path,
                                                   proxy: FaultProxy, tmp_path: Path) -> None:
    """Without --fetch-references only the closure's mappings come, each verified; a second
    run downloads nothing."""
    mappings, _refs = names_of(demo_root, OPERATIONAL)
    report = Syncer(open_cache()).run(SyncRequest(contexts=(OPERATIONAL,)))
    assert report.ok and report.failed == {}
    assert set(report.wanted) == mappings
    assert set(report.fetched) == mappings and report.cached == []
    for name in mappings:
        assert sha1(tmp_path / "cache" / "mappings" / "hst" / name) == sha1(
            demo_root / "mappings" / "hst" / name)
    assert cached_refs(tmp_path / "cache") == set()
    proxy.reset_counts()
    again = Syncer(open_cache()).run(SyncRequest(contexts=(OPERATIONAL,)))
    assert again.fetched == [] and set(again.cached) == mappings
    assert proxy.count("GET", "/unchecked_get/") == 0


def test_fetch_references_narrowed(open_cache: Any, demo_root: Path, tmp_path: Path) -> None:
    """--instruments / --types select exactly the references of those rmaps."""
    _maps, darks = names_of(demo_root, OPERATIONAL, instrument="acs", reftype="darkfile")
    assert len(darks) >= 2
    report = Syncer(open_cache()).run(SyncRequest(
        contexts=(OPERATIONAL,), fetch_references=True, instruments=("acs",),
        types=("darkfile",)))
    assert report.ok
    assert cached_refs(tmp_path / "cache") == darks
    for name in darks:
        assert sha1(tmp_path / "cache" / "references" / "hst" / name) == sha1(
            demo_root / "references" / "hst" / name)
    with pytest.raises(ConfigError, match="nosuch"):
        Syncer(open_cache()).run(SyncRequest(fetch_references=True, instruments=("nosuch",)))
    with pytest.raises(ConfigError, match="--fetch-references"):
        SyncRequest(types=("darkfile",))


def test_all_references_of_two_contexts(open_cache: Any, demo_root: Path,
                                        tmp_path: Path) -> None:
    maps0, old = names_of(demo_root, OLD)
    maps1, new = names_of(demo_root, OPERATIONAL)
    report = Syncer(open_cache(), jobs=4).run(
        SyncRequest(range=(9000, 9001), fetch_references=True))
    assert report.ok and report.contexts == [OLD, OPERATIONAL]
    assert cached_refs(tmp_path / "cache") == old | new
    total = sum((demo_root / "references" / "hst" / n).stat().st_size for n in old | new)
    total += sum((demo_root / "mappings" / "hst" / n).stat().st_size for n in maps0 | maps1)
    assert report.bytes_fetched == total


def test_dataset_files_and_ids(open_cache: Any, demo_root: Path, tmp_path: Path) -> None:
    """Only what the datasets need, under every context given; unknown IDs are named."""
    dataset = demo_root / "datasets" / "j9demo01q_raw.fits"
    report = Syncer(open_cache()).run(SyncRequest(contexts=(OLD, OPERATIONAL),
                                                  dataset_files=(dataset,)))
    wanted = expected_refs("j9demo01q_raw.fits", OLD) | expected_refs("j9demo01q_raw.fits",
                                                                       OPERATIONAL)
    assert report.ok, report.failed
    assert cached_refs(tmp_path / "cache") == wanted
    other = tmp_path / "cache2"
    report = Syncer(open_cache(other)).run(SyncRequest(dataset_ids=("J9DEMO02Q", "NOSUCH01Q")))
    assert cached_refs(other) == expected_refs("j9demo02q_raw.fits", OPERATIONAL)
    assert list(report.failed) == ["NOSUCH01Q"] and "NOSUCH01Q" in report.failed["NOSUCH01Q"]


# --- the command ----------------------------------------------------------------------------


def test_cli_dry_run_numbers(proxy: FaultProxy, demo_root: Path, tmp_path: Path) -> None:
    """--dry-run reports the files and bytes a real run then fetches, and writes nothing."""
    mappings, refs = names_of(demo_root, OPERATIONAL)
    sizes = {n: (demo_root / "mappings" / "hst" / n).stat().st_size for n in mappings}
    sizes |= {n: (demo_root / "references" / "hst" / n).stat().st_size for n in refs}
    cache = tmp_path / "cache"
    dry = run_cli(proxy, cache, "--fetch-references", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert set(planned["fetched"]) == set(sizes)
    assert planned["fetched_bytes"] == sum(sizes.values()) > 20_000_000
    assert cached_refs(cache) == set() and not list((cache / "mappings" / "hst").iterdir())
    real = run_cli(proxy, cache, "--contexts", OPERATIONAL, "--fetch-references", "--json")
    assert real.returncode == 0, real.stdout + real.stderr
    done = json.loads(real.stdout)
    assert set(done["fetched"]) == set(sizes) and done["bytes_fetched"] == sum(sizes.values())


def test_cli_pin_and_size_limit(proxy: FaultProxy, demo_root: Path, tmp_path: Path) -> None:
    """--pin records the synced context's pin (listed by `crds-fs cache pins`);
    --cache-max-size bounds what the sync leaves in the cache."""
    cache = tmp_path / "cache"
    result = run_cli(proxy, cache, "--contexts", OLD, "--fetch-references",
                     "--instruments", "acs", "--pin")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"pinned {OLD} and its references" in result.stderr
    pins = subprocess.run([sys.executable, "-m", "crds_fs.cli", "cache", "pins", "--json",
                           "--cache", str(cache), "--server", proxy.url],
                          capture_output=True, text=True, env=cli_env(), timeout=60)
    assert pins.returncode == 0, pins.stderr
    assert OLD in pins.stdout
    # The size limit (pins are tested with eviction in test_cache_lifecycle.py):
    other = tmp_path / "limited"
    limited = run_cli(proxy, other, "--contexts", OPERATIONAL, "--fetch-references",
                      "--instruments", "acs", "--cache-max-size", "1M")
    assert limited.returncode == 0, limited.stdout + limited.stderr
    kept = cached_refs(other)
    _maps, acs = names_of(demo_root, OPERATIONAL, instrument="acs")
    sizes = {n: (other / "references" / "hst" / n).stat().st_size for n in kept}
    # evicted as they came: what is left is at most 1M plus the file committed last
    assert kept < acs and sum(sizes.values()) - max(sizes.values()) <= 1 << 20


def test_cli_failure_is_named_and_exit_status(proxy: FaultProxy, demo_root: Path,
                                              tmp_path: Path) -> None:
    _maps, refs = names_of(demo_root, OPERATIONAL, instrument="wfc3")
    victim = sorted(refs)[0]
    proxy.set_fault("404", path_contains=victim)
    result = run_cli(proxy, tmp_path / "cache", "--fetch-references", "--instruments", "wfc3",
                     "--jobs", "3")
    assert result.returncode == 1
    assert f"    {victim}: " in result.stdout and "failed          1 file:" in result.stdout
    assert cached_refs(tmp_path / "cache") == refs - {victim}


def test_cli_interrupt_then_resume(proxy: FaultProxy, demo_root: Path, tmp_path: Path) -> None:
    """SIGINT mid-run keeps every finished file; the rerun downloads only the rest."""
    cache = tmp_path / "cache"
    _maps, refs = names_of(demo_root, OPERATIONAL)
    proxy.set_fault("slow", path_contains="/references/", delay=0.3)
    proc = subprocess.Popen(cli_command(proxy, cache, "--contexts", OPERATIONAL,
                                        "--fetch-references", "--jobs", "2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env())
    try:
        assert wait_until(lambda: len(cached_refs(cache)) >= 3, 30), proc.poll()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out + err
    assert "interrupted" in out and "run the same command again" in out
    first = cached_refs(cache)
    assert 3 <= len(first) < len(refs)
    for name in first:  # whatever is at a final path is complete and verified
        assert sha1(cache / "references" / "hst" / name) == sha1(
            demo_root / "references" / "hst" / name)
    proxy.clear_fault()
    proxy.reset_counts()
    again = run_cli(proxy, cache, "--contexts", OPERATIONAL, "--fetch-references", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    report = json.loads(again.stdout)
    assert set(report["fetched"]) == refs - first
    assert proxy.count("GET", "/unchecked_get/references/") == len(refs - first)
    assert cached_refs(cache) == refs


def test_check_files_and_repair(open_cache: Any, proxy: FaultProxy, demo_root: Path,
                                tmp_path: Path) -> None:
    request = SyncRequest(fetch_references=True, instruments=("cos",))
    assert Syncer(open_cache()).run(request).ok
    folder = tmp_path / "cache" / "references" / "hst"
    flipped, cut = sorted(cached_refs(tmp_path / "cache"))[:2]
    for name, damage in ((flipped, "flip"), (cut, "truncate")):
        path = folder / name
        before = path.stat()
        data = bytearray(path.read_bytes())
        path.chmod(0o644)
        if damage == "flip":
            data[len(data) // 2] ^= 0xFF
        else:
            del data[-10:]
        path.write_bytes(bytes(data))  # same inode; bit rot keeps the times too
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    quick = Syncer(open_cache()).run(SyncRequest(fetch_references=True, instruments=("cos",),
                                                 check_files=True))
    # The cache itself drops a copy of the wrong size on sight: fetched again, not failed;
    # the flipped byte keeps size and stamp, so only a sha1 check finds it.
    assert not quick.failed and list(quick.fetched) == [cut]
    full = run_cli(proxy, tmp_path / "cache", "--fetch-references", "--instruments", "cos",
                   "--check-sha1sum")
    assert full.returncode == 1
    assert f"    {flipped}: check failed" in full.stdout and f"    {cut}: " not in full.stdout
    proxy.reset_counts()
    fixed = Syncer(open_cache()).run(SyncRequest(fetch_references=True, instruments=("cos",),
                                                 check_sha1sum=True, repair_files=True))
    assert fixed.ok and list(fixed.repaired) == [flipped]
    assert list(fixed.fetched) == [flipped]
    assert proxy.count("GET", "/unchecked_get/references/") == 1
    for name in (flipped, cut):
        assert sha1(folder / name) == sha1(demo_root / "references" / "hst" / name)


def test_sync_into_a_mount(mounter: Any, proxy: FaultProxy, demo_root: Path,
                           tmp_path: Path) -> None:
    """`--cache MOUNTPOINT` fills the mount's own cache; the mount serves the file at once."""
    mount = mounter(proxy.url, cache_dir=tmp_path / "mcache")
    big = "hst_acs_pfltfile_9201.fits"  # the demo's largest reference
    result = subprocess.run(cli_command(None, mount.mountpoint, "--fetch-references",
                                        "--instruments", "acs", "--types", "pfltfile"),
                            capture_output=True, text=True, env=cli_env(), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"(the cache of mount {mount.mountpoint})" in result.stdout
    assert (tmp_path / "mcache" / "references" / "hst" / big).is_file()
    proxy.reset_counts()
    before = mount.stats()["cache"]
    assert sha1(mount.path("references", "hst", big)) == sha1(
        demo_root / "references" / "hst" / big)
    after = mount.stats()["cache"]
    assert proxy.count("GET", big) == 0
    assert after["downloads_done"] == before["downloads_done"] == 0
    assert after["bytes_downloaded"] == 0 and after["cached_files"] >= 1



def test_library_stop_keeps_finished_files(open_cache: Any, demo_root: Path,
                                           tmp_path: Path) -> None:
    """`Syncer.stop()` (what Ctrl-C does in the CLI) ends the run after the files in flight;
    the report says what is not done, and the next run fetches exactly that."""
    _maps, refs = names_of(demo_root, OPERATIONAL)
    holder: list[Syncer] = []

    def progress(stage: str, done: int, total: int, nbytes: int, total_bytes: int) -> None:
        if stage == "references" and done >= 2:
            holder[0].stop()

    syncer = Syncer(open_cache(), jobs=1, progress=progress)
    holder.append(syncer)
    first = syncer.run(SyncRequest(fetch_references=True))
    assert first.interrupted and not first.ok and first.not_done
    have = cached_refs(tmp_path / "cache")
    assert have == {n for n in first.fetched if n in refs} and set(first.not_done) == refs - have
    second = Syncer(open_cache()).run(SyncRequest(fetch_references=True))
    assert second.ok and set(second.fetched) == refs - have


def test_worker_processes(open_cache: Any, demo_root: Path, tmp_path: Path) -> None:
    """Spread over worker processes (each with its own FileCache on the same folder), the
    result is the same: every file once, verified."""
    _maps, refs = names_of(demo_root, OPERATIONAL, instrument="cos")
    report = Syncer(open_cache(), jobs=2, processes=2).run(
        SyncRequest(fetch_references=True, instruments=("cos",)))
    assert report.ok, report.failed
    assert cached_refs(tmp_path / "cache") == refs and set(report.fetched) >= refs
    for name in refs:
        assert sha1(tmp_path / "cache" / "references" / "hst" / name) == sha1(
            demo_root / "references" / "hst" / name)
