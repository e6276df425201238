"""Paired comparison of two finished runs' final models on the same evaluated images (SYNTHETIC harness only).

    python -m experiments.paired --run secure=runs/x/secure --run centralized=runs/x/centralized \\
        --architecture resnet18 --image-size 32 --images-per-node 1000 --partition label_mix --seed 0

Hospitals never pool per-image predictions, so the consortium's own reports can only give
each F1 its own sampling spread. The experiment harness holds the SYNTHETIC evaluated images
centrally; this tool rebuilds them, scores both final models on every image, checks that
each model's confusion matrix is the one its run recorded, and gives the F1 gap a paired
bootstrap spread and 95% interval (`paired_f1_difference`), at argmax and at each run's own
calibrated threshold.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from experiments.centralized import FINAL_STATE, pooled_data
from experiments.setting_options import add_setting_options, chosen_settings
from scripts.launcher import ConsortiumConfig
from services.common.ml.classification_metrics import PairedDifference, confusion_matrix, paired_f1_difference
from services.common.ml.model_spec import parameter_spec, restore_state
from services.common.ml.models import best_device, build_model
from services.common.runtime.atomic_files import read_json_lines
from services.hospital_node.data.local_data import LocalData
from services.hospital_node.trainer import predict


@dataclass(frozen=True)
class RunModel:
    label: str
    state: dict[str, torch.Tensor]
    row: dict[str, object]  # the run's last round row, as it recorded it


def final_model(label: str, run_dir: Path, architecture: str, num_classes: int) -> RunModel:
    """A finished run's final model and its last row; refused where the global model alone is not the model
    the hospitals evaluated (they keep BatchNorm statistics of their own)."""
    rows_path = run_dir / "aggregator" / "rounds.jsonl"
    if not rows_path.exists():  # the centralized baseline
        row = read_json_lines(run_dir / "rounds.jsonl")[-1]
        return RunModel(label, torch.load(run_dir / FINAL_STATE, map_location="cpu"), row)
    row = read_json_lines(rows_path)[-1]
    template = build_model(architecture, num_classes, 0).state_dict()
    spec = parameter_spec(template)
    local = [name for name, tensor in template.items() if tensor.is_floating_point() and name not in spec.names]
    if local:
        raise ValueError(f"{label}: each hospital keeps {len(local)} normalisation statistics of its own "
                         f"({local[0]}, ...); the global model alone is not the model they evaluated")
    with np.load(run_dir / "aggregator" / "checkpoints" / f"round_{int(row['round']):04d}.npz") as archive:
        return RunModel(label, restore_state(template, archive["weights"].astype(np.float32), spec), row)


def positive_scores(run: RunModel, architecture: str, data: LocalData, device: torch.device) -> np.ndarray:
    """Class probabilities of every evaluated image, by the hospitals' own evaluation."""
    model = build_model(architecture, data.num_classes, 0)
    model.load_state_dict(run.state)
    return predict(model, data.val_images, data.val_labels, num_classes=data.num_classes, device=device)[0]


def predictions(run: RunModel, probabilities: np.ndarray, calibrated: bool) -> np.ndarray:
    if not calibrated:
        return probabilities.argmax(axis=1)
    threshold = float(run.row["evaluation"]["calibrated"]["threshold"])  # type: ignore[index]
    return (probabilities[:, 1] >= threshold).astype(np.int64)


def compare(baseline: RunModel, other: RunModel, architecture: str, data: LocalData,
            device: torch.device) -> dict[str, PairedDifference]:
    """F1(baseline) - F1(other), paired, at argmax and (binary, both calibrated) at each run's own threshold.

    Refuses when a model's recomputed confusion matrix is not the one its run recorded: the images or
    the weights would not be those of the run."""
    truth = data.val_labels.numpy()
    scored = {run.label: positive_scores(run, architecture, data, device) for run in (baseline, other)}
    points = ["argmax"]
    if data.num_classes == 2 and all("calibrated" in run.row["evaluation"] for run in (baseline, other)):  # type: ignore[operator]
        points.append("calibrated")
    result = {}
    for point in points:
        predicted = {}
        for run in (baseline, other):
            predicted[run.label] = predictions(run, scored[run.label], point == "calibrated")
            recorded = run.row["evaluation"]  # type: ignore[index]
            recorded = recorded["calibrated"] if point == "calibrated" else recorded  # type: ignore[index]
            mine = confusion_matrix(truth, predicted[run.label], data.num_classes).tolist()
            if mine != recorded["confusion"]:  # type: ignore[index]
                raise ValueError(f"{run.label} at {point}: recomputed confusion {mine} is not the recorded "
                                 f"{recorded['confusion']}; not the run's images or weights")  # type: ignore[index]
        result[point] = paired_f1_difference(truth, predicted[other.label], predicted[baseline.label],
                                             num_classes=data.num_classes)
    return result


def describe(baseline: str, other: str, gaps: dict[str, PairedDifference]) -> str:
    return "\n\n".join(
        f"Paired F1 gap at {point}, {baseline} minus {other} (the same evaluated images, bootstrap over images): "
        f"{100 * gap.difference:+.1f} points, SD {100 * gap.sd:.1f}, 95% interval "
        f"[{100 * gap.low:+.1f}, {100 * gap.high:+.1f}]" for point, gap in gaps.items())


SETTINGS = ("architecture", "image_size", "partition_scheme", "partition_alpha", "calibration_fraction")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True,
                        help="LABEL=DIR; the first is the baseline the others are compared with")
    parser.add_argument("--images-per-node", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    add_setting_options(parser, SETTINGS)
    args = parser.parse_args(argv)
    config = ConsortiumConfig(run_dir=Path("."), nodes=5, images_per_node=args.images_per_node, insecure=True,
                              settings={**chosen_settings(args, SETTINGS), "synthetic_seed": args.seed,
                                        "model_seed": args.seed})
    architecture = config.aggregator_settings().architecture
    data, device = pooled_data(config), best_device()
    runs = [final_model(label, Path(path), architecture, data.num_classes)
            for label, _, path in (text.partition("=") for text in args.run)]
    for other in runs[1:]:
        print(describe(runs[0].label, other.label, compare(runs[0], other, architecture, data, device)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
