"""Settings, read once from the environment with crds' own variable names.

crds users already export CRDS_SERVER_URL / CRDS_CONTEXT / CRDS_OBSERVATORY; honouring the
same names means a mount behaves like the crds tools a user already knows.  Everything that
is ours (cache location, timeouts) has a CRDS_FS_ prefix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ConfigError

OBSERVATORIES = ("hst", "jwst", "roman")
DEFAULT_SERVERS = {
    "hst": "https://hst-crds.stsci.edu",
    "jwst": "https://jwst-crds.stsci.edu",
    "roman": "https://roman-crds.stsci.edu",
}


def default_cache_dir() -> Path:
    """Per-user cache directory (XDG), where downloaded files and the index live."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "crds-fs"


def guess_observatory(server_url: str) -> str | None:
    """The observatory named in a server URL, as crds guesses it (None if none is named)."""
    for obs in (*OBSERVATORIES, "tobs"):
        if obs in server_url:
            return obs
    return None


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not a number") from None


def _env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "t", "true", "yes", "on")


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int, *, what: str = "size") -> int:
    """Bytes from '150k', '50G', '2.5M' or a plain number (K/M/G/T are powers of 1024;
    a trailing 'B' or 'iB' is allowed).  Raises ConfigError naming *what*."""
    if isinstance(text, int):
        return text
    value = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _SIZE_UNITS else ""
    number = value[: len(value) - len(unit)].strip()
    try:
        size = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a size (use e.g. 500M, 50G, or bytes)") from None
    if size < 0:
        raise ConfigError(f"{what} {text!r} must not be negative")
    return int(size)


def parse_min_free(text: str, disk_bytes: int, *, what: str = "CRDS_FS_CACHE_MIN_FREE") -> int:
    """The free-space floor in bytes: '5%' of *disk_bytes*, or a size ('2G', 0 = none)."""
    value = str(text).strip()
    if value.endswith("%"):
        try:
            percent = float(value[:-1])
        except ValueError:
            raise ConfigError(f"{what} {text!r} is not a percentage (e.g. 5%)") from None
        if not 0 <= percent < 100:
            raise ConfigError(f"{what} {text!r} must be between 0% and 100%")
        return int(disk_bytes * percent / 100)
    return parse_size(value, what=what)


