"""``Detections``: one image's boxes, scores and class ids, from the decoder to the JSON file.

``nets.decode.detect`` returns them in network-input pixels; ``Detections.to_original`` maps
them to the original image (the only place boxes change coordinate frame); ``to_json`` and
``from_json`` write and read the rows of the ``predict.py --json`` format; ``parse_json_rows``
reads and checks any number of such rows at once (``from_json`` for one image, the evaluation's
file reader for all images of a file). Evaluation flattens many ``Detections`` with
``utils.evaluation.metrics.BoxSet.from_detections``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from operator import itemgetter

import numpy as np

from utils.errors import InputError
from utils.preprocess import ResizeMeta, boxes_to_original


@dataclass(frozen=True, eq=False)
class Detections:
    """Detections of one image, sorted by decreasing score.

    The boxes are in the pixel frame of a ``width`` x ``height`` image: the network input (a
    square of the input side) as ``detect`` returns them, the original image after
    ``to_original`` (0-based pixel coordinates, clipped to [0, W-1] x [0, H-1]).

    Attributes:
        boxes: (N, 4) float x1, y1, x2, y2 (float32 from the model, float64 read from JSON).
        scores: (N,) float, objectness * class probability.
        labels: (N,) int64 class ids.
        class_names: names indexed by class id (``names`` falls back to the id).
        width: width of the image the boxes are in (0: unknown).
        height: height of that image (0: unknown).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: Sequence[str] = field(repr=False, default=())
    width: int = 0
    height: int = 0

    @property
    def names(self) -> list[str]:
        """Class name of each detection (its id as text where no name is known)."""
        return [self.class_names[k] if k < len(self.class_names) else str(k) for k in self.labels]

    def __len__(self) -> int:
        return len(self.scores)

    def to_original(self, meta: ResizeMeta) -> Detections:
        """These detections, from network-input pixels to the original image's.

        Args:
            meta: how the original image was resized onto the network input.

        Returns:
            A copy with boxes (N, 4) xyxy in 0-based original pixels, clipped to the image,
            and ``width``, ``height`` of the original image.
        """
        return replace(
            self,
            boxes=boxes_to_original(self.boxes, meta),
            width=meta.width,
            height=meta.height,
        )

    def to_json(self) -> list[dict]:
        """Rows of the ``predict.py --json`` format.

        Returns:
            One dict per detection: ``xyxy`` (4 floats rounded to 0.01), ``score`` (rounded to
            1e-5), ``class_id`` and ``class_name``.
        """
        return [
            {
                "xyxy": [round(float(v), 2) for v in box],
                "score": round(float(score), 5),
                "class_id": int(label),
                "class_name": name,
            }
            for box, score, label, name in zip(self.boxes, self.scores, self.labels, self.names)
        ]

    @classmethod
    def from_json(
        cls,
        rows: Sequence[Mapping],
        *,
        class_names: Sequence[str] = (),
        width: int = 0,
        height: int = 0,
    ) -> Detections:
        """Reads back rows that ``to_json`` wrote, checked by ``parse_json_rows``.

        Args:
            rows: dicts with ``xyxy`` (4 numbers), ``score`` and ``class_id`` (``class_name``
                is not read).
            class_names: names by class id for the result (ids beyond them stay valid, as
                for any ``Detections``).
            width: width of the image the boxes are in.
            height: height of that image.

        Returns:
            The detections with boxes (N, 4) float64 xyxy, scores (N,) float64 and labels (N,)
            int64, in the order of ``rows``.

        Raises:
            ValueError: rows that ``parse_json_rows`` rejects, with their counts and first
                positions in ``rows``. What it only warns about is accepted silently.
        """
        parsed = parse_json_rows(rows)
        errors = [p.describe(p.rows, "row") for p in parsed.problems if p.error]
        if errors:
            raise InputError("; ".join(errors))
        return cls(
            boxes=parsed.boxes,
            scores=parsed.scores,
            labels=parsed.labels,
            class_names=class_names,
            width=width,
            height=height,
        )


# the types json.loads gives JSON numbers; str, bool and None in a numeric field are refused
_NUMBER_TYPES = frozenset((int, float))
_PLACEHOLDER_BOX = [0.0, 0.0, 0.0, 0.0]  # stands in for a rejected xyxy so that it is counted once
SHOWN_POSITIONS = 5  # positions listed in a problem's message


@dataclass(frozen=True, eq=False)
class RowProblem:
    """Rows of detections that share one defect.

    Attributes:
        what: the defect, as it follows "N detections" in a message ("with a NaN coordinate").
        rows: positions of those rows in the parsed sequence, increasing.
        error: True when the rows cannot be scored as given; False when they were read
            anyway in the way ``what`` says.
    """

    what: str
    rows: np.ndarray
    error: bool = True

    def describe(self, places: np.ndarray, noun: str) -> str:
        """``"3 detections with a NaN coordinate (records 4, 17, 90)"``.

        Args:
            places: where each of ``rows`` is, in the caller's numbering (e.g. its record).
            noun: what ``places`` counts, singular ("record", "row").
        """
        where = list_positions(places, noun)
        return f"{count_of(len(self.rows), 'detection')} {self.what} ({where})"


