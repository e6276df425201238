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

from services.common.ml.model_spec import ParameterSpec
from services.common.ml.trainable import classifier_head

# A class with less than this share of the pooled (weighted) count is taken as absent.
ABSENT_SHARE = 1e-6


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
    """The inputs of the model's head for these images (eval mode, no augmentation, float32 even on CUDA: the
    statistics of a refit are worth more digits than bfloat16's three), as float64 on the CPU."""
    head = classifier_head(model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0].detach().double().cpu()))
    model.to(device)
    model.eval()
    try:
        for start in range(0, images.shape[0], batch_size):
            model(images[start : start + batch_size].to(device))
    finally:
        hook.remove()
    return torch.cat(captured) if captured else torch.zeros((0, head.in_features), dtype=torch.float64)


def moments_of(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> FeatureMoments:
    one_hot = torch.nn.functional.one_hot(labels, num_classes).double()
    return FeatureMoments(one_hot.sum(dim=0).numpy(), (one_hot.T @ features).numpy(), (features.T @ features).numpy())


def feature_moments(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                    device: torch.device, batch_size: int = 128) -> FeatureMoments:
    """The moments of this model's penultimate features over these images."""
    return moments_of(penultimate_features(model, images, device, batch_size), labels, num_classes)


def class_estimates(moments: FeatureMoments) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The class counts (absent classes zeroed), class means and the maximum-likelihood within-class covariance
    of pooled moments.

    The moments may be any positive multiple of image counts (a secure sum of vectors each hospital scaled to the
    clip norm holds weighted counts far below 1). A class below ABSENT_SHARE of the total counts as absent: a
    secure sum decodes an absent class's count to its noise, not to zero."""
    total = float(np.clip(moments.counts, 0.0, None).sum())
    present = moments.counts > ABSENT_SHARE * total
    counts = np.where(present, moments.counts, 0.0)
    means = np.where(present[:, None], moments.sums / np.where(present, counts, 1.0)[:, None], 0.0)
    scatter = moments.second - (counts[:, None] * means).T @ means
    covariance = scatter / counts.sum() if counts.sum() > 0 else scatter
    return counts, means, covariance


def lda_head(moments: FeatureMoments, shrinkage: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The head's weight (C, d) and bias (C,) of linear discriminant analysis on pooled moments: class means,
    one within-class covariance shrunk towards its mean variance by `shrinkage`, and the pooled class
    frequencies as the prior (`class_estimates`). A class no hospital holds gets a bias of -inf's stand-in, -1e4."""
    counts, means, covariance = class_estimates(moments)
    return lda_from_estimates(means, covariance, counts, shrinkage)


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


@dataclass(frozen=True)
class HeadPositions:
    """Where a model's classifier head lies in its flat aggregated vector (`model_spec`), and its shape."""

    weight: slice
    bias: slice | None
    num_classes: int
    features: int

    def install(self, weights: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """A copy of the flat `weights` with this head replaced."""
        if weight.shape != (self.num_classes, self.features):
            raise ValueError(f"refit head has shape {weight.shape}; the model's is {(self.num_classes, self.features)}")
        out = weights.copy()
        out[self.weight] = weight.reshape(-1)
        if self.bias is not None:
            out[self.bias] = bias
        return out


def head_positions(model: nn.Module, spec: ParameterSpec) -> HeadPositions:
    head = classifier_head(model)
    prefix = next(name for name, module in model.named_modules() if module is head)
    bias = spec.positions(f"{prefix}.bias") if head.bias is not None else None
    return HeadPositions(spec.positions(f"{prefix}.weight"), bias, head.out_features, head.in_features)


def set_head(model: nn.Module, weight: np.ndarray, bias: np.ndarray) -> None:
    head = classifier_head(model)
    if tuple(head.weight.shape) != weight.shape:
        raise ValueError(f"refit head has shape {weight.shape}; the model's is {tuple(head.weight.shape)}")
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight).to(head.weight))
        if head.bias is not None:
            head.bias.copy_(torch.from_numpy(bias).to(head.bias))


# ---------------------------------------------------------------- the one secure sum a refit takes
# A hospital uploads its moments as one vector in the statistics layout (one wide field per slot,
# `ckks_params.statistics_layout`), scaled to the clip norm. Its scale weighs only its own images: the counts ride
# in the same vector, so means, covariance and prior are all taken over the same weighted images.

def statistics_dimension(num_classes: int, dim: int) -> int:
    """Values in one statistics vector: C counts, C x d class sums, the d(d+1)/2 upper triangle of the moments."""
    return num_classes + num_classes * dim + dim * (dim + 1) // 2


def statistics_vector(moments: FeatureMoments) -> np.ndarray:
    """The moments as one vector: class counts, class sums (row-major), the upper triangle of `second`."""
    dim = moments.second.shape[0]
    return np.concatenate([moments.counts, moments.sums.reshape(-1), moments.second[np.triu_indices(dim)]])


def moments_from_statistics(vector: np.ndarray, num_classes: int, dim: int) -> FeatureMoments:
    """The moments a (summed) statistics vector holds."""
    expected = statistics_dimension(num_classes, dim)
    if vector.shape != (expected,):
        raise ValueError(f"statistics of {num_classes} classes and {dim} features take {expected} values, "
                         f"got shape {vector.shape}")
    counts = vector[:num_classes]
    sums = vector[num_classes : num_classes * (dim + 1)].reshape(num_classes, dim)
    return FeatureMoments(counts, sums, scatter_from_sum(vector[num_classes * (dim + 1) :], dim))


def scatter_from_sum(total: np.ndarray, dim: int) -> np.ndarray:
    """The symmetric matrix whose upper triangle (row-major) a vector holds."""
    if total.size != dim * (dim + 1) // 2:
        raise ValueError(f"the upper triangle of {dim} features takes {dim * (dim + 1) // 2} values, got {total.size}")
    upper = np.zeros((dim, dim))
    upper[np.triu_indices(dim)] = total
    scatter: np.ndarray = upper + np.triu(upper, 1).T
    return scatter


def scaled_to(vector: np.ndarray, norm: float) -> np.ndarray:
    """The vector at this L2 norm (a zero vector stays zero)."""
    length = float(np.linalg.norm(vector))
    return vector * (norm / length) if length > 0 else vector
