"""Local training and evaluation on this hospital's images.

CUDA with automatic mixed precision and channels_last where a GPU exists; the
CPU in float32 otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from services.hospital_node.image_preprocessing import augment_batch
from services.hospital_node.local_data import LocalData

HISTOGRAM_BINS = 100


@dataclass(frozen=True)
class TrainStats:
    steps: int
    examples: int
    mean_loss: float


@dataclass(frozen=True)
class EvaluationCounts:
    confusion: np.ndarray
    loss_sum: float
    examples: int
    positive_histograms: np.ndarray
    negative_histograms: np.ndarray


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1 over the classes present."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    weights = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return (weights / weights[counts > 0].mean()).float()


def train_local(model: nn.Module, data: LocalData, epochs: int, learning_rate: float, batch_size: int,
                device: torch.device, imbalance: Literal["none", "class_weights", "sampler"],
                schedule: Literal["constant", "cosine"], generator: torch.Generator,
                augment: bool = False) -> TrainStats:
    use_amp = device.type == "cuda"
    model.to(device)
    if use_amp:
        model.to(memory_format=torch.channels_last)
    model.train()
    dataset = TensorDataset(data.train_images, data.train_labels)
    sampler = None
    if imbalance == "sampler":
        per_class = class_weights(data.train_labels, data.num_classes)
        sampler = WeightedRandomSampler(per_class[data.train_labels].double(), len(dataset), generator=generator)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                        generator=generator, drop_last=len(dataset) > batch_size)
    weight = class_weights(data.train_labels, data.num_classes).to(device) if imbalance == "class_weights" else None
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9, weight_decay=1e-4)
    total_steps = max(1, epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, (lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps))) if schedule == "cosine"
        else (lambda step: 1.0))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    steps, seen, loss_total = 0, 0, 0.0
    for _ in range(epochs):
        for images, labels in loader:
            if augment:
                images = augment_batch(images, generator)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if use_amp:
                images = images.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(model(images), labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            steps += 1
            seen += labels.numel()
            loss_total += float(loss.detach()) * labels.numel()
    return TrainStats(steps, seen, loss_total / max(seen, 1))


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
             device: torch.device, batch_size: int = 64) -> EvaluationCounts:
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
    probs = torch.cat(probabilities).numpy() if probabilities else np.zeros((0, num_classes))
    truth = labels.numpy()
    predicted = probs.argmax(axis=1) if probs.size else np.zeros(0, dtype=np.int64)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    positive = np.stack([np.histogram(probs[truth == c, c], edges)[0] for c in range(num_classes)])
    negative = np.stack([np.histogram(probs[truth != c, c], edges)[0] for c in range(num_classes)])
    return EvaluationCounts(confusion, loss_sum, int(truth.size), positive, negative)
