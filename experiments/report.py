"""Write a Markdown report with PNG plots from finished runs: `python -m experiments.report`.

    python -m experiments.report --run secure=runs/x/secure --run plaintext=runs/x/plaintext \
        --run centralized=runs/x/centralized --out docs/results

Each run directory holds a `rounds.jsonl` (at its top or under aggregator/), as
written by the aggregator or by the centralized baseline; the aggregator's
`class_counts.json` (the counts the hospitals sent when they joined) adds the
class-distribution plot, with a bar for its `pooled_class_counts.json` (every hospital's
counts summed under pairwise masks) beside it when there is one, and the launcher's
`run.json` names the data (a centralized baseline's directory has none: it trained on
the same data as the runs beside it).
Plots: metrics per round, each hospital's class distribution, latency per phase,
epsilon.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Callable

import matplotlib
import numpy as np
from matplotlib.ticker import MaxNLocator

from services.common.ml.classification_metrics import f1_sampling_sd
from services.common.runtime.atomic_files import read_json_lines
from services.common.runtime.metrics import SEQUENTIAL_PHASES
from services.common.secure_sum.pooled_counts import POOLED_COUNTS_FILE

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")


def read_rows(run_dir: Path) -> list[dict[str, object]]:
    for path in (run_dir / "rounds.jsonl", run_dir / "aggregator" / "rounds.jsonl"):
        if path.exists():
            return read_json_lines(path)
    raise FileNotFoundError(f"no rounds.jsonl in {run_dir}")


def _round_label(row: dict[str, object]) -> str:
    """The row's round, marked when it is the closing head refit rather than a training round."""
    return f"{row['round']} (head refit)" if row.get("head_refit") else str(row["round"])


def _metric(row: dict[str, object], name: str) -> float:
    evaluation = row.get("evaluation") or {}
    assert isinstance(evaluation, dict)
    value = evaluation.get(name)
    return float(value) if value is not None else math.nan


def _calibrated(row: dict[str, object], name: str) -> float:
    """A metric at the operating point chosen on the calibration split; NaN when the run kept none."""
    evaluation = row.get("evaluation") or {}
    assert isinstance(evaluation, dict)
    point = evaluation.get("calibrated") or {}
    value = point.get(name)
    return float(value) if value is not None else math.nan


def _f1_sd(row: dict[str, object], calibrated: bool = False) -> float:
    """The F1's sampling SD on the evaluated images (see f1_sampling_sd); NaN without a confusion matrix."""
    evaluation = row.get("evaluation") or {}
    assert isinstance(evaluation, dict)
    source = (evaluation.get("calibrated") or {}) if calibrated else evaluation
    confusion = source.get("confusion")
    return f1_sampling_sd(np.array(confusion, dtype=np.int64)) if confusion else math.nan


def _has_calibration(rows: dict[str, list[dict[str, object]]]) -> bool:
    return any(not math.isnan(_calibrated(r, "f1")) for run_rows in rows.values() for r in run_rows)


def _epsilon(row: dict[str, object]) -> float:
    value = row.get("epsilon", math.nan)
    return float(value) if value not in (None, "inf", "Infinity") else math.inf  # type: ignore[arg-type]


def _stacked_bars(axis: plt.Axes, categories: list[str], series: dict[str, list[float]]) -> None:
    bottom = [0.0] * len(categories)
    positions = list(range(len(categories)))  # explicit positions: round numbers are labels, not values
    for name, values in series.items():
        axis.bar(positions, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    axis.set_xticks(positions, categories)


def data_description(runs: dict[str, Path]) -> str:
    """What the runs trained on, from the launcher's run.json; never "synthetic" unless recorded as such."""
    found = set()
    for path in runs.values():
        for candidate in (path / "run.json", path.parent / "run.json"):
            if candidate.exists():
                found.add(str(json.loads(candidate.read_text()).get("data", "")))
                break
    found.discard("")
    return " and ".join(sorted(found)) if found else "data not recorded"


def _per_round_axis(axis: plt.Axes) -> None:
    axis.set_xlabel("round")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend_outside(axis: plt.Axes, **options: object) -> None:
    """The legend beside the plot, never over the data."""
    axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **options)  # type: ignore[arg-type]


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_metrics(runs: dict[str, list[dict[str, object]]], out: Path, data: str) -> Path:
    panels: list[tuple[str, Callable[[dict[str, object]], float]]] = [
        (name, lambda row, name=name: _metric(row, name)) for name in ("accuracy", "f1", "auc")]
    if _has_calibration(runs):
        panels.append(("f1 at calibrated threshold", lambda row: _calibrated(row, "f1")))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.7 * len(panels), 4))
    for axis, (name, value) in zip(axes, panels):
        for label, rows in runs.items():
            axis.plot([r["round"] for r in rows], [value(r) for r in rows], marker="o", label=label)
        axis.set_title(f"{name}\n(pooled validation, {data})", fontsize=10)
        _per_round_axis(axis)
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    _legend_outside(axes[-1])
    return _save(figure, out / "metrics_per_round.png")


