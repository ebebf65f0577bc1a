"""Registry of top-level directories: each name maps to a factory building its provider.

A mount is the set of registered providers, so a new top-level directory (the planned
`bestrefs/`) is added by registering a factory, without touching the mount source or the
FUSE glue.  Modules listed in `PLUGIN_MODULES` are imported on first use when they exist,
which is how a provider that lives in its own module gets registered.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from .base import MountEnv, Provider

log = logging.getLogger(__name__)

ProviderFactory = Callable[[MountEnv], "Provider | None"]

#: Optional modules that register providers when imported (absent ones are skipped).
PLUGIN_MODULES = ("crds_fs.namespace.bestrefs",)

_FACTORIES: dict[str, ProviderFactory] = {}
_plugins_loaded = False


def register_provider(name: str, factory: ProviderFactory, *, replace: bool = False) -> None:
    """Make *factory* build the provider of top-level directory *name* for every new mount.

    A factory may return None to leave the directory out of a particular mount (e.g. when
    the observatory does not support it).
    """
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid top-level directory name {name!r}")
    if name in _FACTORIES and not replace:
        raise ValueError(f"a provider for {name!r} is already registered")
    _FACTORIES[name] = factory


def is_registered(name: str) -> bool:
    """True when a factory is registered under *name* (does not import plug-ins)."""
    return name in _FACTORIES


def unregister_provider(name: str) -> None:
    """Remove *name* (no error when it is not registered)."""
    _FACTORIES.pop(name, None)


def provider_factories() -> dict[str, ProviderFactory]:
    """Registered factories by top-level name, in registration order (a copy)."""
    _load_plugins()
    return dict(_FACTORIES)


def build_providers(env: MountEnv) -> dict[str, Provider]:
    """One provider per registered name for the mount described by *env*."""
    providers: dict[str, Provider] = {}
    for name, factory in provider_factories().items():
        provider = factory(env)
        if provider is not None:
            provider.name = name
            providers[name] = provider
    return providers


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            log.debug("optional namespace module %s not present", module)
