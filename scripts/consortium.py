"""Run a key authority, an aggregator and N hospital nodes as separate local processes.

`make demo` runs `python -m scripts.consortium` with its defaults: five hospitals on
a SYNTHETIC chest-X-ray-like data set, ResNet-50, three secure rounds. Each service
is a separate OS process talking gRPC over 127.0.0.1; logs go to RUN_DIR/logs.
Tests and benchmarks use `Consortium` directly.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc

from scripts.make_certs import issue, make_ca
from services.aggregator.run_outcome import RunOutcome
from services.common.atomic_files import read_json_lines, write_json_atomic
from services.common.stream_digest import generate_identity
from services.common.tls import AGGREGATOR_NAME, KEY_AUTHORITY_NAME, TlsSettings, channel

REPO = Path(__file__).resolve().parent.parent


# Listening ports come from below the kernel's ephemeral range: a port handed out here stays unbound until its
# service starts, and in that gap the kernel may give it to an outgoing connection (another consortium's
# nodes dialling their aggregator) if it lies in the ephemeral range.
LISTEN_PORTS = range(20000, 32768)
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port that binds now, below the ephemeral range, and that this process has not handed out."""
    for _ in range(1000):
        port = random.choice(LISTEN_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {LISTEN_PORTS.start}..{LISTEN_PORTS.stop - 1}")


@dataclass
class ConsortiumConfig:
    run_dir: Path
    nodes: int = 5
    rounds: int = 3
    secure: bool = True
    architecture: str = "resnet50"
    image_size: int = 32
    images_per_node: int = 60
    num_classes: int = 2
    partition_scheme: str = "dirichlet"
    partition_alpha: float = 0.5
    local_epochs: int = 1
    learning_rate: float = 0.01
    round_schedule: str = "constant"
    round_floor: float = 0.1
    batch_size: int = 16
    min_participants: int = 3
    max_participants: int = 8
    clip_norm: float = 10.0
    noise_kind: str = "skellam"
    noise_variance: float = 16.0
    server_optimizer: str = "fedavg"
    server_learning_rate: float = 1.0
    server_momentum: float = 0.0
    local_optimizer: str = "sgd"
    proximal_mu: float = 0.0
    drift_correction: bool = False
    head_refit: bool = False
    imbalance: str = "class_weights"
    calibration_fraction: float = 0.0
    round_deadline_seconds: float = 900.0
    encryption_workers: int = 0
    torch_threads: int = 1
    seed: int | None = None
    data_seed: int = 0  # the SYNTHETIC set, its partition and splits, and the initial model
    record: bool = False
    insecure: bool = False
    extra_members: list[str] = field(default_factory=list)  # registered ids with no node process
    extra_aggregator_env: dict[str, str] = field(default_factory=dict)
    extra_node_env: dict[int, dict[str, str]] = field(default_factory=dict)


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    metrics_port: int


class Consortium:
    """The processes of one local consortium; use as a context manager."""

    def __init__(self, config: ConsortiumConfig) -> None:
        self.config = config
        self.services: dict[str, Service] = {}
        self.ka_address = f"127.0.0.1:{free_port()}"
        self.aggregator_address = f"127.0.0.1:{free_port()}"
        self.identities = config.run_dir / "identities"
        self.certs = config.run_dir / "certs"
        self.logs = config.run_dir / "logs"
        self.started_at = 0.0  # wall clock (time.time()) when start() launched the processes

    @property
    def members(self) -> list[str]:
        return self.node_ids + list(self.config.extra_members)

    def tls_env(self, prefix: str, name: str) -> dict[str, str]:
        if self.config.insecure:
            return {f"{prefix}INSECURE": "true"}
        return {f"{prefix}TLS_CERT": str(self.certs / f"{name}.pem"), f"{prefix}TLS_KEY": str(self.certs / f"{name}.key"),
                f"{prefix}TLS_CA": str(self.certs / "ca.pem")}

    def tls_for(self, name: str) -> TlsSettings:
        """The TLS settings of consortium member `name`, for tests that act as that member."""
        if self.config.insecure:
            return TlsSettings(insecure=True)
        return TlsSettings(tls_cert=self.certs / f"{name}.pem", tls_key=self.certs / f"{name}.key",
                           tls_ca=self.certs / "ca.pem")

    def channel_as(self, name: str, service: str) -> grpc.Channel:
        """A client channel to `service` ("aggregator" or "key_authority") with `name`'s certificate."""
        if service == "aggregator":
            return channel(self.aggregator_address, self.tls_for(name), AGGREGATOR_NAME)
        return channel(self.ka_address, self.tls_for(name), KEY_AUTHORITY_NAME)

    @property
    def node_ids(self) -> list[str]:
        return [f"hospital-{i + 1}" for i in range(self.config.nodes)]

    def _start(self, name: str, module: str, env: dict[str, str], metrics_port: int) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "wb")
        python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        full_env = {**os.environ, "PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1", **env}
        process = subprocess.Popen([sys.executable, "-m", module], cwd=REPO, env=full_env, stdout=log,
                                   stderr=subprocess.STDOUT)
        self.services[name] = Service(name, process, log, metrics_port)

    def write_class_counts(self) -> str:
        """Each hospital's class counts of the SYNTHETIC set, as the nodes will split it."""
        from services.common.partition import class_counts, format_class_counts, partition_indices
        from services.common.synthetic_xray import generate_synthetic_xrays, synthetic_class_names

        c = self.config
        _, labels = generate_synthetic_xrays(c.images_per_node * c.nodes, 16, c.num_classes, c.data_seed)
        parts = partition_indices(labels, c.nodes, c.partition_scheme, c.partition_alpha, c.data_seed)
        counts = class_counts(labels, parts, c.num_classes)
        names = synthetic_class_names(c.num_classes)
        write_json_atomic(c.run_dir / "class_counts.json", {"classes": list(names), "counts": counts.tolist()})
        return format_class_counts(counts, names)

    def start(self) -> Consortium:
        c = self.config
        self.started_at = time.time()
        for node_id in self.members:
            if not (self.identities / f"{node_id}.key").exists():
                generate_identity(self.identities, node_id)
        if not c.insecure:
            ca, ca_key = make_ca(self.certs)
            for name in (KEY_AUTHORITY_NAME, AGGREGATOR_NAME, *self.members):
                issue(self.certs, name, ca, ca_key)
        ka_metrics, agg_metrics = free_port(), free_port()
        self._start("key_authority", "services.key_authority", {
            "FEDXRAY_KA_LISTEN": self.ka_address, "FEDXRAY_KA_METRICS_PORT": str(ka_metrics),
            "FEDXRAY_KA_STATE_DIR": str(c.run_dir / "key_authority"),
            "FEDXRAY_KA_NODE_KEYS_DIR": str(self.identities),
            "FEDXRAY_KA_MAX_PARTICIPANTS": str(c.max_participants),
            "FEDXRAY_KA_MIN_PARTICIPANTS": str(c.min_participants),
            **self.tls_env("FEDXRAY_KA_", KEY_AUTHORITY_NAME),
        }, ka_metrics)
        self._start("aggregator", "services.aggregator", {
            "FEDXRAY_AGG_LISTEN": self.aggregator_address, "FEDXRAY_AGG_METRICS_PORT": str(agg_metrics),
            "FEDXRAY_AGG_KEY_AUTHORITY": self.ka_address, "FEDXRAY_AGG_STATE_DIR": str(c.run_dir / "aggregator"),
            "FEDXRAY_AGG_NODE_KEYS_DIR": str(self.identities), "FEDXRAY_AGG_SECURE": str(c.secure).lower(),
            "FEDXRAY_AGG_ROUNDS": str(c.rounds), "FEDXRAY_AGG_EXPECTED_PARTICIPANTS": str(c.nodes),
            "FEDXRAY_AGG_MIN_PARTICIPANTS": str(c.min_participants),
            "FEDXRAY_AGG_ARCHITECTURE": c.architecture, "FEDXRAY_AGG_NUM_CLASSES": str(c.num_classes),
            "FEDXRAY_AGG_IMAGE_SIZE": str(c.image_size), "FEDXRAY_AGG_LOCAL_EPOCHS": str(c.local_epochs),
            "FEDXRAY_AGG_LEARNING_RATE": str(c.learning_rate), "FEDXRAY_AGG_BATCH_SIZE": str(c.batch_size),
            "FEDXRAY_AGG_ROUND_SCHEDULE": c.round_schedule, "FEDXRAY_AGG_ROUND_FLOOR": str(c.round_floor),
            "FEDXRAY_AGG_CLIP_NORM": str(c.clip_norm), "FEDXRAY_AGG_NOISE_KIND": c.noise_kind,
            "FEDXRAY_AGG_NOISE_VARIANCE": str(c.noise_variance),
            "FEDXRAY_AGG_SERVER_OPTIMIZER": c.server_optimizer,
            "FEDXRAY_AGG_SERVER_LEARNING_RATE": str(c.server_learning_rate),
            "FEDXRAY_AGG_SERVER_MOMENTUM": str(c.server_momentum),
            "FEDXRAY_AGG_LOCAL_OPTIMIZER": c.local_optimizer, "FEDXRAY_AGG_PROXIMAL_MU": str(c.proximal_mu),
            "FEDXRAY_AGG_DRIFT_CORRECTION": str(c.drift_correction).lower(),
            "FEDXRAY_AGG_HEAD_REFIT": str(c.head_refit).lower(),
            "FEDXRAY_AGG_ROUND_DEADLINE_SECONDS": str(c.round_deadline_seconds),
            "FEDXRAY_AGG_RECORD_SUMS": str(c.record).lower(), "FEDXRAY_AGG_MODEL_SEED": str(c.data_seed),
            **self.tls_env("FEDXRAY_AGG_", AGGREGATOR_NAME),
            **c.extra_aggregator_env,
        }, agg_metrics)
        for index, node_id in enumerate(self.node_ids):
            port = free_port()
            env = {
                "FEDXRAY_NODE_NODE_ID": node_id, "FEDXRAY_NODE_AGGREGATOR": self.aggregator_address,
                "FEDXRAY_NODE_KEY_AUTHORITY": self.ka_address,
                "FEDXRAY_NODE_IDENTITY_KEY": str(self.identities / f"{node_id}.key"),
                "FEDXRAY_NODE_METRICS_PORT": str(port), "FEDXRAY_NODE_ARCHITECTURE": c.architecture,
                "FEDXRAY_NODE_NUM_CLASSES": str(c.num_classes), "FEDXRAY_NODE_IMAGE_SIZE": str(c.image_size),
                "FEDXRAY_NODE_SYNTHETIC_IMAGES": str(c.images_per_node * c.nodes),
                "FEDXRAY_NODE_PARTITION_SCHEME": c.partition_scheme,
                "FEDXRAY_NODE_PARTITION_ALPHA": str(c.partition_alpha),
                "FEDXRAY_NODE_PARTITION_PARTIES": str(c.nodes), "FEDXRAY_NODE_PARTITION_INDEX": str(index),
                "FEDXRAY_NODE_ENCRYPTION_WORKERS": str(c.encryption_workers),
                "FEDXRAY_NODE_TORCH_THREADS": str(c.torch_threads), "FEDXRAY_NODE_IMBALANCE": c.imbalance,
                "FEDXRAY_NODE_CALIBRATION_FRACTION": str(c.calibration_fraction),
                "FEDXRAY_NODE_SYNTHETIC_SEED": str(c.data_seed), "FEDXRAY_NODE_MODEL_SEED": str(c.data_seed),
                **self.tls_env("FEDXRAY_NODE_", node_id),
            }
            if c.seed is not None:
                env["FEDXRAY_NODE_SEED"] = str(c.seed * 1000 + index)
            if c.record:
                env["FEDXRAY_NODE_RECORD_DIR"] = str(c.run_dir / "records")
            env.update(c.extra_node_env.get(index, {}))
            self._start(node_id, "services.hospital_node", env, port)
        return self

    def rows(self) -> list[dict[str, object]]:
        return read_json_lines(self.config.run_dir / "aggregator" / "rounds.jsonl")

    def wait(self, timeout: float, on_row: object = None) -> int:
        """Wait for the aggregator to finish; return its exit code (124 on timeout)."""
        deadline = time.monotonic() + timeout
        aggregator = self.services["aggregator"].process
        shown = 0
        while time.monotonic() < deadline:
            rows = self.rows()
            for row in rows[shown:]:
                if callable(on_row):
                    on_row(row)
            shown = len(rows)
            outcome = RunOutcome.read(self.config.run_dir / "aggregator")
            if aggregator.poll() is not None or outcome is not None:
                for row in self.rows()[shown:]:
                    if callable(on_row):
                        on_row(row)
                if aggregator.poll() is not None:
                    return int(aggregator.returncode)
                assert outcome is not None
                return 1 if outcome.failed else 0
            for name, service in self.services.items():
                if name in ("key_authority",) and service.process.poll() is not None:
                    raise RuntimeError(f"{name} exited early with {service.process.returncode}; "
                                       f"see {self.logs / (name + '.log')}")
            time.sleep(0.5)
        return 124

    def stop(self) -> None:
        for service in self.services.values():
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in self.services.values():
            try:
                service.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
            service.log.close()

    def __enter__(self) -> Consortium:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def format_value(value: object, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) or isinstance(value, str) and value in ("inf", "Infinity"):
        number = float(value)
        if math.isinf(number):
            return "inf"
        return f"{number:.{digits}g}" if abs(number) >= 1e6 else f"{number:.{digits}f}"
    return str(value)


