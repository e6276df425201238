"""A model update's path to integers mod 2^b and back to a mean float update.

encode: clip (L2) -> scale -> clamp -> conditional randomized rounding -> add this
node's share of Poisson-family noise -> reduce mod 2^b.
decode: modular sum -> centered signed integers -> minus the known noise mean ->
divide by (participants * scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from services.common.noise import NoiseKind, node_noise_share, noise_mean, sample_noise
from services.common.packing import to_centered, to_modular
from services.common.quantize import quantize_update

# The summed noise may reach this many standard deviations before it could wrap
# around the modular field (probability < 1e-9 per coordinate).
NOISE_TAIL_SIGMAS = 6.0
# Coordinates larger than this many times the RMS coordinate of a norm-C update
# are clamped; the rest keep full resolution.
CLAMP_RATIO = 12.0
DEFAULT_ROUNDING_BETA = math.exp(-0.5)


@dataclass(frozen=True)
class QuantizationPlan:
    """Everything a node and the decoder must agree on to turn floats into field integers."""

    dimension: int
    clip_norm: float
    scale: float
    coordinate_bound: int
    bits: int
    min_participants: int
    noise_kind: NoiseKind
    noise_variance: float  # per coordinate, carried by any quorum of min_participants
    rounding_beta: float = DEFAULT_ROUNDING_BETA

    @property
    def node_noise_variance(self) -> float:
        return node_noise_share(self.noise_variance, self.min_participants)


def coordinate_bound_for(bits: int, max_participants: int, noise_kind: NoiseKind, noise_variance: float,
                         min_participants: int) -> int:
    """Largest per-node coordinate such that n_max nodes plus noise stay inside the field."""
    share = node_noise_share(noise_variance, min_participants)
    summed_std = math.sqrt(share * max_participants)
    summed_mean = noise_mean(noise_kind, share, max_participants)
    room = (1 << (bits - 1)) - 1 - NOISE_TAIL_SIGMAS * summed_std - summed_mean
    bound = math.floor(room / max_participants)
    if bound < 1:
        raise ValueError(
            f"noise variance {noise_variance} leaves no room in a {bits}-bit field for "
            f"{max_participants} participants; lower the noise or raise the bits"
        )
    return bound


def plan_quantization(
    dimension: int,
    clip_norm: float,
    bits: int,
    max_participants: int,
    min_participants: int,
    noise_kind: NoiseKind,
    noise_variance: float,
) -> QuantizationPlan:
    """A plan whose scale spends the field's range on the update, not on empty bits."""
    if noise_kind is NoiseKind.NONE:
        noise_variance = 0.0
    bound = coordinate_bound_for(bits, max_participants, noise_kind, noise_variance, min_participants)
    # A norm-C update's RMS coordinate is C / sqrt(d); map CLAMP_RATIO of those to the bound.
    scale = bound * math.sqrt(dimension) / (clip_norm * CLAMP_RATIO)
    return QuantizationPlan(
        dimension=dimension,
        clip_norm=clip_norm,
        scale=scale,
        coordinate_bound=bound,
        bits=bits,
        min_participants=min_participants,
        noise_kind=noise_kind,
        noise_variance=noise_variance,
    )


def encode_update(update: np.ndarray, plan: QuantizationPlan, rng: np.random.Generator) -> np.ndarray:
    """One node's update as integers in [0, 2^b), noise share included."""
    if update.shape != (plan.dimension,):
        raise ValueError(f"update has shape {update.shape}, plan expects ({plan.dimension},)")
    integers = quantize_update(update, plan.clip_norm, plan.scale, plan.coordinate_bound, plan.rounding_beta, rng)
    integers += sample_noise(plan.noise_kind, plan.node_noise_variance, plan.dimension, rng)
    return to_modular(integers, plan.bits)


def decode_mean_update(field_sums: np.ndarray, plan: QuantizationPlan, participants: int) -> np.ndarray:
    """The participants' mean float update from the modular sum of their encodings."""
    if participants < 1:
        raise ValueError("cannot average zero participants")
    signed = to_centered(field_sums, plan.bits).astype(np.float64)
    signed -= noise_mean(plan.noise_kind, plan.node_noise_variance, participants)
    return signed / (participants * plan.scale)
