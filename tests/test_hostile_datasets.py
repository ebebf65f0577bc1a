"""Hostile dataset files (issue 9, defects 1-3): header reading is bounded, the mount survives.

Every malformed input is generated here: a 10 GB sparse FITS file without END card (a few
KB on disk), ASDF "billion laughs" (nested YAML aliases in 1 KB), deep nesting, too many
aliases or HDUs, a FIFO named like a dataset.  Each test asserts the bounded outcome: an
error naming the file and the limit, time within a generous bound, the memory of the
process that read it, and (for mounts) that the mount still answers other paths and
unmounts.  The `-o allow_other` tests run commands as user nobody (uid 65534) against a
real mount.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from astropy.io import fits

from crds_fs.bestrefs import headers as ds
from crds_fs.bestrefs.headers import HeaderLimitError, HeaderLimits
from crds_fs.client.rpc import CrdsClient
from crds_fs.demo import spec
from tests.mounting import needs_fuse, pid_alive, wait_until

CONTEXT = spec.OPERATIONAL_CONTEXT
EXPECTED = {Path(d.file_name).name.split(".")[0]: d.expected for d in spec.DATASETS}
GOOD = "j9demo01q_raw"
#: generous bounds proving "bounded, not hung" (the defects took minutes or forever)
BOUND_S = 60.0
#: the daemon that read hostile files must stay below this (it was killed at 24 GB)
RSS_BOUND_KB = 1024 * 1024
TEN_GB = 10 * 1024**3
NOBODY = 65534


# --- generated inputs -------------------------------------------------------------------------


def cards(**keywords: object) -> bytes:
    """FITS card images of *keywords* (astropy formats them), in order."""
    return b"".join(fits.Card(key, value).image.encode("ascii")
                    for key, value in keywords.items())


def padded(data: bytes, fill: bytes = b" ") -> bytes:
    return data + fill * (-len(data) % ds.FITS_BLOCK)


def header_unit(data: bytes) -> bytes:
    return padded(data + b"END".ljust(80))


PRIMARY = {"SIMPLE": True, "BITPIX": 8, "NAXIS": 0, "EXTEND": True, "INSTRUME": "ACS",
           "DETECTOR": "WFC"}


def fits_without_end(path: Path, size: int = TEN_GB) -> Path:
    """One block of cards and no END card, then *size* bytes of nothing (sparse)."""
    path.write_bytes(padded(cards(**PRIMARY)))
    os.truncate(path, size)
    return path


def billion_laughs(path: Path, levels: int = 9) -> Path:
    """An ASDF file of ~1 KB whose tree is 9**levels nodes once aliases are expanded."""
    lines = ["#ASDF 1.0.0", "#ASDF_STANDARD 1.5.0", "%YAML 1.1", "%TAG ! tag:stsci.edu:asdf/",
             "--- !core/asdf-1.1.0", "roman:", "  meta:", "    instrument: {name: WFI}",
             "  lol0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels + 1):
        aliases = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"  lol{level}: &a{level} [{aliases}]")
    lines.append("...")
    path.write_text("\n".join(lines) + "\n")
    return path


def asdf_text(path: Path, body: list[str]) -> Path:
    path.write_text("\n".join(["#ASDF 1.0.0", "%YAML 1.1", "---", *body, "..."]) + "\n")
    return path


def read_in_subprocess(path: Path, *env: str) -> tuple[str, float, int]:
    """`read_header(path)` in a fresh process: (outcome, seconds, peak RSS in KB)."""
    code = (
        "import json, resource, sys, time\n"
        "from crds_fs.bestrefs import headers as ds\n"
        "ds._load_readers(ds.Path(sys.argv[1]), sys.argv[1].endswith('.asdf'))\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    ds.read_header(sys.argv[1], None)\n"
        "    outcome = 'read'\n"
        "except ds.DatasetError as exc:\n"
        "    outcome = f'{type(exc).__name__}: {exc}'\n"
        "print(json.dumps([outcome, time.monotonic() - start,\n"
        "                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))\n"
    )
    environment = {**os.environ, **dict(item.split("=", 1) for item in env)}
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, timeout=BOUND_S * 3, env=environment)
    assert result.returncode == 0, result.stderr
    outcome, seconds, rss = json.loads(result.stdout.strip().splitlines()[-1])
    return outcome, seconds, rss


def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of *pid* in KB, from /proc/<pid>/status."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


# --- defect 1: FITS header reading is bounded -------------------------------------------------


def test_fits_without_end_fails_fast_with_the_limit_named(tmp_path: Path) -> None:
    path = fits_without_end(tmp_path / "noend_raw.fits")
    assert path.stat().st_blocks * 512 < 1024 * 1024  # sparse: nothing like 10 GB on disk
    outcome, seconds, rss = read_in_subprocess(path)
    assert outcome.startswith("HeaderLimitError") and str(path) in outcome, outcome
    assert "CRDS_FS_HEADER_MAX_" in outcome and "no data was read" in outcome
    assert seconds < BOUND_S
    assert rss < 512 * 1024, f"peak RSS {rss} KB reading a header without END"
    print(f"no-END 10 GB FITS: {seconds:.2f} s, peak RSS {rss / 1024:.0f} MB: {outcome}")


@pytest.mark.parametrize(("limits", "variable"), [
    (HeaderLimits(max_bytes=10 * ds.FITS_BLOCK), "CRDS_FS_HEADER_MAX_BYTES"),
    (HeaderLimits(max_cards=100), "CRDS_FS_HEADER_MAX_CARDS"),
    (HeaderLimits(max_seconds=1e-9), "CRDS_FS_HEADER_TIMEOUT"),
])
def test_each_fits_limit_is_named(tmp_path: Path, limits: HeaderLimits, variable: str) -> None:
    path = fits_without_end(tmp_path / "noend_raw.fits", size=1024 * 1024)
    with pytest.raises(HeaderLimitError, match=variable) as info:
        ds.read_header(path, ["DETECTOR"], limits=limits)
    assert str(path) in str(info.value)


def test_hdu_count_is_bounded(tmp_path: Path) -> None:
    """Thousands of empty extensions after a primary that lacks a needed key."""
    path = tmp_path / "many_raw.fits"
    extension = header_unit(cards(XTENSION="IMAGE", BITPIX=8, NAXIS=0, PCOUNT=0, GCOUNT=1))
    path.write_bytes(header_unit(cards(**PRIMARY)) + extension * 50)
    with pytest.raises(HeaderLimitError, match="CRDS_FS_HEADER_MAX_HDUS"):
        ds.read_header(path, ["NOSUCHKEY"], limits=HeaderLimits(max_hdus=20))
    # Within the limit the same file reads fine (the key is simply absent).
    assert ds.read_header(path, ["NOSUCHKEY"], limits=HeaderLimits(max_hdus=100)) == {
        "INSTRUME": "ACS"}


def test_data_units_are_skipped_not_read(tmp_path: Path) -> None:
    """A primary data unit of 10 GB (sparse, never written) before the extension that holds
    a needed key: the reader seeks over it by its size from NAXISn."""
    path = tmp_path / "bigdata_raw.fits"
    primary = header_unit(cards(SIMPLE=True, BITPIX=8, NAXIS=2, NAXIS1=100_000,
                                NAXIS2=100_000, EXTEND=True, INSTRUME="ACS"))
    data_size = -(-100_000 * 100_000 // ds.FITS_BLOCK) * ds.FITS_BLOCK
    with path.open("wb") as out:
        out.write(primary)
        out.seek(len(primary) + data_size)
        out.write(header_unit(cards(XTENSION="IMAGE", BITPIX=8, NAXIS=0, PCOUNT=0, GCOUNT=1,
                                    LTV1=24.0)))
    assert path.stat().st_size > 10**10 and path.stat().st_blocks * 512 < 1024 * 1024
    start = time.monotonic()
    assert ds.read_header(path, ["LTV1"]) == {"INSTRUME": "ACS", "LTV1": "24.0"}
    assert time.monotonic() - start < BOUND_S
    # astropy agrees on where the extension starts.
    with fits.open(path, lazy_load_hdus=True) as hdul:
        assert hdul[1].header["LTV1"] == 24.0


def test_gzip_fits_and_fifo(tmp_path: Path) -> None:
    import gzip

    plain = tmp_path / "z_raw.fits"
    hdus = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(name="SCI")])
    hdus[0].header.update(PRIMARY)
    hdus[1].header["LTV1"] = 3.0
    hdus.writeto(plain)
    packed = tmp_path / "zz_raw.fits.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert ds.read_header(packed, ["DETECTOR", "LTV1"]) == ds.read_header(plain, [
        "DETECTOR", "LTV1"]) == {"INSTRUME": "ACS", "DETECTOR": "WFC", "LTV1": "3.0"}
    # A FIFO in place of a dataset is refused at once, never opened for a blocking read.
    fifo = tmp_path / "fifo_raw.fits"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(ds.DatasetError, match="fifo_raw.fits.*not a regular file"):
        ds.read_header(fifo)
    assert time.monotonic() - start < BOUND_S


def test_crds_fs_bestrefs_cli_is_bounded(tmp_path: Path, demo_root: Path) -> None:
    """The reproduction of defect 1 against `crds-fs bestrefs` (was 45 s and 3.2 GB for
    1 GB): exit status 2 naming the file and the limit; peak RSS measured."""
    path = fits_without_end(tmp_path / "noend_raw.fits")
    code = ("import atexit, resource, runpy, sys\n"
            "atexit.register(lambda: print('MAXRSS_KB=%d' % resource.getrusage("
            "resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))\n"
            "sys.argv = ['crds-fs', *sys.argv[1:]]\n"
            "runpy.run_module('crds_fs.cli', run_name='__main__')\n")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code, "bestrefs", "--context", CONTEXT,
                             "--mappings", str(demo_root), str(path)],
                            capture_output=True, text=True, timeout=BOUND_S * 3)
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr and "CRDS_FS_HEADER_MAX_" in result.stderr
    peak = int(result.stderr.rsplit("MAXRSS_KB=", 1)[1].split()[0])
    assert elapsed < BOUND_S * 2 and peak < RSS_BOUND_KB
    print(f"crds-fs bestrefs on a 10 GB no-END file: {elapsed:.1f} s, peak {peak // 1024} MB")


# --- defect 2: ASDF trees are bounded -----------------------------------------------------------


def test_billion_laughs_fails_fast(tmp_path: Path) -> None:
    path = billion_laughs(tmp_path / "lol_uncal.asdf")
    assert path.stat().st_size < 1200
    outcome, seconds, rss = read_in_subprocess(path)
    assert outcome.startswith("HeaderLimitError") and str(path) in outcome, outcome
    assert "CRDS_FS_ASDF_MAX_NODES" in outcome and "aliases expanded" in outcome
    assert seconds < BOUND_S and rss < 512 * 1024
    print(f"billion laughs: {seconds:.2f} s, peak RSS {rss / 1024:.0f} MB")


def test_each_asdf_limit_is_named(tmp_path: Path) -> None:
    aliases = asdf_text(tmp_path / "aliases_uncal.asdf",
                        ["x: &x 1", "y: [" + ", ".join(["*x"] * 50) + "]"])
    with pytest.raises(HeaderLimitError, match="CRDS_FS_ASDF_MAX_ALIASES"):
        ds.read_header(aliases, limits=HeaderLimits(asdf_max_aliases=10))
    deep = asdf_text(tmp_path / "deep_uncal.asdf", ["x: " + "[" * 150 + "]" * 150])
    with pytest.raises(HeaderLimitError, match="deep_uncal.asdf.*CRDS_FS_ASDF_MAX_DEPTH"):
        ds.read_header(deep)
    # Depth through aliases counts where the alias is used.
    nested = asdf_text(tmp_path / "aliasdepth_uncal.asdf",
                       ["a: &a " + "[" * 60 + "]" * 60, "b: " + "[" * 45 + "*a" + "]" * 45])
    with pytest.raises(HeaderLimitError, match="CRDS_FS_ASDF_MAX_DEPTH"):
        ds.read_header(nested)
    big = asdf_text(tmp_path / "big_uncal.asdf", [f"k{i}: {'v' * 100}" for i in range(2000)])
    with pytest.raises(HeaderLimitError, match="CRDS_FS_ASDF_MAX_BYTES"):
        ds.read_header(big, limits=HeaderLimits(asdf_max_bytes=64 * 1024))
    # No end marker and nothing but YAML going on and on (10 GB sparse: NUL bytes).
    endless = tmp_path / "endless_uncal.asdf"
    endless.write_bytes(b"#ASDF 1.0.0\n%YAML 1.1\n---\nx: 1\n")
    os.truncate(endless, TEN_GB)
    with pytest.raises(HeaderLimitError, match="CRDS_FS_ASDF_MAX_BYTES"):
        ds.read_header(endless)
    # Within the limits these are ordinary trees.
    assert ds.read_header(aliases, require_instrument=False)["Y"].startswith("('1', '1'")
    not_asdf = tmp_path / "fake_uncal.asdf"
    not_asdf.write_bytes(b"SIMPLE  = T" * 100)
    with pytest.raises(ds.DatasetError, match="fake_uncal.asdf is not an ASDF file"):
        ds.read_header(not_asdf)


def test_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRDS_FS_HEADER_MAX_BYTES", "5760")
    monkeypatch.setenv("CRDS_FS_HEADER_TIMEOUT", "2.5")
    limits = HeaderLimits.from_env()
    assert limits.max_bytes == 5760 and limits.max_seconds == 2.5
    assert limits.asdf_max_nodes == HeaderLimits().asdf_max_nodes
    monkeypatch.setenv("CRDS_FS_ASDF_MAX_NODES", "many")
    with pytest.raises(ds.ConfigError, match="CRDS_FS_ASDF_MAX_NODES"):
        HeaderLimits.from_env()


# --- the mount: hostile datasets in bestrefs/ -----------------------------------------------------


@pytest.fixture
def server(serve, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CRDS_FS_DATASETS_INDEX", str(tmp_path / "datasets-index"))
    return serve(demo_root, "--index", str(tmp_path / "serve-index"))


def view(mount, name: str) -> dict:
    return json.loads(mount.path("bestrefs", name, "bestrefs.json").read_text())


def timed(action):
    start = time.monotonic()
    value = action()
    return value, time.monotonic() - start


@needs_fuse
@pytest.mark.fuse
def test_mount_survives_hostile_datasets(mounter, server, demo_root: Path,
                                         tmp_path: Path) -> None:
    """Defects 1 and 2 through the mount: the 10 GB no-END FITS file (in the --datasets
    folder and registered with ln -s, the original reproduction) and the billion-laughs ASDF
    file get error answers naming the limit; the good dataset next to them is answered;
    the daemon's RSS stays bounded; other paths answer; umount works."""
    folder = tmp_path / "datasets"
    folder.mkdir()
    shutil.copy(demo_root / "datasets" / f"{GOOD}.fits", folder)
    fits_without_end(folder / "noend_raw.fits")
    billion_laughs(folder / "lol_uncal.asdf")
    (tmp_path / "elsewhere").mkdir()
    outside = fits_without_end(tmp_path / "elsewhere" / "h_raw.fits")
    mount = mounter(server.url, "--datasets", str(folder), "-o", "rw")
    bestrefs = mount.path("bestrefs")
    assert sorted(os.listdir(bestrefs)) == [GOOD, "lol_uncal", "noend_raw"]

    # The good dataset is answered although both hostile ones are its neighbours.
    document, seconds = timed(lambda: view(mount, GOOD))
    assert document["error"] is None and document["bestrefs"] == EXPECTED[GOOD][CONTEXT]
    assert seconds < BOUND_S
    for name, limit in (("noend_raw", "CRDS_FS_HEADER_MAX_"),
                        ("lol_uncal", "CRDS_FS_ASDF_MAX_NODES")):
        document, seconds = timed(lambda name=name: view(mount, name))
        assert limit in document["error"] and name in document["error"], document
        assert document["bestrefs"] == {} and seconds < BOUND_S
        assert os.listdir(bestrefs / name) == ["bestrefs.json"]

    # The reproduction as filed: ln -s the 10 GB file, cat its bestrefs.json.
    os.symlink(outside, bestrefs / "h")
    text, seconds = timed(lambda: (bestrefs / "h" / "bestrefs.json").read_text())
    assert "CRDS_FS_HEADER_MAX_" in json.loads(text)["error"] and seconds < BOUND_S

    # The mount answers other paths and its daemon never grew (it was OOM-killed at 24 GB).
    assert "hst_9001.pmap" in os.listdir(mount.path("mappings", "hst"))
    assert (mount.path("config", "hst") / "server_config").stat().st_size > 0
    memory = rss_kb(mount.pid)
    print(f"daemon after hostile datasets: RSS {memory['VmRSS'] // 1024} MB, "
          f"peak {memory['VmHWM'] // 1024} MB")
    assert memory["VmHWM"] < RSS_BOUND_KB, memory
    assert "CRDS_FS_ASDF_MAX_NODES" in mount.log()  # logged with the file named

    result, seconds = timed(mount.umount)
    assert result.returncode == 0, result.stderr
    assert wait_until(lambda: not pid_alive(mount.pid), BOUND_S)


