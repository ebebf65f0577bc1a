"""JSON-RPC methods of `crds-fs serve`, answering like a CRDS server over a served folder.

Each handler is a plain function `handler(env, *params)` registered by name in `METHODS`;
parameters are positional exactly as crds sends them (crds-reference 1.5).  Handlers raise
CrdsFsError subclasses with a message for the client; the app turns them into error
envelopes.  Other modules own some answers:

- best references: `crds_fs.server.bestrefs.<method>(root, *params)` (engine issue);
- dataset headers/ids: `crds_fs.server.datasets.<method>(root, datasets_dir, *params)`
  for the names in `DATASET_METHODS`, only when the server runs with `--datasets DIR`.
  The module is imported on first use, so it can be added without touching this file.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import inspect
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..client.names import file_kind, is_mapping, observatory_of
from ..client.payload import crds_encode
from ..errors import MappingError, ServiceError
from . import bestrefs, contexts
from .closure import MappingRefs, scan_mapping_file
from .contexts import ObsFacts
from .store import KIND_DIRS, ServedRoot

log = logging.getLogger(__name__)

Handler = Callable[..., Any]
METHODS: dict[str, Handler] = {}
#: Methods whose (potentially large) results are sent crds_encode'd, as CRDS servers do.
ENCODED_RESULTS = frozenset({
    "get_file_info_map", "get_reference_names", "list_references",
    "get_best_references_by_header_map", "get_dataset_headers_by_id",
})
#: Methods answered by crds_fs.server.datasets when --datasets is given.
DATASET_METHODS = ("get_dataset_headers_by_id", "get_dataset_ids", "get_best_references_by_ids")
FILE_FIELDS = ("name", "type", "observatory", "instrument", "filekind", "size", "sha1sum",
               "state", "rejected", "blacklisted")
MAX_BESTREFS_PER_RPC = 1000
MAX_HEADERS_PER_RPC = 1000


@dataclass
class Env:
    """What a handler may use: the served folder and this request's observatory and URL."""

    store: ServedRoot
    #: observatory of the request (URL prefix, --observatory, or the only/first one)
    observatory: str
    #: scheme://host:port of this server as the client reached it (no trailing slash)
    base_url: str
    datasets: Path | None = None


def rpc(name: str) -> Callable[[Handler], Handler]:
    """Register a handler under its JSON-RPC method name."""
    def register(func: Handler) -> Handler:
        METHODS[name] = func
        return func
    return register


# --- observatory-level facts ---------------------------------------------------------------


def obs_facts(store: ServedRoot, obs: str) -> ObsFacts:
    """Contexts, bad files and history for *obs* (see crds_fs.server.contexts)."""
    def header_of(name: str) -> dict[str, Any]:
        refs = mapping_refs(store, obs, name)
        return refs.header if refs else {}
    return contexts.obs_facts(store, obs, header_of)


def check_observatory(env: Env, observatory: Any) -> str:
    """*observatory* if this server serves it, else a ServiceError naming what is served."""
    if not isinstance(observatory, str) or observatory not in env.store.observatories:
        raise ServiceError(
            f"observatory {observatory!r} is not served here; this server has "
            f"{', '.join(env.store.observatories) or 'no observatories'}"
        )
    return observatory


def resolve_context(env: Env, context: Any) -> tuple[str, str]:
    """(observatory, mapping name) of *context*: a mapping name, or a symbolic or
    date-based spec ('hst-operational', 'hst-2016-01-01', 'jwst-miri-flat-edit', ...)."""
    if not isinstance(context, str) or not context:
        raise ServiceError(f"context must be a mapping name, got {context!r}")
    if not is_mapping(context):
        spec = contexts.parse_spec(context, env.observatory)
        if spec is None:
            raise ServiceError(
                f"'{context}' is not a context name (.pmap, .imap or .rmap) nor a date-based "
                "spec such as hst-2016-01-01 or hst-operational")
        return resolve_spec(env, spec)
    obs = observatory_of(context)
    if obs in env.store.observatories:
        return obs, context
    for candidate in env.store.observatories:
        if context in env.store.files(candidate, "mapping"):
            return candidate, context
    raise ServiceError(f"mapping '{context}' is not on this server")


