"""System integration: mount(8)/fstab calling form, multi-user access, `crds-fs status`.

The mount(8) test drives the real `mount -t fuse.crds-fs` and `umount` in a private mount
namespace (`unshare -m`): mount(8) drops PATH, so mount.fuse3's `/bin/sh -c crds-fs ...`
searches /bin/sh's default path; the namespace bind-mounts a folder holding a `crds-fs`
shim (this tree's CLI) over /usr/local/sbin, the first entry of that path, without
touching the machine's own /usr/local.  Registration in bestrefs/ by other users (EACCES)
is tested in tests/test_hostile_datasets.py::test_allow_other_only_the_owner_registers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from crds_fs.cli.fstab import FstabError, is_mount_form, translate
from crds_fs.cli.mount import mount_source
from tests.mounting import fuse_available, is_mounted, pid_alive, wait_until

ROOT = Path(__file__).resolve().parents[1]
SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"
MOUNT = shutil.which("mount", path=SBIN)
UMOUNT = shutil.which("umount", path=SBIN)
MOUNT_FUSE = shutil.which("mount.fuse3", path=SBIN) or shutil.which("mount.fuse", path=SBIN)
UNSHARE = shutil.which("unshare", path=SBIN)
COMMANDS = ("mount", "umount", "status", "serve", "sync", "cache")


# --- the argv translation (no FUSE) ---------------------------------------------------------


def test_translate_the_issue_example() -> None:
    argv = ["https://hst-crds.stsci.edu", "/crds", "-o",
            "ro,cache=/var/cache/crds-fs,context=operational,allow_other"]
    assert is_mount_form(argv, COMMANDS)
    assert translate(argv) == ["mount", "/crds", "--server", "https://hst-crds.stsci.edu",
                               "--cache", "/var/cache/crds-fs", "--context", "operational",
                               "-o", "ro,allow_other"]


def test_translate_every_crds_option_and_drops_mount8_options() -> None:
    opts = ("rw,dev,suid,nodev,defaults,_netdev,nofail,noauto,user,users,"
            "x-systemd.requires=network-online.target,comment=x,observatory=hst,"
            "server=http://b:1,server=http://c:2,proxy=http://p:3128,refresh=0,poll=5,"
            "datasets=/d,engine=local,cache-max-size=50G,read_timeout=9,retries=1,"
            "log_file=/l.log,ready_timeout=60,offline,nonempty,foreground,"
            "default_permissions")
    args = translate(["http://a:8", "/m", "-o", opts])
    assert args == ["mount", "/m", "--server", "http://a:8", "--observatory", "hst",
                    "--server", "http://b:1", "--server", "http://c:2",
                    "--proxy", "http://p:3128", "--refresh", "0", "--poll", "5",
                    "--datasets", "/d", "--engine", "local", "--cache-max-size", "50G",
                    "--read-timeout", "9", "--retries", "1", "--log-file", "/l.log",
                    "--ready-timeout", "60", "--offline", "--nonempty", "--foreground",
                    "-o", "rw,nodev,default_permissions"]


def test_translate_refuses_what_it_cannot_mean() -> None:
    assert not is_mount_form(["mount", "/m"], COMMANDS)
    assert not is_mount_form(["--help"], COMMANDS)
    assert not is_mount_form(["moutn", "/m"], COMMANDS)  # a typo: click says no such command
    assert is_mount_form(["hst-crds.stsci.edu", "/m", "-o", "ro"], COMMANDS)
    assert translate(["crds-fs", "/m", "-o", "server=http://a"])[:4] == [
        "mount", "/m", "--server", "http://a"]
    with pytest.raises(FstabError, match="not a server URL"):
        translate(["hst-crds.stsci.edu", "/m"])
    with pytest.raises(FstabError, match="needs a value"):
        translate(["http://a", "/m", "-o", "cache="])
    with pytest.raises(FstabError, match="drop_privileges"):
        translate(["http://a", "/dev/fd/3", "-o", "ro"])
    with pytest.raises(FstabError, match="unexpected argument"):
        translate(["http://a", "/m", "extra"])


def test_mount_source_shows_the_server_without_credentials() -> None:
    assert mount_source("https://user:secret@hst-crds.stsci.edu/?token=x") == \
        "https://hst-crds.stsci.edu"
    assert mount_source("http://127.0.0.1:8080/hst/") == "http://127.0.0.1:8080/hst"
    assert mount_source("http://[::1]:9") == "http://[::1]:9"
    assert mount_source("https://a,b c") == "https://abc"  # nothing -o cannot carry
    assert mount_source(None) == mount_source("not a url") == "crds-fs"


def test_mount_form_error_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "crds_fs.cli", "nourl", str(tmp_path),
                             "-o", "ro"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "not a server URL" in result.stderr and "Traceback" not in result.stderr


# --- the mount(8) form, as mount.fuse3 calls it (real mount) --------------------------------


def test_mount_form_mounts_with_translated_options(mounter, demo_server, tmp_path: Path) -> None:
    mountpoint, cache = tmp_path / "crds", tmp_path / "cache"
    mountpoint.mkdir()
    opts = (f"rw,cache={cache},context=operational,refresh=0,log_file={tmp_path}/m.log,"
            "_netdev,nofail,x-systemd.automount,defaults,dev,suid")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
    result = subprocess.run([sys.executable, "-m", "crds_fs.cli", demo_server.url,
                             str(mountpoint), "-o", opts], capture_output=True, text=True,
                            env=env, timeout=120)
    mount = mounter(demo_server.url, start=False, mountpoint=mountpoint, cache_dir=cache)
    assert result.returncode == 0, result.stderr + (tmp_path / "m.log").read_text()
    mount.pid = mount.stats()["mount"]["pid"]
    stats = mount.stats()
    assert stats["mount"]["cache_dir"] == str(cache)
    assert stats["refresh"]["interval_s"] == 0
    line = next(x for x in Path("/proc/self/mountinfo").read_text().splitlines()
                if x.split()[4] == str(mountpoint))
    assert " rw," in line and "nosuid" in line and f"fuse.crds-fs {demo_server.url} " in line
    assert (tmp_path / "m.log").exists()


needs_mount8 = pytest.mark.skipif(
    not (MOUNT and UMOUNT and MOUNT_FUSE and UNSHARE and os.geteuid() == 0
         and fuse_available()),
    reason="needs root, mount(8), umount(8), mount.fuse3, unshare(1) and /dev/fuse")

#: runs inside `unshare -m`: shim on the default PATH, mount(8), reads, umount(8)
DRIVER = r"""
import json, os, subprocess, sys, time
shim_dir, url, mountpoint, cache, out = sys.argv[1:6]
report = {"steps": []}
def run(*cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    report["steps"].append([list(cmd), r.returncode, r.stdout[-2000:], r.stderr[-2000:]])
    return r
pid = None
try:
    assert run("mount", "--make-rprivate", "/").returncode == 0
    assert run("mount", "--bind", shim_dir, "/usr/local/sbin").returncode == 0
    r = run("mount", "-t", "fuse.crds-fs", url, mountpoint, "-o",
            f"ro,cache={cache},context=operational,allow_other,_netdev,nofail,refresh=0")
    report["mount_rc"] = r.returncode
    if r.returncode == 0:
        stats = json.load(open(os.path.join(mountpoint, ".crds-fs", "stats")))
        pid = stats["mount"]["pid"]
        report["pid"] = pid
        report["mountinfo"] = [l for l in open("/proc/self/mountinfo") if mountpoint in l]
        with open(os.path.join(mountpoint, "mappings", "hst", "hst_9001.pmap"), "rb") as f:
            report["pmap_head"] = f.read(200).decode("ascii", "replace")
        # not this Python: uid 65534 may not reach its install; sh and head are enough
        other = run("/bin/sh", "-c", 'id -u && head -c 40 "$1"', "sh",
                    os.path.join(mountpoint, "mappings", "hst", "hst_9001.pmap"),
                    user=65534, group=65534, extra_groups=[], cwd="/")
        report["other_user"] = [other.returncode, other.stdout, other.stderr]
        report["umount_rc"] = run("umount", mountpoint).returncode
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
            if st == "Z":
                break
            time.sleep(0.05)
        report["daemon_gone"] = not os.path.exists(f"/proc/{pid}") or st == "Z"
        report["still_mounted"] = any(mountpoint in l for l in open("/proc/self/mountinfo"))
finally:
    if pid is not None and os.path.exists(f"/proc/{pid}"):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True)
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    with open(out, "w") as f:
        json.dump(report, f)
