"""`python -m experiments.attacks --quick`: the three sections end to end on SYNTHETIC data. The inversion attack
singles out the victim from one plaintext gradient, and not from FedXray's secure sum, the differenced sums or a
DP-SGD step; membership inference runs against every target with the DP bound checked; the adversarial section
attacks the final models and prices adversarial training; the report, the rows and the figures are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.attacks.__main__ import run

pytestmark = [pytest.mark.unit, pytest.mark.slow]  # about a minute: `make test` runs it


def test_the_quick_run_attacks_every_party_and_model_and_writes_the_report(tmp_path: Path) -> None:
    rows = run(tmp_path / "out", quick=True, cache=tmp_path / "cache", progress=lambda line: None)
    inversion = {o["case"]: o for o in rows["inversion"]}  # type: ignore[union-attr]
    plaintext = inversion["plaintext, 1 image, 1 step"]
    assert plaintext["rank"] == 1 and plaintext["psnr"] > 40.0
    protected = [o for name, o in inversion.items() if name.startswith(("FedXray", "DP-SGD", "differencing"))]
    assert len(protected) == 4
    for outcome in protected:
        assert outcome["psnr"] < outcome["prior_psnr"] and outcome["rank"] > 1, outcome
    membership = rows["membership"]
    assert [m["target"] for m in membership] == [  # type: ignore[index]
        "one hospital's head fitted hard, non-private (baseline)", "secure federated head, non-private",
        "secure federated head, DP-SGD epsilon 8"]
    for row in membership:  # type: ignore[union-attr]
        for attack in ("loss threshold", "offline LiRA"):
            assert 0.0 <= row[attack]["auc"] <= 1.0 and row[attack]["violations"] == 0
    robustness = {r["model"]: r for r in rows["robustness"]}  # type: ignore[union-attr]
    assert len(robustness) == 4 and all(r["budgets"] == [0.0, 2, 8] for r in robustness.values())
    plain = robustness["last block fine-tuned, plain"]
    trained = robustness["last block fine-tuned, PGD adversarial training at 4/255"]
    assert trained["step_seconds"] > plain["step_seconds"]  # three PGD steps a batch cost time
    assert json.loads((tmp_path / "out" / "attacks.json").read_text())["quick"] is True
    report = (tmp_path / "out" / "ATTACKS.md").read_text()
    assert "SYNTHETIC" in report and all(name in report for name in [*inversion, *robustness])
    for figure in ("inversion.png", "membership.png", "robustness.png"):
        assert (tmp_path / "out" / figure).stat().st_size > 10_000
