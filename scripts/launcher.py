"""The local consortium as a library: a key authority, an aggregator and N hospital nodes as separate local
processes, talking gRPC over 127.0.0.1, their logs in RUN_DIR/logs. Tests, benchmarks and experiments use
`Consortium` and `ConsortiumConfig`; `scripts/consortium.py` is the command line (`make demo`, own images) on top.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import grpc
from pydantic_settings import BaseSettings

from scripts.enroll import TLS_KEY, request, sign
from scripts.make_certs import hospital_id_problem, issue, make_ca
from scripts.settings_env import child_environment
from services.aggregator.config import AggregatorSettings
from services.aggregator.run_outcome import RunOutcome
from services.common.protocol.node_identity import generate_identity
from services.common.runtime.atomic_files import read_json_lines, write_atomic, write_json_atomic
from services.common.runtime.cpu import usable_cores
from services.common.runtime.tls import AGGREGATOR_NAME, KEY_AUTHORITY_NAME, TlsSettings, channel
from services.hospital_node.config import MEANINGFUL_VALIDATION, HospitalNodeSettings
from services.hospital_node.data.synthetic_xray import synthetic_class_names
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


def wait_for_port(address: str, seconds: float) -> None:
    """Return once something accepts connections on loopback `address` ("127.0.0.1:PORT"); an AssertionError
    after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listened on {address} within {seconds:.0f} s")


SettingValues = dict[str, object]
# Set by the launcher for each process; a caller who names one of these is refused.
LAUNCHER_SETTINGS = frozenset({
    "listen", "metrics_host", "metrics_port", "key_authority", "aggregator", "state_dir", "node_keys_dir",
    "identity_key", "node_id", "partition_parties", "partition_index", "tls_cert",
    "tls_key", "tls_ca", "insecure", "peer_keys_dir"})
SERVICE_SETTINGS: dict[str, type[BaseSettings]] = {
    "key_authority": KeyAuthoritySettings, "aggregator": AggregatorSettings, "hospital_node": HospitalNodeSettings}


@dataclass
class ConsortiumConfig:
    """One local consortium: the services' settings, by their settings models' names.

    `settings` go to every service whose settings model has that name (architecture to the aggregator and every
    node, min_participants to the aggregator and the key authority); `aggregator`, `key_authority` and `node`
    to that service only, `per_node[i]` to node i. A name no service knows is refused, and so is one the
    launcher sets itself (addresses, ports, folders, certificates, identities, node ids, partition indices).
    Anything not named keeps the settings model's default: there are no other defaults, but for the aggregator's
    class names (`agreed_class_names`).
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
    # operator: the launcher makes every key (a local stack). request: each hospital makes its own keys and a
    # certificate request in its own folder (RUN_DIR/hospitals/<id>/keys, `scripts.enroll`), the operator signs it,
    # and only certificates and public keys leave that folder.
    enrollment: Literal["operator", "request"] = "operator"
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
                problem = hospital_id_problem(name)
                if problem:
                    raise ValueError(f"{problem}: it names a certificate and files")
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
        # Every service shares this machine: the key authority decrypts in its own process unless told otherwise.
        return KeyAuthoritySettings(**{"decrypt_workers": 0, **self.values_for("key_authority", self.key_authority),
                                       "insecure": self.insecure, **launcher})

    def aggregator_settings(self, **launcher: object) -> AggregatorSettings:
        return AggregatorSettings(**{"expected_participants": self.nodes, **self.agreed_class_names(),
                                     **self.values_for("aggregator", self.aggregator), "insecure": self.insecure,
                                     **launcher})

    def agreed_class_names(self) -> SettingValues:
        """The aggregator's class names where the caller set none, as an operator would agree them: the SYNTHETIC
        set's when every node trains on it, else the names every node was given, when they are the same. The
        aggregator refuses to start a run of several hospitals without class names."""
        sources, names = set(), set()
        for index in range(self.nodes):
            values = {**self.values_for("hospital_node", self.node), **self.per_node.get(index, {})}
            sources.add(values.get("data_source", HospitalNodeSettings.model_fields["data_source"].default))
            given = values.get("class_names")
            names.add(",".join(given) if isinstance(given, (list, tuple)) else given)
        if sources == {"synthetic"}:
            classes = self.values_for("aggregator", self.aggregator).get(
                "num_classes", AggregatorSettings.model_fields["num_classes"].default)
            return {"class_names": synthetic_class_names(int(str(classes)))}
        agreed = names.pop() if len(names) == 1 else None
        return {"class_names": agreed} if agreed else {}

    def node_settings(self, index: int, **launcher: object) -> HospitalNodeSettings:
        """Node `index`'s settings (its id, part `index` of the SYNTHETIC set)."""
        values = {**self.values_for("hospital_node", self.node), **self.per_node.get(index, {})}
        if self.images_per_node is not None:
            values.setdefault("synthetic_images", self.images_per_node * self.nodes)
        if self.seed is not None:
            values.setdefault("seed", self.seed * 1000 + index)
        # The hospitals share this machine: each counts on its share of the cores (precompute_encryption=auto).
        values.setdefault("cpu_cores", usable_cores() / self.nodes)
        return HospitalNodeSettings(**{**values, "node_id": self.node_id(index), "partition_parties": self.nodes,
                                       "partition_index": index, "insecure": self.insecure, **launcher})


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    metrics_port: int
    killed: bool = False  # by `kill` (chaos tests): its exit is not a failure