def resolve_spec(env: Env, spec: contexts.ContextSpec) -> tuple[str, str]:
    """The mapping a parsed spec designates: a state's context, or the one in use on the
    spec's date (context history), narrowed to the instrument's imap / the type's rmap."""
    obs = check_observatory(env, spec.observatory)
    facts = obs_facts(env.store, obs)
    if spec.state is not None:
        pmap = {"edit": facts.edit_context, "versions": facts.versions_context,
                "build": facts.build_context}.get(spec.state, facts.operational_context)
        if not pmap:
            raise ServiceError(f"this server has no {obs} {spec.state} context")
    else:
        assert spec.date is not None
        pmap = contexts.context_at(facts.context_history, spec.date, obs)
    return obs, contexts.qualify(env.store, obs, pmap, spec.instrument, spec.filekind)


# --- mapping closures ----------------------------------------------------------------------


def mapping_refs(store: ServedRoot, obs: str, name: str) -> MappingRefs | None:
    """What mapping *name* names (None when the file is not served)."""
    record = store.file(obs, "mapping", name)
    if record is None:
        return None
    try:
        return scan_mapping_file(store.read_served_text, record.path, record.size,
                                 record.mtime_ns, name)
    except (MappingError, OSError) as exc:
        raise ServiceError(str(exc)) from None


def usable_mapping_refs(store: ServedRoot, obs: str, name: str) -> MappingRefs | None:
    """mapping_refs, or None for a broken mapping (logged by the scanner): one bad rmap
    must not break file info of every other file."""
    try:
        return mapping_refs(store, obs, name)
    except ServiceError:
        return None


def closure(store: ServedRoot, obs: str, context: str) -> tuple[list[str], set[str]]:
    """(sorted mapping names incl. *context*, reference names) reachable from *context*.

    Children named by the rules but absent from the folder are still listed (they are part
    of the closure); the context itself must be present.
    """
    if store.file(obs, "mapping", context) is None:
        raise ServiceError(f"context '{context}' is not on this server (observatory {obs})")
    seen: set[str] = set()
    missing: list[str] = []
    references: set[str] = set()
    todo = [context]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        refs = mapping_refs(store, obs, name)
        if refs is None:
            missing.append(name)
        else:
            todo.extend(refs.mappings)
            references.update(refs.references)
    if missing:
        log.warning("closure of %s names %d mapping(s) this server does not have: %s",
                    context, len(missing), ", ".join(sorted(missing)[:10]))
    return sorted(seen), references


_owner_lock = threading.Lock()
_owners: dict[tuple[int, str, int], dict[str, tuple[str, str]]] = {}


def reference_owners(store: ServedRoot, obs: str) -> dict[str, tuple[str, str]]:
    """reference name -> (instrument, filekind), from every rmap served (cached)."""
    key = (id(store), obs, store.generation)
    with _owner_lock:
        if key in _owners:
            return _owners[key]
    owners: dict[str, tuple[str, str]] = {}
    for name in store.names(obs, "mapping"):
        if not name.endswith(".rmap"):
            continue
        refs = usable_mapping_refs(store, obs, name)
        if refs is None:
            continue
        instrument = str(refs.header.get("instrument", "")).lower()
        filekind = str(refs.header.get("filekind", "")).lower()
        for ref in refs.references:
            owners.setdefault(ref, (instrument, filekind))
    with _owner_lock:
        _owners.clear()
        _owners[key] = owners
    return owners


# --- server info ---------------------------------------------------------------------------


_metadata_lock = threading.Lock()
_metadata_cache: dict[tuple[int, str], tuple[int, dict[str, str]]] = {}


def download_metadata(store: ServedRoot, obs: str) -> dict[str, str]:
    """crds_encode'd {name: {sha1sum, size}} of every mapping and reference served.

    Encoding 44k entries takes ~0.1 s, so the result is kept until a file changes.
    """
    key = (id(store), obs)
    with _metadata_lock:
        cached = _metadata_cache.get(key)
        if cached and cached[0] == store.generation:
            return cached[1]
        generation = store.generation
        records = {}
        for kind in ("mapping", "reference"):
            for name, record in store.files(obs, kind).items():  # type: ignore[arg-type]
                records[name] = {"sha1sum": record.sha1, "size": str(record.size)}
        encoded = crds_encode(dict(sorted(records.items())))
        _metadata_cache[key] = (generation, encoded)
        return encoded


