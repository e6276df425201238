"""The small stateful accountant that composes Skellam rounds, and the noise planner.

The mathematics lives in `skellam_rdp`; this module only keeps the running sum.
Centered-Poisson noise has no RDP bound here: its rounds are recorded as
unaccounted and epsilon is reported as infinite, which is what can honestly be said.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from services.aggregator.skellam_rdp import RDP_ORDERS, integer_sensitivities, rdp_to_epsilon, skellam_rdp
from services.common.errors import PrivacyBudgetError
from services.common.secure_sum.noise import NoiseKind
from services.common.secure_sum.update_codec import QuantizationPlan


@dataclass(frozen=True)
class RoundPrivacy:
    l1_sensitivity: float
    l2_sensitivity: float
    variance: float  # total per-coordinate noise variance actually in the sum
    accounted: bool


def round_privacy(plan: QuantizationPlan, participants: int) -> RoundPrivacy:
    """The mechanism of one round with `participants` counted nodes' noise shares."""
    l1, l2 = integer_sensitivities(plan.l2_sensitivity, plan.dimension)
    variance = plan.node_noise_variance * participants
    accounted = plan.noise_kind is not NoiseKind.POISSON
    return RoundPrivacy(l1, l2, variance if plan.noise_kind is not NoiseKind.NONE else 0.0, accounted)


@dataclass
class SkellamAccountant:
    delta: float
    rdp: list[float] = field(default_factory=lambda: [0.0] * len(RDP_ORDERS))
    rounds: int = 0
    unaccounted_rounds: int = 0

    def step(self, mechanism: RoundPrivacy) -> None:
        self.rounds += 1
        if not mechanism.accounted:
            self.unaccounted_rounds += 1
            return
        for index, alpha in enumerate(RDP_ORDERS):
            self.rdp[index] += skellam_rdp(alpha, mechanism.l1_sensitivity, mechanism.l2_sensitivity,
                                           mechanism.variance)

    def epsilon(self) -> float:
        if self.unaccounted_rounds or any(math.isinf(r) for r in self.rdp):
            return math.inf
        return rdp_to_epsilon(self.rdp, RDP_ORDERS, self.delta) if self.rounds else 0.0

    def epsilon_after(self, mechanism: RoundPrivacy) -> float:
        """Epsilon if one more round of `mechanism` ran, without recording it."""
        trial = SkellamAccountant(self.delta, list(self.rdp), self.rounds, self.unaccounted_rounds)
        trial.step(mechanism)
        return trial.epsilon()


def epsilon_for(l1: float, l2: float, variance: float, *, rounds: int, delta: float) -> float:
    rdp = [rounds * skellam_rdp(alpha, l1, l2, variance) for alpha in RDP_ORDERS]
    return rdp_to_epsilon(rdp, RDP_ORDERS, delta)


def plan_skellam_variance(
    target_epsilon: float, delta: float, rounds: int, *, l1: float, l2: float, max_variance: float
) -> float:
    """Smallest total variance meeting (target_epsilon, delta) over `rounds`, or a refusal.

    `max_variance` is the most noise the modular field can carry; a plan that needs
    more cannot be met with these bits and is refused with the numbers.
    """
    if epsilon_for(l1, l2, max_variance, rounds=rounds, delta=delta) > target_epsilon:
        raise PrivacyBudgetError(
            f"epsilon {target_epsilon} at delta {delta} over {rounds} rounds needs more noise than "
            f"the field carries: variance {max_variance:.4g} still gives epsilon "
            f"{epsilon_for(l1, l2, max_variance, rounds=rounds, delta=delta):.4g} (L2 sensitivity {l2:.4g})"
        )
    low, high = 0.0, max_variance
    for _ in range(200):
        middle = (low + high) / 2
        if middle > 0 and epsilon_for(l1, l2, middle, rounds=rounds, delta=delta) <= target_epsilon:
            high = middle
        else:
            low = middle
    return high
