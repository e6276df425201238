"""Local training options, on the tiny CNN and SYNTHETIC images (CPU)."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from services.common.ml.classification_metrics import auc_from_histograms, histogram_edges
from services.common.ml.model_spec import flatten_state
from services.common.ml.models import build_model
from services.common.ml.trainable import classifier_head
from services.hospital_node.data.local_data import LocalData
from services.hospital_node.data.synthetic_xray import generate_synthetic_xrays
from services.hospital_node.trainer import (
    LocalTraining,
    evaluate,
    evaluation_report,
    log_class_prior,
    loss_gradient,
    train_local,
)

CPU = torch.device("cpu")


def one_class_data(label: int, count: int = 64) -> LocalData:
    images, labels = generate_synthetic_xrays(4 * count, 32, 2, seed=3)
    keep = np.flatnonzero(labels == label)[:count]
    tensor = torch.from_numpy(images[keep])
    target = torch.full((keep.size,), label, dtype=torch.int64)
    return LocalData(tensor, target, tensor, target, 2)


def mean_margin(model: torch.nn.Module, images: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(images)
    return float((logits[:, 1] - logits[:, 0]).mean())


def trained_margin_shift(imbalance: str, optimizer: str) -> float:
    data = one_class_data(label=1)
    model = build_model("resnet18", 2, seed=0)  # GroupNorm: no running statistics to drift in eval
    before = mean_margin(model, data.train_images)
    config = LocalTraining(epochs=2, learning_rate=1e-3 if optimizer == "adamw" else 0.05, batch_size=16,
                           optimizer=optimizer, imbalance=imbalance)  # type: ignore[arg-type]
    train_local(model, data, config, device=CPU, generator=torch.Generator().manual_seed(0))
    return mean_margin(model, data.train_images) - before


def test_log_class_prior_is_log_frequency_and_minus_infinity_for_an_absent_class() -> None:
    prior = log_class_prior(torch.tensor([0, 0, 0, 2]), 3)
    assert torch.allclose(prior[[0, 2]], torch.log(torch.tensor([0.75, 0.25])))
    assert prior[1] == -math.inf


@pytest.mark.slow
def test_one_class_hospital_does_not_push_predictions_with_logit_adjustment() -> None:
    for optimizer in ("sgd", "adamw"):
        plain = trained_margin_shift("none", optimizer)
        adjusted = trained_margin_shift("logit_adjust", optimizer)
        assert plain > 1.0, f"{optimizer}: plain cross-entropy should learn 'always class 1' ({plain})"
        assert abs(adjusted) < 0.05 * plain, f"{optimizer}: logit-adjusted shift {adjusted} vs plain {plain}"


def test_proximal_term_keeps_the_local_model_nearer_the_global_one() -> None:
    images, labels = generate_synthetic_xrays(96, 32, 2, seed=4)
    data = LocalData(torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(images[:8]),
                     torch.from_numpy(labels[:8]), 2)
    distances = {}
    for mu in (0.0, 1.0):
        model = build_model("tiny", 2, seed=0)
        start = flatten_state(model.state_dict())
        train_local(model, data, LocalTraining(epochs=3, learning_rate=0.05, batch_size=16, proximal_mu=mu), device=CPU,
                    generator=torch.Generator().manual_seed(0))
        distances[mu] = float(np.linalg.norm(flatten_state(model.state_dict()) - start))
    assert distances[1.0] < 0.8 * distances[0.0], distances


def test_pooled_auc_keeps_the_ranking_of_a_confident_model() -> None:
    """Probabilities all above 0.999 but perfectly ranked: equal-width bins would read AUC 0.5."""
    negatives = 1 / (1 + np.exp(-np.linspace(7.0, 8.0, 50)))
    positives = 1 / (1 + np.exp(-np.linspace(8.5, 9.5, 50)))
    edges = histogram_edges()
    auc = auc_from_histograms(np.histogram(positives, edges)[0], np.histogram(negatives, edges)[0])
    assert auc > 0.95
    assert np.all(np.diff(edges) > 0) and edges[0] == 0.0 and edges[-1] == 1.0


def test_evaluate_counts_every_validation_image_once() -> None:
    images, labels = generate_synthetic_xrays(40, 32, 2, seed=5)
    counts = evaluate(build_model("tiny", 2, 0), torch.from_numpy(images), torch.from_numpy(labels), num_classes=2,
                      device=CPU)
    assert counts.confusion.sum() == 40
    assert counts.positive_histograms.sum() + counts.negative_histograms.sum() == 2 * 40


def test_the_calibration_split_is_carved_from_the_held_out_images_disjoint_and_deterministic() -> None:
    from services.hospital_node.data.local_data import _split

    images = np.arange(100, dtype=np.float32).reshape(100, 1)  # each image's value is its index
    labels = np.arange(100) % 2
    data = _split(images, labels, 0.2, seed=4, classes=2, calibration_fraction=0.5)
    train, val, cal = (set(t[:, 0].int().tolist()) for t in (data.train_images, data.val_images, data.cal_images))
    assert (len(train), len(val), len(cal)) == (80, 10, 10)
    assert train | val | cal == set(range(100)) and not (train & val or train & cal or val & cal)
    # Without calibration the training split is the same images: calibration only divides the held-out ones.
    plain = _split(images, labels, 0.2, seed=4, classes=2)
    assert set(plain.train_images[:, 0].int().tolist()) == train and plain.cal_labels.numel() == 0
    assert set(plain.val_images[:, 0].int().tolist()) == val | cal
    again = _split(images, labels, 0.2, seed=4, classes=2, calibration_fraction=0.5)
    assert torch.equal(again.cal_images, data.cal_images)
    # A small hospital keeps at least one image on each side: 3 held out, 10% asked for, 1 kept.
    small = _split(images[:15], labels[:15], 0.2, seed=4, classes=2, calibration_fraction=0.1)
    assert (small.cal_labels.numel(), small.val_labels.numel()) == (1, 2)
    small = _split(images[:15], labels[:15], 0.2, seed=4, classes=2, calibration_fraction=0.9)
    assert (small.cal_labels.numel(), small.val_labels.numel()) == (2, 1)
    # Too few to divide: the hospital still trains and evaluates, and keeps no calibration split.
    tiny = _split(images[:5], labels[:5], 0.2, seed=4, classes=2, calibration_fraction=0.5)
    assert (tiny.train_labels.numel(), tiny.val_labels.numel(), tiny.cal_labels.numel()) == (4, 1, 0)


def test_the_evaluation_report_carries_calibration_histograms_only_for_a_calibration_split() -> None:
    from services.hospital_node.trainer import evaluation_report

    images, labels = generate_synthetic_xrays(30, 32, 2, seed=6)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    model = build_model("tiny", 2, 0)
    with_cal = LocalData(x[:10], y[:10], x[10:20], y[10:20], 2, x[20:], y[20:])
    report = evaluation_report(model, with_cal, CPU, node_id="h1", model_round=3)
    assert report.model_round == 3 and report.counts.confusion.sum() == 10 == report.counts.examples
    assert report.calibration_positive is not None and report.calibration_negative is not None
    # Each calibration image lands once in each class's positive or negative histogram.
    assert report.calibration_positive.sum() + report.calibration_negative.sum() == 2 * 10
    calibration = evaluate(model, x[20:], y[20:], num_classes=2, device=CPU)
    assert np.array_equal(report.calibration_positive, calibration.positive_histograms)
    without = evaluation_report(model, LocalData(x[:10], y[:10], x[10:20], y[10:20], 2), CPU, node_id="h1",
                                model_round=3)
    assert without.calibration_positive is None and without.calibration_negative is None


def _logistic_hospital(rng: np.random.Generator, normal: int, opacity: int, shift: list[float]) -> LocalData:
    labels = np.r_[np.zeros(normal), np.ones(opacity)].astype(np.int64)
    features = rng.normal(size=(labels.size, 4)) + labels[:, None] + np.asarray(shift)
    images = torch.from_numpy(features.astype(np.float32)).reshape(-1, 1, 2, 2)
    return LocalData(images, torch.from_numpy(labels), images[:1], torch.from_numpy(labels[:1]), 2)


def _logistic_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))


def _pooled_optimum(parts: list[LocalData]) -> np.ndarray:
    """The minimiser of the pooled cross-entropy, by L-BFGS: independent of the trainer."""
    model = _logistic_model()
    images = torch.cat([p.train_images for p in parts])
    labels = torch.cat([p.train_labels for p in parts])
    solver = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-10,
                               tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        solver.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        return loss

    solver.step(closure)
    return flatten_state(model.state_dict())


def _federate(parts: list[LocalData], correct: bool, rounds: int) -> np.ndarray:
    """Full-batch local AdamW, many steps a round, plain averaging; SCAFFOLD (option I) when `correct`."""
    model = _logistic_model()
    config = LocalTraining(epochs=40, learning_rate=0.01, batch_size=200, optimizer="adamw", imbalance="none",
                           schedule="constant")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    own: list[dict[str, torch.Tensor]] = [{} for _ in parts]
    consortium: dict[str, torch.Tensor] | None = None
    for _ in range(rounds):
        finished = []
        for index, part in enumerate(parts):
            model.load_state_dict(start)
            at_start = loss_gradient(model, part, config, CPU)
            drift = None if consortium is None else {n: consortium[n] - own[index][n] for n in consortium}
            train_local(model, part, config, device=CPU, generator=torch.Generator().manual_seed(0), drift=drift)
            own[index] = at_start
            finished.append({k: v.clone() for k, v in model.state_dict().items()})
        start = {k: torch.stack([f[k] for f in finished]).mean(0) for k in start}
        if correct:
            consortium = {n: torch.stack([c[n] for c in own]).mean(0) for n in own[0]}
    return flatten_state(start)


@pytest.mark.slow
def test_drift_correction_brings_federated_adamw_to_the_pooled_optimum_under_label_skew() -> None:
    rng = np.random.default_rng(0)
    parts = [_logistic_hospital(rng, 190, 10, [1, 0, 0, 0]), _logistic_hospital(rng, 10, 190, [0, 1, 0, 0])]
    optimum = _pooled_optimum(parts)
    plain = np.linalg.norm(_federate(parts, correct=False, rounds=15) - optimum)
    corrected = np.linalg.norm(_federate(parts, correct=True, rounds=15) - optimum)
    assert plain > 0.3, f"the skewed hospitals should pull plain FedAvg off the optimum ({plain})"
    assert corrected < 0.05 * plain, f"corrected {corrected} vs plain {plain} from the pooled optimum"


def test_the_loss_gradient_is_the_full_batch_gradient_and_leaves_the_model_unchanged() -> None:
    rng = np.random.default_rng(3)
    data = _logistic_hospital(rng, 50, 23, [0.5, 0, 0, 0])
    model = _logistic_model()
    before = flatten_state(model.state_dict())
    config = LocalTraining(epochs=1, learning_rate=0.1, batch_size=16, optimizer="adamw", imbalance="logit_adjust")
    prior = log_class_prior(data.train_labels, 2)
    loss = torch.nn.functional.cross_entropy(model(data.train_images) + prior, data.train_labels)
    expected = torch.autograd.grad(loss, list(model.parameters()))
    gradient = loss_gradient(model, data, config, CPU)  # in batches of 16, the last one short
    for (name, _), value in zip(model.named_parameters(), expected):
        torch.testing.assert_close(gradient[name], value, rtol=1e-5, atol=1e-6)
    assert np.array_equal(flatten_state(model.state_dict()), before)
    assert all(p.grad is None for p in model.parameters())


def test_drift_is_added_to_each_steps_gradient() -> None:
    """Plain SGD's first step from a model whose loss gradient is g moves it by -lr (g + drift)."""
    rng = np.random.default_rng(2)
    data = _logistic_hospital(rng, 30, 34, [0, 0, 0, 0])
    model = _logistic_model()
    before = [p.detach().clone() for p in model.parameters()]
    gradient = torch.autograd.grad(torch.nn.functional.cross_entropy(model(data.train_images), data.train_labels),
                                   list(model.parameters()))
    drift = {name: torch.linspace(-1, 1, p.numel()).reshape(p.shape) for name, p in model.named_parameters()}
    config = LocalTraining(epochs=1, learning_rate=0.1, batch_size=64, optimizer="sgd", imbalance="none",
                           schedule="constant")
    train_local(model, data, config, device=CPU, generator=torch.Generator().manual_seed(0), drift=drift)
    for (name, parameter), start, g in zip(model.named_parameters(), before, gradient):
        # weight decay 1e-4 on the starting weights, as in the trainer's SGD
        expected = start - 0.1 * (g + drift[name] + 1e-4 * start)
        torch.testing.assert_close(parameter.detach(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_frozen_head_arrives_and_leaves_unchanged_while_the_body_trains(optimizer: str) -> None:
    images, labels = generate_synthetic_xrays(48, 32, 2, seed=6)
    data = LocalData(torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(images[:8]),
                     torch.from_numpy(labels[:8]), 2)
    model = build_model("tiny", 2, seed=5)
    head = classifier_head(model)
    head_before = [p.detach().clone() for p in head.parameters()]
    body_before = model[1].features[0].weight.detach().clone()
    config = LocalTraining(epochs=2, learning_rate=1e-2, batch_size=16, optimizer=optimizer,  # type: ignore[arg-type]
                           freeze_head=True)
    train_local(model, data, config, device=CPU, generator=torch.Generator().manual_seed(0))
    for parameter, before in zip(head.parameters(), head_before):
        assert torch.equal(parameter.detach(), before)  # not even weight decay touched it
        assert parameter.requires_grad  # and it trains again when not frozen
    assert not torch.equal(model[1].features[0].weight.detach(), body_before)
    train_local(model, data, replace(config, freeze_head=False), device=CPU, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(head.weight.detach(), head_before[0])


def test_a_hospital_with_two_validation_images_sends_counts_of_nothing() -> None:
    """Counts and score bins of two images would tell each image's score: below the floor the report is empty."""
    images = torch.rand(10, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1] * 5)
    data = LocalData(images, labels, images[:2], labels[:2], 2)
    model = build_model("tiny-gn", 2, 0)
    empty = evaluation_report(model, data, torch.device("cpu"), node_id="hospital-1", model_round=3, min_images=20)
    assert empty.counts.examples == 0 and empty.counts.loss_sum == 0.0
    assert not empty.counts.confusion.any() and not empty.counts.positive_histograms.any()
    assert not empty.counts.negative_histograms.any() and empty.calibration_positive is None
    full = evaluation_report(model, data, torch.device("cpu"), node_id="hospital-1", model_round=3, min_images=2)
    assert full.counts.examples == 2
