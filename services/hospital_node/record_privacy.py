"""A hospital's record-level privacy budget: DP-SGD's noise plan and the ledger of what it spent.

The unit of privacy is one patient of this hospital where it knows its patients and trains
the head (`head_training`: user-level DP-SGD), else one training image: the ledger names
the unit, and so does every epsilon the hospital reports. Each local step samples a
Poisson batch (every unit independently, with probability q), clips every unit's
gradient to C and adds Gaussian noise of standard deviation sigma x C to their sum:
the subsampled Gaussian mechanism, composed over every step this hospital ever takes.
Google's dp_accounting privacy-loss-distribution (PLD) accountant turns the steps into
(epsilon, delta), a tight bound (pessimistic discretization, so never below the truth);
the RDP bound (Mironov et al., 2019; Opacus's accountant) is reported beside it, and the
tests check the plan against Opacus's PRV accountant, an independent implementation.
Sigma is planned with the PLD accountant: for the same target it carries 10 to 15% less
noise than an RDP plan.

The hospital owns this budget. Its own settings name the target (epsilon, delta) and
the rounds it plans to join; at its first training round it plans sigma for the whole
run (rounds x local epochs x steps per epoch at its sampling rate), and before every
round it asks the ledger whether the round still fits. A round that would take the
total past the target is refused by name (`record_budget_exhausted`) and nothing is
trained. The ledger is written, whole and atomically, before the update leaves the
hospital, so a crash never forgets a release.

Everything downstream of the trained model is post-processing and costs nothing
more: the clipping, Skellam noise and masks of the secure sum, a second attempt's
re-encoding of the same update, whatever the aggregator and key authority do.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import dp_accounting
from dp_accounting import pld
from opacus.accountants import RDPAccountant

from services.common.errors import PlanRefusedError
from services.common.protocol.upload import RecordPrivacySpent
from services.common.runtime.atomic_files import read_json, write_json_atomic

log = logging.getLogger(__name__)

# The plan's bisection stops once sigma is within this of the least that meets the target (and never below it).
SIGMA_TOLERANCE = 1e-3
# The PLD's grid of privacy-loss values: 1e-3 gives epsilon within about 0.2% of a grid 10 times finer, 10 times faster.
PLD_INTERVAL = 1e-3
# Opacus's RDP orders, extended upwards: a small budget over few steps is tightest at orders above its largest (63).
RDP_ORDERS = [*RDPAccountant.DEFAULT_ALPHAS, 80, 96, 128, 192, 256, 384, 512, 1024]


def poisson_schedule(examples: int, batch_size: int) -> tuple[float, int]:
    """(q, steps per epoch) for an expected batch of `batch_size` out of `examples` images: q = 1/ceil(n/B)."""
    if examples < 1:
        raise ValueError("a hospital needs at least one training image")
    steps = max(1, math.ceil(examples / batch_size))
    return 1.0 / steps, steps


def _event(history: list[tuple[float, float, int]]) -> dp_accounting.DpEvent:
    return dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)),
                                          steps) for sigma, q, steps in history])


def _pld_accountant() -> pld.PLDAccountant:
    return pld.PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
                             value_discretization_interval=PLD_INTERVAL)


def plan_noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The least sigma (to SIGMA_TOLERANCE, rounded up) for which `steps` Poisson-subsampled Gaussian steps at rate
    q stay within (epsilon, delta) under the PLD accountant."""
    sigma: float = dp_accounting.calibrate_dp_mechanism(
        _pld_accountant, lambda sigma: _event([(sigma, sample_rate, steps)]), epsilon, delta,
        dp_accounting.ExplicitBracketInterval(0.05, 500.0), tol=SIGMA_TOLERANCE)
    return sigma


def epsilon_of(history: list[tuple[float, float, int]], delta: float) -> float:
    """(sigma, q, steps) entries composed, at `delta`: the PLD accountant's epsilon."""
    if not history:
        return 0.0
    accountant = _pld_accountant()
    accountant.compose(_event(history))
    return float(accountant.get_epsilon(delta))


def rdp_epsilon_of(history: list[tuple[float, float, int]], delta: float) -> float:
    """The same composition's RDP bound (Opacus's accountant over RDP_ORDERS): looser, reported beside it."""
    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta, alphas=RDP_ORDERS))


@dataclass(frozen=True)
class RecordBudgetTarget:
    epsilon: float
    delta: float
    rounds: int  # the rounds this hospital plans to join: sigma is planned for all of them


