"""Exception hierarchy shared by every layer.

Each error carries enough context (file, server, what to do) to be shown to a user as is.
The FUSE glue maps these to errno values; the CLI prints them; the server turns them into
JSON-RPC error envelopes.  Keeping one hierarchy lets the layers stay decoupled while still
agreeing on what a failure means.
"""

from __future__ import annotations

import errno


class CrdsFsError(Exception):
    """Base class of every error crds-fs raises on purpose."""

    #: errno a filesystem call reports for this failure.
    errno: int = errno.EIO


class ConfigError(CrdsFsError):
    """Bad settings or arguments (unknown observatory, unusable cache dir, ...)."""

    errno = errno.EINVAL


# --- protocol client ---------------------------------------------------------------------


class ServiceError(CrdsFsError):
    """The CRDS server answered a JSON-RPC call with an error envelope."""


class ServerUnreachableError(CrdsFsError):
    """The CRDS server could not be reached (connection refused, timeout, 5xx after retries)."""


class ProtocolError(CrdsFsError):
    """The server answered something that is not valid CRDS JSON-RPC."""


# --- cache / fetcher ---------------------------------------------------------------------


class UnknownFileError(CrdsFsError):
    """A file name that is not in the server catalog."""

    errno = errno.ENOENT


class DownloadError(CrdsFsError):
    """A download failed: transport error, truncated body, wrong size or sha1."""


class VerificationError(DownloadError):
    """Downloaded bytes do not match the catalog's size or sha1; nothing was kept."""


class DownloadCancelled(DownloadError):
    """A download stopped because every reader waiting for it was interrupted."""


class CacheFullError(CrdsFsError):
    """The cache's disk is full (ENOSPC), or storing a file would cross its free-space floor."""

    errno = errno.ENOSPC


class OpenTimeoutError(CrdsFsError):
    """Opening a file took longer than the open deadline (CRDS_FS_OPEN_DEADLINE)."""

    errno = errno.ETIMEDOUT


class OpenInterruptedError(CrdsFsError):
    """The process opening a file was interrupted by a signal while waiting for its download."""

    errno = errno.EINTR


class OfflineError(CrdsFsError):
    """A file is needed that is not cached and the server is not reachable."""


# --- mapping engine ----------------------------------------------------------------------


class MappingError(CrdsFsError):
    """A mapping file cannot be used (syntax, forbidden construct, missing child, ...)."""


class MappingFormatError(MappingError):
    """The mapping text is not in the CRDS mapping language (names file and line)."""


class ChecksumError(MappingError):
    """A mapping's header sha1sum is missing or does not match its text."""


class MissingMappingError(MappingError):
    """A mapping named by a context is not available from the mapping source."""

    errno = errno.ENOENT


class LookupFailure(CrdsFsError):
    """A best-reference question has no answer for the whole header."""


class UnknownInstrumentError(LookupFailure):
    """The header names an instrument the context does not know.

    crds calls this CrdsUnknownInstrumentError.
    """


class MissingInstrumentError(LookupFailure):
    """The header has no instrument keyword at all."""


class BadReferenceError(LookupFailure):
    """A recommended reference is on the server's bad_files_list (crds: CrdsBadReferenceError)."""


class BadRulesError(LookupFailure):
    """The context contains a mapping on the bad_files_list (crds: CrdsBadRulesError)."""


# --- datasets ----------------------------------------------------------------------------


class DatasetError(CrdsFsError):
    """A dataset file or ID cannot be read or lacks the keywords needed."""


# --- namespace / mount -------------------------------------------------------------------


class NamespaceError(CrdsFsError):
    """A path operation on the mounted tree that cannot succeed (maps to its errno)."""


class NoSuchPathError(NamespaceError):
    """The path does not exist in the mounted tree (not in the catalog, unknown directory)."""

    errno = errno.ENOENT


class ReadOnlyError(NamespaceError):
    """The mounted tree is read-only: CRDS files are immutable and never written locally."""

    errno = errno.EROFS


class NotADirError(NamespaceError):
    """A directory operation on a file."""

    errno = errno.ENOTDIR


class IsADirError(NamespaceError):
    """A file operation (open for reading) on a directory."""

    errno = errno.EISDIR


class NoSuchAttributeError(NamespaceError):
    """The extended attribute does not exist on this path."""

    errno = errno.ENODATA


class NotASymlinkError(NamespaceError):
    """readlink on something that is not a symbolic link."""

    errno = errno.EINVAL


class AccessDeniedError(NamespaceError):
    """access(2) asked for a permission the path does not grant (e.g. executing a file)."""

    errno = errno.EACCES


class UnsupportedAttributeError(NamespaceError):
    """An extended-attribute namespace the mount does not implement (security.*, system.*).

    ENOTSUP (not ENODATA) lets tools such as `ls -l` remember per device that the namespace
    is unsupported instead of asking again for every file.
    """

    errno = errno.EOPNOTSUPP


class MountError(CrdsFsError):
    """Mounting or unmounting failed (mount point unusable, daemon died, busy, ...)."""


# --- demo --------------------------------------------------------------------------------


class DemoError(CrdsFsError):
    """`crds-fs demo` could not start (or cleanly stop) its server or mount."""
