"""A torchvision ResNet-50 state dict as a hospital would download ImageNet's, made here (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision


def imagenet_style_resnet50(path: Path) -> torchvision.models.ResNet:
    """Save at `path` a torchvision ResNet-50 of 1,000 classes whose BatchNorm statistics and affine parameters are
    not their initial values (so that dropping or misplacing one would show); return it in eval mode."""
    torch.manual_seed(5)
    imagenet = torchvision.models.resnet50(num_classes=1000)
    with torch.no_grad():
        for module in imagenet.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
    torch.save(imagenet.state_dict(), path)
    return imagenet.eval()
