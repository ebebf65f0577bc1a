"""Dataset headers: the few keywords a best-reference question needs, read from a file.

A raw HST exposure is tens of MB of pixels behind a few KB of header; JWST/Roman ASDF files
carry their metadata in a YAML tree in front of binary blocks.  Best references only ever
need header values, so this module reads headers and never touches data: FITS header
blocks are read by our own bounded block reader (data units are seeked over) and extension
headers only until every needed keyword is found; of an ASDF file only the YAML tree is
read, checked for size, aliases and depth before asdf builds it.  Every input is hostile
until bounded: `HeaderLimits` caps bytes, cards, HDUs, YAML nodes and time per file, and
going past a cap is a `HeaderLimitError` naming the file and the limit.

Values are returned as strings, exactly as crds' own ``get_header`` stringifies them
(``str(card.value)``; booleans become ``'True'``/``'False'``), so answers computed from
these headers are the ones crds would give.  ASDF trees are flattened to upper-case dotted
keys (``meta.instrument.name`` -> ``META.INSTRUMENT.NAME``, Roman files keep their
``ROMAN.`` prefix) with crds' ``to_simple_types`` values (an astropy Time is its UTC
second without fraction: ``2026-10-15T08:30:00`` for ``...08:30:00.123``).

Dataset names and IDs:

* the *name* of a dataset file is its file name without extension (``j8is01j0q_raw``);
  the bestrefs view uses it as the directory name;
* its *ID* is the name upper-cased without a trailing product suffix such as ``_raw``,
  ``_flt`` or ``_uncal`` (``J8IS01J0Q``), which is how the archive, and
  ``get_dataset_headers_by_id``, name datasets.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import io
import itertools
import logging
import math
import os
import re
import stat
import threading
import time
import warnings
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from ..errors import ConfigError, DatasetError

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


# --- limits -------------------------------------------------------------------------------


class HeaderLimitError(DatasetError):
    """A dataset's headers went past one of the `HeaderLimits` (the file is named)."""


def _env_number(name: str, default: float, kind: type = int) -> Any:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not a "
                          f"{'whole number' if kind is int else 'number'}") from None
    if number <= 0:
        raise ConfigError(f"environment variable {name}={value!r} must be positive")
    return number


