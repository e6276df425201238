"""Run a key authority, an aggregator and N hospital nodes as separate local processes.

`make demo` runs `python -m scripts.consortium` with its defaults: five hospitals on
a SYNTHETIC chest-X-ray-like data set, ResNet-50, three secure rounds, each hospital
training under record-level DP-SGD at the epsilon the aggregator proposes (8; every
hospital's own budget, its ledger in RUN_DIR/hospitals/<node>). Each service
is a separate OS process talking gRPC over 127.0.0.1; logs go to RUN_DIR/logs.
Tests and benchmarks use `Consortium` directly.

Your own images: one `--hospital NAME=SOURCE:PATH` per hospital, where SOURCE is
`folder` (PATH/train/<CLASS>/*.png|jpg, the Kaggle layout; val/ or test/ validate when
present), `medmnist` (a MedMNIST .npz file) or `dicom` (PATH/<CLASS>/**/*.dcm), e.g.

    python -m scripts.consortium --class-names NORMAL,PNEUMONIA \
        --hospital st-anna=folder:/data/st-anna --hospital city=folder:/data/city \
        --hospital north=folder:/data/north
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc

from pydantic_settings import BaseSettings

from scripts.make_certs import issue, make_ca
from services.aggregator.config import AggregatorSettings
from services.aggregator.run_outcome import RunOutcome
from services.common.atomic_files import read_json_lines, write_json_atomic
from scripts.settings_env import child_environment
from services.common.node_identity import generate_identity
from services.common.round_plan import TRAINABLE
from services.common.tls import AGGREGATOR_NAME, KEY_AUTHORITY_NAME, TlsSettings, channel
from services.hospital_node.config import HospitalNodeSettings
from services.key_authority.config import KeyAuthoritySettings

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


SettingValues = dict[str, object]
# Set by the launcher for each process; a caller who names one of these is refused.
LAUNCHER_SETTINGS = frozenset({
    "listen", "metrics_host", "metrics_port", "key_authority", "aggregator", "state_dir", "node_keys_dir",
    "identity_key", "node_id", "partition_parties", "partition_index", "tls_cert",
    "tls_key", "tls_ca", "insecure"})
SERVICE_SETTINGS: dict[str, type[BaseSettings]] = {
    "key_authority": KeyAuthoritySettings, "aggregator": AggregatorSettings, "hospital_node": HospitalNodeSettings}


@dataclass
class ConsortiumConfig:
    """One local consortium: the services' settings, by their settings models' names.

    `settings` go to every service whose settings model has that name (architecture to the aggregator and every
    node, min_participants to the aggregator and the key authority); `aggregator`, `key_authority` and `node`
    to that service only, `per_node[i]` to node i. A name no service knows is refused, and so is one the
    launcher sets itself (addresses, ports, folders, certificates, identities, node ids, partition indices).
    Anything not named keeps the settings model's default: there are no other defaults.
    """

    run_dir: Path
    nodes: int = 5
    settings: SettingValues = field(default_factory=dict)
    aggregator: SettingValues = field(default_factory=dict)
    key_authority: SettingValues = field(default_factory=dict)
    node: SettingValues = field(default_factory=dict)
    per_node: dict[int, SettingValues] = field(default_factory=dict)
    images_per_node: int | None = None  # SYNTHETIC images per hospital: synthetic_images is this times `nodes`
    seed: int | None = None  # fixes node i's training and noise randomness at seed * 1000 + i (tests)
    insecure: bool = False  # plaintext gRPC, no certificates
    extra_members: list[str] = field(default_factory=list)  # registered ids with no node process
    node_names: list[str] | None = None  # the nodes' ids; unset: hospital-1 .. hospital-N
    # An aggregator the launcher does not start (a test's harness playing one): the nodes dial this address.
    external_aggregator: str | None = None
    # Test-only: the module each service runs (tests/service_hooks wraps the services' entry points), and the
    # environment of their hooks.
    modules: dict[str, str] = field(default_factory=dict)
    hook_env: dict[str, str] = field(default_factory=dict)

    def node_id(self, index: int) -> str:
        return self.node_names[index] if self.node_names else f"hospital-{index + 1}"

    def __post_init__(self) -> None:
        if self.node_names is not None:
            if len(self.node_names) != self.nodes or len(set(self.node_names)) != self.nodes:
                raise ValueError(f"node_names {self.node_names} must name each of the {self.nodes} nodes once")
            for name in self.node_names:
                if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", name):
                    raise ValueError(f"hospital name {name!r}: use lowercase letters, digits and '-' (it names a "
                                     "certificate and files)")
        known = frozenset().union(*(model.model_fields for model in SERVICE_SETTINGS.values()))
        for source, values in (("settings", self.settings), ("aggregator", self.aggregator),
                               ("key_authority", self.key_authority), ("node", self.node),
                               *((f"per_node[{i}]", v) for i, v in self.per_node.items())):
            model_fields = known if source == "settings" else SERVICE_SETTINGS[
                "hospital_node" if source.startswith(("node", "per_node")) else source].model_fields
            for name in values:
                if name in LAUNCHER_SETTINGS:
                    raise ValueError(f"{source}: {name!r} is set by the launcher")
                if name not in model_fields:
                    raise ValueError(f"{source}: no service setting is called {name!r}")

    def values_for(self, service: str, own: SettingValues) -> SettingValues:
        """The caller's values for `service`: the shared ones it knows, then its own."""
        fields = SERVICE_SETTINGS[service].model_fields
        return {**{k: v for k, v in self.settings.items() if k in fields}, **own}

    def key_authority_settings(self, **launcher: object) -> KeyAuthoritySettings:
        """The key authority's settings; `launcher` adds what the launcher decides (address, folders, TLS)."""
        return KeyAuthoritySettings(**{**self.values_for("key_authority", self.key_authority),
                                       "insecure": self.insecure, **launcher})

    def aggregator_settings(self, **launcher: object) -> AggregatorSettings:
        return AggregatorSettings(**{"expected_participants": self.nodes,
                                     **self.values_for("aggregator", self.aggregator), "insecure": self.insecure,
                                     **launcher})

    def node_settings(self, index: int, **launcher: object) -> HospitalNodeSettings:
        """Node `index`'s settings (its id, part `index` of the SYNTHETIC set)."""
        values = {**self.values_for("hospital_node", self.node), **self.per_node.get(index, {})}
        if self.images_per_node is not None:
            values.setdefault("synthetic_images", self.images_per_node * self.nodes)
        if self.seed is not None:
            values.setdefault("seed", self.seed * 1000 + index)
        return HospitalNodeSettings(**{**values, "node_id": self.node_id(index), "partition_parties": self.nodes,
                                       "partition_index": index, "insecure": self.insecure, **launcher})


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
        self.aggregator_address = config.external_aggregator or f"127.0.0.1:{free_port()}"
        self.identities = config.run_dir / "identities"
        self.certs = config.run_dir / "certs"
        self.logs = config.run_dir / "logs"
        self.started_at = 0.0  # wall clock (time.time()) when start() launched the processes
        self.key_authority_settings = self._key_authority_settings(0)
        self.aggregator_settings = self._aggregator_settings(0)
        self.node_settings = [self._node_settings(index, 0) for index in range(config.nodes)]

    @property
    def members(self) -> list[str]:
        return self.node_ids + list(self.config.extra_members)

    def tls_for(self, name: str) -> TlsSettings:
        """The TLS settings of consortium member `name`, for tests that act as that member."""
        if self.config.insecure:
            return TlsSettings(insecure=True)
        return TlsSettings(tls_cert=self.certs / f"{name}.pem", tls_key=self.certs / f"{name}.key",
                           tls_ca=self.certs / "ca.pem")

    def _tls(self, name: str) -> SettingValues:
        return dict(self.tls_for(name))

    def channel_as(self, name: str, service: str) -> grpc.Channel:
        """A client channel to `service` ("aggregator" or "key_authority") with `name`'s certificate."""
        if service == "aggregator":
            return channel(self.aggregator_address, self.tls_for(name), AGGREGATOR_NAME)
        return channel(self.ka_address, self.tls_for(name), KEY_AUTHORITY_NAME)

    @property
    def node_ids(self) -> list[str]:
        return [self.config.node_id(i) for i in range(self.config.nodes)]

    def _key_authority_settings(self, metrics_port: int) -> KeyAuthoritySettings:
        return self.config.key_authority_settings(
            listen=self.ka_address, metrics_port=metrics_port, state_dir=self.config.run_dir / "key_authority",
            node_keys_dir=self.identities, **self._tls(KEY_AUTHORITY_NAME))

    def _aggregator_settings(self, metrics_port: int) -> AggregatorSettings:
        return self.config.aggregator_settings(
            listen=self.aggregator_address, metrics_port=metrics_port, key_authority=self.ka_address,
            state_dir=self.config.run_dir / "aggregator", node_keys_dir=self.identities, **self._tls(AGGREGATOR_NAME))

    def _node_settings(self, index: int, metrics_port: int) -> HospitalNodeSettings:
        node_id = self.config.node_id(index)
        return self.config.node_settings(
            index, aggregator=self.aggregator_address, key_authority=self.ka_address,
            identity_key=self.identities / f"{node_id}.key", metrics_port=metrics_port,
            state_dir=self.config.run_dir / "hospitals" / node_id, **self._tls(node_id))

    def _start(self, name: str, service: str, settings: BaseSettings, metrics_port: int) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # a restarted service goes on in the same log
        python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        base = {**os.environ, "PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1", **self.config.hook_env}
        module = self.config.modules.get(service, f"services.{service}")
        process = subprocess.Popen([sys.executable, "-m", module], cwd=REPO, env=child_environment(base, settings),
                                   stdout=log, stderr=subprocess.STDOUT)
        self.services[name] = Service(name, process, log, metrics_port)

    def data_description(self) -> str:
        """What the hospitals train on, as the report names it: SYNTHETIC only when it is."""
        sources = sorted({settings.data_source for settings in self.node_settings})
        return "SYNTHETIC radiographs" if sources == ["synthetic"] else f"own images ({', '.join(sources)})"

    def write_class_counts(self) -> str:
        """Each hospital's class counts of the SYNTHETIC set, as the nodes will split it (printed before the run;
        the report plots what the nodes themselves send when they join, in aggregator/class_counts.json)."""
        from services.hospital_node.data.partition import class_counts, format_class_counts, partition_indices
        from services.hospital_node.data.synthetic_xray import generate_synthetic_xrays, synthetic_class_names

        s = self.node_settings[0]
        _, labels = generate_synthetic_xrays(s.synthetic_images, 16, s.num_classes, s.synthetic_seed)
        parts = partition_indices(labels, s.partition_parties, s.partition_scheme, s.partition_alpha,
                                  s.synthetic_seed)
        counts = class_counts(labels, parts, s.num_classes)
        return format_class_counts(counts, synthetic_class_names(s.num_classes), self.node_ids)

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
        c.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(c.run_dir / "run.json", {"data": self.data_description()})
        ka_metrics, agg_metrics = free_port(), free_port()
        self.key_authority_settings = self._key_authority_settings(ka_metrics)
        self._start("key_authority", "key_authority", self.key_authority_settings, ka_metrics)
        self.aggregator_settings = self._aggregator_settings(agg_metrics)
        if c.external_aggregator is None:
            self._start("aggregator", "aggregator", self.aggregator_settings, agg_metrics)
        for index, node_id in enumerate(self.node_ids):
            port = free_port()
            self.node_settings[index] = self._node_settings(index, port)
            self._start(node_id, "hospital_node", self.node_settings[index], port)
        return self

    def kill(self, name: str) -> None:
        """SIGKILL one service (chaos tests): no handler runs, nothing is flushed or cleaned up."""
        service = self.services[name]
        service.process.kill()
        service.process.wait()
        service.log.close()

    def restart(self, name: str) -> None:
        """Start a killed key authority, aggregator or hospital again, with the same settings, state and ports."""
        service = self.services[name]
        if service.process.poll() is None:
            raise RuntimeError(f"{name} is still running; kill it first")
        if name in self.node_ids:
            self._start(name, "hospital_node", self.node_settings[self.node_ids.index(name)], service.metrics_port)
            return
        settings: BaseSettings = (self.aggregator_settings if name == "aggregator"
                                  else self.key_authority_settings)
        self._start(name, name, settings, service.metrics_port)

    def rows(self) -> list[dict[str, object]]:
        return read_json_lines(self.config.run_dir / "aggregator" / "rounds.jsonl")

    def wait(self, timeout: float, on_row: object = None) -> int:
        """Wait for the aggregator to finish; return its exit code (124 on timeout)."""
        deadline = time.monotonic() + timeout
        shown = 0
        while time.monotonic() < deadline:
            aggregator = self.services["aggregator"].process  # re-read: a chaos test may have restarted it
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


