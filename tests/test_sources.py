"""Unit tests for utils/sources.py (reading images, resolving --source, opening videos) and
the output-path helpers of utils/paths.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import require_asset

from utils.paths import (
    OutputPathError,
    check_output_path,
    save_figure_atomic,
    write_image_atomic,
    write_text_atomic,
)
from utils.sources import (
    ImageReadError,
    Source,
    SourceError,
    increment_path,
    open_video,
    read_image,
    resolve_source,
)

REPO = Path(__file__).resolve().parents[1]

BUS = REPO / "model_data" / "samples" / "bus.jpg"


def _pattern(h: int = 48, w: int = 64) -> np.ndarray:
    """A deterministic BGR image with distinct channels, so channel swaps are detectable."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.dstack([(xx * 4) % 256, (yy * 5) % 256, ((xx + yy) * 3) % 256]).astype(np.uint8)


def _write_video(path: Path, frames: int = 5, size: tuple[int, int] = (64, 48)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    assert writer.isOpened(), f"cannot write test video {path}"
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), 20 * i, np.uint8)
        writer.write(frame)
    writer.release()


def _assert_error_names(excinfo: pytest.ExceptionInfo, path: Path) -> None:
    assert str(path) in str(excinfo.value)


# --------------------------------------------------------------------------- read_image


def test_read_image_real_jpeg() -> None:
    path = require_asset(BUS)
    image = read_image(path)
    assert image.dtype == np.uint8
    assert image.shape == (1080, 810, 3)
    np.testing.assert_array_equal(image, cv2.imread(str(path)))


def test_read_image_jpeg_roundtrip(tmp_path: Path) -> None:
    src = _pattern()
    path = tmp_path / "pattern.jpg"
    assert cv2.imwrite(str(path), src, [cv2.IMWRITE_JPEG_QUALITY, 100])
    image = read_image(path)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    # Lossy, but BGR order is kept: the mean error is tiny compared to the channel contrast.
    assert np.abs(image.astype(int) - src.astype(int)).mean() < 4


def test_read_image_png_is_lossless(tmp_path: Path) -> None:
    src = _pattern(31, 17)
    path = tmp_path / "pattern.png"
    assert cv2.imwrite(str(path), src)
    image = read_image(str(path))  # str and PathLike are both accepted
    np.testing.assert_array_equal(image, src)


def test_read_image_non_ascii_path(tmp_path: Path) -> None:
    src = _pattern()
    path = tmp_path / "bild_ü_画像.png"
    ok, buf = cv2.imencode(".png", src)
    assert ok
    path.write_bytes(buf.tobytes())
    np.testing.assert_array_equal(read_image(path), src)


def test_read_image_grayscale_png_becomes_bgr(tmp_path: Path) -> None:
    grey = _pattern()[:, :, 0]
    path = tmp_path / "grey.png"
    assert cv2.imwrite(str(path), grey)
    image = read_image(path)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(image[:, :, c], grey)


def test_read_image_16bit_png_becomes_8bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, size=(20, 30, 3), dtype=np.uint16)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), deep)
    image = read_image(path)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    # Scaled down to 8 bits (not clipped, not the low byte).
    expected = deep.astype(np.float64) / 257.0
    assert np.abs(image.astype(np.float64) - expected).max() <= 1.0


def test_read_image_16bit_grayscale_png(tmp_path: Path) -> None:
    deep = (np.arange(20 * 30).reshape(20, 30) * 100).astype(np.uint16)
    path = tmp_path / "deep_grey.png"
    assert cv2.imwrite(str(path), deep)
    image = read_image(path)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    assert np.abs(image[:, :, 1].astype(np.float64) - deep / 257.0).max() <= 1.0


def test_read_image_rgba_png_drops_alpha(tmp_path: Path) -> None:
    bgr = _pattern()
    alpha = np.full(bgr.shape[:2], 77, np.uint8)
    path = tmp_path / "rgba.png"
    assert cv2.imwrite(str(path), np.dstack([bgr, alpha]))
    image = read_image(path)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, bgr)


def test_read_image_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageReadError) as excinfo:
        read_image(path)
    _assert_error_names(excinfo, path)


def test_read_image_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError) as excinfo:
        read_image(tmp_path)
    _assert_error_names(excinfo, tmp_path)


def test_read_image_zero_bytes(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError) as excinfo:
        read_image(path)
    _assert_error_names(excinfo, path)
    assert "empty" in str(excinfo.value)


def test_read_image_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError) as excinfo:
        read_image(path)
    _assert_error_names(excinfo, path)


def test_read_image_text_file_with_image_extension(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageReadError) as excinfo:
        read_image(path)
    _assert_error_names(excinfo, path)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_read_image_truncated_jpeg(tmp_path: Path, keep: float) -> None:
    rng = np.random.default_rng(2)
    src = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)  # noisy: big entropy data
    ok, buf = cv2.imencode(".jpg", src, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    data = buf.tobytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageReadError) as excinfo:
        read_image(path)
    _assert_error_names(excinfo, path)
    # The untruncated file is fine, so the error is about the cut.
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(data)
    assert read_image(whole).shape == (120, 160, 3)


