"""`head` rounds: the classifier head trained alone on features the frozen backbone computes once.

The backbone stays in eval mode with every weight frozen, so each image's feature vector is a
fixed per-example map (GroupNorm, or BatchNorm with frozen statistics, included): computed
once per local round, and every step afterwards costs a matrix product. That is what lets a
hospital take many DP-SGD steps on a CPU (De et al., 2022; Tramer & Boneh, ICLR 2021).

DP-SGD here is user-level when the hospital knows its patients (Poisson sampling of
patients, each sampled patient's per-image gradients summed and that sum clipped to C;
Gaussian noise N(0, sigma^2 C^2) on the sum; division by the expected number of patients),
and example-level otherwise: the unit is the image. A patient with k images then moves the
clipped sum by at most C, whatever k. The per-example gradients of a linear head under
cross-entropy are exact in closed form, (softmax(z) - onehot(y)) x f for the weight and
softmax(z) - onehot(y) for the bias; tests check them against torch.func. The noise is
Opacus's secure-mode draw from a generator seeded from the OS's entropy, never from the
training seed.
"""

from __future__ import annotations

import hashlib
import math
import secrets

import torch
from opacus.optimizers.optimizer import _generate_noise
from torch import nn

from services.common.ml.head_refit import penultimate_features
from services.common.ml.trainable import classifier_head
from services.hospital_node.data.local_data import LocalData
from services.hospital_node.record_privacy import poisson_schedule
from services.hospital_node.trainer import LocalTraining, TrainStats


