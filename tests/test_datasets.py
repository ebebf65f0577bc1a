"""Dataset headers (crds_fs.bestrefs.headers) and `crds-fs serve --datasets` (dataset-ID RPCs).

Real files written with astropy/asdf; the server is a real `crds-fs serve` subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from crds_fs.bestrefs import headers as ds
from crds_fs.client.rpc import CrdsClient
from crds_fs.errors import DatasetError, ServiceError
from crds_fs.server.datasets import DatasetIndex


def write_fits(path: Path, primary: dict, sci: dict | None = None, shape=(64, 64)) -> Path:
    """An HST-like raw file: keywords in the primary header, geometry in SCI extensions."""
    hdus = [fits.PrimaryHDU()]
    hdus[0].header.update(primary)
    for ver in (1, 2):
        ext = fits.ImageHDU(np.zeros(shape, dtype="i2"), name="SCI", ver=ver)
        ext.header.update(sci or {})
        hdus.append(ext)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


ACS = {"INSTRUME": "ACS", "DETECTOR": "WFC", "CCDAMP": "ABCD", "DATE-OBS": "2010-01-01",
       "TIME-OBS": "00:00:00", "BIASCORR": "PERFORM", "FLSHCORR": False}


# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "stem", "dataset_id"), [
    ("j8is01j0q_raw.fits", "j8is01j0q_raw", "J8IS01J0Q"),
    ("J8IS01J0Q_FLT.FITS", "J8IS01J0Q_FLT", "J8IS01J0Q"),
    ("j8is01j0q.fits", "j8is01j0q", "J8IS01J0Q"),
    ("jw01_00001_nrcb2_uncal.fits", "jw01_00001_nrcb2_uncal", "JW01_00001_NRCB2"),
    ("r0001_wfi01_uncal.asdf", "r0001_wfi01_uncal", "R0001_WFI01"),
    ("x_raw.fits.gz", "x_raw", "X"),
])
def test_dataset_names_and_ids(name: str, stem: str, dataset_id: str) -> None:
    assert ds.is_dataset_file(name)
    assert ds.dataset_name(name) == stem
    assert ds.dataset_id(name) == dataset_id


def test_non_dataset_names_and_id_forms() -> None:
    assert not ds.is_dataset_file("notes.txt")
    assert not ds.is_dataset_file(".fits")
    assert ds.id_candidates("j8is01010:j8is01j0q") == ["J8IS01J0Q", "J8IS01010",
                                                      "J8IS01010:J8IS01J0Q"]
    assert ds.id_candidates("x:x") == ["X", "X:X"]
    assert ds.is_valid_id("JW01_00001_NRCB2.x:y+1-2")
    assert not ds.is_valid_id("a/b") and not ds.is_valid_id("x" * 129)


# --- FITS -------------------------------------------------------------------------------


def test_fits_header_union_limited_to_needed_keys(tmp_path: Path) -> None:
    path = write_fits(tmp_path / "a_raw.fits", ACS, {"LTV1": 24.0, "DETECTOR": "HRC"})
    needed = {"acs": ["INSTRUME", "DETECTOR", "LTV1", "NAXIS1", "FLSHCORR", "SHUTRPOS"]}
    header = ds.read_header(path, needed)
    # First value wins (primary DETECTOR), extension keys are found, values as crds str()s.
    assert header == {"INSTRUME": "ACS", "DETECTOR": "WFC", "LTV1": "24.0", "NAXIS1": "64",
                      "FLSHCORR": "False"}
    assert ds.missing_keys(header, ds.needed_keys_for(needed, "ACS")) == ["SHUTRPOS"]
    whole = ds.read_header(path)
    assert whole["EXTNAME"] == "SCI" and whole["BITPIX"] == "8"


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_fits_reads_headers_not_data(tmp_path: Path) -> None:
    """Data is never read: a file cut short inside the first extension's data (so also
    without its second extension) still gives the keys of the headers before the cut."""
    path = write_fits(tmp_path / "cut_raw.fits", ACS, {"LTV1": 1.0}, shape=(512, 512))
    header_bytes = 2 * 2880  # primary header + first SCI header, one block each
    os.truncate(path, header_bytes + 1000)
    header = ds.read_header(path, ["INSTRUME", "DETECTOR", "LTV1"])
    assert header == {"INSTRUME": "ACS", "DETECTOR": "WFC", "LTV1": "1.0"}
    with fits.open(path, lazy_load_hdus=True) as hdul, pytest.raises((OSError, ValueError,
                                                                      TypeError)):
        _ = hdul[1].data.sum()  # the data really is gone


def astropy_union(path: Path) -> dict[str, str]:
    """The header union as astropy's fits.open gives it (the reference for our reader)."""
    from astropy.io.fits.card import Undefined

    header: dict[str, str] = {}
    with fits.open(path, lazy_load_hdus=True) as hdul:
        index = 0
        while True:
            try:
                hdu = hdul[index]
            except IndexError:
                break
            except (OSError, ValueError):
                if index == 0:
                    raise
                break
            for card in hdu.header.cards:
                key = str(card.keyword).upper()
                if key not in ("", "COMMENT", "HISTORY") and key not in header:
                    header[key] = "UNDEFINED" if isinstance(card.value, Undefined) else str(
                        card.value)
            index += 1
    return header


