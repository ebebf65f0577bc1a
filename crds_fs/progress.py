"""Progress reporting for long operations, kept out of the way of scripts.

The library layers take an optional `Progress` callback and know nothing of terminals;
the CLI passes a `ProgressBar`, a tqdm bar on stderr that is shown only when stderr is a
terminal (tqdm's ``disable=None``), so piped or ``--json`` output never contains it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # tqdm is imported when a bar is made: keeps CLI start-up fast
    from tqdm import tqdm

T = TypeVar("T")

#: ``progress(done, total, name)``: called once with ``done=0`` before the work starts,
#: then after each unit (``name`` is the file or item just finished).
Progress = Callable[[int, int, str], None]


class ProgressBar:
    """A `Progress` callback drawing a tqdm bar on stderr when it is a terminal.

    Created lazily on the first call, because only then is the total known.  Use as a
    context manager so the bar is removed before the command prints its results.
    """

    def __init__(self, desc: str, unit: str = "file", **options: Any) -> None:
        self.desc = desc
        self.unit = unit
        self.options = options  # for tqdm, e.g. unit_scale=True for bytes
        self.bar: tqdm | _NullBar | None = None

    def __call__(self, done: int, total: int, name: str) -> None:
        if self.bar is None:
            self.bar = new_bar(total, self.desc, self.unit, **self.options)
        if total != self.bar.total:
            self.bar.total = total
        if name:
            self.bar.set_postfix_str(name, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def new_bar(total: int | None, desc: str, unit: str = "file",
            **options: Any) -> tqdm | _NullBar:
    """A tqdm bar on stderr, disabled unless stderr is a terminal; removed when closed.

    *options* go to tqdm as they are (e.g. ``unit_scale=True`` for byte counts).  Without a
    terminal the bar is a no-op stand-in and tqdm is not even imported (what tqdm's
    ``disable=None`` would show is nothing; importing it costs CLI start-up time).
    """
    if not _stderr_is_terminal():
        return _NullBar(total)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None,
                leave=False, dynamic_ncols=True, **options)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class _NullBar:
    """The parts of a tqdm bar the callers use, doing nothing."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.n = 0

    def update(self, count: int = 1) -> None:
        self.n += count

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def track(items: Iterable[T], total: int, desc: str, unit: str = "file") -> Iterator[T]:
    """*items*, with a bar on stderr (when a terminal) advancing as each is consumed."""
    bar = new_bar(total, desc, unit)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()


def report(progress: Progress | None, done: int, total: int, name: str = "") -> None:
    """Call *progress* when there is one (so callers need no `if` of their own)."""
    if progress is not None:
        progress(done, total, name)


__all__ = ["Progress", "ProgressBar", "new_bar", "report", "track"]


def human_size(nbytes: int, *, binary: bool = False) -> str:
    """'38.1 MB' (powers of 1000) or, with *binary*, '36.4 MiB' (powers of 1024)."""
    base, units = (1024, ("B", "KiB", "MiB", "GiB", "TiB")) if binary else (
        1000, ("B", "KB", "MB", "GB", "TB"))
    value = float(nbytes)
    for unit in units:
        if value < base or unit == units[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= base
    return f"{nbytes} B"
