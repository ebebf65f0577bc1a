"""Date/time parsing with crds 14.0.3's accepted formats and error messages (pure).

UseAfter selection parses the dataset's date (+ time) keywords and reformats them as
``YYYY-MM-DD HH:MM:SS[.ffffff]``; crds then compares that string with the rmap keys *as
strings*.  Error texts end up in ``NOT FOUND ...`` results, so every failure here is raised by
the same kind of Python operation crds uses (``int()``, ``float()``, tuple unpacking,
``datetime()``), giving identical messages.

Accepted: ``YYYY-MM-DD``, ``YYYY/MM/DD``, ``MM/DD/YYYY``, ``MM-DD-YYYY``, ``DD/MM/YY`` (``9x`` ->
19xx, ``0x``-``3x`` -> 20xx), ``YYYYMMDD:HHMMSS``, alphabetical months (``Mar 21 2001 12:00:00
am``, ``03-Jan-2013``, ``Dec 01 1993 00:00:00 UT``), a ``T``-joined ``YYYY-MM-DDTHH:MM[:SS[.f]]``,
each optionally followed by a time ``HH:MM[:SS[.fff]]`` with ``AM``/``PM``.
"""

from __future__ import annotations

import datetime
import re
from functools import lru_cache

from .exceptions import InvalidDatetimeError

_T_SEPARATED = re.compile(r"^\d\d\d\d[-/]\d\d[-/]\d\dT\d\d(:\d\d){1,2}(\.\d{1,6})?$")
_ALPHABETICAL = re.compile(r"[A-Za-z]{3,10}")
_MONTH_DAY_YEAR = re.compile(r"^\d\d/\d\d/\d\d\d\d$")
_YEAR_MONTH_DAY = re.compile(r"^\d\d\d\d/\d\d/\d\d$")
_DAY_MONTH_19YY = re.compile(r"^\d\d/\d\d/9\d$")
_DAY_MONTH_20YY = re.compile(r"^\d\d/\d\d/[0-3]\d$")
_DATE_COLON_TIME = re.compile(r"^\d\d\d\d\d\d\d\d:\d\d\d\d\d\d$")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@lru_cache(maxsize=16384)
def reformat_date(date: str) -> str:
    """Parse *date* in any accepted format and return crds' standard ``isoformat(' ')``.

    Memoised (a pure function of its text; failures are not cached): every rmap and hook
    of a lookup parses the same date keywords.
    """
    return parse_date(date).isoformat(" ")


def parse_date(date: str) -> datetime.datetime:
    """Parse a date/time string into a naive datetime, exactly as crds does."""
    if "UNDEFINED" in date:
        raise InvalidDatetimeError("One or more required date/time values is UNDEFINED")
    if date.endswith(" UT"):
        date = date[:-3]
    if _T_SEPARATED.match(date):
        date = date.replace("T", " ")
    if _ALPHABETICAL.search(date):
        return _parse_alphabetical(date)
    return _parse_numerical(date)


def _month_number(month: str, original: str) -> int:
    try:
        return _MONTHS.index(month[:3].capitalize()) + 1
    except ValueError as exc:
        raise ValueError(
            "Invalid month value " + repr(month) + " in base date " + repr(original)
        ) from exc


def _parse_alphabetical(date: str) -> datetime.datetime:
    original = date
    while date.lower().endswith(" am"):
        date = date.lower().replace(" am", "am")
    while date.lower().endswith(" pm"):
        date = date.lower().replace(" pm", "pm")
    fields = date.replace("-", " ").replace("/", " ").split()
    try:
        month, day, year, time = fields
    except ValueError:
        month, day, year = fields
        time = "00:00AM"
    if day.endswith(","):
        day = day[:-1]
    try:
        month_no = _month_number(month, original)
        day_no = int(day)
        year_no = int(year)
    except Exception:
        # "03 Jan 2013": the day came first.
        day, month = month, day
        month_no = _month_number(month, original)
        day_no = int(day)
        year_no = int(year)
    hour, minute, second, micro = parse_time(time)
    return datetime.datetime(year_no, month_no, day_no, hour, minute, second, micro)


def parse_time(time: str) -> tuple[int, int, int, int]:
    """``HH:MM[:SS[.fff]][AM|PM]`` -> (hour, minute, second, microsecond)."""
    time = time.strip()
    meridian = ""
    if time[-2:].upper() in ("AM", "PM"):
        meridian = time[-2:].upper()
        time = time[:-2]
    try:
        hour, minute = time.split(":")
        second = "00"
    except ValueError:
        try:
            hour, minute, second = time.split(":")
        except ValueError:
            hour, minute, second, _subsecond = time.split(":")
    hour_no = int(hour)
    minute_no = int(minute)
    seconds = float(second)
    whole = int(seconds)
    micro = int((seconds - whole) * 10**6)
    if meridian == "PM":
        if hour_no < 12:
            hour_no += 12
    elif meridian == "AM" and hour_no == 12:
        hour_no -= 12
    return hour_no, minute_no, whole, micro


def _parse_numerical(text: str) -> datetime.datetime:
    text = text.replace("-", "/")
    parts = text.split()
    date = parts[0]
    time = "00:00:00" if len(parts) == 1 else " ".join(parts[1:])
    hour, minute, second, micro = parse_time(time)
    if _MONTH_DAY_YEAR.match(date):
        month, day, year = date.split("/")
    elif _YEAR_MONTH_DAY.match(date):
        year, month, day = date.split("/")
    elif _DAY_MONTH_19YY.match(date):
        day, month, year = date.split("/")
        year = "19" + year
    elif _DAY_MONTH_20YY.match(date):
        day, month, year = date.split("/")
        year = "20" + year
    elif _DATE_COLON_TIME.match(date):
        year, month, day = date[:4], date[4:6], date[6:8]
        hour, minute, second, micro = int(date[9:11]), int(date[11:13]), int(date[13:15]), 0
    else:
        raise ValueError("Unknown numerical date format: " + repr(text))
    month_no, day_no, year_no = int(month), int(day), int(year)
    return datetime.datetime(year_no, month_no, day_no, hour, minute, second, micro)
