"""Local training and evaluation on this hospital's images.

CUDA with automatic mixed precision and channels_last where a GPU exists; the
CPU in float32 otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from services.common.ml.adversarial import pgd
from services.common.ml.classification_metrics import HISTOGRAM_BINS, histogram_edges
from services.common.ml.evaluation_report import EvaluationCounts, EvaluationReport
from services.common.ml.trainable import classifier_head
from services.hospital_node.data.image_preprocessing import augment_batch
from services.hospital_node.data.local_data import LocalData


@dataclass(frozen=True)
class TrainStats:
    steps: int
    examples: int
    mean_loss: float


Imbalance = Literal["none", "class_weights", "sampler", "logit_adjust"]
LocalOptimizer = Literal["sgd", "adamw"]


@dataclass(frozen=True)
class LocalTraining:
    """How one hospital trains in one round: the round plan's part and the hospital's own part."""

    epochs: int
    learning_rate: float
    batch_size: int
    optimizer: LocalOptimizer = "sgd"
    proximal_mu: float = 0.0
    imbalance: Imbalance = "class_weights"
    schedule: Literal["constant", "cosine"] = "cosine"
    augment: bool = False
    # Train the body only; the classifier head keeps the weights it arrived with (FedBABU: Oh et al., ICLR 2022).
    freeze_head: bool = False
    # PGD adversarial training (Madry et al., ICLR 2018): each step trains on the batch's PGD examples of this
    # L-infinity radius (images in [0, 1]), found in `adversarial_steps` steps; 0: off.
    adversarial_epsilon: float = 0.0
    adversarial_steps: int = 3


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1 over the classes present."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    weights = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return (weights / weights[counts > 0].mean()).float()


def log_class_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log of the local class frequencies; -inf for a class this hospital does not hold."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    return torch.log(counts / counts.sum()).float()


def _loss_function(config: LocalTraining, labels: torch.Tensor, num_classes: int,
                   device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if config.imbalance == "class_weights":
        return nn.CrossEntropyLoss(weight=class_weights(labels, num_classes).to(device))
    if config.imbalance == "logit_adjust":
        # Logit adjustment (Menon et al., ICLR 2021), the calibration FedLC (Zhang et al., ICML 2022) applies
        # under label skew: training on logits + log(local prior) leaves the raw logits balanced. An absent
        # class gets -inf, i.e. the restricted softmax of FedRS (Li & Zhan, KDD 2021): a hospital holding one
        # class has no contrast to learn from and must not push every image towards its class (with Adam,
        # any nonzero gradient there, however small, becomes a full-size step).
        prior = log_class_prior(labels, num_classes).to(device)
        return lambda logits, target: nn.functional.cross_entropy(logits + prior, target)
    return nn.CrossEntropyLoss()


def _optimizer(config: LocalTraining, model: nn.Module) -> torch.optim.Optimizer:
    trained = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(trained, lr=config.learning_rate, weight_decay=1e-4)
    return torch.optim.SGD(trained, lr=config.learning_rate, momentum=0.9, weight_decay=1e-4)


def train_local(model: nn.Module, data: LocalData, config: LocalTraining, *, device: torch.device,
                generator: torch.Generator, drift: Mapping[str, torch.Tensor] | None = None) -> TrainStats:
    """Train in place. `drift`, by parameter name, is added to every step's loss gradient before the optimizer
    uses it: SCAFFOLD's `c - c_i` (Karimireddy et al., ICML 2020; `c_i` from `loss_gradient`)."""
    use_amp = device.type == "cuda"
    model.to(device)
    if use_amp:
        model.to(memory_format=torch.channels_last)
    model.train()
    frozen = [p for p in classifier_head(model).parameters() if p.requires_grad] if config.freeze_head else []
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        return _train_steps(model, data, config, device=device, generator=generator, drift=drift)
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)


