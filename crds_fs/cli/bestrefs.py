"""`crds-fs bestrefs`: best references for dataset files or JSON headers, local or remote.

Usage::

    crds-fs bestrefs --context CTX [--mappings DIR | --server URL] [--local | --remote]
                     [--json] [--allow-bad-references] INPUT...

INPUT is a dataset file (FITS: only the primary and the needed extension headers are read,
never data; ASDF: only the metadata tree) or a ``.json``/``.jsonl`` file of headers (a
``.jsonl`` line, or a ``.json`` file's object / list items, is ``{KEY: value}`` or
``{"header": {KEY: value}}``).

``--local`` computes with the crds-fs engine over ``--mappings DIR`` (a folder of mapping
files or a CRDS cache root ``DIR/mappings/<obs>/``, whose ``config/<obs>/server_config``
supplies the bad-files list); without ``--mappings`` it uses the crds-fs cache folder.
``--remote`` asks the server (``--server`` or ``$CRDS_SERVER_URL``) with batched
``get_best_references_by_header_map`` calls.  Default: local when ``--mappings`` is given.

Exit status: 0 when every input was read (per-header failures are reported in the output),
2 when an input cannot be read or parsed (the message names the file and line), 1 for other
failures (context not loadable, server unreachable, bad arguments).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..bestrefs.headers import is_dataset_file, read_header
from ..bestrefs.resolver import bad_file_error
from ..config import Settings
from ..errors import ConfigError, CrdsFsError, DatasetError
from ..progress import Progress, ProgressBar, report, track
from . import cli

#: Exit status for an unreadable or unparsable input.
EXIT_INPUT = 2
_DEFAULT_BATCH = 1000
_MAX_JSON_BYTES = 1024 * 1024 * 1024


@dataclass
class Item:
    """One header to answer: where it came from ("file" or "file:line") and its keywords."""

    label: str
    header: dict[str, Any]
    bestrefs: dict[str, Any] | None = None
    error: str | None = None


class InputError(Exception):
    """An input file cannot be read or parsed (exit status 2)."""


# --- reading inputs ---------------------------------------------------------------------------


def _header_of(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, dict) and isinstance(value.get("header"), dict):
        value = value["header"]
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a JSON object of KEY: value "
                         f"(or {{\"header\": {{...}}}}), got {type(value).__name__}")
    return value


def _json_items(path: Path) -> Iterator[Item]:
    size = path.stat().st_size
    if size > _MAX_JSON_BYTES:
        raise InputError(f"{path}: {size} bytes is too large for a header file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            yield Item(where, _header_of(value, where))
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
        ) from None
    if isinstance(value, list):
        for index, entry in enumerate(value, start=1):
            where = f"{path}:{index}"
            yield Item(where, _header_of(entry, where))
    else:
        yield Item(str(path), _header_of(value, str(path)))


def read_inputs(paths: tuple[Path, ...], parkeys: Any) -> list[Item]:
    """Every header of every input, in order; InputError names the first unreadable one."""
    items: list[Item] = []
    for path in paths:
        try:
            if path.suffix.lower() in (".json", ".jsonl"):
                items.extend(_json_items(path))
            elif is_dataset_file(path):
                items.append(Item(str(path), read_header(path, parkeys())))
            else:
                raise InputError(
                    f"{path}: not a dataset (.fits, .fits.gz, .asdf) or header file (.json, .jsonl)"
                )
        except InputError:
            raise
        except DatasetError as exc:
            raise InputError(str(exc)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read: {exc}") from None
    return items


# --- answering --------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    name = getattr(exc, "crds_name", None) or type(exc).__name__
    return f"{name}: {str(exc).rstrip()}"


def _plain(refs: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in refs.items()}


class LocalAnswers:
    """Answers from the engine over a mapping folder / CRDS cache root."""

    def __init__(self, context: str, mappings: Path, settings: Settings,
                 allow_bad_references: bool) -> None:
        from ..bestrefs.sources import source_for_path

        self.source = source_for_path(mappings, context)
        self.context = self.source.load_context(context)
        self.settings = settings
        self.allow_bad_references = allow_bad_references

    def parkeys(self) -> Any:
        return self.context.required_parkeys()

    def answer(self, items: list[Item], progress: Progress | None = None) -> None:
        report(progress, 0, len(items))
        for number, item in enumerate(items, start=1):
            try:
                refs = self.context.best_references(
                    item.header, bad_files=self.source.bad_files,
                    allow_bad_references=self.allow_bad_references,
                    allow_bad_rules=self.settings.allow_bad_rules,
                )
                item.bestrefs = _plain(refs)
            except Exception as exc:  # per-header failure, reported in the output
                item.error = _describe(exc)
            report(progress, number, len(items), item.label)


class RemoteAnswers:
    """Answers from a CRDS server, batched by its ``max_bestrefs_per_rpc``.

    Like crds' client, the bad-file checks are applied here with the server's
    ``bad_files_list``.
    """

    def __init__(self, context: str, server: str, settings: Settings,
                 allow_bad_references: bool) -> None:
        from ..client.rpc import CrdsClient

        self.client = CrdsClient(server, connect_timeout=settings.connect_timeout,
                                 read_timeout=settings.read_timeout, retries=settings.retries,
                                 backoff=settings.backoff)
        self.context_name = context
        self.settings = settings
        self.allow_bad_references = allow_bad_references
        info = self.client.get_server_info()
        self.bad_files = frozenset(info.get("bad_files_list") or [])
        try:
            self.batch = max(1, int(info.get("max_bestrefs_per_rpc") or _DEFAULT_BATCH))
        except (TypeError, ValueError):
            self.batch = _DEFAULT_BATCH
        self._mapping_names_cache: list[str] | None = None

    def parkeys(self) -> Any:
        return self.client.get_required_parkeys(self.context_name)

    def answer(self, items: list[Item], progress: Progress | None = None) -> None:
        report(progress, 0, len(items))
        for start in range(0, len(items), self.batch):
            chunk = items[start:start + self.batch]
            headers = {f"h{start + i}": _screen(item.header) for i, item in enumerate(chunk)}
            answers = self.client.get_best_references_by_header_map(self.context_name, headers)
            if not isinstance(answers, dict):
                answers = {}
            for i, item in enumerate(chunk):
                self._take(item, answers.get(f"h{start + i}"))
            report(progress, start + len(chunk), len(items))

    def _take(self, item: Item, value: Any) -> None:
        if isinstance(value, (list, tuple)) and len(value) == 2:
            ok, payload = value
            if ok and isinstance(payload, dict):
                item.bestrefs = payload
                self._check_bad(item)
                return
            message = str(payload)
            message = message[len("FAILED: "):] if message.startswith("FAILED: ") else message
            item.error = f"CrdsLookupError: {message}"
        elif isinstance(value, dict):
            item.bestrefs = value
            self._check_bad(item)
        else:
            item.error = f"ServiceError: the server returned no answer for {item.label}"

    def _check_bad(self, item: Item) -> None:
        if item.bestrefs is None:
            return
        error = bad_file_error(self.context_name, item.bestrefs, self.bad_files,
                               self._mapping_names,
                               allow_bad_rules=self.settings.allow_bad_rules,
                               allow_bad_references=self.allow_bad_references)
        if error is not None:
            item.error, item.bestrefs = error, None

    def _mapping_names(self) -> list[str]:
        """The context's mappings, asked of the server once (for the bad-rules check)."""
        if self._mapping_names_cache is None:
            self._mapping_names_cache = self.client.get_mapping_names(self.context_name)
        return self._mapping_names_cache


