"""DP-SGD (Abadi et al., CCS 2016) in a hospital's local training, with Opacus.

Where the hospital knows its patients, the patient is the unit (user-level DP-SGD): every
step samples patients (Poisson, each with probability q), sums each sampled patient's
per-image gradients (Opacus's hooks), clips that sum to L2 norm C, adds Gaussian noise
N(0, sigma^2 C^2) and divides by the expected number of patients; a patient with k images
moves a step by at most C. Without patient identifiers the unit is the image: every
logical step draws a Poisson batch (each training image independently, with
probability q), computes each example's gradient, clips it to L2 norm C, sums, adds
Gaussian noise N(0, sigma^2 C^2) and divides by the expected batch size. Large logical
batches run as several physical ones (Opacus's BatchMemoryManager), which changes the
memory used, never the mechanism. The sampling and the noise draw from generators
seeded from the OS's entropy, never from the training seed; the noise uses Opacus's
secure_mode sampling (the sum of several draws, against floating-point attacks).
Opacus's own secure_mode also wants torchcsprng, which has no build for the pinned
torch: the generators here are torch's, freshly seeded each round from os.urandom.

What DP-SGD changes in local training: the loss is plain cross-entropy (class weights
and the logit adjustment read this hospital's label counts, a release of their own),
augmentation stays (it is per example), the learning-rate schedule and the optimizer
are post-processing. FedProx and SCAFFOLD are refused under DP by the node.

The model must have no BatchNorm (a batch statistic mixes examples; Opacus's validator
refuses it). `trainable="last_block"` trains the classifier head and the last residual
stage only, the rest frozen as it arrived (from public pretraining): far fewer noised
coordinates, and per-example gradients only where they are needed.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from opacus.data_loader import DPDataLoader
from opacus.grad_sample.utils import prepare_module
from opacus.optimizers import DPOptimizer, get_optimizer_class
from opacus.optimizers.optimizer import _generate_noise
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import TensorDataset

from services.common.errors import FedXrayError
from services.common.ml.models import FrozenBatchNorm2d
from services.common.ml.trainable import Trainable, head_parameters, trained_parameters
from services.hospital_node.data.image_preprocessing import augment_batch
from services.hospital_node.data.local_data import LocalData
from services.hospital_node.record_privacy import poisson_schedule
from services.hospital_node.trainer import LocalTraining, TrainStats

# Opacus's per-example gradient modes that train through the empty batches Poisson sampling draws (functorch and
# expanded weights raise on a batch of zero; docs/BENCHMARKS.md measures all four).
GradSampleMode = Literal["hooks", "ghost"]
GRAD_SAMPLE_MODES: tuple[GradSampleMode, ...] = ("hooks", "ghost")


class PrivateTrainingError(FedXrayError):
    """A model or configuration DP-SGD cannot train."""


@dataclass(frozen=True)
class PrivateTraining:
    noise_multiplier: float
    max_grad_norm: float  # C, the per-example L2 clip norm
    grad_sample_mode: GradSampleMode = "ghost"
    max_physical_batch: int = 32
    trainable: Trainable = "all"


def require_private_model(model: nn.Module, architecture: str, trainable: Trainable | None = None) -> None:
    """Refuse a model DP-SGD cannot train (BatchNorm above all), naming the first problem; with `trainable`, also a
    part it cannot train: a frozen-BatchNorm model trains its `head` or `last_block`, never `all`."""
    if trainable == "all" and any(isinstance(m, FrozenBatchNorm2d) for m in model.modules()):
        raise PrivateTrainingError(
            f"architecture {architecture!r} keeps every BatchNorm layer frozen (statistics and affine parameters), so "
            "DP-SGD trains its head or last_block, not all of it: set trainable to head or last_block")
    was_training = model.training
    model.train()  # the validator also asks for training mode, which says nothing of the architecture
    try:
        problems = ModuleValidator.validate(model, strict=False)
    finally:
        model.train(was_training)
    if problems:
        raise PrivateTrainingError(f"architecture {architecture!r} cannot be trained with record-level DP-SGD: "
                                   f"{problems[0]}; use a GroupNorm one (resnet50, resnet18, efficientnet-b0, tiny-gn)")


def _entropy_generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def train_private(model: nn.Module, data: LocalData, config: LocalTraining, *, private: PrivateTraining,
                  device: torch.device, augment_generator: torch.Generator) -> TrainStats:
    """Train in place with DP-SGD: `config.epochs` epochs of ceil(n / B) Poisson steps (record_privacy's schedule,
    which the budget charged), n the units: the patients where the hospital knows them (user-level DP-SGD), else
    the images."""
    if config.proximal_mu > 0:
        raise PrivateTrainingError("FedProx's proximal term is not supported under DP-SGD")
    model.to(device)
    model.train()
    trained = _trained_names(model, config, private)
    switched = [p for name, p in model.named_parameters() if p.requires_grad and name not in trained]
    for parameter in switched:
        parameter.requires_grad_(False)
    per_patient = data.train_patients is not None
    # Per patient, each image's gradient is needed alone (to sum a patient's before its clip): Opacus's hooks.
    module = per_example_module(model, replace(private, grad_sample_mode="hooks") if per_patient else private,
                                loss_reduction="sum" if per_patient else "mean")
    try:
        if per_patient:
            return _patient_steps(module, model, data, config=config, private=private, device=device,
                                  augment_generator=augment_generator)
        return _private_steps(module, model, data, config=config, private=private, device=device,
                              augment_generator=augment_generator)
    finally:
        release_module(module, model)
        for parameter in switched:
            parameter.requires_grad_(True)


def per_example_module(model: nn.Module, private: PrivateTraining, loss_reduction: str = "mean") -> nn.Module:
    """`model` with Opacus's per-example gradient machinery attached (the same parameters, trained in place)."""
    module: nn.Module = prepare_module(
        model, private.grad_sample_mode, True, batch_first=True, loss_reduction=loss_reduction,
        **({"max_grad_norm": private.max_grad_norm, "use_ghost_clipping": True}
           if private.grad_sample_mode == "ghost" else {}))
    return module


