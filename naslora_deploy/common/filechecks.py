"""What every reader checks before it opens a file or allocates what the file declares.

* a file must be a regular file after its links: a FIFO would block the reader forever
  (opening one waits for a writer), a device never ends, a folder is no image;
* an image's declared height x width: at least one pixel, at most ``limits.IMAGE_PIXELS``
  (``NASLORA_MAX_PIXELS``), and an aspect ratio of at most ``MAX_ASPECT_RATIO``:1;
* the bytes its pixels decode to (height x width x bands x bytes per value, from the
  header): at most ``limits.DECODED_BYTES`` (``NASLORA_MAX_DECODED_BYTES``).

Each refusal is one ``ImageReadError`` line naming the file (``imaging`` re-exports it).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Union

from naslora_deploy.common.errors import NasloraError, first_line
from naslora_deploy.common.limits import DECODED_BYTES, IMAGE_PIXELS

MAX_ASPECT_RATIO = 256  # long side / short side: at SAM's smallest input (256) the short side keeps a row
FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


class ImageReadError(NasloraError):
    """An image or mask file cannot be read or makes no sense."""


def too_large() -> str:
    """The end of a too-many-pixels message: the limit in force and how to raise it."""
    return (
        f"above the {IMAGE_PIXELS.value:,}-pixel limit (against decompression bombs); downscale it, or raise "
        f"the limit with {IMAGE_PIXELS.env}=N"
    )


def check_dimensions(height: int, width: int, source: object) -> None:
    """Refuse an empty, too large (``limits.IMAGE_PIXELS``) or too thin (``MAX_ASPECT_RATIO``) image."""
    if height <= 0 or width <= 0:
        raise ImageReadError(f"{source}: the image is {width}x{height} pixels, it has no pixels to segment")
    if height * width > IMAGE_PIXELS.value:
        raise ImageReadError(f"{source}: the image has {width}x{height} pixels, {too_large()}")
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise ImageReadError(
            f"{source}: {width}x{height} pixels is too thin to segment (aspect ratio above "
            f"{MAX_ASPECT_RATIO}:1, its short side would vanish at the model's input size); crop or pad it"
        )


def check_decoded(amount: int, source: object, todo: str) -> None:
    """Refuse (``ImageReadError``) pixels or an array decoding to more than ``limits.DECODED_BYTES``."""
    DECODED_BYTES.value  # a malformed NASLORA_MAX_DECODED_BYTES is a NasloraError of its own, not the file's
    try:
        DECODED_BYTES.check(amount, source, todo)
    except NasloraError as exc:
        raise ImageReadError(str(exc)) from None


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words ("a FIFO", "a device"...), from its ``st_mode``."""
    return next((kind for test, kind in FILE_KINDS if test(mode)), "a device")


def check_regular(path: Union[str, Path], what: str = "image") -> None:
    """Refuse (``ImageReadError``) a path that is not a regular file after its links, before it is opened.

    ``what`` names the file's role in the message ("image", "COCO annotation file").
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found (or a broken link)") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read it ({exc.strerror or first_line(exc)})") from None
    if not stat.S_ISREG(mode):
        raise ImageReadError(
            f"{path}: {file_kind(mode)}, not a regular file; give the {what} as a regular file (or a link "
            "to one)"
        )