def test_read_image_jpeg_with_long_trailer(tmp_path: Path) -> None:
    src = _pattern()
    ok, buf = cv2.imencode(".jpg", src)
    assert ok
    path = tmp_path / "motion_photo.jpg"
    path.write_bytes(buf.tobytes() + bytes(8192))  # data after the end-of-image marker
    assert cv2.imread(str(path)) is not None  # OpenCV itself reads it fine
    assert read_image(path).shape == (48, 64, 3)


def test_image_read_error_is_oserror(tmp_path: Path) -> None:
    # Callers that catch OSError for file problems also catch unreadable images, and those
    # that catch ValueError for bad arguments also catch a --source that names nothing.
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(OSError) as excinfo:
        read_image(empty)
    assert type(excinfo.value) is ImageReadError
    assert str(excinfo.value) == f"{empty}: empty file (0 bytes)"
    missing = str(tmp_path / "missing")
    with pytest.raises(ValueError) as excinfo:
        resolve_source(missing)
    assert type(excinfo.value) is SourceError
    assert str(excinfo.value) == f"{missing}: no such file or folder"


# --------------------------------------------------------------------------- resolve_source


@pytest.mark.parametrize("text, index", [("0", 0), ("1", 1), ("12", 12)])
def test_resolve_source_digits_is_webcam(text: str, index: int) -> None:
    source = resolve_source(text)
    assert source == Source(images=[], videos=[], webcam=index)


def _media_folder(root: Path) -> Path:
    folder = root / "media"
    folder.mkdir()
    for name in ("c.png", "a.jpg", "B.JPEG", "d.bmp"):
        assert cv2.imwrite(str(folder / name), _pattern())
    _write_video(folder / "clip.mp4")
    (folder / "notes.txt").write_text("not media")
    (folder / "labels.json").write_text("{}")
    (folder / "sub").mkdir()  # not recursive
    assert cv2.imwrite(str(folder / "sub" / "inner.jpg"), _pattern())
    return folder


def test_resolve_source_folder(tmp_path: Path) -> None:
    folder = _media_folder(tmp_path)
    source = resolve_source(str(folder))
    names = [Path(p).name for p in source.images]
    assert names == sorted(["c.png", "a.jpg", "B.JPEG", "d.bmp"])
    assert source.images == sorted(source.images)
    assert [Path(p).name for p in source.videos] == ["clip.mp4"]
    assert source.webcam is None
    for p in source.images + source.videos:
        assert Path(p).parent == folder  # full paths, usable directly
        assert Path(p).is_file()


def test_resolve_source_glob(tmp_path: Path) -> None:
    folder = _media_folder(tmp_path)
    source = resolve_source(str(folder / "*.p*g"))
    assert [Path(p).name for p in source.images] == ["c.png"]
    assert source.videos == [] and source.webcam is None

    everything = resolve_source(str(folder / "*"))
    assert [Path(p).name for p in everything.images] == sorted(
        ["c.png", "a.jpg", "B.JPEG", "d.bmp"]
    )
    assert [Path(p).name for p in everything.videos] == ["clip.mp4"]

    recursive = resolve_source(str(folder / "**" / "*.jpg"))
    assert sorted(Path(p).name for p in recursive.images) == ["a.jpg", "inner.jpg"]


def test_resolve_source_glob_without_matches(tmp_path: Path) -> None:
    folder = _media_folder(tmp_path)
    pattern = str(folder / "*.gif")
    with pytest.raises(SourceError) as excinfo:
        resolve_source(pattern)
    assert pattern in str(excinfo.value)
    txt_only = str(folder / "*.txt")  # matches files, but no media
    with pytest.raises(SourceError):
        resolve_source(txt_only)


def test_resolve_source_single_video(tmp_path: Path) -> None:
    path = tmp_path / "Clip.MP4"
    _write_video(path)
    assert resolve_source(str(path)) == Source(videos=[str(path)])


def test_resolve_source_single_image(tmp_path: Path) -> None:
    path = tmp_path / "pic.jpg"
    assert cv2.imwrite(str(path), _pattern())
    assert resolve_source(str(path)) == Source(images=[str(path)])
    # An odd extension is still tried as an image (and reported later if it is not one).
    odd = tmp_path / "pic.data"
    odd.write_bytes(path.read_bytes())
    assert resolve_source(str(odd)) == Source(images=[str(odd)])


@pytest.mark.parametrize("name", ["bus[1].jpg", "photos [2020]/bus.jpg"])
def test_resolve_source_existing_file_with_glob_characters(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    assert cv2.imwrite(str(path), _pattern())
    assert resolve_source(str(path)) == Source(images=[str(path)])


def test_resolve_source_missing_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "does_not_exist.jpg")
    with pytest.raises(SourceError) as excinfo:
        resolve_source(missing)
    assert missing in str(excinfo.value)
    assert "no such file" in str(excinfo.value)


def test_resolve_source_empty_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError) as excinfo:
        resolve_source(str(empty))
    assert str(empty) in str(excinfo.value)