def count_of(count: int, noun: str) -> str:
    """``"1 record"``, ``"3 records"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def list_positions(places: Sequence[int] | np.ndarray, noun: str) -> str:
    """``"record 4"``, ``"records 4, 17, 90, ..."``: the first distinct ``places``, in their
    order, after ``noun`` (singular)."""
    distinct = list(dict.fromkeys(np.asarray(places).tolist()))
    shown = ", ".join(map(str, distinct[:SHOWN_POSITIONS]))
    more = ", ..." if len(distinct) > SHOWN_POSITIONS else ""
    return f"{noun}{'' if len(distinct) == 1 else 's'} {shown}{more}"


@dataclass(frozen=True, eq=False)
class ParsedRows:
    """``parse_json_rows``'s result: flat arrays in row order and the problems found.

    Rows with an error hold placeholders (zeros) in the arrays, so the arrays are only
    meaningful when no problem is an error.
    """

    boxes: np.ndarray  # (N, 4) float64 xyxy
    scores: np.ndarray  # (N,) float64
    labels: np.ndarray  # (N,) int64
    problems: list[RowProblem]


def _numbers(values: list) -> tuple[np.ndarray, np.ndarray]:
    """The values as float64 (an int beyond the float range: +-inf), and a mask of those
    that are not JSON numbers (str, bool, null, list, object), which read as 0."""
    n = len(values)
    try:
        # sum() takes numbers only (bools included) and runs in C; np.fromiter would convert
        # "1.5" and True. A bool reads as 0 or 1, so only those values are looked at one by one.
        sum(values)
        floats = np.fromiter(values, np.float64, n)
        maybe_bool = np.flatnonzero((floats == 0) | (floats == 1)).tolist()
        if bool not in set(map(type, map(values.__getitem__, maybe_bool))):
            return floats, np.zeros(n, bool)
    except (TypeError, OverflowError):
        pass
    bad = np.fromiter((type(v) not in _NUMBER_TYPES for v in values), bool, n)
    numbers = [0 if b else v for v, b in zip(values, bad)]
    floats = [
        v if type(v) is float or abs(v) < 2**1024 else (np.inf if v > 0 else -np.inf)
        for v in numbers
    ]
    return np.array(floats, np.float64).reshape(n), bad


def _class_ids(values: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int64 class ids, and masks of the values that are not integers (error) and of the
    integral floats such as 2.0 (read as the integer)."""
    n = len(values)
    if set(map(type, values)) <= {int}:
        try:
            return np.fromiter(values, np.int64, n), np.zeros(n, bool), np.zeros(n, bool)
        except OverflowError:
            pass
    ids = np.full(n, -1, np.int64)
    bad, as_float = np.zeros(n, bool), np.zeros(n, bool)
    for i, v in enumerate(values):
        if type(v) is int and -(2**63) <= v < 2**63:
            ids[i] = v
        elif type(v) is float and v.is_integer() and -(2**63) <= v < 2**63:
            ids[i], as_float[i] = int(v), True
        else:
            bad[i] = True
    return ids, bad, as_float


def _name_problems(
    names: list, ids: np.ndarray, checked: np.ndarray, class_names: Sequence[str]
) -> list[RowProblem]:
    """Rows whose ``class_name`` (when given) is not ``class_names[class_id]``. The id as
    text also agrees: ``to_json`` writes it where the writer knew no names."""
    known = [str(n) for n in class_names]
    id_list = ids.tolist()
    if checked.all() and (
        names == list(map(known.__getitem__, id_list)) or names == list(map(str, id_list))
    ):
        return []
    position = {name: k for k, name in reversed(list(enumerate(known)))}
    unknown, contradicts = [], []
    for i, (name, ok, k) in enumerate(zip(names, checked.tolist(), id_list)):
        if name is None or not ok or name == known[k] or name == str(k):
            continue
        (contradicts if isinstance(name, str) and name in position else unknown).append(i)
    problems = []
    if unknown:
        problems.append(
            RowProblem("with a class_name that is not one of the classes", np.array(unknown))
        )
    if contradicts:
        problems.append(
            RowProblem("with the class_name of another class_id", np.array(contradicts))
        )
    return problems