def release_module(module: nn.Module, model: nn.Module) -> None:
    """Take the machinery off again: no hooks, no per-example gradients left on `model`."""
    module._close()  # type: ignore[operator]
    for parameter in model.parameters():
        for attribute in ("grad_sample", "_forward_counter", "summed_grad"):
            if hasattr(parameter, attribute):
                delattr(parameter, attribute)


def private_optimizer(module: nn.Module, base: torch.optim.Optimizer, private: PrivateTraining,
                      *, expected_batch: int, device: torch.device) -> tuple[DPOptimizer, nn.Module]:
    """DP-SGD around `base`: per-example clipping to C, Gaussian noise of sigma x C from an OS-seeded generator,
    division by the expected batch size; and the loss that drives it (ghost clipping's takes two passes)."""
    optimizer: DPOptimizer = get_optimizer_class("flat", False, private.grad_sample_mode)(
        base, noise_multiplier=private.noise_multiplier, max_grad_norm=private.max_grad_norm,
        expected_batch_size=expected_batch, loss_reduction="mean", generator=_entropy_generator(device),
        secure_mode=True)
    criterion: nn.Module = nn.CrossEntropyLoss()
    if private.grad_sample_mode == "ghost":
        criterion = DPLossFastGradientClipping(module, optimizer, criterion, "mean")
    return optimizer, criterion


def _trained_names(model: nn.Module, config: LocalTraining, private: PrivateTraining) -> set[str]:
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    if config.freeze_head:
        names -= head_parameters(model)
    if private.trainable != "all":
        names &= trained_parameters(model, private.trainable)
    if not names:
        raise PrivateTrainingError("nothing left to train under DP-SGD (frozen head and last_block)")
    return names


def clipped_patient_sum(module: nn.Module, trained: list[nn.Parameter], images: torch.Tensor, *, labels: torch.Tensor,
                        patients: torch.Tensor, clip_norm: float, physical_batch: int,
                        augment: Callable[[torch.Tensor], torch.Tensor] | None = None
                        ) -> tuple[list[torch.Tensor], float]:
    """User-level DP-SGD's sum: each image's gradient (Opacus's hooks, `module` built with loss_reduction="sum"),
    summed per patient over every physical batch, each patient's sum clipped to L2 norm `clip_norm` over all
    trained parameters together, and the patients added up; and the summed loss. A patient with k images moves it
    by at most `clip_norm`."""
    present, position = torch.unique(patients, return_inverse=True)
    per_patient = [torch.zeros((present.numel(), *p.shape), dtype=p.dtype, device=p.device) for p in trained]
    loss_total = 0.0
    for start in range(0, labels.numel(), physical_batch):
        batch = images[start:start + physical_batch]
        if augment is not None:
            batch = augment(batch)
        loss = nn.functional.cross_entropy(module(batch), labels[start:start + physical_batch], reduction="sum")
        loss.backward()
        where = position[start:start + physical_batch].to(per_patient[0].device)
        for accumulated, parameter in zip(per_patient, trained):
            accumulated.index_add_(0, where, parameter.grad_sample.detach())  # type: ignore[attr-defined]
            parameter.grad_sample = None  # type: ignore[attr-defined]
            parameter.grad = None
        loss_total += float(loss.detach())
    norms = torch.sqrt(sum((a.flatten(1).pow(2).sum(1) for a in per_patient), torch.zeros(present.numel(),
                                                                                          device=per_patient[0].device)))
    factors = torch.clamp(clip_norm / (norms + 1e-12), max=1.0)
    return [(a * factors.view(-1, *([1] * (a.dim() - 1)))).sum(0) for a in per_patient], loss_total


