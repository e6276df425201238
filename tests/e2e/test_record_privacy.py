"""Record-level DP-SGD through the real services: the aggregator proposes a target, one hospital holds a smaller
budget of its own and refuses the round that would exceed it, and the round goes on with the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.settings_env import child_environment
from services.hospital_node.config import HospitalNodeSettings
from services.hospital_node.record_privacy import epsilon_of
from tests.e2e.consortium_checks import run_to_completion, tiny_config

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
NODES, ROUNDS = 4, 3
PROPOSED, OWN = 50.0, 20.0  # the aggregator's proposal; hospital-4's own target, planned for one round only


def _ledger(run_dir: Path, node: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((run_dir / "hospitals" / node / "record_privacy.json").read_text())
    return loaded


def test_a_hospital_refuses_the_round_past_its_budget_and_the_round_goes_on_without_it(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, NODES, ROUNDS, seed=3,
                         settings={"architecture": "tiny-gn", "min_participants": 3, "partition_scheme": "iid"},
                         aggregator={"record_epsilon": PROPOSED},
                         per_node={3: {"record_epsilon": OWN, "record_rounds": 1}})
    consortium = run_to_completion(config)
    rows = [r for r in consortium.rows() if r["round"] >= 1]
    assert [(r["round"], r.get("failed", False)) for r in rows] == [(1, False), (2, False), (3, False)]
    assert [r["contributors"] for r in rows] == [
        ["hospital-1", "hospital-2", "hospital-3", "hospital-4"],
        ["hospital-1", "hospital-2", "hospital-3"],
        ["hospital-1", "hospital-2", "hospital-3"]]
    # Round 2's first attempt named hospital-4, which declined; the second went without it. Round 3 never asked it.
    assert [r["attempt"] for r in rows] == [1, 2, 1]
    log = (consortium.logs / "hospital-4.log").read_text()
    assert "declining round 2 attempt 1 (record_budget_exhausted)" in log
    assert "declining round 3" not in log
    own = _ledger(tmp_path, "hospital-4")
    assert own["epsilon_target"] == OWN and [r["round"] for r in own["rounds"]] == [1]  # type: ignore[index, union-attr]
    for index in range(3):
        ledger = _ledger(tmp_path, f"hospital-{index + 1}")
        assert ledger["epsilon_target"] == PROPOSED  # adopted from the aggregator's proposal
        history = [(float(ledger["noise_multiplier"]), float(r["sample_rate"]), int(r["steps"]))  # type: ignore
                   for r in ledger["rounds"]]  # type: ignore[attr-defined]
        assert len(history) == ROUNDS
        spent = epsilon_of(history, float(ledger["delta"]))  # type: ignore[arg-type]
        assert spent <= PROPOSED
        assert rows[-1]["record_epsilon"][f"hospital-{index + 1}"] == pytest.approx(spent, rel=1e-9)  # type: ignore
    assert rows[0]["record_epsilon"]["hospital-4"] <= OWN  # type: ignore[index]
    # The row's figure is the largest any hospital has reported, beside the hospital-level epsilon.
    assert rows[-1]["record_epsilon_max"] == pytest.approx(max(rows[-1]["record_epsilon"].values()))  # type: ignore
    assert all(r["epsilon"] > 0 for r in rows)


def test_the_node_refuses_to_start_dp_sgd_on_a_batchnorm_model(tmp_path: Path) -> None:
    settings = HospitalNodeSettings(architecture="resnet50-bn", record_epsilon=8.0, image_size=16,
                                    synthetic_images=20, state_dir=tmp_path, insecure=True)
    env = child_environment({**os.environ, "PYTHONPATH": str(REPO)}, settings)
    done = subprocess.run([sys.executable, "-m", "services.hospital_node"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    logged = done.stdout + done.stderr
    assert done.returncode == 2, logged[-2000:]
    assert "cannot train under record-level DP-SGD" in logged and "BatchNorm" in logged
    assert "Traceback" not in logged
