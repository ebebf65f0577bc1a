"""`bestrefs/`: one directory per dataset, holding symlinks to its best references.

    bestrefs/<dataset>/darkfile      -> ../../references/hst/x_drk.fits   (one per reftype)
    bestrefs/<dataset>/bestrefs.json    every reftype's outcome, context, engine, header
    bestrefs/<dataset>/dataset       -> /path/to/the/dataset/file        (local datasets)

The links point into the same mount, so opening one fetches the reference lazily like any
other file of `references/`.  Datasets are the files of the mount's `--datasets` folder,
names registered with `ln -s FILE MOUNT/bestrefs/NAME` (persisted in the cache index,
forgotten by `rm`), and any dataset ID the server knows (`ls bestrefs/J8IS01J0Q/` works
without registering; only local datasets are listed by `ls bestrefs/`).

A registered name is a symlink to `bestrefs/.registered/<name>/` (the kernel requires the
entry made by symlink(2) to stay a symlink), so `ls bestrefs/x/`, `cd` and `find -L` see
the same directory as for the other datasets, and `rm bestrefs/x` is a plain unlink.

Only the mount's owner (the daemon's uid) and root may `ln -s` or `rm` in bestrefs/: with
`-o allow_other` other users can read everything, but a registration makes the daemon read
a file on its own authority, so theirs are refused with EACCES before the target is even
looked at (the FUSE glue passes each request's caller, see namespace.base.current_caller).

All decisions live in crds_fs.bestrefs; this module only maps paths to it.  A dataset
that cannot be read, or lacks needed keywords, shows a bestrefs.json with the error and no
symlinks: a failure of one dataset never fails the mount.
"""

from __future__ import annotations

import errno
import logging
import stat
from collections.abc import Sequence
from dataclasses import replace

from ..bestrefs.registry import Answer, BestrefsView, Dataset, ViewOptions
from ..bestrefs.resolver import is_context_alias
from ..errors import (
    AccessDeniedError,
    CrdsFsError,
    IsADirError,
    NamespaceError,
    NoSuchPathError,
    NotADirError,
    NotASymlinkError,
)
from .base import (
    Attrs,
    BytesHandle,
    Handle,
    MountEnv,
    Parts,
    Provider,
    current_caller,
    is_write_open,
    may_change_mount,
)
from .registry import is_registered, register_provider

log = logging.getLogger(__name__)

LINK_MODE = stat.S_IFLNK | 0o777
JSON_NAME = "bestrefs.json"
DATASET_LINK = "dataset"
REGISTERED_DIR = ".registered"

#: Options for the next mount built in this process (set by `crds-fs mount`), else the
#: CRDS_FS_DATASETS / CRDS_FS_BESTREFS_ENGINE / CRDS_FS_BESTREFS_POLL environment.
_options: ViewOptions | None = None


class PermissionDenied(NamespaceError):
    """An operation bestrefs/ understands but refuses for this path."""

    errno = errno.EPERM


def configure(options: ViewOptions | None) -> None:
    """Set the options of bestrefs/ for mounts built afterwards in this process."""
    global _options
    _options = options


