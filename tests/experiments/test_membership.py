"""The membership-inference harness and its DP bound check.

The check must fire on a deliberately mis-accounted run: a model trained without any noise until it memorizes
its 64 training records (Gaussian points with random labels, so that nothing but
memorization can tell members apart), presented as if it were (epsilon 0.5, delta 1e-5)-DP. It must stay silent
where there is nothing to find: scores of members and non-members drawn alike, at a small epsilon."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from experiments.attacks.membership import bound_violations, loss_scores, roc
from experiments.attacks.membership_section import BoundViolated, Result, check, matched
from tests.threads import one_torch_thread

pytestmark = pytest.mark.unit


@pytest.fixture
def one_thread() -> Iterator[None]:
    with one_torch_thread():  # small tensors: more threads only contend on a loaded machine
        yield


def _memorizing_run() -> tuple[np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    points, labels = torch.randn(128, 20), torch.randint(0, 2, (128,))
    model = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(400):  # full-batch training on the members only, no clipping, no noise
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(points[:64]), labels[:64]).backward()
        optimizer.step()
    return loss_scores(model, points[:64], labels[:64]), loss_scores(model, points[64:], labels[64:])


def test_a_memorizing_model_claimed_private_is_caught(one_thread: None) -> None:
    members, nonmembers = _memorizing_run()
    curve = roc(members, nonmembers)
    assert curve.auc > 0.9  # the attack works on it
    assert bound_violations(curve, epsilon=0.5, delta=1e-5)  # so no (0.5, 1e-5) accounting can be true
    assert not bound_violations(curve, epsilon=20.0, delta=1e-5)  # a weak enough claim is not contradicted


def test_no_violation_where_members_and_nonmembers_look_alike() -> None:
    rng = np.random.default_rng(1)
    curve = roc(rng.normal(size=500), rng.normal(size=500))
    assert 0.4 < curve.auc < 0.6
    assert not bound_violations(curve, epsilon=0.1, delta=1e-5)


def test_tpr_at_a_false_positive_rate_reads_the_curve() -> None:
    curve = roc(np.array([0.9, 0.8, 0.7, 0.1]), np.array([0.85, 0.2, 0.15, 0.05]))
    assert curve.tpr_at(0.0) == pytest.approx(0.25)  # only 0.9 is above every non-member
    assert curve.tpr_at(0.25) == pytest.approx(0.75)  # above 0.2: 0.9, 0.8, 0.7, with 0.85 the one false positive
    assert curve.auc == pytest.approx(11 / 16)  # pairs a member outscores: 4 + 3 + 3 + 1


def test_the_harness_stops_with_an_error_on_a_mis_accounted_run(one_thread: None) -> None:
    """`make attacks` raises, rather than prints, when a model presented as DP beat its bound."""
    curve = roc(*_memorizing_run())
    honest = Result("claimed epsilon 20", 20.0, 1e-5, {"loss threshold": curve},
                    {"loss threshold": bound_violations(curve, epsilon=20.0, delta=1e-5)})
    check([honest])
    mis_accounted = Result("claimed epsilon 0.5", 0.5, 1e-5, {"loss threshold": curve},
                           {"loss threshold": bound_violations(curve, epsilon=0.5, delta=1e-5)})
    with pytest.raises(BoundViolated, match="claimed epsilon 0.5, loss threshold"):
        check([honest, mis_accounted])


def test_members_and_non_members_are_matched_class_by_class() -> None:
    """A skewed hospital's members against a balanced outside pool: the label mix alone would tell them apart."""
    members = torch.tensor([1] * 30 + [0] * 5)
    outsiders = torch.tensor([0, 1] * 20)
    inside, outside = matched(members, outsiders)
    assert torch.equal(members[inside].sort().values, outsiders[outside].sort().values)
    assert len(inside) == 5 + 20  # all five of class 0; class 1 capped by the 20 outsiders
