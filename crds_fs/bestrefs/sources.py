"""Mapping sources: where the (pure) engine gets mapping text from.

A *loader* is a callable ``loader(name) -> str`` returning the text of mapping *name* (a
basename such as ``hst_acs_biasfile_0345.rmap``) or raising
:class:`~crds_fs.errors.MissingMappingError`.  This module builds loaders over

* a folder of mapping files (``DIR/<name>``),
* a CRDS cache root (``ROOT/mappings/<obs>/<name>``, with the bad-files list from
  ``ROOT/config/<obs>/server_config``),
* any callable (:func:`loader_from_callable`; the cache layer's fetcher plugs in here: give
  it ``lambda name: fetcher.ensure(name)`` or a function returning text/bytes),

and wraps them in :class:`MappingSource`, which also owns a process-level memo of built
mappings keyed by (source identity, name): unchanged rmaps are shared by many contexts, so
a server answering for several contexts parses each file once.  Mappings are immutable in
CRDS, which is what makes such a memo safe.
"""

from __future__ import annotations

import ast
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..client.names import is_safe_basename, observatory_of
from ..config import OBSERVATORIES
from ..engine import MAX_MAPPING_CHARS, Context, mapping_required_parkeys
from ..errors import ConfigError, MissingMappingError

Loader = Callable[[str], str]

_MAX_CONFIG_BYTES = 256 * 1024 * 1024

_MEMOS: dict[Any, dict[Any, Any]] = {}
_MEMOS_LOCK = threading.Lock()


def shared_memo(identity: Any) -> dict[Any, Any]:
    """The process-wide memo of built mappings for one source identity."""
    with _MEMOS_LOCK:
        return _MEMOS.setdefault(identity, {})


def clear_memos() -> None:
    """Forget every memoised mapping (tests, or after replacing files in place)."""
    with _MEMOS_LOCK:
        _MEMOS.clear()


def check_name(name: str) -> str:
    """*name* if it is a safe mapping basename, else MissingMappingError."""
    if not isinstance(name, str) or not is_safe_basename(name):
        raise MissingMappingError(f"invalid mapping name {name!r}: expected a plain file name")
    return name


def _decode(data: bytes | str, where: str) -> str:
    """Text as crds reads it: UTF-8 with universal newlines (CRLF/CR -> LF)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MissingMappingError(f"{where} is not UTF-8 text: {exc}") from None
    return data.replace("\r\n", "\n").replace("\r", "\n")


def read_mapping_file(path: Path) -> str:
    """Read one mapping file, refusing sizes the engine would refuse anyway."""
    try:
        size = path.stat().st_size
        if size > 4 * MAX_MAPPING_CHARS:
            raise MissingMappingError(
                f"{path} is {size} bytes, far larger than any mapping; refusing to read it"
            )
        return _decode(path.read_bytes(), str(path))
    except FileNotFoundError:
        raise MissingMappingError(f"mapping {path.name} not found at {path}") from None
    except IsADirectoryError:
        raise MissingMappingError(f"{path} is a directory, not a mapping file") from None
    except PermissionError as exc:
        raise MissingMappingError(f"cannot read mapping {path}: {exc.strerror}") from None


def folder_loader(folder: str | os.PathLike[str]) -> Loader:
    """Loader over a flat folder of mapping files."""
    base = Path(folder)

    def load(name: str) -> str:
        return read_mapping_file(base / check_name(name))

    load.__doc__ = f"mappings from folder {base}"
    return load


def cache_root_loader(root: str | os.PathLike[str], observatory: str) -> Loader:
    """Loader over a CRDS cache root: ``ROOT/mappings/<observatory>/<name>``."""
    return folder_loader(Path(root) / "mappings" / observatory)


def loader_from_callable(fetch: Callable[[str], str | bytes | os.PathLike[str]]) -> Loader:
    """Adapt *fetch(name)* into a loader: it may return the text (str), the raw bytes
    (UTF-8), or a ``pathlib.Path`` of a local file holding the mapping (e.g. the cache
    fetcher's ``ensure(name)``).

    Errors other than MissingMappingError from *fetch* are reported as MissingMappingError
    naming the mapping, so the engine's "missing child mapping" handling applies.
    """

    def load(name: str) -> str:
        check_name(name)
        try:
            result = fetch(name)
        except MissingMappingError:
            raise
        except Exception as exc:
            raise MissingMappingError(f"cannot get mapping {name}: {exc}") from exc
        if isinstance(result, (str, bytes)):
            return _decode(result, name)
        if isinstance(result, os.PathLike):
            return read_mapping_file(Path(result))
        raise MissingMappingError(
            f"mapping source returned {type(result).__name__} for {name}; "
            "expected text, bytes or a path"
        )

    return load


def read_server_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``server_config`` file (the server info crds keeps in a cache) as a dict.

    The file is a Python literal (crds writes it with ``repr``); it is read with
    ``ast.literal_eval``, never executed.  Raises ConfigError naming the file when it is
    not a dict literal; OSError (e.g. FileNotFoundError) passes through.
    """
    path = Path(path)
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is implausibly large for a server_config; not reading it")
    try:
        config = ast.literal_eval(path.read_text(encoding="utf-8"))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise ConfigError(f"{path} is not a valid server_config literal: {exc}; "
                          "fix or delete it") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} holds a {type(config).__name__}, not a server_config dict; "
                          "fix or delete it")
    return config


