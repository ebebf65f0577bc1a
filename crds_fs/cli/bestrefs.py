"""`crds-fs bestrefs`: best references for dataset files, JSON headers or dataset IDs.

Usage::

    crds-fs bestrefs [--context NAME|operational|latest] [--mappings DIR | --server URL]
                     [--local | --remote] [--cache DIR] [--observatory OBS] [--json]
                     [--allow-bad-references] [--cache-references] INPUT...

INPUT is a dataset file (FITS: only the primary and the needed extension headers are read,
never data; ASDF: only the metadata tree), a ``.json``/``.jsonl`` file of headers (a
``.jsonl`` line, or a ``.json`` file's object / list items, is ``{KEY: value}`` or
``{"header": {KEY: value}}``), or a dataset ID the server knows (``J8IS01J0Q``), whose
header comes from the server's ``get_dataset_headers_by_id``.

This module only reads inputs and prints: the answers come from
`crds_fs.bestrefs.resolver` (`LocalAnswerer` over ``--mappings``, `RemoteAnswerer` over the
server), which owns batching and the bad-file rules.

Exit status (the worst that happened wins):

* 0 — every input was read and every header answered (a reference type without a match
  is an answer: ``NOT FOUND ...``, as in crds);
* 1 — some lookups failed: a header's whole call (unknown instrument, bad rules or bad
  reference, an unknown dataset ID, a refusal by the server), or none could be made at
  all (context not loadable, server unreachable), or ``--cache-references`` failed (the
  answers are still printed, without paths);
* 2 — some inputs could not be read (missing, unparsable, not a dataset or header file,
  a dataset ID without a server), or the command line is wrong.

Every input gets its record in the table and in ``--json``, whatever happened to others.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..bestrefs.headers import is_dataset_file, is_valid_id, read_header
from ..bestrefs.resolver import (
    LocalAnswerer,
    RemoteAnswerer,
    alias_observatory,
    describe_error,
    folder_context,
    is_context_alias,
    server_context,
)
from ..config import OBSERVATORIES, Settings
from ..errors import ConfigError, CrdsFsError, DatasetError, ServerUnreachableError
from ..progress import ProgressBar, track
from . import cli, proxy_option

#: Exit statuses (see the module doc).
EXIT_OK, EXIT_LOOKUP, EXIT_INPUT = 0, 1, 2
#: Largest .json/.jsonl header file read (it is parsed in memory).
_MAX_JSON_BYTES = 1024 * 1024 * 1024


@dataclass
class Item:
    """One header to answer: where it came from ("file", "file:line" or an ID), its
    keywords, and then its answer or error.  *unreadable* items never had a header."""

    label: str
    header: dict[str, Any]
    bestrefs: dict[str, Any] | None = None
    error: str | None = None
    unreadable: bool = False


class InputError(Exception):
    """An input cannot be read or parsed (its item is unreadable; exit status 2)."""


# --- reading inputs ---------------------------------------------------------------------------


def _unreadable(label: str, message: str) -> Item:
    return Item(label, {}, error=message, unreadable=True)


def _header_of(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, dict) and isinstance(value.get("header"), dict):
        value = value["header"]
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a JSON object of KEY: value "
                         f"(or {{\"header\": {{...}}}}), got {type(value).__name__}")
    return value


def _json_item(value: Any, where: str) -> Item:
    try:
        return Item(where, _header_of(value, where))
    except InputError as exc:
        return _unreadable(where, str(exc))


def _json_items(path: Path) -> Iterator[Item]:
    """The headers of a .json/.jsonl file; a bad line or entry is its own unreadable item,
    a file that cannot be read or parsed at all raises InputError."""
    size = path.stat().st_size
    if size > _MAX_JSON_BYTES:
        raise InputError(f"{path}: {size} bytes is too large for a header file "
                         f"(at most {_MAX_JSON_BYTES}); split it")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield _unreadable(where, f"{where}: invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            yield _json_item(value, where)
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
        ) from None
    if isinstance(value, list):
        for index, entry in enumerate(value, start=1):
            yield _json_item(entry, f"{path}:{index}")
    else:
        yield _json_item(value, str(path))


def read_input(path: Path, parkeys: Any) -> list[Item]:
    """Every header of one input file, in order; an unreadable input is one item saying
    why (it never stops the others)."""
    try:
        if path.suffix.lower() in (".json", ".jsonl"):
            return list(_json_items(path))
        if is_dataset_file(path):
            return [Item(str(path), read_header(path, parkeys))]
        raise InputError(
            f"{path}: not a dataset (.fits, .fits.gz, .asdf) or header file (.json, .jsonl)")
    except InputError as exc:
        message = str(exc)
    except DatasetError as exc:
        message = str(exc)
    except (OSError, UnicodeDecodeError) as exc:
        message = f"{path}: cannot read: {exc}"
    return [_unreadable(str(path), message)]


def is_dataset_id(path: Path) -> bool:
    """An INPUT that names no file but looks like a dataset ID (J8IS01J0Q, X:Y)."""
    text = str(path)
    return (not path.exists() and "/" not in text and is_valid_id(text)
            and path.suffix.lower() not in (".json", ".jsonl") and not is_dataset_file(path))


def read_inputs(inputs: tuple[Path, ...], parkeys: Any, context: str,
                ids_from: RemoteAnswerer | None) -> list[Item]:
    """Items of every input in order.  Dataset IDs get their headers from the server in
    one get_dataset_headers_by_id call (an unknown ID is that item's lookup error);
    without a server they are unreadable."""
    ids = [str(path) for path in inputs if is_dataset_id(path)]
    headers: dict[str, dict[str, Any] | str] = {}
    if ids and ids_from is not None:
        try:
            headers = ids_from.dataset_headers(context, ids)
        except ServerUnreachableError as exc:
            headers = dict.fromkeys(ids, describe_error(exc))
    items: list[Item] = []
    for path in track(inputs, len(inputs), "reading inputs", unit="input"):
        if not is_dataset_id(path):
            items.extend(read_input(path, parkeys))
        elif ids_from is None:
            items.append(_unreadable(str(path), f"{path}: no such file; as a dataset ID it "
                                     "needs a server (--server or CRDS_SERVER_URL)"))
        else:
            header = headers.get(str(path))
            if isinstance(header, dict):
                items.append(Item(str(path), header))
            else:
                items.append(Item(str(path), {}, error=str(header)))
    return items


# --- which answerer and which context ---------------------------------------------------------


def _server_given(server: str | None) -> bool:
    """True when the user named a server (option or CRDS_SERVER_URL), not the default."""
    return server is not None or bool(os.environ.get("CRDS_SERVER_URL", "").strip())


def _remote(settings: Settings, allow_bad_references: bool) -> RemoteAnswerer:
    """A RemoteAnswerer on the settings' server, its server info already fetched."""
    from ..client.rpc import CrdsClient

    client = CrdsClient.from_settings(settings)
    try:
        client.get_server_info()
    except CrdsFsError as exc:
        client.close()
        raise ConfigError(f"cannot use the CRDS server {settings.server_url}: {exc}") from None
    return RemoteAnswerer(client, allow_bad_references=allow_bad_references,
                          allow_bad_rules=settings.allow_bad_rules)


def _choose_context(name: str | None, settings: Settings, folder: Path | None,
                    remote: RemoteAnswerer | None) -> tuple[str, str | None]:
    """(context, how it was chosen or None when named): a name is used as given;
    None/operational/latest mean the server's operational context, or without a server
    the folder's (recorded operational context, else newest pmap; latest: newest)."""
    name = name or settings.context
    if not is_context_alias(name, settings.observatory):
        return str(name), None
    observatory = alias_observatory(name) or settings.observatory
    if remote is not None:
        return (server_context(remote.client, observatory),
                f"the operational context of {settings.server_url}")
    assert folder is not None
    latest = bool(name) and str(name).lower().endswith("latest")
    chosen = folder_context(folder, observatory=observatory, latest=latest)
    return chosen, f"the {'newest' if latest else 'operational'} context in {folder}"


# --- output -----------------------------------------------------------------------------------


def _record(item: Item, paths: dict[str, str] | None) -> dict[str, Any]:
    if item.error is not None:
        record: dict[str, Any] = {"input": item.label, "error": item.error}
        if item.unreadable:
            record["unreadable"] = True
        return record
    record = {"input": item.label, "bestrefs": item.bestrefs}
    if paths is not None:
        record["paths"] = paths
    return record


def _print_json(items: list[Item], paths: dict[int, dict[str, str]] | None) -> None:
    for number, item in enumerate(items):
        found = None if paths is None else paths.get(number, {})
        click.echo(json.dumps(_record(item, found), sort_keys=False))


def _print_table(items: list[Item], context: str,
                 paths: dict[int, dict[str, str]] | None) -> None:
    for number, item in enumerate(items):
        click.echo(f"== {item.label}  ({context})")
        if item.error is not None:
            click.echo(f"   {'UNREADABLE' if item.unreadable else 'ERROR'} {item.error}")
            continue
        if paths is not None:
            shown_refs: dict[str, Any] = paths.get(number, {})
        else:
            shown_refs = item.bestrefs or {}
        width = max((len(k) for k in shown_refs), default=0)
        for reftype in sorted(shown_refs):
            value = shown_refs[reftype]
            shown = ", ".join(value) if isinstance(value, list) else str(value)
            click.echo(f"   {reftype.ljust(width)}  {shown}")


def exit_status(items: list[Item]) -> int:
    """2 when an input was unreadable, else 1 when a lookup failed, else 0."""
    if any(item.unreadable for item in items):
        return EXIT_INPUT
    if any(item.error is not None for item in items):
        return EXIT_LOOKUP
    return EXIT_OK


def _summary(items: list[Item]) -> str:
    unreadable = sum(item.unreadable for item in items)
    failed = sum(item.error is not None and not item.unreadable for item in items)
    answered = len(items) - unreadable - failed
    return (f"crds-fs bestrefs: {answered} of {len(items)} answered, {failed} lookup(s) "
            f"failed, {unreadable} unreadable (exit status {exit_status(items)})")


def _cache_references(items: list[Item], context: str,
                      settings: Settings) -> dict[int, dict[str, str]]:
    """{item number: {reftype: local path}}: every reference found, fetched and verified
    through the crds-fs cache (types without a reference are left out, as crds does)."""
    from ..api import close_sessions, session

    cache = session(server=settings.server_url, cache_dir=settings.cache_dir,
                    observatory=settings.observatory, proxy=settings.proxy)
    numbers = [number for number, item in enumerate(items) if item.error is None]
    wanted = [{t: v for t, v in (items[n].bestrefs or {}).items() if isinstance(v, str)}
              for n in numbers]
    try:
        with ProgressBar("fetching references") as bar:
            paths = cache.cache_many_references(context, wanted, strict=False, progress=bar)
        return dict(zip(numbers, paths, strict=True))
    finally:
        close_sessions()


# --- command ----------------------------------------------------------------------------------


@cli.command("bestrefs")
@click.option("--context", "context", default=None, metavar="NAME|operational|latest",
              help="Pipeline context, e.g. hst_0729.pmap [default: $CRDS_CONTEXT, else the "
                   "server's operational context; with --mappings and no server (no --server, "
                   "no $CRDS_SERVER_URL): the operational context recorded in "
                   "DIR/config/<obs>/server_config, else the newest pmap in DIR; 'latest' "
                   "there is always the newest pmap].")
@click.option("--mappings", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Folder of mapping files, or a CRDS cache root "
                                 "(DIR/mappings/<obs>/, bad files from DIR/config/<obs>/).")
@click.option("--server", default=None, metavar="URL",
              help="CRDS server (real or `crds-fs serve`) [default: $CRDS_SERVER_URL].")
@proxy_option
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="crds-fs cache folder, for --cache-references and for "
                                 "--local without --mappings "
                                 "[default: $CRDS_FS_CACHE or ~/.cache/crds-fs].")
