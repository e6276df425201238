"""FGSM and PGD against a linear model, whose worst case within an L-infinity ball is known: the margin of the
true class falls by exactly epsilon times the L1 norm of the two classes' weight difference; and against a small
CNN trained on a simple generated task, where a larger budget never leaves the accuracy higher."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from services.common.ml.adversarial import accuracy, fgsm, pgd
from services.common.ml.models import build_model
from services.hospital_node.data.local_data import LocalData
from services.hospital_node.trainer import LocalTraining, train_local
from tests.threads import one_torch_thread

pytestmark = pytest.mark.unit


@pytest.fixture
def one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def _margin(model: nn.Linear, images: torch.Tensor) -> torch.Tensor:
    logits = model(images.flatten(1))
    return logits[:, 1] - logits[:, 0]


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_on_a_linear_model_the_attack_reaches_the_closed_form_worst_case(attack: str) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 2)
    model = nn.Sequential(nn.Flatten(), linear)
    images = 0.25 + 0.5 * torch.rand(8, 1, 8, 8)  # inside [0, 1] by more than the budget: no clipping at the edge
    labels = torch.ones(8, dtype=torch.long)
    epsilon = 4 / 255
    adversarial = (fgsm(model, images, labels, epsilon) if attack == "fgsm"
                   else pgd(model, images, labels, epsilon=epsilon, steps=20))
    drop = _margin(linear, images) - _margin(linear, adversarial)
    worst = epsilon * (linear.weight[1] - linear.weight[0]).abs().sum()
    assert torch.allclose(drop, worst.expand_as(drop), rtol=1e-4)
    assert (adversarial - images).abs().max() <= epsilon + 1e-6


def _halves(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy 16 px images whose left or right half is slightly brighter, by class: a task a tiny CNN learns in
    seconds, so that the test is of the attack (the SYNTHETIC radiographs take a pretrained backbone to learn)."""
    labels = torch.randint(0, 2, (count,), generator=generator)
    images = 0.5 + 0.15 * torch.randn(count, 1, 16, 16, generator=generator)
    left = torch.zeros(count, 1, 16, 16)
    left[..., :8] = 1
    brighter = torch.where(labels.view(-1, 1, 1, 1) == 1, left, 1 - left)
    return (images + 0.08 * brighter).clamp(0, 1), labels


def test_pgd_lowers_a_trained_models_accuracy_monotonically_with_the_budget(one_thread: None) -> None:
    torch.manual_seed(0)
    images, labels = _halves(384, torch.Generator().manual_seed(0))
    model = build_model("tiny-gn", 2, 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(6):
        for start in range(0, 256, 32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images[start:start + 32]), labels[start:start + 32]).backward()
            optimizer.step()
    held_out, truth = images[256:], labels[256:]
    accuracies = [accuracy(model, pgd(model, held_out, truth, epsilon=budget / 255, steps=10) if budget else held_out,
                           truth)
                  for budget in (0, 1, 2, 4, 8, 16)]
    assert accuracies[0] > 0.9  # it learned (measured 1.0)
    assert all(later <= earlier for earlier, later in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[-1] < accuracies[0] - 0.5, accuracies  # measured 1.0 down to 0.16 at 16/255


def test_adversarial_training_in_the_trainer_buys_robustness_at_its_budget(one_thread: None) -> None:
    """The hospitals' setting (`LocalTraining.adversarial_epsilon`), through the node's trainer: trained on PGD
    examples, the model keeps more accuracy under PGD at that budget than the same training without."""
    images, labels = _halves(384, torch.Generator().manual_seed(0))
    data = LocalData(images[:256], labels[:256], images[256:], labels[256:], 2)
    budget = 12 / 255
    robust = {}
    for adversarial in (0.0, budget):
        torch.manual_seed(0)
        model = build_model("tiny-gn", 2, 0)
        train_local(model, data, LocalTraining(6, 3e-3, 32, "adamw", imbalance="none", adversarial_epsilon=adversarial,
                                               adversarial_steps=3),
                    device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
        attacked = pgd(model, images[256:], labels[256:], epsilon=budget, steps=10)
        robust[adversarial] = accuracy(model, attacked, labels[256:])
    assert robust[budget] > robust[0.0] + 0.2, robust