# Two privacy figures: the hospital-level epsilon of the secure sums' Skellam noise (one hospital's whole update
# is the unit), and the record-level epsilon of DP-SGD, the largest any hospital has reported ("-" when none trains
# under DP-SGD), with its unit: per patient where every hospital samples and clips patients, else per image.
TABLE_HEADER = (f"{'round':>5} {'nodes':>5} {'seconds':>8} {'accuracy':>8} {'precision':>9} {'recall':>7} "
                f"{'F1':>6} {'AUC':>6} {'eps hospital':>12} {'eps record':>18}")


def record_epsilon_text(row: dict[str, object]) -> str:
    """The record-level epsilon with its unit ("7.93 per patient"), or "-" without DP-SGD."""
    value = row.get("record_epsilon_max")
    if value is None:
        return "-"
    without = row.get("record_dp_off")
    off = f", {len(without)} without" if isinstance(without, list) and without else ""
    return f"{format_value(value, 2)} per {row.get('record_epsilon_unit') or 'image'}{off}"


def format_row(row: dict[str, object]) -> str:
    evaluation = row.get("evaluation") or {}
    assert isinstance(evaluation, dict)
    return (f"{format_value(row.get('round')):>5} {format_value(row.get('participants')):>5} "
            f"{format_value(row.get('seconds'), 1):>8} {format_value(evaluation.get('accuracy')):>8} "
            f"{format_value(evaluation.get('precision')):>9} {format_value(evaluation.get('recall')):>7} "
            f"{format_value(evaluation.get('f1')):>6} {format_value(evaluation.get('auc')):>6} "
            f"{format_value(row.get('epsilon'), 4):>12} {record_epsilon_text(row):>18}"
            + ("  head refit" if row.get("head_refit") else "")
            + ("  FAILED" if row.get("failed") else ""))


