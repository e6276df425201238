"""What a meaningful epsilon would cost this system, computed by its own accountant.

    python -m experiments.privacy_cost --architecture resnet50 --clip-norm 20 --rounds 12 --epsilon 1 8 100

For each target epsilon, the Skellam noise that the aggregator's accountant would need
(hospital-level neighbours, every hospital present), through the same quantization plan,
rounding bound and RDP conversion the aggregator uses; then what that noise means for
learning: its per-coordinate standard deviation in the averaged update, beside the RMS
coordinate of one clipped update (`--drift-correction`: of one upload, which then also carries
the control variate's change). One row per packing (values per CKKS slot, each at its
widest field) that carries the noise: fewer values per slot cost more ciphertexts and
need a little less noise. The first row is the configured noise and its epsilon.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from experiments.setting_options import add_setting_options, chosen_settings
from scripts.launcher import ConsortiumConfig
from services.aggregator.config import AggregatorSettings
from services.aggregator.privacy_accountant import epsilon_for
from services.aggregator.skellam_rdp import integer_sensitivities
from services.common.ml.model_spec import parameter_spec, upload_value_count
from services.common.ml.models import build_model
from services.common.protocol.chunking import upload_chunk_count
from services.common.secure_sum.ckks_params import ckks_parameters, field_layout, slot_capacity_bits
from services.common.secure_sum.noise import NoiseKind, node_noise_share
from services.common.secure_sum.packing import FieldLayout, headroom_bits
from services.common.secure_sum.update_codec import QuantizationPlan, plan_quantization

BISECTION_STEPS = 200


@dataclass(frozen=True)
class Setting:
    dimension: int
    clip_norm: float
    rounds: int
    delta: float
    participants: int
    quorum: int
    max_participants: int
    chunk_ciphertexts: int = AggregatorSettings.model_fields["chunk_ciphertexts"].default


@dataclass(frozen=True)
class Cost:
    """One noise level (per quorum, as FEDXRAY_AGG_NOISE_VARIANCE) at one field layout, and what it gives."""

    bits: int
    fields_per_slot: int
    noise_variance: float
    epsilon: float
    noise_multiplier: float  # std of the summed noise over the L2 sensitivity, both in integer units
    noise_std: float  # per coordinate of the averaged update, in model units
    update_rms: float  # RMS coordinate of one update at the clip norm, in model units


def plan(setting: Setting, layout: FieldLayout, noise_variance: float) -> QuantizationPlan:
    slots = ckks_parameters(setting.max_participants).slots
    pieces = upload_chunk_count(setting.dimension, layout, slots, setting.chunk_ciphertexts)
    return plan_quantization(setting.dimension, setting.clip_norm, layout.bits,
                             max_participants=setting.max_participants,
                             min_participants=setting.quorum, noise_kind=NoiseKind.SKELLAM,
                             noise_variance=noise_variance, rounding_pieces=pieces)


def cost(setting: Setting, layout: FieldLayout, noise_variance: float) -> Cost:
    """The accountant's epsilon for this noise, as the aggregator computes it (see round_privacy)."""
    quantization = plan(setting, layout, noise_variance)
    l1, l2 = integer_sensitivities(quantization.l2_sensitivity, setting.dimension)
    summed = node_noise_share(noise_variance, setting.quorum) * setting.participants
    return Cost(layout.bits, layout.fields_per_slot, noise_variance,
                epsilon_for(l1, l2, summed, rounds=setting.rounds, delta=setting.delta), math.sqrt(summed) / l2,
                math.sqrt(summed) / quantization.scale / setting.participants,
                setting.clip_norm / math.sqrt(setting.dimension))


def largest_variance(setting: Setting, layout: FieldLayout) -> float:
    """The most noise this field carries (the coordinate bound stays at least 1)."""
    low, high = 0.0, float(1 << (2 * layout.bits))
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        try:
            plan(setting, layout, middle)
            low = middle
        except ValueError:
            high = middle
    return low


