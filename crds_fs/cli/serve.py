"""`crds-fs serve`: a CRDS-compatible server over a folder in CRDS cache layout."""

from __future__ import annotations

import hashlib
import logging
import signal
from pathlib import Path

import click

from ..config import OBSERVATORIES, default_cache_dir
from ..errors import ConfigError
from . import cli, use_log_format


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
@click.option("-q", "--quiet", is_flag=True, help="Do not log one line per request.")
def serve(root: Path, host: str, port: int, observatory: str | None, datasets: Path | None,
          index_dir: Path | None, public_url: str | None, rescan_interval: float,
          max_body: int, quiet: bool) -> None:
    """Serve ROOT (a folder in CRDS cache layout) as a CRDS server.

    ROOT holds mappings/<obs>/, references/<obs>/ and optionally config/<obs>/server_config
    (operational context and bad files are taken from it). Point crds at it with
    CRDS_SERVER_URL=http://HOST:PORT and CRDS_OBSERVATORY=<obs>, or with
    CRDS_SERVER_URL=http://HOST:PORT/<obs>. Stop with Ctrl-C or SIGTERM.
    """
    import uvicorn

    from ..server.app import ServerOptions, create_app
    from ..server.store import ServedRoot

    logger = logging.getLogger("crds_fs.server")
    use_log_format()  # timestamped lines, like the mount log (uvicorn's go through it too)
    if not quiet:
        logger.setLevel(logging.INFO)
    store = ServedRoot(root, index_dir or default_index_dir(root),
                       rescan_interval=rescan_interval)
    if not store.observatories:
        raise ConfigError(
            f"{root} has no observatory folders: expected mappings/<obs>/, references/<obs>/ "
            "or config/<obs>/ (a CRDS cache layout)")
    if observatory and observatory not in store.observatories:
        raise ConfigError(f"--observatory {observatory}: {root} only has "
                          f"{', '.join(store.observatories)}")
    options = ServerOptions(observatory=observatory, datasets=datasets, public_url=public_url,
                            max_body=max_body)
    app = create_app(store, options)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            log_config=None, lifespan="off", timeout_graceful_shutdown=5,
                            server_header=False)
    click.echo(f"crds-fs serve: {store.root} ({', '.join(store.observatories)}) on "
               f"http://{host}:{port}/", err=True)
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
