"""Privacy against utility on this CPU: the public stand-in, then what each arm adds, on SYNTHETIC data.

    python -m experiments.privacy_table --out runs/privacy_table [--seeds 0 1 2] [--epsilons 1 2 4 8]
        [--last-block-epsilons 8 2] [--quick]

Every arm starts from the same public stand-in (`experiments.pretrain`, cached) and is scored on the same
pooled validation images of five hospitals (Dirichlet 0.5 label skew, 200 SYNTHETIC images each, a fifth held
out for validation, patients of 1 to 4 images):

- public: the stand-in's own pretext head, and the binary head fitted on public data only (round 0 of every run);
- centralized, non-private: the head alone on the pooled training images, and every layer (full fine-tune);
- secure federated, non-private: the head, R rounds of FedAvg;
- secure federated under record-level DP-SGD, per patient: the head at each epsilon (delta min(1e-5, 0.1/n));
- secure federated under DP-SGD, last block (the last stage and the head, Opacus, per patient), at a few epsilons.

It runs in one process with the hospitals' own code (`head_training`, `private_training`, the record budget's
PLD plan) and the secure sum's arithmetic (`experiments.simulator.secure_sum`: each hospital's update clipped,
quantized, Skellam-noised and summed modulo 2^b as the key authority returns it), not the services: the rounds'
numbers are the same and the runs take minutes instead of hours. F1 and AUC come with 95% intervals of the
difference to the non-private centralized arm that trains the same parts (paired bootstrap over the validation
images, 1000 resamples), per seed; the table averages the seeds. Writes PRIVACY_TABLE.md, privacy_table.json
and privacy_table.png (AUC and F1 against epsilon) to --out. Progress: one line per arm.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch

from experiments.pretrain import StandIn, binary_auc, describe, stand_in_weights
from experiments.simulator import Codec, secure_sum
from scripts.launcher import ConsortiumConfig
from services.common.ml.initial_weights import load_initial_weights
from services.common.ml.model_spec import flatten_state, parameter_spec, restore_state
from services.common.ml.models import build_model
from services.common.ml.trainable import trained_positions
from services.common.runtime.atomic_files import write_atomic
from services.hospital_node.config import DataSettings, HospitalNodeSettings
from services.hospital_node.data.local_data import LocalData, load_local_data
from services.hospital_node.head_training import train_head
from services.hospital_node.local_round import train_round
from services.hospital_node.private_training import PrivateTraining
from services.hospital_node.record_privacy import plan_noise_multiplier, poisson_schedule
from services.hospital_node.trainer import LocalTraining, predict, train_local

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CPU = torch.device("cpu")
NODES = 5


@dataclass(frozen=True)
class Recipe:
    """The federated head recipe (the demo's): local epochs, expected batch (patients), SGD rate, DP clip."""

    rounds: int = 3
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 0.003  # SGD with momentum 0.9; the features' norms are about 24
    dp_clip_norm: float = 1.0
    secure_clip_norm: float = 0.5  # the secure sum's clip of one hospital's update: just above the head's
    noise_variance: float = 16.0  # the secure sum's Skellam noise, per quorum
    last_block_epochs: int = 1
    last_block_rate: float = 0.003
    centralized_epochs: int = 15
    full_epochs: int = 6


def hospitals(seed: int, images_per_node: int, image_size: int) -> list[LocalData]:
    return [load_local_data(DataSettings.of(HospitalNodeSettings(
        insecure=True, node_id=f"hospital-{i + 1}", data_source="synthetic", synthetic_images=images_per_node * NODES,
        synthetic_seed=seed, partition_parties=NODES, partition_index=i, partition_scheme="dirichlet",
        partition_alpha=0.5, image_size=image_size, architecture="resnet50"))) for i in range(NODES)]


def pooled(parts: list[LocalData]) -> LocalData:
    patients, offset = [], 0
    for part in parts:
        units = part.privacy_units()
        patients.append(units + offset)
        offset += int(units.max()) + 1
    return LocalData(torch.cat([p.train_images for p in parts]), torch.cat([p.train_labels for p in parts]),
                     torch.cat([p.val_images for p in parts]), torch.cat([p.val_labels for p in parts]), 2,
                     train_patients=torch.cat(patients))


def scores(model: torch.nn.Module, data: LocalData) -> np.ndarray:
    """The validation images' score for class 1 (the softmax probability)."""
    probabilities, _ = predict(model, data.val_images, data.val_labels, num_classes=2, device=CPU)
    return probabilities[:, 1]


def f1(score: np.ndarray, truth: np.ndarray) -> float:
    predicted = score >= 0.5
    tp = int((predicted & (truth == 1)).sum())
    fp, fn = int((predicted & (truth == 0)).sum()), int((~predicted & (truth == 1)).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1)


def paired_interval(score: np.ndarray, reference: np.ndarray, truth: np.ndarray, metric: str,
                    rng: np.random.Generator, resamples: int = 1000) -> tuple[float, float]:
    """95% bootstrap interval of metric(score) - metric(reference) over the same resampled validation images."""
    measure = binary_auc if metric == "auc" else f1
    gaps = []
    for _ in range(resamples):
        pick = rng.integers(0, truth.size, truth.size)
        if truth[pick].min() == truth[pick].max():
            continue
        gaps.append(measure(score[pick], truth[pick]) - measure(reference[pick], truth[pick]))
    low, high = np.percentile(gaps, [2.5, 97.5])
    return float(low), float(high)


def federated(model: torch.nn.Module, parts: list[LocalData], recipe: Recipe, trainable: str,
              epsilon: float | None, codec: Codec, seed: int) -> tuple[torch.nn.Module, float]:
    """R secure rounds of FedAvg from `model` (a copy is trained); each hospital under DP-SGD at `epsilon` per
    patient when given. The model and the largest record epsilon planned."""
    model = copy.deepcopy(model)
    spec = parameter_spec(model.state_dict())
    positions = trained_positions(model, spec, trainable)  # type: ignore[arg-type]
    weights = flatten_state(model.state_dict()).astype(np.float64)
    rng = np.random.default_rng([seed, 3, int(1000 * (epsilon or 0)), len(trainable)])  # each arm its own noise
    sigmas: list[float | None] = []
    head = trainable == "head"
    epochs = recipe.epochs if head else recipe.last_block_epochs
    rate = recipe.learning_rate if head else recipe.last_block_rate
    for part in parts:
        if epsilon is None:
            sigmas.append(None)
            continue
        units = part.unit_count  # patients, in every mode (user-level DP-SGD)
        q, per_epoch = poisson_schedule(units, recipe.batch_size if head else 16)
        delta = min(1e-5, 0.1 / part.train_labels.numel())
        sigmas.append(plan_noise_multiplier(epsilon, delta, q, per_epoch * epochs * recipe.rounds))
    for round_id in range(1, recipe.rounds + 1):
        uploads = []
        for index, (part, sigma) in enumerate(zip(parts, sigmas)):
            model.load_state_dict(restore_state(model.state_dict(), weights.astype(np.float32), spec))
            training = LocalTraining(epochs, rate, recipe.batch_size if head else 16, "sgd", imbalance="none")
            private = (PrivateTraining(sigma, recipe.dp_clip_norm, "hooks", 32, trainable)  # type: ignore[arg-type]
                       if sigma is not None else None)
            generator = torch.Generator().manual_seed(seed * 1000 + round_id * 10 + index)
            result = train_round(model, part, training, device=CPU, generator=generator, spec=spec,
                                 global_weights=weights,
                                 private=private,
                                 trainable=trainable, positions=positions)  # type: ignore[arg-type]
            uploads.append(result.upload)
        mean = secure_sum(uploads, codec.update_plan(positions.size), rng) / len(uploads)
        weights = weights.copy()
        weights[positions] += mean
    model.load_state_dict(restore_state(model.state_dict(), weights.astype(np.float32), spec))
    return model, float(epsilon) if epsilon is not None else 0.0


def recipe_codec(recipe: Recipe) -> Codec:
    values = {"clip_norm": recipe.secure_clip_norm, "noise_variance": recipe.noise_variance, "architecture": "resnet50"}
    return Codec(ConsortiumConfig(run_dir=Path("."), nodes=NODES, settings=values, insecure=True))


def run_seed(seed: int, weights: Path, args: argparse.Namespace, recipe: Recipe) -> list[dict[str, object]]:
    parts = hospitals(seed, args.images_per_node, args.image_size)
    data = pooled(parts)
    truth = data.val_labels.numpy()
    base = build_model("resnet50", 2, 0)
    load_initial_weights(base, weights)
    codec = recipe_codec(recipe)
    rng = np.random.default_rng(seed)
    results: dict[str, np.ndarray] = {}
    arms: list[dict[str, object]] = []

    def record(name: str, kind: str, score: np.ndarray, reference: str | None, epsilon: float | None = None,
               seconds: float = 0.0) -> None:
        results[name] = score
        row: dict[str, object] = {"seed": seed, "arm": name, "kind": kind, "epsilon": epsilon,
                                  "auc": binary_auc(score, truth), "f1": f1(score, truth), "seconds": round(seconds, 1)}
        if reference is not None and reference in results:
            for metric in ("auc", "f1"):
                row[f"{metric}_gap_ci"] = paired_interval(score, results[reference], truth, metric, rng)
            row["reference"] = reference
        arms.append(row)
        print(f"  seed {seed} {name}: AUC {row['auc']:.3f}, F1 {row['f1']:.3f}"
              + (f" (epsilon {epsilon:g} per patient)" if epsilon else "")
              + f", {seconds:.0f} s", flush=True)

    started = time.monotonic()
    # The public arm: the binary head fitted on public data only (the pretext head's zero-shot AUC is in the
    # stand-in's description).
    record("public binary head (round 0)", "public", scores(base, data), None)
    central_head = copy.deepcopy(base)
    train_head(central_head, data, LocalTraining(recipe.centralized_epochs, recipe.learning_rate, 32, "sgd"),
               device=CPU,
               generator=torch.Generator().manual_seed(seed))
    record("centralized non-private, head", "head", scores(central_head, data), None,
           seconds=time.monotonic() - started)
    if not args.quick:
        started = time.monotonic()
        full = copy.deepcopy(base)
        train_local(full, data, LocalTraining(recipe.full_epochs, 3e-4, 32, "adamw", imbalance="none", augment=True),
                    device=CPU, generator=torch.Generator().manual_seed(seed))
        record("centralized non-private, full fine-tune", "all", scores(full, data), None,
               seconds=time.monotonic() - started)
    started = time.monotonic()
    model, _ = federated(base, parts, recipe, "head", None, codec, seed)
    record("secure federated non-private, head", "head", scores(model, data), "centralized non-private, head",
           seconds=time.monotonic() - started)
    for epsilon in args.epsilons:
        started = time.monotonic()
        model, _ = federated(base, parts, recipe, "head", epsilon, codec, seed)
        record(f"secure federated DP, head, epsilon {epsilon:g}", "head", scores(model, data),
               "centralized non-private, head", epsilon, time.monotonic() - started)
    if seed == args.seeds[0]:
        for epsilon in args.last_block_epsilons:
            started = time.monotonic()
            model, _ = federated(base, parts, recipe, "last_block", epsilon, codec, seed)
            record(f"secure federated DP, last_block, epsilon {epsilon:g}", "last_block", scores(model, data),
                   "centralized non-private, head", epsilon, time.monotonic() - started)
    return arms


def summarize(arms: list[dict[str, object]]) -> list[dict[str, object]]:
    names = list(dict.fromkeys(str(a["arm"]) for a in arms))
    table = []
    for name in names:
        rows = [a for a in arms if a["arm"] == name]
        entry: dict[str, object] = {"arm": name, "kind": rows[0]["kind"], "epsilon": rows[0]["epsilon"],
                                    "seeds": len(rows)}
        for metric in ("auc", "f1"):
            values = [float(str(r[metric])) for r in rows]
            entry[metric] = float(np.mean(values))
            entry[f"{metric}_by_seed"] = values
            intervals = [r.get(f"{metric}_gap_ci") for r in rows if r.get(f"{metric}_gap_ci")]
            if intervals:
                entry[f"{metric}_gap_ci_by_seed"] = intervals
        table.append(entry)
    return table


def write_outputs(out: Path, table: list[dict[str, object]], description: dict[str, object], recipe: Recipe,
                  args: argparse.Namespace) -> None:
    lines = ["# Privacy against utility (SYNTHETIC data, this CPU)", "",
             f"Command: `python -m experiments.privacy_table --out {args.out} --seeds {' '.join(map(str, args.seeds))} "
             f"--epsilons {' '.join(f'{e:g}' for e in args.epsilons)} --last-block-epsilons "
             f"{' '.join(f'{e:g}' for e in args.last_block_epsilons)}{' --quick' if args.quick else ''}`", "",
             f"Start: the public stand-in ({description.get('what')}; {description.get('epochs')} epochs on "
             f"{description.get('images')} public images at {description.get('image_size')} px, held-out pretext "
             f"accuracy {description.get('held_out_accuracy')}; zero-shot AUC on the hospitals' question: its own "
             f"pretext head {description.get('zero_shot_own_head_auc')}, the public binary head "
             f"{description.get('zero_shot_public_head_auc')}). Five hospitals, Dirichlet 0.5, "
             f"{args.images_per_node} SYNTHETIC images each (a fifth validates: "
             f"{NODES * args.images_per_node // 5} pooled validation images), patients of 1 to 4 images. Recipe: "
             f"{json.dumps(recipe.__dict__)}.", "",
             "Gaps are against the non-private centralized head; 95% intervals by paired bootstrap over the "
             "validation images, one per seed. Epsilon: record-level, delta min(1e-5, 0.1/n), per patient for the "
             "head and last_block alike (user-level DP-SGD).", "",
             "| arm | epsilon | seeds | AUC (mean) | AUC by seed | AUC gap 95% CI by seed | F1 (mean) | F1 by seed "
             "| F1 gap 95% CI by seed |", "|---|---|---|---|---|---|---|---|---|"]

    def ci(entry: dict[str, object], metric: str) -> str:
        intervals = entry.get(f"{metric}_gap_ci_by_seed") or []
        return "; ".join(f"{100 * lo:+.1f} to {100 * hi:+.1f}" for lo, hi in intervals) or "-"  # type: ignore[union-attr]

    for e in table:
        epsilon = "-" if e["epsilon"] is None else f"{float(str(e['epsilon'])):g}"
        lines.append(f"| {e['arm']} | {epsilon} | {e['seeds']} "
                     f"| {float(str(e['auc'])):.3f} | {', '.join(f'{v:.3f}' for v in e['auc_by_seed'])} "  # type: ignore[attr-defined]
                     f"| {ci(e, 'auc')} | {float(str(e['f1'])):.3f} | "
                     f"{', '.join(f'{v:.3f}' for v in e['f1_by_seed'])} | {ci(e, 'f1')} |")  # type: ignore[attr-defined]
    lines += ["", "![privacy against utility](privacy_table.png)", ""]
    write_atomic(out / "PRIVACY_TABLE.md", "\n".join(lines).encode())
    write_atomic(out / "privacy_table.json", (json.dumps({"table": table, "stand_in": description}, indent=1,
                                                         default=str) + "\n").encode())
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("auc", "f1")):
        for kind, marker in (("head", "o"), ("last_block", "s")):
            points = sorted((float(str(e["epsilon"])), float(str(e[metric]))) for e in table
                            if e["kind"] == kind and e["epsilon"])
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], marker=marker,
                          label=f"secure federated DP, {kind}")
        for e in table:
            if not e["epsilon"]:
                axis.axhline(float(str(e[metric])), linestyle="--", linewidth=1, label=str(e["arm"]),
                             color=plt.cm.tab10(hash(str(e["arm"])) % 10))
        axis.set_xscale("log")
        axis.set_xlabel("record-level epsilon (per patient)")
        axis.set_ylabel(metric.upper())
        axis.set_title(f"{metric.upper()} against epsilon (SYNTHETIC data)")
    axes[1].legend(fontsize=6, loc="lower right")
    figure.tight_layout()
    figure.savefig(out / "privacy_table.png", dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/privacy_table"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--last-block-epsilons", type=float, nargs="*", default=[8.0])
    parser.add_argument("--images-per-node", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="no full fine-tune arm (tests)")
    parser.add_argument("--stand-in-epochs", type=int, default=StandIn().epochs,
                        help="the public stand-in's pretraining epochs (default: the demo's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    args.out.mkdir(parents=True, exist_ok=True)
    weights = stand_in_weights(StandIn(image_size=args.image_size, epochs=args.stand_in_epochs))
    recipe = Recipe()
    arms: list[dict[str, object]] = []
    for seed in args.seeds:
        print(f"seed {seed}:", flush=True)
        arms += run_seed(seed, weights, args, recipe)
        write_outputs(args.out, summarize(arms), describe(weights), recipe, args)
    print(f"wrote {args.out / 'PRIVACY_TABLE.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