class ServiceFailed(RuntimeError):
    """A service of the consortium exited with an error before the run finished."""

    def __init__(self, name: str, code: int, reason: str) -> None:
        super().__init__(f"{name} stopped with exit code {code}: {reason}")
        self.name, self.code, self.reason = name, code, reason


def last_reason(log_path: Path, offset: int = 0) -> str:
    """Why a service stopped, in one line, from its log past `offset` (where its last start began): the last ERROR
    it logged (JSON or text logs), else the last line it wrote (a settings error, a traceback's exception)."""
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return f"(no log at {log_path})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("ERROR", "CRITICAL"):
                return str(entry.get("msg"))
        else:
            for level in (" ERROR ", " CRITICAL "):
                if level in line:
                    return line.split(level, 1)[1]
    plain = [line for line in lines if not line.startswith("{")]
    return plain[-1] if plain else f"(no reason in {log_path})"


class Consortium:
    """The processes of one local consortium; use as a context manager."""

    def __init__(self, config: ConsortiumConfig) -> None:
        self.config = config
        self.services: dict[str, Service] = {}
        self.ka_address = f"127.0.0.1:{free_port()}"
        self.aggregator_address = config.external_aggregator or f"127.0.0.1:{free_port()}"
        self.identities = config.run_dir / "identities"
        # The members' public keys, which the servers read: beside their private halves in a local stack, alone
        # under request enrollment.
        self.public_keys = config.run_dir / "public-keys" if config.enrollment == "request" else self.identities
        self.certs = config.run_dir / "certs"
        self.logs = config.run_dir / "logs"
        self.started_at = 0.0  # wall clock (time.time()) when start() launched the processes
        self._notice_offsets: dict[str, int] = {}  # how far `new_notices` has read each log
        self._log_starts: dict[str, int] = {}  # where each service's last start began in its log
        self.key_authority_settings = self._key_authority_settings(0)
        self.aggregator_settings = self._aggregator_settings(0)
        self.node_settings = [self._node_settings(index, 0) for index in range(config.nodes)]

    @property
    def members(self) -> list[str]:
        return self.node_ids + list(self.config.extra_members)

    def keys_of(self, name: str) -> Path:
        """Where hospital `name` keeps its own keys under request enrollment."""
        return self.config.run_dir / "hospitals" / name / "keys"

    def _enrolled(self, name: str) -> bool:
        return self.config.enrollment == "request" and name in self.members

    def tls_for(self, name: str) -> TlsSettings:
        """The TLS settings of consortium member `name`, for tests that act as that member."""
        if self.config.insecure:
            return TlsSettings(insecure=True)
        if self._enrolled(name):
            own = self.keys_of(name)
            return TlsSettings(tls_cert=own / f"{name}.pem", tls_key=own / TLS_KEY, tls_ca=own / "ca.pem")
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
            node_keys_dir=self.public_keys, **self._tls(KEY_AUTHORITY_NAME))

    def _aggregator_settings(self, metrics_port: int) -> AggregatorSettings:
        return self.config.aggregator_settings(
            listen=self.aggregator_address, metrics_port=metrics_port, key_authority=self.ka_address,
            state_dir=self.config.run_dir / "aggregator", node_keys_dir=self.public_keys,
            **self._tls(AGGREGATOR_NAME))

    def _node_settings(self, index: int, metrics_port: int) -> HospitalNodeSettings:
        node_id = self.config.node_id(index)
        return self.config.node_settings(
            index, aggregator=self.aggregator_address, key_authority=self.ka_address,
            identity_key=(self.keys_of(node_id) if self._enrolled(node_id) else self.identities) / f"{node_id}.key",
            **({"peer_keys_dir": self.public_keys} if self._enrolled(node_id) else {}), metrics_port=metrics_port,
            state_dir=self.config.run_dir / "hospitals" / node_id, **self._tls(node_id))

    def _start(self, name: str, service: str, settings: BaseSettings, metrics_port: int) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # a restarted service goes on in the same log
        self._log_starts[name] = log.tell()
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
        from services.hospital_node.data.synthetic_xray import generate_synthetic_xrays

        s = self.node_settings[0]
        _, labels = generate_synthetic_xrays(s.synthetic_images, 16, s.num_classes, s.synthetic_seed)
        parts = partition_indices(labels, s.partition_parties, s.partition_scheme, alpha=s.partition_alpha,
                                  seed=s.synthetic_seed)
        counts = class_counts(labels, parts, s.num_classes)
        return format_class_counts(counts, synthetic_class_names(s.num_classes), self.node_ids)

    def _enroll_by_request(self) -> None:
        """Each hospital makes its keys and request in its own folder; the operator signs the request and sends
        back the certificate and the CA's, and files the hospital's public keys."""
        ca, ca_key = make_ca(self.certs)  # a new CA each start (as in operator mode): every request is signed anew
        for name in (KEY_AUTHORITY_NAME, AGGREGATOR_NAME):
            issue(self.certs, name, ca, ca_key)
        for name in self.members:
            own = self.keys_of(name)
            if not (own / TLS_KEY).exists():  # a restart keeps the keys the hospital made
                made = request(name, name, own)
                for public in made.sent[1:]:
                    write_atomic(self.public_keys / public.name, public.read_bytes())
            sign(self.certs, own / f"{name}.csr", own, name=name)  # what comes back: the certificate and ca.pem

    def start(self) -> Consortium:
        c = self.config
        self.started_at = time.time()
        if c.enrollment == "request":
            self._enroll_by_request()
        else:
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
        service.killed = True
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

    def wait(self, timeout: float, on_row: object = None, *, fail_fast: bool = False,
             on_notice: Callable[[str, str], None] | None = None) -> int:
        """Wait for the aggregator to finish; return its exit code (124 on timeout). `fail_fast`: raise
        `ServiceFailed`, with the reason from its log, as soon as any service exits with an error (the launcher's
        console; tests that break a hospital on purpose leave it off). `on_notice(service, message)`: each loud
        warning a service logs (`new_notices`)."""
        deadline = time.monotonic() + timeout
        shown = 0
        while time.monotonic() < deadline:
            aggregator = self.services["aggregator"].process  # re-read: a chaos test may have restarted it
            rows = self.rows()
            for row in rows[shown:]:
                if callable(on_row):
                    on_row(row)
            shown = len(rows)
            if on_notice is not None:
                for name, message in self.new_notices():
                    on_notice(name, message)
            outcome = RunOutcome.read(self.config.run_dir / "aggregator")
            if aggregator.poll() is not None or outcome is not None:
                for row in self.rows()[shown:]:
                    if callable(on_row):
                        on_row(row)
                if fail_fast and aggregator.poll() not in (None, 0):
                    self._raise_on_failure()  # the aggregator's own reason, after its last rows
                if aggregator.poll() is not None:
                    return int(aggregator.returncode)
                assert outcome is not None
                return 1 if outcome.failed else 0
            if fail_fast:
                self._raise_on_failure()
            for name, service in self.services.items():
                if name in ("key_authority",) and service.process.poll() is not None:
                    raise RuntimeError(f"{name} exited early with {service.process.returncode}; "
                                       f"see {self.logs / (name + '.log')}")
            time.sleep(0.5)
        return 124

    def new_notices(self) -> list[tuple[str, str]]:
        """The loud warnings ("!!! ... !!!": a class with no images, skipped files, a validation split too small to
        mean anything) the services logged since the last call, as (service, message)."""
        found = []
        for name in self.services:
            path = self.logs / f"{name}.log"
            try:
                with open(path, "rb") as log:
                    log.seek(self._notice_offsets.get(name, 0))
                    text = log.read()
            except OSError:
                continue
            complete = text[:text.rfind(b"\n") + 1]  # a line still being written waits for the next call
            self._notice_offsets[name] = self._notice_offsets.get(name, 0) + len(complete)
            for line in complete.decode(errors="replace").splitlines():
                if "!!!" not in line:
                    continue
                message = line
                if line.startswith("{"):
                    try:
                        message = str(json.loads(line).get("msg", line))
                    except ValueError:
                        pass
                elif " WARNING " in line:
                    message = line.split(" WARNING ", 1)[1]
                found.append((name, message))
        return found

    def _raise_on_failure(self) -> None:
        for name, service in self.services.items():
            code = service.process.poll()
            if code not in (None, 0) and not service.killed:
                raise ServiceFailed(name, int(code), last_reason(self.logs / f"{name}.log",
                                                                 self._log_starts.get(name, 0)))

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
            + ("  FAILED" if row.get("failed") else "")
            + thin_validation(evaluation))


