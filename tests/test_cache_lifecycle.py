"""The cache's lifecycle (issue 10, section 3): pins, status, verify, prune, size limits.

Real `crds-fs serve` of the demo observatory (tests/mounting.py's `demo_server`), real
caches in tmp dirs, the real CLI as a subprocess, and real FUSE mounts where the mount's
side of the story matters (verify while mounted, pins honoured by the daemon's eviction).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from crds_fs.cache import FileCache
from crds_fs.config import Settings
from crds_fs.demo.spec import OLD_CONTEXT, OPERATIONAL_CONTEXT
from crds_fs.lifecycle import (
    cache_status,
    context_closure,
    list_pins,
    pin_context,
    prune_cache,
    unpin_context,
    verify_cache,
)


def settings_for(server: Any, cache_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"server_url": server.url, "cache_dir": cache_dir,
                              "observatory": "hst", "connect_timeout": 2.0,
                              "read_timeout": 5.0, "retries": 1, "backoff": 0.05,
                              "cache_min_free": "0"}
    values.update(overrides)
    return Settings(**values)


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """`crds-fs ARGS` as a subprocess with only the CRDS variables the test gives."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("CRDS_") or k == "CRDS_FS_TESTING"}
    clean.update(env or {})
    return subprocess.run([sys.executable, "-m", "crds_fs.cli", *args], capture_output=True,
                          text=True, env=clean, timeout=timeout)


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def corrupt_in_place(path: Path) -> bytes:
    """Flip bytes of a cached (read-only) file keeping its size, inode and mtime: the bit
    rot only a re-hash finds.  Returns the original content."""
    original = path.read_bytes()
    st = path.stat()
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(len(original) // 2)
        handle.write(bytes(b ^ 0xFF for b in original[len(original) // 2:][:64]))
    os.chmod(path, 0o444)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == len(original) and path.read_bytes() != original
    return original


@pytest.fixture
def filled(demo_server: Any, tmp_path: Path) -> Settings:
    """A cache holding every mapping and reference of both demo contexts."""
    settings = settings_for(demo_server, tmp_path / "cache")
    with FileCache.open(settings) as cache:
        for name in [*cache.catalog.mappings(), *cache.catalog.references()]:
            cache.ensure(name)
    return settings


def closure(cache: FileCache, context: str) -> set[str]:
    mappings, refs = context_closure(cache, context, references=True)
    return {*mappings, *refs}


# --- pins and eviction -----------------------------------------------------------------------


def test_pins_survive_restart_and_eviction_honours_them_and_the_limit(filled: Settings) -> None:
    with FileCache.open(filled) as cache:
        old = closure(cache, OLD_CONTEXT)
        new_only = closure(cache, OPERATIONAL_CONTEXT) - old
        pin = pin_context(cache, OLD_CONTEXT, references=True)
        assert set(pin.names) == old
        sizes = {n: e.size for n, e in cache.index.entries().items()}
    assert any(cache.catalog.kind(n) == "reference" for n in new_only)
    kept_bytes = sum(sizes[n] for n in old) + sum(
        sizes[n] for n in sizes if n.endswith("map"))
    # the limit forces evictions: everything pinned (plus mappings) fits, little else does
    limit = int(kept_bytes / 0.9) + 40_000
    assert sum(sizes.values()) > limit
    with FileCache.open(filled, max_bytes=limit) as restarted:  # a restart: pins from disk
        assert [p.context for p in list_pins(restarted)] == [OLD_CONTEXT]
        cached = restarted.cached_names()
        assert old <= cached, "a pinned file was evicted"
        assert all(restarted.local_path(n).exists() for n in old)
        evicted = {n for n in new_only if n not in cached}
        assert evicted and all(not restarted.local_path(n).exists() for n in evicted)
        assert restarted.stats()["cached_bytes"] <= 0.9 * limit
        assert restarted.stats()["pinned_files"] == len(old)
        # unpinned, the same files are evictable: a limit below them takes them
        assert unpin_context(restarted, OLD_CONTEXT)
        assert not unpin_context(restarted, OLD_CONTEXT)
    small = int(sum(sizes[n] for n in sizes if n.endswith("map")) / 0.9) + 10_000
    with FileCache.open(filled, max_bytes=small) as trimmed:
        assert list_pins(trimmed) == []
        refs_left = {n for n in trimmed.cached_names() if trimmed.catalog.kind(n) == "reference"}
        assert len(refs_left) < len([n for n in old if trimmed.catalog.kind(n) == "reference"])


def test_pin_mappings_only_leaves_references_evictable(filled: Settings) -> None:
    with FileCache.open(filled) as cache:
        pin = pin_context(cache, "operational", references=False)
        mappings, refs = context_closure(cache, OPERATIONAL_CONTEXT, references=True)
        assert pin.context == OPERATIONAL_CONTEXT and set(pin.names) == set(mappings)
        assert not set(refs) & cache.index.pinned_names()


def test_pin_cli_lists_and_unpins_across_processes(filled: Settings) -> None:
    cache = str(filled.cache_dir)
    result = run_cli("cache", "pin", OPERATIONAL_CONTEXT, "--references", "--cache", cache)
    assert result.returncode == 0, result.stderr
    assert f"pinned {OPERATIONAL_CONTEXT} (mappings and references)" in result.stdout
    listed = run_cli("cache", "pins", "--json", "--cache", cache)
    assert listed.returncode == 0, listed.stderr
    pins = json.loads(listed.stdout)
    assert [p["context"] for p in pins] == [OPERATIONAL_CONTEXT]
    assert pins[0]["references"] and pins[0]["cached_files"] == pins[0]["files"] > 10
    with FileCache.open(filled) as other:  # another process's pin is seen here
        assert closure(other, OPERATIONAL_CONTEXT) == set(other.index.pinned_names())
    assert run_cli("cache", "unpin", OPERATIONAL_CONTEXT, "--cache", cache).returncode == 0
    again = run_cli("cache", "unpin", OPERATIONAL_CONTEXT, "--cache", cache)
    assert again.returncode != 0 and "not pinned" in again.stderr
    unknown = run_cli("cache", "pin", "hst_0042.pmap", "--cache", cache)
    assert unknown.returncode == 1 and "hst_0042.pmap" in unknown.stderr


# --- status ----------------------------------------------------------------------------------


def test_status_numbers(demo_server: Any, tmp_path: Path) -> None:
    settings = settings_for(demo_server, tmp_path / "cache")
    with FileCache.open(settings) as cache:
        names = ["hst_acs_9000.imap", "hst_acs_darkfile_9000.rmap",
                 "hst_acs_darkfile_9101.fits", "hst_acs_darkfile_9102.fits",
                 "hst_cos_flatfile_9801.fits"]
        for name in names:
            cache.ensure(name)  # 5 misses
        for name in names[:3]:
            cache.ensure(name)  # 3 hits
        cache.ensure(names[2])  # 4 hits
        sizes = {n: cache.catalog.get(n).size for n in names}
    result = run_cli("cache", "status", "--json", "--cache", str(settings.cache_dir),
                     env={"CRDS_FS_CACHE_MAX_SIZE": "10M", "CRDS_FS_CACHE_MIN_FREE": "1%"})
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["observatory"] == "hst" and status["server"] == demo_server.url
    assert status["files"] == 5 and status["bytes"] == sum(sizes.values())
    assert status["by_kind"]["mapping"] == {"files": 2, "bytes": sizes[names[0]]
                                            + sizes[names[1]]}
    assert status["by_kind"]["reference"]["files"] == 3
    assert status["by_instrument"]["acs"]["files"] == 4
    assert status["by_instrument"]["cos"] == {"files": 1, "bytes": sizes[names[4]]}
    assert (status["hits"], status["misses"]) == (4, 5)
    assert status["hit_rate"] == pytest.approx(4 / 9, abs=1e-3)
    quota = status["quota"]
    assert quota["max_bytes"] == 10 << 20 and quota["min_free_setting"] == "1%"
    assert quota["min_free_bytes"] == quota["disk_bytes"] // 100
    assert status["pins"] == [] and status["mounts"] == []
    text = run_cli("cache", "status", "--cache", str(settings.cache_dir))
    assert text.returncode == 0 and "hit rate: 44.4% (4 hits, 5 misses)" in text.stdout
    # counters persist: a new process adds to them
    with FileCache.open(settings) as again:
        again.ensure(names[0])
        assert again.lookups() == (5, 5)
    with FileCache.open(settings, offline=True) as later:
        assert cache_status(later)["hits"] == 5


def test_status_counts_old_style_names_by_instrument(tmp_path: Path) -> None:
    from tests.helpers import TINY_REFERENCES, start_tiny_server

    server = start_tiny_server(tmp_path)
    try:
        settings = settings_for(server, tmp_path / "cache")
        with FileCache.open(settings) as cache:
            for name in ["hst_acs_biasfile_0001.rmap", *TINY_REFERENCES]:
                cache.ensure(name)
            status = cache_status(cache)
    finally:
        server.stop()
    # aaa00001j_bia.fits says no instrument; the cached ACS bias rmap names it
    assert status["by_instrument"]["acs"]["files"] == 3
    assert status["by_instrument"]["?"]["files"] == 2  # the darks' rmap is not cached
    assert status["by_kind"]["reference"]["files"] == 4


def test_status_of_a_folder_that_is_no_cache(tmp_path: Path) -> None:
    result = run_cli("cache", "status", "--cache", str(tmp_path))
    assert result.returncode == 1 and "is not a crds-fs cache" in result.stderr


# --- verify ----------------------------------------------------------------------------------


def test_verify_finds_and_repairs_a_corrupted_file(filled: Settings) -> None:
    cache_dir = filled.cache_dir
    name = "hst_wfc3_darkfile_9501.fits"
    path = cache_dir / "references" / "hst" / name
    original = corrupt_in_place(path)
    truncated = cache_dir / "mappings" / "hst" / "hst_cos_9000.imap"
    os.chmod(truncated, 0o644)
    truncated.write_text(truncated.read_text()[:50])
    found = run_cli("cache", "verify", "--cache", str(cache_dir))
    assert found.returncode == 1, found.stdout + found.stderr
    assert "2 bad, 0 repaired" in found.stdout
    assert f"BAD {name}" in found.stdout and "BAD hst_cos_9000.imap" in found.stdout
    assert path.read_bytes() != original  # only reported: nothing changed
    repaired = run_cli("cache", "verify", "--repair", "--json", "--cache", str(cache_dir))
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    data = json.loads(repaired.stdout)
    assert data["repaired"] == 2 and data["remaining_bad"] == 0
    assert {b["name"] for b in data["bad"]} == {name, "hst_cos_9000.imap"}
    assert path.read_bytes() == original
    quarantined = list((cache_dir / "quarantine" / "hst").glob(f"{name}.*"))
    assert len(quarantined) == 1 and quarantined[0].read_bytes() != original
    clean = run_cli("cache", "verify", "--cache", str(cache_dir))
    assert clean.returncode == 0 and " 0 bad" in clean.stdout


def test_verify_library_delete_and_report(filled: Settings) -> None:
    name = "hst_acs_flshfile_9401.fits"
    with FileCache.open(filled) as cache:
        corrupt_in_place(cache.local_path(name))
        seen: list[tuple[int, int]] = []
        result = verify_cache(cache, repair=True, delete=True, fetch=False,
                              progress=lambda done, total, _n: seen.append((done, total)))
        assert [b.name for b in result.bad] == [name] and result.bad[0].action == "deleted"
        assert not cache.local_path(name).exists() and not cache.is_cached(name)
        assert result.ok == result.checked - 1
        total = seen[0][1]
        assert seen[0][0] == 0 and seen[-1] == (total, total) and total > 30 << 20
        assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))
        assert not (filled.cache_dir / "quarantine" / "hst").exists()


def test_verify_while_mounted(demo_server: Any, mounter: Any, tmp_path: Path) -> None:
    mount = mounter(demo_server.url, cache_dir=tmp_path / "cache")
    name = "hst_acs_darkfile_9103.fits"
    through = mount.path("references", "hst", name)
    original = through.read_bytes()
    cached = tmp_path / "cache" / "references" / "hst" / name
    corrupt_in_place(cached)
    downloads = mount.stats()["cache"]["downloads_done"]
    found = run_cli("cache", "verify", "--cache", str(mount.mountpoint))
    assert found.returncode == 1 and f"BAD {name}" in found.stdout, found.stdout + found.stderr
    fixed = run_cli("cache", "verify", "--repair", "--no-fetch", "--cache",
                    str(mount.mountpoint))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "quarantined to" in fixed.stdout and not cached.exists()
    assert os.getxattr(through, "user.crds.cached") == b"no"
    # the daemon sees the removal: its next open fetches the file again
    assert through.read_bytes() == original
    assert mount.stats()["cache"]["downloads_done"] == downloads + 1
    assert sha1(cached.read_bytes()) == sha1(original)
    status = run_cli("cache", "status", "--json", "--cache", str(mount.mountpoint))
    data = json.loads(status.stdout)
    assert data["quarantined_files"] == 1
    assert [m["mountpoint"] for m in data["mounts"]] == [str(mount.mountpoint)]


# --- prune -----------------------------------------------------------------------------------


def test_prune_keeps_a_contexts_closure(filled: Settings) -> None:
    with FileCache.open(filled) as cache:
        keep = closure(cache, OLD_CONTEXT)
        everything = cache.cached_names()
        doomed = everything - keep
        assert doomed and keep
        before = {n: cache.local_path(n).exists() for n in everything}
        assert all(before.values())
        dry = run_cli("cache", "prune", "--keep-contexts", OLD_CONTEXT, "--dry-run",
                      "--json", "--cache", str(filled.cache_dir))
        assert dry.returncode == 0, dry.stderr
        planned = {r["name"] for r in json.loads(dry.stdout)["removed"]}
        assert planned == doomed
        assert all(cache.local_path(n).exists() for n in everything)  # dry run: untouched
        held = sorted(n for n in doomed if cache.catalog.kind(n) == "reference")[0]
        with cache.open_reader(held):  # open in this process: the CLI must not remove it
            pruned = run_cli("cache", "prune", "--keep-contexts", OLD_CONTEXT, "--json",
                             "--cache", str(filled.cache_dir))
        assert pruned.returncode == 0, pruned.stderr
        data = json.loads(pruned.stdout)
        assert data["in_use"] == [held]
        assert {r["name"] for r in data["removed"]} == doomed - {held}
        assert data["freed_bytes"] == sum(cache.catalog.get(n).size for n in doomed - {held})
        left = cache.cached_names()
        assert left == keep | {held}
        assert all(cache.local_path(n).exists() for n in keep)
        assert not any(cache.local_path(n).exists() for n in doomed - {held})
        assert (filled.cache_dir / "config" / "hst" / "server_config").exists()


def test_prune_keeps_pins_and_several_contexts(filled: Settings) -> None:
    with FileCache.open(filled) as cache:
        mappings, _refs = context_closure(cache, OPERATIONAL_CONTEXT, references=False)
        pin_context(cache, OPERATIONAL_CONTEXT)  # mappings only
        dry = prune_cache(cache, [OLD_CONTEXT], dry_run=True)
        assert dry.pinned == [OPERATIONAL_CONTEXT]
        assert not {n for n, _s in dry.removed} & set(mappings)
        assert any(cache.catalog.kind(n) == "reference" for n, _s in dry.removed)
        both = prune_cache(cache, [OLD_CONTEXT, "operational"], dry_run=False)
        assert both.removed == [] and both.contexts == sorted([OLD_CONTEXT,
                                                               OPERATIONAL_CONTEXT])
    usage = run_cli("cache", "prune", "--cache", str(filled.cache_dir))
    assert usage.returncode == 2 and "--keep-contexts" in usage.stderr


# --- the size limit on mount, API and settings ---------------------------------------------


def test_cache_max_size_in_settings_and_api(demo_server: Any, tmp_path: Path) -> None:
    from crds_fs.api import Session

    assert Settings.from_env(cache_max_bytes="50G").cache_max_bytes == 50 << 30
    session = Session(server=demo_server.url, cache_dir=tmp_path / "c", observatory="hst",
                      cache_max_size="100K")
    try:
        assert session.cache.max_bytes == 100 << 10
        for name in ("hst_acs_darkfile_9101.fits", "hst_acs_darkfile_9102.fits",
                     "hst_acs_darkfile_9103.fits", "hst_acs_darkfile_9105.fits"):
            session.cache.ensure(name)
        assert session.cache.stats()["cached_bytes"] <= 100 << 10
        assert session.cache.stats()["evictions"] >= 1
    finally:
        session.close()


def test_mount_eviction_honours_pins_made_while_mounted(
    demo_server: Any, mounter: Any, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    mount = mounter(demo_server.url, "--cache-max-size", "150K", cache_dir=cache_dir)
    assert mount.stats()["cache"]["max_bytes"] == 150 << 10
    result = run_cli("cache", "pin", OLD_CONTEXT, "--references", "--cache",
                     str(mount.mountpoint))
    assert result.returncode == 0, result.stderr
    unpinned = "hst_wfc3_bpixtab_9702.fits"  # only in the operational context
    pinned = ["hst_wfc3_darkfile_9501.fits", "hst_wfc3_darkfile_9502.fits",
              "hst_wfc3_darkfile_9503.fits", "hst_wfc3_darkfile_9504.fits",
              "hst_acs_darkfile_9107.fits"]
    for name in [unpinned, *pinned]:  # 8 KiB, then 5 x 34 KiB: over the 150 KiB limit
        assert mount.path("references", "hst", name).read_bytes()
    stats = mount.stats()["cache"]
    # the daemon evicted what it may (the unpinned file) and kept the pinned ones, although
    # they are the least recently used and the cache stays over its limit
    assert stats["evictions"] == 1 and stats["cached_bytes"] > 150 << 10
    assert not (cache_dir / "references" / "hst" / unpinned).exists()
    for name in pinned:
        assert (cache_dir / "references" / "hst" / name).exists(), name
    assert "pinned" in mount.log()  # the warning says why it could not get under the limit
    status = json.loads(run_cli("cache", "status", "--json", "--cache",
                                str(mount.mountpoint)).stdout)
    assert status["quota"]["max_bytes"] == 150 << 10  # the mount's limit
    assert status["quota"]["used_fraction"] > 1
    assert status["misses"] >= 6  # the idle daemon's counters, flushed by reading its stats
    assert status["pins"][0]["cached_files"] >= len(pinned)
    # pins survive a restart of the mount: its startup trim keeps them too
    assert mount.umount().returncode == 0
    again = mounter(demo_server.url, "--cache-max-size", "150K", cache_dir=cache_dir)
    for name in pinned:
        assert os.getxattr(again.path("references", "hst", name), "user.crds.cached") == b"yes"
    listed = json.loads(run_cli("cache", "pins", "--json", "--cache", str(cache_dir)).stdout)
    assert [p["context"] for p in listed] == [OLD_CONTEXT]
