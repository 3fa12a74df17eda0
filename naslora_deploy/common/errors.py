"""Exceptions that the command line turns into one clear line and a non-zero exit."""

import contextlib
from typing import Callable, Iterator


class NasloraError(Exception):
    """Base class: a problem the user can fix (bad file, bad option), not a bug."""


class CheckpointError(NasloraError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


class MergeError(NasloraError):
    """A merge would produce an unusable model (non-finite weights, no adapters...)."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type name if it has none), cut to ``limit``."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


@contextlib.contextmanager
def read_errors_as(error: type, message: Callable[[str], str]) -> Iterator[None]:
    """Any exception in the block (file readers raise many types on truncated or foreign files)
    becomes one ``error`` line, ``message(first line of the reason)``; ours pass through as they are."""
    try:
        yield
    except NasloraError:
        raise
    except Exception as exc:
        raise error(message(first_line(exc))) from None
