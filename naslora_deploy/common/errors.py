"""Exceptions that the command line turns into one clear line and a non-zero exit."""


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