def per_example_gradients(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor,
                          labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each example's cross-entropy gradient with respect to the head's weight (B, K, D) and bias (B, K), and each
    example's loss (B,)."""
    logits = features @ weight.T + bias
    error = torch.softmax(logits, dim=1)
    error[torch.arange(labels.numel()), labels] -= 1.0
    losses = nn.functional.cross_entropy(logits, labels, reduction="none")
    return error[:, :, None] * features[:, None, :], error, losses


def clipped_unit_sum(weight_grads: torch.Tensor, bias_grads: torch.Tensor, units: torch.Tensor,
                     clip_norm: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sum each unit's (patient's) per-example gradients, clip every unit's sum to L2 norm `clip_norm`, and add the
    units up: the weight and bias parts of the clipped sum, and the number of units."""
    present, inverse = torch.unique(units, return_inverse=True)
    count = int(present.numel())
    per_unit_w = torch.zeros((count, *weight_grads.shape[1:]), dtype=weight_grads.dtype).index_add_(
        0, inverse, weight_grads)
    per_unit_b = torch.zeros((count, *bias_grads.shape[1:]), dtype=bias_grads.dtype).index_add_(0, inverse,
                                                                                               bias_grads)
    norms = torch.sqrt(per_unit_w.flatten(1).pow(2).sum(1) + per_unit_b.pow(2).sum(1))
    factors = torch.clamp(clip_norm / (norms + 1e-12), max=1.0)
    return ((per_unit_w * factors[:, None, None]).sum(0), (per_unit_b * factors[:, None]).sum(0), count)


def _optimizer(config: LocalTraining, head: nn.Linear) -> torch.optim.Optimizer:
    parameters = list(head.parameters())
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=1e-4)
    return torch.optim.SGD(parameters, lr=config.learning_rate, momentum=0.9, weight_decay=1e-4)


# (the images' identity, address and size, the backbone's digest) -> their features
_FEATURES: dict[tuple[int, int, int, str], torch.Tensor] = {}
FEATURE_SETS = 8


def backbone_digest(model: nn.Module) -> str:
    """SHA-256 of every tensor but the head's: the same digest, the same features."""
    head = {id(p) for p in classifier_head(model).parameters()}
    hasher = hashlib.sha256()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in head:
            hasher.update(name.encode())
            hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()


def frozen_features(model: nn.Module, data: LocalData, device: torch.device) -> torch.Tensor:
    """The training images' head inputs from the frozen backbone (eval mode): computed once per backbone. A `head`
    run never changes the backbone, so its features are computed in the first round only."""
    images = data.train_images
    key = (id(images), images.data_ptr(), images.numel(), backbone_digest(model))
    if key not in _FEATURES:
        while len(_FEATURES) >= FEATURE_SETS:  # a node holds one set; a simulation, one per hospital
            del _FEATURES[next(iter(_FEATURES))]
        _FEATURES[key] = penultimate_features(model, data.train_images, device).float()
    return _FEATURES[key]


def train_head(model: nn.Module, data: LocalData, config: LocalTraining, *, device: torch.device,
               generator: torch.Generator, noise_multiplier: float | None = None,
               clip_norm: float = 1.0) -> TrainStats:
    """Train the head of `model` in place on frozen features; every other weight is left as it arrived.

    `noise_multiplier` None: plain minibatch training (cross-entropy, `config.epochs` shuffled epochs). A number:
    DP-SGD at that sigma and clip norm, `config.epochs` epochs of ceil(units / B) Poisson steps over the units
    (`data.privacy_units()`: patients where known, else images), the schedule the budget charged."""
    features = frozen_features(model, data, device)
    labels = data.train_labels
    head = classifier_head(model).to("cpu")
    optimizer = _optimizer(config, head)
    if noise_multiplier is None:
        return _plain_steps(head, optimizer, features, labels=labels, config=config, generator=generator)
    units = data.privacy_units()
    return _private_steps(head, optimizer, features, labels=labels, units=units, config=config,
                          noise_multiplier=noise_multiplier, clip_norm=clip_norm)


def _plain_steps(head: nn.Linear, optimizer: torch.optim.Optimizer, features: torch.Tensor, *, labels: torch.Tensor,
                 config: LocalTraining, generator: torch.Generator) -> TrainStats:
    steps, seen, loss_total = 0, 0, 0.0
    for _ in range(config.epochs):
        order = torch.randperm(labels.numel(), generator=generator)
        for start in range(0, labels.numel(), config.batch_size):
            batch = order[start : start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(head(features[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            steps, seen, loss_total = steps + 1, seen + batch.numel(), loss_total + float(loss.detach()) * batch.numel()
    return TrainStats(steps, seen, loss_total / max(seen, 1))


def _private_steps(head: nn.Linear, optimizer: torch.optim.Optimizer, features: torch.Tensor,
                   *, labels: torch.Tensor, units: torch.Tensor, config: LocalTraining, noise_multiplier: float,
                   clip_norm: float) -> TrainStats:
    present = torch.unique(units)
    sample_rate, per_epoch = poisson_schedule(int(present.numel()), config.batch_size)
    expected_units = max(1.0, sample_rate * present.numel())
    sampling = torch.Generator().manual_seed(secrets.randbits(63))
    noise = torch.Generator().manual_seed(secrets.randbits(63))
    total_steps = max(1, config.epochs * per_epoch)
    base_rate = config.learning_rate
    steps, seen, loss_total = 0, 0, 0.0
    for _ in range(total_steps):
        if config.schedule == "cosine":
            for group in optimizer.param_groups:
                group["lr"] = base_rate * 0.5 * (1 + math.cos(math.pi * steps / total_steps))
        chosen = present[torch.rand(present.numel(), generator=sampling) < sample_rate]
        rows = torch.isin(units, chosen).nonzero().flatten()
        weight, bias = head.weight, head.bias
        with torch.no_grad():
            if rows.numel():
                grads_w, grads_b, losses = per_example_gradients(weight, bias, features[rows], labels[rows])
                sum_w, sum_b, _ = clipped_unit_sum(grads_w, grads_b, units[rows], clip_norm)
                seen, loss_total = seen + rows.numel(), loss_total + float(losses.sum())
            else:  # an empty Poisson draw still takes its noise-only step
                sum_w, sum_b = torch.zeros_like(weight), torch.zeros_like(bias)
            std = noise_multiplier * clip_norm
            weight.grad = (sum_w + _generate_noise(std, sum_w, noise, secure_mode=True)) / expected_units
            bias.grad = (sum_b + _generate_noise(std, sum_b, noise, secure_mode=True)) / expected_units
        optimizer.step()
        steps += 1
    return TrainStats(steps, seen, loss_total / max(seen, 1))

