"""FUSE glue (mfusepy, libfuse 3): a thin translation of `crds_fs.namespace.MountSource`.

The names below are imported on first use, so `crds_fs.fuse.mountinfo` (used by
`crds-fs umount`) does not pay for loading libfuse and the namespace layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .operations import CrdsFUSE, CrdsOperations, fuse_options, run_fuse

__all__ = ["CrdsFUSE", "CrdsOperations", "fuse_options", "run_fuse"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import operations

        return getattr(operations, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