def _damaged(data: bytes, card: int, image: bytes) -> bytes:
    return data[: card * 80] + image.ljust(80) + data[card * 80 + 80:]


@pytest.mark.filterwarnings("ignore")
def test_fits_headers_as_astropy_reads_them(tmp_path: Path) -> None:
    """Our bounded block reader finds the same cards as astropy's fits.open, also for the
    oddities astropy tolerates: an END card with junk after it, non-ASCII bytes, an
    END-like card that is not one, zero padding after the last HDU, a truncated file."""
    path = write_fits(tmp_path / "good_raw.fits", ACS, {"LTV1": 24.0, "CCDCHIP": 1},
                      shape=(8, 8))
    good = path.read_bytes()
    primary_end = good.index(b"END" + b" " * 77)
    end_card = primary_end // 80
    variants = {
        "plain": good,
        "junk after END": _damaged(good, end_card, b'END   "junk'),
        "END-like card": _damaged(good, end_card - 1, b"END     SOMETHING"),
        "non-ASCII byte": good[:200] + b"\xe9" + good[201:],
        "zero padding": good + b"\0" * 2880 * 2,
        "truncated": good[: len(good) - 1000],
    }
    for name, data in variants.items():
        path.write_bytes(data)
        assert ds.read_header(path, None, require_instrument=False) == astropy_union(path), name


def test_fits_jwst_keeps_keywords_of_needed_model_paths(tmp_path: Path) -> None:
    path = write_fits(tmp_path / "jw_uncal.fits",
                      {"INSTRUME": "NIRCAM", "DETECTOR": "NRCB2", "EXP_TYPE": "NRC_IMAGE"})
    header = ds.read_header(path, ["META.INSTRUMENT.NAME", "META.EXPOSURE.TYPE"])
    # FITS keywords standing for needed data-model paths are kept, others dropped.
    assert header == {"INSTRUME": "NIRCAM", "EXP_TYPE": "NRC_IMAGE"}


@pytest.mark.parametrize("content", [b"", b"SIMPLE  = garbage" * 10, b"x" * 2880])
def test_malformed_fits_is_a_dataset_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken_raw.fits"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match="broken_raw.fits"):
        ds.read_header(path, ["INSTRUME"])


