"""Dataset headers: the few keywords a best-reference question needs, read from a file.

A raw HST exposure is tens of MB of pixels behind a few KB of header; JWST/Roman ASDF files
carry their metadata in a YAML tree in front of binary blocks.  Best references only ever
need header values, so this module reads headers and never touches data: FITS is opened
with ``lazy_load_hdus`` and extension headers are read one at a time only until every
needed keyword is found; ASDF is opened lazily and only its tree is walked.

Values are returned as strings, exactly as crds' own ``get_header`` stringifies them
(``str(card.value)``; booleans become ``'True'``/``'False'``), so answers computed from
these headers are the ones crds would give.  ASDF trees are flattened to upper-case dotted
keys (``meta.instrument.name`` -> ``META.INSTRUMENT.NAME``, Roman files keep their
``ROMAN.`` prefix), as crds' ``to_simple_types`` does.

Dataset names and IDs:

* the *name* of a dataset file is its file name without extension (``j8is01j0q_raw``);
  the bestrefs view uses it as the directory name;
* its *ID* is the name upper-cased without a trailing product suffix such as ``_raw``,
  ``_flt`` or ``_uncal`` (``J8IS01J0Q``), which is how the archive, and
  ``get_dataset_headers_by_id``, name datasets.
"""

from __future__ import annotations

import datetime
import logging
import re
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import DatasetError

log = logging.getLogger(__name__)

#: Keywords that name the instrument, in the order crds tries them (crds-reference 5.4).
INSTRUMENT_KEYS = (
    "INSTRUME",
    "META.INSTRUMENT.NAME",
    "META_INSTRUMENT_NAME",
    "INSTRUMENT",
    "ROMAN.META.INSTRUMENT.NAME",
    "META.INSTRUMENT.TYPE",
    "META_INSTRUMENT_TYPE",
)

#: File name endings recognised as datasets (longest first, so ``.fits.gz`` wins).
DATASET_EXTENSIONS = (".fits.gz", ".fits", ".fit", ".fts", ".asdf")

#: Product suffixes stripped from a file name to get the dataset ID (HST and JWST/Roman).
PRODUCT_SUFFIXES = frozenset(
    """
    raw flt flc asn spt jit jif trl ima crj crc drz drc sfl d0m d0h c0m c0h q0m q0h x0h x1d
    x2d sx1 sx2 lrc lsp rawacq rawtag rawaccum corrtag counts fltsum
    uncal rate rateints cal calints i2d s2d s3d x1dints crf ramp trapsfilled dark
    """.split()
)

#: Required parameters that are no dataset keyword (the imap's own parkey, crds-reference 1.5).
_NOT_IN_DATA = frozenset({"REFTYPE"})

#: Header keys that are never matching parameters (skipping them keeps headers small).
_SKIPPED_KEYS = frozenset({"", "COMMENT", "HISTORY"})

_ID_CHARS = re.compile(r"^[A-Za-z0-9._:+-]{1,128}$")


# --- names and IDs ------------------------------------------------------------------------


def split_extension(file_name: str) -> tuple[str, str] | None:
    """(stem, extension) of a dataset file name, or None when it is not a dataset file."""
    lower = file_name.lower()
    for ext in DATASET_EXTENSIONS:
        if lower.endswith(ext) and len(file_name) > len(ext):
            return file_name[: -len(ext)], file_name[-len(ext):]
    return None


def is_dataset_file(path: str | Path) -> bool:
    """True when *path*'s name ends like a FITS or ASDF dataset (no I/O)."""
    return split_extension(Path(path).name) is not None


def dataset_name(path: str | Path) -> str:
    """The file name without its extension: the directory name in ``bestrefs/``."""
    name = Path(path).name
    parts = split_extension(name)
    return parts[0] if parts else name


def dataset_id(path: str | Path) -> str:
    """The archive-style ID of a dataset file: ``j8is01j0q_raw.fits`` -> ``J8IS01J0Q``.

    Only known product suffixes are removed, so a JWST name like
    ``jw01_00001_nrcb2_uncal`` keeps its detector part (``JW01_00001_NRCB2``).
    """
    stem = dataset_name(path)
    head, sep, tail = stem.rpartition("_")
    if sep and head and tail.lower() in PRODUCT_SUFFIXES:
        stem = head
    return stem.upper()


def id_candidates(requested: str) -> list[str]:
    """Upper-case lookup keys for a requested ID, most specific first.

    crds names HST datasets ``<product>:<exposure>`` and JWST ones ``<whole>:<part>``;
    both halves are tried (the exposure/part first), then the whole string.
    """
    text = requested.strip().upper()
    keys: list[str] = []
    if ":" in text:
        first, _, second = text.partition(":")
        keys += [second, first]
    keys.append(text)
    return [key for i, key in enumerate(keys) if key and key not in keys[:i]]


