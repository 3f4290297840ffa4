"""Where the project's files live, spelled once.

``model_data`` paths are absolute (found from this file), so the library works from any working
directory; ``VOC_ROOT`` is relative, a default the user reads in ``--help``.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_DATA = ROOT / "model_data"
OFFICIAL_WEIGHTS = MODEL_DATA / "yolov4-tiny.weights"  # darknet COCO weights (`make weights`)
OFFICIAL_CFG = MODEL_DATA / "yolov4-tiny.cfg"
COCO_CLASSES = MODEL_DATA / "coco.names"
VOC_CLASSES = MODEL_DATA / "voc_classes.txt"
SAMPLES = MODEL_DATA / "samples"  # bus.jpg and zidane.jpg (`make weights`)

VOC_ROOT = "data/VOCdevkit"  # where tools.download_voc puts Pascal VOC
