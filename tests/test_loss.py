"""YOLO targets and loss: edge cases, a brute-force reference for the vectorised
target builder, the ignore rule, label smoothing, weights and the focal option."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nets.decode import SCALE_X_Y, Geometry
from nets.yolo import DEFAULT_ANCHORS, DEFAULT_ANCHORS_MASK
from utils.training.loss import LossConfig, YoloLoss, build_targets

SIZE = 416
NUM_CLASSES = 3
STRIDES = (32, 16)


def _loss(cfg: LossConfig | None = None, input_size: int = SIZE, num_classes: int = NUM_CLASSES):
    geometry = Geometry(
        anchors=DEFAULT_ANCHORS, anchors_mask=DEFAULT_ANCHORS_MASK, input_size=input_size
    )
    return YoloLoss(num_classes, geometry, cfg=cfg)


def _maps(batch: int, seed: int = 0, num_classes: int = NUM_CLASSES, size: int = SIZE):
    """Random raw maps, stride 32 then stride 16: (B, 3*(5+C), S/s, S/s)."""
    gen = torch.Generator().manual_seed(seed)
    ch = 3 * (5 + num_classes)
    return [torch.randn(batch, ch, size // s, size // s, generator=gen) for s in STRIDES]


def _ch(slot: int, k: int, num_classes: int = NUM_CLASSES) -> int:
    """Channel of component k (0-3 box, 4 objectness, 5+ classes) of anchor slot ``slot``."""
    return slot * (5 + num_classes) + k


def _box(cx: float, cy: float, w: float, h: float) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _targets(rows: list[tuple[int, int, list[float]]]) -> torch.Tensor:
    """(M, 6) from (image, class, xyxy) rows, as ``data.dataset.collate`` gives them."""
    if not rows:
        return torch.zeros(0, 6)
    return torch.tensor([[b, c, *xyxy] for b, c, xyxy in rows], dtype=torch.float32)


def _bce_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise BCE-with-logits by hand (float64), summed."""
    x = logits.double()
    return (F.softplus(x) - target.double() * x).sum()


# ---------------------------------------------------------------- 1-2: empty and one GT


def test_empty_targets_give_zero_box_and_class_loss() -> None:
    losses = _loss()(_maps(2), torch.zeros(0, 6))
    assert losses["loss_box"].item() == 0.0
    assert losses["loss_cls"].item() == 0.0
    assert losses["loss_obj"].item() > 0
    parts = losses["loss_box"] + losses["loss_obj"] + losses["loss_cls"]
    assert losses["loss"].item() == parts.item()


def test_one_box_gives_positive_losses_and_gradients() -> None:
    maps = [m.requires_grad_() for m in _maps(2)]
    # 135x169 -> anchor 4 -> level 0 (stride 32) slot 1, centre (100, 120) -> cell (3, 3).
    targets = _targets([(1, 2, _box(100, 120, 135, 169))])
    losses = _loss()(maps, targets)
    for key in ("loss_box", "loss_obj", "loss_cls", "loss"):
        assert losses[key].item() > 0, key
    parts = losses["loss_box"] + losses["loss_obj"] + losses["loss_cls"]
    torch.testing.assert_close(losses["loss"], parts)
    losses["loss"].backward()
    grad = maps[0].grad
    assert grad is not None and all(torch.isfinite(m.grad).all() for m in maps)
    for k in range(5 + NUM_CLASSES):  # box, objectness and every class logit get a gradient
        assert grad[1, _ch(1, k), 3, 3] != 0, k
    # The same cell of the other image is a plain negative: objectness only.
    assert grad[0, _ch(1, 4), 3, 3] != 0
    assert (grad[0, _ch(1, 0) : _ch(1, 4), 3, 3] == 0).all()