@dataclass
class RecordLedger:
    """What this hospital has released, in DP-SGD steps; saved whole after every change."""

    epsilon_target: float
    delta: float
    noise_multiplier: float
    planned_steps: int
    rounds: list[dict[str, float]] = field(default_factory=list)  # {"round", "sample_rate", "steps"}
    unit: str = "image"  # what one neighbouring dataset differs by: "patient" or "image"

    def history(self) -> list[tuple[float, float, int]]:
        return [(self.noise_multiplier, float(r["sample_rate"]), int(r["steps"])) for r in self.rounds]

    def epsilon(self) -> float:
        return epsilon_of(self.history(), self.delta)

    def rdp_epsilon(self) -> float:
        return rdp_epsilon_of(self.history(), self.delta)

    def epsilon_after(self, sample_rate: float, steps: int) -> float:
        return epsilon_of([*self.history(), (self.noise_multiplier, sample_rate, steps)], self.delta)

    def spent(self) -> RecordPrivacySpent:
        return RecordPrivacySpent(self.epsilon(), self.delta, self.noise_multiplier, self.unit, self.rdp_epsilon())


class RecordBudget:
    """The ledger on disk, and the rule that no round may take it past the target."""

    def __init__(self, path: Path, target: RecordBudgetTarget, ledger: RecordLedger | None = None) -> None:
        self._path = path
        self._target = target
        self._ledger = ledger

    @classmethod
    def open(cls, path: Path, target: RecordBudgetTarget | None) -> RecordBudget | None:
        """The budget of `path`'s ledger when there is one: once a hospital has trained under DP-SGD it always does,
        with the plan it started (a budget is spent, never reset; a plan without a target cannot turn it off).
        Otherwise a new budget for `target`; None when there is neither (DP-SGD off)."""
        saved = read_json(path)
        if saved is None:
            return None if target is None else cls(path, target)
        ledger = RecordLedger(**saved)
        if target is not None and (target.epsilon, target.delta) != (ledger.epsilon_target, ledger.delta):
            log.warning("the record-level ledger %s was planned for epsilon %g, delta %g; now asked for %g, %g: the "
                        "ledger's plan stays", path, ledger.epsilon_target, ledger.delta, target.epsilon, target.delta)
        rounds = target.rounds if target is not None else 1
        return cls(path, RecordBudgetTarget(ledger.epsilon_target, ledger.delta, rounds), ledger)

    @property
    def target(self) -> RecordBudgetTarget:
        return self._target

    @property
    def ledger(self) -> RecordLedger | None:
        return self._ledger

    def epsilon(self) -> float:
        return self._ledger.epsilon() if self._ledger is not None else 0.0

    def spent(self) -> RecordPrivacySpent | None:
        return None if self._ledger is None else self._ledger.spent()

    def admit(self, round_id: int, sample_rate: float, steps: int, unit: str = "image") -> float:
        """sigma for a round of `steps` steps at rate q over units of kind `unit`, planning it for the whole run at
        the first round; a refusal (nothing spent) when the round would take epsilon past the target, or would
        change the unit the ledger was planned for."""
        ledger = self._ledger
        if ledger is None:
            t = self._target
            planned = t.rounds * steps
            ledger = RecordLedger(t.epsilon, t.delta, plan_noise_multiplier(t.epsilon, t.delta, sample_rate, planned),
                                  planned, unit=unit)
            log.info("record-level DP planned: noise multiplier %.4f for (%g, %g)-DP per %s over %d rounds of %d "
                     "steps at q = %.4f", ledger.noise_multiplier, t.epsilon, t.delta, unit, t.rounds, steps,
                     sample_rate)
        if unit != ledger.unit:
            raise PlanRefusedError("record_privacy_unsupported", f"round {round_id} would train with one {unit} as "
                                   f"the privacy unit; this hospital's ledger protects each {ledger.unit}")
        after = ledger.epsilon_after(sample_rate, steps)
        if after > ledger.epsilon_target:
            raise PlanRefusedError("record_budget_exhausted", f"round {round_id} would take this hospital's "
                                   f"record-level epsilon from {ledger.epsilon():.4g} to {after:.4g}, past its "
                                   f"budget {ledger.epsilon_target:g} (delta {ledger.delta:g})")
        self._ledger = ledger
        return ledger.noise_multiplier

    def spend(self, round_id: int, sample_rate: float, steps: int) -> RecordPrivacySpent:
        """Record a trained round, on disk, before its update leaves the hospital."""
        assert self._ledger is not None, "admit() plans the budget first"
        entry = {"round": round_id, "sample_rate": sample_rate, "steps": steps}
        updated = replace(self._ledger, rounds=[*self._ledger.rounds, entry])
        write_json_atomic(self._path, asdict(updated))
        self._ledger = updated
        return updated.spent()