@dataclass(frozen=True)
class HeaderLimits:
    """Hard bounds on the work one dataset's header may cost (any input is hostile).

    A FITS file with no END card, an HDU chain of millions of empty extensions or an ASDF
    tree of nested YAML aliases ("billion laughs") must fail fast with an error naming the
    file and the limit, never take the memory or the time of the process.  Real headers
    are far below every default (an HST raw primary header is ~30 KB, a Roman tree ~20 KB).
    """

    #: FITS: header bytes read per file, all HDUs together (2880-byte blocks)
    max_bytes: int = 4 << 20
    #: FITS: header cards (80-byte records) per file, all HDUs together
    max_cards: int = 50_000
    #: FITS: HDUs whose headers are read per file
    max_hdus: int = 1000
    #: seconds one file's header reading may take (checked between blocks / YAML events)
    max_seconds: float = 30.0
    #: ASDF: bytes of the YAML tree (everything before the binary blocks)
    asdf_max_bytes: int = 4 << 20
    #: ASDF: YAML nodes of the tree, every alias counted as a full copy of its anchor
    asdf_max_nodes: int = 50_000
    #: ASDF: YAML aliases (``*name``) in the tree
    asdf_max_aliases: int = 1000
    #: ASDF: nesting depth of the tree (aliases counted where they are used)
    asdf_max_depth: int = 100

    #: field -> environment variable that sets it
    ENV: ClassVar[dict[str, str]] = {
        "max_bytes": "CRDS_FS_HEADER_MAX_BYTES",
        "max_cards": "CRDS_FS_HEADER_MAX_CARDS",
        "max_hdus": "CRDS_FS_HEADER_MAX_HDUS",
        "max_seconds": "CRDS_FS_HEADER_TIMEOUT",
        "asdf_max_bytes": "CRDS_FS_ASDF_MAX_BYTES",
        "asdf_max_nodes": "CRDS_FS_ASDF_MAX_NODES",
        "asdf_max_aliases": "CRDS_FS_ASDF_MAX_ALIASES",
        "asdf_max_depth": "CRDS_FS_ASDF_MAX_DEPTH",
    }

    @classmethod
    def from_env(cls) -> HeaderLimits:
        """The defaults, each overridden by its CRDS_FS_* variable (see `ENV`)."""
        values = {}
        for name, variable in cls.ENV.items():
            default = getattr(cls, name)
            values[name] = _env_number(variable, default, type(default))
        return cls(**values)

    def exceeded(self, path: Path, what: str, name: str, hint: str = "") -> HeaderLimitError:
        """The error for *path* going past limit *name* while reading *what*."""
        variable = self.ENV[name]
        value = getattr(self, name)
        unit = "s" if name == "max_seconds" else ""
        return HeaderLimitError(
            f"dataset {path}: {what} exceeds the limit of {value}{unit} ({variable}); "
            f"reading stopped, no data was read{hint}")


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
    limits: HeaderLimits | None = None,
) -> dict[str, str]:
    """``{KEY: value}`` of the dataset at *path*, limited to the keys *parkeys* asks for.

    *parkeys* as in `needed_keys_for`.  Needed keys absent from the file are simply absent
    from the result (the engine treats them as UNDEFINED; see `missing_keys`).  Raises
    DatasetError naming the file when it cannot be read, is not FITS/ASDF, goes past one
    of the *limits* (`HeaderLimits.from_env()` when None; then `HeaderLimitError`), or
    (with *require_instrument*) names no instrument.
    """
    path = Path(path)
    limits = limits or HeaderLimits.from_env()
    parts = split_extension(path.name)
    is_asdf = bool(parts and parts[1].lower() == ".asdf")
    _load_readers(path, is_asdf)  # one-time library set-up is not the file's time
    deadline = time.monotonic() + limits.max_seconds
    try:
        with _open_regular(path) as stream:
            if is_asdf:
                header = _asdf_header(stream, path, limits, deadline)
                header = _limit(header, needed_keys_for(parkeys, find_instrument(header)))
            else:
                header = _fits_header(stream, path, parkeys, limits, deadline)
    except DatasetError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"cannot read the header of dataset {path}: {type(exc).__name__}: {exc}. "
            "Is it a complete FITS or ASDF file?"
        ) from None
    except RecursionError:
        raise limits.exceeded(path, "the nesting of the header", "asdf_max_depth") from None
    except MemoryError:
        raise DatasetError(f"cannot read the header of dataset {path}: out of memory") from None
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


_readers_lock = threading.Lock()
_asdf_ready = False
_fits_ready = False
#: The smallest ASDF file: opening it once loads asdf's extensions (seconds, once per
#: process), so that cost is never charged to a dataset's time limit.
_ASDF_WARM_UP = (b"#ASDF 1.0.0\n%YAML 1.1\n%TAG ! tag:stsci.edu:asdf/\n"
                 b"--- !core/asdf-1.1.0\n{}\n...\n")


def readers_ready(path: str | Path) -> bool:
    """Whether the library reading *path*'s kind is loaded (reading is then the file's own
    time; loading it is seconds once per process, whatever the file)."""
    parts = split_extension(Path(path).name)
    return _asdf_ready if parts and parts[1].lower() == ".asdf" else _fits_ready


def _load_readers(path: Path, is_asdf: bool) -> None:
    """Import astropy.io.fits, or asdf with its extensions loaded (once per process)."""
    global _asdf_ready, _fits_ready
    if not is_asdf:
        from astropy.io import fits  # noqa: F401
        _fits_ready = True
        return
    if _asdf_ready:
        return
    try:
        import asdf
    except ImportError:
        _asdf_ready = True  # nothing to wait for: every read says so at once
        raise DatasetError(
            f"dataset {path} is ASDF but the 'asdf' package is not installed; "
            "pip install asdf (or crds-fs[jwst]) to read JWST/Roman datasets"
        ) from None
    with _readers_lock:
        if not _asdf_ready:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    with asdf.open(io.BytesIO(_ASDF_WARM_UP)) as handle:
                        _ = handle.tree
                except Exception as exc:  # noqa: BLE001 - reported by the real read
                    log.debug("asdf warm-up failed: %s", exc)
            _asdf_ready = True