@click.option("--observatory", type=click.Choice(OBSERVATORIES), default=None,
              help="Observatory [default: $CRDS_OBSERVATORY, else the server's, or the only "
                   "one in --mappings].")
@click.option("--local/--remote", "local", default=None,
              help="Compute with the crds-fs engine (default with --mappings) or ask the server.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per header and line.")
@click.option("--allow-bad-references", is_flag=True,
              help="Report references on the bad-files list instead of failing the header "
                   "[default: $CRDS_ALLOW_BAD_REFERENCES].")
@click.option("--cache-references", is_flag=True,
              help="Fetch (and verify) the chosen references into the crds-fs cache and print "
                   "their local paths.")
@click.argument("inputs", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=Path))
def bestrefs(context: str | None, mappings: Path | None, server: str | None,
             proxy: str | None, cache_dir: Path | None, observatory: str | None, local: bool | None,
             as_json: bool, allow_bad_references: bool, cache_references: bool,
             inputs: tuple[Path, ...]) -> None:
    """Best references of dataset files (FITS/ASDF), JSON/JSONL header files, or dataset
    IDs the server knows (e.g. J8IS01J0Q).

    Every input gets its answer or its error, in the table and in --json. Exit status:
    0 every header answered ("NOT FOUND" for a type is an answer); 1 some lookups failed
    (unknown instrument, bad rules/reference, unknown dataset ID, or the context or server
    could not be used at all); 2 some inputs unreadable (or a usage error).
    """
    settings = Settings.from_env(server_url=server, cache_dir=cache_dir,
                                 observatory=observatory, proxy=proxy)
    use_local = local if local is not None else mappings is not None
    if mappings is not None and local is False:
        raise click.UsageError("--mappings is for --local; use --server with --remote")
    allow_bad_references = allow_bad_references or settings.allow_bad_references
    remote: RemoteAnswerer | None = None
    if not use_local or (_server_given(server) and (
            is_context_alias(context or settings.context, settings.observatory)
            or any(is_dataset_id(path) for path in inputs))):
        remote = _remote(settings, allow_bad_references)  # local: only for context or IDs
    try:
        items, name = _answer(settings, inputs, mappings if use_local else None, use_local,
                              context, remote, allow_bad_references)
    finally:
        if remote is not None:
            remote.client.close()
    paths, cache_error = None, None
    if cache_references:
        try:
            paths = _cache_references(items, name, settings)
        except CrdsFsError as exc:  # the answers stand; say why there are no paths
            cache_error = f"crds-fs bestrefs: error: caching the references failed: {exc}"
    if as_json:
        _print_json(items, paths)
    else:
        _print_table(items, name, paths)
    status = exit_status(items)
    if cache_error is not None:
        click.echo(cache_error, err=True)
        status = max(status, EXIT_LOOKUP)
    if status != EXIT_OK:
        for item in items:
            if item.unreadable:
                click.echo(f"crds-fs bestrefs: error: {item.error}", err=True)
        click.echo(_summary(items), err=True)
    raise SystemExit(status)


