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
`resnet50-bn-frozen` is the BatchNorm ResNet-50 of pretrained (ImageNet) weights with every
BatchNorm frozen: statistics and affine parameters fixed, so each is a fixed per-channel
affine map of each example alone, and DP-SGD can train the layers around it exactly (its
`head` or `last_block`; never `all`, which would leave the frozen BatchNorm's parameters out of
"all"). It is only useful from a weights file (`init_weights`): a torchvision ResNet-50 state
dict loads into it with its BatchNorm statistics.
`efficientnet-b0` is torchvision's EfficientNet-B0 with GroupNorm(8) for BatchNorm
(every channel count it has is a multiple of 8): about 4.0M parameters with two
classes, a sixth of ResNet-50's, so a sixth of the encrypted bytes.

Every activation and residual addition is out-of-place (`ReLU(inplace=False)`,
`out = out + identity`): the same numbers as torchvision's in-place forms, but the
per-example gradient hooks of DP-SGD (Opacus) need each layer's input intact after
the forward pass. `tiny-gn` is `tiny` with GroupNorm, the small model DP tests use.

Radiographs are single-channel; the standard 3-channel stems are kept (so the
ResNet-50 parameter count is torchvision's: 23,512,130 with 2 classes) and the
grey channel is repeated, as is usual when fine-tuning ImageNet-shaped models.
"""

from __future__ import annotations

from typing import Callable

import torch
import torchvision
from torch import nn

from services.common.ml.choices import ARCHITECTURES, FROZEN_NORM_ARCHITECTURES

__all__ = ["ARCHITECTURES", "FROZEN_NORM_ARCHITECTURES", "PER_EXAMPLE_ARCHITECTURES", "FrozenBatchNorm2d",
           "best_device", "build_model"]

# Architectures without a batch statistic: the only ones DP-SGD can train (a batch statistic mixes the examples).
PER_EXAMPLE_ARCHITECTURES = ("resnet50", "resnet18", "efficientnet-b0", "resnet50-bn-frozen", "tiny-gn")

GROUPS = 32


def group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(GROUPS, channels)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with its statistics and affine parameters frozen: y = (x - mean) / sqrt(var + eps) * weight + bias,
    the same per-channel affine map for every example, whatever else is in its batch, in train and eval mode alike.
    Its four tensors are buffers, not parameters: nothing trains them, and they travel with the global model, so
    every hospital applies the statistics of the weights file the aggregator started from. A torchvision state
    dict's `running_mean` and `running_var` load as `mean` and `var` (services/common/ml/initial_weights.py)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight: torch.Tensor
        self.bias: torch.Tensor
        self.mean: torch.Tensor
        self.var: torch.Tensor
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * torch.rsqrt(self.var + self.eps)
        shift = self.bias - self.mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


class GreyToRgb(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class TinyCnn(nn.Module):
    """A small CNN for tests and quick runs (about 25k parameters); BatchNorm, or GroupNorm(4) for DP-SGD."""

    def __init__(self, num_classes: int, group_norm: bool = False) -> None:
        super().__init__()

        def norm(channels: int) -> nn.Module:
            return nn.GroupNorm(4, channels) if group_norm else nn.BatchNorm2d(channels)

        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), norm(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), norm(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), norm(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(64, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(torch.flatten(self.features(images), 1))
        return logits


class Bottleneck(torchvision.models.resnet.Bottleneck):  # type: ignore[misc]
    """torchvision's Bottleneck with an out-of-place residual addition."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + identity
        result: torch.Tensor = self.relu(out)
        return result


class BasicBlock(torchvision.models.resnet.BasicBlock):  # type: ignore[misc]
    """torchvision's BasicBlock with an out-of-place residual addition."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        result: torch.Tensor = self.relu(out)
        return result


def _resnet(block: type[BasicBlock] | type[Bottleneck], layers: list[int], num_classes: int,
            *, norm: Callable[[int], nn.Module] | None, zero_init_residual: bool) -> nn.Module:
    body: nn.Module = torchvision.models.resnet.ResNet(block, layers, num_classes=num_classes, norm_layer=norm,
                                                       zero_init_residual=zero_init_residual)
    for module in body.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return body


def _efficientnet_b0(num_classes: int) -> nn.Module:
    body: nn.Module = torchvision.models.efficientnet_b0(
        weights=None, num_classes=num_classes, norm_layer=lambda channels: nn.GroupNorm(8, channels))
    for module in body.modules():
        if isinstance(module, (nn.ReLU, nn.SiLU)):
            module.inplace = False
    return body


def build_model(architecture: str, num_classes: int, seed: int = 0) -> nn.Module:
    """The architecture with weights initialised from `seed` (never downloaded)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")
    torch.manual_seed(seed)
    body: nn.Module
    if architecture == "resnet50":
        body = _resnet(Bottleneck, [3, 4, 6, 3], num_classes, norm=group_norm, zero_init_residual=True)
    elif architecture == "resnet18":
        body = _resnet(BasicBlock, [2, 2, 2, 2], num_classes, norm=group_norm, zero_init_residual=True)
    elif architecture == "efficientnet-b0":
        body = _efficientnet_b0(num_classes)
    elif architecture == "resnet50-bn":
        body = _resnet(Bottleneck, [3, 4, 6, 3], num_classes, norm=None, zero_init_residual=False)
    elif architecture == "resnet50-bn-frozen":
        body = _resnet(Bottleneck, [3, 4, 6, 3], num_classes, norm=FrozenBatchNorm2d, zero_init_residual=False)
    else:
        body = TinyCnn(num_classes, group_norm=architecture == "tiny-gn")
    return nn.Sequential(GreyToRgb(), body)


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
