"""The comparison table: checkpoints side by side, grouped by attention block, with paired
bootstrap verdicts and what each block costs.

Rows are grouped by block name (``phi_name``), not phi number: every plugin block has phi -1
and would otherwise merge with the others. Rows that are not seeds of one training recipe stay
apart too: an ONNX or INT8 export of a checkpoint (``Row.runtime``), and, where the table mixes
input sizes, each size (the group's name then says which). Per group: mean ± sample std over
seeds of mAP50 (VOC12 and VOC07), means of AP50 by object size, and the cost (parameters,
GFLOPs, CPU forward latency). Per pair of groups: the VOC12 mAP50 difference with a 95% percentile
interval from a paired, two-level bootstrap (the test images resampled identically for every
checkpoint, then the seeds: jointly for two groups trained with the same seeds and settings,
else within each group; ``bootstrap.compare_groups`` says why), called "better" or "worse" when
the interval excludes 0 and "not distinguishable" when it holds 0. The interval with the seeds
resampled independently stands beside the paired one, and the protocol line says which design
the verdicts used.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from utils.config import option
from utils.errors import InputError
from utils.evaluation.bootstrap import MatchTable, compare_groups
from utils.evaluation.metrics import COCO_AREA_RANGES, BoxSet, evaluate_voc
from utils.paths import save_figure_atomic


@dataclass(frozen=True)
class CompareConfig:
    """How the pairwise verdicts are computed."""

    bootstrap_resamples: int = option(
        1000,
        "paired bootstrap resamples of the test images behind each pairwise verdict",
        group="comparison",
    )
    bootstrap_seed: int = option(
        0, "seed of the bootstrap resampling (same seed, same intervals)", group="comparison"
    )

    def __post_init__(self) -> None:
        # fewer resamples leave too few points in each 2.5% tail for a stable percentile
        if self.bootstrap_resamples < 100:
            raise InputError(
                f"--bootstrap-resamples {self.bootstrap_resamples}: must be at least 100"
            )


@dataclass
class Row:
    """One checkpoint: what it is, what it costs, how it scores (fractions, not percent)."""

    name: str
    phi: int
    phi_name: str
    params: int
    gflops: float
    latency_ms: float  # end to end (preprocess, forward, decode + NMS), batch 1, eval device
    voc07: float
    voc12: float
    coco: float | None
    cpu_forward_ms: float | None = None  # median batch-1 forward on the CPU at the eval size
    # AP50 (VOC12 area) per COCO size range (metrics.match_class); None: no GT of that size
    ap_small: float | None = None
    ap_medium: float | None = None
    ap_large: float | None = None
    matches: MatchTable | None = field(default=None, repr=False, compare=False)
    runtime: str = ""  # what ran it when not the PyTorch path: "ONNX", "ONNX INT8"
    input_size: int = 0  # the evaluation input side (0: not recorded)
    seed: int | None = None  # the training seed (None: unknown, so never paired by seed)
    # the training settings but the seed and the block (``compare.training_run``): runs pair
    # by seed only when these are equal; None: unknown
    settings: dict | None = field(default=None, repr=False, compare=False)


def group_names(rows: list[Row]) -> list[str]:
    """Each row's group: its block name, plus its runtime and, where the rows were evaluated at
    more than one input size, its size (``cbam``, ``cbam, ONNX INT8``, ``cbam, 320 px``)."""
    sizes_differ = len({r.input_size for r in rows}) > 1
    names = []
    for r in rows:
        parts = [r.phi_name, r.runtime, f"{r.input_size} px" if sizes_differ else ""]
        names.append(", ".join(p for p in parts if p))
    return names


def size_aps(dets: BoxSet, gts: BoxSet, num_classes: int, iou_thresh: float = 0.5) -> dict:
    """``{"small", "medium", "large"}`` -> VOC12 AP50 restricted to objects of that COCO size
    range, or None where no class has ground truth of that size."""
    out = {}
    for name, area in COCO_AREA_RANGES.items():
        voc = evaluate_voc(dets, gts, num_classes, iou_thresh, area_range=area)
        out[name] = voc["voc12_map"] if voc["classes_with_gt"] else None
    return out


@dataclass
class PhiSummary:
    """One attention block over its runs (seeds)."""

    phi: int
    phi_name: str  # the group's name (``group_names``): the block's, with runtime and size
    runs: int
    voc12_mean: float
    voc12_std: float | None  # None with one run
    voc07_mean: float
    voc07_std: float | None
    members: list[int] = field(default_factory=list)  # indices of its rows
    params: int = 0
    gflops: float = 0.0
    cpu_ms_mean: float | None = None
    cpu_ms_std: float | None = None
    ap_small: float | None = None  # means over the runs
    ap_medium: float | None = None
    ap_large: float | None = None


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _std(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.stdev(present) if len(present) > 1 else None


def summarize_by_phi(rows: list[Row]) -> list[PhiSummary]:
    """Rows grouped by block name; built-in blocks in phi order, then plugins by name."""
    groups: dict[str, list[int]] = defaultdict(list)
    for k, name in enumerate(group_names(rows)):
        groups[name].append(k)
    out = []
    for name, members in groups.items():
        g = [rows[k] for k in members]
        v12, v07 = [r.voc12 for r in g], [r.voc07 for r in g]
        cpu = [r.cpu_forward_ms for r in g]
        out.append(
            PhiSummary(
                g[0].phi,
                name,
                len(g),
                statistics.fmean(v12),
                _std(v12),
                statistics.fmean(v07),
                _std(v07),
                members=members,
                params=g[0].params,
                gflops=g[0].gflops,
                cpu_ms_mean=_mean(cpu),
                cpu_ms_std=_std(cpu),
                ap_small=_mean([r.ap_small for r in g]),
                ap_medium=_mean([r.ap_medium for r in g]),
                ap_large=_mean([r.ap_large for r in g]),
            )
        )
    return sorted(out, key=lambda s: (s.phi < 0, s.phi, s.phi_name))


@dataclass(frozen=True)
class Verdict:
    """Group ``b`` against group ``a`` on VOC12 mAP50 (fractions)."""

    a: str
    b: str
    difference: float  # seed mean of b - seed mean of a, on the split as it is
    low: float | None  # the interval; None when it could not be computed
    high: float | None
    verdict: str  # better / worse / not distinguishable (b than a), or cannot tell
    note: str = ""
    paired: bool = False  # the seeds were resampled jointly (low/high is the paired interval)
    low_independent: float | None = None  # the interval with seeds resampled independently
    high_independent: float | None = None
    per_seed: tuple[tuple[int, float], ...] = ()  # (seed, b - a of that seed's runs), paired
    unpaired_why: str = ""  # why the seeds were not paired

    def line(self) -> str:
        head = f"{self.b} vs {self.a}: {self.difference * 100:+.2f} mAP50 points"
        if self.low is None or self.high is None:
            return f"{head}: {self.verdict} ({self.note})"
        design = "seeds paired" if self.paired else "seeds independent"
        interval = f"95% interval [{self.low * 100:+.2f}, {self.high * 100:+.2f}] ({design})"
        return f"{head}, {interval}: {self.verdict}" + (f" ({self.note})" if self.note else "")


def pairwise_verdicts(
    rows: list[Row],
    summaries: list[PhiSummary] | None = None,
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> list[Verdict]:
    """One verdict per pair of groups, from the paired bootstrap (module docstring); "cannot
    tell" where the rows carry no per-image matching or were scored on different splits."""
    summaries = summaries if summaries is not None else summarize_by_phi(rows)
    pairs = [(a, b) for a in range(len(summaries)) for b in range(a + 1, len(summaries))]

    if not pairs:  # one block: nothing to compare, no bootstrap to run
        return []

    def cannot(why: str) -> list[Verdict]:
        a_b = [(summaries[a], summaries[b]) for a, b in pairs]
        gap = [b.voc12_mean - a.voc12_mean for a, b in a_b]
        return [
            Verdict(a.phi_name, b.phi_name, d, None, None, "cannot tell", why)
            for (a, b), d in zip(a_b, gap)
        ]

    tables = [r.matches for r in rows]
    if any(t is None for t in tables):
        return cannot("no per-image results to resample")
    if any(not tables[0].same_split(t) for t in tables[1:]):
        return cannot("scored on different images or ground truth")
    results = compare_groups(
        tables,
        [s.members for s in summaries],
        seeds=[r.seed for r in rows],
        settings=[r.settings for r in rows],
        names=[s.phi_name for s in summaries],
        resamples=resamples,
        seed=seed,
    )
    out = []
    for r in results:
        a, b = summaries[r.a], summaries[r.b]
        single = [s.phi_name for s in (a, b) if s.runs == 1]
        note = (
            f"one run of {' and '.join(single)}: training noise not in the interval"
            if single
            else ""
        )
        out.append(
            Verdict(
                a.phi_name,
                b.phi_name,
                r.difference,
                r.low,
                r.high,
                r.verdict,
                note,
                paired=r.paired,
                low_independent=r.low_independent,
                high_independent=r.high_independent,
                per_seed=r.per_seed,
                unpaired_why=r.unpaired_why,
            )
        )
    return out


