"""Centralized baseline: one model trained on the hospitals' pooled training splits.

Uses exactly the images, train/validation splits, architecture, trainer and
evaluation counts the federated nodes use. Its epochs per "round" are the caller's
choice (experiments.experiment: the federated local epochs unless --centralized-epochs
says otherwise), and the report states them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from scripts.launcher import ConsortiumConfig
from services.aggregator.pooled_evaluation import pool_reports
from services.aggregator.round_schedule import round_learning_rate
from services.common.ml.head_refit import feature_moments, lda_head, set_head
from services.common.ml.initial_weights import load_initial_weights
from services.common.ml.models import best_device, build_model
from services.common.runtime.atomic_files import write_atomic
from services.hospital_node.config import DataSettings
from services.hospital_node.data.local_data import LocalData, load_local_data
from services.hospital_node.trainer import LocalTraining, evaluation_report, train_local

log = logging.getLogger(__name__)

FINAL_STATE = "final_state.pt"  # the last round's model, its normalisation statistics included


def pooled_data(config: ConsortiumConfig) -> LocalData:
    """Every hospital's part of the SYNTHETIC set, split as that node splits it, pooled."""
    return pool([load_local_data(DataSettings.of(config.node_settings(i))) for i in range(config.nodes)])


def pool(parts: list[LocalData]) -> LocalData:
    """The hospitals' training, validation and calibration splits, each pooled."""
    return LocalData(torch.cat([p.train_images for p in parts]), torch.cat([p.train_labels for p in parts]),
                     torch.cat([p.val_images for p in parts]), torch.cat([p.val_labels for p in parts]),
                     parts[0].num_classes, torch.cat([p.cal_images for p in parts]),
                     torch.cat([p.cal_labels for p in parts]))


def run_centralized(config: ConsortiumConfig, training: LocalTraining, out_dir: Path,
                    seed: int = 0) -> list[dict[str, object]]:
    """`training` is one federated round's local training; the baseline runs it for the consortium's rounds on the
    pool, its learning rate lowered from round to round by the aggregator's round schedule, as the consortium's is.
    With the consortium's head refit, it then refits the head by LDA on the pooled training images' features (exact
    statistics: nothing to protect here), recorded as one more row."""
    data = pooled_data(config)
    aggregator = config.aggregator_settings()
    device = best_device()
    model = build_model(aggregator.architecture, aggregator.num_classes, aggregator.model_seed)
    if aggregator.init_weights is not None:
        load_initial_weights(model, aggregator.init_weights)  # the same start as the consortium's
    generator = torch.Generator().manual_seed(seed)
    rows: list[dict[str, object]] = []

    def record(round_id: int, seconds: float, steps: int, rate: float | None = None) -> None:
        report = evaluation_report(model, data, device, node_id="centralized", model_round=round_id)
        rows.append({"round": round_id, "participants": 1, "seconds": seconds, "epochs": training.epochs,
                     "steps": steps, **({} if rate is None else {"learning_rate": rate}),
                     "evaluation": pool_reports([report]).as_dict()})
        log.info("centralized round %d: F1 %.3f", round_id, rows[-1]["evaluation"]["f1"])  # type: ignore[index]

    record(0, 0.0, 0)
    rounds = aggregator.rounds
    for round_id in range(1, rounds + 1):
        started = time.monotonic()
        rate = round_learning_rate(training.learning_rate, round_id, rounds, schedule=aggregator.round_schedule,
                                   floor=aggregator.round_floor)
        stats = train_local(model, data, replace(training, learning_rate=rate), device=device, generator=generator)
        record(round_id, time.monotonic() - started, stats.steps, rate)
    if aggregator.head_refit:
        started = time.monotonic()
        moments = feature_moments(model, data.train_images, data.train_labels, num_classes=data.num_classes,
                                  device=device)
        set_head(model, *lda_head(moments, aggregator.head_refit_shrinkage))
        record(rounds + 1, time.monotonic() - started, 0)
        rows[-1]["head_refit"] = True
    write_atomic(out_dir / "rounds.jsonl", "".join(json.dumps(row) + "\n" for row in rows).encode())
    torch.save({name: tensor.cpu() for name, tensor in model.state_dict().items()}, out_dir / FINAL_STATE)
    return rows