def test_missing_instrument_and_missing_file(tmp_path: Path) -> None:
    path = write_fits(tmp_path / "noinst_raw.fits", {"DETECTOR": "WFC"})
    with pytest.raises(DatasetError, match="noinst_raw.fits.*no instrument keyword"):
        ds.read_header(path, ["DETECTOR"])
    assert ds.read_header(path, ["DETECTOR"], require_instrument=False) == {"DETECTOR": "WFC"}
    with pytest.raises(DatasetError, match="does not exist"):
        ds.read_header(tmp_path / "gone_raw.fits")


# --- ASDF -------------------------------------------------------------------------------


def test_asdf_meta_flattened(tmp_path: Path) -> None:
    asdf = pytest.importorskip("asdf")
    from astropy.time import Time

    tree = {"roman": {"meta": {
        "instrument": {"name": "WFI", "detector": "WFI01", "optical_element": "F158"},
        "exposure": {"type": "WFI_IMAGE", "start_time": Time("2021-09-01T00:02:28")},
        "flag": True, "ngroups": 6},
        "data": np.zeros((32, 32), dtype="f4")}}
    asdf.AsdfFile(tree).write_to(tmp_path / "r_wfi01_uncal.asdf")
    header = ds.read_header(tmp_path / "r_wfi01_uncal.asdf")
    assert header["ROMAN.META.INSTRUMENT.NAME"] == "WFI"
    assert header["ROMAN.META.EXPOSURE.START_TIME"].startswith("2021-09-01T00:02:28")
    assert header["ROMAN.META.FLAG"] == "True" and header["ROMAN.META.NGROUPS"] == "6"
    assert not any(key.startswith("ROMAN.DATA") for key in header)
    limited = ds.read_header(tmp_path / "r_wfi01_uncal.asdf",
                             {"wfi": ["ROMAN.META.INSTRUMENT.DETECTOR"]})
    assert limited == {"ROMAN.META.INSTRUMENT.NAME": "WFI",
                       "ROMAN.META.INSTRUMENT.DETECTOR": "WFI01"}