# The demo's own choices, beside the settings models' defaults: small images, so that the five hospitals'
# ResNet-50 rounds finish in minutes on a laptop's CPU; Dirichlet label skew, as hospitals have; one process per
# hospital with one training thread, so five share two cores without thrashing; 200 SYNTHETIC images per hospital,
# a fifth of them for validation, so that the pooled metrics rest on 200 images.
DEMO_SETTINGS: SettingValues = {
    "architecture": "resnet50", "image_size": 32, "partition_scheme": "dirichlet", "partition_alpha": 0.5,
    "round_deadline_seconds": 900.0, "encryption_workers": 0, "torch_threads": 1}
DEMO_IMAGES_PER_NODE = 200
# The SYNTHETIC demo's recipe under record-level DP-SGD (docs/RESULTS.md, "Learning under DP"): start from the public
# stand-in (experiments.pretrain, built and cached on first use) and train the classifier head only, on the frozen
# backbone's features, per patient; so only the head's 4,098 values travel through the secure sum.
DEMO_DP_HEAD: SettingValues = {
    "trainable": "head", "local_optimizer": "sgd", "learning_rate": 0.003, "local_epochs": 5, "batch_size": 32,
    "dp_clip_norm": 1.0, "clip_norm": 0.5, "server_momentum": 0.0, "head_refit": False, "imbalance": "none"}
