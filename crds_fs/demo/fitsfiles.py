"""Write the demo's reference files and raw datasets as real FITS files.

Contents are synthetic but deterministic: each file draws from its own numpy generator
seeded with (seed, file name), so the bytes depend only on the seed and never on the order
in which files are written.  astropy adds no timestamps unless asked (no CHECKSUM cards),
which keeps equal seeds byte-identical, so tests can compare sha1s across runs.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from .spec import Dataset, Reference

#: FILETYPE values as in the real HST reference files of each type.
FILETYPES = {
    "DARKFILE": "DARK IMAGE",
    "PFLTFILE": "PIXEL-TO-PIXEL FLAT",
    "BPIXTAB": "DATA QUALITY INITIALIZATION TABLE",
    "FLSHFILE": "POST FLASH",
    "FLATFILE": "FLAT FIELD REFERENCE IMAGE",
}
SMALL_SHAPE = (64, 64)
WIDTH = 2048  # columns of the large images
NOTICE = "crds-fs demo data: synthetic, NOT real HST calibration data."


def rng_for(seed: int, name: str) -> np.random.Generator:
    """A generator that depends only on (seed, name)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def image_rows(size: str, large_mb: int) -> int:
    """Rows of a WIDTH-column float32 image of about the requested size."""
    megabytes = {"large": large_mb, "half": large_mb / 2}[size]
    return max(1, round(megabytes * 2**20 / (4 * WIDTH)))


def useafter_text(useafter: str) -> str:
    """'2002-03-01 00:00:00' -> 'Mar 01 2002 00:00:00', the USEAFTER style of HST files."""
    return datetime.strptime(useafter, "%Y-%m-%d %H:%M:%S").strftime("%b %d %Y %H:%M:%S")


def _reference_primary(ref: Reference, seed: int) -> fits.PrimaryHDU:
    hdu = fits.PrimaryHDU()
    header = hdu.header
    header["FILENAME"] = (ref.name, "name of file")
    header["FILETYPE"] = (FILETYPES[ref.filekind], "type of data found in data file")
    header["TELESCOP"] = ("HST", "telescope used to acquire data")
    header["INSTRUME"] = (ref.instrument, "identifier for instrument used to acquire data")
    header["DETECTOR"] = (ref.detector, "detector in use")
    for key, value in ref.keywords.items():
        header[key] = value
    header["USEAFTER"] = (useafter_text(ref.useafter), "use after this date")
    header["PEDIGREE"] = ("DUMMY", "synthetic demo data")
    header["DESCRIP"] = ref.descrip
    header["ORIGIN"] = ("crds-fs demo", "FITS file originator")
    header["DEMOSEED"] = (seed, "seed of the crds-fs demo generator")
    header["COMMENT"] = NOTICE
    return hdu


def _image_hdus(ref: Reference, rng: np.random.Generator, large_mb: int) -> list[fits.ImageHDU]:
    shape = SMALL_SHAPE if ref.size == "small" else (image_rows(ref.size, large_mb), WIDTH)
    if ref.filekind == "DARKFILE":
        sci = np.abs(rng.standard_normal(shape, dtype=np.float32)) * np.float32(0.005)
    else:
        sci = np.float32(1.0) + rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
    dq = np.zeros(SMALL_SHAPE, dtype=np.int16)
    hot = rng.integers(0, SMALL_SHAPE[0], size=(8, 2))
    dq[hot[:, 0], hot[:, 1]] = 16
    return [fits.ImageHDU(sci, name="SCI", ver=1), fits.ImageHDU(dq, name="DQ", ver=1)]


def _table_hdu(ref: Reference, rng: np.random.Generator) -> fits.BinTableHDU:
    rows = 64
    columns = [
        fits.Column("CCDCHIP", "I", array=rng.integers(1, 3, rows, dtype=np.int16)),
        fits.Column("PIX1", "I", array=rng.integers(1, 4096, rows, dtype=np.int16)),
        fits.Column("PIX2", "I", array=rng.integers(1, 2048, rows, dtype=np.int16)),
        fits.Column("LENGTH", "I", array=rng.integers(1, 20, rows, dtype=np.int16)),
        fits.Column("AXIS", "I", array=rng.integers(1, 3, rows, dtype=np.int16)),
        fits.Column("VALUE", "I", array=np.full(rows, 4, dtype=np.int16)),
    ]
    return fits.BinTableHDU.from_columns(columns, name="BPIX")


def write_reference(path: Path, ref: Reference, *, seed: int, large_mb: int) -> None:
    """Write *ref* as a FITS file at *path* (primary header plus image or table data)."""
    rng = rng_for(seed, ref.name)
    hdus: list[Any] = [_reference_primary(ref, seed)]
    if ref.form == "table":
        hdus.append(_table_hdu(ref, rng))
    else:
        hdus.extend(_image_hdus(ref, rng, large_mb))
    _write(path, fits.HDUList(hdus))


def write_dataset(path: Path, dataset: Dataset, *, seed: int) -> None:
    """Write a small raw exposure whose primary header selects the intended references."""
    rng = rng_for(seed, dataset.file_name)
    primary = fits.PrimaryHDU()
    header = primary.header
    rootname = dataset.file_name.split("_")[0]
    header["ROOTNAME"] = (rootname, "rootname of the observation set")
    header["FILENAME"] = (dataset.file_name, "name of file")
    header["TELESCOP"] = ("HST", "telescope used to acquire data")
    for key, value in dataset.keywords.items():
        header[key] = value
    header["DEMOSEED"] = (seed, "seed of the crds-fs demo generator")
    header["COMMENT"] = NOTICE
    if dataset.keywords.get("INSTRUME") == "COS":
        rows = 128
        events = fits.BinTableHDU.from_columns([
            fits.Column("TIME", "E", array=np.sort(rng.random(rows, dtype=np.float32) * 100)),
            fits.Column("RAWX", "I", array=rng.integers(0, 16384, rows, dtype=np.int16)),
            fits.Column("RAWY", "I", array=rng.integers(0, 1024, rows, dtype=np.int16)),
            fits.Column("PHA", "B", array=rng.integers(0, 32, rows, dtype=np.uint8)),
        ], name="EVENTS")
        extension: Any = events
    else:
        extension = fits.ImageHDU(rng.integers(0, 4096, (32, 32), dtype=np.int16),
                                  name="SCI", ver=1)
    _write(path, fits.HDUList([primary, extension]))


def _write(path: Path, hdul: fits.HDUList) -> None:
    """Write to a temporary name and rename, so a crash never leaves a half file behind."""
    tmp = path.with_name(path.name + ".part")
    hdul.writeto(tmp, overwrite=True, output_verify="exception")
    tmp.replace(path)