@rpc("get_server_info")
def get_server_info(env: Env) -> dict[str, Any]:
    obs = env.observatory
    facts = obs_facts(env.store, obs)
    observatories = env.store.observatories

    def urls(kind_dir: str) -> dict[str, str]:
        return {o: f"{env.base_url}/unchecked_get/{kind_dir}/{o}/" for o in observatories}

    return {
        "observatory": obs,
        "operational_context": facts.operational_context,
        "edit_context": facts.edit_context,
        "versions_context": facts.versions_context,
        "build_context": facts.build_context,
        "bad_files_list": sorted(facts.bad_files),
        "mappings": env.store.names(obs, "mapping"),
        "context_history": facts.context_history,
        "download_metadata": download_metadata(env.store, obs),
        "mapping_url": urls("mappings"),
        "reference_url": urls("references"),
        "config_url": urls("config"),
        "force_remote_mode": 0,
        "max_bestrefs_per_rpc": MAX_BESTREFS_PER_RPC,
        "max_headers_per_rpc": MAX_HEADERS_PER_RPC,
        "crds_version": {"str": __version__, "rev": "crds-fs serve", "svnurl": "/"},
        "last_synced": facts.last_synced,
    }


@rpc("get_catalog_digest")
def get_catalog_digest(env: Env, observatory: str | None = None) -> dict[str, Any]:
    """crds-fs extension: one sha1 over what get_server_info says about the catalog.

    Covers download_metadata (every served file's size and sha1), the contexts, bad files
    and history, so a mount polls for changes with a few hundred bytes instead of the
    whole catalog (2 MB for HST).  Real CRDS servers do not have it; clients fall back.
    """
    obs = env.observatory if observatory is None else check_observatory(env, observatory)
    facts = obs_facts(env.store, obs)
    metadata = download_metadata(env.store, obs)
    with _metadata_lock:
        memo = _digest_cache.get(id(metadata))
        if memo is None or memo[0] is not metadata:
            memo = (metadata, hashlib.sha1(json.dumps(metadata, sort_keys=True).encode())
                    .hexdigest())
            _digest_cache.clear()  # one entry per live metadata blob is plenty
            _digest_cache[id(metadata)] = memo
    facts_text = json.dumps([facts.operational_context, facts.edit_context,
                             facts.versions_context, facts.build_context,
                             sorted(facts.bad_files), facts.context_history], default=str)
    digest = hashlib.sha1(f"{memo[1]}\n{facts_text}".encode()).hexdigest()
    return {"observatory": obs, "digest": digest,
            "operational_context": facts.operational_context,
            "edit_context": facts.edit_context,
            "files": len(env.store.files(obs, "mapping")) + len(env.store.files(obs, "reference"))}


_digest_cache: dict[int, tuple[dict[str, str], str]] = {}


@rpc("get_default_context")
def get_default_context(env: Env, observatory: str, state: str | None = None) -> str:
    obs = check_observatory(env, observatory)
    facts = obs_facts(env.store, obs)
    if state in (None, "latest", "operational"):
        return facts.operational_context
    if state == "build":
        return facts.build_context
    if state == "edit":
        return facts.edit_context
    if state == "versions":
        return facts.versions_context
    raise ServiceError(f"unknown context state {state!r}; use latest, operational, build, "
                       "edit or versions")


@rpc("get_build_context")
def get_build_context(env: Env, observatory: str, cal_version: str | None = None) -> str:
    """The context calibration software *cal_version* was built against.

    A folder holds no version table: the answer is server_config's build_context when
    present, else the operational context, for any version (see docs/protocol.md).
    """
    if cal_version is not None and not isinstance(cal_version, str):
        raise ServiceError(f"cal_version must be a version string, got {cal_version!r}")
    obs = check_observatory(env, observatory)
    return obs_facts(env.store, obs).build_context


