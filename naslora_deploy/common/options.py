"""Command-line metadata on dataclass fields: each option declared once, beside the field it sets.

    epochs: int = field(default=40, metadata=option("training epochs"))

The CLI turns every field that carries this metadata into one ``--epochs``
option with the field's type and default; fields without it are not options.
A field's bounds (``low``/``high``) are declared here too, and enforced in one
place for both doors in: ``check_bounds`` on the dataclass (library users) and the
``Bounded`` click type built from the same numbers (command-line users).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence, Union

Number = Union[int, float]


def bound_error(flag: str, value, low: Optional[Number], high: Optional[Number], open_low: bool) -> str:
    """Why ``value`` is not allowed for ``flag``, or "" when it is (non-finite numbers never are)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{flag} must be a number, got {value!r}"
    if not math.isfinite(value):
        return f"{flag} must be a finite number, got {value!r}"
    too_low = low is not None and (value <= low if open_low else value < low)
    too_high = high is not None and value > high
    if not (too_low or too_high):
        return ""
    lower = f"> {low}" if open_low else f">= {low}"
    if low is not None and high is not None:
        return f"{flag} must be {lower} and <= {high}, got {value!r}"
    return f"{flag} must be {lower if low is not None else f'<= {high}'}, got {value!r}"


def flag_of(field: dataclasses.Field) -> str:
    """The command-line flag a field's option is given as."""
    meta = field.metadata.get("cli") or {}
    return meta.get("flag") or "--" + field.name.replace("_", "-")


def check_bounds(instance) -> None:
    """Raise ``ValueError`` (one line) for the first field of ``instance`` outside its declared bounds."""
    for field in dataclasses.fields(instance):
        meta = field.metadata.get("cli")
        value = getattr(instance, field.name)
        if not meta or value is None or (meta["low"] is None and meta["high"] is None):
            continue
        error = bound_error(flag_of(field), value, meta["low"], meta["high"], meta["open_low"])
        if error:
            raise ValueError(error)


def option(
    help: str,
    *,
    choices: Optional[Sequence[str]] = None,
    parse: Optional[Callable[[str], object]] = None,
    shown: Optional[str] = None,
    metavar: Optional[str] = None,
    flag: Optional[str] = None,
    low: Optional[Number] = None,
    high: Optional[Number] = None,
    open_low: bool = False,
) -> dict:
    """Field metadata for one command-line option.

    help: the option's help text. choices: the allowed values. parse: turns the
    command-line string into the field's value (e.g. ``"q,v"`` -> a list);
    ``shown``: how the default reads in ``--help`` when it is not a plain value.
    ``flag``: the option's name where it is not ``--`` + the field name with dashes.
    ``low``/``high``: the allowed range of a number (``open_low``: ``low`` itself excluded).
    """
    return {
        "cli": {
            "help": help,
            "choices": tuple(choices) if choices else None,
            "parse": parse,
            "shown": shown,
            "metavar": metavar,
            "flag": flag,
            "low": low,
            "high": high,
            "open_low": open_low,
        }
    }


DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def check_device(name: str) -> str:
    """``name`` if it names a device this tool can use (auto, cpu, cuda, cuda:N, mps), else ``ValueError``."""
    if name in ("auto", "cpu", "cuda", "mps"):
        return name
    if isinstance(name, str) and name.startswith("cuda:") and name[5:].isdigit():
        return name
    raise ValueError(f"--device {name!r} is not a device; use {', '.join(DEVICES)}")