def _train_steps(model: nn.Module, data: LocalData, config: LocalTraining, *, device: torch.device,
                 generator: torch.Generator, drift: Mapping[str, torch.Tensor] | None) -> TrainStats:
    use_amp = device.type == "cuda"
    dataset = TensorDataset(data.train_images, data.train_labels)
    sampler = None
    if config.imbalance == "sampler":
        per_class = class_weights(data.train_labels, data.num_classes)
        sampler = WeightedRandomSampler(per_class[data.train_labels].double(), len(dataset), generator=generator)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
                        generator=generator, drop_last=len(dataset) > config.batch_size)
    loss_fn = _loss_function(config, data.train_labels, data.num_classes, device)
    optimizer = _optimizer(config, model)
    # FedProx (Li et al., MLSys 2020): mu/2 ||w - w_global||^2 keeps a skewed hospital near the global model.
    anchor = [p.detach().clone() for p in model.parameters()] if config.proximal_mu > 0 else []
    total_steps = max(1, config.epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, (lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps))) if config.schedule == "cosine"
        else (lambda step: 1.0))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    corrections = [(p, drift[name].to(device, p.dtype)) for name, p in model.named_parameters()
                   if drift is not None and name in drift]
    steps, seen, loss_total = 0, 0, 0.0
    for _ in range(config.epochs):
        for images, labels in loader:
            if config.augment:
                images = augment_batch(images, generator)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if config.adversarial_epsilon > 0:
                images = pgd(model, images, labels, epsilon=config.adversarial_epsilon, steps=config.adversarial_steps)
                model.train()  # the attack ran in eval mode: BatchNorm's statistics see only what is trained on
            if use_amp:
                images = images.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(model(images), labels)
            scaler.scale(loss).backward()
            if corrections:
                scale = scaler.get_scale() if use_amp else 1.0  # the gradients are still scaled by AMP's loss scale
                with torch.no_grad():
                    for parameter, correction in corrections:
                        if parameter.grad is not None:
                            parameter.grad.add_(correction, alpha=scale)
            if anchor:
                # The gradient is still scaled by AMP's loss scale; scale the proximal term alike (one read of
                # the scale per step: each read waits for the GPU).
                factor = config.proximal_mu * scaler.get_scale()
                with torch.no_grad():
                    for parameter, start in zip(model.parameters(), anchor):
                        if parameter.grad is not None:
                            parameter.grad.add_(parameter - start, alpha=factor)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            steps += 1
            seen += labels.numel()
            loss_total += float(loss.detach()) * labels.numel()
    return TrainStats(steps, seen, loss_total / max(seen, 1))


def loss_gradient(model: nn.Module, data: LocalData, config: LocalTraining, device: torch.device) -> dict[str, torch.Tensor]:
    """The training loss's gradient at the current weights over all of this hospital's training images (no
    augmentation, no step): SCAFFOLD's option I control variate."""
    model.to(device)
    model.train()
    loss_fn = _loss_function(config, data.train_labels, data.num_classes, device)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in named}
    total = data.train_labels.numel()
    for start in range(0, total, config.batch_size):
        images = data.train_images[start : start + config.batch_size].to(device)
        labels = data.train_labels[start : start + config.batch_size].to(device)
        model.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(model(images), labels) * (labels.numel() / total)
        loss.backward()
        with torch.no_grad():
            for name, parameter in named:
                if parameter.grad is not None:
                    sums[name].add_(parameter.grad.float())
    model.zero_grad(set_to_none=True)
    return {name: value.cpu() for name, value in sums.items()}


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, num_classes: int, device: torch.device,
            batch_size: int = 64) -> tuple[np.ndarray, float]:
    """Every image's class probabilities, and the summed cross-entropy against `labels`."""
    model.to(device)
    model.eval()
    probabilities, loss_sum = [], 0.0
    for start in range(0, labels.numel(), batch_size):
        batch = images[start : start + batch_size].to(device)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            logits = model(batch).float()
        target = labels[start : start + batch_size].to(device)
        loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        probabilities.append(torch.softmax(logits, dim=1).cpu())
    return (torch.cat(probabilities).numpy() if probabilities else np.zeros((0, num_classes))), loss_sum


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
             device: torch.device, batch_size: int = 64) -> EvaluationCounts:
    probs, loss_sum = predict(model, images, labels, num_classes=num_classes, device=device, batch_size=batch_size)
    truth = labels.numpy()
    predicted = probs.argmax(axis=1) if probs.size else np.zeros(0, dtype=np.int64)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    edges = histogram_edges()
    positive = np.stack([np.histogram(probs[truth == c, c], edges)[0] for c in range(num_classes)])
    negative = np.stack([np.histogram(probs[truth != c, c], edges)[0] for c in range(num_classes)])
    return EvaluationCounts(confusion, loss_sum, int(truth.size), positive, negative)


def empty_report(node_id: str, model_round: int, num_classes: int) -> EvaluationReport:
    """A report that counts nothing: what a hospital with too few validation images sends, so that no round waits
    for it and nothing about its images leaves it."""
    zeros = np.zeros((num_classes, HISTOGRAM_BINS), dtype=np.int64)
    return EvaluationReport(node_id, model_round, EvaluationCounts(np.zeros((num_classes, num_classes), np.int64),
                                                                   0.0, 0, zeros, zeros.copy()))


def evaluation_report(model: nn.Module, data: LocalData, device: torch.device, *, node_id: str,
                      model_round: int, min_images: int = 0) -> EvaluationReport:
    """The report a hospital sends for one model: its validation counts, plus the score
    histograms of its calibration split when it keeps one (the aggregator chooses the
    operating point on those). With fewer than `min_images` validation images, an empty
    report: counts and score bins of a handful of images would tell each image's score."""
    if data.val_labels.numel() < min_images:
        return empty_report(node_id, model_round, data.num_classes)
    counts = evaluate(model, data.val_images, data.val_labels, num_classes=data.num_classes, device=device)
    if not data.cal_labels.numel():
        return EvaluationReport(node_id, model_round, counts)
    calibration = evaluate(model, data.cal_images, data.cal_labels, num_classes=data.num_classes, device=device)
    return EvaluationReport(node_id, model_round, counts, calibration.positive_histograms,
                            calibration.negative_histograms)