# One SGD epoch of every layer a round, no head refit: the services' defaults before 2026-11-30, instead of their
# recipe that learns (docs/RESULTS.md: AdamW at 3e-4, 10 local epochs, logit adjustment, clip norm 20, server
# momentum 0.5, head refit). The timing benchmarks and the tests of the protocol use it: their figures and
# assertions were made with it.
QUICK_TRAINING: SettingValues = {
    "local_optimizer": "sgd", "learning_rate": 0.01, "local_epochs": 1, "imbalance": "class_weights",
    "clip_norm": 10.0, "server_momentum": 0.0, "head_refit": False}
# Own images: the services' defaults, the recipe that learns; logs in RUN_DIR/logs are plain text, for a person.
OWN_IMAGES_SETTINGS: SettingValues = {"log_format": "text"}
SOURCES = ("folder", "medmnist", "dicom")


def parse_hospital(text: str) -> tuple[str, str, Path]:
    """`NAME=SOURCE:PATH` as (name, source, absolute path); a ValueError saying what is wrong."""
    name, _, rest = text.partition("=")
    source, _, path = rest.partition(":")
    if not name or not source or not path:
        raise ValueError(f"--hospital {text!r}: expected NAME=SOURCE:PATH, e.g. st-anna=folder:/data/st-anna")
    if source not in SOURCES:
        raise ValueError(f"--hospital {text!r}: SOURCE must be one of {', '.join(SOURCES)}, not {source!r}")
    location = Path(path).expanduser().resolve()
    if not location.exists():
        raise ValueError(f"--hospital {text!r}: {location} does not exist")
    return name, source, location