def cheapest(setting: Setting, layout: FieldLayout, target_epsilon: float) -> Cost | None:
    """The least noise meeting the target at this layout, or None when the field cannot carry enough."""
    most = largest_variance(setting, layout)
    if most <= 0 or cost(setting, layout, most).epsilon > target_epsilon:
        return None
    low, high = math.log(most) - 200.0, math.log(most)  # epsilon falls as the noise grows
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if cost(setting, layout, math.exp(middle)).epsilon <= target_epsilon:
            high = middle
        else:
            low = middle
    return cost(setting, layout, math.exp(high))


def packings(max_participants: int) -> list[FieldLayout]:
    """For each number of values per slot this CKKS configuration carries exactly, its widest field; most first.

    Every width at one packing costs the same ciphertexts, and the widest needs the least noise (its finer
    scale keeps the rounding's share of the sensitivity small)."""
    params = ckks_parameters(max_participants)
    capacity, headroom = slot_capacity_bits(params), headroom_bits(max_participants)
    return [field_layout(params, max_participants, capacity // fields - headroom, fields)
            for fields in range(capacity // (2 + headroom), 0, -1)]


SETTINGS = ("architecture", "clip_norm", "rounds", "delta", "min_participants", "max_participants", "noise_variance",
            "bits", "drift_correction", "chunk_ciphertexts")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hospitals", type=int, default=None,
                        help="participants in every round (default: the aggregator's expected_participants)")
    parser.add_argument("--epsilon", type=float, nargs="+", default=[1.0, 8.0, 100.0, 1e4])
    add_setting_options(parser, SETTINGS)
    args = parser.parse_args(argv)
    config = ConsortiumConfig(run_dir=Path("."), insecure=True, settings=chosen_settings(args, SETTINGS))
    aggregator, authority = config.aggregator_settings(), config.key_authority_settings()
    hospitals = args.hospitals or aggregator.expected_participants
    parameters = parameter_spec(build_model(aggregator.architecture, 2, 0).state_dict()).count
    dimension = upload_value_count(parameters, aggregator.drift_correction)
    setting = Setting(dimension, aggregator.clip_norm, aggregator.rounds, aggregator.delta, hospitals,
                      aggregator.min_participants, authority.max_participants, aggregator.chunk_ciphertexts)
    params = ckks_parameters(authority.max_participants)
    configured = field_layout(params, authority.max_participants, authority.bits)
    args.architecture, args.clip_norm, args.rounds, args.delta = (aggregator.architecture, aggregator.clip_norm,
                                                                  aggregator.rounds, aggregator.delta)
    args.quorum, args.max_participants, args.noise_variance = (aggregator.min_participants,
                                                               authority.max_participants, aggregator.noise_variance)
    args.hospitals = hospitals
    print(f"{args.architecture}: {parameters} parameters, {dimension} values per upload, clip norm {args.clip_norm}, {args.rounds} rounds, "
          f"{args.hospitals} hospitals (quorum {args.quorum}, n_max {args.max_participants}), delta {args.delta}; "
          f"hospital-level neighbours")
    print(f"{'epsilon':>10} {'noise/quorum':>13} {'bits':>5} {'per slot':>8} {'multiplier':>10} "
          f"{'noise SD':>10} {'update RMS':>10} {'SD / RMS':>10}")
    rows: list[tuple[str, Cost]] = [("configured", cost(setting, configured, args.noise_variance))]
    for target in args.epsilon:
        carried = [found for layout in packings(args.max_participants)
                   if (found := cheapest(setting, layout, target)) is not None]
        if not carried:
            print(f"{target:>10g}  no field this CKKS configuration carries holds enough noise")
        rows += [(f"{target:g}", found) for found in carried]
    for label, row in rows:
        print(f"{(f'{row.epsilon:.3g}' if label == 'configured' else label):>10} {row.noise_variance:>13.4g} "
              f"{row.bits:>5} {row.fields_per_slot:>8} {row.noise_multiplier:>10.3g} {row.noise_std:>10.3g} "
              f"{row.update_rms:>10.3g} {row.noise_std / row.update_rms:>10.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