def _env_size(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return parse_size(value, what=f"environment variable {name}")


def check_server_url(url: str, origin: str = "--server or CRDS_SERVER_URL") -> str:
    """*url* when it is an http(s) URL; else a ConfigError that says how to write it
    (a bare `host:port` would otherwise fail later as an obscure connection error)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("http", "https") or not url.split("://", 1)[1].strip("/"):
        example = url.split("://", 1)[-1] or "127.0.0.1:8000"
        raise ConfigError(f"server URL {url!r} (from {origin}) is not an http:// or https:// "
                          f"URL; write it with its scheme, e.g. http://{example}")
    return url


def _server_list(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """Server URLs from 'A,B' or a list of such strings, in order, without duplicates."""
    from .client.servers import parse_server_list

    return parse_server_list(value)


@dataclass(frozen=True)
class Settings:
    """Everything the layers need to know about where and how to talk and store."""

    server_url: str = DEFAULT_SERVERS["hst"]
    observatory: str | None = None
    context: str | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.5
    allow_bad_references: bool = False
    allow_bad_rules: bool = False
    #: upper bound of the cache's bytes (LRU eviction of references); 0 = unlimited
    cache_max_bytes: int = 0
    #: free space kept on the cache's disk: "5%" of the disk or a size ("2G"); "0" = none
    cache_min_free: str = "5%"
    #: longest an open() through the mount waits for a download, in seconds; 0 = no limit
    open_deadline: float = 60.0
    #: every server in order (primary first; `server_url` is the first); () = server_url only
    server_urls: tuple[str, ...] = ()
    #: HTTP proxy for JSON-RPC and downloads (over HTTP_PROXY/HTTPS_PROXY); None = environment
    proxy: str | None = None
    #: seconds a failed server is passed over before it is tried again
    failover_backoff: float = 30.0
    #: seconds after a failover when traffic returns to the primary server
    failover_reset: float = 300.0
    #: files at least this big are downloaded in `streams` parallel byte ranges
    range_threshold: int = 64 << 20
    #: concurrent ranges of one big download (1 = a single stream)
    streams: int = 4
    #: read uncached files chunk by chunk (verified each) when the server has manifests
    partial_reads: bool = True
    #: fetch the missing chunks of a partly read file in the background
    complete_partial: bool = False

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from the environment, then explicit (non-None) overrides on top.

        ``cache_max_bytes`` may be given as a size string ("50G", as --cache-max-size takes
        it), so every command can pass its option through unchanged.
        """
        servers = _server_list(os.environ.get("CRDS_SERVER_URL", ""))
        server = servers[0] if servers else None
        obs = os.environ.get("CRDS_OBSERVATORY") or None
        if obs is not None and obs.strip().lower() in ("none", ""):
            obs = None  # importing crds writes the string 'None' into the environment
        if server is None:
            server = DEFAULT_SERVERS.get(obs or "hst", DEFAULT_SERVERS["hst"])
        cache = os.environ.get("CRDS_FS_CACHE")
        settings = cls(
            server_url=server,
            observatory=obs.lower() if obs else None,
            context=os.environ.get("CRDS_CONTEXT") or None,
            cache_dir=Path(cache) if cache else default_cache_dir(),
            connect_timeout=_env_float("CRDS_FS_CONNECT_TIMEOUT", 5.0),
            read_timeout=_env_float("CRDS_FS_READ_TIMEOUT", 30.0),
            retries=int(_env_float("CRDS_FS_RETRIES", 3)),
            allow_bad_references=_env_bool("CRDS_ALLOW_BAD_REFERENCES"),
            allow_bad_rules=_env_bool("CRDS_ALLOW_BAD_RULES"),
            cache_max_bytes=_env_size("CRDS_FS_CACHE_MAX_SIZE",
                                      _env_size("CRDS_FS_CACHE_MAX_BYTES", 0)),
            cache_min_free=os.environ.get("CRDS_FS_CACHE_MIN_FREE", "").strip() or "5%",
            open_deadline=_env_float("CRDS_FS_OPEN_DEADLINE", 60.0),
            server_urls=tuple(servers) or (server,),
            proxy=os.environ.get("CRDS_FS_PROXY", "").strip() or None,
            failover_backoff=_env_float("CRDS_FS_FAILOVER_BACKOFF", 30.0),
            failover_reset=_env_float("CRDS_FS_FAILOVER_RESET", 300.0),
            range_threshold=_env_size("CRDS_FS_RANGE_THRESHOLD", 64 << 20),
            streams=max(1, min(32, int(_env_float("CRDS_FS_STREAMS", 4)))),
            partial_reads=_env_bool("CRDS_FS_PARTIAL_READS", True),
            complete_partial=_env_bool("CRDS_FS_COMPLETE_PARTIAL"),
        )
        parse_min_free(settings.cache_min_free, 0)  # fail early on a malformed value
        clean = {k: v for k, v in overrides.items() if v is not None}
        if "server_url" in clean:  # one URL, "A,B", or a list (repeated --server)
            urls = _server_list(clean["server_url"])  # type: ignore[arg-type]
            if not urls:
                raise ConfigError("no CRDS server URL given (--server / CRDS_SERVER_URL)")
            for url in urls:
                check_server_url(url, "--server")
            clean["server_url"], clean["server_urls"] = urls[0], tuple(urls)
        else:
            for url in settings.server_list:
                check_server_url(url, "CRDS_SERVER_URL")
        if "cache_dir" in clean:
            clean["cache_dir"] = Path(clean["cache_dir"])  # type: ignore[arg-type]
        if isinstance(clean.get("cache_max_bytes"), str):  # "50G" from --cache-max-size
            clean["cache_max_bytes"] = parse_size(str(clean["cache_max_bytes"]),
                                                  what="--cache-max-size")
        return replace(settings, **clean)  # type: ignore[arg-type]

    @property
    def server_list(self) -> tuple[str, ...]:
        """Every server in order; just `server_url` when the list does not start with it
        (a copy made with `replace(server_url=...)`)."""
        if self.server_urls and self.server_urls[0] == self.server_url:
            return self.server_urls
        return (self.server_url,)

    @property
    def effective_observatory(self) -> str | None:
        """Observatory given explicitly, else guessed from the server URL like crds does."""
        return self.observatory or guess_observatory(self.server_url)
