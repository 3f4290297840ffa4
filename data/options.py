"""The data-source flags many commands share, each declared once.

A command adds the ones it takes with ``utils.config.add_options(parser, DataOptions,
include=(...))``, giving its own default or help where the flag means a little more there
(``defaults=``/``helps=``); a config dataclass reuses one with ``utils.config.shared``.
"""

from __future__ import annotations

from dataclasses import dataclass

from data.formats import LABEL_FORMATS
from data.source import DATA_CHOICES
from utils.config import option
from utils.paths import VOC_ROOT


@dataclass(frozen=True)
class DataOptions:
    """Where labelled images come from."""

    data: str = option("voc", "VOC or the generated demo set", group="data", choices=DATA_CHOICES)
    voc_root: str = option(VOC_ROOT, "folder holding VOC<year>/", group="data")
    sets: str = option(
        "2007:trainval,2012:trainval", "VOC image sets as YEAR:SET pairs", group="data"
    )
    classes: str | None = option(
        None, "class-names file, one name per line (default: the labels' own)", group="data"
    )
    labels: str | None = option(
        None,
        "labels in any format train.py reads (COCO JSON, YOLO folder or data YAML, VOC folder "
        "or image-set file, annotation lines)",
        group="data",
    )
    label_format: str = option(
        "auto", "format of the labels (auto: from the path)", group="data", choices=LABEL_FORMATS
    )
    split: str | None = option(None, "split of the labels (default: all)", group="data")
    images: str | None = option(
        None, "images folder of COCO labels (default: found next to the JSON)", group="data"
    )
