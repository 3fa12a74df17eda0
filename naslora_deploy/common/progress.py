"""Progress: a bar on a terminal (a redirected log gets no carriage-return updates), one line per
step and per phase in a log.

``progress`` is the CLI's tri-state (``--progress/--no-progress``): None (the CLI's default) draws
bars where stderr is a terminal and otherwise writes one line per step; True always draws bars;
False (the library's default, and ``--no-progress``) shows nothing. Phase lines ("merge: fit
folds (12.3 s)") are written in every case but False, through ``tqdm.write`` so a bar is not torn.
Used by train, merge, export, verify, predict and everything mode.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


def progress(
    iterable: Iterable[T], desc: str, enabled: Optional[bool] = None, total: Optional[int] = None
) -> Iterable[T]:
    """``iterable`` wrapped in a tqdm bar.

    ``enabled``: True always draws, False never, None (the default) draws only
    when stderr is a terminal (tqdm's own check), so logs stay one line per event.
    """
    from tqdm import tqdm

    return tqdm(
        iterable, desc=desc, total=total, disable=None if enabled is None else not enabled, leave=False
    )


_bar = progress  # steps() takes a parameter named progress


def bar_drawn(progress: Optional[bool]) -> bool:
    """Whether ``common.progress.progress`` draws a bar for this setting (None: stderr is a terminal)."""
    if progress is None:
        return sys.stderr.isatty()
    return progress


def log_line(text: str, progress: Optional[bool] = None) -> None:
    """One line on stderr, unless ``progress`` is False (silent)."""
    if progress is False:
        return
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)
    sys.stderr.flush()


def steps(
    iterable: Iterable[T],
    desc: str,
    progress: Optional[bool],
    total: Optional[int] = None,
    label: Optional[Callable[[T], str]] = None,
) -> Iterator[T]:
    """``iterable`` with a bar (on a terminal) or, in a log, one line per finished item:
    ``desc i/n [label] (seconds so far)``. ``label``: what to name each item by."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if progress is False or bar_drawn(progress):
        yield from _bar(iterable, desc, progress, total)
        return
    started = time.perf_counter()
    for position, item in enumerate(iterable, 1):
        yield item
        name = f" {label(item)}" if label is not None else ""
        count = f"{position}/{total}" if total else f"{position}"
        log_line(f"{desc} {count}{name} ({time.perf_counter() - started:.1f} s)", progress)


@contextmanager
def phase(desc: str, progress: Optional[bool]) -> Iterator[None]:
    """Write ``desc (seconds)`` once the block is done (nothing if it raised, or ``progress`` is False)."""
    started = time.perf_counter()
    yield
    log_line(f"{desc} ({time.perf_counter() - started:.1f} s)", progress)