def read_bad_files(root: str | os.PathLike[str], observatory: str) -> frozenset[str]:
    """``bad_files_list`` of ``ROOT/config/<obs>/server_config`` (empty if the file is absent)."""
    path = Path(root) / "config" / observatory / "server_config"
    if not path.is_file():
        return frozenset()
    config = read_server_config(path)
    bad = config.get("bad_files_list") or config.get("bad_files") or []
    if isinstance(bad, str):
        bad = bad.split()
    return frozenset(str(name) for name in bad)


#: MappingSource.compiled default: the compiled cache of the default cache home.
DEFAULT_COMPILED = "default"


@dataclass
class MappingSource:
    """A loader plus what goes with it: identity (for the memo), bad files, a description,
    and the compiled-context cache parsed mappings are kept in between processes
    (:mod:`.compiled`; ``"default"``: under the default cache home, None: none)."""

    loader: Loader
    identity: Any
    description: str
    bad_files: frozenset[str] = field(default_factory=frozenset)
    compiled: Any = DEFAULT_COMPILED

    def compiled_store(self) -> Any:
        """The CompiledCache in use (None when disabled)."""
        if isinstance(self.compiled, str) and self.compiled == DEFAULT_COMPILED:
            from .compiled import compiled_cache

            self.compiled = compiled_cache()
        return self.compiled

    def load_context(self, name: str, *, ignore_checksum: bool = False) -> Context:
        """Context *name* from this source, sharing built mappings process-wide and parsed
        ones between processes (the compiled cache)."""
        return Context.load(name, self.loader, ignore_checksum=ignore_checksum,
                            memo=shared_memo(self.identity), compiled=self.compiled_store())

    def required_parkeys(self, name: str, *, ignore_checksum: bool = False) -> Any:
        """get_required_parkeys for any .pmap/.imap/.rmap of this source."""
        return mapping_required_parkeys(name, self.loader, ignore_checksum=ignore_checksum,
                                        memo=shared_memo(self.identity),
                                        compiled=self.compiled_store())


def folder_source(folder: str | os.PathLike[str], *,
                  bad_files: Iterable[str] = ()) -> MappingSource:
    path = Path(folder).resolve()
    return MappingSource(folder_loader(path), ("folder", str(path)), f"mapping folder {path}",
                         frozenset(bad_files))


def cache_root_source(root: str | os.PathLike[str], observatory: str) -> MappingSource:
    path = Path(root).resolve()
    return MappingSource(
        cache_root_loader(path, observatory),
        ("cache", str(path), observatory),
        f"CRDS cache {path} ({observatory})",
        read_bad_files(path, observatory),
    )


def callable_source(fetch: Callable[[str], Any], identity: Any, description: str,
                    bad_files: Iterable[str] = (), *,
                    compiled: Any = DEFAULT_COMPILED) -> MappingSource:
    return MappingSource(loader_from_callable(fetch), identity, description, frozenset(bad_files),
                         compiled)


def source_for_path(path: str | os.PathLike[str], context: str) -> MappingSource:
    """A folder of mappings, or a CRDS cache root (``DIR/mappings/<obs>/``), for *context*."""
    base = Path(path)
    if not base.is_dir():
        raise ConfigError(f"{base} is not a directory of mappings or a CRDS cache root")
    if (base / "mappings").is_dir():
        return cache_root_source(base, _cache_root_observatory(base / "mappings", context))
    return folder_source(base)


def _cache_root_observatory(mappings: Path, context: str) -> str:
    """The ``mappings/<obs>/`` folder holding *context*: the one its name prefix names
    first, then any; a known observatory prefix wins even when the file is missing (so
    loading reports the missing mapping by path)."""
    name = os.path.basename(context)
    guess = observatory_of(name.lower())
    present = sorted(p.name for p in mappings.iterdir() if p.is_dir())
    for obs in ([guess] if guess else []) + present:
        if (mappings / obs / name).is_file():
            return obs
    if guess and (guess in present or guess in (*OBSERVATORIES, "tobs")):
        return guess
    raise ConfigError(f"cannot tell the observatory of {context!r}: no {mappings}/<obs>/{name}; "
                      f"name a context present there (observatories: {', '.join(present)})")
