"""Files a command reads without being named on its command line (the COCO names file a
darknet model falls back to, the classes file ``--data demo`` resolves to) are inputs too: an
output aimed at one is refused before any work, and the file is left as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import exit_code

import eval as eval_cli
import predict
import utils.inference.export as export_module
from data.source import DataSource
from tools import export as export_cli


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def coco_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for model_data/coco.names, so that a failing check destroys nothing real."""
    names = tmp_path / "model_data" / "coco.names"
    names.parent.mkdir()
    names.write_text("".join(f"class{i}\n" for i in range(80)))
    monkeypatch.setattr(predict, "COCO_CLASSES", names)
    monkeypatch.setattr(export_module, "COCO_CLASSES", names)
    return names


@pytest.mark.parametrize(
    "argv",
    [
        ["--source", "{image}", "--no-save", "--json", "{names}"],
        ["--export-onnx", "{names}"],
    ],
    ids=["json", "export-onnx"],
)
def test_predict_never_writes_over_the_names_file_it_falls_back_to(
    argv, coco_names: Path, official_weights: Path, sample_images, capsys
) -> None:
    before = _digest(coco_names)
    args = [a.format(image=sample_images[0], names=coco_names) for a in argv]
    assert exit_code(predict.main, ["--weights", official_weights, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"is the input {coco_names}" in err
    assert _digest(coco_names) == before


def test_export_never_writes_over_the_names_file_it_falls_back_to(
    coco_names: Path, official_weights: Path, capsys
) -> None:
    before = _digest(coco_names)
    argv = ["--weights", official_weights, "--out", coco_names]
    assert exit_code(export_cli.main, argv) == 2
    assert f"is the input {coco_names}" in capsys.readouterr().err
    assert _digest(coco_names) == before


def test_eval_never_writes_over_the_classes_file_its_data_set_resolved_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    demo = tmp_path / "demo"
    (demo / "VOCdevkit").mkdir(parents=True)
    classes = demo / "classes.txt"
    classes.write_text("circle\nsquare\ntriangle\n")
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"never read: the output is refused first")
    resolved = DataSource(str(demo / "VOCdevkit"), "2007:trainval", "2007:test", str(classes))
    monkeypatch.setattr(eval_cli, "resolve_data_source", lambda *a, **k: resolved)
    argv = ["--data", "demo", "--weights", weights, "--json", classes]
    argv += ["--save-dir", tmp_path / "out"]
    assert exit_code(eval_cli.main, argv) == 2
    assert f"is the input {classes}" in capsys.readouterr().err
    assert classes.read_text() == "circle\nsquare\ntriangle\n"
    assert not (tmp_path / "out").exists()


def test_a_save_dir_that_is_a_file_is_refused_not_numbered(
    tmp_path: Path, official_weights: Path, sample_images, capsys
) -> None:
    taken = tmp_path / "results"
    taken.write_text("a file the user keeps")
    argv = ["--weights", official_weights, "--source", sample_images[0], "--save-dir", taken]
    assert exit_code(predict.main, argv) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "results2").exists() and taken.read_text() == "a file the user keeps"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--img-size", "320000"], "--img-size 320000: must be a positive multiple of 32"),
        (["--export-onnx", "{tmp}/m.onnx", "--opset", "9999"], "--opset 9999: must be 17 to 20"),
    ],
)
def test_settings_beyond_what_runs_are_one_line_errors(
    flags, message, tmp_path: Path, official_weights: Path, sample_images, capsys
) -> None:
    argv = ["--weights", official_weights, "--source", sample_images[0], "--no-save"]
    argv += [f.format(tmp=tmp_path) for f in flags]
    assert exit_code(predict.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not list(tmp_path.iterdir())


def test_out_of_memory_is_one_line_not_a_traceback(capsys) -> None:
    from utils.config import run_cli

    def main() -> int:
        raise MemoryError("Unable to allocate 286. GiB")

    with pytest.raises(SystemExit) as done:
        run_cli(main)
    assert done.value.code == 1
    assert (
        capsys.readouterr().err
        == "error: out of memory: try a smaller --img-size or --batch-size\n"
    )
