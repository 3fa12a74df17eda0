"""Hostile command-line values (issue 27, class 1: counts that ask for unbounded memory; class 2: the
demo's output folder; class 8: values that silently meant something else). Each row runs the real
CLI; the counts of class 1 also run once in
a subprocess under an address-space cap, so a regression that allocates what they ask for fails the
test instead of the machine.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from harness import Attack, check_attack, check_guarded, run_guarded, train_argv
from PIL import Image

from naslora_deploy.runtime.everything import EverythingSpec, generate_masks


def scene(tmp: Path, ctx: dict, side: int = 2048) -> Path:
    """A ``side`` x ``side`` PNG tiled from the session's photo, under ``tmp/in``."""
    photo = ctx["photo"]
    reps = (-(-side // photo.shape[0]), -(-side // photo.shape[1]), 1)
    path = tmp / "in" / "scene.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.tile(photo, reps)[:side, :side]).save(path)
    return path


def photo_file(tmp: Path, ctx: dict) -> Path:
    path = tmp / "in" / "photo.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ctx["photo"]).save(path)
    return path


def digest(folder: Path) -> dict:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def nothing_written(tmp: Path, ctx: dict) -> None:
    """The refusal came before any output: no mask, overlay or results file, the input as it was."""
    outputs = tmp / "out"
    assert not outputs.exists() or not any(outputs.iterdir()), sorted(outputs.iterdir())
    assert all(p.suffix == ".png" for p in (tmp / "in").iterdir())


def no_run(tmp: Path, ctx: dict) -> None:
    assert not (tmp / "run").exists() or not any((tmp / "run").iterdir())


SKIPPED = 1  # predict's exit status when it skipped an input, naming it (the others are still segmented)


def predict_argv(image, *extra: str):
    def argv(tmp: Path, ctx: dict):
        return ["predict", str(ctx["artifacts"]), str(image(tmp, ctx)), "--out", str(tmp / "out"), *extra]

    return argv


def user_folder(tmp: Path, ctx: dict) -> list:
    """A user's folder holding a file of their own, given to ``demo --out``."""
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("my notes")
    return ["demo", "--out", str(tmp / "mine"), "--no-progress"]


MARKER_TEXT = '{"format": "naslora-deploy demo"}\n'


def earlier_demo(tmp: Path, ctx: dict) -> list:
    """An earlier demo's folder (its marker and summary), given again without --overwrite."""
    (tmp / "demo").mkdir()
    (tmp / "demo" / ".naslora-demo").write_text(MARKER_TEXT)
    (tmp / "demo" / "summary.md").write_text("earlier")
    return ["demo", "--out", str(tmp / "demo"), "--no-progress"]


def untouched(folder: str, files: dict):
    def after(tmp: Path, ctx: dict) -> None:
        assert {p.name: p.read_text() for p in (tmp / folder).iterdir()} == files

    return after


ATTACKS = [
    # ----- class 2: demo --out, like every output, never replaces what it did not write -----
    Attack(
        "demo_out_holds_a_users_files",
        2,
        "holds no naslora-deploy demo (notes.txt)",
        argv=user_folder,
        after=untouched("mine", {"notes.txt": "my notes"}),
        issue=27,
    ),
    Attack(
        "demo_out_is_an_earlier_demo_without_overwrite",
        2,
        "already holds a naslora-deploy demo; pass --overwrite",
        argv=earlier_demo,
        after=untouched(
            "demo", {".naslora-demo": '{"format": "naslora-deploy demo"}\n', "summary.md": "earlier"}
        ),
        issue=27,
    ),
    # ----- class 1: counts checked against a stated limit before anything is allocated -----
    Attack(
        "everything_points_per_side_100000",
        1,
        "points per side of everything mode's grid, above the limit of 256",
        argv=predict_argv(photo_file, "--everything", "--points-per-side", "100000"),
        after=nothing_written,
        issue=27,
    ),
    Attack(
        "tile_32_overlap_31_on_a_2048_scene",
        1,
        "4,068,289 tiling windows for one image, above the limit of 16,384",
        argv=predict_argv(scene, "--tile", "32", "--overlap", "31"),
        after=nothing_written,
        exit_code=SKIPPED,
        issue=27,
    ),
    # ----- class 8: values that used to mean something else, now refused -----
    Attack(
        "train_ops_comma_names_no_operation",
        8,
        "--ops ',' names no operation",
        argv=lambda tmp, ctx: train_argv(ctx, tmp / "run", "--ops", ","),
        after=no_run,
        issue=27,
    ),
    Attack(
        "train_category_comma_names_no_category",
        8,
        "--category ' , ' names no category",
        argv=lambda tmp, ctx: train_argv(ctx, tmp / "run", "--category", " , "),
        after=no_run,
        issue=27,
    ),
    Attack(
        "predict_box_far_outside_the_image",
        8,
        "do not fit the",
        argv=predict_argv(photo_file, "--box", "5000,5000,6000,6000"),
        after=nothing_written,
        exit_code=SKIPPED,
        issue=27,
    ),
    Attack(
        "predict_point_outside_the_image",
        8,
        "lie outside the",
        argv=predict_argv(photo_file, "--points", "9000,10"),
        after=nothing_written,
        exit_code=SKIPPED,
        issue=27,
    ),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack(attack, hostile_ctx, tmp_path, capsys):
    check_attack(attack, tmp_path, hostile_ctx, capsys)


def test_huge_counts_are_refused_under_a_memory_cap(hostile_ctx, tmp_path):
    """Both class-1 counts in a subprocess whose address space is capped: refused, nothing written."""
    before = digest(hostile_ctx["artifacts"])
    image = scene(tmp_path, hostile_ctx)
    for extra, phrase, exit_code in (
        (["--tile", "32", "--overlap", "31"], "tiling windows for one image", SKIPPED),
        (["--everything", "--points-per-side", "100000"], "points per side", 2),
    ):
        out = tmp_path / "out"
        result = run_guarded(["predict", hostile_ctx["artifacts"], image, "--out", out, *extra])
        check_guarded(result, phrase, exit_code)
        assert not out.exists() or not any(out.iterdir())
    assert digest(hostile_ctx["artifacts"]) == before


def test_a_limit_is_raised_by_its_environment_variable(hostile_ctx, tmp_path, monkeypatch):
    """The stated limit is adjustable: with NASLORA_MAX_POINTS_PER_SIDE raised, 300 is accepted."""
    monkeypatch.setenv("NASLORA_MAX_POINTS_PER_SIDE", "300")
    assert EverythingSpec(points_per_side=300).points_per_side == 300
    monkeypatch.setenv("NASLORA_MAX_POINTS_PER_SIDE", "a lot")
    with pytest.raises(Exception, match="NASLORA_MAX_POINTS_PER_SIDE='a lot' is not a positive whole number"):
        EverythingSpec(points_per_side=300)


def test_everything_mode_lowers_its_batch_to_the_memory_limit_with_the_same_masks(monkeypatch):
    """One batch's upscaled logits are everything mode's peak: a batch that would pass
    NASLORA_MAX_DECODED_BYTES is lowered, with a warning, and the masks are the same."""
    size = (40, 60)
    yy, xx = np.mgrid[: size[0], : size[1]]

    def decode(points):  # one disc per point, three nested radii, IoU from the radius
        logits = np.stack(
            [
                [r - np.hypot(xx / 4 - x / 4, yy / 4 - y / 4)[::4, ::4] for r in (2.0, 4.0, 6.0)]
                for x, y in points
            ]
        ).astype(np.float32)
        return logits, np.full((len(points), 3), 0.95, np.float32)

    def upscale(low_res):
        return np.repeat(np.repeat(low_res, 4, axis=1), 4, axis=2)[:, : size[0], : size[1]]

    spec = EverythingSpec(
        points_per_side=4, points_per_batch=16, pred_iou_thresh=0.5, stability_score_thresh=0
    )
    whole = generate_masks(decode, upscale, size, spec)
    monkeypatch.setenv("NASLORA_MAX_DECODED_BYTES", str(3 * size[0] * size[1] * 4 * 5))  # 5 points' logits
    with pytest.warns(UserWarning, match="16 points per batch would hold .* using 5 per batch"):
        lowered = generate_masks(decode, upscale, size, spec)
    assert len(whole) > 1 and len(lowered) == len(whole)
    for a, b in zip(whole, lowered):
        assert a["bbox"] == b["bbox"] and (a["segmentation"] == b["segmentation"]).all()


CLASS_TESTS = {
    "test_huge_counts_are_refused_under_a_memory_cap": 1,
    "test_everything_mode_lowers_its_batch_to_the_memory_limit_with_the_same_masks": 1,
}
