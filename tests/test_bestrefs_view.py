"""MOUNT/bestrefs/<dataset>/: real FUSE mounts of the demo observatory served by `crds-fs serve`.

Datasets come from `--datasets`, from `ln -s`, and from dataset IDs the server knows
(`serve --datasets`).  Answers are checked against what the demo's rules intend (the same
expectations tests/test_demo.py verifies with the real crds).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pprint
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from astropy.io import fits

from crds_fs import api
from crds_fs.client.rpc import CrdsClient
from crds_fs.demo import spec
from crds_fs.demo.generate import generate
from tests.mounting import needs_fuse, wait_until

pytestmark = [needs_fuse, pytest.mark.fuse]

CONTEXT = spec.OPERATIONAL_CONTEXT
EXPECTED = {Path(d.file_name).name.split(".")[0]: d.expected for d in spec.DATASETS}


def found(answers: dict[str, str]) -> dict[str, str]:
    return {t: v for t, v in answers.items() if not v.startswith("NOT FOUND")}


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def view(mount, name: str) -> dict:
    return json.loads(mount.path("bestrefs", name, "bestrefs.json").read_text())


def rpc_count(server, method: str) -> int:
    return server.log().count(f"rpc='{method}'")


@pytest.fixture
def server(serve, demo_root: Path, tmp_path: Path):
    """The demo, also answering dataset IDs for the files of its datasets/ folder."""
    return serve(demo_root, "--datasets", str(demo_root / "datasets"),
                 "--index", str(tmp_path / "serve-index"))


@pytest.fixture(autouse=True)
def _datasets_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers started by these tests keep their datasets index in the test's tmp dir."""
    monkeypatch.setenv("CRDS_FS_DATASETS_INDEX", str(tmp_path / "datasets-index"))


@pytest.mark.parametrize("engine", ["auto", "local"])
def test_folder_datasets(mounter, server, demo_root: Path, engine: str) -> None:
    datasets = demo_root / "datasets"
    mount = mounter(server.url, "--datasets", str(datasets), "--engine", engine)
    names = sorted(os.listdir(mount.path("bestrefs")))
    assert names == sorted(EXPECTED)
    for name in names:
        expected = EXPECTED[name][CONTEXT]
        folder = mount.path("bestrefs", name)
        assert sorted(os.listdir(folder)) == sorted(["bestrefs.json", "dataset",
                                                     *found(expected)])
        document = view(mount, name)
        assert document["bestrefs"] == expected, name
        assert document["context"] == CONTEXT and document["error"] is None
        assert document["engine"] == ("local" if engine == "local" else "remote")
        assert os.readlink(folder / "dataset") == str(next(datasets.glob(name + ".*")))
        for reftype, reference in found(expected).items():
            link = folder / reftype
            assert os.readlink(link) == f"../../references/hst/{reference}"
            assert link.resolve() == mount.path("references", "hst", reference)
            assert sha1(link) == sha1(demo_root / "references" / "hst" / reference)
    # astropy reads a reference through the link (fetched lazily by the mount).
    with fits.open(mount.path("bestrefs", "j9demo01q_raw", "darkfile")) as hdul:
        assert hdul[0].header["INSTRUME"] == "ACS" and hdul[1].data is not None
    # ls -l shows the links, find -L walks through them into the references.
    listing = subprocess.run(["ls", "-l", str(mount.path("bestrefs", "j9demo01q_raw"))],
                             capture_output=True, text=True, check=True).stdout
    assert re.search(r"^l.* darkfile -> \.\./\.\./references/hst/hst_acs_darkfile_9106\.fits$",
                     listing, re.M), listing
    assert re.search(r"^-r--r--r-- .* bestrefs\.json$", listing, re.M), listing
    files = subprocess.run(["find", "-L", str(mount.path("bestrefs")), "-type", "f"],
                           capture_output=True, text=True, check=True).stdout.split()
    expected_files = sum(2 + len(found(e[CONTEXT])) for e in EXPECTED.values())
    assert len(files) == expected_files


def test_dataset_ids_from_the_server(mounter, server, demo_root: Path) -> None:
    mount = mounter(server.url)  # no --datasets: IDs only
    assert os.listdir(mount.path("bestrefs")) == []
    for dataset_id in ("J9DEMO01Q", "i9demo01q", "L9DEMO02Q:L9DEMO02Q"):
        stem = {"J9DEMO01Q": "j9demo01q_raw", "i9demo01q": "i9demo01q_raw",
                "L9DEMO02Q:L9DEMO02Q": "l9demo02q_rawtag"}[dataset_id]
        expected = EXPECTED[stem][CONTEXT]
        entries = sorted(os.listdir(mount.path("bestrefs", dataset_id)))
        assert entries == sorted(["bestrefs.json", *found(expected)])
        document = view(mount, dataset_id)
        assert document["bestrefs"] == expected and document["origin"] == "id"
        assert document["file"] is None and document["engine"] == "remote"
    with pytest.raises(FileNotFoundError):
        os.listdir(mount.path("bestrefs", "NOSUCH99Q"))
    assert not mount.path("bestrefs", "NOSUCH99Q").exists()
    assert os.listdir(mount.path("bestrefs")) == []  # looked-up IDs are not registered