def _base_optimizer(trained: list[nn.Parameter], config: LocalTraining, total_steps: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimizer DP-SGD's noised gradients drive (post-processing), and its learning-rate schedule."""
    base: torch.optim.Optimizer = (
        torch.optim.AdamW(trained, lr=config.learning_rate, weight_decay=1e-4) if config.optimizer == "adamw"
        else torch.optim.SGD(trained, lr=config.learning_rate, momentum=0.9, weight_decay=1e-4))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        base, (lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps))) if config.schedule == "cosine"
        else (lambda step: 1.0))
    return base, scheduler


def _patient_steps(module: nn.Module, model: nn.Module, data: LocalData, *, config: LocalTraining,
                   private: PrivateTraining, device: torch.device, augment_generator: torch.Generator) -> TrainStats:
    """User-level DP-SGD: each step samples patients (Poisson, q = 1/ceil(P/B)), sums each sampled patient's image
    gradients, clips that sum to C, adds N(0, sigma^2 C^2) (Opacus's secure-mode draw, OS-seeded) and divides by
    the expected patients; then the base optimizer's step."""
    units = data.privacy_units()
    patients = data.unit_count
    sample_rate, steps_per_epoch = poisson_schedule(patients, config.batch_size)
    expected = max(1, round(patients * sample_rate))
    trained = [p for p in model.parameters() if p.requires_grad]
    total_steps = max(1, config.epochs * steps_per_epoch)
    base, scheduler = _base_optimizer(trained, config, total_steps)
    sampling, noise = _entropy_generator(torch.device("cpu")), _entropy_generator(device)
    std = private.noise_multiplier * private.max_grad_norm
    augment = ((lambda batch: augment_batch(batch, augment_generator)) if config.augment else None)
    steps, seen, loss_total = 0, 0, 0.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")  # frozen layers below
        for _ in range(total_steps):
            chosen = torch.nonzero(torch.rand(patients, generator=sampling) < sample_rate).flatten()
            index = torch.nonzero(torch.isin(units, chosen)).flatten()
            base.zero_grad(set_to_none=True)
            if index.numel():
                sums, loss = clipped_patient_sum(module, trained, data.train_images[index].to(device),
                                                 labels=data.train_labels[index].to(device), patients=units[index],
                                                 clip_norm=private.max_grad_norm,
                                                 physical_batch=private.max_physical_batch, augment=augment)
                seen += index.numel()
                loss_total += loss
            else:  # an empty Poisson draw still takes its noise-only step
                sums = [torch.zeros_like(p) for p in trained]
            for parameter, summed in zip(trained, sums):
                parameter.grad = (summed + _generate_noise(std, summed, noise, secure_mode=True)) / expected
            base.step()
            scheduler.step()
            steps += 1
    return TrainStats(steps, seen, loss_total / max(seen, 1))


def _private_steps(module: nn.Module, model: nn.Module, data: LocalData, *, config: LocalTraining,
                   private: PrivateTraining, device: torch.device, augment_generator: torch.Generator) -> TrainStats:
    examples = data.train_labels.numel()
    sample_rate, steps_per_epoch = poisson_schedule(examples, config.batch_size)
    dataset = TensorDataset(data.train_images, data.train_labels)
    sampling = _entropy_generator(torch.device("cpu"))
    loader = DPDataLoader(dataset, sample_rate=sample_rate, generator=sampling)
    loader.batch_sampler.steps = steps_per_epoch  # not int(1 / q), which float rounding can make one less
    trained = [p for p in model.parameters() if p.requires_grad]
    base, scheduler = _base_optimizer(trained, config, max(1, config.epochs * steps_per_epoch))
    optimizer, criterion = private_optimizer(module, base, private, expected_batch=max(1,
                                                                                       round(examples * sample_rate)),
                                             device=device)
    steps, seen, loss_total = 0, 0, 0.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure.*")  # our generators are seeded from os.urandom
        warnings.filterwarnings("ignore", message="Full backward hook is firing")  # frozen layers below
        for _ in range(config.epochs):
            with BatchMemoryManager(data_loader=loader, max_physical_batch_size=private.max_physical_batch,
                                    optimizer=optimizer) as batches:
                for images, labels in batches:
                    if config.augment and labels.numel():
                        images = augment_batch(images, augment_generator)
                    images, labels = images.to(device), labels.to(device)
                    optimizer.zero_grad(set_to_none=True)
                    loss = criterion(module(images), labels)
                    loss.backward()
                    optimizer.step()
                    if not optimizer._is_last_step_skipped:
                        scheduler.step()
                        steps += 1
                    if labels.numel():  # an empty Poisson batch still takes its (noise-only) step
                        seen += labels.numel()
                        loss_total += float(loss.detach()) * labels.numel()
    return TrainStats(steps, seen, loss_total / max(seen, 1))
