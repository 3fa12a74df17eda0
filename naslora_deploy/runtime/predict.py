"""``naslora-deploy predict``: masks, overlays and ``results.jsonl`` for files, folders or globs.

Output names keep the whole input name and mirror the inputs' layout below the
deepest folder they share: one folder ``photos/`` (or files from one folder) gives
``x.png_mask.png`` and ``x.png_overlay.png`` for ``photos/x.png`` (``x.jpg`` beside it
gets ``x.jpg_mask.png``); ``a/imgs b/imgs`` give ``a/imgs/x.png_mask.png`` and
``b/imgs/x.png_mask.png``. So no two inputs of a run share an output.

``results.jsonl`` is a log that runs append to: one JSON line per image, written
in one ``O_APPEND`` write under a lock (concurrent runs into one ``--out`` lose
nothing), after its mask and overlay are in place (a write that fails, on a full or
read-only disk, removes that image's PNGs and stops the run with one line); each record names its
``mask`` and ``overlay`` (relative to ``--out``). A rerun replaces the masks of the
images it segments again and adds new records: the last record of a file is
the current one. ``--out`` may not be (or lie inside) a folder given as input,
nor be the folder of an input file (``check_out``).

Inputs that cannot be used are reported, one line each, never skipped silently:
in a folder, entries that are not images of a supported type (a GIF, a
sub-folder, a broken link or link loop; hidden entries are ignored), a folder
without images, a glob that matches nothing or matches a folder.
"""

from __future__ import annotations

import glob
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import IMAGE_SUFFIXES, overlay, save_png
from naslora_deploy.common.io import append_line
from naslora_deploy.common.outputs import prepare_write_folder, refusal
from naslora_deploy.common.progress import bar_drawn, log_line
from naslora_deploy.common.progress import progress as progress_bar
from naslora_deploy.runtime.crops import CandidateCounts
from naslora_deploy.runtime.everything import encode_coco_rle
from naslora_deploy.runtime.tiling import check_tiling, segment_tiled, tile_windows

RESULTS_NAME = "results.jsonl"
TILED_PROMPTS = (
    "--tile cannot be combined with --points/--box: prompts refer to the whole image, not to a window "
    "(segment tiled without prompts, or prompt the whole image without --tile)"
)
EVERYTHING_ALONE = "--everything finds every object of the whole image by itself: drop --points/--box/--tile"
SUPPORTED = ", ".join(IMAGE_SUFFIXES)


@dataclass
class Inputs:
    """What ``gather_inputs`` found: image files in order, one line per unusable input, input folders."""

    files: List[Path] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    folders: List[Path] = field(default_factory=list)


def _not_an_image(path: Path) -> Optional[str]:
    """Why a folder entry or glob match is no image file (None if it is one)."""
    if path.is_symlink() and not path.exists():
        return f"{path}: a broken link or a link loop"
    if path.is_dir():
        return f"{path}: a folder, not an image (give it as an input of its own)"
    if not path.is_file():
        return f"{path}: not a regular file"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"{path}: not a supported image type (supported: {SUPPORTED})"
    return None


def _folder(path: Path, found: Inputs) -> None:
    try:
        children = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        found.problems.append(f"{path}: the folder cannot be read ({exc.strerror or exc})")
        return
    found.folders.append(path)
    verdicts = [(child, _not_an_image(child)) for child in children]  # one look at each entry
    images = [child for child, problem in verdicts if problem is None]
    found.problems += [problem for _, problem in verdicts if problem]
    if not images:
        found.problems.append(f"{path}: no images in this folder (supported: {SUPPORTED})")
    found.files += images


def _glob(pattern: str, found: Inputs) -> None:
    matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True))
    if not matches:
        found.problems.append(f"{pattern}: no such file, folder or matching glob")
    for match in matches:
        if match.is_file():
            found.files.append(match)
        else:
            found.problems.append(_not_an_image(match) or f"{match}: not an image")


def gather_inputs(inputs: Iterable[str]) -> Inputs:
    """Files, folders (their images, sorted) and globs, in order, each file once.

    A file given by name is taken whatever its suffix (the reader decides);
    everything else that is no image is a line in ``problems``.
    """
    found = Inputs()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            _folder(path, found)
        elif path.is_file():
            found.files.append(path)
        elif os.path.lexists(path):
            found.problems.append(_not_an_image(path) or f"{path}: not an image")
        else:
            _glob(item, found)
    unique: Dict[str, Path] = {}
    for path in found.files:
        unique.setdefault(os.path.realpath(path), path)
    found.files = list(unique.values())
    return found


