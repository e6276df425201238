"""Membership inference against the consortium's final models, on SYNTHETIC data (the harness's second section).

The targets are the models of docs/RESULTS.md's privacy table, made by the same code
(`experiments.privacy_table.federated`: the hospitals' own head training and DP-SGD, the secure sum's arithmetic):
the public ResNet-50 stand-in with a head trained by 3 secure rounds of FedAvg over five hospitals (seed 0, 200
SYNTHETIC images each), non-private and under record-level DP-SGD per patient at each epsilon. A baseline where
the attack should succeed sits beside them: the same head fitted hard (many epochs, a high rate, no DP) on the
training images of one hospital (about 110 images).

The members are the five hospitals' training images; the non-members as many images from the same generator at
another seed. Two attacks score each image:

- loss threshold (Yeom et al. 2018): minus the image's loss;
- offline LiRA (Carlini et al., S&P 2022): the target's logit-scaled confidence on the true label, against the
  same statistic under shadow models trained by the same recipe on disjoint SYNTHETIC hospitals (all of them
  OUT for every image), with one variance for all images, as the paper advises for few shadows.

Every DP target's two ROCs are checked against its bound, TPR <= e^eps FPR + delta
(`membership.bound_violations`); a violation raises `BoundViolated`, since it means the accounting is wrong.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import torch

from experiments.attacks.membership import Roc, Violation, bound_violations, logit_loss_scores, roc
from experiments.privacy_table import Recipe, federated, hospitals, pooled, recipe_codec
from services.common.ml.head_refit import penultimate_features
from services.common.ml.trainable import classifier_head
from services.hospital_node.data.local_data import LocalData
from services.hospital_node.head_training import backbone_digest, train_head
from services.hospital_node.trainer import LocalTraining

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CPU = torch.device("cpu")
TARGET_SEED, NONMEMBER_SEED, SHADOW_SEED = 0, 50, 100
DELTA = 1e-5
HARD_FIT = LocalTraining(300, 0.01, 32, "adamw", imbalance="none", schedule="constant")


class BoundViolated(RuntimeError):
    """A DP model leaked more than its epsilon allows: the accounting is wrong."""


@dataclass(frozen=True)
class Target:
    name: str
    epsilon: float | None  # per patient, record-level DP-SGD; None: non-private
    hard_fit: bool = False


@dataclass
class Result:
    target: str
    epsilon: float | None
    delta: float
    curves: dict[str, Roc] = field(default_factory=dict)  # by attack
    violations: dict[str, list[Violation]] = field(default_factory=dict)

    def row(self) -> dict[str, object]:
        out: dict[str, object] = {"target": self.target, "epsilon": self.epsilon, "delta": self.delta}
        for attack, curve in self.curves.items():
            out[attack] = {"auc": curve.auc, "tpr_at_1pct": curve.tpr_at(0.01), "tpr_at_01pct": curve.tpr_at(0.001),
                           "violations": len(self.violations.get(attack, []))}
        return out


def targets(epsilons: tuple[float, ...]) -> list[Target]:
    return [Target("one hospital's head fitted hard, non-private (baseline)", None, hard_fit=True),
            Target("secure federated head, non-private", None),
            *(Target(f"secure federated head, DP-SGD epsilon {e:g}", e) for e in epsilons)]


def train(base: torch.nn.Module, parts: list[LocalData], target: Target, recipe: Recipe, seed: int) -> torch.nn.Module:
    """The target's model trained on these hospitals (the baseline: on the first) from `base` (a copy)."""
    if target.hard_fit:
        model = copy.deepcopy(base)
        train_head(model, parts[0], HARD_FIT, device=CPU, generator=torch.Generator().manual_seed(seed))
        return model
    model, _ = federated(base, parts, recipe, "head", target.epsilon, recipe_codec(recipe), seed)
    return model