def joined_class_counts(path: Path) -> str:
    """The class table from the counts the hospitals sent when they joined (the aggregator's class_counts.json)."""
    from services.hospital_node.data.partition import format_class_counts

    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"(no class counts in {path})"
    lines = ["class counts the hospitals sent when they joined:"]
    if document["hospitals"]:
        lines.append(format_class_counts(document["counts"], document["classes"], document["hospitals"]))
    if document["not_shared"]:
        lines.append(f"not shared by: {', '.join(document['not_shared'])}")
    return "\n".join(lines)
# The demo's record-level (per-patient) target, which the aggregator proposes and every hospital adopts.
DEMO_RECORD_EPSILON = 8.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.consortium", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=AggregatorSettings.model_fields["rounds"].default)
    parser.add_argument("--architecture", default=DEMO_SETTINGS["architecture"])
    parser.add_argument("--image-size", type=int, default=DEMO_SETTINGS["image_size"])
    parser.add_argument("--images-per-node", type=int, default=DEMO_IMAGES_PER_NODE)
    parser.add_argument("--plaintext", action="store_true", help="privacy off, for comparison")
    parser.add_argument("--record-epsilon", type=float, default=None,
                        help="record-level DP-SGD target the aggregator proposes to every hospital; 0: no "
                             "record-level DP (then the closing head refit runs; with --hospital, every hospital "
                             f"turns it off explicitly, record_dp=off). Default: {DEMO_RECORD_EPSILON:g}, for the "
                             "SYNTHETIC demo and a hospital's own images alike")
    parser.add_argument("--init-weights", type=Path, default=None,
                        help="start from this state dict (e.g. ImageNet or public chest X-ray weights). Default for "
                             "the SYNTHETIC demo: the public stand-in of experiments.pretrain, built on first use "
                             "(minutes, with progress) and cached under runs/pretrain")
    parser.add_argument("--from-scratch", action="store_true",
                        help="the SYNTHETIC demo without the public stand-in: seeded weights (learns nothing under DP)")
    parser.add_argument("--trainable", choices=TRAINABLE, default=None,
                        help="what each round trains and uploads: all, last_block (last stage and head) or head "
                             "(the head on frozen features). Default: head for the SYNTHETIC demo (which starts from "
                             "the public stand-in), and with --hospital head when --init-weights is given under "
                             "record-level DP, else the services' default (all)")
    parser.add_argument("--no-head-refit", dest="head_refit", action="store_false",
                        help="without record-level DP: skip the closing refit of the classifier head from the "
                             "hospitals' summed feature statistics (DP-SGD does not cover them, so it is always "
                             "off under record-level DP)")
    parser.add_argument("--hospital", action="append", default=[], metavar="NAME=SOURCE:PATH",
                        help="a hospital on its own images (repeat, one per hospital; at least 3): SOURCE is folder, "
                             "medmnist or dicom. Without it: the SYNTHETIC demo")
    parser.add_argument("--class-names", default=None, metavar="A,B",
                        help="the consortium's class names in label order (NORMAL,PNEUMONIA): every hospital's "
                             "folders must use them; unset: the first hospital's sorted class folders")
    parser.add_argument("--timeout", type=float, default=1200.0)
    args = parser.parse_args(argv)
    try:
        own = [parse_hospital(text) for text in args.hospital]
    except ValueError as bad:
        parser.error(str(bad))
    if own and len(own) < 3:
        parser.error(f"{len(own)} --hospital given; a consortium needs at least 3 (the secure sum's quorum)")
    if args.run_dir.exists():
        import shutil

        shutil.rmtree(args.run_dir)
    if args.record_epsilon is None:
        args.record_epsilon = DEMO_RECORD_EPSILON
    record_dp = args.record_epsilon > 0
    classes = {"class_names": args.class_names} if args.class_names else {}
    # Own images under DP-SGD learn from pretrained weights, training the head on their frozen features (the demo's
    # recipe); from seeded weights DP-SGD has little to learn with, which the run says before it starts.
    own_recipe = {**OWN_IMAGES_SETTINGS, **DEMO_DP_HEAD} if record_dp and args.init_weights else OWN_IMAGES_SETTINGS
    recipe = own_recipe if own else DEMO_DP_HEAD if not args.from_scratch else QUICK_TRAINING
    if args.trainable is not None:
        recipe = {**recipe, "trainable": args.trainable}
    if not own and not args.from_scratch and args.init_weights is None:
        from experiments.pretrain import StandIn, stand_in_weights  # noqa: PLC0415 (torch: not for --help)

        args.init_weights = stand_in_weights(StandIn(args.architecture, args.image_size))
    config = ConsortiumConfig(
        run_dir=args.run_dir, nodes=len(own) or args.nodes, images_per_node=None if own else args.images_per_node,
        node_names=[name for name, _, _ in own] or None,
        settings={**DEMO_SETTINGS, **recipe, **classes, "rounds": args.rounds,
                  "secure": not args.plaintext, "allow_plaintext": args.plaintext, "architecture": args.architecture,
                  "image_size": args.image_size, "head_refit": args.head_refit and not record_dp},
        aggregator={**({"record_epsilon": args.record_epsilon} if record_dp else {}),
                    **({"init_weights": args.init_weights.resolve()} if args.init_weights else {})},
        node={"record_rounds": args.rounds, **({"record_dp": "off"} if own and not record_dp else {})},
        per_node={i: {"data_source": source, "data_path": path} for i, (_, source, path) in enumerate(own)})
    demo = Consortium(config)
    aggregator, node = demo.aggregator_settings, demo.node_settings[0]
    data = (f"their own images ({', '.join(sorted({source for _, source, _ in own}))})" if own
            else "SYNTHETIC radiographs")
    print(f"FedXray consortium: {config.nodes} hospitals on {data} ({node.image_size}px, "
          f"{aggregator.architecture}), {aggregator.rounds} {'secure' if aggregator.secure else 'PLAINTEXT'} rounds"
          f"{', then a head refit' if aggregator.head_refit else ''}"
          f"{f', record-level DP-SGD at epsilon {aggregator.record_epsilon:g}' if aggregator.record_epsilon else ''}; "
          f"logs in {args.run_dir / 'logs'}, one row per round in {args.run_dir / 'aggregator' / 'rounds.jsonl'}",
          flush=True)
    if own and not record_dp:
        print("record-level DP-SGD is OFF in this trial run (--record-epsilon 0: each hospital sets record_dp=off); "
              f"without that flag it runs at epsilon {DEMO_RECORD_EPSILON:g}", flush=True)
    elif own and not args.init_weights:
        print("record-level DP-SGD from seeded weights learns little: pass --init-weights (pretrained weights, such "
              "as ImageNet's in torchvision's format), or --record-epsilon 0 for a trial run without it", flush=True)
    if not own:
        print("class counts per hospital (Dirichlet label skew):", flush=True)
        print(demo.write_class_counts(), flush=True)
    heading = ("row 0 is the initial model; metrics are pooled over the hospitals' validation splits\n"
               + TABLE_HEADER)
    if not own:
        print(heading, flush=True)
    started = time.monotonic()
    shown = [not own]  # own images: the class table the hospitals sent when they joined, before the first row

    def show(row: dict[str, object]) -> None:
        if not shown[0]:
            shown[0] = True
            print(joined_class_counts(args.run_dir / "aggregator" / "class_counts.json"), flush=True)
            print(heading, flush=True)
        print(format_row(row), flush=True)

    with demo as consortium:
        code = consortium.wait(args.timeout, on_row=show)
        rows = consortium.rows()
    print(f"finished in {time.monotonic() - started:.0f} s with exit code {code}", flush=True)
    completed = [r for r in rows if not r.get("failed") and int(str(r.get("round", 0))) > 0]
    refits = sum(1 for r in completed if r.get("head_refit"))
    expected = (aggregator.rounds, 1 if aggregator.head_refit else 0)
    return 0 if code == 0 and (len(completed) - refits, refits) == expected else 1


if __name__ == "__main__":
    sys.exit(main())
