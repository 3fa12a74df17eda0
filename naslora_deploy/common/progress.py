"""Progress bars on a terminal only: a redirected log gets no carriage-return updates."""

from __future__ import annotations

from typing import Iterable, Optional, TypeVar

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