def test_ln_s_registers_and_rm_forgets(mounter, server, demo_root: Path,
                                       tmp_path: Path) -> None:
    mine = tmp_path / "data" / "mine_raw.fits"
    mine.parent.mkdir()
    shutil.copy(demo_root / "datasets" / "i9demo02q_raw.fits", mine)
    datasets = tmp_path / "folder"
    datasets.mkdir()
    shutil.copy(demo_root / "datasets" / "l9demo01q_rawtag.fits", datasets)
    cache = tmp_path / "cache"
    # -o rw: the mount is ro (as /proc/mounts shows) unless registration is wanted
    mount = mounter(server.url, "--datasets", str(datasets), "-o", "rw", cache_dir=cache)
    bestrefs = mount.path("bestrefs")

    os.symlink(mine, bestrefs / "mine")
    assert os.readlink(bestrefs / "mine") == ".registered/mine"
    assert sorted(os.listdir(bestrefs)) == ["l9demo01q_rawtag", "mine"]
    expected = EXPECTED["i9demo02q_raw"][CONTEXT]
    assert sorted(os.listdir(bestrefs / "mine")) == sorted(["bestrefs.json", "dataset",
                                                           *found(expected)])
    assert os.readlink(bestrefs / "mine" / "darkfile") == \
        "../../../references/hst/hst_wfc3_darkfile_9503.fits"
    with fits.open(bestrefs / "mine" / "pfltfile") as hdul:
        assert hdul[0].header["INSTRUME"] == "WFC3"
    assert os.readlink(bestrefs / "mine" / "dataset") == str(mine)
    assert json.loads((bestrefs / "mine" / "bestrefs.json").read_text())["bestrefs"] == expected

    # Refusals, each with its errno (and a log line).
    refusals = [
        (lambda: os.symlink(mine, bestrefs / "mine"), errno.EEXIST),
        (lambda: os.symlink(mine, bestrefs / "l9demo01q_rawtag"), errno.EEXIST),
        (lambda: os.symlink(tmp_path / "absent.fits", bestrefs / "absent"), errno.ENOENT),
        (lambda: os.symlink(mine, bestrefs / "mine" / "extra"), errno.EPERM),
        (lambda: os.mkdir(bestrefs / "newdir"), errno.EROFS),
        (lambda: open(bestrefs / "new.txt", "w"), errno.EROFS),  # noqa: SIM115
        (lambda: os.unlink(bestrefs / "l9demo01q_rawtag"), errno.EISDIR),  # the kernel says
        (lambda: os.rmdir(bestrefs / "l9demo01q_rawtag"), errno.EROFS),
        (lambda: os.unlink(bestrefs / "mine" / "darkfile"), errno.EPERM),
        (lambda: os.rename(bestrefs / "mine", bestrefs / "other"), errno.EROFS),
        (lambda: open(bestrefs / "mine" / "bestrefs.json", "w"), errno.EROFS),  # noqa: SIM115
    ]
    for action, code in refusals:
        with pytest.raises(OSError) as info:
            action()
        assert info.value.errno == code, (info.value, code)
    assert "refused" in mount.log()

    # Registrations survive a remount (they live in the cache index).
    assert mount.umount().returncode == 0
    again = mounter(server.url, "--datasets", str(datasets), "-o", "rw", cache_dir=cache)
    assert sorted(os.listdir(again.path("bestrefs"))) == ["l9demo01q_rawtag", "mine"]
    os.unlink(again.path("bestrefs", "mine"))
    assert os.listdir(again.path("bestrefs")) == ["l9demo01q_rawtag"]
    assert not again.path("bestrefs", "mine").exists()


def test_broken_datasets_show_errors_not_crashes(mounter, server, demo_root: Path,
                                                 tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "garbage_raw.fits").write_bytes(b"this is not FITS" * 200)
    fits.PrimaryHDU().writeto(folder / "noinst_raw.fits")
    keywords = {k: v for k, v in spec.DATASETS[0].keywords.items() if k != "DETECTOR"}
    hdu = fits.PrimaryHDU()
    hdu.header.update(keywords)
    hdu.writeto(folder / "nodet_raw.fits")
    shutil.copy(demo_root / "datasets" / "j9demo02q_raw.fits", folder)
    mount = mounter(server.url, "--datasets", str(folder))
    bestrefs = mount.path("bestrefs")
    for name, message in (("garbage_raw", "garbage_raw.fits"), ("noinst_raw", "instrument")):
        assert os.listdir(bestrefs / name) == ["bestrefs.json"]
        document = view(mount, name)
        assert message in document["error"] and document["bestrefs"] == {}
    document = view(mount, "nodet_raw")
    assert document["missing_keywords"] == ["DETECTOR"]
    assert "UNDEFINED" in document["bestrefs"]["darkfile"]
    assert "darkfile" not in os.listdir(bestrefs / "nodet_raw")
    assert set(os.listdir(bestrefs / "nodet_raw")) - {"bestrefs.json", "dataset"} == set(
        found(document["bestrefs"]))
    # The good dataset next to them is unaffected, and the mount is alive.
    assert view(mount, "j9demo02q_raw")["bestrefs"] == EXPECTED["j9demo02q_raw"][CONTEXT]
    assert mount.stats()["mount"]["pid"] == mount.pid


