"""scripts.privacy_cost: the noise a target epsilon needs, through the aggregator's own accounting path."""

from __future__ import annotations

import math

import pytest

from scripts import privacy_cost
from scripts.privacy_cost import Setting, cheapest, cost, layouts, plan
from services.common.ckks_params import ckks_parameters, field_layout, slot_capacity_bits
from services.common.packing import headroom_bits
from services.common.privacy_accountant import SkellamAccountant, round_privacy
from services.common.skellam_rdp import RDP_ORDERS, rdp_to_epsilon

SETTING = Setting(dimension=1_000_000, clip_norm=20.0, rounds=12, delta=1e-5, participants=5, quorum=3,
                  max_participants=8)
DEFAULT = field_layout(ckks_parameters(8), 8)


def test_configured_epsilon_is_the_aggregators() -> None:
    # The aggregator steps its accountant once per round with round_privacy(plan, participants).
    accountant = SkellamAccountant(SETTING.delta)
    for _ in range(SETTING.rounds):
        accountant.step(round_privacy(plan(SETTING, DEFAULT, 16.0), SETTING.participants))
    assert cost(SETTING, DEFAULT, 16.0).epsilon == pytest.approx(accountant.epsilon(), rel=1e-12)


@pytest.mark.parametrize("target", [1.0, 8.0, 100.0])
def test_cheapest_noise_meets_the_target_and_a_little_less_does_not(target: float) -> None:
    widest = layouts(8)[-1]
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
    found = cheapest(SETTING, layouts(8)[-1], target)
    assert found is not None
    gaussian = _gaussian_multiplier(target, SETTING.rounds, SETTING.delta)
    assert gaussian * 0.999 <= found.noise_multiplier <= 1.02 * gaussian


def test_a_narrow_field_cannot_carry_a_small_epsilon() -> None:
    narrowest = layouts(8)[0]
    assert cheapest(SETTING, narrowest, 1.0) is None


def test_layouts_cover_every_width_ckks_carries_exactly() -> None:
    found = layouts(8)
    capacity, headroom = slot_capacity_bits(ckks_parameters(8)), headroom_bits(8)
    assert [layout.bits for layout in found] == list(range(2, capacity - headroom + 1))
    assert found[-1].fields_per_slot == 1
    for layout in found:  # each with the most values per slot at that width
        assert (layout.fields_per_slot + 1) * (layout.bits + headroom) > capacity


def test_the_command_prints_the_configured_row_and_each_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert privacy_cost.main(["--architecture", "tiny", "--epsilon", "8", "1e12"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "hospital-level neighbours" in lines[0]
    assert len(lines) == 5
    assert lines[3].split()[0] == "8"
    assert lines[4].split()[0] == "1e+12"
