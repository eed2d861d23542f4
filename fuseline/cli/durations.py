"""Durations as people write them on a command line: ``30s``, ``15m``, ``12h``, ``7d``, ``2w``.

``0`` alone means "never" wherever a duration is a retention (keep everything). A bare
number other than 0 is refused: ``7`` could mean seconds or days, so the unit is required.
"""

from __future__ import annotations

import re
from typing import Annotated

import typer

from .common import fail

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
RETENTION_ENV = "FUSELINE_RETENTION"
#: The retention workers apply when neither --retention nor FUSELINE_RETENTION is given.
DEFAULT_RETENTION = "7d"

#: ``--retention`` of ``worker run``.
RetentionOption = Annotated[
    str,
    typer.Option(
        "--retention",
        envvar=RETENTION_ENV,
        metavar="DURATION",
        help="Delete instances finished longer ago than this, with their steps, events and signals "
        "(and workers stopped for a day); the workers do it as they claim, in small batches. "
        "0 keeps everything, e.g. --retention 30d.",
    ),
]


def parse_duration(text: str) -> float:
    """Seconds of ``text`` (``0`` is 0); ValueError with a message a user can act on."""
    cleaned = text.strip().lower()
    if cleaned in ("0", "0s"):
        return 0.0
    match = _DURATION.fullmatch(cleaned)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: write a number and a unit (s, m, h, d or w), e.g. 7d; "
            "0 keeps everything"
        )
    return float(match.group(1)) * UNITS[match.group(2)]


def duration_option(ctx: typer.Context, name: str, text: str, option: str) -> float:
    """The value of a duration option, or a one-line usage error (exit 2) naming where it came
    from (the option, or its environment variable)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        source = getattr(ctx.get_parameter_source(name), "name", None)  # click's ParameterSource
        where = RETENTION_ENV if source == "ENVIRONMENT" else option
        fail(f"invalid {where}: {exc}", 2)


def shown(seconds: float) -> str:
    """Seconds in the largest unit up to days that divides them (``604800`` -> ``7d``)."""
    for unit in "dhm":
        size = UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
