"""FUSE glue (mfusepy, libfuse 3): a thin translation of `crds_fs.namespace.MountSource`."""

from __future__ import annotations

from .operations import CrdsFUSE, CrdsOperations, fuse_options, run_fuse

__all__ = ["CrdsFUSE", "CrdsOperations", "fuse_options", "run_fuse"]