def thin_validation(evaluation: dict[str, object]) -> str:
    """"  not meaningful: ..." when a class has fewer than MEANINGFUL_VALIDATION pooled validation images, or no
    image was counted at all."""
    confusion = evaluation.get("confusion")
    if not isinstance(confusion, list) or not confusion:
        return ""
    per_class = [int(sum(row)) for row in confusion]
    if min(per_class) >= MEANINGFUL_VALIDATION:
        return ""
    if not sum(per_class):
        return ("  not meaningful: no validation image counted (a hospital with fewer than its "
                "min_validation_images sends none)")
    return (f"  not meaningful: {'/'.join(map(str, per_class))} validation images per class (fewer than "
            f"{MEANINGFUL_VALIDATION})")


# One SGD epoch of every layer a round, no head refit: the services' defaults before 2026-11-30, instead of their
# recipe that learns (docs/RESULTS.md: AdamW at 3e-4, 10 local epochs, logit adjustment, clip norm 20, server
# momentum 0.5, head refit). The timing benchmarks and the tests of the protocol use it: their figures and
# assertions were made with it.
QUICK_TRAINING: SettingValues = {
    "local_optimizer": "sgd", "learning_rate": 0.01, "local_epochs": 1, "imbalance": "class_weights",
    "clip_norm": 10.0, "server_momentum": 0.0, "head_refit": False}