@rpc("get_context_by_date")
def get_context_by_date(env: Env, date: str, observatory: str | None = None) -> str:
    """The mapping a date-based (or symbolic) spec designates, from the context history."""
    if not isinstance(date, str) or not date:
        raise ServiceError(f"date must be a date-based context spec, got {date!r}")
    if observatory is not None:
        check_observatory(env, observatory)
    spec = contexts.parse_spec(date, observatory or env.observatory)
    if spec is None:
        raise ServiceError(
            f"{date!r} is not a date-based context spec: use [<obs>[-<instrument>"
            "[-<reftype>]]-]YYYY-MM-DD[THH:MM:SS], e.g. hst-2016-01-01")
    return resolve_spec(env, spec)[1]


@rpc("get_mapping_names")
def get_mapping_names(env: Env, context: str) -> list[str]:
    obs, name = resolve_context(env, context)
    return closure(env.store, obs, name)[0]


@rpc("get_reference_names")
def get_reference_names(env: Env, context: str) -> list[str]:
    obs, name = resolve_context(env, context)
    return sorted(closure(env.store, obs, name)[1])


def _glob(env: Env, observatory: str, pattern: Any, kind: str) -> list[str]:
    obs = check_observatory(env, observatory)
    pattern = "*" if pattern in (None, "") else pattern
    if not isinstance(pattern, str):
        raise ServiceError(f"glob pattern must be a string, got {pattern!r}")
    return fnmatch.filter(env.store.names(obs, kind), pattern)  # type: ignore[arg-type]


@rpc("list_mappings")
def list_mappings(env: Env, observatory: str, glob_pattern: str | None = "*") -> list[str]:
    return _glob(env, observatory, glob_pattern, "mapping")


@rpc("list_references")
def list_references(env: Env, observatory: str, glob_pattern: str | None = "*") -> list[str]:
    return _glob(env, observatory, glob_pattern, "reference")


def file_record(env: Env, obs: str, name: str, fields: tuple[str, ...],
                facts: ObsFacts) -> dict[str, str] | None:
    """Catalog record of one served mapping or reference (None when unknown)."""
    if not isinstance(name, str):
        return None
    kind = file_kind(name)
    if kind == "config":
        return None
    record = env.store.file(obs, kind, name)
    if record is None:
        return None
    values: dict[str, str] = {}
    for field in fields:
        if field == "name":
            values[field] = name
        elif field == "type":
            values[field] = kind
        elif field == "observatory":
            values[field] = obs
        elif field == "size":
            values[field] = str(record.size)
        elif field == "sha1sum":
            values[field] = record.sha1
        elif field == "state":
            values[field] = "operational" if name == facts.operational_context else "archived"
        elif field == "rejected":
            values[field] = "false"
        elif field == "blacklisted":
            values[field] = "true" if name in facts.bad_files else "false"
        elif field in ("instrument", "filekind"):
            values[field] = _owner_field(env, obs, name, field)
    return values


def _owner_field(env: Env, obs: str, name: str, field: str) -> str:
    if is_mapping(name):
        refs = usable_mapping_refs(env.store, obs, name)
        header = refs.header if refs else {}
        return str(header.get(field, "")).lower()
    owner = reference_owners(env.store, obs).get(name, ("", ""))
    return owner[0] if field == "instrument" else owner[1]


def _check_fields(fields: Any) -> tuple[str, ...]:
    if fields is None:
        return FILE_FIELDS
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise ServiceError(f"fields must be a list of field names or null, got {fields!r}")
    unknown = sorted(set(fields) - set(FILE_FIELDS))
    if unknown:
        raise ServiceError(f"unknown file info field(s) {unknown}; known: {list(FILE_FIELDS)}")
    return tuple(fields)


@rpc("get_file_info_map")
def get_file_info_map(env: Env, observatory: str, files: list[str] | None = None,
                      fields: list[str] | None = None) -> dict[str, Any]:
    obs = check_observatory(env, observatory)
    wanted = _check_fields(fields)
    if files is None:
        files = env.store.names(obs, "mapping") + env.store.names(obs, "reference")
    elif not isinstance(files, list):
        raise ServiceError(f"files must be a list of names or null, got {files!r}")
    facts = obs_facts(env.store, obs)
    return {str(name): file_record(env, obs, name, wanted, facts) or "NOT FOUND"
            for name in files}


