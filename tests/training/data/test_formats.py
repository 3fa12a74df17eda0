"""COCO, LabelMe and npz folders: detection, classes, painting order and every odd input's behaviour."""

import json
import warnings

import numpy as np
import pytest
from fixtures_formats import H, W, box, coco_json, labelme_shape, photo, write_coco, write_labelme, write_npz
from PIL import Image

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import ImageReadError
from naslora_deploy.training.data.folder import discover, load_labels


def _discover(root, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return discover(root, val_fraction=options.pop("val_fraction", 0.0), **options)


def _labels(splits, split="train"):
    return {
        str(image).rsplit("/", 1)[-1]: load_labels(labels, splits.classes)
        for image, labels in splits.split(split)
    }


@pytest.mark.parametrize("layout", ["annotations", "roboflow", "single"])
def test_coco_layouts_paint_crowds_first_and_later_annotations_over_earlier(tmp_path, layout):
    splits = _discover(write_coco(tmp_path, layout))
    assert splits.format == "coco" and splits.classes.names == ["background", "cat", "dog"]
    labels = _labels(splits)
    assert (
        labels["im0.jpg"][12, 15] == 2 and labels["im0.jpg"][6, 6] == 1
    )  # the later dog RLE wins the overlap
    assert labels["im1.jpg"][5, 5] == 1 and labels["im1.jpg"][15, 15] == 2  # crowd dogs under the cat polygon
    assert not labels["im2.jpg"].any()  # no annotations: all background


def test_coco_category_and_classes_1_give_the_binary_head(tmp_path):
    write_coco(tmp_path)
    dog = _labels(_discover(tmp_path, category=["dog"]))["im0.jpg"]
    assert dog[12, 15] == 1 and dog[6, 6] == 0
    anything = _discover(tmp_path, num_classes=1)
    assert anything.classes.binary and _labels(anything)["im0.jpg"][6, 6] == 1


def test_coco_unknown_category_lists_the_categories(tmp_path):
    with pytest.raises(NasloraError, match="no category 'horse'; the categories are: cat, dog"):
        _discover(write_coco(tmp_path), category=["horse"])


def _rewrite(path, change):
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_coco_empty_and_box_only_annotation_lists_are_refused(tmp_path):
    target = write_coco(tmp_path) / "annotations" / "instances_train.json"
    _rewrite(target, lambda d: d["annotations"].clear())
    with pytest.raises(NasloraError, match="annotation list is empty"):
        _discover(tmp_path)
    _rewrite(
        target,
        lambda d: d["annotations"].append({"id": 1, "image_id": 0, "category_id": 1, "bbox": [1, 1, 5, 5]}),
    )
    with pytest.raises(NasloraError, match="boxes only"):
        _discover(tmp_path)


def test_coco_missing_and_non_image_files_are_named_or_skipped(tmp_path):
    target = write_coco(tmp_path) / "annotations" / "instances_train.json"
    (tmp_path / "train" / "notes.txt").write_text("x")
    _rewrite(
        target, lambda d: d["images"].extend([{"id": 7, "file_name": "gone.jpg", "height": H, "width": W}])
    )
    with pytest.raises(NasloraError, match="image gone.jpg: not found"):
        _discover(tmp_path)
    _rewrite(
        target, lambda d: d["images"].append({"id": 8, "file_name": "notes.txt", "height": H, "width": W})
    )
    splits = _discover(tmp_path, skip_bad=True)
    assert len(splits.split("train")) == 3 and any("not an image file" in s for s in splits.skipped)


def test_coco_bad_segmentation_is_one_line_naming_the_annotation(tmp_path):
    target = write_coco(tmp_path) / "annotations" / "instances_train.json"
    _rewrite(target, lambda d: d["annotations"][0].update(segmentation={"size": [5, 5], "counts": "x"}))
    with pytest.raises(ImageReadError, match=r"\[im0.jpg\], annotation 1: cannot read its segmentation"):
        _discover(tmp_path)


def test_coco_roboflow_dataset_supercategory_is_dropped(tmp_path):
    names = ["a.jpg"]
    document = coco_json(
        names, [{"image_id": 0, "category_id": 1, "iscrowd": 0, "segmentation": [[2, 2, 9, 2, 9, 9]]}]
    )
    document["categories"] = [
        {"id": 0, "name": "cells", "supercategory": "none"},
        {"id": 1, "name": "cell", "supercategory": "cells"},
    ]
    (tmp_path / "train").mkdir()
    Image.fromarray(photo(0)).save(tmp_path / "train" / "a.jpg")
    (tmp_path / "train" / "_annotations.coco.json").write_text(json.dumps(document))
    assert _discover(tmp_path).classes.binary  # one real category


def test_labelme_classes_shapes_and_overlaps(tmp_path):
    splits = _discover(write_labelme(tmp_path))
    assert splits.format == "labelme" and splits.classes.names == ["background", "cat", "dog"]
    labels = _labels(splits)
    assert labels["x0.png"][10, 10] == 1  # polygon
    assert labels["x1.png"][6, 28] == 2 and labels["x1.png"][12, 20] == 1  # rectangle, circle drawn on top
    assert not labels["x2.png"].any()  # shapes: [] is all background


def test_labelme_classes_json_ignore_and_unsupported_shapes(tmp_path):
    shapes = [
        [
            labelme_shape("dog", "polygon", [[0, 0], [10, 0], [10, 10]]),
            labelme_shape("__ignore__", "rectangle", [[30, 20], [35, 25]]),
        ],
        [labelme_shape("cat", "line", [[0, 0], [5, 5]])],
    ]
    write_labelme(tmp_path, shapes)
    (tmp_path / "classes.json").write_text(json.dumps({"names": ["bg", "dog", "cat"]}))
    (tmp_path / "readme.txt").write_text("not data")
    (tmp_path / "meta.json").write_text("{}")
    with pytest.warns(UserWarning, match="line shapes have no area"):
        splits = discover(tmp_path, val_fraction=0.0)
    labels = _labels(splits)
    assert splits.classes.names == ["bg", "dog", "cat"]
    assert labels["x0.png"][2, 8] == 1 and labels["x0.png"][22, 32] == 255 and not labels["x1.png"].any()
    (tmp_path / "classes.json").write_text(json.dumps({"names": ["bg", "cat"]}))
    with pytest.raises(NasloraError, match="lacks the label 'dog'; the names are: bg, cat"):
        _discover(tmp_path)


def test_labelme_image_without_json_is_named_or_skipped(tmp_path):
    write_labelme(tmp_path)
    Image.fromarray(photo(9)).save(tmp_path / "extra.png")
    with pytest.raises(NasloraError, match="extra.png: no LabelMe JSON"):
        _discover(tmp_path)
    assert len(_discover(tmp_path, skip_bad=True).split("train")) == 3


def test_labelme_single_label_is_binary(tmp_path):
    shapes = [[labelme_shape("lesion", "polygon", [[1, 1], [9, 1], [9, 9]])], []]
    assert _discover(write_labelme(tmp_path, shapes)).classes.binary


def test_npz_volumes_drop_empty_slices_and_keep_2d_background(tmp_path):
    write_npz(tmp_path)
    np.savez(tmp_path / "empty2d.npz", imgs=photo(3)[:, :, 0], gts=np.zeros((H, W), np.uint8))
    splits = _discover(tmp_path)
    names = sorted(str(labels) for _, labels in splits.split("train"))
    assert splits.format == "npz" and splits.classes.binary
    assert [n.rsplit("/", 1)[-1] for n in names] == [
        "case2d.npz",
        "case3d.npz [slice 1]",
        "case3d.npz [slice 2]",
        "empty2d.npz",
    ]
    assert set(np.unique(_labels(splits)["case3d.npz [slice 2]"])) == {0, 1}  # label 2 is foreground


def test_npz_category_classes_and_split_by_volume(tmp_path):
    write_npz(tmp_path)
    picked = _discover(tmp_path, category=["2"])
    assert [str(m).rsplit("/", 1)[-1] for _, m in picked.split("train")] == [
        "case2d.npz",
        "case3d.npz [slice 2]",
    ]
    multi = _discover(tmp_path, num_classes=3)
    assert _labels(multi)["case3d.npz [slice 2]"].max() == 2
    split = _discover(tmp_path, val_fraction=0.5)
    assert {str(i).split(" ")[0] for i, _ in split.split("val")}.isdisjoint(
        {str(i).split(" ")[0] for i, _ in split.split("train")}
    )
    with pytest.raises(NasloraError, match="npz labels are numbers"):
        _discover(tmp_path, category=["liver"])


def test_npz_bad_files_are_one_line(tmp_path):
    write_npz(tmp_path)
    np.savez(tmp_path / "nogts.npz", imgs=photo(1))
    with pytest.raises(NasloraError, match="nogts.npz: no array 'gts'"):
        _discover(tmp_path)
    (tmp_path / "nogts.npz").unlink()
    np.savez(tmp_path / "odd.npz", imgs=photo(1), gts=np.zeros((5, 5), np.uint8))
    with pytest.raises(NasloraError, match=r"odd.npz: 'imgs' \(32, 40, 3\) and 'gts' \(5, 5\) do not match"):
        _discover(tmp_path)
    assert len(_discover(tmp_path, skip_bad=True).split("train")) == 3


def test_category_on_mask_folders_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(photo(0)).save(tmp_path / "images" / "a.png")
    Image.fromarray(box(2, 9, 2, 9).astype(np.uint8) * 255).save(tmp_path / "masks" / "a.png")
    with pytest.raises(NasloraError, match="--category picks COCO / LabelMe categories"):
        _discover(tmp_path, category=["x"])
