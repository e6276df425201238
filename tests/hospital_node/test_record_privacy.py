"""The hospital's record-level budget: the planned noise meets the target by an independent accountant (Google's
dp_accounting), the ledger refuses a round past the budget and survives a restart, and an aggregator's proposal can
never weaken a hospital's own target or turn DP-SGD off once it has started."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting import pld, rdp
from opacus.accountants import PRVAccountant
from opacus.accountants.utils import get_noise_multiplier

from services.common.errors import PlanRefusedError
from services.common.protocol.round_plan import LocalTrainingPlan
from services.hospital_node.config import HospitalNodeSettings, TrainingSettings
from services.hospital_node.local_round import record_target
from services.hospital_node.record_privacy import (
    RDP_ORDERS,
    RecordBudget,
    RecordBudgetTarget,
    epsilon_of,
    plan_noise_multiplier,
    poisson_schedule,
    rdp_epsilon_of,
)

pytestmark = pytest.mark.unit
logging.getLogger("absl").setLevel(logging.ERROR)  # dp_accounting's notes on orders it skips


def _event(sigma: float, q: float, steps: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)


# (epsilon, delta, images, expected batch, epochs x rounds): the results' settings and smaller hospitals.
SETTINGS = [(8.0, 1e-5, 160, 16, 20), (2.0, 1e-5, 160, 16, 20), (1.0, 1e-5, 1000, 32, 30), (8.0, 1e-3, 48, 16, 3)]


@pytest.mark.slow
@pytest.mark.parametrize(("epsilon", "delta", "images", "batch", "epochs"), SETTINGS)
def test_the_planned_noise_meets_the_target_by_independent_accountants(epsilon: float, delta: float, images: int,
                                                                        batch: int, epochs: int) -> None:
    q, per_epoch = poisson_schedule(images, batch)
    steps = per_epoch * epochs
    sigma = plan_noise_multiplier(epsilon, delta, q, steps)
    ours = epsilon_of([(sigma, q, steps)], delta)
    assert epsilon * 0.99 <= ours <= epsilon
    # Opacus's PRV accountant (Gopi et al., 2021), another tight accountant and another implementation: within 3%.
    prv = PRVAccountant()
    prv.history = [(sigma, q, steps)]
    assert prv.get_epsilon(delta) == pytest.approx(epsilon, rel=0.03)
    # A PLD on a grid ten times finer: the plan's coarser grid is pessimistic, so never below it, and close.
    fine = pld.PLDAccountant(value_discretization_interval=1e-4)
    fine.compose(_event(sigma, q, steps))
    assert 0.98 * ours <= fine.get_epsilon(delta) <= ours * 1.001
    # The RDP bound of the same plan is looser (what the plan saves over an RDP plan), by both implementations.
    independent = rdp.RdpAccountant()
    independent.compose(_event(sigma, q, steps))
    assert independent.get_epsilon(delta) > epsilon
    assert rdp_epsilon_of([(sigma, q, steps)], delta) == pytest.approx(independent.get_epsilon(delta), rel=0.04)
    # A noise multiplier 5% lower would miss the target: the plan is the least that meets it.
    weaker = PRVAccountant()
    weaker.history = [(0.95 * sigma, q, steps)]
    assert weaker.get_epsilon(delta) > epsilon


@pytest.mark.slow
def test_a_pld_plan_carries_less_noise_than_an_rdp_plan_for_the_same_target() -> None:
    q, per_epoch = poisson_schedule(160, 16)
    pld_sigma = plan_noise_multiplier(8.0, 1e-5, q, per_epoch * 20)
    rdp_sigma = get_noise_multiplier(target_epsilon=8.0, target_delta=1e-5, sample_rate=q, steps=per_epoch * 20,
                                     accountant="rdp", epsilon_tolerance=0.01, alphas=RDP_ORDERS)
    assert 0.80 * rdp_sigma < pld_sigma < 0.95 * rdp_sigma


def test_composition_of_rounds_matches_one_run_of_all_steps() -> None:
    q, per_epoch = poisson_schedule(100, 10)
    sigma = 1.3
    assert epsilon_of([(sigma, q, per_epoch)] * 5, 1e-5) == pytest.approx(epsilon_of([(sigma, q, 5 * per_epoch)],
                                                                                     1e-5), rel=1e-9)


def test_the_poisson_schedule_covers_every_image_once_per_epoch_in_expectation() -> None:
    for images, batch in [(48, 16), (50, 16), (7, 16), (1000, 32)]:
        q, steps = poisson_schedule(images, batch)
        assert q * steps == pytest.approx(1.0)
        assert images * q <= batch * 1.0001 or steps == 1


def _target(epsilon: float = 4.0, rounds: int = 3) -> RecordBudgetTarget:
    return RecordBudgetTarget(epsilon, 1e-5, rounds)


@pytest.mark.slow  # several seconds: `make test` runs it, `make test-fast` does not
def test_rounds_within_the_plan_are_admitted_and_the_next_is_refused_with_nothing_spent(tmp_path: Path) -> None:
    path = tmp_path / "record_privacy.json"
    budget = RecordBudget(path, _target(rounds=3))
    q, steps = poisson_schedule(48, 16)
    sigmas = set()
    for round_id in (1, 2, 3):
        sigmas.add(budget.admit(round_id, q, steps))
        spent = budget.spend(round_id, q, steps)
    assert len(sigmas) == 1
    assert spent.epsilon <= 4.0
    with pytest.raises(PlanRefusedError) as refused:
        budget.admit(4, q, steps)
    assert refused.value.reason == "record_budget_exhausted"
    assert "past its budget 4" in str(refused.value)
    assert budget.epsilon() == pytest.approx(spent.epsilon)
    assert len(json.loads(path.read_text())["rounds"]) == 3


@pytest.mark.slow  # several seconds: `make test` runs it, `make test-fast` does not
def test_a_round_asking_for_more_epochs_than_planned_can_be_refused_early(tmp_path: Path) -> None:
    budget = RecordBudget(tmp_path / "ledger.json", _target(rounds=3))
    q, steps = poisson_schedule(48, 16)
    budget.admit(1, q, steps)
    budget.spend(1, q, steps)
    with pytest.raises(PlanRefusedError, match="record_budget|past its budget"):
        budget.admit(2, q, 10 * steps)  # an aggregator asking for ten local epochs at once


@pytest.mark.slow  # several seconds: `make test` runs it, `make test-fast` does not
def test_the_ledger_survives_a_restart_and_keeps_refusing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    budget = RecordBudget(path, _target(rounds=1))
    q, steps = poisson_schedule(48, 16)
    sigma = budget.admit(1, q, steps)
    budget.spend(1, q, steps)
    reopened = RecordBudget.open(path, _target(rounds=1))
    assert reopened is not None and reopened.ledger is not None
    assert reopened.ledger.noise_multiplier == sigma
    assert reopened.epsilon() == pytest.approx(budget.epsilon())
    with pytest.raises(PlanRefusedError):
        reopened.admit(2, q, steps)


@pytest.mark.slow  # several seconds: `make test` runs it, `make test-fast` does not
def test_a_restart_with_a_larger_target_does_not_reset_the_plan(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    budget = RecordBudget(path, _target(epsilon=2.0, rounds=1))
    q, steps = poisson_schedule(48, 16)
    budget.admit(1, q, steps)
    budget.spend(1, q, steps)
    reopened = RecordBudget.open(path, _target(epsilon=100.0, rounds=1))
    assert reopened is not None and reopened.target.epsilon == 2.0
    with pytest.raises(PlanRefusedError):
        reopened.admit(2, q, steps)


def _plan(proposal: float) -> LocalTrainingPlan:
    return LocalTrainingPlan(1, 0.01, 16, "sgd", 0.0, False, proposal)


def _settings(tmp_path: Path, **values: object) -> HospitalNodeSettings:
    return HospitalNodeSettings(state_dir=tmp_path, insecure=True, **values)  # type: ignore[arg-type]


def test_the_hospitals_own_target_wins_over_the_aggregators_proposal(tmp_path: Path) -> None:
    own = record_target(_plan(1000.0), TrainingSettings.of(_settings(tmp_path, record_epsilon=2.0)), 48)
    assert own is not None and own.epsilon == 2.0
    adopted = record_target(_plan(8.0), TrainingSettings.of(_settings(tmp_path)), 48)
    assert adopted is not None and adopted.epsilon == 8.0
    assert record_target(_plan(0.0), TrainingSettings.of(_settings(tmp_path)), 48) is None


def test_the_default_delta_is_below_one_over_the_training_images(tmp_path: Path) -> None:
    for images in (48, 5000, 200_000):
        target = record_target(_plan(8.0), TrainingSettings.of(_settings(tmp_path)), images)
        assert target is not None and target.delta < 1 / images


@pytest.mark.slow  # several seconds: `make test` runs it, `make test-fast` does not
def test_a_plan_without_a_proposal_cannot_turn_dp_off_once_a_ledger_exists(tmp_path: Path) -> None:
    path = tmp_path / "record_privacy.json"
    budget = RecordBudget(path, _target())
    q, steps = poisson_schedule(48, 16)
    budget.admit(1, q, steps)
    budget.spend(1, q, steps)
    again = RecordBudget.open(path, record_target(_plan(0.0), TrainingSettings.of(_settings(tmp_path)), 48))
    assert again is not None and again.epsilon() > 0


def test_a_ledger_planned_per_patient_refuses_a_round_per_image(tmp_path: Path) -> None:
    budget = RecordBudget(tmp_path / "ledger.json", _target(epsilon=8.0, rounds=2))
    budget.admit(1, 0.25, 8, "patient")
    spent = budget.spend(1, 0.25, 8)
    assert spent.unit == "patient" and spent.rdp_epsilon > spent.epsilon > 0
    with pytest.raises(PlanRefusedError, match="protects each patient"):
        budget.admit(2, 0.1, 20, "image")
    assert RecordBudget.open(tmp_path / "ledger.json", None).spent().unit == "patient"  # type: ignore[union-attr]
