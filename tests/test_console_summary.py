"""The console says what matters: the files a data set's readers skip or repair are one line
per kind of issue (count and first files) before training, once per study, and by default in
``tools.check_data``; every issue, one line each, stays in the run's train.log (and in
``check_data --verbose``)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from voc_factory import make_split, tiny_train_config

from data.voc import FileIssue, issue_kind, summarize_issues
from tools import check_data, study
from utils.evaluation.evaluate import EvalConfig
from utils.training.fit import fit

OUTSIDE, UNKNOWN = 12, 2


def make_noisy_voc(root: Path) -> tuple[Path, Path]:
    """``make_split`` data (14 training images) whose last 12 training XMLs each have a box
    reaching past the right edge (clipped), two of them also an object of a class not in the
    classes file (skipped)."""
    voc_root, classes = make_split(root, num_train=OUTSIDE + 2, num_test=2)
    folder = voc_root / "VOC2007" / "Annotations"
    # the test images reuse the first ids (their XMLs replace those): the evaluation set is clean
    ids = (voc_root / "VOC2007/ImageSets/Main/trainval.txt").read_text().split()[2:]
    for k, image_id in enumerate(ids):
        xml = folder / f"{image_id}.xml"
        text = re.sub(r"<xmax>\d+</xmax>", "<xmax>200</xmax>", xml.read_text(), count=1)
        if k < UNKNOWN:
            zebra = (
                "<object><name>zebra</name><difficult>0</difficult><bndbox><xmin>2</xmin>"
                "<ymin>2</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>"
            )
            text = text.replace("</annotation>", zebra + "</annotation>")
        xml.write_text(text)
    return voc_root, classes


@pytest.fixture(scope="module")
def noisy_voc(tmp_path_factory) -> tuple[Path, Path]:
    return make_noisy_voc(tmp_path_factory.mktemp("noisy"))


def _issue_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "input skipped or repaired" in line]


def test_issues_are_grouped_by_action_and_kind_with_the_first_files() -> None:
    issues = [
        FileIssue(f"a/{i}.xml", f"object {i} (dog) outside the image", "box clipped")
        for i in range(5)
    ]
    issues += [
        FileIssue("b.xml", "unknown class 'cat'", "object skipped"),
        FileIssue("l.txt:3", "unknown class 'emu'", "object skipped"),
        FileIssue("l.txt:9", "unknown class 'emu'", "object skipped"),
        FileIssue("c.xml", "object 1 (dog) outside the image", "scored as given"),
    ]
    assert summarize_issues(issues) == [
        "5 issues (box clipped): object outside the image; 5 files, e.g. a/0.xml, a/1.xml, a/2.xml",
        "3 issues (object skipped): unknown class; 2 files: b.xml, l.txt:3, l.txt:9",
        "1 issue (scored as given): object outside the image; 1 file: c.xml",
    ]
    assert summarize_issues([]) == []
    # the numbers of a box, a size or a record vary per file; the kind does not
    assert issue_kind("box 0 0.5 0.5 2.0 0.3 reaches outside the image") == (
        "box N reaches outside the image"
    )
    assert issue_kind("XML size 100x80 but image is 96x80") == "XML size WxH but image is WxH"
    assert issue_kind("uint16 pixels") == "uint16 pixels"


def test_training_summarizes_issues_on_the_console_and_lists_them_in_train_log(
    noisy_voc, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="train")  # as train.py logs
    result = fit(tiny_train_config(*noisy_voc, log_dir=str(tmp_path), max_iters=1))
    console = _issue_lines(caplog.text)
    assert len(console) == 2, console  # one per kind, not one per issue
    assert f"{OUTSIDE} issues (box clipped): object outside the image" in console[0]
    assert f"{UNKNOWN} issues (object skipped): unknown class" in console[1]
    assert console[0].count(".xml") == 3  # the first few files, not all twelve
    listed = f"each of the {OUTSIDE + UNKNOWN} is listed in {result.run_dir / 'train.log'}"
    assert listed in caplog.text
    log = _issue_lines((result.run_dir / "train.log").read_text())
    each = [line for line in log if line.endswith(")") and ".xml: " in line]
    assert len(each) == OUTSIDE + UNKNOWN, log
    assert sum("outside the image (box clipped)" in line for line in each) == OUTSIDE
    assert sum("unknown class 'zebra' (object skipped)" in line for line in each) == UNKNOWN


@pytest.mark.slow
def test_a_study_summarizes_the_data_once_not_once_per_run(
    noisy_voc, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.INFO)
    base = tiny_train_config(*noisy_voc, max_iters=1)
    out = tmp_path / "study"
    study.run_study(base, ["0"], [0, 1], out, EvalConfig(img_size=64, workers=0))
    console = [r for r in caplog.records if "input skipped or repaired" in r.getMessage()]
    assert len(console) == 2, [r.getMessage() for r in console]  # two kinds, said once
    for run in ("phi0_seed0", "phi0_seed1"):  # each run's log still has all of them
        log = _issue_lines((out / run / "train.log").read_text())
        assert len(log) == 2 + OUTSIDE + UNKNOWN, log


def test_check_data_prints_a_summary_and_every_issue_with_verbose(noisy_voc, capsys) -> None:
    voc_root, classes = noisy_voc
    args = ["--voc-root", str(voc_root), "--sets", "2007:trainval", "--classes", str(classes)]
    assert check_data.main([*args, "--quick"]) == 0  # boxes clipped, objects skipped: exit 0
    out = capsys.readouterr().out
    assert f"{OUTSIDE + UNKNOWN} issue(s) in {OUTSIDE} file(s)" in out
    assert f"  {OUTSIDE} issues (box clipped): object outside the image; 12 files, e.g." in out
    assert f"  {UNKNOWN} issues (object skipped): unknown class; 2 files: " in out
    assert "(box clipped)\n" not in out  # no issue on its own line
    assert check_data.main([*args, "--quick", "--verbose"]) == 0
    verbose = capsys.readouterr().out
    each = [line for line in verbose.splitlines() if line.endswith(("(box clipped)", "skipped)"))]
    assert len(each) == OUTSIDE + UNKNOWN
    assert f"  {OUTSIDE} issues (box clipped): object outside the image" in verbose