def common_folder(files: List[Path]) -> Path:
    """The deepest folder that holds every file (directly or below)."""
    return Path(os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]))


def output_names(files: List[Path]) -> Dict[Path, str]:
    """Each file's output stem: its path below ``common_folder`` (suffix kept), unique per file."""
    if not files:
        return {}
    root = common_folder(files)
    return {f: Path(os.path.relpath(os.path.abspath(f), root)).as_posix() for f in files}


def check_out(out, files: List[Path], folders: Iterable[Path] = ()) -> Path:
    """Refuse an ``--out`` that is a file, lies in (or is) an input folder, or holds inputs directly.

    ``folders``: the folders given as inputs (``--out`` may not be one or lie below one);
    ``--out`` may neither be the folder of an input file nor the folder all inputs share
    (the masks would land among the images). Returns ``out``.
    """
    out = prepare_write_folder(out, avoid=folders, flag="predict --out")
    beside = {Path(os.path.realpath(f)).parent for f in files}
    if files:
        beside.add(common_folder(files).resolve())
    if Path(out).resolve() in beside:
        raise refusal(
            "predict --out",
            out,
            "holds input images (itself or in its sub-folders)",
            "masks would be written among them: give a folder outside the inputs",
        )
    return Path(out)


def predict_files(
    segmenter,
    files: List[Path],
    out: Path,
    points=None,
    box=None,
    progress: Optional[bool] = None,
    tiling: Optional[Tuple[int, int]] = None,
    everything=None,
) -> Tuple[int, List[str]]:
    """Segment every file; a bad file is reported and skipped. Returns (done, errors).

    ``progress``: a bar over the files, for two or more or in everything mode (None: on a terminal;
    a log gets one line as each image starts, and everything mode's line per crop).
    ``tiling``: (tile, overlap) segments each image window by window (``tiling.segment_tiled``,
    prompt-free); the records say ``tile``, ``overlap`` and ``windows`` (None when untiled).
    ``everything``: an ``EverythingSpec``: every object of each image (``Segmenter.generate``),
    written as one instance-label PNG and COCO RLEs in the record (``write_everything``).
    """
    if tiling is not None and (points is not None or box is not None):
        raise ValueError(TILED_PROMPTS)
    if everything is not None and (tiling is not None or points is not None or box is not None):
        raise ValueError(EVERYTHING_ALONE)

    out = check_out(out, files)
    names = output_names(files)
    done, errors = 0, []
    shown = progress if len(files) > 1 or everything is not None else False  # one quick image: silent
    started = time.perf_counter()
    for number, path in enumerate(progress_bar(files, "predict", shown), 1):
        if shown is not False and not bar_drawn(shown):  # a log: one line as each image starts
            log_line(f"predict {number}/{len(files)} {path} ({time.perf_counter() - started:.1f} s)")
        try:
            image = segmenter.read(path)  # with the run's input mapping, as the overlay shows it
            if everything is not None:
                write_everything(out, names[path], path, image, segmenter, everything, shown)
                done += 1
                continue
            if tiling is None:
                result = segmenter.segment(image, points=points, box=box)
            else:
                result = segment_tiled(segmenter, image, *tiling)
        except (NasloraError, ValueError) as exc:
            errors.append(f"{path}: {exc}" if str(path) not in str(exc) else str(exc))
            continue
        tile, overlap = tiling or (None, None)
        windows = len(tile_windows(*result.size, *tiling)) if tiling else None
        tiled = {"tile": tile, "overlap": overlap, "windows": windows}
        _write_outputs(out, names[path], path, image, result, tiled, points=points, box=box)
        done += 1
    return done, errors