"""


@needs_mount8
def test_real_mount8_and_umount(demo_server, tmp_path: Path) -> None:
    """`mount -t fuse.crds-fs URL MP -o ro,cache=...,allow_other` then `umount MP`: the
    daemon serves files (to root and to uid 65534) and exits when unmounted."""
    base = Path(tempfile.mkdtemp(prefix="crds-fs-mount8-"))
    try:
        base.chmod(0o755)  # uid 65534 must reach the mount point
        shim_dir, mountpoint = base / "sbin", base / "crds"
        shim_dir.mkdir()
        mountpoint.mkdir()
        shim = shim_dir / "crds-fs"
        shim.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} "
                        '-m crds_fs.cli "$@"\n')
        shim.chmod(0o755)
        out = tmp_path / "report.json"
        done = subprocess.run([UNSHARE, "-m", "--propagation", "private", sys.executable,
                               "-c", DRIVER, str(shim_dir), demo_server.url, str(mountpoint),
                               str(tmp_path / "cache"), str(out)], timeout=240,
                              capture_output=True, text=True, check=False)
        if not out.exists() and "unshare" in done.stderr:
            pytest.skip(f"no private mount namespace here: {done.stderr.strip()}")
        assert out.exists(), done.stderr
        report = json.loads(out.read_text())
        detail = json.dumps(report["steps"], indent=1)
        assert report.get("mount_rc") == 0, detail
        assert any(f"fuse.crds-fs {demo_server.url} " in line and " ro," in line
               and "allow_other" in line
                   for line in report["mountinfo"]), report["mountinfo"]
        assert "header" in report["pmap_head"], report["pmap_head"]
        rc, stdout, stderr = report["other_user"]
        assert rc == 0 and stdout.startswith("65534\n") and "header" in stdout, stderr
        assert report["umount_rc"] == 0, detail
        assert report["daemon_gone"] and not report["still_mounted"], detail
        assert not pid_alive(report["pid"])
        assert not is_mounted(mountpoint)  # never visible outside the namespace anyway
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- crds-fs status ------------------------------------------------------------------------


def _status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crds_fs.cli", "status", *args],
                          capture_output=True, text=True, timeout=60)


def test_status_lists_two_mounts(mounter, demo_server) -> None:
    first = mounter(demo_server.url, "--refresh", "0")
    second = mounter(demo_server.url, "--cache-max-size", "10M", "-o", "allow_other")
    first.path("mappings", "hst", "hst_9001.pmap").read_bytes()
    first.path("mappings", "hst", "hst_9001.pmap").read_bytes()
    subprocess.run([sys.executable, "-m", "crds_fs.cli", "refresh", str(second.mountpoint)],
                   capture_output=True, timeout=60, check=True)
    result = _status("--json")
    rows = {row["mountpoint"]: row for row in json.loads(result.stdout)}
    one, two = rows[str(first.mountpoint)], rows[str(second.mountpoint)]
    for row, mount in ((one, first), (two, second)):
        assert row["state"] == "online" and row["server"] == demo_server.url
        assert row["context"] == "hst_9001.pmap" and row["pid"] == mount.pid
        assert row["cache_dir"] == str(mount.cache_dir)
    assert one["cached_files"] >= 1 and one["cached_bytes"] > 0
    assert one["hits"] + one["misses"] >= 1 and one["hit_rate"] is not None
    assert one["refresh_interval_s"] == 0 and one["last_refresh"] is None
    assert two["last_refresh"] and two["last_refresh_result"] == "unchanged"
    assert two["max_bytes"] == 10 * 1024**2
    text = _status().stdout
    assert f"{first.mountpoint}: online, hst hst_9001.pmap" in text
    assert "only on demand" in text and "hit rate" in text


def test_status_reports_a_stopped_daemon_bounded(mounter, demo_server) -> None:
    mount = mounter(demo_server.url, "--refresh", "0")
    os.kill(mount.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = _status("--json", "--timeout", "1")
        assert time.monotonic() - started < 30  # bounded, not hung
    finally:
        os.kill(mount.pid, signal.SIGCONT)
    rows = {row["mountpoint"]: row for row in json.loads(result.stdout)}
    assert rows[str(mount.mountpoint)]["state"] == "error"
    assert "not answering" in rows[str(mount.mountpoint)]["error"]
    assert result.returncode == 1


# --- foreground under systemd: logs to the journal stream -----------------------------------


def test_foreground_logs_journal_style_when_stderr_is_journal_stream(
        mounter, demo_server, tmp_path: Path) -> None:
    """As `Type=simple` + `crds-fs mount --foreground` under systemd: stderr is the journal
    (JOURNAL_STREAM names it), so lines carry `<N>` priorities and no timestamps, and no
    log file is needed."""
    mount = mounter(demo_server.url, start=False)
    mount.mountpoint.mkdir()
    err_path = tmp_path / "journal.txt"
    with open(err_path, "wb") as err:
        st = os.fstat(err.fileno())
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = subprocess.Popen([sys.executable, "-m", "crds_fs.cli", "mount",
                                 str(mount.mountpoint), "--foreground", "--server",
                                 demo_server.url, "--cache", str(mount.cache_dir)],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        assert wait_until(lambda: mount.path(".crds-fs", "stats").exists(), 60), \
            err_path.read_text()
        mount.pid = proc.pid
        assert mount.umount().returncode == 0
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = [x for x in err_path.read_text().splitlines() if "crds_fs" in x]
    assert any(x.startswith("<6>INFO crds_fs.mount: mounted ") for x in lines), lines
    assert all(x[:1] == "<" and x[2:3] == ">" for x in lines), lines  # no timestamps
    assert not (mount.cache_dir / "logs" / "mount.log").exists()


# --- the shipped systemd units ------------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="needs systemd-analyze")
def test_systemd_units_verify(tmp_path: Path) -> None:
    """docs/systemd/ units pass `systemd-analyze verify` (crds-fs's path pointed at an
    executable here, since /usr/local/bin/crds-fs need not exist on a test machine)."""
    shim = tmp_path / "crds-fs"
    shim.write_text("#!/bin/sh\nexit 0\n")
    shim.chmod(0o755)
    units = ROOT / "docs" / "systemd"
    targets = {"crds-fs@.service": "crds-fs@crds.service", "crds.mount": "crds.mount"}
    for name, target in targets.items():
        text = (units / name).read_text()
        assert "/usr/local/bin/crds-fs" in text or name.endswith(".mount")
        (tmp_path / target).write_text(text.replace("/usr/local/bin/crds-fs", str(shim)))
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", *(str(tmp_path / t)
                                                          for t in targets.values())],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # the example configuration names only variables crds-fs (or the unit) reads
    conf = (units / "crds.conf.example").read_text()
    names = {line.split("=", 1)[0].lstrip("#") for line in conf.splitlines()
             if "=" in line and not line.startswith("# ")}
    assert names == {"CRDS_FS_MOUNTPOINT", "CRDS_SERVER_URL", "CRDS_FS_CACHE", "CRDS_CONTEXT",
                     "CRDS_FS_CACHE_MAX_SIZE", "CRDS_FS_REFRESH", "CRDS_FS_OPTIONS"}
    source = "".join(p.read_text() for p in (ROOT / "crds_fs").rglob("*.py"))
    for name in names - {"CRDS_FS_MOUNTPOINT", "CRDS_FS_OPTIONS"}:
        assert f'"{name}"' in source, name