def test_resolve_source_folder_without_media(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "readme.txt").write_text("hi")
    with pytest.raises(SourceError) as excinfo:
        resolve_source(str(folder))
    assert str(folder) in str(excinfo.value)


# --------------------------------------------------------------------------- open_video


def test_open_video_reads_properties(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    _write_video(path, frames=6, size=(64, 48))
    cap, fps, size, count = open_video(str(path))
    try:
        assert cap.isOpened()
        assert size == (64, 48)
        assert fps == pytest.approx(10.0, rel=0.05)
        assert count == 6
        ok, frame = cap.read()
        assert ok and frame.shape == (48, 64, 3)
    finally:
        cap.release()


@pytest.mark.parametrize("content", [b"", b"this is text, not a video\n" * 50])
def test_open_video_non_video_raises(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fake.mp4"
    path.write_bytes(content)
    with pytest.raises(SourceError) as excinfo:
        open_video(str(path))
    assert str(path) in str(excinfo.value)


def test_open_video_text_file_without_video_extension(tmp_path: Path) -> None:
    path = tmp_path / "still.txt"
    path.write_text("plain text file")
    with pytest.raises(SourceError) as excinfo:
        open_video(str(path))
    assert str(path) in str(excinfo.value)


def test_open_video_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.mp4"
    with pytest.raises(SourceError) as excinfo:
        open_video(str(path))
    assert str(path) in str(excinfo.value)


# --------------------------------------------------------------------------- increment_path


def test_increment_path_free_path_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "predict"
    assert increment_path(target) == target
    assert increment_path(str(target)) == target  # str accepted, Path returned
    numbered = tmp_path / "predict2"  # a free name ending in a digit is not counted up either
    assert increment_path(numbered) == numbered
    assert not target.exists()  # it only names a path, it creates nothing


def test_increment_path_counts_up(tmp_path: Path) -> None:
    target = tmp_path / "predict"
    target.mkdir()
    assert increment_path(target) == tmp_path / "predict2"
    (tmp_path / "predict2").mkdir()
    (tmp_path / "predict3").write_text("a file also takes the name")
    assert increment_path(target) == tmp_path / "predict4"
    assert not (tmp_path / "predict4").exists()


def test_increment_path_fills_first_gap(tmp_path: Path) -> None:
    (tmp_path / "predict").mkdir()
    (tmp_path / "predict3").mkdir()  # predict2 is free
    assert increment_path(tmp_path / "predict") == tmp_path / "predict2"


def test_increment_path_exist_ok(tmp_path: Path) -> None:
    target = tmp_path / "predict"
    target.mkdir()
    (tmp_path / "predict2").mkdir()
    assert increment_path(target, exist_ok=True) == target


# --------------------------------------------------------------------------- output paths


def test_check_output_path_accepts_what_can_be_written_and_creates_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "old.json").write_text("[]")
    for path in (tmp_path / "new.json", tmp_path / "old.json", tmp_path / "a" / "b" / "c.json"):
        assert check_output_path(path) == path
    for folder in (tmp_path, tmp_path / "new" / "folder"):
        assert check_output_path(folder, folder=True) == folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]  # no probe left
    assert (tmp_path / "old.json").read_text() == "[]"


def test_check_output_path_refuses_with_one_line_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    cases = [
        (Path("/proc/x.json"), False, "cannot write in /proc"),
        (tmp_path / "a_folder", False, "is a folder"),
        (tmp_path / "a_file" / "x.json", False, "a_file is not a folder"),
        (tmp_path / "a_file" / "deeper" / "x.json", False, "a_file is not a folder"),
        (tmp_path / "a_file", True, "exists and is not a folder"),
        (Path("/proc/out"), True, "cannot write in /proc"),
    ]
    for path, folder, problem in cases:
        with pytest.raises(OutputPathError) as excinfo:
            check_output_path(path, folder=folder)
        message = str(excinfo.value)
        assert message.startswith(f"{path}: ") and problem in message, message
        assert "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder"]


def test_write_text_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.json"
    assert write_text_atomic(path, "[1]") == path and path.read_text() == "[1]"
    write_text_atomic(path, "[2]")
    assert path.read_text() == "[2]"
    (tmp_path / "a_folder").mkdir()
    with pytest.raises(OutputPathError, match="a_folder: cannot write"):
        write_text_atomic(tmp_path / "a_folder", "[3]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder", "sub"]  # no .tmp left
    assert list((tmp_path / "a_folder").iterdir()) == []


def test_pictures_are_written_whole_or_not_at_all(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2, 2))
    png = save_figure_atomic(fig, tmp_path / "plots" / "a.png")
    assert png.read_bytes().startswith(b"\x89PNG")
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    with pytest.raises(OutputPathError, match=r"a_file/b\.png: cannot write"):
        save_figure_atomic(fig, blocked / "b.png")
    plt.close(fig)
    image = np.zeros((8, 8, 3), np.uint8)
    assert write_image_atomic(tmp_path / "c.jpg", image).read_bytes().startswith(b"\xff\xd8")
    with pytest.raises(OutputPathError, match=r"d\.gif2: cannot write \.gif2 images"):
        write_image_atomic(tmp_path / "d.gif2", image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "c.jpg", "plots"]
