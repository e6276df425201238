"""The one place that says whether a round may open, and that records what a released sum spent.

Hospital-level differential privacy of the distributed Skellam mechanism (the
accountant is `privacy_accountant.SkellamAccountant`). A round is allowed only when
its worst case, a sum of just `min_participants` noise shares, keeps the cumulative
epsilon within the budget. A sum is charged when it is sent for decryption (and the
charge written to disk first), whatever becomes of it afterwards, even a refusal, at
the number of participants it actually holds.
"""

from __future__ import annotations

import math

from services.aggregator.privacy_accountant import SkellamAccountant, round_privacy
from services.common.secure_sum.update_codec import QuantizationPlan


class PrivacyBudgetGuard:
    def __init__(self, accountant: SkellamAccountant, budget: float, min_participants: int, secure: bool) -> None:
        self.accountant = accountant
        self._budget = budget
        self._min_participants = min_participants
        self._secure = secure

    def projected_epsilon(self, plan: QuantizationPlan) -> float:
        """Cumulative epsilon if a round of `plan` were released with the fewest participants allowed."""
        return self.accountant.epsilon_after(round_privacy(plan, self._min_participants))

    def allows(self, plan: QuantizationPlan) -> bool:
        return not self._secure or self.projected_epsilon(plan) <= self._budget

    def spend(self, plan: QuantizationPlan, participants: int) -> None:
        """Charge a sum of `participants` noise shares, sent for decryption."""
        if self._secure:
            self.accountant.step(round_privacy(plan, participants))

    @property
    def epsilon(self) -> float:
        """Cumulative epsilon; infinite in plaintext mode, which promises nothing."""
        return self.accountant.epsilon() if self._secure else math.inf

    def round_epsilon(self, plan: QuantizationPlan, participants: int) -> float:
        """The epsilon of one such round alone."""
        if not self._secure:
            return math.inf
        return SkellamAccountant(self.accountant.delta).epsilon_after(round_privacy(plan, participants))

    @property
    def budget(self) -> float:
        return self._budget