@needs_fuse
@pytest.mark.fuse
def test_slow_header_gives_eio_and_never_blocks_the_rest(mounter, server, demo_root: Path,
                                                         tmp_path: Path) -> None:
    """A header that takes longer than CRDS_FS_HEADER_WAIT (a legal header of 49,000 cards:
    seconds to parse, here against a wait of 0.05 s): the call answers EIO and logs why,
    the reading goes on and its answer appears later; the good neighbour, other paths and
    SIGTERM are unaffected meanwhile."""
    folder = tmp_path / "datasets"
    folder.mkdir()
    shutil.copy(demo_root / "datasets" / f"{GOOD}.fits", folder)
    many = {f"K{i:07d}": i for i in range(49_000)}
    (folder / "slow_raw.fits").write_bytes(header_unit(cards(**PRIMARY, **many)))
    mount = mounter(server.url, "--datasets", str(folder),
                    env={"CRDS_FS_HEADER_WAIT": "0.05", "CRDS_FS_HEADER_TIMEOUT": "600"})
    with pytest.raises(OSError) as info:
        (mount.path("bestrefs", "slow_raw", "bestrefs.json")).read_text()
    assert info.value.errno == errno.EIO
    assert "CRDS_FS_HEADER_WAIT" in mount.log()
    # Meanwhile everything else answers (reading it goes on in a worker of its own).
    assert "hst_9001.pmap" in os.listdir(mount.path("mappings", "hst"))
    assert wait_until(lambda: _answer_or_none(mount, GOOD) is not None, BOUND_S)
    assert view(mount, GOOD)["bestrefs"] == EXPECTED[GOOD][CONTEXT]
    # Once read, the slow dataset is answered like any other.
    assert wait_until(lambda: _answer_or_none(mount, "slow_raw") is not None, BOUND_S)
    document = view(mount, "slow_raw")
    assert document["error"] is None and document["header"]["INSTRUME"] == "ACS"
    # SIGTERM ends the daemon and takes the mount down, even while a header is being read.
    shutil.copy(folder / "slow_raw.fits", folder / "slow2_raw.fits")
    assert wait_until(lambda: "slow2_raw" in os.listdir(mount.path("bestrefs")), BOUND_S)
    with pytest.raises(OSError):
        (mount.path("bestrefs", "slow2_raw", "bestrefs.json")).read_text()
    mount.kill(15)
    assert not pid_alive(mount.pid)
    assert wait_until(lambda: not os.path.ismount(mount.mountpoint), BOUND_S)