def plot_class_counts(counts: dict[str, object], out: Path, data: str,
                      pooled: dict[str, object] | None = None) -> Path:
    """Images per hospital and class, as each hospital sent them when it joined, and the pooled counts of every
    hospital (those that kept their own included) when the aggregator has them."""
    classes = list(counts["classes"])  # type: ignore[call-overload]
    table = list(counts["counts"])  # type: ignore[call-overload]
    named = counts.get("hospitals")
    hospitals = list(named) if isinstance(named, list) and named else [f"hospital-{i + 1}" for i in range(len(table))]
    if pooled is not None:
        hospitals.append(f"all {len(pooled['hospitals'])}\n(pooled)")  # type: ignore[arg-type]
        table.append(list(pooled["counts"]))  # type: ignore[call-overload]
    figure, axis = plt.subplots(figsize=(7, 4))
    _stacked_bars(axis, hospitals, {name: [float(row[index]) for row in table] for index, name in enumerate(classes)})
    hidden = list(counts.get("not_shared") or [])  # type: ignore[call-overload]
    axis.set_title(f"images per hospital and class ({data})"
                   + (f"\nnot shared by {', '.join(hidden)}" if hidden else "")
                   + (", which the pooled bar includes" if hidden and pooled is not None
                      and set(hidden) <= set(pooled["hospitals"]) else ""), fontsize=10)  # type: ignore[call-overload]
    _legend_outside(axis)
    return _save(figure, out / "class_distribution.png")


def plot_phases(runs: dict[str, list[dict[str, object]]], out: Path) -> Path | None:
    timed = {label: [r for r in rows if r.get("phases")] for label, rows in runs.items()}
    timed = {label: rows for label, rows in timed.items() if rows}
    if not timed:
        return None
    figure, axes = plt.subplots(1, len(timed), figsize=(6 * len(timed), 4), squeeze=False)
    for axis, (label, rows) in zip(axes[0], timed.items()):
        phases: list[dict[str, float]] = [r["phases"] for r in rows]  # type: ignore[misc]
        _stacked_bars(axis, [str(r["round"]) for r in rows],
                      {phase: [float(p.get(phase, 0.0)) for p in phases] for phase in SEQUENTIAL_PHASES})
        critical = [(i, float(p["critical_path"])) for i, p in enumerate(phases) if "critical_path" in p]
        if critical:  # rows written before it was recorded have none
            axis.plot([i for i, _ in critical], [c for _, c in critical], "k_", markersize=24, markeredgewidth=2,
                      linestyle="none", label="critical path\n(trained update to new model)")
        axis.set_title(f"{label}: seconds per phase (node phases: slowest node)")
        axis.set_xlabel("round")
    _legend_outside(axes[0][-1], fontsize=8)
    return _save(figure, out / "latency_per_phase.png")


def _record_epsilon(row: dict[str, object]) -> str:
    """The largest record-level epsilon any hospital had spent, or '-' without DP-SGD."""
    value = row.get("record_epsilon_max")
    return "-" if value is None else f"{float(str(value)):.3g} per {row.get('record_epsilon_unit') or 'image'}"


def plot_epsilon(runs: dict[str, list[dict[str, object]]], out: Path) -> Path | None:
    series = {label: [(r["round"], _epsilon(r)) for r in rows if "epsilon" in r and math.isfinite(_epsilon(r))
                      and _epsilon(r) > 0] for label, rows in runs.items()}
    series = {label: points for label, points in series.items() if points}
    if not series:
        return None
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    axis.set_yscale("log")
    axis.set_title("cumulative epsilon (Skellam RDP accountant)")
    _per_round_axis(axis)
    _legend_outside(axis)
    return _save(figure, out / "epsilon.png")


def plot_record_epsilon(runs: dict[str, list[dict[str, object]]], out: Path) -> Path | None:
    """Each hospital's record-level epsilon spent, per round, for every run under DP-SGD, with its unit."""
    series: dict[str, list[tuple[int, float]]] = {}
    units: set[str] = set()
    for label, rows in runs.items():
        for row in rows:
            if row.get("record_epsilon_max") is not None:
                units.add(str(row.get("record_epsilon_unit") or "image"))
            reported = row.get("record_epsilon")
            if isinstance(reported, dict):
                for node, value in reported.items():
                    series.setdefault(f"{label}: {node}", []).append((int(str(row["round"])), float(value)))
    if not series:
        return None
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, points in sorted(series.items()):
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    unit = "per patient" if units == {"patient"} else "per image"
    axis.set_title(f"record-level epsilon spent per hospital, {unit} (DP-SGD, PLD accountant)")
    _per_round_axis(axis)
    _legend_outside(axis, fontsize=7)
    return _save(figure, out / "record_epsilon.png")


