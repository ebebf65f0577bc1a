"""Shared pytest fixtures: shared-data location, free ports, `crds-fs serve` subprocesses.

Area-specific fixtures live in the test modules (or tests/plugins/) of that area.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA, ServerProcess, free_port  # noqa: F401

pytest_plugins: list[str] = ["tests.mounting"]  # mount fixtures (D2)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/crds-data (or $CRDS_FS_SHARED_DATA); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared CRDS data not found at {SHARED_DATA} (set CRDS_FS_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly generated demo observatory in CRDS cache layout (made once per session)."""
    from crds_fs.demo.generate import generate

    root = tmp_path_factory.mktemp("demo")
    generate(root)
    return root


@pytest.fixture
def serve(tmp_path: Path):
    """Factory: start `crds-fs serve ROOT` on a free loopback port; stopped at teardown."""
    started: list[ServerProcess] = []

    def _start(root: Path, *extra: str, port: int | None = None) -> ServerProcess:
        proc = ServerProcess(root, *extra, port=port, log_dir=tmp_path)
        proc.start()
        started.append(proc)
        return proc

    yield _start
    for proc in started:
        proc.stop()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback traffic must never go through an HTTP proxy from the environment."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    os.environ.setdefault("CRDS_FS_TESTING", "1")


@pytest.fixture(scope="session", autouse=True)
def _compiled_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Compiled contexts of test runs go to a session folder, never into ~/.cache (tests that
    check the default location set their own value)."""
    previous = os.environ.get("CRDS_FS_COMPILED_CACHE")
    if previous is None:
        os.environ["CRDS_FS_COMPILED_CACHE"] = str(tmp_path_factory.mktemp("compiled"))
    yield
    if previous is None:
        os.environ.pop("CRDS_FS_COMPILED_CACHE", None)