def is_valid_id(text: str) -> bool:
    """Whether *text* is shaped like a CRDS dataset ID (up to 128 of ``[A-Za-z0-9._:+-]``)."""
    return bool(_ID_CHARS.match(text))


def find_dataset_files(root: str | Path) -> Iterator[Path]:
    """Every dataset file under *root* (recursively, sorted, hidden entries skipped)."""
    root = Path(root)
    if root.is_file():
        if is_dataset_file(root):
            yield root
        return
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and is_dataset_file(path):
            yield path


# --- reading headers ----------------------------------------------------------------------


def find_instrument(header: Mapping[str, str]) -> str | None:
    """The instrument a header names (upper case), crds' keyword order; None when absent."""
    for key in INSTRUMENT_KEYS:
        for variant in (key, key.lower()):
            value = header.get(variant)
            if value is not None and str(value).strip() and str(value).upper() != "UNDEFINED":
                return str(value).strip().upper()
    return None


def needed_keys_for(
    parkeys: Mapping[str, Iterable[str]] | Iterable[str] | None, instrument: str | None
) -> frozenset[str] | None:
    """The keys to read for *instrument*: *parkeys* is a list, the pmap form of
    ``get_required_parkeys`` (``{instrument: [keys]}``) or None (every key).

    An instrument missing from the mapping yields just the instrument keys, so the engine
    can still report the unknown instrument properly.
    """
    if parkeys is None:
        return None
    if isinstance(parkeys, Mapping):
        instr = (instrument or "").lower()
        keys = parkeys.get(instr)
        if keys is None and instr == "wfii":  # crds' alias for WFPC2
            keys = parkeys.get("wfpc2")
        keys = list(keys or [])
    else:
        keys = list(parkeys)
    return frozenset(str(key).upper() for key in keys) | frozenset(INSTRUMENT_KEYS)


def read_header(
    path: str | Path,
    parkeys: Mapping[str, Iterable[str]] | Iterable[str] | None = None,
    *,
    require_instrument: bool = True,
) -> dict[str, str]:
    """``{KEY: value}`` of the dataset at *path*, limited to the keys *parkeys* asks for.

    *parkeys* as in `needed_keys_for`.  Needed keys absent from the file are simply absent
    from the result (the engine treats them as UNDEFINED; see `missing_keys`).  Raises
    DatasetError naming the file when it cannot be read, is not FITS/ASDF, or (with
    *require_instrument*) names no instrument.
    """
    path = Path(path)
    parts = split_extension(path.name)
    if not path.is_file():
        raise DatasetError(f"dataset file {path} does not exist or is not a regular file")
    try:
        if parts and parts[1].lower() == ".asdf":
            header = _asdf_header(path)
            header = _limit(header, needed_keys_for(parkeys, find_instrument(header)))
        else:
            header = _fits_header(path, parkeys)
    except DatasetError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"cannot read the header of dataset {path}: {type(exc).__name__}: {exc}. "
            "Is it a complete FITS or ASDF file?"
        ) from None
    except Exception as exc:  # noqa: BLE001 - astropy/asdf raise many unrelated types
        raise DatasetError(
            f"cannot read the header of dataset {path}: {type(exc).__name__}: {exc}"
        ) from None
    if require_instrument and find_instrument(header) is None:
        raise DatasetError(
            f"dataset {path} has no instrument keyword ({', '.join(INSTRUMENT_KEYS[:2])} or "
            f"{INSTRUMENT_KEYS[4]}) in its headers, so no context can match it"
        )
    return header


def missing_keys(header: Mapping[str, str], needed: Collection[str] | None) -> list[str]:
    """Needed keys the header lacks (sorted): they will match as UNDEFINED."""
    if not needed:
        return []
    return sorted(key for key in needed
                  if key not in header and key not in INSTRUMENT_KEYS and key not in _NOT_IN_DATA)


def _limit(header: dict[str, str], needed: frozenset[str] | None) -> dict[str, str]:
    if needed is None:
        return header
    return {key: value for key, value in header.items() if key in needed}


