"""Secure rounds whose uploads use noise, masks and encryptions of zero precomputed while the nodes trained: the
sums stay exact, and the rows show the precompute and the critical path."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.launcher import Consortium
from tests.e2e.consortium_checks import assert_exact_sums, recording, tiny_config

pytestmark = pytest.mark.e2e


def test_precomputed_uploads_sum_exactly(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, 3, 2, images_per_node=30, seed=4, hooks=recording(tmp_path),
                         node={"precompute_encryption": "on", "encryption_workers": 1})
    with Consortium(config) as consortium:
        code = consortium.wait(420)
    assert code == 0, (consortium.logs / "aggregator.log").read_text()[-3000:]
    rows = consortium.rows()
    assert [int(str(r["round"])) for r in rows if not r.get("failed")] == [0, 1, 2]
    assert_exact_sums(tmp_path, rows)
    for node in consortium.node_ids:
        log = (consortium.logs / f"{node}.log").read_text()
        for round_id in (1, 2):
            assert f"round {round_id} attempt 1: drawing noise and masks and encrypting zeros while training" in log
    for row in rows:
        if int(str(row["round"])) >= 1:
            phases = row["phases"]
            assert isinstance(phases, dict) and phases["precompute"] > 0
            # Node phases are each the slowest node's: the slowest node's sum lies between their max and their sum.
            node = [phases["encode"], phases["encrypt"], phases["upload"]]
            server = phases["decrypt"] + phases["apply"]
            assert max(node) + server - 1e-9 <= phases["critical_path"] <= sum(node) + server + 1e-9
            assert phases["critical_path"] < float(str(row["seconds"]))
