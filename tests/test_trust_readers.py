"""Label readers given hostile files: every reader of a user file (COCO JSON, YOLO label files,
data YAMLs, image lists, VOC XMLs and image sets, classes files, annotation lines) ends in one
error line naming the file, or in per-file reports, never in a traceback; and tools.check_data
fails on the data sets train.py refuses."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.annotation_lines import load_annotation_lines
from data.coco import read_coco
from data.formats import LabelSource, convert_labels, read_lines
from data.label_io import LabelFormatError, LabelSet
from data.voc import load_voc
from data.voc_folder import read_voc_folder
from data.yolo_txt import read_data_yaml, read_yolo
from tools import check_data
from utils.classes import read_class_names
from utils.errors import FailedError, InputError

BOM = "\ufeff"
READER_ERRORS = (ValueError, FileNotFoundError)  # LabelFormatError is a ValueError


def _image(path: Path, width: int = 64, height: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((height, width, 3), 90, np.uint8))
    return path


def _coco(path: Path, images: list, annotations: list, categories: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(payload))
    return path


def _coco_set(root: Path, categories: list | None = None, annotations: list | None = None) -> Path:
    """``root/annotations/labels.json`` with one 64x48 image ``root/images/a.jpg``."""
    _image(root / "images" / "a.jpg")
    images = [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}]
    if categories is None:
        categories = [{"id": 1, "name": "square"}, {"id": 2, "name": "triangle"}]
    if annotations is None:
        annotations = [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 2, 10, 10]}]
    return _coco(root / "annotations" / "labels.json", images, annotations, categories)


def _yolo_set(root: Path) -> Path:
    """``root/images/train/a.jpg`` with ``root/labels/train/a.txt`` and ``root/classes.txt``."""
    _image(root / "images" / "train" / "a.jpg")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.25 0.5\n")
    (root / "classes.txt").write_text("square\ntriangle\n")
    return root


def _printable(labels: LabelSet) -> None:
    """Every report can be printed: check_data writes them to a UTF-8 console."""
    for issue in labels.issues:
        str(issue).encode("utf-8")
    ", ".join(labels.class_names).encode("utf-8")


def _named_error(path: Path, call) -> LabelSet | None:
    """Runs ``call``; a reader error must name ``path`` (or the file it found inside it)."""
    try:
        labels = call()
    except READER_ERRORS as err:
        message = str(err)
        assert str(path) in message, message
        assert "\n" not in message.strip() or "no Pascal VOC" in message, message
        message.encode("utf-8")
        return None
    if isinstance(labels, LabelSet):
        _printable(labels)
    return labels


# ----------------------------------------------- check_data and data sets without images


def test_check_data_fails_on_a_data_set_without_images(tmp_path: Path) -> None:
    empty = tmp_path / "yolo"
    (empty / "images" / "train").mkdir(parents=True)
    (empty / "labels" / "train").mkdir(parents=True)
    (empty / "classes.txt").write_text("square\n")
    elsewhere = tmp_path / "elsewhere"  # a YAML whose path: names another (empty) folder
    (elsewhere / "images").mkdir(parents=True)
    data_yaml = tmp_path / "ds" / "data.yaml"
    data_yaml.parent.mkdir()
    data_yaml.write_text(f"path: {elsewhere}\ntrain: images\nnames: [square]\n")
    coco = _coco(tmp_path / "coco" / "labels.json", [], [], [{"id": 1, "name": "square"}])
    for labels in (empty, data_yaml, coco):
        with pytest.raises(FailedError) as failed:  # exit 1, as for files training would skip
            check_data.main(["--labels", str(labels), "--quick"])
        assert str(failed.value) == f"{labels}: no images: train.py would stop"


def test_check_data_fails_when_no_image_can_be_read(tmp_path: Path) -> None:
    lines = tmp_path / "train.txt"
    lines.write_text(f"{tmp_path / 'gone.jpg'} 1,1,5,5,0\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("square\n")
    args = ["--annotations", str(lines), "--classes", str(classes), "--quick"]
    with pytest.raises(FailedError, match=r"none of the 1 images can be read: train\.py would"):
        check_data.main(args)


# ------------------------------------------------------------- COCO category names


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "is blank"),
        ("   ", "is blank"),
        ("\n", "is blank"),
        ("circle\ntriangle", "line break"),
        ("circle\rx", "line break"),
        ("square", "repeats the name 'square' of category id 1"),
    ],
)
def test_coco_category_names_that_would_read_back_shifted_are_refused(
    tmp_path: Path, name: str, why: str
) -> None:
    categories = [{"id": 1, "name": "square"}, {"id": 2, "name": name}]
    path = _coco_set(tmp_path, categories)
    with pytest.raises(LabelFormatError, match="category id 2") as err:
        LabelSource(str(path)).load()
    assert str(err.value).startswith(f"{path}: ") and why in str(err.value)


def test_coco_repeated_category_id_is_refused(tmp_path: Path) -> None:
    categories = [{"id": 1, "name": "square"}, {"id": 1, "name": "triangle"}]
    path = _coco_set(tmp_path, categories)
    with pytest.raises(LabelFormatError, match=r"labels\.json: category id 1 repeated"):
        read_coco(path)


# ---------------------------------------------------------------- byte-order marks


def test_a_byte_order_mark_is_not_part_of_the_first_name_id_or_path(tmp_path: Path) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text(BOM + "square\ntriangle\n", encoding="utf-8")
    assert read_class_names(classes) == ["square", "triangle"]

    yolo = _yolo_set(tmp_path / "yolo")
    (yolo / "classes.txt").write_text(BOM + "square\ntriangle\n", encoding="utf-8")
    (yolo / "labels" / "train" / "a.txt").write_text(BOM + "1 0.5 0.5 0.25 0.5\n")
    labels = read_yolo(yolo)
    assert labels.class_names == ["square", "triangle"] and not labels.issues
    assert labels.annotations[0].labels.tolist() == [1]

    image_list = yolo / "train.txt"
    image_list.write_text(BOM + "images/train/a.jpg\n", encoding="utf-8")
    listed = read_yolo(image_list)
    assert len(listed.annotations) == 1 and not listed.issues

    data_yaml = yolo / "data.yaml"
    data_yaml.write_text(BOM + "train: images/train\nnames: [square, triangle]\n")
    assert read_data_yaml(data_yaml).names == ["square", "triangle"]

    coco = _coco_set(tmp_path / "coco")
    coco.write_text(BOM + coco.read_text(), encoding="utf-8")
    assert len(read_coco(coco).annotations) == 1

    lines = tmp_path / "lines.txt"
    lines.write_text(BOM + f"{yolo / 'images' / 'train' / 'a.jpg'} 1,1,10,10,0\n")
    loaded = load_annotation_lines(lines, 2)
    assert Path(loaded.annotations[0].image_path).is_file()


def test_a_byte_order_mark_in_a_voc_image_set_is_not_part_of_the_first_id(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "VOC2007"
    _image(folder / "JPEGImages" / "000000.jpg")
    (folder / "Annotations").mkdir(parents=True)
    (folder / "Annotations" / "000000.xml").write_text(
        "<annotation><object><name>square</name><bndbox><xmin>2</xmin><ymin>2</ymin>"
        "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    (folder / "ImageSets" / "Main").mkdir(parents=True)
    (folder / "ImageSets" / "Main" / "train.txt").write_text(BOM + "000000\n", encoding="utf-8")
    labels = read_voc_folder(folder, split="train")
    assert [a.image_id for a in labels.annotations] == ["000000"] and not labels.issues


# ---------------------------------------------------------------- data YAML names


@pytest.mark.parametrize(
    ("names", "why"),
    [
        ("[square, 1]", "'names' 1: 1 is not a string (int) (quote it)"),
        ("[square, yes]", "'names' 1: True is not a string (bool) (quote it)"),
        ("[square, null]", "'names' 1: None is not a string (NoneType)"),
        ("[square, [a, b]]", "'names' 1: ['a', 'b'] is not a string (list)"),
        ("[square, '']", "'names' 1: '' is blank"),
        ('[square, "a\\nb"]', "'names' 1: 'a\\nb' contains a line break or control character"),
        ("[square, square]", "'names' 1: 'square' is listed twice"),
        ("{0: square, 1: {a: b}}", "'names' 1: an object is not a string (dict)"),
    ],
)
def test_yaml_names_must_be_class_names(tmp_path: Path, names: str, why: str) -> None:
    path = tmp_path / "data.yaml"
    path.write_text(f"train: images\nnames: {names}\n")
    with pytest.raises(LabelFormatError) as err:
        read_data_yaml(path)
    assert str(err.value) == f"{path}: {why}"


def test_yaml_aliases_are_refused_before_they_expand(tmp_path: Path) -> None:
    # each level refers ten times to the one before: small here, a thousand times larger
    # with three more lines, so aliases are refused whatever they expand to
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for k in "bcd":
        prev = chr(ord(k) - 1)
        levels.append(f"{k}: &{k} [{', '.join([f'*{prev}'] * 10)}]")
    path = tmp_path / "data.yaml"
    path.write_text("\n".join(levels) + "\ntrain: images\nnames: *d\n")
    with pytest.raises(LabelFormatError, match=r"data\.yaml: data YAML cannot be read \(alias"):
        read_data_yaml(path)
    capped = tmp_path / "big.yaml"
    capped.write_text("names: [a]\n" + "# padding\n" * 500_000)
    with pytest.raises(LabelFormatError, match=r"big\.yaml: data YAML cannot be read: larger"):
        read_data_yaml(capped)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ('{0: a, "1": b, 2: c}', ["a", "b", "c"]),
        ('{"1": b, "0": a}', ["a", "b"]),
    ],
)
def test_yaml_names_by_id_take_integer_and_digit_keys(
    tmp_path: Path, names: str, expected: list[str]
) -> None:
    path = tmp_path / "data.yaml"
    path.write_text(f"train: images\nnames: {names}\n")
    assert read_data_yaml(path).names == expected


@pytest.mark.parametrize(
    ("names", "why"),
    [
        ("{0: a, x: b}", "'names' key 'x' is not an id (0, 1, ...)"),
        ('{0: a, 1: b, "1": c}', "'names' key '1' repeats an id"),
        ("{0: a, 2: b}", "'names' ids must be 0..1"),
        ('{0: a, "01": b}', "'names' key '01' is not an id (0, 1, ...)"),
        ("{0: a, true: b}", "'names' key True is not an id (0, 1, ...)"),
        ("{0: a, 1.0: b}", "'names' key 1.0 is not an id (0, 1, ...)"),
    ],
)
def test_yaml_names_by_id_refuse_other_keys(tmp_path: Path, names: str, why: str) -> None:
    path = tmp_path / "data.yaml"
    path.write_text(f"train: images\nnames: {names}\n")
    with pytest.raises(LabelFormatError) as err:
        read_data_yaml(path)
    assert str(err.value) == f"{path}: {why}"


# ------------------------------------------------------------- COCO field types


def test_coco_fields_of_the_wrong_type_are_reported_by_record_and_field(
    tmp_path: Path, capsys
) -> None:
    annotations = [
        {"id": 1, "image_id": [1], "category_id": 1, "bbox": [1, 2, 10, 10]},
        {"id": 2, "image_id": 1, "category_id": [1], "bbox": [1, 2, 10, 10]},
        {"id": 3, "image_id": {"id": 1}, "category_id": 1, "bbox": [1, 2, 10, 10]},
        {"id": 4, "image_id": 1, "category_id": True, "bbox": [1, 2, 10, 10]},
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, [10]]},
        {"id": 6, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10], "iscrowd": [1]},
        {"id": [7], "image_id": 1, "category_id": 2, "bbox": [1, 2, 10, 10**400]},
    ]
    path = _coco_set(tmp_path, annotations=annotations)
    labels = LabelSource(str(path)).load()
    problems = [(i.path, i.problem, i.action) for i in labels.issues]
    src = str(path)
    assert problems == [
        (src, "annotation record 0: image_id [1] is not an integer or a string", "box dropped"),
        (src, "annotation record 1: category_id [1] is not an integer", "box dropped"),
        (
            src,
            "annotation record 2: image_id an object is not an integer or a string",
            "box dropped",
        ),
        (src, "annotation record 3: category_id True is not an integer", "box dropped"),
        (src, "annotation 5: bbox a list of 4 items is not 4 numbers", "box dropped"),
        (src, "annotation record 5: iscrowd [1] is not 0 or 1", "treated as not crowd"),
        (
            src,
            "annotation [7]: bbox [1, 2, 10, a very large integer] is not 4 numbers",
            "box dropped",
        ),
    ]
    assert labels.annotations[0].labels.tolist() == [0]
    capsys.readouterr()
    assert check_data.main(["--labels", src, "--quick", "--verbose"]) == 0  # images kept
    assert "annotation record 0: image_id [1]" in capsys.readouterr().out


# ------------------------------------------------------------- deep nesting, huge numbers


def test_a_deeply_nested_coco_file_is_one_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"images": [], "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(LabelFormatError, match=r"deep\.json: JSON nested too deeply"):
        read_coco(path)
    yaml_path = tmp_path / "deep.yaml"
    yaml_path.write_text("names: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(LabelFormatError, match=r"deep\.yaml: data YAML"):
        read_data_yaml(yaml_path)


def test_errors_of_unreadable_text_and_huge_integers_name_the_file(tmp_path: Path) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_bytes("sq\xfcare\n".encode("latin-1"))
    with pytest.raises(
        ValueError, match=r"classes\.txt: classes file cannot be read: not UTF-8 text"
    ):
        read_class_names(classes)
    huge = tmp_path / "huge.json"
    huge.write_text('{"images": [{"id": ' + "9" * 5000 + "}]}")
    with pytest.raises(LabelFormatError, match=r"huge\.json: not valid JSON"):
        read_coco(huge)
    big_yaml = tmp_path / "huge.yaml"
    big_yaml.write_text("nc: " + "9" * 5000 + "\nnames: [a]\n")
    with pytest.raises(LabelFormatError, match=r"huge\.yaml: data YAML cannot be read"):
        read_data_yaml(big_yaml)
    lines = tmp_path / "lines.txt"
    lines.write_bytes(b"\xff\xfe a.jpg 1,1,5,5,0\n")
    with pytest.raises(LabelFormatError, match=r"lines\.txt: annotation lines file cannot be"):
        load_annotation_lines(lines, 1)
    image_set = tmp_path / "VOC2007" / "ImageSets" / "Main" / "train.txt"
    (tmp_path / "VOC2007" / "Annotations").mkdir(parents=True)
    (tmp_path / "VOC2007" / "JPEGImages").mkdir(parents=True)
    image_set.parent.mkdir(parents=True)
    image_set.write_bytes(b"\xff000000\n")
    with pytest.raises(LabelFormatError, match=r"train\.txt: image set cannot be read: not UTF-8"):
        read_voc_folder(tmp_path / "VOC2007", split="train")


def test_check_data_names_the_file_it_cannot_read(tmp_path: Path) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_bytes(b"\xffsquare\n")
    voc = tmp_path / "voc"
    with pytest.raises(InputError) as bad:
        check_data.main(["--voc-root", str(voc), "--classes", str(classes)])
    assert str(bad.value).startswith(f"{classes}: classes file cannot be read: not UTF-8")


# ------------------------------------------------------------- YOLO image folders


def test_images_sharing_a_label_file_are_refused(tmp_path: Path) -> None:
    root = _yolo_set(tmp_path / "yolo")
    _image(root / "images" / "train" / "a.png")  # a.jpg and a.png both read labels/a.txt
    with pytest.raises(LabelFormatError, match="1 images have the id") as err:
        read_yolo(root)
    assert str(root / "images" / "train" / "a.png") in str(err.value)


def test_images_in_formats_that_are_not_read_are_counted(tmp_path: Path) -> None:
    root = _yolo_set(tmp_path / "yolo")
    for name in ("b.gif", "c.gif", "d.heic"):
        (root / "images" / "train" / name).write_bytes(b"GIF89a")
    labels = read_yolo(root)
    (issue,) = labels.issues
    assert issue.path == str(root) and issue.action == "skipped"
    assert issue.problem.startswith("3 files in image formats that are not read (2 .gif, 1 .heic")


# ------------------------------------------------------------- property-based: any input

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
HOSTILE_TEXT = st.sampled_from(
    [
        BOM,
        "\x00",
        "\n",
        "\r",
        "\u2028",
        "\ud800",
        "nan",
        "inf",
        "-1e400",
        "9" * 5000,
        "[" * 3000,
        "*a",
        "&a",
        "..",
        "/etc/passwd",
        "a" * 300,
        "é",
    ]
)
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    HOSTILE_TEXT,
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=12,
)


def _record(keys: list[str]) -> st.SearchStrategy:
    """A record whose every field (of ``keys``) holds any JSON value, or a sensible one."""
    sensible = {
        "id": st.integers(1, 3),
        "image_id": st.integers(1, 3),
        "category_id": st.integers(1, 3),
        "file_name": st.sampled_from(["a.jpg", "b.jpg", "../a.jpg", ""]),
        "width": st.just(64),
        "height": st.just(48),
        "bbox": st.lists(st.integers(-5, 70), min_size=4, max_size=4),
        "iscrowd": st.sampled_from([0, 1]),
        "name": st.sampled_from(["square", "triangle", "", "\n", "a\nb"]),
    }
    return st.fixed_dictionaries({}, optional={k: st.one_of(sensible[k], JSON_VALUE) for k in keys})


COCO_PAYLOAD = st.one_of(
    JSON_VALUE,
    st.fixed_dictionaries(
        {
            "images": st.one_of(
                st.lists(_record(["id", "file_name", "width", "height"]), max_size=3), JSON_VALUE
            ),
            "annotations": st.one_of(
                st.lists(_record(["id", "image_id", "category_id", "bbox", "iscrowd"]), max_size=4),
                JSON_VALUE,
            ),
            "categories": st.one_of(st.lists(_record(["id", "name"]), max_size=3), JSON_VALUE),
        }
    ),
)


@FUZZ
@given(payload=COCO_PAYLOAD)
def test_any_coco_structure_is_an_error_naming_the_file_or_a_report(payload: object) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _image(root / "images" / "a.jpg")
        path = root / "labels.json"
        path.write_text(json.dumps(payload))
        _named_error(path, lambda: read_coco(path, images=root / "images"))


@FUZZ
@given(data=st.binary(max_size=300), prefix=st.sampled_from([b"", BOM.encode(), b"{"]))
def test_any_bytes_in_a_coco_file_are_an_error_naming_it_or_a_report(
    data: bytes, prefix: bytes
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.json"
        path.write_bytes(prefix + data)
        _named_error(path, lambda: read_coco(path, images=folder))


YOLO_LINE = st.lists(
    st.one_of(
        st.sampled_from(["0", "1", "2", "-1", "1.5", "0.5", "1e400", "nan", "inf", "9" * 400]),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(max_size=6),
        HOSTILE_TEXT,
    ),
    max_size=9,
).map(" ".join)


@FUZZ
@given(lines=st.lists(YOLO_LINE, max_size=5), raw=st.binary(max_size=60))
def test_any_yolo_label_file_is_read_or_reported(lines: list[str], raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = _yolo_set(Path(folder) / "yolo")
        label = root / "labels" / "train" / "a.txt"
        label.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + raw)
        labels = _named_error(root, lambda: read_yolo(root))
        assert labels is not None  # a label file is reported, never an error for the set
        assert len(labels.annotations) <= 1


YAML_VALUE = st.one_of(
    st.sampled_from(
        [
            "a",
            "[a, b]",
            "{0: a, 1: b}",
            '{0: a, "1": b}',
            "{0: a, '1': b, x: c}",
            "[1, 2]",
            "[yes, no]",
            "null",
            "*x",
            "&x [a]",
            "[" * 200,
            "9" * 5000,
            "1e400",
            "!!python/object:os.system ls",
            "{[1]: a}",
            "2001-13-01",
            "''",
            '"a\\nb"',
        ]
    ),
    st.text(max_size=10).map(json.dumps),
)


@FUZZ
@given(
    fields=st.dictionaries(
        st.sampled_from(["path", "train", "val", "test", "names", "nc", "x"]),
        YAML_VALUE,
        max_size=5,
    ),
    raw=st.binary(max_size=40),
)
def test_any_data_yaml_is_an_error_naming_it_or_read(fields: dict, raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = _yolo_set(Path(folder) / "yolo")
        path = root / "data.yaml"
        text = "".join(f"{k}: {v}\n" for k, v in fields.items())
        path.write_bytes(text.encode("utf-8", "surrogatepass") + raw)
        _named_error(path, lambda: read_data_yaml(path))
        try:
            labels = read_yolo(path)
        except READER_ERRORS as err:
            str(err).encode("utf-8")  # an entry it names may be the error's subject
            assert str(path) in str(err) or str(root) in str(err), str(err)
        else:
            _printable(labels)


XML_TEXT = st.one_of(
    st.text(max_size=10),
    HOSTILE_TEXT,
    st.sampled_from(["1", "0", "1e400", "-5", "nan", "square", "triangle", " square "]),
)


@FUZZ
@given(
    name=XML_TEXT,
    coords=st.lists(XML_TEXT, min_size=4, max_size=4),
    size=st.lists(XML_TEXT, min_size=2, max_size=2),
    difficult=XML_TEXT,
    raw=st.one_of(st.none(), st.binary(max_size=200)),
    image_set=st.lists(st.one_of(st.sampled_from(["a", "a 1", "../a", "b"]), HOSTILE_TEXT)),
)
def test_any_voc_xml_or_image_set_is_read_or_reported(
    name: str,
    coords: list[str],
    size: list[str],
    difficult: str,
    raw: bytes | None,
    image_set: list[str],
) -> None:
    def clean(text: str) -> str:  # XML cannot hold control characters or surrogates
        text = "".join(c for c in text if c in "\t\n\r" or " " <= c < "\ud800" or c > "\udfff")
        return escape(text)

    with tempfile.TemporaryDirectory() as folder:
        voc = Path(folder) / "VOC2007"
        _image(voc / "JPEGImages" / "a.jpg")
        (voc / "Annotations").mkdir(parents=True)
        tags = "".join(
            f"<{t}>{clean(v)}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), coords)
        )
        xml = (
            f"<annotation><size><width>{clean(size[0])}</width><height>{clean(size[1])}"
            f"</height></size><object><name>{clean(name)}</name><difficult>{clean(difficult)}"
            f"</difficult><bndbox>{tags}</bndbox></object></annotation>"
        )
        (voc / "Annotations" / "a.xml").write_bytes(raw if raw is not None else xml.encode())
        for names in (None, ["square", "triangle"]):
            labels = _named_error(voc, lambda names=names: read_voc_folder(voc, class_names=names))
            assert labels is not None
        set_file = voc / "ImageSets" / "Main" / "train.txt"
        set_file.parent.mkdir(parents=True)
        set_file.write_bytes("\n".join(image_set).encode("utf-8", "surrogatepass") + (raw or b""))
        _named_error(set_file, lambda: read_voc_folder(voc, split="train"))


@FUZZ
@given(
    lines=st.lists(st.one_of(st.text(max_size=12), HOSTILE_TEXT), max_size=6),
    raw=st.binary(max_size=40),
)
def test_any_classes_file_is_names_or_an_error_naming_it(lines: list[str], raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "classes.txt"
        path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + raw)
        names = _named_error(path, lambda: read_class_names(path))
        if names is not None:
            assert names and all(n and n == n.strip() and "\n" not in n for n in names)
            assert len(set(names)) == len(names) and not names[0].startswith(BOM)
            "\n".join(names).encode("utf-8")


BOX_TOKEN = st.lists(
    st.one_of(
        st.sampled_from(["1", "0", "-1", "1e400", "nan", "9" * 400, "", "x"]),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    ),
    min_size=1,
    max_size=6,
).map(",".join)


@FUZZ
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["a.jpg", "gone.jpg", "", "x y.jpg"]), st.lists(BOX_TOKEN, max_size=3)
        ),
        max_size=4,
    ),
    raw=st.binary(max_size=40),
)
def test_any_annotation_lines_are_read_or_reported(rows: list, raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _image(root / "a.jpg")
        path = root / "lines.txt"
        text = "".join(
            f"{root / image if image else ''} {' '.join(boxes)}\n" for image, boxes in rows
        )
        path.write_bytes(text.encode() + raw)
        _named_error(path, lambda: read_lines(path, ["square", "triangle"]))


@FUZZ
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".txt", ".yaml", ".json"]))
def test_any_bytes_as_labels_of_any_format_are_an_error_naming_them_or_read(
    data: bytes, suffix: str
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"labels{suffix}"
        path.write_bytes(data)
        _named_error(path, lambda: LabelSource(str(path)).load(["square"]))


def test_a_voc_box_entirely_outside_the_image_is_dropped_not_clipped_to_a_sliver(
    tmp_path: Path,
) -> None:
    """Clipping a box that lies wholly past the border would leave a one-pixel box on the
    edge that no object occupies; for scoring it is kept as written."""
    folder = tmp_path / "VOC"
    (folder / "Annotations").mkdir(parents=True)
    (folder / "JPEGImages").mkdir()
    cv2.imwrite(str(folder / "JPEGImages" / "a.jpg"), np.full((100, 224, 3), 90, np.uint8))
    boxes = "".join(
        f"<object><name>cat</name><bndbox><xmin>{x1}</xmin><ymin>10</ymin><xmax>{x2}</xmax>"
        "<ymax>20</ymax></bndbox></object>"
        for x1, x2 in ((500, 600), (200, 260), (20, 40))
    )
    (folder / "Annotations" / "a.xml").write_text(
        f"<annotation><filename>a.jpg</filename><size><width>224</width><height>100</height>"
        f"<depth>3</depth></size>{boxes}</annotation>"
    )
    train = read_voc_folder(folder, class_names=["cat"])
    assert train.annotations[0].boxes.tolist() == [[199, 9, 223, 19], [19, 9, 39, 19]]
    assert any("entirely outside" in i.problem and i.action == "box dropped" for i in train.issues)
    scored = read_voc_folder(folder, class_names=["cat"], clip_boxes=False)
    assert scored.annotations[0].boxes.tolist()[0] == [499, 9, 599, 19]


# ------------------------------------------- silent relabelling: keys, blank lines, categories


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("path: .\nnames: [square, triangle]\nnames: [triangle, square]\n", "'names'", "2 and 3"),
        ("names:\n  0: square\n  1: triangle\n  0: circle\n", "0", "2 and 4"),
    ],
)
def test_a_key_given_twice_in_a_data_yaml_is_refused(
    tmp_path: Path, text: str, key: str, lines: str
) -> None:
    """YAML readers keep the last of two equal keys: a second names: would relabel every
    object."""
    path = tmp_path / "data.yaml"
    path.write_text(text)
    with pytest.raises(LabelFormatError) as err:
        read_data_yaml(path)
    assert str(err.value) == (
        f"{path}: data YAML cannot be read (key {key} given twice (lines {lines}): which one "
        "is meant?)"
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"images": [], "categories": [{"id": 1, "name": "a"}], "images": []}', "'images'"),
        ('{"images": [], "categories": [{"id": 1, "name": "a", "name": "b"}]}', "'name'"),
        (
            '{"images": [], "annotations": [{"id": 1, "category_id": 1, "image_id": 1, '
            '"category_id": 2}], "categories": []}',
            "'category_id'",
        ),
    ],
)
def test_a_key_given_twice_in_a_coco_file_is_refused(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "labels.json"
    path.write_text(text)
    with pytest.raises(LabelFormatError) as err:
        read_coco(path)
    assert (
        str(err.value) == f"{path}: key {key} given twice in one JSON object: which one is meant?"
    )


def test_a_blank_line_between_class_names_is_refused(tmp_path: Path) -> None:
    """Line k is class id k: a dropped blank line would shift every id after it."""
    path = tmp_path / "classes.txt"
    path.write_text("circle\n\nsquare\ntriangle")
    with pytest.raises(ValueError) as err:
        read_class_names(path)
    assert str(err.value).startswith(f"{path}:2: blank line between class names")
    path.write_text("\n\ncircle\nsquare\ntriangle\n\n")  # around the names: no id moves
    assert read_class_names(path) == ["circle", "square", "triangle"]
    # a YOLO dataset's classes.txt is read the same way
    root = _yolo_set(tmp_path / "ds")
    (root / "classes.txt").write_text("square\n \ntriangle\n")
    with pytest.raises(ValueError, match=r"classes\.txt:2: blank line between class names"):
        read_yolo(root)


def test_an_output_names_file_with_a_blank_line_between_names_is_refused(tmp_path: Path) -> None:
    root = _yolo_set(tmp_path / "ds")
    out = tmp_path / "out"
    out.mkdir()
    (out / "classes.txt").write_text("square\n\ntriangle\n")
    with pytest.raises(LabelFormatError, match=r"out/classes\.txt:2: blank line between"):
        convert_labels(root, "yolo", out)


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"id": 1, "name": 5}, "name 5 is not a string"),
        ({"id": 1, "name": None}, "name None is not a string"),
        ({"id": 1}, "name None is not a string"),
        ({"id": 1, "name": ["a"]}, "name ['a'] is not a string"),
        ({"id": [1], "name": "circle"}, "id [1] is not an integer"),
        ({"id": 1.5, "name": "circle"}, "id 1.5 is not an integer"),
        ({"id": True, "name": "circle"}, "id True is not an integer"),
        ("circle", "is not an object"),
    ],
)
def test_coco_categories_that_cannot_be_read_as_written_are_refused(
    tmp_path: Path, record: object, problem: str
) -> None:
    """Skipping the record would renumber the classes after it (square would become 0)."""
    categories = [record, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}]
    path = _coco_set(tmp_path, categories=categories)
    with pytest.raises(LabelFormatError) as err:
        read_coco(path)
    sep = " " if problem == "is not an object" else ": "
    assert str(err.value) == f"{path}: category record 0{sep}{problem}"


# ------------------------------------------------------ objects that vanish without a report


def test_a_yolo_label_path_that_is_a_folder_is_reported(tmp_path: Path, capsys) -> None:
    root = _yolo_set(tmp_path / "ds")
    _image(root / "images" / "train" / "b.jpg")
    (root / "labels" / "train" / "b.txt").mkdir()
    labels = read_yolo(root)
    assert [a.image_id for a in labels.annotations] == ["a"]
    folder = str(root / "labels" / "train" / "b.txt")
    assert [(i.path, i.problem, i.action) for i in labels.issues] == [
        (folder, "label file is a folder", "image skipped")
    ]
    (root / "labels" / "train" / "b.txt").rmdir()
    (root / "labels" / "train" / "b.txt").symlink_to(root / "gone.txt")
    assert [i.problem for i in read_yolo(root).issues] == ["label file is not a readable file"]
    assert check_data.main(["--labels", str(root), "--quick"]) == 1
    assert "label file is not a readable file" in capsys.readouterr().out


def _voc_folder(root: Path, sizes: dict[str, tuple[int, int, int]], image_set: str) -> Path:
    """``root`` as a VOC folder: per id, an image of (width, height) whose XML says
    ``<width>`` xml_width, with one cat box; ``ImageSets/Main/val.txt`` is ``image_set``."""
    for image_id, (width, height, xml_width) in sizes.items():
        _image(root / "JPEGImages" / f"{image_id}.jpg", width, height)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{xml_width}</width>"
            f"<height>{height}</height><depth>3</depth></size><object><name>cat</name>"
            "<bndbox><xmin>11</xmin><ymin>11</ymin><xmax>40</xmax><ymax>30</ymax></bndbox>"
            "</object></annotation>"
        )
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "val.txt").write_text(image_set)
    (root / "classes.txt").write_text("cat\n")
    return root


def test_an_id_listed_twice_in_a_voc_image_set_is_read_once(tmp_path: Path, capsys) -> None:
    """Read twice, its objects would count twice (and a converter would write a copy)."""
    folder = _voc_folder(
        tmp_path / "VOCdevkit" / "VOC2007",
        {"000008": (64, 48, 64), "000009": (64, 48, 64)},
        "000008\n000009\n000008\n",
    )
    set_file = str(folder / "ImageSets" / "Main" / "val.txt")
    expected = [(set_file, "image id '000008' listed 2 times", "read once")]
    labels = read_voc_folder(folder, split="val")
    assert [a.image_id for a in labels.annotations] == ["000008", "000009"]
    assert [(i.path, i.problem, i.action) for i in labels.issues] == expected
    result = load_voc(tmp_path / "VOCdevkit", [("2007", "val")], ["cat"])
    assert [a.image_id for a in result.annotations] == ["000008", "000009"]
    assert [(i.path, i.problem, i.action) for i in result.issues] == expected
    _, report = convert_labels(folder, "yolo", tmp_path / "out", split="val")
    assert sorted(p.name for p in (tmp_path / "out" / "labels" / "val").iterdir()) == [
        "000008.txt",
        "000009.txt",
    ]
    assert report.objects == 2
    assert check_data.main(["--labels", str(folder), "--split", "val", "--quick"]) == 0
    assert "(read once)" in capsys.readouterr().out


def test_a_converter_skips_an_image_whose_size_the_labels_misstate(tmp_path: Path) -> None:
    """A box in a 100-wide frame normalised by the wrong width lands elsewhere in the
    224-wide image: which frame the boxes are in is unknown, so the image is not written."""
    folder = _voc_folder(tmp_path / "VOC", {"a": (64, 48, 64), "b": (224, 48, 100)}, "a\nb\n")
    _, report = convert_labels(folder, "yolo", tmp_path / "out", split="val")
    image = str(folder / "JPEGImages" / "b.jpg")
    assert [(i.path, i.problem, i.action) for i in report.issues] == [
        (
            image,
            "the labels give the size 100x48 but the image is 224x48 (which one the boxes are "
            "in is unknown)",
            "image skipped",
        )
    ]
    assert (report.images, report.objects) == (1, 1)
    assert not (tmp_path / "out" / "labels" / "val" / "b.txt").exists()
    # a COCO record's width/height likewise
    coco = _coco_set(tmp_path / "coco")
    payload = json.loads(coco.read_text())
    payload["images"][0]["width"] = 100
    coco.write_text(json.dumps(payload))
    with pytest.raises(LabelFormatError, match="nothing was written"):
        convert_labels(coco, "voc", tmp_path / "out_voc")


# ------------------------------------------------------------ warnings: one report line each


def test_class_lists_that_disagree_are_reported_with_the_one_used(tmp_path: Path) -> None:
    root = _yolo_set(tmp_path / "ds")
    (root / "labels" / "classes.txt").write_text("triangle\nsquare\n")
    labels = read_yolo(root)
    assert labels.class_names == ["square", "triangle"]
    used = root / "classes.txt"
    assert [(i.path, i.problem, i.action) for i in labels.issues] == [
        (
            str(root / "labels" / "classes.txt"),
            f"lists other classes ('triangle, square') than {used} ('square, triangle')",
            f"class names of {used} used",
        )
    ]
    (root / "labels" / "classes.txt").unlink()
    data = root / "data.yaml"
    data.write_text("path: .\ntrain: images/train\nnames: [triangle, square]\n")
    labels = read_yolo(data)
    assert labels.class_names == ["triangle", "square"]
    assert [(i.path, i.action) for i in labels.issues] == [
        (str(used), f"class names of {data} used")
    ]
    assert labels.annotations[0].labels.tolist() == [1]  # ids index the list used
    (root / "classes.txt").write_text("triangle\nsquare\n")
    assert read_yolo(data).issues == []


def test_a_yolo_source_without_any_label_file_is_reported(tmp_path: Path, capsys) -> None:
    """A data YAML whose path: names a folder of images with no labels/ beside them reads as
    images without objects: said once, not as '2 images, 0 objects'."""
    for name in ("a", "b"):
        _image(tmp_path / "photos" / "images" / f"{name}.jpg")
    data = tmp_path / "data.yaml"
    data.write_text("path: photos\nval: images\nnames: [square]\n")
    labels = read_yolo(data)
    assert len(labels.annotations) == 2 and labels.num_objects == 0
    assert [(i.path, i.problem, i.action) for i in labels.issues] == [
        (
            str(data),
            "no label files found for any image (2 images; the first would be "
            f"{tmp_path / 'photos' / 'labels' / 'a.txt'})",
            "images read without objects",
        )
    ]
    (tmp_path / "photos" / "labels").mkdir()
    (tmp_path / "photos" / "labels" / "a.txt").write_text("")  # a negative: not reported
    assert read_yolo(data).issues == []
    assert check_data.main(["--labels", str(data), "--quick"]) == 1


def test_an_images_folder_with_an_unreadable_entry_is_an_error_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a data YAML whose train entry is "/" walks into /proc, where some entries refuse stat()
    root = _yolo_set(tmp_path / "yolo")

    def refuse(self: Path, pattern: str):
        raise PermissionError(13, "Permission denied", str(self / "locked"))

    monkeypatch.setattr(Path, "rglob", refuse)
    with pytest.raises(LabelFormatError) as err:
        read_yolo(root)
    message = str(err.value)
    assert "cannot list the images folder" in message
    assert "locked: Permission denied" in message and str(root) in message
