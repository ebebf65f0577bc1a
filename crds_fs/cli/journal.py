"""Logging to the systemd journal through stderr, as a `Type=simple` service does.

systemd sets JOURNAL_STREAM=<st_dev>:<st_ino> of the stream it connected to stderr; when
stderr is still that stream, log lines carry a syslog priority prefix (`<3>` ...) that
journald turns into the entry's priority, and no timestamp or pid (journald records both).
"""

from __future__ import annotations

import logging
import os

JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: logging level -> syslog priority (sd-daemon(3): SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG)
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
             (logging.INFO, 6))


def stderr_is_journal() -> bool:
    """True when stderr is the journal stream systemd gave this process."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """`<6>INFO crds_fs.mount: ...`: priority prefix, no time (journald adds it)."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in _PRIORITY if record.levelno >= level), 7)
        # every line of a multi-line record (tracebacks) keeps the priority
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def stderr_formatter(default: logging.Formatter) -> logging.Formatter:
    """The formatter for a stderr handler: journal-style under systemd, else *default*."""
    return JournalFormatter() if stderr_is_journal() else default
