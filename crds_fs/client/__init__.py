"""CRDS protocol client: JSON-RPC calls, the crds_encode payload, the server catalog."""

from .catalog import Catalog, FileInfo, load_catalog
from .payload import crds_decode, crds_encode
from .rpc import CrdsClient, iter_chunks

__all__ = ["Catalog", "CrdsClient", "FileInfo", "crds_decode", "crds_encode", "iter_chunks",
           "load_catalog"]