def test_asdf_values_as_crds_data_file_reads_them(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every value crds 14.0.3's own `data_file.get_header` returns for an ASDF tree, we
    return the same (times: UTC seconds without fraction, whatever the scale; datetimes
    with microseconds; lists as tuples of strings); keys crds suppresses (arrays, None) and
    asdf's bookkeeping (asdf_library, history) are left out."""
    asdf = pytest.importorskip("asdf")
    monkeypatch.setenv("CRDS_PATH", str(tmp_path / "crds"))
    monkeypatch.setenv("CRDS_MODE", "local")
    data_file = pytest.importorskip("crds.data_file")
    import datetime

    from astropy.time import Time

    exposure = {"start_time": Time("2026-10-15T08:30:00.123"),
                "tt": Time("2020-01-01T00:00:00.5", scale="tt"),
                "mjd": Time(59000.25, format="mjd"),
                "when": datetime.datetime(2020, 1, 1, 0, 0, 0, 123000),
                "flag": True, "count": np.int64(3), "ratio": np.float64(1.5), "none": None,
                "items": [1, "a", [2.5, None]], "empty": [], "complex": 1 + 2j}
    tree = {"roman": {"meta": {"instrument": {"name": "WFI"}, "exposure": exposure},
                      "data": np.zeros((4, 4), dtype="f4")}}
    path = tmp_path / "t_wfi01_uncal.asdf"
    asdf.AsdfFile(tree).write_to(path)
    crds_header = data_file.get_header(str(path))
    ours = ds.read_header(path)
    assert ours["ROMAN.META.EXPOSURE.START_TIME"] == "2026-10-15T08:30:00"
    assert ours["ROMAN.META.EXPOSURE.TT"] == "2019-12-31T23:58:51"
    assert ours["ROMAN.META.EXPOSURE.WHEN"] == "2020-01-01T00:00:00.123000"
    assert {key: crds_header[key] for key in ours} == ours
    left_out = set(crds_header) - set(ours)
    assert left_out == {key for key, value in crds_header.items()
                        if value.startswith("SUPRESSED_NONSTD_TYPE")
                        or key.startswith(("ASDF_LIBRARY.", "HISTORY")) or key == "FILE_FORMAT"}


def _kept_of_crds(crds_header: dict[str, str]) -> dict[str, str]:
    """crds' ASDF header without what we leave out: suppressed values, asdf's bookkeeping."""
    return {key: value for key, value in crds_header.items()
            if not value.startswith("SUPRESSED_NONSTD_TYPE")
            and not key.startswith(("ASDF_LIBRARY.", "HISTORY")) and key != "FILE_FORMAT"}


def _crds_reads(path: Path) -> dict[str, str]:
    """The header the installed crds reads from *path* (no server is asked)."""
    crds_data_file = pytest.importorskip("crds.data_file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(crds_data_file.get_free_header(str(path), (), None, "roman"))


def _gwcs_installed() -> bool:
    """gwcs gives asdf a WCS class; only newer stdatamodels pull it in."""
    return importlib.util.find_spec("gwcs") is not None


@pytest.mark.shared
def test_roman_datasets_read_as_crds_reads_them(shared_data: Path) -> None:
    """The 4 Roman exposures of the shared cases (three written by roman_datamodels with
    astropy Times, one plain): headers equal crds' (`header` and every value of
    `crds_header` we keep), and the engine's answers from them equal crds' `expected`."""
    pytest.importorskip("asdf")
    from crds_fs.bestrefs.sources import cache_root_source

    folder = shared_data / "cases" / "roman-datasets"
    cases = json.loads((folder / "expected.json").read_text())
    assert len(cases) == 4
    source = cache_root_source(shared_data, "roman")
    compared = 0
    for name, case in cases.items():
        path = folder / name
        assert ds.read_header(path, list(case["header"])) == case["header"], name
        whole = ds.read_header(path)
        assert whole == _kept_of_crds(_crds_reads(path)), name  # crds, this environment
        kept = _kept_of_crds(case["crds_header"])  # crds 14.0.3 when recorded, with gwcs
        if not _gwcs_installed():
            # Without gwcs, asdf (and so crds) sees the WCS as a plain tagged mapping and
            # flattens it; the recording had one suppressed WCS object there.
            wcs = tuple(key + "." for key, value in case["crds_header"].items()
                        if value.startswith("SUPRESSED_NONSTD_TYPE: 'WCS'"))
            whole = {key: value for key, value in whole.items() if not key.startswith(wcs)}
        assert whole == kept, name
        for context_name, expected in case["expected"].items():
            try:  # roman_0007.pmap: ChecksumError already when loading, as in crds
                context = source.load_context(context_name)
                header = ds.read_header(path, context.required_parkeys())
                answer: object = context.best_references(header, bad_files=source.bad_files)
            except Exception as exc:  # noqa: BLE001 - crds' whole-call errors, by name
                answer = f"{getattr(exc, 'crds_name', type(exc).__name__)}: {exc}"
            assert answer == expected, (name, context_name)
            compared += 1
    start = cases["r0000101001001001001_0001_wfi01_grism_uncal.asdf"]["header"]
    assert start["ROMAN.META.EXPOSURE.START_TIME"] == "2026-10-15T08:30:00"  # not .123
    assert compared == 12


def test_broken_asdf_is_a_dataset_error(tmp_path: Path) -> None:
    pytest.importorskip("asdf")
    path = tmp_path / "bad_uncal.asdf"
    path.write_text("#ASDF 1.0.0\n%YAML 1.1\n--- {unclosed: [\n")
    with pytest.raises(DatasetError, match="bad_uncal.asdf"):
        ds.read_header(path)


# --- the server-side index --------------------------------------------------------------


def test_index_persists_and_notices_changes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = write_fits(data / "j8is01j0q_raw.fits", ACS)
    index = DatasetIndex(data, tmp_path / "idx", rescan_interval=0)
    assert index.lookup("j8is01j0q").header["DETECTOR"] == "WFC"
    assert index.lookup("J8IS01J0Q_RAW") is not None
    stat = path.stat()
    index.close()

    # Same size and mtime but other bytes: a new index trusts the stored headers.
    write_fits(path, {**ACS, "DETECTOR": "HRC"})
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    index = DatasetIndex(data, tmp_path / "idx", rescan_interval=0)
    assert index.lookup("j8is01j0q").header["DETECTOR"] == "WFC"

    # A real change (new mtime) is re-read; a removed file disappears; a new one appears.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert index.lookup("j8is01j0q").header["DETECTOR"] == "HRC"
    (data / "sub").mkdir()
    write_fits(data / "sub" / "o8k401010_raw.fits", {**ACS, "INSTRUME": "STIS"})
    assert index.lookup("O8K401010").instrument == "STIS"
    path.unlink()
    assert index.lookup("j8is01j0q") is None
    index.close()


# --- crds-fs serve --datasets -----------------------------------------------------------


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    data = tmp_path / "datasets"
    data.mkdir()
    write_fits(data / "j8is01j0q_raw.fits", ACS, {"LTV1": 24.0})
    write_fits(data / "o8k401abq_raw.fits", {**ACS, "INSTRUME": "STIS", "DATE-OBS": "2001-01-01"})
    (data / "broken_raw.fits").write_bytes(b"not a fits file at all")
    return data


@pytest.fixture
def served(serve, demo_root: Path, dataset_dir: Path, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> CrdsClient:
    monkeypatch.setenv("CRDS_FS_DATASETS_INDEX", str(tmp_path / "datasets-index"))
    server = serve(demo_root, "--datasets", str(dataset_dir), "--index", str(tmp_path / "idx"))
    with CrdsClient(server.url, retries=0) as client:
        yield client


def _context(client: CrdsClient) -> str:
    return client.get_server_info()["operational_context"]


def test_serve_headers_by_id(served: CrdsClient) -> None:
    context = _context(served)
    ids = ["j8is01j0q", "J8IS01J0Q:J8IS01J0Q", "o8k401abq", "nosuch", "broken"]
    answer = served.get_dataset_headers_by_id(context, ids, None)
    assert set(answer) == set(ids)
    header = answer["j8is01j0q"]
    assert header["INSTRUME"] == "ACS" and header["DETECTOR"] == "WFC"
    assert answer["J8IS01J0Q:J8IS01J0Q"] == header
    assert answer["o8k401abq"]["INSTRUME"] == "STIS"
    assert answer["nosuch"].startswith("NOT FOUND") and "nosuch" in answer["nosuch"]
    assert answer["broken"].startswith("NOT FOUND") and "broken_raw.fits" in answer["broken"]


def test_serve_headers_hold_only_required_parameters(served: CrdsClient) -> None:
    context = _context(served)
    required = served.get_required_parkeys(context)
    if not isinstance(required, dict) or "acs" not in required:
        pytest.skip(f"demo context {context} has no ACS parameters to filter by")
    header = served.get_dataset_headers_by_id(context, ["J8IS01J0Q"])["J8IS01J0Q"]
    assert "BITPIX" not in header and "EXTNAME" not in header
    assert set(header) <= set(required["acs"]) | set(ds.INSTRUMENT_KEYS)


def test_serve_dataset_ids(served: CrdsClient, dataset_dir: Path) -> None:
    context = _context(served)
    assert served.call("get_dataset_ids", context, "acs", None) == ["J8IS01J0Q:J8IS01J0Q"]
    everything = served.call("get_dataset_ids", context, None, None)
    assert everything == ["J8IS01J0Q:J8IS01J0Q", "O8K401ABQ:O8K401ABQ"]
    assert served.call("get_dataset_ids", context, None, "2005-01-01") == ["J8IS01J0Q:J8IS01J0Q"]
    # A file added while serving is found on the next call.
    write_fits(dataset_dir / "ja1b02ccq_raw.fits", ACS)
    assert "JA1B02CCQ:JA1B02CCQ" in served.call("get_dataset_ids", context, "ACS", None)
    assert "INSTRUME" in served.get_dataset_headers_by_id(context, ["ja1b02ccq"])["ja1b02ccq"]


def test_serve_without_datasets_says_how(serve, demo_root: Path, tmp_path: Path) -> None:
    server = serve(demo_root, "--index", str(tmp_path / "idx2"))
    with CrdsClient(server.url, retries=0) as client, pytest.raises(ServiceError,
                                                                      match="--datasets"):
        client.get_dataset_headers_by_id("hst_9001.pmap", ["X"])


# --- round trip against crds' own answers (shared data) ---------------------------------


def _cases(shared: Path, name: str, count: int) -> list[dict]:
    lines = (shared / "cases" / name).read_text().splitlines()
    step = max(1, len(lines) // count)
    return [json.loads(line) for line in lines[::step][:count]]


def _nested(header: dict[str, str]) -> dict:
    tree: dict = {}
    for key, value in header.items():
        node = tree
        *parents, leaf = key.lower().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


@pytest.mark.shared
def test_headers_written_and_read_back_give_crds_answers(shared_data: Path,
                                                        tmp_path: Path) -> None:
    """A case header written as a dataset (HST: FITS keywords, JWST: ASDF meta tree), read
    back with the context's required keys, gives exactly crds' recorded answer."""
    asdf = pytest.importorskip("asdf")
    from crds_fs.bestrefs.sources import cache_root_source
    from crds_fs.engine.observatories import jwst_keyword_table

    compared = 0
    kinds: dict[str, int] = {}
    fits_keyword = {paths[0]: key for key, paths in jwst_keyword_table().items()
                    if len(paths) == 1 and len(key) <= 8}
    for observatory, cases_file, suffix in (("hst", "hst_0729.jsonl", ".fits"),
                                            ("jwst", "jwst_0541.jsonl", ".asdf"),
                                            ("jwst", "jwst_0541.jsonl", ".fits")):
        source = cache_root_source(shared_data, observatory)
        for number, case in enumerate(_cases(shared_data, cases_file, 12)):
            context = source.load_context(case["context"])
            path = tmp_path / f"{observatory}{number:03d}_raw{suffix}"
            header = {k: v for k, v in case["header"].items() if v is not None}
            if observatory == "jwst" and suffix == ".fits":  # as FITS keywords
                if not all(k in fits_keyword for k in header):
                    continue
                header = {fits_keyword[k]: v for k, v in header.items()}
                path = path.with_name(path.name.replace("_raw", "_uncal"))
            if suffix == ".fits":
                if any(len(k) > 8 for k in header):
                    continue
                hdu = fits.PrimaryHDU()
                for key, value in header.items():
                    hdu.header[key] = value
                hdu.writeto(path)
            else:
                asdf.AsdfFile(_nested(header)).write_to(path)
            read = ds.read_header(path, context.required_parkeys())
            assert set(read) <= {k.upper() for k in header}, path
            try:
                answer = context.best_references(read, bad_files=source.bad_files)
            except Exception as exc:  # noqa: BLE001 - compare whole-call failures by name
                answer = {"error": getattr(exc, "crds_name", type(exc).__name__)}
            expected = case.get("expected") or {"error": case.get("error", {}).get("type")
                                                if isinstance(case.get("error"), dict)
                                                else case.get("error")}
            if "error" in answer or "error" in expected:
                continue  # whole-call failures are the engine's business (test_engine_*)
            assert answer == expected, (path, case["header"])
            compared += 1
            kinds[observatory + suffix] = kinds.get(observatory + suffix, 0) + 1
    assert compared >= 16 and len(kinds) == 3 and min(kinds.values()) >= 2, kinds
