"""Engine-internal exceptions, mirroring the crds classes whose *kind* changes behaviour.

Two things matter for identical answers:

* which failures let a Match selector fall through to its next weight group (crds'
  ``CrdsLookupError`` family: ``MatchingError``, ``UseAfterError``, ``VersionAfterError``) and
  which abort the lookup of that reftype at once (``ValidationError``,
  ``AmbiguousMatchError``, ``InvalidDatetimeError`` and plain Python errors);
* the message text, which becomes the ``NOT FOUND <message>`` result.

These never escape the engine's public API: per-reftype failures become result strings,
whole-call failures are raised as ``crds_fs.errors`` classes (see :func:`whole_call_error`).
"""

from __future__ import annotations

from typing import TypeVar

from ..errors import CrdsFsError


def _join(args: tuple[object, ...]) -> str:
    return " ".join(str(arg) for arg in args)


class EngineError(Exception):
    """Base of the crds-like internal errors; message = args joined by spaces (like CrdsError)."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and args[0].__class__ is str:
            super().__init__(args[0])
        else:
            super().__init__(_join(args))


class SelectorLookupError(EngineError, LookupError):
    """crds CrdsLookupError: no choice here; an enclosing Match tries its next weight group."""


class MatchingError(SelectorLookupError):
    """No Match row (or weight group) produced a choice: ``No match found.``"""


class UseAfterError(SelectorLookupError):
    """No UseAfter date precedes the dataset date."""


class VersionAfterError(SelectorLookupError):
    """No VersionAfter version precedes the dataset's version."""


class ValidationError(EngineError):
    """A header value is not acceptable to a selector (aborts this reftype's lookup)."""


class AmbiguousMatchError(EngineError):
    """Equal-weight matches that cannot be merged."""


class InvalidDatetimeError(EngineError):
    """A date/time keyword is UNDEFINED or unparseable."""


class UnknownReftypeError(EngineError):
    """The requested reftype is not in the instrument mapping."""


class IrrelevantReftype(LookupError):
    """Signal: this reftype is not applicable -> ``NOT FOUND n/a``."""


class OmitReftype(LookupError):
    """Signal: this reftype is omitted from the result."""


E = TypeVar("E", bound=CrdsFsError)


def whole_call_error(cls: type[E], crds_name: str, message: str) -> E:
    """A crds_fs error carrying the crds exception class name for ``"<kind>: <message>"``."""
    exc = cls(message)
    exc.crds_name = crds_name  # type: ignore[attr-defined]
    return exc


def crds_name_of(exc: BaseException) -> str:
    """The crds class name a whole-call failure would have had (falls back to our class)."""
    return getattr(exc, "crds_name", type(exc).__name__)
