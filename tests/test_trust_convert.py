"""The label converter and the writers keep users' files safe: an output never lands on an
input, never replaces existing files unasked (least of all with fewer images), writes nothing
when it would write no image, and names from data never steer a write outside the output.
Property tests: each writer's files read back exactly, hostile names stay inside the output,
and the path building blocks keep their promises."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import exit_code
from hypothesis import given, settings
from hypothesis import strategies as st
from voc_factory import make_voc

from data.formats import LabelSource, convert_labels, write_labels
from data.label_io import LabelSet, annotation
from tools import convert_labels as convert_cli
from utils import paths
from utils.paths import OutputPathError

SETTINGS = settings(max_examples=40, deadline=None)


def _image(path: Path, width: int = 64, height: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _, encoded = cv2.imencode(".png", np.full((height, width, 3), 90, np.uint8))
    path.write_bytes(encoded.tobytes())
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _coco(root: Path, names: tuple[str, ...] = ("a", "b"), split: str = "train") -> Path:
    """``root/annotations/instances_<split>.json`` with its images in ``root/images/<split>``."""
    records, objects = [], []
    for k, name in enumerate(names, 1):
        _image(root / "images" / split / f"{name}.jpg")
        records.append({"id": k, "file_name": f"{name}.jpg", "width": 64, "height": 48})
        objects.append({"id": k, "image_id": k, "category_id": 1, "bbox": [2, 3, 20, 10]})
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"images": records, "annotations": objects, "categories": [{"id": 1, "name": "cat"}]}
    path.write_text(json.dumps(payload))
    return path


def _run(capsys, *args: object) -> tuple[int, str, str]:
    code = exit_code(convert_cli.main, list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- outputs apart from inputs


def _rich_voc(tmp_path: Path) -> Path:
    """A VOC folder whose XMLs hold fields the writer does not write (truncated, segmented,
    source) and objects of two classes."""
    voc = make_voc(tmp_path / "VOCdevkit", num_images=3) / "VOC2007"
    xml = (voc / "Annotations" / "000000.xml").read_text()
    xml = xml.replace("<object>", "<object><truncated>1</truncated>", 1)
    xml = xml.replace("</annotation>", "<segmented>1</segmented><source>x</source></annotation>")
    (voc / "Annotations" / "000000.xml").write_text(xml)
    return voc


def test_converting_into_the_source_is_refused_and_leaves_it_alone(tmp_path: Path, capsys) -> None:
    voc = _rich_voc(tmp_path)
    names = tmp_path / "two.names"
    names.write_text("box\n")
    before = _snapshot(tmp_path)
    for out in (voc, voc / "new", voc.parent, voc / "JPEGImages"):
        code, out_text, err = _run(capsys, voc, "--split", "trainval", "--to", "voc", "--out", out)
        assert code == 2 and "wrote" not in out_text
        assert err.startswith(f"error: --out {out}: ") and "input" in err and err.count("\n") == 1
    assert _snapshot(tmp_path) == before  # nothing rewritten, clipped, dropped or added


def test_every_input_is_kept_apart_from_the_output(tmp_path: Path, capsys) -> None:
    json_path = _coco(tmp_path / "coco")
    images = tmp_path / "coco" / "images" / "train"
    elsewhere = tmp_path / "pics"
    _image(elsewhere / "a.jpg")
    _image(elsewhere / "b.jpg")
    names = tmp_path / "cfg" / "names.txt"
    names.parent.mkdir()
    names.write_text("cat\n")
    before = _snapshot(tmp_path)
    cases = [
        (images / "out", []),  # inside the discovered images folder
        (tmp_path / "coco", []),  # contains the JSON
        (elsewhere, ["--images", elsewhere]),  # is --images
        (tmp_path / "cfg", ["--classes", names]),  # contains --classes
    ]
    for out, extra in cases:
        code, _, err = _run(capsys, json_path, "--to", "yolo", "--out", out, *extra)
        assert code == 2 and f"error: --out {out}:" in err, err
    assert _snapshot(tmp_path) == before
    # a YOLO folder into itself would replace its polygons with boxes
    yolo = tmp_path / "y"
    _image(yolo / "images" / "train" / "p.jpg")
    (yolo / "labels" / "train").mkdir(parents=True)
    (yolo / "labels" / "train" / "p.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5\n")
    (yolo / "classes.txt").write_text("cat\n")
    before = _snapshot(yolo)
    with pytest.raises(OutputPathError, match="is the input"):
        convert_labels(yolo, "yolo", yolo, split="train")
    assert _snapshot(yolo) == before


def test_image_folders_of_a_list_source_are_inputs_too(tmp_path: Path) -> None:
    """Annotation lines name images anywhere: their folders are inputs, found after reading."""
    image = _image(tmp_path / "shots" / "a.jpg")
    lines = tmp_path / "lists" / "train.txt"
    lines.parent.mkdir()
    lines.write_text(f"{image} 1,1,10,10,0\n")
    with pytest.raises(OutputPathError, match="lies inside the input"):
        convert_labels(lines, "voc", tmp_path / "shots" / "voc", class_names=["cat"])
    assert sorted(os.listdir(tmp_path / "shots")) == ["a.jpg"]


# ---------------------------------------------------------------- existing outputs


def test_a_conversion_that_would_write_no_image_writes_nothing(tmp_path: Path, capsys) -> None:
    json_path = _coco(tmp_path / "coco")
    out = tmp_path / "out"
    code, text, _ = _run(capsys, json_path, "--to", "voc", "--out", out)
    assert code == 0 and "wrote 2 images" in text
    before = _snapshot(out)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    code, text, err = _run(capsys, json_path, "--to", "voc", "--out", out, "--images", wrong)
    assert code == 2 and "wrote" not in text
    assert "has no image that can be written (2 file issues; first: " in err
    assert f"nothing was written to {out}" in err and err.count("\n") == 1
    assert _snapshot(out) == before  # the image set still lists both images
    assert (out / "ImageSets" / "Main" / "train.txt").read_text() == "a\nb\n"
    # and into a new folder: nothing is created at all
    code, _, _ = _run(capsys, json_path, "--to", "yolo", "--out", tmp_path / "n", "--images", wrong)
    assert code == 2 and not (tmp_path / "n").exists()


@pytest.mark.parametrize("fmt", ["voc", "yolo", "coco"])
def test_existing_files_are_replaced_only_with_force(tmp_path: Path, capsys, fmt: str) -> None:
    json_path = _coco(tmp_path / "coco")
    out = tmp_path / "out"
    assert _run(capsys, json_path, "--to", fmt, "--out", out)[0] == 0
    before = _snapshot(out)
    # the same conversion again changes nothing and is fine
    assert _run(capsys, json_path, "--to", fmt, "--out", out)[0] == 0
    assert _snapshot(out) == before
    # a second run that sees fewer images would replace the split with less: refused
    fewer = tmp_path / "fewer"
    _image(fewer / "a.jpg")
    code, text, err = _run(capsys, json_path, "--to", fmt, "--out", out, "--images", fewer)
    assert code == 2 and "wrote" not in text
    assert f"already in {out}" in err and err.count("\n") == 1
    assert _snapshot(out) == before
    if fmt == "yolo":
        # --force replaces files but never deletes: b.jpg would stay in the split, so refused
        args = (json_path, "--to", fmt, "--out", out, "--images", fewer, "--force")
        code, _, err = _run(capsys, *args)
        assert code == 2 and "would join this output" in err
        assert _snapshot(out) == before
    else:
        code, text, _ = _run(
            capsys, json_path, "--to", fmt, "--out", out, "--images", fewer, "--force"
        )
        assert code == 0 and "wrote 1 images" in text
        if fmt == "voc":  # the split lists a only; b.xml stays (nothing is deleted)
            back = LabelSource(str(out), split="train").load()
        else:
            back = LabelSource(str(out / "annotations" / "instances_train.json")).load()
        assert [a.image_id for a in back.annotations] == ["a"]


def test_other_splits_may_join_an_output(tmp_path: Path, capsys) -> None:
    """A train split and a val split written into one folder, one after the other."""
    train = _coco(tmp_path / "coco", ("a", "b"), "train")
    val = _coco(tmp_path / "coco", ("c",), "val")
    out = tmp_path / "out"
    for fmt in ("voc", "yolo"):
        assert _run(capsys, train, "--to", fmt, "--out", out / fmt)[0] == 0
        assert _run(capsys, val, "--to", fmt, "--out", out / fmt)[0] == 0
        for split, ids in (("train", ["a", "b"]), ("val", ["c"])):
            back = LabelSource(str(out / fmt), split=split).load()
            assert sorted(a.image_id for a in back.annotations) == ids


def test_voc_output_refuses_a_second_image_of_one_id(tmp_path: Path, capsys) -> None:
    """JPEGImages/a.jpg from before and a.png now: the reader would pick a.jpg."""
    json_path = _coco(tmp_path / "coco", ("a",))
    out = tmp_path / "out"
    _image(out / "JPEGImages" / "a.png")
    code, _, err = _run(capsys, json_path, "--to", "voc", "--out", out)
    assert code == 2 and "a.png: already in" in err and "would join this output" in err


def test_links_in_the_output_cannot_lead_writes_outside(tmp_path: Path, capsys) -> None:
    json_path = _coco(tmp_path / "coco")
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "Annotations").symlink_to(elsewhere, target_is_directory=True)
    code, _, err = _run(capsys, json_path, "--to", "voc", "--out", out)
    assert code == 2 and "lies outside the output folder" in err
    assert os.listdir(elsewhere) == [] and sorted(os.listdir(out)) == ["Annotations"]


def test_two_files_of_one_name_are_refused(tmp_path: Path) -> None:
    from data.label_io import OutputFile, commit_files

    out = tmp_path / "out"
    files = [OutputFile(out / "a.txt", "1\n"), OutputFile(out / "A.txt", "2\n")]
    with pytest.raises(OutputPathError, match="share the name"):
        commit_files(out, files, overwrite=True)
    assert not out.exists()


# ---------------------------------------------------------------- names from data


def test_coco_file_names_become_safe_unique_file_names(tmp_path: Path, capsys) -> None:
    images = tmp_path / "coco" / "images"
    names = ["sub/x.jpg", "A.jpg", "a.jpg", "we ird.jpg", "b\\c.jpg"]
    for name in names:
        _image(images / name)
    records = [{"id": k, "file_name": n, "width": 64, "height": 48} for k, n in enumerate(names, 1)]
    records += [
        {"id": 90, "file_name": "../../escape.jpg", "width": 64, "height": 48},
        {"id": 91, "file_name": "/abs/x.jpg", "width": 64, "height": 48},
        {"id": 92, "file_name": "a\x00b.jpg", "width": 64, "height": 48},
    ]
    json_path = tmp_path / "coco" / "annotations" / "instances_t.json"
    json_path.parent.mkdir(parents=True)
    payload = {"images": records, "annotations": [], "categories": [{"id": 1, "name": "a/../b"}]}
    json_path.write_text(json.dumps(payload))
    out = tmp_path / "out"
    before = _files(tmp_path)
    code, text, _ = _run(capsys, json_path, "--to", "voc", "--out", out)
    assert code == 0
    assert all(out in p.parents for p in _files(tmp_path) - before)
    ids = (out / "ImageSets" / "Main" / "t.txt").read_text().split()
    assert ids == ["x", "A", "a-2", "we_ird", "b_c"]
    assert sorted(os.listdir(out / "Annotations")) == sorted(f"{i}.xml" for i in ids)
    assert "another image is already called 'a' in this split (written as 'a-2')" in text
    assert (out / "classes.txt").read_text() == "a/../b\n"  # a name, not a path: kept as is


def test_hostile_class_names_are_refused_before_writing(tmp_path: Path, capsys) -> None:
    json_path = _coco(tmp_path / "coco")
    payload = json.loads(json_path.read_text())
    payload["categories"] = [{"id": 1, "name": "cat\u2028dog"}]
    json_path.write_text(json.dumps(payload))
    out = tmp_path / "out"
    code, _, err = _run(capsys, json_path, "--to", "yolo", "--out", out)
    assert code == 2 and "name 'cat\\u2028dog'" in err and err.count("\n") == 1
    assert not out.exists()


# ---------------------------------------------------------------- property tests: round trips

_NAME_CHARS = st.characters(categories=("L", "N", "P", "S", "Zs"), exclude_characters="\ufeff")
CLASS_NAMES = st.lists(
    st.text(_NAME_CHARS, min_size=1, max_size=10).filter(lambda s: s == s.strip()),
    min_size=1,
    max_size=3,
    unique=True,
)
IMAGE_IDS = st.lists(
    st.text("abcXYZ019_-", min_size=1, max_size=6),
    min_size=1,
    max_size=3,
    unique_by=str.casefold,
)


@st.composite
def label_sets(draw, fmt: str):
    """``(class_names, [(image_id, (w, h), [(box, label, difficult), ...]), ...])`` that each
    format can hold: VOC integer pixels, YOLO and COCO any float32 inside the image that is 0
    or at least 1e-5 pixel (both store a far edge x2 + 1, which absorbs tinier values)."""
    names = draw(CLASS_NAMES)
    images = []
    for image_id in draw(IMAGE_IDS):
        w, h = draw(st.integers(8, 160)), draw(st.integers(8, 160))
        rows = []
        for _ in range(draw(st.integers(0, 3))):
            if fmt == "voc":
                x1, y1 = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
                x2, y2 = draw(st.integers(x1, w - 1)), draw(st.integers(y1, h - 1))
            else:
                coord = st.floats(0, 1, width=32)
                x1, y1 = (float(np.float32(draw(coord) * (s - 1))) for s in (w, h))
                x2 = float(np.float32(x1 + draw(coord) * (w - 1 - x1)))
                y2 = float(np.float32(y1 + draw(coord) * (h - 1 - y1)))
                if any(0 < v < 1e-5 for v in (x1, y1, x2, y2)):
                    continue
            box = (float(x1), float(y1), min(float(x2), w - 1.0), min(float(y2), h - 1.0))
            difficult = draw(st.booleans()) if fmt != "yolo" else False
            rows.append((box, draw(st.integers(0, len(names) - 1)), difficult))
        images.append((image_id, (w, h), rows))
    return names, images


def _label_set(root: Path, names: list[str], images: list) -> LabelSet:
    annotations = [
        annotation(str(_image(root / f"{image_id}.png", *size)), image_id, rows, size)
        for image_id, size, rows in images
    ]
    return LabelSet(annotations, [], names, str(root), "generated")


def _round_trip(fmt: str, names: list[str], images: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        labels = _label_set(root / "src", names, images)
        report = write_labels(labels, fmt, root / "out", split="train")
        assert report.issues == [] and report.images == len(images)
        back = LabelSource(str(root / "out" if fmt != "coco" else report.files[0])).load()
        assert back.issues == [] and back.class_names == names
        got = {a.image_id: a for a in back.annotations}
        assert sorted(got) == sorted(a.image_id for a in labels.annotations)
        for want in labels.annotations:
            have = got[want.image_id]
            np.testing.assert_array_equal(have.boxes, want.boxes)
            assert have.labels.tolist() == want.labels.tolist()
            assert have.difficult.tolist() == want.difficult.tolist()
            assert (have.width, have.height) == (want.width, want.height)


@SETTINGS
@given(label_sets("voc"))
def test_voc_writer_round_trips_integer_pixels(data) -> None:
    _round_trip("voc", *data)


@SETTINGS
@given(label_sets("yolo"))
def test_yolo_writer_round_trips_float32_boxes(data) -> None:
    _round_trip("yolo", *data)


@SETTINGS
@given(label_sets("coco"))
def test_coco_writer_round_trips_float32_boxes_and_crowd(data) -> None:
    _round_trip("coco", *data)


# ---------------------------------------------------------------- property tests: hostile names

HOSTILE = st.one_of(
    st.sampled_from(
        [
            "..",
            ".",
            "",
            " ",
            "../../x",
            "/abs/x",
            "a/b",
            "a\\b",
            "C:x",
            "CON",
            "nul.txt",
            "a\x00b",
            "a\nb",
            "\udcff",
            "x" * 300,
            "\u00e9" * 150,
            ".hidden",
        ]
    ),
    st.text(max_size=40),
)


@settings(max_examples=60, deadline=None)
@given(
    fmt=st.sampled_from(["voc", "yolo", "coco"]),
    ids=st.lists(HOSTILE, min_size=1, max_size=3),
    names=st.lists(HOSTILE, min_size=1, max_size=2),
    split=HOSTILE,
)
def test_hostile_names_never_write_outside_the_output(fmt, ids, names, split) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = [((1.0, 1.0, 5.0, 5.0), 0, False)]
        annotations = [
            annotation(str(_image(root / "src" / f"{k}.png", 16, 16)), image_id, rows, (16, 16))
            for k, image_id in enumerate(ids)
        ]
        labels = LabelSet(annotations, [], names, "generated", "generated")
        out = root / "deep" / "out"
        before = _files(root)
        try:
            report = write_labels(labels, fmt, out, split=split)
        except (ValueError, OSError) as err:  # LabelFormatError, OutputPathError
            assert "\n" not in str(err) and str(err)
            assert _files(root) == before  # refused before the first write
        else:
            assert report.images == len(ids)
            written = _files(root) - before
            assert written and all(out in p.parents for p in written)
            assert len(
                os.listdir(out / ("JPEGImages" if fmt == "voc" else f"images/{split}"))
            ) == len(ids)


@settings(max_examples=30, deadline=None)
@given(file_names=st.lists(HOSTILE, min_size=1, max_size=3), category=HOSTILE)
def test_hostile_coco_files_end_in_a_report_or_an_error(file_names, category) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = root / "coco" / "images"
        images.mkdir(parents=True)
        for name in file_names:
            try:  # those that can be files in the images folder are
                target = images / name
                if images in target.resolve().parents:
                    _image(target, 16, 16)
            except (OSError, ValueError, AssertionError, cv2.error):
                pass
        records = [
            {"id": k, "file_name": n, "width": 16, "height": 16} for k, n in enumerate(file_names)
        ]
        objects = [
            {"id": k, "image_id": k, "category_id": 1, "bbox": [1, 1, 4, 4]}
            for k in range(len(file_names))
        ]
        payload = {
            "images": records,
            "annotations": objects,
            "categories": [{"id": 1, "name": category}],
        }
        json_path = root / "coco" / "annotations" / "instances_t.json"
        json_path.parent.mkdir()
        json_path.write_text(json.dumps(payload))
        for fmt in ("voc", "yolo", "coco"):
            out = root / "outs" / fmt
            before = _files(root)
            code = exit_code(convert_cli.main, [json_path, "--to", fmt, "--out", out])
            assert code in (0, 2)  # written with a report, or a one-line error
            assert all(out in p.parents for p in _files(root) - before)


# ---------------------------------------------------------------- property tests: utils.paths

_RESERVED = {"con", "prn", "aux", "nul"} | {f"{d}{i}" for d in ("com", "lpt") for i in range(1, 10)}


@settings(max_examples=100, deadline=None)
@given(st.one_of(HOSTILE, st.text()))
def test_safe_component_is_one_component_inside_its_parent(name: str) -> None:
    result = paths.safe_component(name)
    assert result and result not in (".", "..")
    assert not any(ch in result for ch in '/\\:*?"<>|\x00') and result == result.strip(" .")
    assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in result)
    assert len(result.encode("utf-8", "surrogatepass")) <= 200
    parent = Path("/data/out")
    assert (parent / result).parent == parent and os.path.normpath(parent / result) == str(
        parent / result
    )
    assert paths.safe_component(result) == result  # a safe name stays as it is


@settings(max_examples=100, deadline=None)
@given(st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,40}", fullmatch=True))
def test_safe_component_is_the_identity_on_ordinary_names(name: str) -> None:
    # device names Windows reserves (CON, nul, com1) are the one exception, by design
    expected = "_" + name if name.split(".")[0].lower() in _RESERVED else name
    assert paths.safe_component(name) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(HOSTILE, st.sampled_from(["a", "A", "a-2", "b"])), max_size=8))
def test_unique_components_are_safe_and_distinct_without_case(names: list[str]) -> None:
    result = paths.unique_components(names)
    assert len(result) == len(names)
    assert len({r.casefold() for r in result}) == len(result)
    for name, got in zip(names, result):
        base = paths.safe_component(name)
        assert got == base or (got.startswith(base + "-") and got[len(base) + 1 :].isdigit())
        assert "/" not in got and "\\" not in got and got not in (".", "..")


SEGMENTS = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(inside=SEGMENTS, output=SEGMENTS)
def test_check_apart_refuses_exactly_overlapping_folders(inside, output) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root.joinpath(*inside)
        source.mkdir(parents=True)
        out = root.joinpath(*output)
        overlap = inside[: len(output)] == output[: len(inside)]
        if overlap:
            with pytest.raises(OutputPathError, match="--out"):
                paths.check_apart(out, [source], flag="--out")
        else:
            paths.check_apart(out, [source], flag="--out")
        # a link to the source is the source
        link = root / "link"
        link.symlink_to(source, target_is_directory=True)
        with pytest.raises(OutputPathError, match="is the input"):
            paths.check_apart(link, [source], flag="--out")