def _screen(header: dict[str, Any]) -> dict[str, Any]:
    """crds' parameter screening: only str/int/float/bool values are sent."""
    return {k: v for k, v in header.items() if isinstance(v, (str, int, float, bool))}


# --- output -----------------------------------------------------------------------------------


def _print_json(items: list[Item], paths: dict[int, dict[str, str]] | None = None) -> None:
    for number, item in enumerate(items):
        if item.error is not None:
            record: dict[str, Any] = {"input": item.label, "error": item.error}
        else:
            record = {"input": item.label, "bestrefs": item.bestrefs}
            if paths is not None:
                record["paths"] = paths.get(number, {})
        click.echo(json.dumps(record, sort_keys=False))


def _print_table(items: list[Item], context: str,
                 paths: dict[int, dict[str, str]] | None = None) -> None:
    if paths is not None:
        _print_paths(items, context, paths)
        return
    for item in items:
        click.echo(f"== {item.label}  ({context})")
        if item.error is not None:
            click.echo(f"   ERROR {item.error}")
            continue
        refs = item.bestrefs or {}
        width = max((len(k) for k in refs), default=0)
        for reftype in sorted(refs):
            value = refs[reftype]
            shown = ", ".join(value) if isinstance(value, list) else str(value)
            click.echo(f"   {reftype.ljust(width)}  {shown}")


# --- dataset IDs and --cache-references (bestrefs/ issue) ------------------------------------


def is_dataset_id(path: Path) -> bool:
    """An INPUT that names no file but looks like a dataset ID (J8IS01J0Q, X:Y)."""
    from ..bestrefs.headers import is_valid_id

    text = str(path)
    return (not path.exists() and "/" not in text and is_valid_id(text)
            and path.suffix.lower() not in (".json", ".jsonl") and not is_dataset_file(path))


