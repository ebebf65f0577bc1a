"""crds-fs: CRDS (HST, JWST, Roman calibration references) as a lazily fetching filesystem.

Layers (each a subpackage with one job):

- ``client``    CRDS JSON-RPC protocol client and server catalog
- ``cache``     diskcache index + file store + fetcher (download, verify, single flight)
- ``engine``    mapping parser, selectors, header conditioning: pure, no I/O
- ``namespace`` what each path of the mount means (tested without FUSE)
- ``fuse``      thin mfusepy glue translating kernel calls to the namespace
- ``server``    ``crds-fs serve``: a CRDS-compatible server over a cache-layout folder
- ``demo``      a small generated observatory for tests and the demo
- ``api`` / ``cli``  the Python API and the command line on top
"""

__version__ = "0.1.0"

#: The seed's Python API (crds_fs.api), importable from the package itself.
_API = ("cache_best_references_for_dataset", "get_best_references", "cache_references",
        "dump_mappings")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    """Load crds_fs.api on first use: `import crds_fs` stays cheap for the CLI and server."""
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'crds_fs' has no attribute {name!r}")
