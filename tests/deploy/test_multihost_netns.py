"""One service per host, without Docker: each in its own network namespace and address.

The key authority, the aggregator and five hospital nodes run as processes in seven
network namespaces joined by a bridge that lives in a namespace of its own, in the
private subnet 10.213.0.0/24, for two secure rounds with mTLS on (certificates from
`scripts.make_certs`). Peers are reached by address while certificates are checked
by service name, as on real separate hosts. The root namespace gets a blackhole
route for the subnet first, and nothing in it connects to those addresses: results
are read from the aggregator's state directory, and its /metrics from inside its
own namespace. Namespaces and route are removed afterwards, pass or fail.

Needs root and iproute2's `ip`; skipped otherwise (and says why).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from scripts.launcher import ConsortiumConfig
from scripts.make_certs import make_consortium_certs
from services.aggregator.run_outcome import RunOutcome
from scripts.settings_env import child_environment
from tests.deploy.netns_lab import NetnsLab, ip
from tests.e2e.consortium_checks import TINY

REPO = Path(__file__).resolve().parents[2]
SUBNET = "10.213.0.0/24"
NODES, ROUNDS = 5, 2
KA_PORT, AGGREGATOR_PORT, AGGREGATOR_METRICS_PORT = 50051, 50052, 9102
RUN_TIMEOUT_SECONDS = 150.0

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (ip netns add); run as root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2's `ip` is not installed (apt-get install iproute2)"),
]


@dataclass
class MultiHostRun:
    lab: NetnsLab
    state_dir: Path
    addresses: dict[str, str]
    finished: dict[str, object]

    def rows(self) -> list[dict[str, object]]:
        path = self.state_dir / "rounds.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.log_tail(1500)}" for name, p in self.lab.processes.items())


def tls(certs: Path, name: str) -> dict[str, object]:
    return {"tls_cert": certs / f"{name}.pem", "tls_key": certs / f"{name}.key", "tls_ca": certs / "ca.pem"}


def start_services(lab: NetnsLab, run_dir: Path, node_ids: list[str]) -> dict[str, str]:
    """Each service's environment is built from its settings model (scripts.launcher's ConsortiumConfig), as
    the local launcher builds it; only the addresses differ: one per namespace."""
    certs, logs = run_dir / "certs", run_dir / "logs"
    make_consortium_certs(certs, node_ids)
    addresses = {"key-authority": lab.add_host("key-authority", 10), "aggregator": lab.add_host("aggregator", 11)}
    for index, node_id in enumerate(node_ids):
        addresses[node_id] = lab.add_host(node_id, 21 + index)
    ka, aggregator = f"{addresses['key-authority']}:{KA_PORT}", f"{addresses['aggregator']}:{AGGREGATOR_PORT}"
    config = ConsortiumConfig(
        run_dir=run_dir, nodes=NODES, images_per_node=40, seed=7,
        settings={**TINY, "partition_scheme": "iid", "rounds": ROUNDS, "min_participants": 3, "max_participants": 8, "clip_norm": 5.0,
                  "noise_variance": 12.0, "join_timeout_seconds": RUN_TIMEOUT_SECONDS,
                  "round_deadline_seconds": RUN_TIMEOUT_SECONDS,
                  # Keeps /metrics up after training, for the test to read it from the namespace.
                  "linger_seconds": 120})
    base = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    python = [sys.executable, "-m"]
    identities = certs / "identities"
    authority = config.key_authority_settings(listen=ka, metrics_port=9101, state_dir=run_dir / "key_authority",
                                              node_keys_dir=identities, **tls(certs, "key-authority"))
    lab.start("key-authority", [*python, "services.key_authority"], child_environment(base, authority), logs, REPO)
    central = config.aggregator_settings(listen=aggregator, key_authority=ka, metrics_port=AGGREGATOR_METRICS_PORT,
                                         state_dir=run_dir / "aggregator", node_keys_dir=identities,
                                         **tls(certs, "aggregator"))
    lab.start("aggregator", [*python, "services.aggregator"], child_environment(base, central), logs, REPO)
    for index, node_id in enumerate(node_ids):
        lab.start(node_id, [*python, "services.hospital_node"], child_environment(base, config.node_settings(
            index, aggregator=aggregator, key_authority=ka, identity_key=identities / f"{node_id}.key",
            **tls(certs, node_id))), logs, REPO)
    return addresses


def wait_for_finish(lab: NetnsLab, state_dir: Path) -> dict[str, object]:
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        outcome = RunOutcome.read(state_dir)
        if outcome is not None:
            return asdict(outcome)
        for name, lab_process in lab.processes.items():
            if name in ("key-authority", "aggregator") and lab_process.process.poll() is not None:
                raise AssertionError(f"{name} exited early ({lab_process.process.returncode}):\n"
                                     f"{lab_process.log_tail()}")
        time.sleep(0.5)
    raise AssertionError(f"no finished.json within {RUN_TIMEOUT_SECONDS:.0f} s")


@pytest.fixture(scope="module")
def multihost_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiHostRun]:
    run_dir = tmp_path_factory.mktemp("multihost")
    node_ids = [f"hospital-{i + 1}" for i in range(NODES)]
    lab = NetnsLab(SUBNET)
    try:
        lab.open()
        addresses = start_services(lab, run_dir, node_ids)
        state_dir = run_dir / "aggregator"
        try:
            finished = wait_for_finish(lab, state_dir)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{MultiHostRun(lab, state_dir, addresses, {}).logs()}") from None
        yield MultiHostRun(lab, state_dir, addresses, finished)
    finally:
        lab.close()
        assert lab.leftovers() == [], f"network namespaces or route left behind: {lab.leftovers()}"


def test_root_namespace_blackholes_the_test_subnet(multihost_run: MultiHostRun) -> None:
    assert ip("route", "show", "exact", SUBNET).stdout.startswith("blackhole"), ip("route").stdout


def test_every_service_has_its_own_namespace_and_address(multihost_run: MultiHostRun) -> None:
    lab = multihost_run.lab
    assert len(set(multihost_run.addresses.values())) == NODES + 2
    for host, address in multihost_run.addresses.items():
        shown = lab.run_in(host, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
        assert f"{address}/24" in shown, (host, shown)


def test_two_secure_rounds_complete_across_hosts_with_mtls(multihost_run: MultiHostRun) -> None:
    assert multihost_run.finished == {"failed": False, "completed_rounds": ROUNDS}, multihost_run.logs()
    rows = [row for row in multihost_run.rows() if int(str(row["round"])) >= 1]
    assert [row["round"] for row in rows] == list(range(1, ROUNDS + 1))
    assert all(row["participants"] == NODES and not row.get("failed") for row in rows), rows


def test_round_latency_is_recorded_in_the_aggregator_metrics(multihost_run: MultiHostRun) -> None:
    # Read from inside the aggregator's namespace: the root namespace never connects to the lab.
    fetch = ("import urllib.request; print(urllib.request.urlopen("
             f"'http://127.0.0.1:{AGGREGATOR_METRICS_PORT}/metrics', timeout=10).read().decode())")
    reply = multihost_run.lab.run_in("aggregator", [sys.executable, "-c", fetch])
    assert reply.returncode == 0, reply.stderr
    samples = dict(line.rsplit(" ", 1) for line in reply.stdout.splitlines() if line and not line.startswith("#"))
    assert float(samples["fedxray_round_latency_seconds_count"]) == ROUNDS
    assert float(samples["fedxray_round_latency_seconds_sum"]) > 0
    assert float(samples["fedxray_round_participants"]) == NODES
    assert float(samples["fedxray_holds_secret_key"]) == 0