def warm_up() -> None:
    """Load the FITS and (when installed) ASDF readers now, e.g. on a background thread of
    a mount with local datasets, so the first dataset read does not wait for them."""
    _load_readers(Path("warm-up.fits"), False)
    with contextlib.suppress(DatasetError):
        _load_readers(Path("warm-up.asdf"), True)


@contextlib.contextmanager
def _open_regular(path: Path) -> Iterator[BinaryIO]:
    """*path* opened for reading if it is a regular file, without ever blocking on open
    (a FIFO put in place of a dataset would block a plain open forever)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DatasetError(f"dataset file {path} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"cannot open dataset file {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DatasetError(f"dataset file {path} is not a regular file")
        os.set_blocking(fd, True)
        stream = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with stream:
        yield stream


def _check_deadline(deadline: float, path: Path, limits: HeaderLimits, what: str) -> None:
    if time.monotonic() > deadline:
        raise limits.exceeded(path, f"the time spent reading {what}", "max_seconds")


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    """Up to *size* bytes (fewer only at the end of the file)."""
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


# --- FITS ---------------------------------------------------------------------------------

FITS_BLOCK = 2880
_CARD = 80
#: An END card as astropy recognises one (astropy.io.fits.header.HEADER_END_RE): "END"
#: then blanks, or then blanks and a character no keyword has ("invalid", used anyway).
_END_RE = re.compile(rb"(?:(?P<valid>END {77}) *)|(?P<invalid>END$|END {0,76}[^A-Z0-9_-])")
_END_CARD = b"END".ljust(_CARD)
_GZIP_MAGIC = b"\x1f\x8b"
#: bytes read per step when skipping the data of a compressed (.gz) file
_SKIP_CHUNK = 1 << 20


def _fits_header(
    stream: BinaryIO, path: Path, parkeys: Mapping[str, Iterable[str]] | Iterable[str] | None,
    limits: HeaderLimits, deadline: float,
) -> dict[str, str]:
    """Union of FITS headers (first value wins), read HDU by HDU until nothing is missing.

    The primary header decides the instrument and so the keys needed; extension headers are
    read only while needed keys are still missing.  Data is never read: the header blocks
    are read by `_fits_headers` itself (bounded) and data units are seeked over.  For JWST
    (needed keys are data-model paths like META.INSTRUMENT.NAME) the FITS keywords standing
    for needed paths are kept (see `with_fits_aliases`); the engine translates them.
    """
    header: dict[str, str] = {}
    needed: frozenset[str] | None = None
    index = -1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index, hdu_header in _fits_headers(stream, path, limits, deadline):
            _merge_cards(header, hdu_header, path, index)
            if index == 1:
                header["EXTEND"] = "True"  # as astropy's fits.open sets it (update_extend)
            if index == 0:
                needed = needed_keys_for(parkeys, find_instrument(header))
                if needed is not None and _wants_model_paths(needed):
                    needed = with_fits_aliases(needed, header)
            if needed is not None and _complete(header, needed):
                break
    if index == -1:
        raise DatasetError(f"dataset {path} has no FITS header at all; is it a FITS file?")
    return _limit(header, needed)


def _complete(header: Mapping[str, str], needed: frozenset[str]) -> bool:
    """Every needed key is there (of the instrument keys, one naming an instrument is
    enough: a FITS file never has all the data-model spellings)."""
    return find_instrument(header) is not None and all(
        key in header for key in needed if key not in INSTRUMENT_KEYS)


def _fits_headers(stream: BinaryIO, path: Path, limits: HeaderLimits,
                  deadline: float) -> Iterator[tuple[int, Any]]:
    """(index, astropy Header) of each HDU, read block by block within *limits*.

    Only 2880-byte header blocks are read, up to the END card (found as astropy's
    fits.open finds it, see `_read_header_text`); astropy parses just those bytes
    (`Header.fromstring`), and the data unit that follows is skipped by its size from the
    header (FITS standard 4.4.1), so a 10 GB file costs a seek.  A damaged or truncated
    extension ends the walk with a warning (the headers before it are still good); a
    damaged primary header, or any limit, is an error naming the file.
    """
    from astropy.io import fits

    blocks = _Blocks(stream)
    budget = _Budget(path, limits, deadline)
    for index in itertools.count():
        try:
            text = _read_header_text(blocks, index, budget)
        except (OSError, EOFError, zlib.error) as exc:
            if index == 0:
                raise DatasetError(f"cannot read dataset {path}: {exc}") from None
            log.warning("dataset %s: stopped reading at extension %d: %s", path, index, exc)
            return
        except _StopWalk as stop:
            log.warning("dataset %s: stopped reading at extension %d: %s", path, index, stop)
            return
        except _EndOfFile:
            return
        if text is None:
            return  # the end of the file: every HDU was read
        try:
            header = fits.Header.fromstring(text)
        except Exception as exc:  # noqa: BLE001 - astropy raises several types for bad cards
            if index == 0:
                raise DatasetError(f"dataset {path}: unreadable primary FITS header: "
                                   f"{type(exc).__name__}: {exc}") from None
            log.warning("dataset %s: stopped reading at extension %d: %s", path, index, exc)
            return
        try:
            size = _data_size(header)
        except Exception as exc:  # noqa: BLE001 - astropy could not build this HDU either
            if index == 0:
                raise DatasetError(f"dataset {path}: unreadable primary FITS header: "
                                   f"{type(exc).__name__}: {exc}") from None
            log.warning("dataset %s: stopped reading at extension %d: %s", path, index, exc)
            return
        yield index, header
        if size is None:
            log.warning("dataset %s: HDU %d: data size unknown (bad BITPIX/NAXISn/PCOUNT/"
                        "GCOUNT); later extensions are not read", path, index)
            return
        if not blocks.skip(size, budget):
            return


class _StopWalk(Exception):
    """An extension that cannot be read: the walk ends (with a warning) before it."""


class _EndOfFile(Exception):
    """Nothing but padding where the next HDU would start: every HDU was read."""


class _Budget:
    """What one file's header reading may still spend (bytes, cards, HDUs, time)."""

    def __init__(self, path: Path, limits: HeaderLimits, deadline: float) -> None:
        self.path = path
        self.limits = limits
        self.deadline = deadline
        self.bytes = 0
        self.cards = 0

    def check_time(self, what: str = "its FITS headers") -> None:
        _check_deadline(self.deadline, self.path, self.limits, what)

    def spend(self, block: bytes) -> None:
        """Account one header block read."""
        self.bytes += len(block)
        if self.bytes > self.limits.max_bytes:
            raise self.limits.exceeded(self.path, "the size of its FITS headers", "max_bytes",
                                       hint=" (a header without END card?)")
        self.cards += -(-len(block) // _CARD)
        if self.cards > self.limits.max_cards:
            raise self.limits.exceeded(self.path, "the number of its FITS header cards",
                                       "max_cards", hint=" (a header without END card?)")


class _Blocks:
    """2880-byte blocks of a FITS file (gzip-compressed or not), with push-back; data
    units are skipped by seeking (plain files) or by reading past them (gzip)."""

    def __init__(self, stream: BinaryIO) -> None:
        magic = stream.read(2)
        stream.seek(0)
        self.seekable = magic != _GZIP_MAGIC
        self.stream: BinaryIO = (stream if self.seekable else  # type: ignore[assignment]
                                 gzip.GzipFile(fileobj=stream, mode="rb"))
        self.pending: list[bytes] = []

    def read(self) -> bytes:
        if self.pending:
            return self.pending.pop(0)
        return _read_exactly(self.stream, FITS_BLOCK)

    def push_back(self, blocks: list[bytes]) -> None:
        self.pending[:0] = blocks

    def skip(self, size: int, budget: _Budget) -> bool:
        """Move past *size* bytes of data; False when the file ends first."""
        while size > 0 and self.pending:
            size -= len(self.pending.pop(0))
        if size <= 0:
            return True
        if self.seekable:
            self.stream.seek(size, os.SEEK_CUR)
            return True
        while size > 0:
            budget.check_time("past the data of its HDUs")
            chunk = self.stream.read(min(size, _SKIP_CHUNK))
            if not chunk:
                return False
            size -= len(chunk)
        return True


def _read_header_text(blocks: _Blocks, index: int, budget: _Budget) -> str | None:
    """The text of HDU *index*'s header, found as astropy's fits.open finds it; None at
    the end of the file.

    astropy first tries its fast parser (the exact END card, whole ASCII blocks) and, when
    that fails, reads the header again with `Header.fromfile`'s rules: an END card may be
    followed by junk (`_END_RE`), non-ASCII bytes become '?', a short last block counts.
    Both are done here on the same blocks, read once and within *budget*.
    """
    read: list[bytes] = []
    fast = True
    while True:
        budget.check_time()
        block = blocks.read()
        if not read:
            if not block and index > 0:
                return None
            _check_first_block(block, index, budget)
        at_end = len(block) < FITS_BLOCK  # a short block is never part of a header
        if block:
            budget.spend(block)
        if not at_end:
            read.append(block)
            if fast and block.isascii():
                if any(block[pos: pos + _CARD] == _END_CARD
                       for pos in range(0, FITS_BLOCK, _CARD)):
                    return b"".join(read).decode("ascii")
                continue
        if fast:  # astropy's fallback: look again from the header's first block
            fast = False
            found = _fallback_end(read)
        else:
            found = None if at_end else _fallback_end(read[-1:], offset=len(read) - 1)
        if found is not None:
            last, cleaned = found
            blocks.push_back(read[last + 1:] + ([block] if at_end and block else []))
            used = [*read[:last], cleaned]
            return b"".join(used).decode("ascii", errors="replace").replace("\ufffd", "?")
        if at_end:
            if index == 0:
                raise DatasetError(
                    f"dataset {budget.path}: the primary FITS header has no END card (the "
                    f"file ends after {budget.bytes} header bytes); is the file complete?")
            raise _StopWalk("the file ends inside its header (truncated?)")


def _check_first_block(block: bytes, index: int, budget: _Budget) -> None:
    if index >= budget.limits.max_hdus:
        raise budget.limits.exceeded(budget.path, "the number of HDUs", "max_hdus")
    if index == 0:
        if not block:
            raise DatasetError(f"dataset {budget.path} is empty; is it a FITS file?")
        if not block.startswith(b"SIMPLE  ="):
            raise DatasetError(f"dataset {budget.path} is not a FITS file: it does not "
                               "start with a SIMPLE card")
    elif not block.strip(b"\0"):
        raise _EndOfFile  # zero padding after the last HDU, as astropy takes it


def _fallback_end(read: list[bytes], offset: int = 0) -> tuple[int, bytes] | None:
    """(index of the block holding the END card, that block with the card cleaned) under
    `Header.fromfile`'s rules, or None."""
    for number, block in enumerate(read):
        for match in _END_RE.finditer(block):
            start = match.start()
            if start % _CARD:
                continue
            if match.group("invalid"):
                block = block[:start] + _END_CARD + block[start + _CARD:]
            return offset + number, block
    return None


def _data_size(header: Any) -> int | None:
    """Bytes of the data unit after *header*, padded to whole blocks; None if unknowable.

    FITS standard 4.4.1: |BITPIX| * GCOUNT * (PCOUNT + NAXIS1 * ... * NAXISn) bits, with
    NAXIS1 = 0 left out of the product for random groups.  Raises when a structural card
    is missing or unparsable (astropy then cannot build the HDU: it is not used either).
    """
    naxis = header.get("NAXIS", 0)
    if naxis == 0:
        return 0
    bitpix = header["BITPIX"]
    if not isinstance(naxis, int) or not isinstance(bitpix, int):
        return None
    if not 0 < naxis <= 999 or bitpix not in (8, 16, 32, 64, -32, -64):
        return None
    values = [header[f"NAXIS{i}"] for i in range(1, naxis + 1)]
    values += [header.get("GCOUNT", 1), header.get("PCOUNT", 0)]
    if not all(isinstance(value, int) and value >= 0 for value in values):
        return None
    *dims, gcount, pcount = values
    if header.get("GROUPS") is True and dims[0] == 0:
        dims = dims[1:]
    count = math.prod(dims)
    if min(dims, default=0) < 0 or gcount < 0 or pcount < 0:
        return None
    size = abs(bitpix) // 8 * gcount * (pcount + count)
    return -(-size // FITS_BLOCK) * FITS_BLOCK


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


# --- ASDF ---------------------------------------------------------------------------------

_ASDF_MAGIC = b"#ASDF"
_ASDF_BLOCK_MAGIC = b"\xd3BLK"
#: asdf's own end-of-tree marker (asdf.constants.YAML_END_MARKER_REGEX)
_YAML_END = re.compile(rb"\r?\n\.\.\.((\r?\n)|$)")
_ASDF_CHUNK = 64 << 10
#: Top-level keys of an ASDF tree that are no metadata (asdf's own bookkeeping).
_ASDF_SKIPPED = ("asdf_library", "history")


def _asdf_header(stream: BinaryIO, path: Path, limits: HeaderLimits,
                 deadline: float) -> dict[str, str]:
    """The ASDF tree flattened to ``{DOTTED.UPPER.KEY: str}``; arrays are never loaded.

    The YAML tree is read by us, up to `HeaderLimits.asdf_max_bytes`, and checked event by
    event (node count with aliases expanded, aliases, depth) before asdf builds anything;
    asdf then gets only those bytes, so it never sees the binary blocks.
    """
    import asdf

    tree_bytes = _asdf_tree_bytes(stream, path, limits, deadline)
    _check_yaml(tree_bytes, path, limits, deadline)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # crds opens ASDF datasets with asdf's defaults (a fully converted tree); so do we,
        # so values (and the types named for non-standard ones) are the ones crds sees.
        with asdf.open(io.BytesIO(tree_bytes), lazy_load=True, memmap=False,
                       lazy_tree=False) as handle:
            return dict(_flatten(handle.tree, "", top=True))


def _asdf_tree_bytes(stream: BinaryIO, path: Path, limits: HeaderLimits,
                     deadline: float) -> bytes:
    """The file's bytes up to the end of its YAML tree (asdf's ``...`` marker)."""
    data = bytearray()
    searched = 0
    while True:
        _check_deadline(deadline, path, limits, "its ASDF tree")
        chunk = stream.read(_ASDF_CHUNK)
        if not data and not chunk.startswith(_ASDF_MAGIC):
            raise DatasetError(f"dataset {path} is not an ASDF file (no #ASDF header line)")
        data += chunk
        start = max(0, searched - 8)
        match = _YAML_END.search(data, start)
        block = data.find(_ASDF_BLOCK_MAGIC, start)
        if match is not None and (block < 0 or match.end() <= block):
            end = match.end()
        elif block >= 0:
            end = block  # a tree without end marker, or blocks only: asdf decides
        elif not chunk:
            end = len(data)
        else:
            end = -1
        if end >= 0 or len(data) > limits.asdf_max_bytes:
            if end < 0 or end > limits.asdf_max_bytes:
                raise limits.exceeded(path, "the size of its ASDF (YAML) tree",
                                      "asdf_max_bytes")
            return bytes(data[:end])
        searched = len(data)


def _check_yaml(data: bytes, path: Path, limits: HeaderLimits, deadline: float) -> None:
    """Walk the YAML events of *data* and stop at the first limit, before any node is built.

    Each anchor remembers how many nodes (and how deep) its subtree is, so an alias counts
    as the copy it stands for: nested aliases ("billion laughs") are caught by the node
    count although the file is tiny.
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    anchors: dict[str, tuple[int, int]] = {}
    #: per open collection: [anchor, nodes before it, height of its tallest child]
    stack: list[list[Any]] = []
    nodes = aliases = 0

    def add(count: int, height: int) -> None:
        nonlocal nodes
        nodes += count
        if nodes > limits.asdf_max_nodes:
            raise limits.exceeded(path, "the number of nodes of its ASDF tree (aliases "
                                  "expanded)", "asdf_max_nodes")
        if len(stack) + height > limits.asdf_max_depth:
            raise limits.exceeded(path, "the nesting depth of its ASDF tree", "asdf_max_depth")
        if stack:
            stack[-1][2] = max(stack[-1][2], height)

    try:
        for number, event in enumerate(yaml.parse(data, Loader=loader)):
            if not number % 4096:
                _check_deadline(deadline, path, limits, "its ASDF tree")
            if isinstance(event, yaml.ScalarEvent):
                add(1, 1)
                if event.anchor:
                    anchors[event.anchor] = (1, 1)
            elif isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > limits.asdf_max_aliases:
                    raise limits.exceeded(path, "the number of YAML aliases in its ASDF tree",
                                          "asdf_max_aliases")
                count, height = anchors.get(event.anchor, (1, 1))
                add(count, height)
            elif isinstance(event, yaml.CollectionStartEvent):
                add(1, 1)
                stack.append([event.anchor, nodes, 0])
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, before, inner = stack.pop()
                if stack:
                    stack[-1][2] = max(stack[-1][2], inner + 1)
                if anchor:
                    anchors[anchor] = (nodes - before + 1, inner + 1)
    except yaml.YAMLError as exc:
        raise DatasetError(f"dataset {path}: the ASDF tree is not valid YAML: {exc}") from None


def _flatten(tree: Mapping[Any, Any], prefix: str, *, top: bool = False
             ) -> Iterator[tuple[str, str]]:
    """crds' ``to_simple_types``: nested mappings become dotted upper-case keys."""
    for key in list(tree.keys()):
        if not isinstance(key, str) or (top and key.startswith(_ASDF_SKIPPED)):
            continue
        value = tree[key]
        name = prefix + key.upper()
        if isinstance(value, Mapping):
            yield from _flatten(value, name + ".")
            continue
        simple = _simple_type(value)
        if not (isinstance(simple, str) and simple.startswith(_SUPPRESSED)):
            yield name, str(simple)


#: crds' marker (and spelling) for values that are no header value (arrays, WCS objects):
#: such keys are left out of our headers (they never match anything).
_SUPPRESSED = "SUPRESSED_NONSTD_TYPE: "


def _simple_type(value: Any) -> Any:
    """A header value exactly as crds makes it (``AbstractFile._simple_type``; the header
    holds its ``str``): scalars as ``str``, lists as tuples of such values, dates in crds'
    standard form (astropy Times in UTC without fractional seconds), anything else
    ``SUPRESSED_NONSTD_TYPE: '<class>'``."""
    if isinstance(value, str | int | float | complex):
        return str(value)
    if isinstance(value, list | tuple):
        return tuple(_simple_type(item) for item in value)
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=None).isoformat("T")
    if type(value).__name__ == "Time" and hasattr(value, "utc"):  # astropy Time
        return _crds_time(value)
    return f"{_SUPPRESSED}{type(value).__name__!r}"


def _crds_time(value: Any) -> str:
    """crds' ``timestamp.reformat_date`` of an astropy Time: its UTC second, no fraction."""
    try:
        text = str(value.utc.strftime(_TIME_FORMAT))
    except Exception:  # noqa: BLE001 - unusual scales or array times: keep the text
        return str(value)
    try:
        return datetime.datetime.strptime(text, _TIME_FORMAT).isoformat("T")
    except ValueError:  # a leap second (23:59:60): crds cannot parse it either
        return text.replace(" ", "T")


_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
