"""What each path of a crds-fs mount means, independent of FUSE (see docs/architecture.md).

`MountSource(cache, context=...)` answers getattr/readdir/open/read/xattr calls for the
tree `mappings/<obs>/`, `references/<obs>/`, `config/<obs>/`, `.crds-fs/stats` (and any
directory registered with `register_provider`).
"""

from __future__ import annotations

from .base import BytesHandle, FileHandle, Handle, Listing, MountEnv, Provider
from .providers import (
    CatalogProvider,
    ConfigProvider,
    ControlProvider,
    register_builtin_providers,
    server_config,
)
from .registry import provider_factories, register_provider, unregister_provider
from .source import MountSource, OpenFile, catalog_epoch_ns, resolve_context, split_path

register_builtin_providers()

__all__ = [
    "BytesHandle", "CatalogProvider", "ConfigProvider", "ControlProvider", "FileHandle",
    "Handle", "Listing", "MountEnv", "MountSource", "OpenFile", "Provider",
    "catalog_epoch_ns", "provider_factories", "register_provider", "resolve_context",
    "server_config", "split_path", "unregister_provider",
]
