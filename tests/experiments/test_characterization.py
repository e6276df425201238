"""The refactor kept the rounds' arithmetic: the simulator reproduces the rows the pre-refactor sweep recorded
(counts exactly, scores within a relative 1e-5 and losses 1e-4, since kernels differ from one processor to the next:
`tests/recorded.py`; recorded (`characterization/`, made by `python -m scripts.sweep` at commit 10761ce; its settings are there too).

The old sweep named its settings its own way; the mapping below is the only translation, and every value not
named there was the old sweep's default, which is also the settings models' default (learning_rate was not:
the old sweep's 0.02 is given explicitly; nor, since the models' defaults became the learning recipe on
2026-11-30, are the local optimizer, local epochs, imbalance, server momentum and head refit: their old defaults
are given explicitly too).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.simulator import Simulation, simulate
from services.common.runtime.atomic_files import read_json_lines
from tests.recorded import assert_matches_recorded

RECORDED = Path(__file__).parent / "characterization"
COMMON = {"architecture": "tiny", "image_size": "32", "rounds": "3", "partition_scheme": "label_mix",
          "batch_size": "16", "clip_norm": "20", "learning_rate": "0.02", "torch_threads": "1",
          "local_optimizer": "sgd", "local_epochs": "1", "imbalance": "class_weights", "server_momentum": "0",
          "head_refit": "false"}
RUNS = {
    # FedAvgM 0.5 through the secure codec, each round's head refit scored (exact and through the secure sum)
    "fedavgm": ({**COMMON, "server_momentum": "0.5"},
                Simulation(images_per_node=40, secure_codec=True, head_refit_each_round="eval",
                           refit_noise_variances=(16.0,), seed=0)),
    # SCAFFOLD: both halves of every upload clipped and clamped, the control variates as the services move them
    "scaffold": ({**COMMON, "drift_correction": "true"},
                 Simulation(images_per_node=40, secure_clamp=True, seed=0)),
}


def test_the_recorded_settings_are_the_ones_mapped_here() -> None:
    recorded = json.loads((RECORDED / "settings.json").read_text())["settings"]
    assert recorded["fedavgm"]["server_momentum"] == 0.5 and recorded["fedavgm"]["secure_codec"] == 1
    assert recorded["scaffold"]["drift_correction"] == 1 and recorded["scaffold"]["secure_clamp"] == 1
    for old in recorded.values():
        assert (old["architecture"], old["image_size"], old["rounds"], old["batch_size"], old["clip_norm"],
                old["learning_rate"], old["torch_threads"], old["images_per_node"], old["seed"]) == (
            "tiny", 32, 3, 16, 20.0, 0.02, 1, 40, 0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_simulator_reproduces_the_pre_refactor_rows(name: str, threads: int, tmp_path: Path) -> None:
    """With one training thread, as recorded, and with two: another reduction order, the same rows."""
    values, simulation = RUNS[name]
    simulate(name, {**values, "torch_threads": str(threads)}, simulation, tmp_path)
    rows = read_json_lines(tmp_path / f"{name}.jsonl")
    for row in rows:
        row.pop("seconds")
    assert_matches_recorded(rows, read_json_lines(RECORDED / f"{name}.jsonl"))
