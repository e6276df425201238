"""Centralized baseline: one model trained on the hospitals' pooled training splits.

Uses exactly the images, train/validation splits, architecture, trainer and
evaluation counts the federated nodes use. Its epochs per "round" are the caller's
choice (scripts.experiment: the federated local epochs unless --centralized-epochs
says otherwise), and the report states them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace

from pathlib import Path


import torch

from services.aggregator.pooled_evaluation import pool_reports
from services.aggregator.round_schedule import RoundSchedule, round_learning_rate
from services.common.atomic_files import write_atomic
from services.common.head_refit import feature_moments, lda_head, set_head
from services.common.models import best_device, build_model
from services.hospital_node.config import HospitalNodeSettings
from services.hospital_node.local_data import LocalData, load_local_data
from services.hospital_node.trainer import LocalTraining, evaluation_report, train_local

log = logging.getLogger(__name__)

FINAL_STATE = "final_state.pt"  # the last round's model, its normalisation statistics included


def pooled_data(settings: HospitalNodeSettings, parties: int) -> LocalData:
    return pool([load_local_data(settings.model_copy(update={"partition_index": i, "node_id": f"hospital-{i + 1}"}))
                 for i in range(parties)])


def pool(parts: list[LocalData]) -> LocalData:
    """The hospitals' training, validation and calibration splits, each pooled."""
    return LocalData(torch.cat([p.train_images for p in parts]), torch.cat([p.train_labels for p in parts]),
                     torch.cat([p.val_images for p in parts]), torch.cat([p.val_labels for p in parts]),
                     parts[0].num_classes, torch.cat([p.cal_images for p in parts]),
                     torch.cat([p.cal_labels for p in parts]))


def run_centralized(settings: HospitalNodeSettings, parties: int, rounds: int, training: LocalTraining,
                    out_dir: Path, seed: int = 0, round_schedule: RoundSchedule = "constant",
                    round_floor: float = 0.1, head_refit: bool = False) -> list[dict[str, object]]:
    """`training` is one federated round's local training; the baseline runs it `rounds` times on the pool, its
    learning rate lowered from round to round by the aggregator's `round_schedule`, as the consortium's is.
    `head_refit`: then, as the consortium's closing round does, refit the head by LDA on the pooled training
    images' features (exact statistics: nothing to protect here), recorded as one more row."""
    data = pooled_data(settings, parties)
    device = best_device()
    model = build_model(settings.architecture, settings.num_classes, settings.model_seed)
    generator = torch.Generator().manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []

    def record(round_id: int, seconds: float, steps: int, rate: float | None = None) -> None:
        report, _ = evaluation_report(model, data, device, "centralized", round_id)
        rows.append({"round": round_id, "participants": 1, "seconds": seconds, "epochs": training.epochs,
                     "steps": steps, **({} if rate is None else {"learning_rate": rate}),
                     "evaluation": pool_reports([report]).as_dict()})
        log.info("centralized round %d: F1 %.3f", round_id, rows[-1]["evaluation"]["f1"])  # type: ignore[index]

    record(0, 0.0, 0)
    for round_id in range(1, rounds + 1):
        started = time.monotonic()
        rate = round_learning_rate(training.learning_rate, round_id, rounds, round_schedule, round_floor)
        stats = train_local(model, data, replace(training, learning_rate=rate), device, generator)
        record(round_id, time.monotonic() - started, stats.steps, rate)
    if head_refit:
        started = time.monotonic()
        moments = feature_moments(model, data.train_images, data.train_labels, data.num_classes, device)
        set_head(model, *lda_head(moments))
        record(rounds + 1, time.monotonic() - started, 0)
        rows[-1]["head_refit"] = True
    write_atomic(out_dir / "rounds.jsonl", "".join(json.dumps(row) + "\n" for row in rows).encode())
    torch.save({name: tensor.cpu() for name, tensor in model.state_dict().items()}, out_dir / FINAL_STATE)
    return rows


def node_settings_for(architecture: str, image_size: int, images: int, parties: int, scheme: str, alpha: float,
                      seed: int, calibration_fraction: float = 0.0) -> HospitalNodeSettings:
    """The settings the consortium launcher gives its nodes, for the same data.

    `seed` is the consortium's `data_seed`: the SYNTHETIC set, its partition and splits, and the initial model.
    """
    return HospitalNodeSettings(insecure=True, architecture=architecture, image_size=image_size,
                                synthetic_images=images, partition_scheme=scheme,  # type: ignore[arg-type]
                                partition_alpha=alpha, partition_parties=parties,
                                calibration_fraction=calibration_fraction, synthetic_seed=seed, model_seed=seed)



