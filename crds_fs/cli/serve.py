"""`crds-fs serve`: a CRDS-compatible server over a folder in CRDS cache layout."""

from __future__ import annotations

import hashlib
import logging
import signal
from pathlib import Path

import click

from ..config import OBSERVATORIES, default_cache_dir
from ..errors import ConfigError
from . import LOG_FORMAT, cli


def configure_logging(quiet: bool) -> None:
    """Timestamped lines like the mount log (one line each, control characters escaped);
    asyncio's per-accept "Too many open files" tracebacks collapsed to one line per 10 s."""
    from ..server.logs import RateLimitFilter, SafeFormatter

    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    formatter = SafeFormatter(LOG_FORMAT)
    for handler in root.handlers:
        handler.setFormatter(formatter)
    logging.getLogger("asyncio").addFilter(RateLimitFilter())
    if not quiet:
        logging.getLogger("crds_fs.server").setLevel(logging.INFO)


def _backlog(max_connections: int) -> int:
    """Listen backlog, which is also how many connections asyncio accepts in one go before
    the guard sees any: bounded by the connection limit, so one burst of connections
    cannot take more descriptors than the limit allows for (uvicorn's default is 2048)."""
    return max(16, min(2048, max_connections))


def default_index_dir(root: Path) -> Path:
    """Per-root index under the user cache dir: ROOT itself may be read-only."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return default_cache_dir() / "serve-index" / digest


@cli.command("serve")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (use 0.0.0.0 only on a trusted network).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port to listen on.")
@click.option("--observatory", type=click.Choice([*OBSERVATORIES, "tobs"]), default=None,
              help="Observatory answered on /json/ when ROOT holds several "
                   "[default: the only one, else the alphabetically first]. "
                   "Others are always reachable as http://HOST:PORT/<obs>/json/.")
@click.option("--datasets", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Folder of raw datasets, for get_dataset_headers_by_id.")
@click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None,
              help="Writable folder for the size/sha1 index "
                   "[default: ~/.cache/crds-fs/serve-index/<hash of ROOT>].")
@click.option("--public-url", default=None,
              help="Base URL advertised for downloads (behind a reverse proxy) "
                   "[default: the URL the client used].")
@click.option("--rescan-interval", default=10.0, show_default=True,
              type=click.FloatRange(min=0),
              help="Seconds between full re-stats of every served file (changed files are "
                   "re-hashed; added/removed files are seen at once).")
@click.option("--max-body", default=16 * 1024 * 1024, show_default=True,
              type=click.IntRange(min=1024), help="Largest JSON-RPC request body, in bytes.")
@click.option("--max-connections", default=0, show_default=True, type=click.IntRange(min=0),
              envvar="CRDS_FS_SERVE_MAX_CONNECTIONS",
              help="Most connections open at once; beyond it the longest-idle connection "
                   "is closed (or the new one answered 503). 0: half the file descriptors "
                   "left after 64 (ulimit -n), at most 1000 [env CRDS_FS_SERVE_MAX_CONNECTIONS].")
@click.option("--header-timeout", default=10.0, show_default=True,
              type=click.FloatRange(min=0.1), envvar="CRDS_FS_SERVE_HEADER_TIMEOUT",
              help="Seconds a connection may stay without a request being handled (request "
                   "head not complete, or idle) before it is closed "
                   "[env CRDS_FS_SERVE_HEADER_TIMEOUT].")
@click.option("--body-timeout", default=60.0, show_default=True,
              type=click.FloatRange(min=0.1), envvar="CRDS_FS_SERVE_BODY_TIMEOUT",
              help="Seconds a client may take to send a JSON-RPC request body (then 408) "
                   "[env CRDS_FS_SERVE_BODY_TIMEOUT].")
@click.option("--send-timeout", default=60.0, show_default=True,
              type=click.FloatRange(min=0.1), envvar="CRDS_FS_SERVE_SEND_TIMEOUT",
              help="Seconds a response may wait on a client that reads nothing before the "
                   "connection is dropped [env CRDS_FS_SERVE_SEND_TIMEOUT].")
@click.option("-q", "--quiet", is_flag=True, help="Do not log one line per request.")
def serve(root: Path, host: str, port: int, observatory: str | None, datasets: Path | None,
          index_dir: Path | None, public_url: str | None, rescan_interval: float,
          max_body: int, max_connections: int, header_timeout: float, body_timeout: float,
          send_timeout: float, quiet: bool) -> None:
    """Serve ROOT (a folder in CRDS cache layout) as a CRDS server.

    ROOT holds mappings/<obs>/, references/<obs>/ and optionally config/<obs>/server_config
    (operational context and bad files are taken from it). Point crds at it with
    CRDS_SERVER_URL=http://HOST:PORT and CRDS_OBSERVATORY=<obs>, or with
    CRDS_SERVER_URL=http://HOST:PORT/<obs>. Stop with Ctrl-C or SIGTERM.
    """
    import uvicorn
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    from ..server.app import ServerOptions, create_app
    from ..server.guard import (
        MAX_CONNECTIONS_CAP,
        ConnectionGuard,
        default_max_connections,
        descriptors_needed,
        raise_fd_limit,
    )
    from ..server.store import ServedRoot

    configure_logging(quiet)
    store = ServedRoot(root, index_dir or default_index_dir(root),
                       rescan_interval=rescan_interval)
    if not store.observatories:
        raise ConfigError(
            f"{root} has no observatory folders: expected mappings/<obs>/, references/<obs>/ "
            "or config/<obs>/ (a CRDS cache layout)")
    if observatory and observatory not in store.observatories:
        raise ConfigError(f"--observatory {observatory}: {root} only has "
                          f"{', '.join(store.observatories)}")
    from ..server.methods import obs_facts
    for obs in store.observatories:  # warns now about contexts named but not present
        logging.getLogger("crds_fs.server").info("%s: operational context %s", obs,
                    obs_facts(store, obs).operational_context or "none (no .pmap)")
    options = ServerOptions(observatory=observatory, datasets=datasets, public_url=public_url,
                            max_body=max_body, body_timeout=body_timeout)
    fd_limit = raise_fd_limit(descriptors_needed(max_connections or MAX_CONNECTIONS_CAP))
    if max_connections and descriptors_needed(max_connections) > fd_limit:
        logging.getLogger("crds_fs.server").warning(
            "--max-connections %d can need %d file descriptors, more than the limit of %d "
            "(ulimit -n): connections may be refused when descriptors run out",
            max_connections, descriptors_needed(max_connections), fd_limit)
    guard = ConnectionGuard(max_connections=max_connections or default_max_connections(),
                            header_timeout=header_timeout, send_timeout=send_timeout)
    app = create_app(store, options, guard)
    # log_config=None: uvicorn's own warnings go through our (timestamped, escaping) handlers.
    # proxy_headers=False: the guard matches requests to connections by the peer address.
    # h11 and the asyncio loop, never uvicorn's "auto" choice: with httptools installed the
    # request head would have no size limit (docs/limits.md), and the guard's transport
    # handling is written for asyncio's transports, not uvloop's.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            log_config=None, lifespan="off", timeout_graceful_shutdown=5,
                            server_header=False, proxy_headers=False, loop="asyncio",
                            backlog=_backlog(guard.max_connections),
                            http=guard.protocol(import_from_string(HTTP_PROTOCOLS["h11"])))
    click.echo(f"crds-fs serve: {store.root} ({', '.join(store.observatories)}) on "
               f"http://{host}:{port}/ (at most {guard.max_connections} connections)",
               err=True)
    server = uvicorn.Server(config)

    def after_shutdown(signum: int, frame: object) -> None:
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
        # handler it found installed: this one.  By then the stop is done: exit status 0.
        if not server.should_exit:
            raise SystemExit(0)  # arrived before uvicorn took over the signals

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, after_shutdown)
    try:
        server.run()
    finally:
        store.close()