def test_degenerate_and_thin_boxes_give_finite_losses() -> None:
    maps = [m.requires_grad_() for m in _maps(2, seed=3)]
    targets = _targets(
        [
            (0, 0, [50.0, 60.0, 50.0, 160.0]),  # zero width
            (0, 1, [70.0, 80.0, 170.0, 80.0]),  # zero height
            (1, 2, [200.0, 100.0, 204.0, 300.0]),  # 4 px wide: anchor 2, a positive
        ]
    )
    losses = _loss()(maps, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box"].item() > 0
    losses["loss"].backward()
    assert all(torch.isfinite(m.grad).all() for m in maps)


# ---------------------------------------------------------------- 3: vectorised == loop


def _shape_iou_py(wh_a: tuple[float, float], wh_b: tuple[float, float]) -> float:
    inter = min(wh_a[0], wh_b[0]) * min(wh_a[1], wh_b[1])
    return inter / (wh_a[0] * wh_a[1] + wh_b[0] * wh_b[1] - inter)


def _build_targets_loop(targets: torch.Tensor, input_size: int) -> tuple[list[set], int]:
    """Sequential reference: per GT in order, best of all 6 anchors by shape IoU; on each level
    whose mask holds it, the cell of the centre (clamped); a later GT overwrites the slot.
    Returns per level the set of (batch, slot, gy, gx, class, box) and the number of writes."""
    levels: list[dict] = [{} for _ in DEFAULT_ANCHORS_MASK]
    writes = 0
    for b, cls, x1, y1, x2, y2 in targets.tolist():
        wh = (max(x2 - x1, 1e-6), max(y2 - y1, 1e-6))
        ious = [_shape_iou_py(wh, a) for a in DEFAULT_ANCHORS]
        best = ious.index(max(ious))
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        for level, (mask, stride) in enumerate(zip(DEFAULT_ANCHORS_MASK, STRIDES)):
            if best not in mask:
                continue
            grid = input_size // stride
            gx = min(max(math.floor(cx * grid / input_size), 0), grid - 1)
            gy = min(max(math.floor(cy * grid / input_size), 0), grid - 1)
            levels[level][(int(b), mask.index(best), gy, gx)] = (int(cls), (x1, y1, x2, y2))
            writes += 1
    sets = [{(*key, cls, box) for key, (cls, box) in level.items()} for level in levels]
    return sets, writes


def _random_targets(gen: torch.Generator, batch: int, input_size: int) -> torch.Tensor:
    """0-30 boxes per image; half of the centres on a few cell centres (shared cells), half of
    the sizes near an anchor (shared slots); some boxes leave the image (clamped cells)."""

    def rand() -> float:
        return torch.rand((), generator=gen).item()

    rows = []
    for b in range(batch):
        for _ in range(int(torch.randint(0, 31, (), generator=gen))):
            if rand() < 0.5:
                cx = (int(rand() * 3) + 0.5) * 32 + (rand() - 0.5) * 8
                cy = (int(rand() * 3) + 0.5) * 32 + (rand() - 0.5) * 8
            else:
                cx, cy = rand() * input_size * 1.1, rand() * input_size * 1.1
            if rand() < 0.5:
                aw, ah = DEFAULT_ANCHORS[int(rand() * 6)]
                w, h = aw * (0.9 + 0.2 * rand()), ah * (0.9 + 0.2 * rand())
            else:
                w, h = 2 + rand() * input_size, 2 + rand() * input_size
            rows.append((b, int(rand() * 20), _box(cx, cy, w, h)))
    return _targets(rows)


@pytest.mark.parametrize("input_size", [416, 320])
def test_build_targets_matches_python_loop(input_size: int) -> None:
    gen = torch.Generator().manual_seed(input_size)
    anchors = torch.tensor(DEFAULT_ANCHORS, dtype=torch.float32)
    grids = [(input_size // s, input_size // s) for s in STRIDES]
    total_writes = total_kept = outside = 0
    for _ in range(10):
        batch = int(torch.randint(1, 9, (), generator=gen))
        targets = _random_targets(gen, batch, input_size)
        levels = build_targets(targets, anchors, DEFAULT_ANCHORS_MASK, grids, input_size)
        expected, writes = _build_targets_loop(targets, input_size)
        for level, exp in zip(levels, expected):
            got = {
                (b, a, gy, gx, c, tuple(box))
                for b, a, gy, gx, c, box in zip(
                    level.batch.tolist(),
                    level.anchor.tolist(),
                    level.gy.tolist(),
                    level.gx.tolist(),
                    level.labels.tolist(),
                    level.boxes.tolist(),
                )
            }
            assert len(got) == len(level.batch)  # no slot assigned twice
            assert got == exp
            total_kept += len(exp)
        total_writes += writes
        centres = (targets[:, 2:4] + targets[:, 4:6]) / 2
        outside += int((centres >= input_size).any(1).sum())
    # The data did exercise overwriting and clamping.
    assert total_writes > total_kept > 0
    assert outside > 0


# ---------------------------------------------------------------- 4: masks


def test_shared_anchor_is_positive_on_both_levels_and_anchor_0_on_none() -> None:
    anchors = torch.tensor(DEFAULT_ANCHORS, dtype=torch.float32)
    grids = [(13, 13), (26, 26)]
    shared = _targets([(0, 1, _box(200, 300, 81, 82))])  # best anchor 3
    lv0, lv1 = build_targets(shared, anchors, DEFAULT_ANCHORS_MASK, grids, SIZE)
    assert (lv0.anchor.tolist(), lv0.gy.tolist(), lv0.gx.tolist()) == ([0], [9], [6])
    assert (lv1.anchor.tolist(), lv1.gy.tolist(), lv1.gx.tolist()) == ([2], [18], [12])

    unused = _targets([(0, 1, _box(200, 300, 10, 14))])  # best anchor 0
    assert all(
        len(level.batch) == 0
        for level in build_targets(unused, anchors, DEFAULT_ANCHORS_MASK, grids, SIZE)
    )
    losses = _loss(LossConfig(anchor_fallback=False))(_maps(1), unused)
    assert losses["loss_box"].item() == 0.0 and losses["loss_cls"].item() == 0.0


def test_fallback_gives_an_anchor_0_box_the_best_anchor_a_head_predicts() -> None:
    anchors = torch.tensor(DEFAULT_ANCHORS, dtype=torch.float32)
    grids = [(13, 13), (26, 26)]
    # 10x14 is anchor 0 exactly; of the used anchors 1 (23x27) fits best (IoU 140/621)
    unused = _targets([(0, 1, _box(200, 300, 10, 14)), (0, 2, _box(100, 100, 81, 82))])
    lv0, lv1 = build_targets(unused, anchors, DEFAULT_ANCHORS_MASK, grids, SIZE, fallback=True)
    assert lv0.anchor.tolist() == [0]  # the 81x82 box: anchor 3, slot 0 on stride 32
    assert sorted(zip(lv1.anchor.tolist(), lv1.labels.tolist())) == [(0, 1), (2, 2)]
    # boxes whose best anchor a head predicts are assigned exactly as without the fallback
    used = _targets([(0, 1, _box(200, 300, 81, 82))])
    with_fb = build_targets(used, anchors, DEFAULT_ANCHORS_MASK, grids, SIZE, fallback=True)
    without = build_targets(used, anchors, DEFAULT_ANCHORS_MASK, grids, SIZE)
    for a, b in zip(with_fb, without):
        assert a.anchor.tolist() == b.anchor.tolist() and a.gx.tolist() == b.gx.tolist()
    losses = _loss(LossConfig(anchor_fallback=True))(_maps(1), unused[:1])
    assert losses["loss_box"].item() > 0.0 and losses["loss_cls"].item() > 0.0


# ---------------------------------------------------------------- 5: ignore rule


def _ignore_case(gt_image: int, pred_image: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One 81x82 GT centred (200, 200) (anchor 3: positives at level 0 slot 0 cell (6, 6) and
    level 1 slot 2 cell (12, 12)). Every predicted box is tiny except level 1, slot 0 (anchor
    1, a negative) at cell (12, 13) of ``pred_image``: 81x82 centred (216, 200), IoU 65/97;
    and the two positives, which predict the anchor (IoU 1 and 0.69 with the GT) and must
    stay in the objectness loss all the same."""
    maps = _maps(2, seed=5)
    for m in maps:
        for slot in range(3):
            m[:, _ch(slot, 0) : _ch(slot, 2)] = 0.0
            m[:, _ch(slot, 2) : _ch(slot, 4)] = -10.0  # boxes of ~1e-3 px: IoU ~ 0
    maps[1][pred_image, _ch(0, 2), 12, 13] = math.log(81 / 23)
    maps[1][pred_image, _ch(0, 3), 12, 13] = math.log(82 / 27)
    maps[0][gt_image, _ch(0, 2) : _ch(0, 4), 6, 6] = 0.0
    maps[1][gt_image, _ch(2, 2) : _ch(2, 4), 12, 12] = 0.0
    return maps, _targets([(gt_image, 0, _box(200, 200, 81, 82))])


def test_ignore_rule_drops_overlapping_negative_of_same_image() -> None:
    maps, targets = _ignore_case(gt_image=0, pred_image=0)
    ignoring = _loss(LossConfig(ignore_thresh=0.5))(maps, targets)["loss_obj"]
    keeping = _loss(LossConfig(ignore_thresh=1.0))(maps, targets)["loss_obj"]

    # By hand: objectness target 1 at the two positives, 0 elsewhere; mean BCE per level.
    obj = [m[:, _ch(0, 4) :: 5 + NUM_CLASSES] for m in maps]  # (B, 3, H, W) objectness logits
    goal = [torch.zeros_like(o) for o in obj]
    goal[0][0, 0, 6, 6] = 1.0
    goal[1][0, 2, 12, 12] = 1.0
    weight = 5.0  # obj_weight * 416^2 / 416^2
    level0 = 0.4 * _bce_sum(obj[0], goal[0]) / obj[0].numel()
    sum1, n1 = _bce_sum(obj[1], goal[1]), obj[1].numel()
    cell = _bce_sum(obj[1][0, 0, 12, 13], goal[1][0, 0, 12, 13])
    expected_keep = weight * (level0 + sum1 / n1)
    expected_ignore = weight * (level0 + (sum1 - cell) / (n1 - 1))
    torch.testing.assert_close(keeping.double(), expected_keep, rtol=1e-5, atol=0)
    torch.testing.assert_close(ignoring.double(), expected_ignore, rtol=1e-5, atol=0)
    torch.testing.assert_close(
        (keeping - ignoring).double(), expected_keep - expected_ignore, rtol=1e-3, atol=1e-7
    )
    assert keeping != ignoring


@pytest.mark.parametrize(("gt_image", "pred_image"), [(1, 0), (0, 1)])
def test_ignore_rule_ignores_gts_of_other_images(gt_image: int, pred_image: int) -> None:
    maps, targets = _ignore_case(gt_image, pred_image)
    ignoring = _loss(LossConfig(ignore_thresh=0.5))(maps, targets)["loss_obj"]
    keeping = _loss(LossConfig(ignore_thresh=1.0))(maps, targets)["loss_obj"]
    assert ignoring.item() == keeping.item()


# ---------------------------------------------------------------- 6: label smoothing


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_label_smoothing_matches_formula(eps: float) -> None:
    num_classes = 4
    maps = _maps(1, num_classes=num_classes)
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    # 135x169 -> anchor 4 only: level 0 slot 1, cell (3, 3); class 2.
    maps[0][0, _ch(1, 5, num_classes) : _ch(2, 0, num_classes), 3, 3] = logits
    targets = _targets([(0, 2, _box(100, 120, 135, 169))])
    cfg = LossConfig(label_smoothing=eps, cls_weight=1.5)
    loss_cls = _loss(cfg, num_classes=num_classes)(maps, targets)["loss_cls"]

    y = torch.tensor([0.0, 0.0, 1.0, 0.0])
    smooth = y * (1 - eps) + eps / num_classes
    p = torch.sigmoid(logits.double())
    bce = -(smooth * p.log() + (1 - smooth) * (1 - p).log()).mean()
    expected = 1.5 * num_classes / 80 * bce
    torch.testing.assert_close(loss_cls.double(), expected, rtol=1e-6, atol=0)


def test_label_smoothing_known_value_and_its_minimum() -> None:
    """Four classes, eps 0.2: a class-2 box's targets are eps / C = 0.05 for the other classes
    and 1 - eps + eps / C = 0.85 for its own (not the C-free 0.1 / 0.9 of ``1 - eps / 2``).
    Predicting exactly those is the minimum of the smoothed loss, where its value is the mean
    binary entropy (3 H(0.05) + H(0.85)) / 4 = 0.2545637; the same prediction without
    smoothing costs (3 (-ln 0.95) - ln 0.85) / 4 = 0.0790997 and is pulled towards 0 and 1."""
    num_classes = 4
    maps = _maps(1, num_classes=num_classes)
    cls = slice(_ch(1, 5, num_classes), _ch(2, 0, num_classes))  # slot 1's class logits
    maps[0][0, cls, 3, 3] = torch.tensor([_logit(0.05), _logit(0.05), _logit(0.85), _logit(0.05)])
    maps = [m.requires_grad_() for m in maps]
    targets = _targets([(0, 2, _box(100, 120, 135, 169))])  # level 0 slot 1, cell (3, 3)
    unit = 80.0 / num_classes  # cls_weight is scaled by C / 80: this makes it 1

    smoothed = _loss(LossConfig(cls_weight=unit, label_smoothing=0.2), num_classes=num_classes)
    loss = smoothed(maps, targets)["loss_cls"]
    assert loss.item() == pytest.approx(0.2545637, rel=1e-6)
    loss.backward()
    assert maps[0].grad[0, cls, 3, 3].abs().max().item() < 1e-6  # the minimum

    maps[0].grad = None
    plain = _loss(LossConfig(cls_weight=unit), num_classes=num_classes)(maps, targets)["loss_cls"]
    assert plain.item() == pytest.approx(0.0790997, rel=1e-6)
    plain.backward()
    # d/dx of the mean BCE is (p - y) / C
    expected = torch.tensor([0.05, 0.05, -0.15, 0.05]) / num_classes
    torch.testing.assert_close(maps[0].grad[0, cls, 3, 3], expected, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- 7: perfect predictions


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_perfect_predictions_score_lower_than_random() -> None:
    targets = _targets(
        [
            (0, 0, _box(100, 120, 135, 169)),  # anchor 4
            (0, 1, _box(300, 290, 23, 27)),  # anchor 1
            (0, 2, _box(250, 150, 81, 82)),  # anchor 3, both levels
            (1, 1, _box(208, 200, 344, 319)),  # anchor 5
            (1, 0, _box(60, 380, 37, 58)),  # anchor 2
        ]
    )
    anchors = torch.tensor(DEFAULT_ANCHORS, dtype=torch.float32)
    grids = [(SIZE // s, SIZE // s) for s in STRIDES]
    levels = build_targets(targets, anchors, DEFAULT_ANCHORS_MASK, grids, SIZE)
    assert sum(len(level.batch) for level in levels) == 6

    perfect = [torch.zeros(2, 3 * (5 + NUM_CLASSES), h, w) for h, w in grids]
    for m in perfect:
        for slot in range(3):
            m[:, _ch(slot, 4)] = -15.0
            m[:, _ch(slot, 5) : _ch(slot + 1, 0)] = -15.0
    s = SCALE_X_Y
    for m, mask, stride, level in zip(perfect, DEFAULT_ANCHORS_MASK, STRIDES, levels):
        for b, a, gy, gx, box, c in zip(
            level.batch.tolist(),
            level.anchor.tolist(),
            level.gy.tolist(),
            level.gx.tolist(),
            level.boxes.tolist(),
            level.labels.tolist(),
        ):
            x1, y1, x2, y2 = box
            # Invert cx = (sigmoid(tx) * s - (s - 1) / 2 + gx) * stride, w = exp(tw) * anchor_w.
            sig_x = ((x1 + x2) / 2 / stride - gx + (s - 1) / 2) / s
            sig_y = ((y1 + y2) / 2 / stride - gy + (s - 1) / 2) / s
            aw, ah = DEFAULT_ANCHORS[mask[a]]
            m[b, _ch(a, 0), gy, gx] = _logit(sig_x)
            m[b, _ch(a, 1), gy, gx] = _logit(sig_y)
            m[b, _ch(a, 2), gy, gx] = math.log((x2 - x1) / aw)
            m[b, _ch(a, 3), gy, gx] = math.log((y2 - y1) / ah)
            m[b, _ch(a, 4), gy, gx] = 15.0
            m[b, _ch(a, 5 + c), gy, gx] = 15.0

    loss = _loss()
    good, bad = loss(perfect, targets), loss(_maps(2, seed=7), targets)
    for key in ("loss_box", "loss_obj", "loss_cls", "loss"):
        assert good[key] < bad[key], key
    assert good["loss_box"].item() < 1e-5
    assert good["loss_obj"].item() < 1e-3 and good["loss_cls"].item() < 1e-3


# ---------------------------------------------------------------- 8: weights


def test_box_weight_scales_box_loss_only() -> None:
    maps = _maps(2, seed=8)
    targets = _targets([(0, 0, _box(100, 120, 135, 169)), (1, 2, _box(250, 150, 81, 82))])
    base = _loss()(maps, targets)
    doubled = _loss(LossConfig(box_weight=0.1))(maps, targets)
    assert base["loss_box"].item() > 0
    torch.testing.assert_close(doubled["loss_box"], 2 * base["loss_box"])
    assert doubled["loss_obj"].item() == base["loss_obj"].item()
    assert doubled["loss_cls"].item() == base["loss_cls"].item()


@pytest.mark.parametrize("input_size", [416, 832])
def test_objectness_weight_formula_and_level_balance(input_size: int) -> None:
    # No GT: nothing is positive or ignored, every cell has objectness target 0. Constant
    # logits per level make the per-level mean BCE softplus(logit).
    maps = _maps(2, seed=9)
    for m, value in zip(maps, (1.0, -0.5)):
        for slot in range(3):
            m[:, _ch(slot, 4)] = value
    loss_obj = _loss(input_size=input_size)(maps, torch.zeros(0, 6))["loss_obj"]
    weight = 5.0 * input_size**2 / 416**2
    expected = weight * (0.4 * F.softplus(torch.tensor(1.0)) + 1.0 * F.softplus(torch.tensor(-0.5)))
    torch.testing.assert_close(loss_obj, expected)


def test_objectness_weight_grows_with_input_area() -> None:
    maps = _maps(2, seed=10)
    small = _loss(input_size=416)(maps, torch.zeros(0, 6))["loss_obj"]
    large = _loss(input_size=832)(maps, torch.zeros(0, 6))["loss_obj"]
    torch.testing.assert_close(large, 4 * small)


# ---------------------------------------------------------------- 9: focal objectness


def test_focal_objectness_matches_formula_and_differs_from_bce() -> None:
    maps = _maps(2, seed=11)
    bce = _loss()(maps, torch.zeros(0, 6))["loss_obj"]
    focal = _loss(LossConfig(focal=True))(maps, torch.zeros(0, 6))["loss_obj"]
    assert torch.isfinite(focal) and focal.item() > 0
    assert not math.isclose(focal.item(), bce.item(), rel_tol=1e-3)
    # Target 0 everywhere: (1 - alpha) * p^gamma * BCE, mean per level.
    expected = torch.zeros((), dtype=torch.float64)
    for m, balance in zip(maps, (0.4, 1.0)):
        x = m[:, _ch(0, 4) :: 5 + NUM_CLASSES].double()
        expected += balance * ((1 - 0.25) * torch.sigmoid(x) ** 2 * F.softplus(x)).mean()
    torch.testing.assert_close(focal.double(), 5.0 * expected, rtol=1e-5, atol=0)

    # With a GT, focal still runs and gives a gradient.
    maps = [m.requires_grad_() for m in maps]
    losses = _loss(LossConfig(focal=True))(maps, _targets([(0, 1, _box(100, 120, 135, 169))]))
    losses["loss"].backward()
    assert maps[0].grad[0, _ch(1, 4), 3, 3] != 0