class BestrefsProvider(Provider):
    """The `bestrefs/` directory of one mount."""

    name = "bestrefs"

    def __init__(self, env: MountEnv, view: BestrefsView) -> None:
        super().__init__(env)
        self.view = view

    # --- reading ----------------------------------------------------------------------------

    def subdir_count(self) -> int:
        return len(self.view.folder_datasets())

    def getattr(self, parts: Parts) -> Attrs:
        if not parts:
            return self.env.dir_attrs(self.subdir_count())
        if parts[0] == REGISTERED_DIR:
            if len(parts) == 1:
                return self.env.dir_attrs(len(self.view.registered()))
            return self._dataset_attrs(self._registered(parts), parts[2:], depth=3)
        if len(parts) == 1 and parts[0] in self.view.registered():
            return self._link_attrs(self._registered_target(parts[0]))
        return self._dataset_attrs(self._dataset(parts), parts[1:], depth=2)

    def readdir(self, parts: Parts) -> Sequence[tuple[str, Attrs]]:
        if not parts:
            registered = self.view.registered()
            return [(name, self._link_attrs(self._registered_target(name))
                     if name in registered else self.env.dir_attrs())
                    for name in self.view.local_names()]
        if parts[0] == REGISTERED_DIR:
            if len(parts) == 1:
                return [(name, self.env.dir_attrs()) for name in sorted(self.view.registered())]
            dataset, rest, depth = self._registered(parts), parts[2:], 3
        else:
            if len(parts) == 1 and parts[0] in self.view.registered():
                raise _not_a_dir(self.path(parts))
            dataset, rest, depth = self._dataset(parts), parts[1:], 2
        if rest:
            self._dataset_attrs(dataset, rest, depth)  # raises for files and unknown names
            raise _not_a_dir(self.path(parts))
        return self._entries(dataset, depth)

    def readlink(self, parts: Parts) -> str:
        if len(parts) == 1 and parts[0] in self.view.registered():
            return self._registered_target(parts[0])
        if parts and parts[0] == REGISTERED_DIR and len(parts) == 3:
            dataset, entry, depth = self._registered(parts), parts[2], 3
        elif len(parts) == 2:
            dataset, entry, depth = self._dataset(parts), parts[1], 2
        else:
            self.getattr(parts)
            raise _not_a_link(self.path(parts))
        target = self._link_target(dataset, entry, depth)
        if target is None:
            self._dataset_attrs(dataset, (entry,), depth)
            raise _not_a_link(self.path(parts))
        return target

    def open(self, parts: Parts, flags: int) -> Handle:
        attrs = self.getattr(parts)
        if stat.S_ISDIR(attrs["st_mode"]):
            raise IsADirError(f"{self.path(parts)}: is a directory")
        if is_write_open(flags):
            raise self.refuse("open for writing", parts)
        dataset = self._registered(parts) if parts[0] == REGISTERED_DIR else self._dataset(parts)
        if parts[-1] != JSON_NAME:
            raise NoSuchPathError(f"{self.path(parts)}: a symlink; open its target instead")
        return BytesHandle(self._json(dataset), volatile=True)

    # --- writing: symlink registers, unlink forgets -------------------------------------------

    def symlink(self, parts: Parts, target: str) -> None:
        self._require_owner("ln -s", parts)
        if len(parts) != 1 or parts[0] == REGISTERED_DIR:
            raise self._denied("symlink", parts,
                               "only `ln -s FILE MOUNT/bestrefs/NAME` can add a dataset")
        try:
            self.view.register(parts[0], target)
        except CrdsFsError as exc:
            log.warning("bestrefs/: ln -s %s %s refused: %s", target, self.path(parts), exc)
            raise

    def unlink(self, parts: Parts) -> None:
        self._require_owner("rm", parts)
        if len(parts) == 1 and self.view.forget(parts[0]):
            return
        if len(parts) == 1 and parts[0] in self.view.folder_datasets():
            raise self._denied("unlink", parts, "it comes from the --datasets folder; "
                               "remove the file there instead")
        self.getattr(parts)  # ENOENT for names that do not exist
        raise self._denied("unlink", parts, "only registered datasets can be removed")

    def refuse(self, operation: str, parts: Parts) -> CrdsFsError:
        error = super().refuse(operation, parts)
        log.warning("bestrefs/: refused %s %s (only ln -s and rm of registered datasets "
                    "change bestrefs/)", operation, self.path(parts))
        return error

    def _require_owner(self, operation: str, parts: Parts) -> None:
        """EACCES for anyone but the mount's owner (and root), before anything is looked
        at: the daemon must not stat or read files on behalf of other users."""
        if may_change_mount(self.env):
            return
        caller = current_caller()
        log.warning("bestrefs/: refused %s %s for uid %s (pid %s): only the mount's owner "
                    "(uid %d) and root may register or remove datasets", operation,
                    self.path(parts), caller.uid if caller else "?",
                    caller.pid if caller else "?", self.env.uid)
        raise AccessDeniedError(
            f"{operation} {self.path(parts)}: only the owner of the mount (uid "
            f"{self.env.uid}) and root may register or remove datasets")

    def _denied(self, operation: str, parts: Parts, why: str) -> PermissionDenied:
        log.warning("bestrefs/: refused %s %s: %s", operation, self.path(parts), why)
        return PermissionDenied(f"{operation} {self.path(parts)}: {why}")

    # --- helpers ------------------------------------------------------------------------------

    def _dataset(self, parts: Parts) -> Dataset:
        dataset = self.view.lookup(parts[0])
        if dataset is None or dataset.origin == "registered":
            raise NoSuchPathError(
                f"{self.path(parts[:1])}: no such dataset (not in the --datasets folder, not "
                f"registered with ln -s, and not a dataset ID the server knows)")
        return dataset

    def _registered(self, parts: Parts) -> Dataset:
        registered = self.view.registered()
        if len(parts) < 2 or parts[1] not in registered:
            raise NoSuchPathError(f"{self.path(parts[:2])}: no such registered dataset")
        return Dataset(parts[1], registered[parts[1]], None, "registered")

    @staticmethod
    def _registered_target(name: str) -> str:
        return f"{REGISTERED_DIR}/{name}"

    def _answer(self, dataset: Dataset) -> Answer:
        return self.view.answer(dataset)

    def _json(self, dataset: Dataset) -> bytes:
        return self._answer(dataset).json_bytes(self.env.observatory)

    def _link_target(self, dataset: Dataset, entry: str, depth: int) -> str | None:
        if entry == JSON_NAME:
            return None
        answer = self._answer(dataset)
        if answer.error is not None:
            return None  # a failed dataset shows its bestrefs.json only
        if entry == DATASET_LINK:
            return str(dataset.path) if dataset.path is not None else None
        name = answer.links.get(entry)
        if name is None:
            return None
        return "../" * depth + f"references/{self.env.observatory}/{name}"

    def _dataset_attrs(self, dataset: Dataset, rest: Parts, depth: int) -> Attrs:
        if not rest:
            return self.env.dir_attrs()
        if len(rest) == 1:
            if rest[0] == JSON_NAME:
                return self.env.file_attrs(len(self._json(dataset)))
            target = self._link_target(dataset, rest[0], depth)
            if target is not None:
                return self._link_attrs(target)
        raise NoSuchPathError(f"{self.path((dataset.name, *rest))}: no such file "
                              "(see bestrefs.json for every reftype's outcome)")

    def _entries(self, dataset: Dataset, depth: int) -> list[tuple[str, Attrs]]:
        answer = self._answer(dataset)
        entries = [(JSON_NAME, self.env.file_attrs(len(answer.json_bytes(self.env.observatory))))]
        if answer.error is not None:
            return entries
        if dataset.path is not None:
            entries.append((DATASET_LINK, self._link_attrs(str(dataset.path))))
        for reftype in sorted(answer.links):
            target = "../" * depth + f"references/{self.env.observatory}/{answer.links[reftype]}"
            entries.append((reftype, self._link_attrs(target)))
        return entries

    def _link_attrs(self, target: str) -> Attrs:
        attrs = self.env.file_attrs(len(target.encode()))
        attrs["st_mode"] = LINK_MODE
        attrs["st_blocks"] = 0
        return attrs


def _not_a_dir(path: str) -> CrdsFsError:
    return NotADirError(f"{path}: not a directory")


def _not_a_link(path: str) -> CrdsFsError:
    return NotASymlinkError(f"{path}: not a symbolic link")


def build(env: MountEnv) -> BestrefsProvider:
    """The provider factory registered for `bestrefs/`."""
    options = _options or ViewOptions.from_env()
    # A mount of "the operational context" keeps bestrefs/ on the server's current one.
    follow = is_context_alias(env.cache.settings.context, env.cache.observatory)
    options = replace(options, follow_operational=follow)
    view = BestrefsView(env.cache, context=env.context, options=options,
                        mountpoint=env.mountpoint)
    return BestrefsProvider(env, view)


if not is_registered("bestrefs"):
    register_provider("bestrefs", build)
