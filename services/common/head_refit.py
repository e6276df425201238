"""Refit the classifier head from pooled feature statistics (linear discriminant analysis).

Under label skew the averaged model's last layer is a compromise between hospitals that
each pulled it towards their own classes. Its body can still separate the classes well. The
statistics that fit the best linear head on those features, under a shared-covariance Gaussian
model, are sums: per class the image count and the sum of the penultimate features, and over
all images the sum of their outer products. Sums add across hospitals, so they can be pooled
through the same secure sum as the updates; no image or per-image feature leaves a hospital.
(Classifier calibration from feature statistics: Luo et al., "No Fear of Heterogeneity", NeurIPS 2021.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def classifier_head(model: nn.Module) -> nn.Linear:
    """The model's last linear layer: the one the refit replaces."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear classifier head to refit")
    return linears[-1]


@dataclass(frozen=True)
class FeatureMoments:
    """Additive statistics of penultimate features: `counts[c]` images of class c, `sums[c]` their feature sum,
    `second` the sum of every image's feature outer product."""

    counts: np.ndarray  # (C,)
    sums: np.ndarray  # (C, d)
    second: np.ndarray  # (d, d)

    def __add__(self, other: FeatureMoments) -> FeatureMoments:
        return FeatureMoments(self.counts + other.counts, self.sums + other.sums, self.second + other.second)


@torch.no_grad()
def penultimate_features(model: nn.Module, images: torch.Tensor, device: torch.device,
                         batch_size: int = 128) -> torch.Tensor:
    """The inputs of the model's head for these images (eval mode, no augmentation), float64 on the CPU."""
    head = classifier_head(model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0].detach().double().cpu()))
    model.to(device)
    model.eval()
    try:
        for start in range(0, images.shape[0], batch_size):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                model(images[start : start + batch_size].to(device))
    finally:
        hook.remove()
    return torch.cat(captured) if captured else torch.zeros((0, head.in_features), dtype=torch.float64)


def moments_of(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> FeatureMoments:
    one_hot = torch.nn.functional.one_hot(labels, num_classes).double()
    return FeatureMoments(one_hot.sum(dim=0).numpy(), (one_hot.T @ features).numpy(), (features.T @ features).numpy())


def feature_moments(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    device: torch.device, batch_size: int = 128) -> FeatureMoments:
    """The moments of this model's penultimate features over these images."""
    return moments_of(penultimate_features(model, images, device, batch_size), labels, num_classes)


def lda_head(moments: FeatureMoments, shrinkage: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The head's weight (C, d) and bias (C,) of linear discriminant analysis on pooled moments: class means,
    one within-class covariance shrunk towards its mean variance by `shrinkage`, and the pooled class
    frequencies as the prior. A class no hospital holds gets a bias of -inf's stand-in, -1e4."""
    total = float(moments.counts.sum())
    present = moments.counts > 0
    means = np.where(present[:, None], moments.sums / np.maximum(moments.counts, 1)[:, None], 0.0)
    scatter = moments.second - (moments.counts[:, None] * means).T @ means
    covariance = scatter / max(total, 1.0)  # the maximum-likelihood estimate, as the secure sums give it
    return lda_from_estimates(means, covariance, moments.counts, shrinkage)


def lda_from_estimates(means: np.ndarray, covariance: np.ndarray, counts: np.ndarray,
                       shrinkage: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """`lda_head` from class means (C, d), a within-class covariance (d, d) and class counts (C,) (any positive
    multiple of them: only their ratios set the prior)."""
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must lie in [0, 1], got {shrinkage}")
    present = counts > 0
    if present.sum() < 2:
        raise ValueError(f"a head needs images of at least two classes; the moments hold {counts.tolist()}")
    total = float(counts[present].sum())
    covariance = (covariance + covariance.T) / 2
    dim = covariance.shape[0]
    covariance = (1 - shrinkage) * covariance + shrinkage * (np.trace(covariance) / dim) * np.eye(dim)
    weight = np.linalg.solve(covariance, means.T).T  # row c: Sigma^-1 mu_c
    prior = np.where(present, np.log(np.where(present, counts, 1.0) / total), -1e4)
    bias = -0.5 * np.einsum("cd,cd->c", weight, means) + prior
    # Only differences between classes' logits matter: centre both, as a trained head would sit.
    return weight - weight[present].mean(axis=0), bias - bias[present].mean()


def set_head(model: nn.Module, weight: np.ndarray, bias: np.ndarray) -> None:
    head = classifier_head(model)
    if tuple(head.weight.shape) != weight.shape:
        raise ValueError(f"refit head has shape {weight.shape}; the model's is {tuple(head.weight.shape)}")
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight).to(head.weight))
        if head.bias is not None:
            head.bias.copy_(torch.from_numpy(bias).to(head.bias))


# ---------------------------------------------------------------- the secure sums a refit takes
# A hospital's statistics pass the same clip, rounding, noise and encryption as an update, whose noise and
# resolution are set relative to the clip norm. Uncentred moments are dominated by the mean every image shares,
# which would leave the class contrast and the covariance inside that noise. So the statistics are centred: on the
# pooled feature mean for the class sums, then on the pooled class means for the scatter (the three sums are in
# scripts/sweep.py's refit_head_securely and docs/DECISIONS.md). Each hospital scales each vector to a fixed norm;
# where its counts ride in the same vector, a scale only weighs that hospital's images.

def class_sums_vector(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """First sum: the class counts, then each class's feature sum."""
    moments = moments_of(features, labels, num_classes)
    return np.concatenate([moments.counts, moments.sums.reshape(-1)])


def class_means_from_sum(total: np.ndarray, num_classes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The (weighted) class counts and class means of a first sum; a class counted at or below zero (absent, or
    lost in the noise) gets a zero mean and a zero count."""
    if total.size != num_classes * (dim + 1):
        raise ValueError(f"class sums for {num_classes} classes of {dim} features take {num_classes * (dim + 1)} "
                         f"values, got {total.size}")
    counts = np.maximum(total[:num_classes], 0.0)
    sums = total[num_classes:].reshape(num_classes, dim)
    means = np.where(counts[:, None] > 0, sums / np.where(counts > 0, counts, 1.0)[:, None], 0.0)
    return counts, means


def scatter_vector(features: torch.Tensor, labels: torch.Tensor, means: np.ndarray) -> np.ndarray:
    """The upper triangle of the scatter about the pooled class means."""
    centred = features - torch.from_numpy(means).to(features)[labels]
    scatter = (centred.T @ centred).numpy()
    return scatter[np.triu_indices(scatter.shape[0])]


def scatter_from_sum(total: np.ndarray, dim: int) -> np.ndarray:
    """The symmetric matrix whose upper triangle a sum of scatter vectors holds."""
    if total.size != dim * (dim + 1) // 2:
        raise ValueError(f"a scatter of {dim} features takes {dim * (dim + 1) // 2} values, got {total.size}")
    upper = np.zeros((dim, dim))
    upper[np.triu_indices(dim)] = total
    scatter: np.ndarray = upper + np.triu(upper, 1).T
    return scatter


def scaled_to(vector: np.ndarray, norm: float) -> np.ndarray:
    """The vector at this L2 norm (a zero vector stays zero)."""
    length = float(np.linalg.norm(vector))
    return vector * (norm / length) if length > 0 else vector
