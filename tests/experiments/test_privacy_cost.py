"""experiments.privacy_cost: the noise a target epsilon needs, through the aggregator's own accounting path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from experiments import privacy_cost
from experiments.privacy_cost import Setting, cheapest, cost, packings, plan
from services.aggregator.privacy_accountant import SkellamAccountant, round_privacy
from services.aggregator.skellam_rdp import RDP_ORDERS, rdp_to_epsilon
from services.common.errors import CkksParameterError
from services.common.ml.model_spec import parameter_spec
from services.common.ml.models import build_model
from services.common.secure_sum.ckks_params import ckks_parameters, field_layout, slot_capacity_bits
from services.common.secure_sum.packing import headroom_bits
from services.common.secure_sum.update_codec import decode_mean_update, encode_update

SETTING = Setting(dimension=1_000_000, clip_norm=20.0, rounds=12, delta=1e-5, participants=5, quorum=3,
                  max_participants=8)
DEFAULT = field_layout(ckks_parameters(8), 8)
RECORDED = Path(__file__).resolve().parents[2] / "docs" / "results" / "gpu_resnet50_label_mix_r12"


def test_configured_epsilon_is_the_aggregators() -> None:
    # The aggregator steps its accountant once per round with round_privacy(plan, participants).
    accountant = SkellamAccountant(SETTING.delta)
    for _ in range(SETTING.rounds):
        accountant.step(round_privacy(plan(SETTING, DEFAULT, 16.0), SETTING.participants))
    assert cost(SETTING, DEFAULT, 16.0).epsilon == pytest.approx(accountant.epsilon(), rel=1e-12)


@pytest.mark.parametrize("target", [1.0, 8.0, 100.0])
def test_cheapest_noise_meets_the_target_and_a_little_less_does_not(target: float) -> None:
    widest = packings(8)[-1]
    found = cheapest(SETTING, widest, target)
    assert found is not None
    assert found.epsilon <= target
    assert cost(SETTING, widest, found.noise_variance * 0.99).epsilon > target


def _gaussian_multiplier(target: float, rounds: int, delta: float) -> float:
    """Noise multiplier of the Gaussian mechanism (RDP alpha / 2z^2 a round) meeting (target, delta)."""
    def epsilon(z: float) -> float:
        return rdp_to_epsilon([rounds * a / (2 * z * z) for a in RDP_ORDERS], RDP_ORDERS, delta)
    low, high = 1e-3, 1e3
    for _ in range(100):
        middle = math.sqrt(low * high)
        low, high = (low, middle) if epsilon(middle) <= target else (middle, high)
    return high


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_large_noise_needs_the_gaussian_multiplier(target: float) -> None:
    # Skellam tends to the Gaussian as its variance grows; its bound's correction term can only add noise.
    found = cheapest(SETTING, packings(8)[-1], target)
    assert found is not None
    gaussian = _gaussian_multiplier(target, SETTING.rounds, SETTING.delta)
    assert gaussian * 0.999 <= found.noise_multiplier <= 1.02 * gaussian


def test_a_narrow_field_cannot_carry_a_small_epsilon() -> None:
    narrowest = packings(8)[0]
    assert cheapest(SETTING, narrowest, 1.0) is None


def test_packings_are_the_widest_field_at_each_number_of_values_per_slot() -> None:
    found = packings(8)
    capacity, headroom = slot_capacity_bits(ckks_parameters(8)), headroom_bits(8)
    assert [layout.fields_per_slot for layout in found] == list(range(capacity // (2 + headroom), 0, -1))
    for layout in found:
        assert layout.slot_bits <= capacity
        with pytest.raises(CkksParameterError):
            field_layout(ckks_parameters(8), 8, layout.bits + 1, layout.fields_per_slot)


def test_noise_sd_is_that_of_the_decoded_mean_update() -> None:
    # Encode an all-zero update at every hospital, sum the fields as the aggregator does, decode: pure noise.
    setting = Setting(dimension=200_000, clip_norm=20.0, rounds=1, delta=1e-5, participants=5, quorum=3,
                      max_participants=8)
    quantization = plan(setting, DEFAULT, 16.0)
    rng = np.random.default_rng(0)
    sums = sum(encode_update(np.zeros(setting.dimension), quantization, rng) for _ in range(setting.participants))
    decoded = decode_mean_update(np.mod(sums, DEFAULT.modulus), quantization, setting.participants)
    assert decoded.std() == pytest.approx(cost(setting, DEFAULT, 16.0).noise_std, rel=0.02)
    assert cost(setting, DEFAULT, 16.0).update_rms == pytest.approx(20.0 / math.sqrt(200_000))


def test_configured_epsilon_is_the_one_the_gpu_run_recorded() -> None:
    # The aggregator of the recorded ResNet-50 run (clip 20, noise 16, quorum 3, five hospitals) wrote its epsilon
    # after each round; the script must reach the same through its own plan.
    rows = [json.loads(line) for line in (RECORDED / "secure_rounds.jsonl").read_text().splitlines()]
    dimension = parameter_spec(build_model("resnet50", 2, 0).state_dict()).count
    setting = Setting(dimension, 20.0, rows[-1]["round"], 1e-5, 5, 3, 8)
    assert cost(setting, DEFAULT, 16.0).epsilon == pytest.approx(rows[-1]["epsilon"], rel=1e-9)


def test_the_command_prints_the_configured_row_and_each_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert privacy_cost.main(["--architecture", "tiny", "--epsilon", "8", "1e12"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "hospital-level neighbours" in lines[0]
    labels = [line.split()[0] for line in lines[2:]]
    assert labels[0] != "8" and labels[1:].count("8") >= 1 and labels[1:].count("1e+12") >= 1
    assert set(labels[1:]) == {"8", "1e+12"}


def test_drift_correction_costs_the_epsilon_of_twice_the_values(capsys: pytest.CaptureFixture[str]) -> None:
    count = parameter_spec(build_model("tiny", 2, 0).state_dict()).count
    assert privacy_cost.main(["--architecture", "tiny", "--epsilon", "8", "--drift-correction", "--clip-norm", "20",
                              "--rounds", "12"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"{count} parameters, {2 * count} values per upload" in lines[0]
    doubled = Setting(2 * count, 20.0, 12, 1e-5, 5, 3, 8)
    assert float(lines[2].split()[0]) == pytest.approx(cost(doubled, DEFAULT, 16.0).epsilon, rel=1e-2)
