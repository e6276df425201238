"""Secure rounds whose uploads use encryptions of zero precomputed while the nodes trained: the sums stay exact."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.consortium import Consortium
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
        assert "round 1 attempt 1: precomputing" in log and "round 2 attempt 1: precomputing" in log