@rpc("get_file_info")
def get_file_info(env: Env, context: str, filename: str) -> dict[str, str]:
    obs, _ = resolve_context(env, context)
    record = file_record(env, obs, filename, FILE_FIELDS, obs_facts(env.store, obs))
    if record is None:
        raise ServiceError(f"file {filename!r} is not on this server (observatory {obs})")
    return record


@rpc("get_context_history")
def get_context_history(env: Env, observatory: str) -> list[list[str]]:
    """[start_date, context, description] entries, oldest first (crds sorts them too)."""
    obs = check_observatory(env, observatory)
    history = obs_facts(env.store, obs).context_history  # newest first
    # oldest first; entries with the same date: the one listed later is the older one
    order = sorted(range(len(history)), key=lambda i: (str(history[i][0]), -i))
    return [history[i] for i in order]


def _file_url(env: Env, context: Any, filename: Any, kind: str | None = None) -> str:
    obs, _ = resolve_context(env, context)
    if not isinstance(filename, str):
        raise ServiceError(f"filename must be a file name, got {filename!r}")
    found = env.store.find(obs, filename)
    if found is None or (kind is not None and found[0] != kind):
        raise ServiceError(f"{kind or 'file'} {filename!r} is not on this server "
                           f"(observatory {obs})")
    return f"{env.base_url}/unchecked_get/{KIND_DIRS[found[0]]}/{obs}/{filename}"


@rpc("get_url")
def get_url(env: Env, context: str, filename: str) -> str:
    """Deprecated in crds (get_flex_uri replaces it) but answerable: the download URL."""
    return _file_url(env, context, filename)


@rpc("get_mapping_url")
def get_mapping_url(env: Env, context: str, mapping: str) -> str:
    return _file_url(env, context, mapping, "mapping")


@rpc("get_reference_url")
def get_reference_url(env: Env, context: str, reference: str) -> str:
    return _file_url(env, context, reference, "reference")


@rpc("get_chunk_manifest")
def get_chunk_manifest(env: Env, filename: str) -> dict[str, Any]:
    """crds-fs extension: fixed-size chunks of *filename* with the sha256 of each.

    Lets a client fetch and verify any chunk alone (ranged GET), so reading a FITS header
    of a 4 GB reference costs one chunk, not the whole file (docs/protocol.md).  Computed in
    the pass that computes the file's sha1; `sha1sum` and `size` are the catalog's.
    """
    if not isinstance(filename, str):
        raise ServiceError(f"filename must be a file name, got {filename!r}")
    record = env.store.manifest(env.observatory, filename)
    if record is None:
        raise ServiceError(f"file {filename!r} is not on this server "
                           f"(observatory {env.observatory})")
    return {"name": filename, "size": record.size, "sha1sum": record.sha1,
            "chunk_size": record.chunk_size, "algorithm": "sha256",
            "chunks": list(record.chunks)}


#: crds.client.api calls a mirror cannot answer from its folder, and why (docs/protocol.md).
NOT_OFFERED = {
    "get_remote_context": "it reports what a pipeline pushed to the server; nothing is "
                          "pushed to a mirror",
    "push_remote_context": "a mirror is read-only; nothing can be pushed to it",
    "get_sqlite_db": "the CRDS catalog database is not part of a cache-layout folder",
    "get_system_versions": "calibration software version records are not part of a "
                           "cache-layout folder",
    "get_affected_datasets": "reprocessing records are not part of a cache-layout folder",
    "get_aui_best_references": "it needs the archive's dataset database",
    "jpoll_pull_messages": "there are no submission jobs on a mirror",
    "jpoll_abort": "there are no submission jobs on a mirror",
}


def _not_offered(method: str, why: str) -> Handler:
    def handler(env: Env, *params: Any) -> Any:
        raise NotOfferedError(
            f"'{method}' is not offered by this server (crds-fs serve, a mirror of a "
            f"folder): {why}. Ask the observatory's CRDS server for it.")
    handler.__name__ = method
    handler.variadic = True  # type: ignore[attr-defined]
    return handler


