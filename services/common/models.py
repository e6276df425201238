"""Classifier architectures the consortium can train, built deterministically from a seed.

`resnet50` and `resnet18` are torchvision's ResNets with GroupNorm(32) in place of
BatchNorm, the standard remedy for non-IID federated training (Hsieh et al., "The
Non-IID Data Quagmire of Decentralized Machine Learning", ICML 2020): BatchNorm's
running statistics follow each hospital's label mix and break the averaged model.
GroupNorm has the same affine parameters, so the parameter count is unchanged.
The last norm layer of every residual block starts at zero (`zero_init_residual`,
Goyal et al., "Accurate, Large Minibatch SGD", 2017): each block starts as the
identity, which keeps the first local steps of an untrained model stable.
`resnet50-bn` keeps BatchNorm (its running statistics then stay local, see model_spec).

Radiographs are single-channel; the standard 3-channel stems are kept (so the
ResNet-50 parameter count is torchvision's: 23,512,130 with 2 classes) and the
grey channel is repeated, as is usual when fine-tuning ImageNet-shaped models.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

ARCHITECTURES = ("resnet50", "resnet18", "resnet50-bn", "tiny")
GROUPS = 32


def group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(GROUPS, channels)


class GreyToRgb(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class TinyCnn(nn.Module):
    """A small CNN for tests and quick runs (about 25k parameters)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(64, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(torch.flatten(self.features(images), 1))
        return logits


def build_model(architecture: str, num_classes: int, seed: int = 0) -> nn.Module:
    """The architecture with weights initialised from `seed` (never downloaded)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")
    torch.manual_seed(seed)
    body: nn.Module
    if architecture == "resnet50":
        body = torchvision.models.resnet50(weights=None, num_classes=num_classes, norm_layer=group_norm,
                                            zero_init_residual=True)
    elif architecture == "resnet18":
        body = torchvision.models.resnet18(weights=None, num_classes=num_classes, norm_layer=group_norm,
                                            zero_init_residual=True)
    elif architecture == "resnet50-bn":
        body = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    else:
        body = TinyCnn(num_classes)
    return nn.Sequential(GreyToRgb(), body)


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