def _read_with_ids(inputs: tuple[Path, ...], parkeys: Any, answers: Any,
                   context: str) -> list[Item]:
    """Items of every input in order; dataset IDs get their headers from the server in one
    get_dataset_headers_by_id call (an unknown ID is that item's error)."""
    ids = [str(path) for path in inputs if is_dataset_id(path)]
    headers: dict[str, Any] = {}
    if ids:
        client = getattr(answers, "client", None)
        if client is None:
            raise InputError(f"{ids[0]}: not a file; dataset IDs need --remote (their headers "
                             "come from the server's get_dataset_headers_by_id)")
        try:
            headers = client.get_dataset_headers_by_id(context, ids)
        except CrdsFsError as exc:
            raise InputError(f"dataset IDs {', '.join(ids)}: {exc}") from None
    items: list[Item] = []
    for path in track(inputs, len(inputs), "reading inputs", unit="input"):
        if not is_dataset_id(path):
            items.extend(read_inputs((path,), parkeys))
            continue
        header = headers.get(str(path)) if isinstance(headers, dict) else None
        if isinstance(header, dict):
            items.append(Item(str(path), header))
        else:
            items.append(Item(str(path), {}, error=f"DatasetError: {header or 'no header'}"))
    return items


def _cache_references(items: list[Item], context: str,
                      settings: Settings) -> dict[int, dict[str, str]]:
    """{item number: {reftype: local path}}: every reference found, fetched and verified
    through the crds-fs cache (types without a reference are left out, as crds does)."""
    from ..api import close_sessions, session

    cache = session(server=settings.server_url, cache_dir=settings.cache_dir)
    numbers = [number for number, item in enumerate(items) if item.error is None]
    wanted = [{t: v for t, v in (items[n].bestrefs or {}).items() if isinstance(v, str)}
              for n in numbers]
    try:
        with ProgressBar("fetching references") as bar:
            paths = cache.cache_many_references(context, wanted, strict=False, progress=bar)
        return dict(zip(numbers, paths, strict=True))
    finally:
        close_sessions()


def _print_paths(items: list[Item], context: str, paths: dict[int, dict[str, str]]) -> None:
    for number, item in enumerate(items):
        click.echo(f"== {item.label}  ({context})")
        if item.error is not None:
            click.echo(f"   ERROR {item.error}")
            continue
        local = paths.get(number, {})
        width = max((len(k) for k in local), default=0)
        for reftype in sorted(local):
            click.echo(f"   {reftype.ljust(width)}  {local[reftype]}")


# --- command ----------------------------------------------------------------------------------


@cli.command("bestrefs")
@click.option("--context", "context", required=True, help="Pipeline context, e.g. hst_0729.pmap.")
@click.option("--mappings", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Folder of mapping files, or a CRDS cache root "
                                 "(DIR/mappings/<obs>/, bad files from DIR/config/<obs>/).")
@click.option("--server", default=None, help="CRDS server URL for --remote "
                                             "[default: $CRDS_SERVER_URL].")
@click.option("--local/--remote", "local", default=None,
              help="Compute with the crds-fs engine (default with --mappings) or ask the server.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per header and line.")
@click.option("--allow-bad-references", is_flag=True,
              help="Report references on the bad-files list instead of failing the header.")
@click.option("--cache-references", is_flag=True,
              help="Fetch (and verify) the chosen references into the crds-fs cache and print "
                   "their local paths.")
@click.argument("inputs", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=Path))
def bestrefs(context: str, mappings: Path | None, server: str | None, local: bool | None,
             as_json: bool, allow_bad_references: bool, cache_references: bool,
             inputs: tuple[Path, ...]) -> None:
    """Best references of dataset files (FITS/ASDF), JSON/JSONL header files, or (with
    --remote) dataset IDs the server knows, e.g. J8IS01J0Q.

    Exit status 0 when every input was read (per-header failures are in the output),
    2 when an input cannot be read or parsed, 1 for other failures.
    """
    settings = Settings.from_env(server_url=server)
    use_local = local if local is not None else mappings is not None
    if mappings is not None and local is False:
        raise click.UsageError("--mappings is for --local; use --server with --remote")
    try:
        if use_local:
            folder = mappings or settings.cache_dir
            answers: Any = LocalAnswers(context, folder, settings, allow_bad_references)
        else:
            answers = RemoteAnswers(context, settings.server_url, settings, allow_bad_references)
    except CrdsFsError as exc:
        where = f"mappings {mappings or settings.cache_dir}" if use_local else settings.server_url
        raise ConfigError(f"cannot use context {context} from {where}: {exc}") from None
    cached: list[Any] = []

    def parkeys() -> Any:
        if not cached:
            cached.append(answers.parkeys())
        return cached[0]

    try:
        items = _read_with_ids(inputs, parkeys, answers, context)
    except InputError as exc:
        click.echo(f"crds-fs bestrefs: error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    with ProgressBar("best references", unit="header") as bar:
        answers.answer([item for item in items if item.error is None], bar)
    paths = _cache_references(items, context, settings) if cache_references else None
    if as_json:
        _print_json(items, paths)
    else:
        _print_table(items, context, paths)
