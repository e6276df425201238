"""The privacy-budget guard: the one place that opens or refuses a round, and charges what was released."""

from __future__ import annotations

import math

from services.aggregator.privacy_accountant import SkellamAccountant, round_privacy
from services.aggregator.privacy_budget import PrivacyBudgetGuard
from services.common.secure_sum.noise import NoiseKind
from services.common.secure_sum.update_codec import plan_quantization

PLAN = plan_quantization(10_000, 5.0, 24, max_participants=8, min_participants=3, noise_kind=NoiseKind.SKELLAM,
                         noise_variance=1e6)  # a finite epsilon


def test_a_round_opens_only_while_its_worst_case_fits_the_budget_and_each_release_is_charged() -> None:
    one_round = SkellamAccountant(1e-5).epsilon_after(round_privacy(PLAN, 3))
    guard = PrivacyBudgetGuard(SkellamAccountant(1e-5), 2.5 * one_round, 3, secure=True)
    assert guard.allows(PLAN) and guard.epsilon == 0.0
    guard.spend(PLAN, 3)
    assert guard.epsilon == one_round and guard.allows(PLAN)
    guard.spend(PLAN, 3)
    assert not guard.allows(PLAN)  # a third round would pass 2.5 rounds' worth
    assert guard.projected_epsilon(PLAN) > guard.budget


def test_more_participants_carry_more_noise_and_cost_less_than_the_quorum_it_was_planned_for() -> None:
    guard = PrivacyBudgetGuard(SkellamAccountant(1e-5), math.inf, 3, secure=True)
    assert guard.round_epsilon(PLAN, 5) < guard.round_epsilon(PLAN, 3)
    guard.spend(PLAN, 5)
    assert guard.epsilon == guard.round_epsilon(PLAN, 5)


def test_plaintext_mode_promises_nothing_and_refuses_nothing() -> None:
    guard = PrivacyBudgetGuard(SkellamAccountant(1e-5), 1e-9, 3, secure=False)
    assert guard.allows(PLAN)
    guard.spend(PLAN, 3)
    assert guard.epsilon == math.inf and guard.accountant.rounds == 0
