"""A model update's path to integers mod 2^b and back to a mean float update.

encode: clip (L2) -> scale -> clamp -> conditional randomized rounding -> add this
node's share of Poisson-family noise -> offset binary, mod 2^b -> add the pairwise mask.
decode: modular sum -> minus the participants' offsets -> centered signed integers ->
minus the known noise mean -> divide by (participants * scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from services.common.secure_sum.noise import NoiseKind, node_noise_share, noise_mean, sample_noise
from services.common.secure_sum.packing import field_offset, to_centered, to_modular
from services.common.secure_sum.quantize import clip_factor, round_piece, rounded_l2_bound, scale_and_clamp_piece

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
    rounding_pieces: int = 1  # pieces rounded independently (one per upload chunk)
    rounding_beta: float = DEFAULT_ROUNDING_BETA

    @property
    def node_noise_variance(self) -> float:
        return node_noise_share(self.noise_variance, self.min_participants)

    @property
    def l2_sensitivity(self) -> float:
        """Hard L2 bound of one node's rounded update (before noise)."""
        return rounded_l2_bound(self.clip_norm * self.scale, self.dimension, self.rounding_beta,
                                self.rounding_pieces)


def coordinate_bound_for(bits: int, max_participants: int, noise_kind: NoiseKind, *, noise_variance: float,
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


def clamp_threshold(dimension: int, clip_norm: float) -> float:
    """Where coordinates are clamped, in model units (`coordinate_bound / scale` of every plan): CLAMP_RATIO
    times the RMS coordinate C / sqrt(d) of a norm-C update."""
    return CLAMP_RATIO * clip_norm / math.sqrt(dimension)


def plan_quantization(
    dimension: int,
    clip_norm: float,
    bits: int,
    *, max_participants: int,
    min_participants: int,
    noise_kind: NoiseKind,
    noise_variance: float,
    rounding_pieces: int = 1,
) -> QuantizationPlan:
    """A plan whose scale spends the field's range on the update, not on empty bits."""
    if noise_kind is NoiseKind.NONE:
        noise_variance = 0.0
    bound = coordinate_bound_for(bits, max_participants, noise_kind, noise_variance=noise_variance,
                                 min_participants=min_participants)
    scale = bound / clamp_threshold(dimension, clip_norm)
    return QuantizationPlan(
        dimension=dimension,
        clip_norm=clip_norm,
        scale=scale,
        coordinate_bound=bound,
        bits=bits,
        min_participants=min_participants,
        noise_kind=noise_kind,
        noise_variance=noise_variance,
        rounding_pieces=rounding_pieces,
    )


def plan_statistics(dimension: int, clip_norm: float, bits: int, *, max_participants: int, min_participants: int,
                    noise_kind: NoiseKind, noise_variance: float, rounding_pieces: int = 1) -> QuantizationPlan:
    """A plan for a vector whose coordinates are not spread like an update's (a few carry most of its norm): the
    clip norm maps to the coordinate bound, so no coordinate of a clipped vector is ever clamped."""
    if noise_kind is NoiseKind.NONE:
        noise_variance = 0.0
    bound = coordinate_bound_for(bits, max_participants, noise_kind, noise_variance=noise_variance,
                                 min_participants=min_participants)
    return QuantizationPlan(dimension=dimension, clip_norm=clip_norm, scale=bound / clip_norm, coordinate_bound=bound,
                            bits=bits, min_participants=min_participants, noise_kind=noise_kind,
                            noise_variance=noise_variance, rounding_pieces=rounding_pieces)


def scale_update(update: np.ndarray, plan: QuantizationPlan) -> np.ndarray:
    """Clip, scale and clamp the whole update (needs its global norm), before rounding."""
    return scale_piece(update, update_clip_factor(update, plan), plan)


def update_clip_factor(update: np.ndarray, plan: QuantizationPlan) -> float:
    """The factor that clips the whole `update` to the plan's norm (1 when it is within)."""
    if update.shape != (plan.dimension,):
        raise ValueError(f"update has shape {update.shape}, plan expects ({plan.dimension},)")
    return clip_factor(update, plan.clip_norm)


def scale_piece(piece: np.ndarray, factor: float, plan: QuantizationPlan) -> np.ndarray:
    """A piece of an update clipped by the whole update's factor, scaled and clamped, before rounding."""
    return scale_and_clamp_piece(piece, factor, plan.scale, plan.coordinate_bound)


def received_update(update: np.ndarray, plan: QuantizationPlan) -> np.ndarray:
    """What a sum receives of `update`, less rounding and noise: clipped and clamped, in model units."""
    return scale_update(update, plan) / plan.scale


def noise_addend(plan: QuantizationPlan, size: int, rng: np.random.Generator) -> np.ndarray:
    """This node's noise share for `size` values plus the offset, mod 2^b: what its rounded values get added, and
    drawable before the update exists."""
    noise = sample_noise(plan.noise_kind, plan.node_noise_variance, size, rng)
    return to_modular(noise + field_offset(plan.bits), plan.bits)


def encode_piece(scaled_piece: np.ndarray, plan: QuantizationPlan, rng: np.random.Generator,
                 mask: np.ndarray | None = None) -> np.ndarray:
    """A piece of a scaled update as integers in [0, 2^b): rounded, this node's noise share added, offset binary,
    plus this node's pairwise `mask` for the piece (which cancels only in the sum over the whole participant set)."""
    integers = round_piece(scaled_piece, plan.rounding_beta, rng)
    addend = noise_addend(plan, scaled_piece.size, rng)
    return to_modular(integers + (addend if mask is None else addend + mask), plan.bits)


def encode_update(update: np.ndarray, plan: QuantizationPlan, rng: np.random.Generator) -> np.ndarray:
    """One node's whole update as integers in [0, 2^b), rounded as a single piece."""
    return encode_piece(scale_update(update, plan), plan, rng)


def sum_norm_bound(plan: QuantizationPlan, participants: int, tail_probability: float = 1e-6) -> float:
    """The largest L2 norm, in integer units, that `participants` honest encodings can sum to, less the noise mean,
    but for probability `tail_probability`.

    Each node's rounded vector has norm at most `l2_sensitivity` (conditional rounding makes it a hard bound), so
    their sum at most participants times that. The summed noise N has per-coordinate variance V; for Skellam and
    centered Poisson noise E[X^4] = 3V^2 + V, so ||N||^2 has mean dV and variance d(2V^2 + V), and by Chebyshev
    ||N||^2 exceeds dV + sqrt(d(2V^2 + V) / tail_probability) with probability at most tail_probability.
    """
    variance = plan.node_noise_variance * participants
    d = plan.dimension
    noise = math.sqrt(d * variance + math.sqrt(d * (2 * variance**2 + variance) / tail_probability))
    return participants * plan.l2_sensitivity + noise


def centred_sum(field_sums: np.ndarray, plan: QuantizationPlan, participants: int) -> np.ndarray:
    """The participants' summed encodings, signed, less the summed noise's mean, in integer units (float64)."""
    if participants < 1:
        raise ValueError("cannot average zero participants")
    # The offsets removed in the centring's own pass: two arrays of the update's size made, not four (each a
    # page-faulted 188 MB for ResNet-50).
    centred = to_centered(field_sums, plan.bits, shift=-participants * field_offset(plan.bits))
    signed = centred.astype(np.float64)
    del centred
    signed -= noise_mean(plan.noise_kind, plan.node_noise_variance, participants)
    return signed


def decode_mean_update(field_sums: np.ndarray, plan: QuantizationPlan, participants: int) -> np.ndarray:
    """The participants' mean float update from the modular sum of their encodings."""
    return mean_from_centred(centred_sum(field_sums, plan, participants), plan, participants)


def mean_from_centred(centred: np.ndarray, plan: QuantizationPlan, participants: int) -> np.ndarray:
    """`centred_sum`'s vector as the mean update, divided in place."""
    centred /= participants * plan.scale
    return centred
