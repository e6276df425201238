"""Adversarial examples against a trained model: FGSM (Goodfellow et al., ICLR 2015) and L-infinity PGD (Madry et
al., ICLR 2018), on images in [0, 1]: the attack harness's (`experiments.attacks`) and a hospital's PGD
adversarial training (`trainer.LocalTraining.adversarial_epsilon`). Kept short and our own: neither torchattacks
nor ART was added as a dependency for two loops; `tests/common/test_adversarial.py` checks them against a linear
model, whose worst case is known in closed form."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    images = images.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(F.cross_entropy(model(images), labels), [images])
    return gradient


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """One signed-gradient step of size `epsilon` up the loss, clipped to [0, 1]."""
    model.eval()
    return (images + epsilon * _input_gradient(model, images, labels).sign()).clamp(0, 1).detach()


def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epsilon: float, steps: int = 10,
        step_size: float | None = None) -> torch.Tensor:
    """`steps` signed-gradient steps of `step_size` (default 2.5 epsilon / steps, Madry et al.), each projected
    back onto the L-infinity ball of radius `epsilon` around `images` and onto [0, 1]. It starts at the images
    themselves (no random start), so that a larger budget never finds a weaker attack by chance."""
    model.eval()
    size = step_size if step_size is not None else 2.5 * epsilon / steps
    adversarial = images.detach().clone()
    for _ in range(steps):
        adversarial = adversarial + size * _input_gradient(model, adversarial, labels).sign()
        adversarial = torch.min(torch.max(adversarial, images - epsilon), images + epsilon).clamp(0, 1).detach()
    return adversarial


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(images).argmax(dim=1) == labels).float().mean())
