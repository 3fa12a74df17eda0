"""Command-line metadata on dataclass fields: each option declared once, beside the field it sets.

    epochs: int = field(default=40, metadata=option("training epochs"))

The CLI turns every field that carries this metadata into one ``--epochs``
option with the field's type and default; fields without it are not options.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence


def option(
    help: str,
    *,
    choices: Optional[Sequence[str]] = None,
    parse: Optional[Callable[[str], object]] = None,
    shown: Optional[str] = None,
    metavar: Optional[str] = None,
    flag: Optional[str] = None,
) -> dict:
    """Field metadata for one command-line option.

    help: the option's help text. choices: the allowed values. parse: turns the
    command-line string into the field's value (e.g. ``"q,v"`` -> a list);
    ``shown``: how the default reads in ``--help`` when it is not a plain value.
    ``flag``: the option's name where it is not ``--`` + the field name with dashes.
    """
    return {
        "cli": {
            "help": help,
            "choices": tuple(choices) if choices else None,
            "parse": parse,
            "shown": shown,
            "metavar": metavar,
            "flag": flag,
        }
    }
