"""The house's import rules, checked on every import in `services/`:
- the rooms of `services/common` import only the rooms before them: errors < runtime < ml < secure_sum < protocol;
- no service imports another service;
- protobuf is imported only at the wire edge: `services/common/protocol/wire.py`, the two servicers and the two
  clients, and those convert each message whole, by `wire`, before reading it. Everything else reads the typed
  objects `wire` makes.
Each rule is also run on a deliberate violation, so that the check itself can fail."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
ROOMS = ("errors", "runtime", "ml", "secure_sum", "protocol")
SERVICES = ("aggregator", "hospital_node", "key_authority")
WIRE_EDGE = frozenset({"services/common/protocol/wire.py", "services/aggregator/servicer.py",
                       "services/key_authority/servicer.py", "services/hospital_node/consortium_client.py",
                       "services/aggregator/key_authority_client.py"})


def imported_modules(source: str) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from services.common import errors` or `from services.common.ml import models` names modules.
            package = node.module in ("services", "services.common") or _room(node.module) == node.module.split(".")[-1]
            modules += [f"{node.module}.{alias.name}" for alias in node.names] if package else [node.module]
    return modules


def _room(module: str) -> str | None:
    """The room of a `services.common...` module name (None for `services.common` itself)."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["services", "common"] and parts[2] in ROOMS else None


def violations(path: str, source: str) -> list[str]:
    """What in the file at `path` (relative to the repository) breaks the house's import rules."""
    found = []
    parts = path.removesuffix(".py").split("/")
    own_room = _room(".".join(parts)) if parts[:2] == ["services", "common"] else None
    own_service = parts[1] if parts[0] == "services" and parts[1] in SERVICES else None
    for module in imported_modules(source):
        room = _room(module)
        if own_room is not None and room is not None and ROOMS.index(room) > ROOMS.index(own_room):
            found.append(f"{path}: the {own_room} room imports {module}, from the later {room} room")
        service = module.split(".")[1] if module.startswith("services.") and module.count(".") >= 1 else None
        if own_service is not None and service in SERVICES and service != own_service:
            found.append(f"{path}: service {own_service} imports {module}, of service {service}")
        if module.startswith("protos") and path not in WIRE_EDGE:
            found.append(f"{path}: imports protobuf ({module}) outside the wire edge")
    return found


def protobuf_reads(source: str) -> list[str]:
    """Fields read from a protobuf message outside `wire`: an attribute of a parameter annotated `pb.X`, or of a
    loop variable over a parameter annotated `Iterator[pb.X]`. At the wire edge a message is converted whole, by a
    `*_from_wire` function, before anything reads it."""
    found = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        messages, streams = set(), set()
        for arg in function.args.args:
            annotation = ast.unparse(arg.annotation) if arg.annotation else ""
            if annotation.startswith("pb."):
                messages.add(arg.arg)
            elif annotation.startswith("Iterator[pb."):
                streams.add(arg.arg)
        for node in ast.walk(function):
            if isinstance(node, ast.For) and isinstance(node.iter, ast.Name) and node.iter.id in streams:
                messages |= {name.id for name in ast.walk(node.target) if isinstance(name, ast.Name)}
        for node in ast.walk(function):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in messages:
                found.append(f"{function.name} reads {node.value.id}.{node.attr}")
    return found


def test_servicers_and_clients_read_no_protobuf_field_outside_wire() -> None:
    for path in sorted(WIRE_EDGE - {"services/common/protocol/wire.py"}):
        assert protobuf_reads((REPO / path).read_text()) == [], path


def test_every_import_in_services_keeps_the_house_rules() -> None:
    found = []
    for file in sorted((REPO / "services").rglob("*.py")):
        found += violations(str(file.relative_to(REPO)), file.read_text())
    assert found == []


def test_every_module_of_common_lives_in_a_room_with_a_docstring_saying_what_it_may_import() -> None:
    common = REPO / "services" / "common"
    loose = sorted(p.name for p in common.glob("*.py") if p.name not in ("__init__.py", "errors.py"))
    assert loose == [], "modules of services/common outside a room"
    for room in ROOMS[1:]:
        doc = ast.get_docstring(ast.parse((common / room / "__init__.py").read_text()))
        assert doc and "may import" in doc, f"services/common/{room}/__init__.py does not say what it may import"


@pytest.mark.parametrize(("path", "source", "rule"), [
    ("services/common/runtime/tls.py", "from services.common.protocol.wire import plan_digest\n", "later protocol"),
    ("services/common/ml/models.py", "import services.common.secure_sum.packing\n", "later secure_sum"),
    ("services/hospital_node/trainer.py", "from services.aggregator.config import AggregatorSettings\n",
     "of service aggregator"),
    ("services/aggregator/round_loop.py", "from protos.fedxray.v1 import fedxray_pb2 as pb\n", "outside the wire"),
])
def test_a_deliberate_violation_of_each_rule_is_caught(path: str, source: str, rule: str) -> None:
    [violation] = violations(path, source)
    assert rule in violation
    assert violations("services/common/protocol/wire.py", "from services.common.runtime.tls import GRPC_OPTIONS\n"
                      "from protos.fedxray.v1 import fedxray_pb2\n") == []


def test_a_deliberate_protobuf_read_outside_wire_is_caught() -> None:
    source = ("def ReportEvaluation(self, request: pb.EvaluationReport, context: object) -> None:\n"
              "    self._require_peer(context, request.node_id)\n"
              "def _chunks(self, request_iterator: Iterator[pb.DecryptRequest]) -> None:\n"
              "    for message in request_iterator:\n"
              "        yield message.chunk.index\n"
              "def Fine(self, request: pb.EvaluationReport) -> None:\n"
              "    report = evaluation_from_wire(request)\n")
    assert protobuf_reads(source) == ["ReportEvaluation reads request.node_id", "_chunks reads message.chunk"]