def test_follows_the_operational_context(mounter, serve, tmp_path: Path) -> None:
    root = tmp_path / "demo"
    generate(root, large_mb=1)
    config = root / "config" / "hst" / "server_config"
    original = config.read_text()
    config.write_text(original.replace(f"'operational_context': '{CONTEXT}'",
                                       f"'operational_context': '{spec.OLD_CONTEXT}'"))
    server = serve(root, "--index", str(tmp_path / "serve-index"))
    mount = mounter(server.url, "--datasets", str(root / "datasets"), "--poll", "0.2")
    bpixtab = mount.path("bestrefs", "i9demo01q_raw", "bpixtab")
    assert view(mount, "i9demo01q_raw")["context"] == spec.OLD_CONTEXT
    assert os.readlink(bpixtab).endswith("hst_wfc3_bpixtab_9701.fits")
    assert os.readlink(mount.path("bestrefs", "j9demo01q_raw", "darkfile")).endswith("9105.fits")

    config.write_text(original)  # the server now names hst_9001.pmap operational
    assert wait_until(lambda: view(mount, "i9demo01q_raw")["context"] == CONTEXT, 20)
    for name in EXPECTED:
        document = view(mount, name)
        assert document["context"] == CONTEXT
        assert document["bestrefs"] == EXPECTED[name][CONTEXT], name
    assert os.readlink(bpixtab).endswith("hst_wfc3_bpixtab_9702.fits")
    assert os.readlink(mount.path("bestrefs", "j9demo01q_raw", "darkfile")).endswith("9106.fits")


def test_answers_survive_remounts_and_offline_is_local(mounter, server, demo_root: Path,
                                                       tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    datasets = demo_root / "datasets"
    first = mounter(server.url, "--datasets", str(datasets), cache_dir=cache)
    answers = {name: view(first, name)["bestrefs"] for name in EXPECTED}
    assert rpc_count(server, "get_best_references_by_header_map") == 1  # one batch for all
    # The view caches the context's mappings in the background for offline use.
    mappings = cache / "mappings" / "hst"
    assert wait_until(lambda: f"mappings of {CONTEXT} for offline use" in first.log(), 20)
    with CrdsClient(server.url) as client:
        names = client.get_mapping_names(CONTEXT)
    assert len(names) > 10 and all((mappings / name).is_file() for name in names)
    assert first.umount().returncode == 0

    second = mounter(server.url, "--datasets", str(datasets), cache_dir=cache)
    assert {name: view(second, name)["bestrefs"] for name in EXPECTED} == answers
    assert rpc_count(server, "get_best_references_by_header_map") == 1  # stored answers
    assert second.umount().returncode == 0

    # Offline: a dataset never seen before is answered by the local engine.
    changed = tmp_path / "new"
    changed.mkdir()
    with fits.open(datasets / "i9demo01q_raw.fits") as hdul:
        hdul[0].header["TIME-OBS"] = "23:00:00"
        hdul.writeto(changed / "i9demo09q_raw.fits")
    server.stop()
    offline = mounter(server.url, "--datasets", str(changed), "--offline", cache_dir=cache)
    document = view(offline, "i9demo09q_raw")
    assert document["engine"] == "local" and document["error"] is None
    assert document["bestrefs"] == EXPECTED["i9demo01q_raw"][CONTEXT]


def test_api_with_a_mount_returns_mount_paths(mounter, server, demo_root: Path) -> None:
    mount = mounter(server.url)
    dataset = demo_root / "datasets" / "j9demo02q_raw.fits"
    try:
        result = api.cache_best_references_for_dataset(CONTEXT, dataset, mount=mount.mountpoint)
    finally:
        api.close_sessions()
    expected = found(EXPECTED["j9demo02q_raw"][CONTEXT])
    assert result == {t: str(mount.path("references", "hst", n)) for t, n in expected.items()}
    for path in result.values():
        assert Path(path).is_file() and sha1(Path(path)) == sha1(
            demo_root / "references" / "hst" / Path(path).name)
    pprint.pprint(result)