def seed_design(verdicts: list[Verdict]) -> str:
    """How the verdicts resampled the seeds, for the protocol line ("" without intervals)."""
    resampled = [v for v in verdicts if v.low is not None]
    if not resampled:
        return ""
    if all(v.paired for v in resampled):
        return "images and seeds paired across blocks"
    reasons = list(dict.fromkeys(v.unpaired_why for v in resampled if not v.paired))
    why = "; ".join(reasons[:3])
    if len(reasons) > 3:
        why += f"; and {len(reasons) - 3} more, per pair in comparison_pairs.csv"
    if not any(v.paired for v in resampled):
        return f"images paired; seeds resampled independently ({why})"
    return (
        "images paired; seeds paired between blocks of the same seeds and settings, resampled "
        f"independently for the other pairs ({why})"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}"


def _interval(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"[{low * 100:+.2f}, {high * 100:+.2f}]"


def _pm(mean: float | None, std: float | None, scale: float = 100, digits: int = 2) -> str:
    if mean is None:
        return "-"
    return f"{mean * scale:.{digits}f}" + (
        f" ± {std * scale:.{digits}f}" if std is not None else ""
    )


def _block(phi: int, name: str) -> str:
    return f"{phi} {name}" if phi >= 0 else f"{name} (plugin)"


def markdown(
    rows: list[Row],
    summaries: list[PhiSummary],
    protocol: str,
    verdicts: list[Verdict] | None = None,
    compare: CompareConfig | None = None,
) -> str:
    """The per-checkpoint table, the per-block table and the pairwise verdicts."""
    compare = compare or CompareConfig()
    if verdicts is None:
        verdicts = pairwise_verdicts(
            rows, summaries, resamples=compare.bootstrap_resamples, seed=compare.bootstrap_seed
        )
    design = seed_design(verdicts)
    lines = [
        f"Protocol: {protocol}" + (f"; bootstrap: {design}" if design else ""),
        "",
        "| name | phi | params | GFLOPs | CPU forward ms | latency ms | mAP50 VOC07 | "
        "mAP50 VOC12 | AP50 small | AP50 medium | AP50 large | COCO AP |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r, group in zip(rows, group_names(rows)):
        cpu = "-" if r.cpu_forward_ms is None else f"{r.cpu_forward_ms:.1f}"
        lines.append(
            f"| {r.name} | {_block(r.phi, group)} | {r.params:,} | {r.gflops:.2f} | {cpu} | "
            f"{r.latency_ms:.1f} | {_pct(r.voc07)} | {_pct(r.voc12)} | {_pct(r.ap_small)} | "
            f"{_pct(r.ap_medium)} | {_pct(r.ap_large)} | {_pct(r.coco)} |"
        )
    lines += [
        "",
        "| phi | runs | params | GFLOPs | CPU forward ms | mAP50 VOC12 (mean ± std) | "
        "mAP50 VOC07 (mean ± std) | AP50 small | AP50 medium | AP50 large |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {_block(s.phi, s.phi_name)} | {s.runs} | {s.params:,} | {s.gflops:.2f} | "
            f"{_pm(s.cpu_ms_mean, s.cpu_ms_std, 1, 1)} | {_pm(s.voc12_mean, s.voc12_std)} | "
            f"{_pm(s.voc07_mean, s.voc07_std)} | {_pct(s.ap_small)} | {_pct(s.ap_medium)} | "
            f"{_pct(s.ap_large)} |"
        )
    if verdicts:
        lines += [
            "",
            f"Pairwise, VOC12 mAP50 points (B vs A: B minus A, seed means), 95% percentile "
            f"intervals of {compare.bootstrap_resamples} bootstrap resamples (seed "
            f"{compare.bootstrap_seed}) drawing the test images alike for every block and the "
            "seeds either alike for both blocks (paired by seed, where both were trained with "
            "the same seeds and settings) or independently within each; the verdict reads the "
            "paired interval where there is one: better / worse when it excludes 0.",
            "",
            "| B vs A | difference | interval, seeds paired | interval, seeds independent | "
            "verdict | note |",
            "|---|---:|---:|---:|---|---|",
        ]
        for v in verdicts:
            paired = _interval(v.low, v.high) if v.paired else "-"
            independent = _interval(v.low_independent, v.high_independent)
            lines.append(
                f"| {v.b} vs {v.a} | {v.difference * 100:+.2f} | {paired} | {independent} | "
                f"{v.verdict} | {v.note} |"
            )
    lines += [
        "",
        "AP50 by size: VOC12 area AP of objects with a COCO area (w x h, original pixels) in "
        "[0, 32²], [32², 96²], [96², ∞); detections are matched against all objects, and those "
        "matched to objects of another size, or false positives of another size, are ignored.",
    ]
    return "\n".join(lines) + "\n"


def _write_rows_csv(path: Path, rows: list[Row]) -> None:
    header = ["name", "phi", "attention", "params", "gflops", "latency_ms", "cpu_forward_ms"]
    header += ["map50_voc07", "map50_voc12", "ap50_small", "ap50_medium", "ap50_large", "coco_map"]
    header += ["runtime", "input_size", "seed"]

    def num(value: float | None, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            writer.writerow(
                [r.name, r.phi, r.phi_name, r.params, f"{r.gflops:.3f}", f"{r.latency_ms:.2f}"]
                + [num(r.cpu_forward_ms, 2), f"{r.voc07:.5f}", f"{r.voc12:.5f}"]
                + [num(v, 5) for v in (r.ap_small, r.ap_medium, r.ap_large, r.coco)]
                + [r.runtime or "PyTorch", r.input_size or "", "" if r.seed is None else r.seed]
            )


def _write_pairs_csv(path: Path, verdicts: list[Verdict]) -> None:
    def num(value: float | None) -> str:
        return "" if value is None else f"{value:.5f}"

    header = ["a", "b", "map50_voc12_b_minus_a", "low95", "high95", "verdict", "note"]
    header += ["seeds", "low95_independent", "high95_independent", "per_seed_b_minus_a"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for v in verdicts:
            design = "" if v.low is None else "paired" if v.paired else "independent"
            if v.unpaired_why and v.low is not None:
                design += f": {v.unpaired_why}"
            per_seed = ";".join(f"{s}:{d:+.5f}" for s, d in v.per_seed)
            bounds = [num(v.low), num(v.high)]
            independent = [num(v.low_independent), num(v.high_independent), per_seed]
            writer.writerow(
                [v.a, v.b, num(v.difference), *bounds, v.verdict, v.note, design, *independent]
            )


def _plot_bars(path: Path, summaries: list[PhiSummary]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(summaries) + 2, 3.5))
    labels = [f"{_block(s.phi, s.phi_name)}\n(n={s.runs})" for s in summaries]
    ax.bar(
        labels,
        [s.voc12_mean * 100 for s in summaries],
        yerr=[(s.voc12_std or 0) * 100 for s in summaries],
        capsize=4,
        color="#4c72b0",
    )
    ax.set_ylabel("mAP@0.5 (VOC2010+ area)")
    ax.set_title("attention comparison (error bars: std over seeds)")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=90)
    plt.close(fig)


def _plot_tradeoff(path: Path, summaries: list[PhiSummary]) -> None:
    """mAP50 against CPU forward latency, one point per block (seed means, std error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    markers = "osD^vP*Xhp<>"
    for k, s in enumerate(summaries):
        if s.cpu_ms_mean is None:
            continue
        ax.errorbar(
            s.cpu_ms_mean,
            s.voc12_mean * 100,
            xerr=s.cpu_ms_std or 0,
            yerr=(s.voc12_std or 0) * 100,
            fmt=markers[k % len(markers)],
            capsize=3,
            markersize=7,
            label=f"{_block(s.phi, s.phi_name)} (n={s.runs})",
        )
    ax.set_xlabel("CPU forward latency, batch 1 (ms, median)")
    ax.set_ylabel("mAP@0.5 (VOC2010+ area)")
    ax.set_title("accuracy against latency (error bars: std over seeds)")
    ax.grid(alpha=0.3)
    if any(s.cpu_ms_mean is not None for s in summaries):
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no latency measured", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def write_outputs(
    rows: list[Row], protocol: str, out_dir: Path, compare: CompareConfig | None = None
) -> dict[str, Path]:
    """comparison.csv (per checkpoint), comparison_pairs.csv (verdicts: both intervals, the
    seed design and the per-seed differences when paired), comparison.md (both
    tables and the verdicts), comparison.png (mean ± std bars per block) and
    map_vs_latency.png (mAP50 against CPU forward latency per block)."""
    compare = compare or CompareConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = summarize_by_phi(rows)
    verdicts = pairwise_verdicts(
        rows, summaries, resamples=compare.bootstrap_resamples, seed=compare.bootstrap_seed
    )
    paths = {
        "csv": out_dir / "comparison.csv",
        "pairs": out_dir / "comparison_pairs.csv",
        "md": out_dir / "comparison.md",
        "png": out_dir / "comparison.png",
        "tradeoff": out_dir / "map_vs_latency.png",
    }
    _write_rows_csv(paths["csv"], rows)
    _write_pairs_csv(paths["pairs"], verdicts)
    paths["md"].write_text(markdown(rows, summaries, protocol, verdicts, compare))
    _plot_bars(paths["png"], summaries)
    _plot_tradeoff(paths["tradeoff"], summaries)
    return paths


def table_paths(paths: dict[str, Path]) -> str:
    """The written files, one line, for the command lines to print."""
    return ", ".join(str(p) for p in paths.values())