def _fits_header(
    path: Path, parkeys: Mapping[str, Iterable[str]] | Iterable[str] | None
) -> dict[str, str]:
    """Union of FITS headers (first value wins), read HDU by HDU until nothing is missing.

    The primary header decides the instrument and so the keys needed; extension headers are
    loaded lazily only while needed keys are still missing.  Data is never read.  For JWST
    (needed keys are data-model paths like META.INSTRUMENT.NAME) the FITS keywords standing
    for needed paths are kept (see `with_fits_aliases`); the engine translates them.
    """
    from astropy.io import fits

    header: dict[str, str] = {}
    index = -1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, lazy_load_hdus=True, memmap=False, ignore_missing_end=False,
                       do_not_scale_image_data=True) as hdul:
            needed: frozenset[str] | None = None
            for index, hdu in enumerate(_iter_hdus(hdul, path)):
                _merge_cards(header, hdu.header, path, index)
                if index == 0:
                    needed = needed_keys_for(parkeys, find_instrument(header))
                    if needed is not None and _wants_model_paths(needed):
                        needed = with_fits_aliases(needed, header)
                if needed is not None and all(key in header for key in needed):
                    break
    if index == -1:
        raise DatasetError(f"dataset {path} has no FITS header at all; is it a FITS file?")
    return _limit(header, needed)


def _wants_model_paths(needed: frozenset[str]) -> bool:
    """True when the context matches on data-model paths (JWST/Roman), not FITS keywords."""
    return any("." in key for key in needed.difference(INSTRUMENT_KEYS))


def with_fits_aliases(needed: frozenset[str], primary: Mapping[str, str]) -> frozenset[str]:
    """*needed* (data-model paths, JWST) plus the FITS keywords that stand for them.

    The engine translates FITS keywords to model paths with the table generated from
    stdatamodels; keywords whose path is not needed are dropped here, as crds drops them.
    Without the table, every primary-header keyword is kept for the engine to sort out.
    """
    try:
        from ..engine.observatories import jwst_keyword_table

        table = jwst_keyword_table()
    except (ImportError, OSError, ValueError, KeyError):
        return needed | frozenset(primary)
    return needed | frozenset(
        key for key, paths in table.items() if any(path.upper() in needed for path in paths))


def _iter_hdus(hdul: Any, path: Path) -> Iterator[Any]:
    """HDUs one at a time (lazy); a broken extension after the primary ends the walk."""
    index = 0
    while True:
        try:
            hdu = hdul[index]
        except IndexError:
            return
        except (OSError, ValueError) as exc:
            if index == 0:
                raise
            log.warning("dataset %s: stopped reading at extension %d: %s", path, index, exc)
            return
        yield hdu
        index += 1


def _merge_cards(header: dict[str, str], fits_header: Any, path: Path, index: int) -> None:
    """Add the cards of one HDU header that are not there yet, values as crds stringifies."""
    from astropy.io.fits.card import Undefined

    for card in fits_header.cards:
        try:
            key = str(card.keyword).upper()
            if key in _SKIPPED_KEYS or key in header:
                continue
            value = card.value
        except Exception as exc:  # noqa: BLE001 - malformed card: astropy VerifyError etc.
            log.warning("dataset %s: HDU %d: unreadable card skipped: %s", path, index, exc)
            continue
        header[key] = "UNDEFINED" if isinstance(value, Undefined) else str(value)


def _asdf_header(path: Path) -> dict[str, str]:
    """The ASDF tree flattened to ``{DOTTED.UPPER.KEY: str}``; arrays are never loaded."""
    try:
        import asdf
    except ImportError:
        raise DatasetError(
            f"dataset {path} is ASDF but the 'asdf' package is not installed; "
            "pip install asdf (or crds-fs[jwst]) to read JWST/Roman datasets"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with asdf.open(path, lazy_load=True, memmap=False, lazy_tree=True) as handle:
            tree = handle.tree
            return dict(_flatten(tree, ""))


def _flatten(tree: Mapping[Any, Any], prefix: str) -> Iterator[tuple[str, str]]:
    for key in list(tree.keys()):
        if not isinstance(key, str) or key.startswith("asdf_library") or key == "history":
            continue
        value = tree[key]
        name = prefix + key.upper()
        if isinstance(value, Mapping):
            yield from _flatten(value, name + ".")
        else:
            text = _simple_value(value)
            if text is not None:
                yield name, text


def _simple_value(value: Any) -> str | None:
    """A header string for scalars, dates and short lists; None for arrays and blobs."""
    if isinstance(value, bool | int | float | complex | str):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat(timespec="milliseconds")
    if type(value).__name__ == "Time" and hasattr(value, "isot"):  # astropy Time, not loaded
        try:
            return str(value.isot)
        except Exception:  # noqa: BLE001 - unusual time scales
            return str(value)
    if isinstance(value, list | tuple) and len(value) <= 16:
        items = [_simple_value(item) for item in value]
        if all(item is not None for item in items):
            return str(tuple(items))
    return None