def _logits(model: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return classifier_head(model)(features.float())


def _confidence(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """LiRA's statistic: log(p_y / (1 - p_y)), computed stably from the logits."""
    log_p = torch.log_softmax(logits.double(), dim=1)
    own = log_p.gather(1, labels.view(-1, 1)).squeeze(1)
    rest = torch.logsumexp(log_p.scatter(1, labels.view(-1, 1), float("-inf")), dim=1)
    return (own - rest).numpy()


def matched(member_labels: torch.Tensor, outsider_labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Members and non-members with the same number of each class (the first of each): otherwise a hospital's
    label skew alone would tell its images from the others, and no DP bound covers that."""
    inside, outside = [], []
    for label in torch.unique(member_labels):
        mine, theirs = (member_labels == label).nonzero().flatten(), (outsider_labels == label).nonzero().flatten()
        take = min(mine.numel(), theirs.numel())
        inside.append(mine[:take].numpy())
        outside.append(theirs[:take].numpy())
    return np.concatenate(inside), np.concatenate(outside)


def run(base: torch.nn.Module, *, images_per_node: int, shadows: int, epsilons: tuple[float, ...],
        progress: Callable[[str], None] = print) -> tuple[list[Result], dict[str, torch.nn.Module]]:
    """Train every target and `shadows` shadow models per target, attack, check the bounds (raises
    `BoundViolated`). The results, and the targets by name."""
    recipe = Recipe()
    digest = backbone_digest(base)
    target_parts = hospitals(TARGET_SEED, images_per_node, 32)
    members = pooled(target_parts)  # the first hospital's images first: the baseline's members
    outsiders = pooled(hospitals(NONMEMBER_SEED, images_per_node, 32))
    count = members.train_labels.numel()
    images = torch.cat([members.train_images, outsiders.train_images])
    labels = torch.cat([members.train_labels, outsiders.train_labels])
    features = penultimate_features(base, images, CPU)
    chosen = targets(epsilons)
    logits: dict[str, torch.Tensor] = {}
    models: dict[str, torch.nn.Module] = {}
    for index, target in enumerate(chosen):
        started = time.monotonic()
        model = train(base, target_parts, target, recipe, seed=TARGET_SEED)
        assert backbone_digest(model) == digest, "a head-only target changed the backbone"
        logits[target.name] = _logits(model, features)
        models[target.name] = model
        progress(f"  target {index + 1}/{len(chosen)}: {target.name} ({time.monotonic() - started:.0f} s)")
    shadow_confidence: dict[str, list[np.ndarray]] = {t.name: [] for t in chosen}
    for k in range(shadows):
        started = time.monotonic()
        parts = hospitals(SHADOW_SEED + k, images_per_node, 32)  # disjoint SYNTHETIC hospitals: OUT for every image
        for target in chosen:
            shadow = train(base, parts, target, recipe, seed=SHADOW_SEED + k)
            shadow_confidence[target.name].append(_confidence(_logits(shadow, features), labels))
        progress(f"  shadow set {k + 1}/{shadows}: {len(chosen)} shadow models ({time.monotonic() - started:.0f} s)")
    results = []
    for target in chosen:
        result = Result(target.name, target.epsilon, DELTA)  # each hospital's: min(1e-5, 0.1 / its images)
        out = np.stack(shadow_confidence[target.name])
        lira = (_confidence(logits[target.name], labels) - out.mean(axis=0)) / max(float(out.std(axis=0).mean()), 1e-12)
        inside, outside = matched(labels[:target_parts[0].train_labels.numel() if target.hard_fit else count],
                                  labels[count:])
        scored = (("loss threshold", logit_loss_scores(logits[target.name], labels)), ("offline LiRA", lira))
        for attack, score in scored:
            curve = roc(score[inside], score[count + outside])
            result.curves[attack] = curve
            if target.epsilon is not None:
                result.violations[attack] = bound_violations(curve, target.epsilon, DELTA)
            progress(f"  {target.name}, {attack}: AUC {curve.auc:.3f}, TPR {curve.tpr_at(0.01):.3f} at 1% FPR, "
                     f"{curve.tpr_at(0.001):.3f} at 0.1%")
        results.append(result)
    check(results)
    return results, models


def check(results: list[Result]) -> None:
    """Raise `BoundViolated` when any DP model's curve broke its bound."""
    broken = [(r.target, a, v) for r in results for a, found in r.violations.items() for v in found]
    if broken:
        raise BoundViolated("membership inference beat the DP bound, so the accounting is wrong: "
                            + "; ".join(f"{t}, {a}: TPR {v.tpr:.3f} at FPR {v.fpr:.4f} ({v.bound})"
                                        for t, a, v in broken[:5]))


def figure(results: list[Result], path: Path) -> None:
    """ROC curves on log-log axes, one panel per attack, with the bound of the smallest epsilon."""
    attacks = list(results[0].curves)
    fig, axes = plt.subplots(1, len(attacks), figsize=(5.2 * len(attacks), 4.6))
    floor = 1.0 / max(max(c.nonmembers for r in results for c in r.curves.values()), 1)
    for axis, attack in zip(np.atleast_1d(axes), attacks):
        for result in results:
            curve = result.curves[attack]
            axis.plot(np.maximum(curve.fpr, floor), np.maximum(curve.tpr, floor),
                      label=f"{result.target} (AUC {curve.auc:.2f})", linewidth=1.2)
        grid = np.logspace(np.log10(floor), 0, 50)
        axis.plot(grid, grid, color="grey", linestyle=":", linewidth=1, label="chance")
        private = [r for r in results if r.epsilon is not None]
        if private:
            smallest = min(private, key=lambda r: float(r.epsilon or 0))
            bound = np.minimum(1.0, np.exp(float(smallest.epsilon)) * grid + smallest.delta)
            axis.plot(grid, bound, color="black", linestyle="--", linewidth=1,
                      label=f"DP bound at epsilon {smallest.epsilon:g}")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlim(floor, 1)
        axis.set_ylim(floor, 1.05)
        axis.set_xlabel("false-positive rate")
        axis.set_ylabel("true-positive rate")
        axis.set_title(f"{attack} (SYNTHETIC data)", fontsize=9)
        axis.legend(fontsize=6, loc="lower right")
    fig.suptitle("Membership inference on the consortium's final models, SYNTHETIC data", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: list[Result]) -> str:
    rows = []
    for result in results:
        for attack, curve in result.curves.items():
            checked = ("no violation" if not result.violations.get(attack) else "VIOLATED") \
                if result.epsilon is not None else "-"
            rows.append(f"| {result.target} | {attack} | {curve.auc:.3f} | {curve.tpr_at(0.01):.3f} | "
                        f"{curve.tpr_at(0.001):.3f} | {checked} |")
    return ("| model | attack | AUC | TPR at 1% FPR | TPR at 0.1% FPR | DP bound check |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows))