def _f1_gaps(rows: dict[str, list[dict[str, object]]], f1: Callable[[dict[str, object]], float],
             name: str, calibrated: bool = False) -> list[str]:
    """One line per federated run: the centralized final F1 minus its own, in points, with its sampling SD."""
    if "centralized" not in rows:
        return []
    reference = rows["centralized"][-1]
    lines = []
    for label, run_rows in rows.items():
        if label != "centralized":
            sd = math.hypot(_f1_sd(reference, calibrated), _f1_sd(run_rows[-1], calibrated))
            spread = "" if math.isnan(sd) else (f" (sampling SD {sd * 100:.1f}, as if the two runs' errors "
                                                "were independent)")
            lines.append(f"\n{name}, centralized minus {label}: "
                         f"{(f1(reference) - f1(run_rows[-1])) * 100:+.1f} points{spread}")
    return lines


def write_report(runs: dict[str, Path], out: Path, title: str, notes: str = "") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rows = {label: read_rows(path) for label, path in runs.items()}
    data = data_description(runs)
    caveat = ("All figures below come from **SYNTHETIC** radiographs; they say nothing about clinical performance "
              "on real images." if data == "SYNTHETIC radiographs" else
              f"Data: {data}. Metrics are pooled over the hospitals' own validation splits.")
    lines = [f"# {title}", "", caveat, ""]
    if notes:
        lines += [notes, ""]
    lines += ["## Final model", "", "F1 SD: the F1's sampling standard deviation on the evaluated images "
              "(multinomial resampling of the confusion matrix); training randomness is not in it.", "",
              "| run | rounds | " + " | ".join(METRICS) + " | F1 SD | epsilon |",
              "|---|---|" + "---|" * len(METRICS) + "---|---|"]
    for label, run_rows in rows.items():
        last = run_rows[-1]
        epsilon = next((_epsilon(r) for r in reversed(run_rows) if "epsilon" in r and r["round"]), math.nan)
        cells = [f"{_metric(last, m):.3f}" for m in METRICS]
        lines.append(f"| {label} | {_round_label(last)} | " + " | ".join(cells) + f" | {_f1_sd(last):.3f} | "
                     f"{epsilon:.4g} |")
    lines += _f1_gaps(rows, lambda row: _metric(row, "f1"), "F1 gap")
    if _has_calibration(rows):
        lines += ["", "## Final model at the calibrated operating point", "",
                  "Each run's threshold maximises F1 on the pooled calibration splits (held-out images that "
                  "are neither trained on nor evaluated); the metrics are those of the evaluated images at "
                  "that threshold.", "",
                  "| run | threshold | precision | recall | specificity | F1 | F1 SD |",
                  "|---|---|---|---|---|---|---|"]
        for label, run_rows in rows.items():
            last = run_rows[-1]
            lines.append(f"| {label} | {_calibrated(last, 'threshold'):.3g} | " + " | ".join(
                f"{_calibrated(last, m):.3f}" for m in ("precision", "recall", "specificity", "f1"))
                + f" | {_f1_sd(last, calibrated=True):.3f} |")
        lines += _f1_gaps(rows, lambda row: _calibrated(row, "f1"), "Calibrated F1 gap", calibrated=True)
    lines += ["", "## Plots", "", f"![metrics per round]({plot_metrics(rows, out, data).name})"]
    counts_path = next((c for p in runs.values() for c in (p / "aggregator" / "class_counts.json",
                                                           p / "class_counts.json") if c.exists()), None)
    if counts_path is not None:
        pooled_path = counts_path.parent / POOLED_COUNTS_FILE
        pooled = json.loads(pooled_path.read_text()) if pooled_path.exists() else None
        plot = plot_class_counts(json.loads(counts_path.read_text()), out, data, pooled)
        lines.append(f"![class distribution]({plot.name})")
    else:
        lines.append("(No class-distribution plot: no run recorded the class counts the hospitals sent.)")
    for plot in (plot_phases(rows, out), plot_epsilon(rows, out), plot_record_epsilon(rows, out)):
        if plot is not None:
            lines.append(f"![{plot.stem}]({plot.name})")
    lines += ["", "## Rounds", ""]
    for label, run_rows in rows.items():
        lines += [f"### {label}", "", "| round | participants | seconds | accuracy | F1 | calibrated F1 | AUC "
                  "| epsilon | record epsilon |", "|---|---|---|---|---|---|---|---|---|"]
        for row in run_rows:
            lines.append(f"| {_round_label(row)} | {row.get('participants', '-')} | "
                         f"{float(str(row.get('seconds', 0))):.1f} | {_metric(row, 'accuracy'):.3f} | "
                         f"{_metric(row, 'f1'):.3f} | {_calibrated(row, 'f1'):.3f} | {_metric(row, 'auc'):.3f} | "
                         f"{_epsilon(row):.4g} | {_record_epsilon(row)} |")
        lines.append("")
    path = out / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="LABEL=DIR, repeatable")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="FedXray run report")
    args = parser.parse_args(argv)
    runs = {label: Path(path) for label, path in (item.split("=", 1) for item in args.run)}
    print(write_report(runs, args.out, args.title))


if __name__ == "__main__":
    main()