def parse_json_rows(rows: Sequence, class_names: Sequence[str] = ()) -> ParsedRows:
    """Reads and checks detection rows of the ``predict.py --json`` format, all at once.

    Errors (rows that cannot be scored as given): not an object with ``xyxy``, ``score``
    and ``class_id``; ``xyxy`` not a list of exactly 4 numbers; a NaN or infinite
    coordinate; x2 < x1 or y2 < y1 (equal is a 1-pixel box); a score that is not a number,
    NaN or infinite, or outside [0, 1]; a class id that is not an integer or is negative;
    with ``class_names``, a class id outside them, and a ``class_name`` that is not in them
    or names another class id (the id as text, as written without names, agrees with it).
    A JSON number is an int or a float: strings, booleans and null are not converted.

    Warnings (read anyway): a class id written as an integral float (2.0) is read as that
    integer.

    The checks run on whole arrays; per-row Python runs only where a check failed.

    Args:
        rows: dicts with ``xyxy``, ``score``, ``class_id``, optionally ``class_name``.
        class_names: the classes the ids index (empty: ids are not bounded above, names are
            not checked).

    Returns:
        The arrays and the problems, with row positions in ``rows``.
    """
    problems = _Problems()
    xyxy, scores, ids, malformed = _fields(rows)
    problems.flag("lacking xyxy, score or class_id", malformed)
    boxes = _check_boxes(xyxy, problems)
    score_values = _check_scores(scores, problems)
    labels, not_int, out_of_range = _check_class_ids(ids, class_names, problems)
    if class_names:
        try:  # every row is a dict here unless one is malformed
            names = list(map(itemgetter("class_name"), rows))
        except (KeyError, TypeError, IndexError):
            names = [r.get("class_name") if type(r) is dict else None for r in rows]
        checked = ~(malformed | not_int | out_of_range)
        problems += _name_problems(names, labels, checked, class_names)
    return ParsedRows(boxes, score_values, labels, list(problems))


class _Problems(list):
    """The ``RowProblem``s found so far."""

    def flag(self, what: str, mask: np.ndarray, error: bool = True) -> None:
        """Adds a problem for the rows of ``mask``, if any."""
        if mask.any():
            self.append(RowProblem(what, np.flatnonzero(mask), error))


def _fields(rows: Sequence) -> tuple[list, list, list, np.ndarray]:
    """Each row's ``xyxy``, ``score`` and ``class_id``, and the mask of the rows that are not
    objects holding all three (which get placeholders)."""
    n = len(rows)
    try:
        xyxy = list(map(itemgetter("xyxy"), rows))
        scores = list(map(itemgetter("score"), rows))
        ids = list(map(itemgetter("class_id"), rows))
        return xyxy, scores, ids, np.zeros(n, bool)
    except (KeyError, TypeError, IndexError):
        pass
    malformed = np.fromiter(
        (not (isinstance(r, Mapping) and {"xyxy", "score", "class_id"} <= r.keys()) for r in rows),
        bool,
        n,
    )
    xyxy = [_PLACEHOLDER_BOX if m else r["xyxy"] for r, m in zip(rows, malformed)]
    scores = [0.0 if m else r["score"] for r, m in zip(rows, malformed)]
    ids = [0 if m else r["class_id"] for r, m in zip(rows, malformed)]
    return xyxy, scores, ids, malformed


def _check_boxes(xyxy: list, problems: _Problems) -> np.ndarray:
    """(N, 4) float64 boxes; rows whose box is not 4 numbers hold zeros."""
    n = len(xyxy)
    if not (set(map(type, xyxy)) <= {list} and set(map(len, xyxy)) <= {4}):
        shape_ok = np.fromiter((type(b) is list and len(b) == 4 for b in xyxy), bool, n)
        xyxy = [b if ok else _PLACEHOLDER_BOX for b, ok in zip(xyxy, shape_ok)]
        problems.flag("with an xyxy that is not a list of 4 numbers", ~shape_ok)
    boxes, coord_type = _numbers(list(chain.from_iterable(xyxy)))
    boxes, coord_type = boxes.reshape(n, 4), coord_type.reshape(n, 4).any(1)
    boxes[coord_type] = 0  # reported once, as not a number
    problems.flag("with a coordinate that is not a number", coord_type)
    finite = np.isfinite(boxes).all(1)
    problems.flag("with a NaN or infinite coordinate", ~finite)
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    problems.flag("with x2 < x1 or y2 < y1", finite & inverted)
    return boxes


def _check_scores(scores: list, problems: _Problems) -> np.ndarray:
    """(N,) float64 scores, each a number in [0, 1] unless flagged."""
    values, not_number = _numbers(scores)
    problems.flag("with a score that is not a number", not_number)
    finite = np.isfinite(values)
    problems.flag("with a NaN or infinite score", ~finite)
    problems.flag("with a score outside [0, 1]", finite & ((values < 0) | (values > 1)))
    return values


def _check_class_ids(
    ids: list, class_names: Sequence[str], problems: _Problems
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int64 class ids, and the masks of those that are not integers and of those out of
    range (below 0, or past ``class_names`` when there are names)."""
    labels, not_int, as_float = _class_ids(ids)
    problems.flag("with a class_id that is not an integer", not_int)
    problems.flag(
        "with a class_id written as a float (read as the integer it equals)", as_float, False
    )
    out_of_range = ~not_int & ((labels < 0) | (bool(class_names) & (labels >= len(class_names))))
    what = f"outside 0..{len(class_names) - 1}" if class_names else "below 0"
    problems.flag(f"with a class_id {what}", out_of_range)
    return labels, not_int, out_of_range
