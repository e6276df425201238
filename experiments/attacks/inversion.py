"""Gradient inversion: the Inverting Gradients attack (Geiping et al., "Inverting Gradients - How easy is it to
break privacy in federated learning?", NeurIPS 2020). The attacker holds a model's weights and a vector it
believes to be the loss gradient of a few images at those weights; it searches for images whose gradient points
the same way: 1 - cosine similarity of the gradients, plus a total-variation prior, minimized by Adam on signed
input gradients, from random noise, with pixels kept in [0, 1].

Label recovery for one image is iDLG's rule (Zhao et al., 2020): under cross-entropy, the classifier bias's
gradient is softmax minus one-hot, negative only at the true class.

PSNR and SSIM against the true images come from torchmetrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


@dataclass(frozen=True)
class InversionSettings:
    """The attack's budget and prior: Adam steps at `learning_rate` (decayed tenfold at 3/8, 5/8 and 7/8 of the
    steps, as in the paper), a total-variation weight, and the seed of the random start."""

    steps: int = 500
    learning_rate: float = 0.01
    total_variation: float = 0.0  # on SYNTHETIC radiographs even 1e-4 kept PSNR near 21 dB where 0 reached 80+
    seed: int = 0


def dlg_lenet(num_classes: int, image_size: int, seed: int = 0) -> nn.Module:
    """The small sigmoid CNN of Zhu et al. (Deep Leakage from Gradients, NeurIPS 2019) for one-channel images:
    the known case where gradient inversion recovers an image, so that a harness that fails there is broken."""
    if image_size % 4:
        raise ValueError(f"image size {image_size} is not a multiple of 4")
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 12, 5, padding=2, stride=2), nn.Sigmoid(),
                         nn.Conv2d(12, 12, 5, padding=2, stride=2), nn.Sigmoid(),
                         nn.Conv2d(12, 12, 5, padding=2, stride=1), nn.Sigmoid(),
                         nn.Flatten(), nn.Linear(12 * (image_size // 4) ** 2, num_classes))


def loss_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """The mean cross-entropy loss's gradient over `images`, per trainable parameter: what one local step of
    plain FedAvg sends (up to the learning rate's factor, which the cosine loss ignores)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(images), labels)
    return [g.detach() for g in torch.autograd.grad(loss, parameters)]


def split_like(vector: torch.Tensor, model: nn.Module) -> list[torch.Tensor]:
    """A flat vector cut into tensors shaped like the model's trainable parameters, in their order."""
    shapes = [p.shape for p in model.parameters() if p.requires_grad]
    sizes = [int(torch.Size(shape).numel()) for shape in shapes]
    if vector.numel() != sum(sizes):
        raise ValueError(f"a vector of {vector.numel()} values cannot be the model's {sum(sizes)}-value gradient")
    return [piece.reshape(shape) for piece, shape in zip(torch.split(vector.flatten(), sizes), shapes)]


def recover_label(gradient: Sequence[torch.Tensor]) -> int:
    """iDLG: the class whose classifier-bias gradient is the most negative (the last parameter is the bias)."""
    return int(torch.argmin(gradient[-1]).item())


def total_variation(images: torch.Tensor) -> torch.Tensor:
    return ((images[..., 1:, :] - images[..., :-1, :]).abs().mean()
            + (images[..., :, 1:] - images[..., :, :-1]).abs().mean())


def _cosine_distance(gradient: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    dot = sum((g * t).sum() for g, t in zip(gradient, target))
    norm = torch.sqrt(sum((g * g).sum() for g in gradient)) * torch.sqrt(sum((t * t).sum() for t in target))
    return 1 - dot / norm.clamp_min(1e-12)


def invert(model: nn.Module, target: Sequence[torch.Tensor], labels: torch.Tensor, shape: tuple[int, ...], *,
           settings: InversionSettings = InversionSettings()) -> torch.Tensor:
    """Images of `shape` (N, C, H, W) whose loss gradient under `labels` best matches `target`'s direction."""
    model.eval()
    parameters = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(settings.seed)
    guess = torch.rand(shape, generator=generator).requires_grad_(True)
    optimizer = torch.optim.Adam([guess], lr=settings.learning_rate)
    milestones = [int(settings.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    for _ in range(settings.steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(guess), labels)
        gradient = torch.autograd.grad(loss, parameters, create_graph=True)
        objective = _cosine_distance(gradient, target) + settings.total_variation * total_variation(guess)
        (guess.grad,) = torch.autograd.grad(objective, [guess])
        guess.grad.sign_()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            guess.clamp_(0, 1)
    return guess.detach()


@dataclass(frozen=True)
class Fidelity:
    """How close a reconstruction is to the true images: PSNR (dB, higher is closer) and SSIM (1 is identical)."""

    psnr: float
    ssim: float


def psnr(reconstruction: torch.Tensor, truth: torch.Tensor) -> float:
    """PSNR (dB) of images in [0, 1], each image scored alone and the scores averaged."""
    return float(peak_signal_noise_ratio(reconstruction, truth, data_range=1.0, reduction="elementwise_mean",
                                         dim=(1, 2, 3)))


def fidelity(reconstruction: torch.Tensor, truth: torch.Tensor) -> Fidelity:
    """PSNR and SSIM of images in [0, 1], each image scored alone and the scores averaged."""
    ssim = structural_similarity_index_measure(reconstruction, truth, data_range=1.0)
    return Fidelity(psnr(reconstruction, truth), float(ssim))  # type: ignore[arg-type]
