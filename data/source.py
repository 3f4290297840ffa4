"""Which data set a run reads: ``--data voc`` (a VOCdevkit tree) or ``--data demo`` (the
generated shapes), resolved to paths in one place for training, evaluation and the tools."""

from __future__ import annotations

from dataclasses import dataclass

from data.demo import DEMO_CLASSES, DEMO_ROOT, DEMO_VOC_ROOT, demo_is_current, generate_demo
from utils.errors import InputError

DATA_CHOICES = ("voc", "demo")
DEMO_TRAIN_SETS = "2007:trainval"


@dataclass(frozen=True)
class DataSource:
    """Paths of one data set: a VOCdevkit root, its image sets and an optional classes file."""

    voc_root: str
    train_sets: str
    val_set: str
    classes: str | None


def resolve_data_source(
    data: str,
    voc_root: str,
    train_sets: str,
    val_set: str,
    classes: str | None = None,
    generate: bool = True,
) -> DataSource:
    """The paths ``--data`` stands for.

    ``voc`` keeps the given paths. ``demo`` always reads the demo tree and trains on its
    trainval set; ``val_set`` is kept (the demo has test, val and train sets), and so is
    ``classes`` when given (else the demo's classes file). The tree is generated first when it is
    missing or was made with other parameters and ``generate`` is set.

    Raises:
        ValueError: ``data`` is neither ``voc`` nor ``demo``.
    """
    if data == "voc":
        return DataSource(voc_root, train_sets, val_set, classes)
    if data != "demo":
        raise InputError(f"unknown data set {data!r}: choose one of {', '.join(DATA_CHOICES)}")
    if generate and not demo_is_current(DEMO_ROOT):
        generate_demo(DEMO_ROOT)
    return DataSource(str(DEMO_VOC_ROOT), DEMO_TRAIN_SETS, val_set, classes or str(DEMO_CLASSES))