def _write_outputs(
    out: Path, name: str, path: Path, image: np.ndarray, result, extra=None, points=None, box=None
) -> None:
    """The mask and the overlay (each atomic), then the record (one appended line; ``extra`` added).

    ``points`` ((x, y) or (x, y, label) tuples, as ``--points`` gives them) and ``box`` (x0, y0, x1,
    y1): the prompt, drawn on the overlay (green / red points, a yellow box)."""
    mask_png = result.class_map if result.class_map is not None else (result.mask * 255).astype(np.uint8)
    point_xy = [p[:2] for p in points] if points else None
    point_labels = [int(p[2]) if len(p) > 2 else 1 for p in points] if points else None
    drawn = overlay(
        image, result.mask, result.class_map, points=point_xy, point_labels=point_labels, boxes=box
    )
    pngs = {
        "mask": (f"{name}_mask.png", mask_png),
        "overlay": (f"{name}_overlay.png", drawn),
    }
    figures = {
        "area": result.area,
        "area_fraction": result.area / float(result.size[0] * result.size[1]),
        "class_areas": result.class_areas,
        "score": result.score,
        "timings_ms": {k: round(v, 3) for k, v in result.timings.items()},
        **(extra or {}),
    }
    _write_record(out, path, result.size, pngs, figures)


def _write_record(out: Path, path: Path, size: Tuple[int, int], pngs: dict, figures: dict) -> None:
    """Each PNG (name -> (file, pixels); atomic), then the record naming them with the image's size and
    ``figures`` (one line appended to results.jsonl). If a write fails (a full or read-only disk), the
    PNGs this call wrote are removed: no mask is left without its record."""
    named = {key: file for key, (file, _) in pngs.items()}
    record = {"file": str(path), **named, "width": size[1], "height": size[0], **figures}
    written: List[Path] = []
    try:
        for file, pixels in pngs.values():
            written.append(save_png(out / file, pixels))
        append_line(out / RESULTS_NAME, json.dumps(record))
    except BaseException:
        for png in written:
            png.unlink(missing_ok=True)
        raise


def instance_labels(records: List[dict], size: Tuple[int, int]) -> np.ndarray:
    """(H, W) label image of everything-mode masks: 0 background, k + 1 for ``records[k]``; where masks
    overlap, the better one (earlier in ``records``, which are best first) is on top. uint16 past 255."""
    labels = np.zeros(size, np.uint8 if len(records) < 256 else np.uint16)
    for index in range(len(records) - 1, -1, -1):
        labels[records[index]["segmentation"]] = index + 1
    return labels


def write_everything(
    out: Path, name: str, path: Path, image: np.ndarray, segmenter, spec, progress: Optional[bool] = False
) -> None:
    """Everything mode for one image: ``<name>_masks.png`` (instance labels), the overlay, and a record
    whose ``masks`` list holds each mask's COCO RLE with SAM's fields (area, bbox XYWH, scores, point)
    and ``candidates`` what each filter removed (``CandidateCounts``; finding none warns, naming the file).
    ``progress``: ``Segmenter.generate``'s bar over point batches, or a line per crop in a log."""

    start = time.perf_counter()
    counts = CandidateCounts()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = segmenter.generate(image, replace(spec, output_mode="binary_mask"), progress, counts)
    for warning in caught:  # said again with the image's name: a run over many files says which
        warnings.warn(f"{path}: {warning.message}", warning.category, stacklevel=2)
    elapsed = 1000 * (time.perf_counter() - start)
    labels = instance_labels(records, image.shape[:2])
    pngs = {
        "masks_png": (f"{name}_masks.png", labels),
        "overlay": (  # with the grid point each mask was generated from (its prompt)
            f"{name}_overlay.png",
            overlay(
                image,
                labels > 0,
                labels,
                points=[r["point_coords"][0] for r in records if r.get("point_coords")] or None,
            ),
        ),
    }
    masks = [
        {**{k: v for k, v in r.items() if k != "segmentation"}, "rle": encode_coco_rle(r["segmentation"])}
        for r in records
    ]
    figures = {
        "count": len(records),
        "everything": {k: v for k, v in asdict(spec).items() if k != "output_mode"},
        "timings_ms": {"generate": round(elapsed, 3)},
        "candidates": asdict(counts),
        "masks": masks,
    }
    _write_record(out, path, image.shape[:2], pngs, figures)


def tiling_from_options(
    tile: Optional[int], overlap: Optional[int], prompted: bool
) -> Optional[Tuple[int, int]]:
    """``--tile``/``--overlap`` as (tile, overlap), None without ``--tile``, or one ``ValueError`` line."""
    if tile is None:
        if overlap is not None:
            raise ValueError("--overlap needs --tile SIZE (it is the pixels that neighbouring windows share)")
        return None
    if prompted:
        raise ValueError(TILED_PROMPTS)
    overlap = tile // 8 if overlap is None else overlap
    check_tiling(tile, overlap, ("--tile", "--overlap"))
    return tile, overlap
