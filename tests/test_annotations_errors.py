"""Hostile annotation files: each problem is one line naming the file and the shape, in
``data check``, when a sample is loaded and on the command line; never a traceback."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pixelwise.data import SegmentationDataset, check_dataset
from pixelwise.errors import DataError

DATA = Path(__file__).parent / "data" / "annotations"
CLASSES = ["background", "cat", "dog"]
FILES = {"labelme": "labelme/street.json", "coco": "coco.json", "cvat": "cvat.xml"}
MASKS = {"labelme": "labelme/{stem}.json", "coco": "coco.json", "cvat": "cvat.xml"}


@pytest.fixture
def copy(tmp_path):
    shutil.copytree(DATA, tmp_path / "d")
    return tmp_path / "d"


def spec(root: Path, encoding: str) -> dict:
    return {"root": str(root), "class_names": CLASSES, "channels": 3,
            "mask": {"encoding": encoding},
            "splits": {"train": {"images": "*.png", "masks": MASKS[encoding]}}}


def edit_json(root: Path, name: str, change) -> None:
    path = root / name
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def edit_text(root: Path, name: str, old: str, new: str) -> None:
    path = root / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _set(path, value):
    def change(doc):
        *keys, last = path
        for k in keys:
            doc = doc[k]
        doc[last] = value
    return change


LABELME = "labelme/street.json"
CASES = {
    # LabelMe
    "lm-label": ("labelme", lambda r: edit_json(r, LABELME, _set(["shapes", 0, "label"], "horse")),
                 ["street.json: shape 0 (label 'horse'): label not in class_names"]),
    "lm-degenerate": ("labelme", lambda r: edit_json(
        r, LABELME, _set(["shapes", 1, "points"], [[0, 0], [1, 1]])),
        ["street.json: shape 1 (label 'dog'): degenerate polygon: 2 point(s)"]),
    "lm-size": ("labelme", lambda r: edit_json(r, LABELME, _set(["imageHeight"], 7)),
                ["street.json: image 'street.png' is 8x7 in the annotations", "is 8x6"]),
    "lm-version": ("labelme", lambda r: edit_json(r, LABELME, _set(["version"], "9.0.1")),
                   ["street.json: unknown LabelMe format version '9.0.1'"]),
    "lm-type": ("labelme", lambda r: edit_json(
        r, LABELME, _set(["shapes", 2, "shape_type"], "cuboid")),
        ["street.json: shape 2 (label 'cat'): unsupported shape_type 'cuboid'"]),
    "lm-points": ("labelme", lambda r: edit_json(r, LABELME, _set(["shapes", 0, "points"], "x")),
                  ["street.json: shape 0 (label 'cat'): points must be [[x, y], ...]"]),
    "lm-no-json": ("labelme", lambda r: (r / LABELME).unlink(),
                   ["street.json: annotation file not found"]),
    "lm-no-image": ("labelme", lambda r: (r / "street.png").unlink(),
                    ["street.json: extra mask with no matching image"]),
    # COCO
    "coco-label": ("coco", lambda r: edit_json(r, "coco.json", _set(["categories", 0, "name"],
                                                                    "horse")),
                   ["coco.json: annotation id 10 (image 'street.png') (label 'horse'): label "
                    "not in class_names"]),
    "coco-degenerate": ("coco", lambda r: edit_json(
        r, "coco.json", _set(["annotations", 0, "segmentation"], [[0, 0, 2, 2, 4, 4]])),
        ["coco.json: annotation id 10 (image 'street.png') (label 'cat'): degenerate "
         "polygon: zero area"]),
    "coco-odd": ("coco", lambda r: edit_json(
        r, "coco.json", _set(["annotations", 0, "segmentation"], [[0, 0, 2, 2, 4]])),
        ["coco.json: annotation id 10 (image 'street.png') (label 'cat'): degenerate"]),
    "coco-far": ("coco", lambda r: edit_json(
        r, "coco.json", _set(["annotations", 0, "segmentation"], [[0, 0, 1e12, 3, 0, 5]])),
        ["coco.json: annotation id 10 (image 'street.png') (label 'cat'): points far outside "
         "the 8x6 image"]),
    "coco-size": ("coco", lambda r: edit_json(r, "coco.json", _set(["images", 0, "width"], 9)),
                  ["coco.json: image 'street.png' is 9x6 in the annotations"]),
    "coco-missing-image": ("coco", lambda r: edit_json(
        r, "coco.json", _set(["images", 1, "file_name"], "ghost.png")),
        ["coco.json: image 'ghost.png' is annotated but missing from the split's images",
         "coco.json: no entry for image"]),
    "coco-rle-sum": ("coco", lambda r: edit_json(
        r, "coco.json", _set(["annotations", 1, "segmentation", "counts"], [36, 8, 5])),
        ["coco.json: annotation id 11 (image 'street.png') (label 'dog'): RLE counts sum "
         "to 49"]),
    "coco-rle-string": ("coco", lambda r: edit_json(
        r, "coco.json", _set(["annotations", 2, "segmentation", "counts"], "zz~~")),
        ["coco.json: annotation id 12 (image 'street.png') (label 'dog'): bad compressed RLE"]),
    "coco-category": ("coco", lambda r: edit_json(
        r, "coco.json", _set(["annotations", 0, "category_id"], 9)),
        ["coco.json: annotation id 10: category_id 9 is not in categories"]),
    "coco-not-coco": ("coco", lambda r: (r / "coco.json").write_text("[1, 2]"),
                      ["coco.json: not a COCO instances file"]),
    # CVAT
    "cvat-version": ("cvat", lambda r: edit_text(r, "cvat.xml", "<version>1.1", "<version>2.0"),
                     ["cvat.xml: unknown CVAT format version '2.0'"]),
    "cvat-label": ("cvat", lambda r: edit_text(r, "cvat.xml", 'box label="cat"',
                                               'box label="horse"'),
                   ["cvat.xml: image 'street.png' shape 0 (<box>) (label 'horse'): label not "
                    "in class_names"]),
    "cvat-degenerate": ("cvat", lambda r: edit_text(
        r, "cvat.xml", 'points="0.00,0.00;4.00,0.00;4.00,2.00;0.00,2.00"', 'points="0,0;4,0"'),
        ["cvat.xml: image 'street.png' shape 1 (<polygon>) (label 'dog'): degenerate polygon"]),
    "cvat-size": ("cvat", lambda r: edit_text(r, "cvat.xml", 'width="8" height="6"',
                                              'width="8" height="5"'),
                  ["cvat.xml: image 'street.png' is 8x5 in the annotations"]),
    "cvat-missing-image": ("cvat", lambda r: edit_text(r, "cvat.xml", 'name="empty.png"',
                                                       'name="ghost.png"'),
                           ["cvat.xml: image 'ghost.png' is annotated but missing"]),
    "cvat-rle": ("cvat", lambda r: edit_text(r, "cvat.xml", 'rle="1, 1, 1, 3"', 'rle="1, 1"'),
                 ["cvat.xml: image 'street.png' shape 2 (<mask>) (label 'dog'): RLE counts "
                  "sum to 2"]),
    "cvat-points": ("cvat", lambda r: edit_text(r, "cvat.xml", 'points="0.00,5.00;2.00,5.00"',
                                                'points="a,b"'),
                    ["cvat.xml: image 'street.png' shape 3 (<polyline>) (label 'cat'): bad "
                     "attributes"]),
    "cvat-video": ("cvat", lambda r: edit_text(r, "cvat.xml", "</meta>",
                                               '</meta><track id="0" label="cat"></track>'),
                   ["cvat.xml: CVAT for video"]),
    "cvat-cuboid": ("cvat", lambda r: edit_text(r, "cvat.xml", "<tag ",
                                                '<cuboid label="cat"/><tag '),
                    ["cvat.xml: image 'street.png' shape 4 (<cuboid>): unsupported shape"]),
    "cvat-xml": ("cvat", lambda r: edit_text(r, "cvat.xml", "</annotations>", ""),
                 ["cvat.xml: not a CVAT XML file"]),
}


def _loads(root: Path, encoding: str) -> list[str]:
    """Load every sample; the DataError messages (any other exception fails the test)."""
    errors = []
    try:
        ds = SegmentationDataset(spec(root, encoding), "train")
    except DataError as e:
        return [str(e)]
    for i in range(len(ds)):
        try:
            ds.read_raw(i)
        except DataError as e:
            errors.append(str(e))
    return errors


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_problem_is_one_line_naming_file_and_shape(case, copy):
    encoding, spoil, expected = CASES[case]
    spoil(copy)
    problems = check_dataset(spec(copy, encoding)).problems
    for text in expected:
        assert any(text in p for p in problems), (text, problems)
    assert all("\n" not in p for p in problems)
    errors = _loads(copy, encoding)
    assert all("\n" not in e for e in errors)
    if case not in ("lm-no-image", "coco-missing-image", "cvat-missing-image"):
        assert any(expected[0] in e for e in errors), errors  # a load fails the same way


@pytest.mark.parametrize("encoding", sorted(FILES))
def test_cli_check_exits_1_without_traceback(encoding, copy, capsys):
    from pixelwise.cli import main

    case = {"labelme": "lm-degenerate", "coco": "coco-size", "cvat": "cvat-version"}[encoding]
    CASES[case][1](copy)
    path = copy / "spec.yaml"
    path.write_text(yaml.safe_dump(spec(copy, encoding)))
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", str(path)])
    out = capsys.readouterr()
    assert exit_info.value.code == 1
    assert "Traceback" not in out.out + out.err
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "convert", str(path), "--output", str(copy / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith("error: ") and "Traceback" not in err
    assert not (copy / "out" / "spec.yaml").exists()


@pytest.mark.parametrize("encoding", sorted(FILES))
def test_fuzzed_files_give_data_errors_only(encoding, copy):
    """Truncated and byte-flipped files: DataError (one line) or a mask, nothing else."""
    original = (DATA / FILES[encoding]).read_bytes()
    rng = np.random.default_rng(0)
    for trial in range(60):
        data = bytearray(original)
        if trial % 2:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for i in rng.integers(0, len(data), 4):
                data[i] = int(rng.integers(32, 127))
        (copy / FILES[encoding]).write_bytes(bytes(data))
        for message in _loads(copy, encoding) + check_dataset(spec(copy, encoding)).problems:
            assert "\n" not in message and FILES[encoding].split("/")[-1] in message or \
                "street.png" in message or "empty.png" in message, message