def _answer(settings: Settings, inputs: tuple[Path, ...], mappings: Path | None,
            use_local: bool, context: str | None, remote: RemoteAnswerer | None,
            allow_bad_references: bool) -> tuple[list[Item], str]:
    """(items with their answers, the context used); whole-call failures raise ConfigError."""
    from ..bestrefs.sources import source_for_path

    folder = (mappings or Path(settings.cache_dir)) if use_local else None
    where = f"mappings {folder}" if use_local else settings.server_url
    if use_local and remote is not None:
        where += f" (context and dataset IDs from {settings.server_url})"
    try:
        name, how = _choose_context(context, settings, folder, remote)
        if use_local:
            assert folder is not None
            answerer: LocalAnswerer | RemoteAnswerer = LocalAnswerer(
                source_for_path(folder, name), allow_bad_references=allow_bad_references,
                allow_bad_rules=settings.allow_bad_rules)
        else:
            assert remote is not None
            answerer = remote
        parkeys = answerer.required_parkeys(name)  # also proves the context is usable
    except CrdsFsError as exc:
        raise ConfigError(f"cannot use context {context or settings.context or 'operational'} "
                          f"from {where}: {exc}") from None
    if how is not None:
        click.echo(f"crds-fs bestrefs: context {name} ({how})", err=True)
    items = read_inputs(inputs, parkeys, name, remote)
    todo = {str(n): item.header for n, item in enumerate(items) if item.error is None}
    with ProgressBar("best references", unit="header") as bar:
        try:
            outcomes = answerer.answer(name, todo, progress=bar)
        except ServerUnreachableError as exc:
            outcomes = {}
            for item in items:
                if item.error is None:
                    item.error = describe_error(exc)
    for key, outcome in outcomes.items():
        item = items[int(key)]
        item.bestrefs, item.error = (None, outcome.error) if outcome.error else (
            outcome.bestrefs, None)
    return items, name