def _answer_or_none(mount, name: str) -> dict | None:
    try:
        return view(mount, name)
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise
        return None


def test_serve_datasets_with_hostile_files(serve, demo_root: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`crds-fs serve --datasets` indexes hostile files as per-ID errors naming the limit,
    and keeps answering."""
    monkeypatch.setenv("CRDS_FS_DATASETS_INDEX", str(tmp_path / "datasets-index"))
    folder = tmp_path / "datasets"
    folder.mkdir()
    shutil.copy(demo_root / "datasets" / f"{GOOD}.fits", folder)
    fits_without_end(folder / "noend_raw.fits")
    billion_laughs(folder / "lol_uncal.asdf")
    server = serve(demo_root, "--datasets", str(folder), "--index", str(tmp_path / "idx"))
    with CrdsClient(server.url, retries=0, read_timeout=BOUND_S) as client:
        answer, seconds = timed(lambda: client.get_dataset_headers_by_id(
            CONTEXT, ["NOEND", "LOL", "J9DEMO01Q"]))
        assert seconds < BOUND_S * 2
        assert answer["NOEND"].startswith("NOT FOUND") and "CRDS_FS_HEADER_MAX_" in answer[
            "NOEND"]
        assert "CRDS_FS_ASDF_MAX_NODES" in answer["LOL"]
        assert answer["J9DEMO01Q"]["INSTRUME"] == "ACS"
        assert client.get_server_info()["operational_context"] == CONTEXT


# --- defect 3: -o allow_other and other users ---------------------------------------------------


def test_who_may_change_the_mount() -> None:
    """The namespace's rule, without FUSE: the owner and root may, others may not, and
    calls made by the mount's own process (no FUSE caller) may."""
    from crds_fs.namespace.base import Caller, MountEnv, calling_as, may_change_mount

    env = MountEnv(cache=None, observatory="hst", context=CONTEXT, epoch_ns=0,  # type: ignore[arg-type]
                   uid=1000, gid=1000)
    assert may_change_mount(env)
    for uid, allowed in ((1000, True), (0, True), (NOBODY, False), (1001, False)):
        with calling_as(Caller(uid, uid, 4242)):
            assert may_change_mount(env) is allowed, uid
    assert may_change_mount(env)  # the caller is reset after the call


def as_nobody(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=BOUND_S,
                          user=NOBODY, group=NOBODY, extra_groups=[], cwd="/")


@pytest.fixture
def public_dir():
    """A folder other users can reach (pytest's tmp dirs are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="crds-fs-allow-other-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_fuse
@pytest.mark.fuse
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_allow_other_only_the_owner_registers(mounter, server, demo_root: Path,
                                              tmp_path: Path, public_dir: Path) -> None:
    """With -o allow_other, another user reads bestrefs/ but gets EACCES for ln -s (of a
    root-only file, of a missing file: no probing) and for rm of the owner's registrations;
    an existing and a missing target get the same answer, so nothing can be probed."""
    secret = public_dir / "secret_raw.fits"
    shutil.copy(demo_root / "datasets" / f"{GOOD}.fits", secret)
    secret.chmod(0o600)
    readable = public_dir / "public_raw.fits"
    shutil.copy(demo_root / "datasets" / f"{GOOD}.fits", readable)
    readable.chmod(0o644)
    mountpoint = public_dir / "mnt"
    mount = mounter(server.url, "-o", "allow_other,rw", mountpoint=mountpoint)
    bestrefs = mount.path("bestrefs")
    os.symlink(readable, bestrefs / "mine")  # the owner (root) registers

    # Reading works for everybody.
    listing = as_nobody("ls", str(bestrefs))
    assert listing.returncode == 0 and listing.stdout.split() == ["mine"], listing
    shown = as_nobody("cat", str(bestrefs / "mine" / "bestrefs.json"))
    assert shown.returncode == 0 and json.loads(shown.stdout)["bestrefs"] == \
        EXPECTED[GOOD][CONTEXT]

    # Changes are refused with EACCES, whatever the target.
    for target, name in ((secret, "stolen"), (public_dir / "absent.fits", "probe"),
                         (readable, "theirs")):
        refused = as_nobody("ln", "-s", str(target), str(bestrefs / name))
        assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused
    removed = as_nobody("rm", "-f", str(bestrefs / "mine"))
    assert removed.returncode != 0 and "Permission denied" in removed.stderr, removed
    assert os.listdir(bestrefs) == ["mine"]
    log = mount.log()
    assert "refused ln -s bestrefs/stolen for uid 65534" in log
    assert "refused rm bestrefs/mine for uid 65534" in log

    # The owner still can.
    os.unlink(bestrefs / "mine")
    os.symlink(secret, bestrefs / "again")
    assert view(mount, "again")["bestrefs"] == EXPECTED[GOOD][CONTEXT]
    assert mount.umount().returncode == 0
