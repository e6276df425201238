"""`python -m experiments.attacks --quick`: the inversion section end to end on SYNTHETIC data. The attack singles
out the victim from one plaintext gradient, and not from FedXray's secure sum or a DP-SGD step; the report, the
rows and the figure are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.attacks.__main__ import run

pytestmark = [pytest.mark.unit, pytest.mark.slow]  # about a minute: `make test` runs it


def test_the_quick_run_singles_out_the_victim_only_from_a_plaintext_gradient(tmp_path: Path) -> None:
    outcomes = {o.case: o for o in run(tmp_path, quick=True, progress=lambda line: None)}
    plaintext = outcomes["plaintext, 1 image, 1 step"]
    assert plaintext.rank == 1 and plaintext.psnr > 40.0
    protected = [o for name, o in outcomes.items() if name.startswith(("FedXray", "DP-SGD"))]
    assert len(protected) == 3
    for outcome in protected:
        assert outcome.psnr < outcome.prior_psnr and outcome.rank > 1, outcome
    rows = json.loads((tmp_path / "attacks.json").read_text())
    assert [row["case"] for row in rows] == list(outcomes)
    report = (tmp_path / "ATTACKS.md").read_text()
    assert "SYNTHETIC" in report and all(name in report for name in outcomes)
    assert (tmp_path / "inversion.png").stat().st_size > 10_000
