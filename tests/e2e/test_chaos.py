"""Chaos: the aggregator and the key authority killed with SIGKILL mid-round and started again; the run finishes.

Real processes over mTLS and real CKKS; the hooked aggregator records every decrypted sum and the hooked nodes
every upload's fields, so each sum is checked exactly against what its contributors sent.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from scripts.launcher import Consortium
from services.aggregator.run_outcome import RunOutcome
from tests.e2e.consortium_checks import assert_exact_sums, recording, scrape, tiny_config

pytestmark = pytest.mark.e2e


def _wait_for_log(consortium: Consortium, name: str, text: str, timeout: float, after: int = 0) -> int:
    """Poll `name`'s log until `text` appears past byte `after`; the byte offset just after it."""
    path = consortium.logs / f"{name}.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_bytes()
        found = content.find(text.encode(), after)
        if found >= 0:
            return found + len(text)
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}:\n{path.read_text()[-3000:]}")


def test_aggregator_killed_mid_round_resumes_and_finishes_every_round_with_exact_sums(tmp_path: Path) -> None:
    rounds = 4
    config = tiny_config(tmp_path, 4, rounds, images_per_node=30, seed=5, hooks=recording(tmp_path),
                         aggregator={"min_participants": 3, "round_deadline_seconds": 120},
                         node={"reconnect_seconds": 120})
    with Consortium(config) as consortium:
        _wait_for_log(consortium, "aggregator", "round 2 attempt 1 opened", 300)
        consortium.kill("aggregator")  # SIGKILL: mid-round 2, nothing flushed
        killed_at_epsilon = json.loads((tmp_path / "aggregator" / "checkpoints" / "latest.json").read_text())["epsilon"]
        consortium.restart("aggregator")
        code = consortium.wait(420)
        log = (consortium.logs / "aggregator.log").read_text()
    assert code == 0, log[-3000:]
    rows = consortium.rows()
    by_round = {int(str(r["round"])): r for r in rows}
    assert len(by_round) == len(rows)  # every round's row once, across the restart
    assert "round 2 was interrupted and is abandoned" in log
    assert by_round[2].get("interrupted") and by_round[2].get("failed")
    trained = [r for r in rows if int(str(r["round"])) > 0 and not r.get("failed")]
    assert [int(str(r["round"])) for r in trained] == [1, 3, 4, 5]  # round 2's id is never used again
    assert all(r["participants"] == 4 for r in trained)  # every node reconnected to the restarted aggregator
    assert_exact_sums(tmp_path, rows)
    # The restart did not reset the privacy spent: epsilon grows from where the killed aggregator left it.
    epsilons = [float(str(r["epsilon"])) for r in trained]
    assert killed_at_epsilon > 0 and epsilons[0] == pytest.approx(killed_at_epsilon)
    assert all(later > earlier for earlier, later in zip(epsilons, epsilons[1:]))
    assert not list((tmp_path / "aggregator" / "staging").glob("*"))
    # Each decrypted round id reached the key authority once: round 2 was never decrypted.
    assert not (tmp_path / "records" / "round_0002_field_sum.npy").exists()


def test_key_authority_killed_before_decryption_restarts_with_its_key_and_the_round_is_decrypted(
        tmp_path: Path) -> None:
    config = tiny_config(tmp_path, 3, 3, images_per_node=30, seed=6, hooks=recording(tmp_path),
                         aggregator={"min_participants": 3, "round_deadline_seconds": 120})
    with Consortium(config) as consortium:
        _wait_for_log(consortium, "aggregator", "round 2 attempt 1 opened", 300)
        consortium.kill("key_authority")
        # The round's uploads arrive and its decryption finds no key authority: it retries with backoff.
        _wait_for_log(consortium, "aggregator", "key authority unreachable", 300)
        consortium.restart("key_authority")
        code = consortium.wait(420)
        log = (consortium.logs / "aggregator.log").read_text()
    assert code == 0, log[-3000:]
    rows = consortium.rows()
    trained = [r for r in rows if int(str(r["round"])) > 0]
    assert [(int(str(r["round"])), bool(r.get("failed"))) for r in trained] == [(1, False), (2, False), (3, False)]
    assert_exact_sums(tmp_path, rows)
    # The restarted key authority loaded the same key from its 0600 file.
    secret = tmp_path / "key_authority" / "ckks_secret_context.bin"
    assert secret.stat().st_mode & 0o077 == 0
    ka_log = (consortium.logs / "key_authority.log").read_text()
    assert "loaded secret key from" in ka_log


def test_a_run_killed_after_its_end_stays_finished_when_restarted(tmp_path: Path) -> None:
    """Killed once the closing evaluation is written and the nodes have gone home: the restarted aggregator
    abandons no round, writes no row and waits for no node; it serves status and metrics."""
    config = tiny_config(tmp_path, 3, 2, images_per_node=30, seed=7,
                         aggregator={"min_participants": 3, "linger_seconds": 300})
    with Consortium(config) as consortium:
        assert consortium.wait(420) == 0  # the finished marker is written: the run has ended
        for node in consortium.node_ids:  # told the run is over, every node exits by itself
            consortium.services[node].process.wait(timeout=60)
        rows_before = consortium.rows()
        consortium.kill("aggregator")
        offset = len((consortium.logs / "aggregator.log").read_bytes())
        consortium.restart("aggregator")
        _wait_for_log(consortium, "aggregator", "the run finished before this restart", 120, after=offset)
        _wait_for_log(consortium, "aggregator", "serving status and metrics for", 60, after=offset)
        restarted = (consortium.logs / "aggregator.log").read_bytes()[offset:].decode()
        assert consortium.services["aggregator"].process.poll() is None  # alive, serving
        served = scrape(consortium.services["aggregator"].metrics_port)
        assert served["fedxray_rounds_completed"] == 2
        # The run's last validation metrics and phase seconds, from its rows: not empty after the end.
        last = [r for r in rows_before if isinstance(r.get("evaluation"), dict)][-1]["evaluation"]
        assert served['fedxray_validation_metric{metric="accuracy"}'] == pytest.approx(last["accuracy"])  # type: ignore
        assert any(name.startswith("fedxray_last_round_phase_seconds") for name in served)
    assert "interrupted" not in restarted and " opened for " not in restarted and "joined" not in restarted
    assert consortium.rows() == rows_before
    assert not any(r.get("interrupted") for r in rows_before)
    assert RunOutcome.read(tmp_path / "aggregator") == RunOutcome(failed=False, completed_rounds=2)
