"""The evaluation board: reports it refuses, what it pools, and the rows it writes."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from services.aggregator.evaluation_board import EvaluationBoard
from services.aggregator.pooled_evaluation import pool_reports
from services.common.errors import MalformedChunkError, WrongRoundError
from services.common.ml.classification_metrics import HISTOGRAM_BINS
from services.common.ml.evaluation_report import EvaluationCounts, EvaluationReport, MaskedEvaluationReport
from services.common.runtime.atomic_files import read_json_lines
from services.common.runtime.metrics import ServiceMetrics
from services.common.secure_sum.masked_evaluation import EVALUATION_DOMAIN, evaluation_scope, mask_report
from services.common.secure_sum.pairwise_masks import peer_masks
from tests.evaluations import histograms_for


def _report(node: str, model_round: int, classes: int = 2, correct: int = 4,
            confusion: list[list[int]] | None = None) -> EvaluationReport:
    matrix = np.asarray(confusion, dtype=np.int64) if confusion is not None else np.eye(classes, dtype=np.int64) * correct
    if confusion is None:
        matrix[0, -1] += 1
    return EvaluationReport(node, model_round, EvaluationCounts(matrix, 1.5, int(matrix.sum()),
                                                                *histograms_for(matrix)))


def _board(tmp_path: Path, metrics: ServiceMetrics | None = None, *expected: int) -> EvaluationBoard:
    board = EvaluationBoard(2, tmp_path / "rounds.jsonl", metrics or ServiceMetrics("aggregator"))
    for model_round in expected:
        board.expect(model_round)
    return board


def test_a_report_for_another_class_count_is_refused_and_not_stored(tmp_path: Path) -> None:
    board = _board(tmp_path, None, 0)
    with pytest.raises(MalformedChunkError, match="3 classes, the model has 2"):
        board.report(_report("hospital-1", 0, classes=3))
    assert board.pooled(0) is None


def test_rows_carry_the_pooled_evaluation_of_their_round_s_model(tmp_path: Path) -> None:
    metrics = ServiceMetrics("aggregator")
    board = _board(tmp_path, metrics, 0, 1)
    board.report(_report("hospital-1", 0))
    board.report(_report("hospital-2", 0, confusion=[[2, 3], [1, 3]]))
    board.report(_report("hospital-2", 0))  # the latest report of a node for a model replaces its earlier one
    board.report(_report("hospital-1", 1, confusion=[[4, 0], [1, 4]]))
    board.write_row(0, None)
    board.write_row(1, {"round": 1, "participants": 2, "seconds": 3.0, "epsilon": 0.5})
    rows = read_json_lines(tmp_path / "rounds.jsonl")
    assert [row["round"] for row in rows] == [0, 1]
    assert rows[0]["evaluation"]["confusion"] == [[8, 2], [0, 8]] and rows[0]["evaluation"]["nodes"] == 2
    assert rows[1]["evaluation"]["confusion"] == [[4, 0], [1, 4]] and rows[1]["participants"] == 2
    assert metrics.validation.labels(metric="accuracy")._value.get() == pytest.approx(8 / 9)


def test_a_report_on_a_model_no_round_asks_about_is_refused_and_old_models_are_let_go(tmp_path: Path) -> None:
    board = _board(tmp_path, None, 0)
    with pytest.raises(WrongRoundError, match="after round 7"):
        board.report(_report("hospital-1", 7))  # a round far ahead: the board would otherwise keep it forever
    board.report(_report("hospital-1", 0))
    for model_round in range(1, 10):
        board.expect(model_round)
        board.report(_report("hospital-1", model_round))
    assert board.pooled(0) is None and board.pooled(6) is None and board.pooled(9) is not None
    with pytest.raises(WrongRoundError):
        board.report(_report("hospital-1", 3))


def test_a_report_that_counts_other_images_than_the_nodes_first_is_refused(tmp_path: Path) -> None:
    board = _board(tmp_path, None, 0, 1)
    board.report(_report("hospital-1", 0))  # 9 images
    with pytest.raises(MalformedChunkError, match="counted 9 validation images before; this report counts 1000"):
        board.report(_report("hospital-1", 1, confusion=[[500, 0], [0, 500]]))
    assert board.pooled(1) is None


def test_waiting_for_evaluations_returns_once_every_expected_node_reported(tmp_path: Path) -> None:
    board = _board(tmp_path, None, 3)
    board.report(_report("hospital-1", 3))
    started = time.monotonic()
    board.wait_for(3, lambda: {"hospital-1"}, time.monotonic() + 30)
    assert time.monotonic() - started < 1
    board.wait_for(3, lambda: {"hospital-1", "hospital-2"}, time.monotonic() + 0.3)  # gives up at the deadline
    assert time.monotonic() - started < 5


def test_each_row_is_also_one_log_line_saying_where_the_rows_are() -> None:
    from pathlib import Path

    from services.aggregator.evaluation_board import row_summary

    entry = {"round": 2, "participants": 3, "epsilon": 4.5,
             "evaluation": {"accuracy": 0.75, "f1": 0.5, "auc": 0.875, "confusion": [[1, 0], [1, 2]]}}
    assert row_summary(entry, Path("runs/demo/aggregator/rounds.jsonl")) == (
        "round 2: 3 hospitals, accuracy 0.750, f1 0.500, auc 0.875, epsilon 4.5; "
        "row in runs/demo/aggregator/rounds.jsonl")
    assert row_summary({"round": 3, "failed": True, "evaluation": None}, Path("r")).startswith(
        "round 3: FAILED, not evaluated")


def _masked_reports(model_round: int, confusions: dict[str, list[list[int]]]) -> list[MaskedEvaluationReport]:
    """Real masked reports: each hospital's counts under its evaluation masks for the set of `confusions`' keys."""
    members = tuple(sorted(confusions))
    keys = {node: X25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i, node in enumerate(members)}
    public = {node: key.public_key() for node, key in keys.items()}
    scope = evaluation_scope("fedxray", "key", members, bytes(32))
    return [MaskedEvaluationReport(node, model_round, 2, HISTOGRAM_BINS, members,
                                   mask_report(_report(node, model_round, confusion=confusion),
                                               peer_masks(node, keys[node], public, scope=scope,
                                                          domain=EVALUATION_DOMAIN)))
            for node, confusion in confusions.items()]


CONFUSIONS = {"hospital-1": [[4, 1], [0, 4]], "hospital-2": [[2, 3], [1, 3]], "hospital-3": [[5, 0], [2, 6]]}


def test_masked_reports_are_read_only_as_the_sum_of_a_whole_set(tmp_path: Path) -> None:
    """The aggregator's board pools a secure run's masked reports over their whole participant set, to the same
    figures the plain reports would give; with one report missing it reads nothing, and writes the row unevaluated."""
    board = _board(tmp_path, None, 0, 1)
    for report in _masked_reports(0, CONFUSIONS):
        board.report(report)
    for report in _masked_reports(1, CONFUSIONS)[:2]:
        board.report(report)
    pooled = board.pooled(0)
    plain = pool_reports([_report(node, 0, confusion=c) for node, c in CONFUSIONS.items()])
    assert pooled is not None and pooled.nodes == 3
    np.testing.assert_array_equal(pooled.confusion, plain.confusion)
    assert pooled.metrics == plain.metrics and pooled.loss == pytest.approx(plain.loss)
    assert board.pooled(1) is None
    board.write_row(1, {"round": 1, "participants": 3, "seconds": 1.0, "epsilon": 0.0})
    assert read_json_lines(tmp_path / "rounds.jsonl")[-1]["evaluation"] is None


def test_a_member_s_garbage_masked_report_spoils_the_pool_but_corrupts_nothing(tmp_path: Path) -> None:
    """A hostile member's masked report is bounded by its field width only: its garbage makes the sum no counts,
    and the model is not evaluated; a report of the wrong shape is refused at once."""
    board = _board(tmp_path, None, 0)
    honest = _masked_reports(0, CONFUSIONS)
    for report in honest[:2]:
        board.report(report)
    board.report(replace(honest[2], values=tuple(int(v) for v in np.random.default_rng(0).integers(0, 1 << 48,
                                                                                                   len(honest[2].values)))))
    assert board.pooled(0) is None
    with pytest.raises(MalformedChunkError, match="3 classes"):
        board.report(replace(honest[2], num_classes=3))
    board.report(honest[2])  # its honest report replaces the garbage
    assert board.pooled(0) is not None


def test_only_the_hospitals_that_opt_in_have_their_own_figures_in_a_secure_run_s_rows(tmp_path: Path) -> None:
    board = _board(tmp_path, None, 0)
    for report in _masked_reports(0, CONFUSIONS):
        board.report(report)
    board.report(_report("hospital-2", 0, confusion=CONFUSIONS["hospital-2"]))  # hospital-2's share_evaluation
    board.write_row(0, None)
    row = read_json_lines(tmp_path / "rounds.jsonl")[-1]
    assert row["evaluation"]["nodes"] == 3 and row["evaluation"]["confusion"] == [[11, 4], [3, 13]]
    assert list(row["evaluation_shared"]) == ["hospital-2"]
    assert row["evaluation_shared"]["hospital-2"]["confusion"] == [[2, 3], [1, 3]]
