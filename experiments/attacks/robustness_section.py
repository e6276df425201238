"""Adversarial examples against the consortium's final models, on SYNTHETIC data (the harness's third section).

FGSM and L-infinity PGD (`services.common.ml.adversarial`) at budgets from 1/255 to 8/255 against the pooled
validation images of the five hospitals, scored by accuracy, F1 and AUC:

- the membership section's head models (non-private and DP-SGD), which share the public backbone;
- the last block and head fine-tuned on the pooled training images, plainly and with the hospitals' PGD
  adversarial training (`adversarial_epsilon`), with its cost in step time and clean F1.
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

from experiments.pretrain import binary_auc
from experiments.privacy_table import f1, hospitals, pooled
from services.common.ml.adversarial import fgsm, pgd
from services.common.ml.trainable import trained_parameters
from services.hospital_node.local_round import train_only
from services.hospital_node.trainer import LocalTraining

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CPU = torch.device("cpu")
BATCH = 50


@dataclass
class Robustness:
    model: str
    budgets: list[float]  # in 1/255
    pgd: dict[str, list[float]] = field(default_factory=dict)  # accuracy, f1, auc at each budget (0: clean)
    fgsm: dict[str, list[float]] = field(default_factory=dict)
    step_seconds: float | None = None  # training, per step (the fine-tuned models only)


def _scores(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([torch.softmax(model(images[i:i + BATCH]), dim=1)[:, 1]
                          for i in range(0, len(images), BATCH)]).numpy()


def _attacked(attack: Callable[..., torch.Tensor], model: torch.nn.Module, images: torch.Tensor,
              labels: torch.Tensor, budget: float, **options: int) -> torch.Tensor:
    if budget == 0:
        return images
    return torch.cat([attack(model, images[i:i + BATCH], labels[i:i + BATCH], epsilon=budget / 255, **options)
                      for i in range(0, len(images), BATCH)])


def measure(name: str, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, budgets: list[float],
            steps: int) -> Robustness:
    truth = labels.numpy()
    result = Robustness(name, [0.0, *budgets])
    for attack, into, options in ((pgd, result.pgd, {"steps": steps}), (fgsm, result.fgsm, {})):
        for budget in result.budgets:
            score = _scores(model, _attacked(attack, model, images, labels, budget, **options))
            into.setdefault("accuracy", []).append(float(((score >= 0.5) == (truth == 1)).mean()))
            into.setdefault("f1", []).append(f1(score, truth))
            into.setdefault("auc", []).append(binary_auc(score, truth))
    return result


def fine_tune(base: torch.nn.Module, *, images_per_node: int, epochs: int, adversarial_epsilon: float,
              adversarial_steps: int = 3) -> tuple[torch.nn.Module, float]:
    """The last block and head trained on the pooled training images by the node's own partial training
    (`train_only`), with PGD adversarial training at `adversarial_epsilon` or without; and the seconds per step."""
    model = copy.deepcopy(base)
    data = pooled(hospitals(0, images_per_node, 32))
    training = LocalTraining(epochs, 0.003, 32, "sgd", imbalance="none", schedule="cosine",
                             adversarial_epsilon=adversarial_epsilon, adversarial_steps=adversarial_steps)
    started = time.monotonic()
    stats = train_only(model, trained_parameters(model, "last_block"), data, training=training, device=CPU,
                       generator=torch.Generator().manual_seed(0))
    return model, (time.monotonic() - started) / max(stats.steps, 1)


def figure(results: list[Robustness], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for axis, metric in zip(axes, ("accuracy", "f1", "auc")):
        for result in results:
            line, = axis.plot(result.budgets, result.pgd[metric], marker="o", linewidth=1.2, label=f"{result.model}")
            axis.plot(result.budgets, result.fgsm[metric], linestyle=":", color=line.get_color(), linewidth=1)
        axis.set_xlabel("L-infinity budget (x 1/255)")
        axis.set_ylabel(metric)
        axis.set_ylim(0, 1.02)
        axis.set_title(f"{metric} under PGD (solid) and FGSM (dotted), SYNTHETIC", fontsize=9)
    axes[0].legend(fontsize=6, loc="lower left")
    fig.suptitle("Adversarial examples against the consortium's final models, SYNTHETIC validation images", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: list[Robustness]) -> str:
    budgets = results[0].budgets
    head = " | ".join(f"{b:g}/255" if b else "clean" for b in budgets)
    rows = []
    for result in results:
        for metric in ("accuracy", "f1", "auc"):
            rows.append(f"| {result.model} | {metric} | " + " | ".join(f"{v:.3f}" for v in result.pgd[metric]) + " |")
    return (f"| model | metric (PGD) | {head} |\n|---|---|" + "---|" * len(budgets) + "\n" + "\n".join(rows))