TABLE_HEADER = (f"{'round':>5} {'nodes':>5} {'seconds':>8} {'accuracy':>8} {'precision':>9} {'recall':>7} "
                f"{'F1':>6} {'AUC':>6} {'epsilon':>10}")


def format_row(row: dict[str, object]) -> str:
    evaluation = row.get("evaluation") or {}
    assert isinstance(evaluation, dict)
    return (f"{format_value(row.get('round')):>5} {format_value(row.get('participants')):>5} "
            f"{format_value(row.get('seconds'), 1):>8} {format_value(evaluation.get('accuracy')):>8} "
            f"{format_value(evaluation.get('precision')):>9} {format_value(evaluation.get('recall')):>7} "
            f"{format_value(evaluation.get('f1')):>6} {format_value(evaluation.get('auc')):>6} "
            f"{format_value(row.get('epsilon'), 4):>10}" + ("  head refit" if row.get("head_refit") else "")
            + ("  FAILED" if row.get("failed") else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.consortium", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--architecture", default="resnet50")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--images-per-node", type=int, default=60)
    parser.add_argument("--plaintext", action="store_true", help="privacy off, for comparison")
    parser.add_argument("--no-head-refit", dest="head_refit", action="store_false",
                        help="skip the closing refit of the classifier head from the hospitals' summed feature "
                             "statistics")
    parser.add_argument("--timeout", type=float, default=1200.0)
    args = parser.parse_args(argv)
    if args.run_dir.exists():
        import shutil

        shutil.rmtree(args.run_dir)
    config = ConsortiumConfig(run_dir=args.run_dir, nodes=args.nodes, rounds=args.rounds,
                              secure=not args.plaintext, architecture=args.architecture,
                              image_size=args.image_size, images_per_node=args.images_per_node,
                              head_refit=args.head_refit)
    print(f"FedXray consortium: {config.nodes} hospitals on SYNTHETIC radiographs ({config.image_size}px, "
          f"{config.architecture}), {config.rounds} {'secure' if config.secure else 'PLAINTEXT'} rounds"
          f"{', then a head refit' if config.head_refit else ''}; "
          f"logs in {args.run_dir / 'logs'}", flush=True)
    print("class counts per hospital (Dirichlet label skew):", flush=True)
    print(Consortium(config).write_class_counts(), flush=True)
    print("row 0 is the initial model; metrics are pooled over the hospitals' validation splits", flush=True)
    print(TABLE_HEADER, flush=True)
    started = time.monotonic()
    with Consortium(config) as consortium:
        code = consortium.wait(args.timeout, on_row=lambda row: print(format_row(row), flush=True))
        rows = consortium.rows()
    print(f"finished in {time.monotonic() - started:.0f} s with exit code {code}", flush=True)
    completed = [r for r in rows if not r.get("failed") and int(str(r.get("round", 0))) > 0]
    refits = sum(1 for r in completed if r.get("head_refit"))
    expected = (config.rounds, 1 if config.head_refit else 0)
    return 0 if code == 0 and (len(completed) - refits, refits) == expected else 1


if __name__ == "__main__":
    sys.exit(main())
