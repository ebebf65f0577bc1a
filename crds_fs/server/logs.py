"""Logging of `crds-fs serve`: one line per event, whatever clients send.

- `SafeFormatter`: a log message never spans lines.  Control characters (newline, CR, ESC,
  ...) in a message, e.g. from an RPC parameter quoted in an error, are written as escapes
  (``\\n``), so a client cannot forge a log line; traceback lines are indented, so none of
  them looks like the start of a log line either.
- `RateLimitFilter`: when the process runs out of file descriptors, asyncio logs a traceback
  for every failed accept() (thousands per second).  The filter lets one line of each kind
  through per interval, saying how many were suppressed and what to do.
"""

from __future__ import annotations

import errno
import logging
import re
import time
from collections.abc import Callable

#: characters a log message may not contain as such: C0 controls, DEL, C1 controls and
#: the Unicode line/paragraph separators
_ESCAPES = {
    **{code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]},
    ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
    0x2028: "\\u2028", 0x2029: "\\u2029",
}
_TRACE_ESCAPES = {code: text for code, text in _ESCAPES.items() if code != ord("\n")}

#: seconds between two "out of file descriptors" lines
RESOURCE_LOG_INTERVAL = 10.0
_DIGITS = re.compile(r"0x[0-9a-f]+|\d+")
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def escape(text: str) -> str:
    """*text* with every control or line-separator character written as an escape."""
    return text.translate(_ESCAPES)


class SafeFormatter(logging.Formatter):
    """A Formatter whose every record is one line (plus indented traceback lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging API
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:  # noqa: N802 - logging API
        return _indent(super().formatException(ei))  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging API
        return _indent(super().formatStack(stack_info))


def _indent(text: str) -> str:
    return "\n".join("    " + line.translate(_TRACE_ESCAPES) for line in text.splitlines())


class RateLimitFilter(logging.Filter):
    """Let through at most one record of a kind per *interval* seconds; count the rest.

    Installed on the ``asyncio`` logger, whose records are all "should not happen" events
    that come in floods when they come: a failed accept() per waiting connection when the
    process is out of file descriptors, then one "Exception in callback _start_serving" per
    retry asyncio scheduled.  The kind is the exception type plus the first line of the
    message without numbers; the record that passes loses its traceback and says how many
    of its kind were dropped since the last one.
    """

    def __init__(self, interval: float = RESOURCE_LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        #: kind -> (time the last record of that kind passed, records dropped since)
        self._kinds: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        first_line = record.getMessage().split("\n", 1)[0]
        kind = (type(error).__name__, _DIGITS.sub("", first_line)[:80])
        now = self.clock()
        last, dropped = self._kinds.get(kind, (None, 0))
        if last is not None and now - last < self.interval:
            self._kinds[kind] = (last, dropped + 1)
            return False
        if len(self._kinds) > 100:
            self._kinds.clear()
        self._kinds[kind] = (now, 0)
        advice = ""
        if isinstance(error, OSError) and error.errno in _RESOURCE_ERRNOS:
            advice = (". Raise the descriptor limit (ulimit -n) or lower --max-connections")
        record.msg = (
            first_line + (f": {type(error).__name__}: {error}" if error else "")
            + (f" ({dropped} more like it since the last such line)" if dropped else "")
            + f"; at most one such line per {self.interval:g}s{advice}"
        )
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


__all__ = ["RateLimitFilter", "SafeFormatter", "escape"]
