"""The hospitals' evaluation reports, their pooled metrics, and the rows of `rounds.jsonl`.

Each row describes one round and carries the pooled evaluation of the model that
round produced; the evaluations of a round's model arrive with the next round's plan,
so a row is written once the next round (or the closing evaluation) has opened.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from services.aggregator.pooled_evaluation import PooledEvaluation, pool_reports, validate_report
from services.common.errors import MalformedChunkError, WrongRoundError
from services.common.ml.classification_metrics import HISTOGRAM_BINS
from services.common.ml.evaluation_report import EvaluationReport, MaskedEvaluationReport
from services.common.runtime.atomic_files import append_line_atomic, read_json_lines
from services.common.runtime.metrics import ServiceMetrics
from services.common.secure_sum.masked_evaluation import pooled_report
from services.common.secure_sum.pooled_counts import PooledCountsError

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
# Models whose reports the board keeps: the one the open round asks about and the two before it, whose rows may
# still be waiting to be written.
KEPT_MODELS = 3
Row = dict[str, object]


class EvaluationBoard:
    def __init__(self, num_classes: int, rows_path: Path, metrics: ServiceMetrics) -> None:
        self._num_classes = num_classes
        self._rows_path = rows_path
        self._metrics = metrics
        self._reports: dict[int, dict[str, EvaluationReport]] = {}  # plain: plaintext runs, and opted-in hospitals
        self._masked: dict[int, dict[str, MaskedEvaluationReport]] = {}  # secure runs: only their sum is read
        self._expected: list[int] = []  # the model rounds whose reports are wanted, oldest first
        self._examples: dict[str, int] = {}  # each node's validation images, from its first report
        self._changed = threading.Condition()
        # Rows already on disk (a restarted aggregator appends to the same file): each round's row is written once.
        self._written = {int(row["round"]) for row in read_json_lines(rows_path)
                         if isinstance(row, dict) and "round" in row}

    def expect(self, model_round: int) -> None:
        """A round opened on the model after `model_round`: its reports are now wanted. Reports are kept for the last
        `KEPT_MODELS` such models only, so that the board's memory stays bounded whatever members send."""
        with self._changed:
            if model_round not in self._expected:
                self._expected.append(model_round)
            del self._expected[:-KEPT_MODELS]
            for kept in (self._reports, self._masked):
                for stale in [m for m in kept if m not in self._expected]:
                    del kept[stale]

    def report(self, report: EvaluationReport | MaskedEvaluationReport) -> None:
        """Store a node's report (its latest for that model replaces an earlier one); refuse one that cannot pool,
        one for a model no open round asks about, and one that counts other images than the node's first did (its
        validation split does not change within a run)."""
        if isinstance(report, MaskedEvaluationReport):
            self._report_masked(report)
            return
        validate_report(report, self._num_classes)
        with self._changed:
            self._require_expected(report.node_id, report.model_round)
            first = self._examples.setdefault(report.node_id, int(report.counts.examples))
            if first != report.counts.examples:
                raise MalformedChunkError(f"node {report.node_id!r} counted {first} validation images before; this "
                                          f"report counts {report.counts.examples}")
            self._reports.setdefault(report.model_round, {})[report.node_id] = report
            self._changed.notify_all()

    def _report_masked(self, report: MaskedEvaluationReport) -> None:
        """A masked report is bounded by its field width only (the wire edge checked its length and its set): what
        it holds is read in the sum over its set, never alone."""
        if (report.num_classes, report.histogram_bins) != (self._num_classes, HISTOGRAM_BINS):
            raise MalformedChunkError(f"masked evaluation of node {report.node_id!r} has {report.num_classes} "
                                      f"classes and {report.histogram_bins} bins; the model has {self._num_classes} "
                                      f"and {HISTOGRAM_BINS}")
        with self._changed:
            self._require_expected(report.node_id, report.model_round)
            self._masked.setdefault(report.model_round, {})[report.node_id] = report
            self._changed.notify_all()

    def _require_expected(self, node_id: str, model_round: int) -> None:
        if model_round not in self._expected:
            raise WrongRoundError(f"node {node_id!r} reported on the model after round {model_round}; the board "
                                  f"takes reports on rounds {self._expected}")

    def wait_for(self, model_round: int, nodes: Callable[[], set[str]], deadline: float) -> None:
        """Until every node of `nodes()` (re-read, as nodes leave) has reported on `model_round`, or `deadline`."""
        with self._changed:
            while time.monotonic() < deadline:
                if nodes() <= set(self._reports.get(model_round, {})) | set(self._masked.get(model_round, {})):
                    return
                self._changed.wait(POLL_SECONDS)

    def pooled(self, model_round: int) -> PooledEvaluation | None:
        """The pooled evaluation of a model: the sum of a whole participant set's masked reports where there are
        masked ones (a secure run), else the plain reports pooled (a plaintext run)."""
        with self._changed:
            reports = list(self._reports.get(model_round, {}).values())
            masked = dict(self._masked.get(model_round, {}))
        if masked:
            return self._pooled_masked(model_round, masked)
        return pool_reports(reports) if reports else None

    def shared(self, model_round: int) -> dict[str, PooledEvaluation]:
        """In a secure run, the metrics of the hospitals that opted in to share their own (`share_evaluation`)."""
        with self._changed:
            if not self._masked.get(model_round):
                return {}
            reports = dict(self._reports.get(model_round, {}))
        return {node: pool_reports([report]) for node, report in sorted(reports.items())}

    def _pooled_masked(self, model_round: int, masked: dict[str, MaskedEvaluationReport]) -> PooledEvaluation | None:
        sets: dict[tuple[str, ...], dict[str, MaskedEvaluationReport]] = {}
        for node, sent in masked.items():
            sets.setdefault(sent.participants, {})[node] = sent
        complete = [(members, got) for members, got in sets.items() if set(got) == set(members)]
        if not complete:
            log.warning("model after round %d: masked evaluations from %s, and no participant set whole: not "
                        "evaluated (the masks cancel only over a whole set)", model_round, sorted(masked))
            return None
        members, got = max(complete, key=lambda item: len(item[0]))
        try:
            report, _ = pooled_report({node: r.values for node, r in got.items()}, members, self._num_classes,
                                      bins=HISTOGRAM_BINS, model_round=model_round)
            validate_report(report, self._num_classes)
        except (PooledCountsError, MalformedChunkError) as error:
            log.warning("model after round %d: the masked evaluations of %s do not pool (%s): not evaluated",
                        model_round, list(members), error)
            return None
        return replace(pool_reports([report]), nodes=len(members))

    def write_row(self, model_round: int, row: Row | None, evaluated: bool = True) -> Row | None:
        """Append the row of a finished round with the pooled evaluation of its model (`model_round`), and publish
        the metrics; nothing when that round's row is already written (a restart may finish a row twice)."""
        entry = dict(row or {"round": 0, "participants": 0, "seconds": 0.0, "epsilon": 0.0})
        if int(str(entry["round"])) in self._written:
            return None
        pooled = self.pooled(model_round) if evaluated else None
        if pooled is not None:
            self._publish(pooled)
        entry["evaluation"] = pooled.as_dict() if pooled else None
        shared = self.shared(model_round) if evaluated else {}
        if shared:
            entry["evaluation_shared"] = {node: evaluation.as_dict() for node, evaluation in shared.items()}
        append_line_atomic(self._rows_path, json.dumps(entry, default=_json_default))
        self._written.add(int(str(entry["round"])))
        log.info("%s", row_summary(entry, self._rows_path))
        return entry

    def republish_last(self) -> None:
        """After a restart of a finished run: the last row's validation metrics and phase seconds, from the rows on
        disk, so the metrics served after the end are the run's last ones, not empty."""
        rows = [r for r in read_json_lines(self._rows_path) if isinstance(r, dict)]
        evaluated = [r for r in rows if isinstance(r.get("evaluation"), dict)]
        if evaluated:
            for name, value in evaluated[-1]["evaluation"].items():
                if isinstance(value, float):
                    self._metrics.validation.labels(metric=name).set(value)
        phased = [r for r in rows if isinstance(r.get("phases"), dict)]
        if phased:
            for phase, value in phased[-1]["phases"].items():
                if isinstance(value, (int, float)):
                    self._metrics.last_phase_seconds.labels(phase=phase).set(float(value))

    def _publish(self, pooled: PooledEvaluation) -> None:
        gauge = self._metrics.validation
        for name, value in pooled.as_dict().items():
            if isinstance(value, float):
                gauge.labels(metric=name).set(value)
        if pooled.calibrated is not None:
            gauge.labels(metric="f1_calibrated").set(pooled.calibrated.metrics.f1)
            gauge.labels(metric="threshold").set(pooled.calibrated.threshold)
        else:  # no operating point this round: drop last round's, never show it as current
            for name in ("f1_calibrated", "threshold"):
                with contextlib.suppress(KeyError):
                    gauge.remove(name)


def row_summary(entry: Row, rows_path: Path) -> str:
    """One line a person reads: the round's metrics, and where the full row went."""
    evaluation = entry.get("evaluation") or {}
    assert isinstance(evaluation, dict)
    metrics = ", ".join(f"{name} {float(evaluation[name]):.3f}" for name in ("accuracy", "f1", "auc")
                        if isinstance(evaluation.get(name), (int, float)))
    state = "FAILED" if entry.get("failed") else f"{entry.get('participants')} hospitals"
    return (f"round {entry['round']}: {state}, {metrics or 'not evaluated'}, epsilon {entry.get('epsilon')}; "
            f"row in {rows_path}")


def _json_default(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value)}")