class NotOfferedError(ServiceError):
    """A real CRDS method that a mirror cannot answer (the envelope's name says so)."""


for _name, _why in NOT_OFFERED.items():
    METHODS[_name] = _not_offered(_name, _why)


# --- delegated methods ---------------------------------------------------------------------


def served_context(env: Env, context: Any) -> str:
    """Resolved name of *context*, which must be a mapping file present on this server."""
    obs, name = resolve_context(env, context)
    if env.store.file(obs, "mapping", name) is None:
        raise ServiceError(f"context '{name}' is not on this server (observatory {obs})")
    return name


@rpc("get_best_references")
def get_best_references(env: Env, context: str, header: dict,
                        reftypes: list | None = None) -> Any:
    name = served_context(env, context)
    return bestrefs.get_best_references(env.store.root, name, header, reftypes)


@rpc("get_best_references_by_header_map")
def get_best_references_by_header_map(env: Env, context: str, headers: dict,
                                      reftypes: list | None = None) -> Any:
    name = served_context(env, context)
    return bestrefs.get_best_references_by_header_map(env.store.root, name, headers, reftypes)


@rpc("get_required_parkeys")
def get_required_parkeys(env: Env, context: str) -> Any:
    name = served_context(env, context)
    return bestrefs.get_required_parkeys(env.store.root, name)


def _dataset_handler(method: str) -> Handler:
    def handler(env: Env, *params: Any) -> Any:
        if env.datasets is None:
            raise ServiceError(
                f"'{method}' needs dataset headers, and this server was started without "
                "them: restart it with `crds-fs serve ROOT --datasets DIR`"
            )
        try:
            module = importlib.import_module("crds_fs.server.datasets")
        except ImportError:
            module = None
        func = getattr(module, method, None)
        if func is None:
            raise ServiceError(f"'{method}' is not implemented by this crds-fs version")
        return func(env.store.root, env.datasets, *params)
    handler.__name__ = method
    handler.__doc__ = f"{method}: delegated to crds_fs.server.datasets (needs --datasets)."
    handler.variadic = True  # type: ignore[attr-defined]
    return handler


for _method in DATASET_METHODS:
    METHODS[_method] = _dataset_handler(_method)


def dispatch(env: Env, method: Any, params: Any) -> Any:
    """Run *method* with *params*; the (possibly encoded) result, or a CrdsFsError."""
    if not isinstance(method, str) or method not in METHODS:
        raise ServiceError(
            f"unknown JSON-RPC method {method!r}; this server answers: "
            f"{', '.join(sorted(set(METHODS) - set(NOT_OFFERED)))}"
        )
    handler = METHODS[method]
    args, kwargs = _split_params(method, params)
    _check_arity(method, handler, args, kwargs)
    env.store.refresh()
    result = handler(env, *args, **kwargs)
    return crds_encode(result) if method in ENCODED_RESULTS else result


def _split_params(method: str, params: Any) -> tuple[list[Any], dict[str, Any]]:
    if params is None:
        return [], {}
    if isinstance(params, list):
        return params, {}
    if isinstance(params, dict):
        return [], params
    raise ServiceError(f"'{method}': params must be an array or object, got {params!r}")


def _check_arity(method: str, handler: Handler, args: list, kwargs: dict) -> None:
    """A wrong parameter count is the caller's error: say which parameters are expected."""
    if getattr(handler, "variadic", False):
        return
    signature = inspect.signature(handler)
    try:
        signature.bind(None, *args, **kwargs)
    except TypeError as exc:
        expected = list(signature.parameters)[1:]
        raise ServiceError(
            f"'{method}' takes parameters ({', '.join(expected)}): {exc}"
        ) from None


def error_name(exc: BaseException) -> str:
    """Class name a crds client shows for *exc* (crds' own name when the engine gives one)."""
    return str(getattr(exc, "crds_name", None) or type(exc).__name__)


__all__ = ["METHODS", "Env", "dispatch", "error_name", "rpc"]
