import math

import pytest

from services.common.errors import PrivacyBudgetError
from services.aggregator.privacy_accountant import SkellamAccountant, RoundPrivacy, epsilon_for, plan_skellam_variance
from services.aggregator.skellam_rdp import RDP_ORDERS, rdp_to_epsilon, skellam_rdp

# (alpha, D1, D2, mu, expected) worked by hand from Agarwal et al. 2021, Cor. 3.6:
#   alpha D2^2/(2 mu) + min(((2 alpha - 1) D2^2 + 6 D1)/(4 mu^2), 3 D1/(2 mu))
HAND_TABLE = [
    (2, 1, 1, 1.0, 1.0 + min(9 / 4, 3 / 2)),            # 1 + 1.5 = 2.5
    (2, 1, 1, 10.0, 0.1 + min(9 / 400, 3 / 20)),         # 0.1 + 0.0225 = 0.1225
    (3, 4, 2, 8.0, 12 / 16 + min((20 + 24) / 256, 12 / 16)),  # 0.75 + 0.171875
    (10, 100, 10, 1000.0, 1000 / 2000 + min((1900 + 600) / 4e6, 300 / 2000)),
]


@pytest.mark.parametrize("alpha,l1,l2,mu,expected", HAND_TABLE)
def test_rdp_matches_the_papers_closed_form(alpha: int, l1: float, l2: float, mu: float, expected: float) -> None:
    assert skellam_rdp(alpha, l1, l2, mu) == pytest.approx(expected, rel=1e-12)


def test_rdp_to_epsilon_matches_balle_conversion_by_hand() -> None:
    # Single order alpha=2, rdp=0.5, delta=1e-5: 0.5 + ln(1/2) - (ln 1e-5 + ln 2)/1
    expected = 0.5 + math.log(0.5) - (math.log(1e-5) + math.log(2))
    assert rdp_to_epsilon([0.5], [2], 1e-5) == pytest.approx(expected)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    l1, l2, delta = 400.0, 20.0, 1e-5
    by_rounds = [epsilon_for(l1, l2, 2000.0, rounds=r, delta=delta) for r in (1, 2, 5, 10, 50)]
    assert by_rounds == sorted(by_rounds) and len(set(by_rounds)) == len(by_rounds)
    by_noise = [epsilon_for(l1, l2, mu, rounds=5, delta=delta) for mu in (500.0, 1000.0, 4000.0, 16000.0)]
    assert by_noise == sorted(by_noise, reverse=True) and len(set(by_noise)) == len(by_noise)


def test_accountant_composition_equals_closed_form_over_rounds() -> None:
    accountant = SkellamAccountant(delta=1e-5)
    mechanism = RoundPrivacy(l1_sensitivity=50.0, l2_sensitivity=7.0, variance=900.0, accounted=True)
    for _ in range(4):
        accountant.step(mechanism)
    assert accountant.epsilon() == pytest.approx(epsilon_for(50.0, 7.0, 900.0, rounds=4, delta=1e-5))
    assert accountant.epsilon_after(mechanism) > accountant.epsilon()
    assert accountant.rounds == 4


def test_unaccounted_poisson_rounds_make_epsilon_infinite() -> None:
    accountant = SkellamAccountant(delta=1e-5)
    accountant.step(RoundPrivacy(1.0, 1.0, 10.0, accounted=False))
    assert math.isinf(accountant.epsilon())


def test_planner_meets_target_with_least_noise() -> None:
    l1, l2, delta = 300.0, 15.0, 1e-5
    variance = plan_skellam_variance(4.0, delta, 10, l1=l1, l2=l2, max_variance=1e7)
    assert epsilon_for(l1, l2, variance, rounds=10, delta=delta) <= 4.0
    assert epsilon_for(l1, l2, variance * 0.99, rounds=10, delta=delta) > 4.0


def test_planner_refuses_a_target_the_field_cannot_carry() -> None:
    with pytest.raises(PrivacyBudgetError, match="needs more noise"):
        plan_skellam_variance(0.1, 1e-5, 100, l1=1e6, l2=1e3, max_variance=10.0)


def test_orders_are_integers_above_one() -> None:
    assert all(isinstance(a, int) and a > 1 for a in RDP_ORDERS)
