"""Fuzzing every RPC of both servers over real gRPC with mTLS: each message gets a named status, nothing crashes,
nothing changes.

Hypothesis makes the requests: garbage bytes, messages of the RPC's own type with random field values (wrong
lengths, huge repeated fields, unknown enum values), the same truncated, and one message above the size limit.
They are sent as a registered member (`intruder`) to the aggregator, and with the aggregator's own certificate to
the key authority (a compromised aggregator), while a real consortium runs. Afterwards the run must finish with
every decrypted sum exactly the sum of its contributors' uploads, and the key authority's ledger must hold the
consortium's rounds only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from scripts.launcher import Consortium
from services.common.protocol.upload import upload_message_limit
from services.common.runtime.tls import GRPC_MESSAGE_LIMIT
from tests.e2e.consortium_checks import field_sum, node_fields, recording, tiny_config

pytestmark = pytest.mark.e2e

CASES = 60  # per RPC
# Statuses that mean the server did not handle the input itself (an exception escaped a handler).
UNHANDLED = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
GRPC_PARSE_REFUSAL = "Exception deserializing request"

AGGREGATOR_RPCS: dict[str, tuple[type[Message], str]] = {
    "Subscribe": (pb.JoinRequest, "unary_stream"),
    "SubmitUpdate": (pb.UpdateChunk, "stream_unary"),
    "ReportEvaluation": (pb.EvaluationReport, "unary_unary"),
    "DeclineRound": (pb.RoundDecline, "unary_unary"),
    "GetStatus": (pb.GetStatusRequest, "unary_unary"),
}
KEY_AUTHORITY_RPCS: dict[str, tuple[type[Message], str]] = {
    "GetPublicContext": (pb.GetPublicContextRequest, "unary_unary"),
    "Decrypt": (pb.DecryptRequest, "stream_stream"),
    "GetStatus": (pb.GetStatusRequest, "unary_unary"),
}


def random_message(descriptor: Descriptor, rng: random.Random, depth: int = 0) -> dict[str, object]:
    """Field values for a message of `descriptor`, drawn at random (nested messages to depth 3)."""
    values: dict[str, object] = {}
    for field in descriptor.fields:
        if rng.random() < 0.3:
            continue
        repeated = bool(field.is_repeated)
        count = rng.choice([0, 1, 2, 5, 200]) if repeated else 1
        drawn = [_random_value(field, rng, depth) for _ in range(count)]
        drawn = [v for v in drawn if v is not None]
        if field.name == "node_id" and rng.random() < 0.7:
            drawn = ["intruder"]  # past the identity check, into the handlers
        if drawn:
            values[field.name] = drawn if repeated else drawn[0]
    return values


def _random_value(field: FieldDescriptor, rng: random.Random, depth: int) -> object:
    t = field.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        return random_message(field.message_type, rng, depth + 1) if depth < 3 else None
    if t in (FieldDescriptor.TYPE_STRING,):
        return rng.choice(["", "hospital-1", "intruder", "x" * rng.randint(1, 3000), "\u00e9\u0000"])
    if t == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 1, 32, 64, 1000, 70_000]))
    if t == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FieldDescriptor.TYPE_ENUM:
        return rng.choice([0, 1, 2, 3, 99])
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return rng.choice([0.0, -1.0, 1e308, float("nan"), float("inf"), 3.5])
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED32,
             FieldDescriptor.TYPE_FIXED64):
        return rng.choice([0, 1, 2, 7, 2**31, 2**32 - 1])
    return rng.choice([0, 1, -1, 2, 1000, 2**31 - 1, -(2**31)])


def fuzz_payload(message_type: type[Message], choice: int, seed: int) -> bytes:
    """One request's bytes: garbage, a random message of the right type, or that message truncated."""
    rng = random.Random(seed)
    if choice == 0:
        return rng.randbytes(rng.choice([0, 1, 5, 100, 5000]))
    message = message_type()
    try:
        message = message_type(**random_message(message_type.DESCRIPTOR, rng))
    except (TypeError, ValueError):  # a value the Python API itself rejects: keep the empty message
        pass
    data = message.SerializeToString()
    return data[: rng.randint(0, len(data))] if choice == 2 and data else data


def call_raw(channel: grpc.Channel, service: str, rpc: str, kind: str,
             requests: list[bytes]) -> tuple[grpc.StatusCode, str]:
    """Send raw bytes to one RPC; the status it ends with, and its details."""
    method = f"/fedxray.v1.{service}/{rpc}"
    identity: Callable[[bytes], bytes] = lambda b: b  # noqa: E731
    try:
        if kind == "unary_unary":
            channel.unary_unary(method, identity, identity)(requests[0], timeout=10)
        elif kind == "unary_stream":
            for _ in channel.unary_stream(method, identity, identity)(requests[0], timeout=3):
                pass
        elif kind == "stream_unary":
            channel.stream_unary(method, identity, identity)(iter(requests), timeout=10)
        else:
            for _ in channel.stream_stream(method, identity, identity)(iter(requests), timeout=10):
                pass
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def _fuzz(channel: grpc.Channel, service: str, rpcs: dict[str, tuple[type[Message], str]],
          seen: dict[str, dict[str, int]], message_limit: int) -> None:
    for rpc, (message_type, kind) in rpcs.items():
        tally = seen.setdefault(f"{service}.{rpc}", {})

        @settings(max_examples=CASES, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2**32)), min_size=1,
                        max_size=4 if kind.startswith("stream") else 1))
        def case(draws: list[tuple[int, int]]) -> None:
            code, details = call_raw(channel, service, rpc, kind,
                                     [fuzz_payload(message_type, c, s) for c, s in draws])
            tally[code.name] = tally.get(code.name, 0) + 1
            # gRPC itself refuses bytes that do not parse as the request type, before any of our code runs.
            unparsed = code == grpc.StatusCode.INTERNAL and details.startswith(GRPC_PARSE_REFUSAL)
            assert unparsed or code not in UNHANDLED, f"{service}.{rpc}: {code.name} ({details}) for {draws}"

        case()
        # One byte over the server's message limit is refused by gRPC before any of our code runs; 64 KiB under it
        # reaches the service (and is refused there for what it is, not for its size).
        oversized, details = call_raw(channel, service, rpc, kind, [b"\x0a" + b"\xff" * message_limit])
        # An upload from a caller that holds no slot in the open attempt is refused when its stream starts, before
        # gRPC reads a message: that refusal is as good, and names the slot.
        no_slot = rpc == "SubmitUpdate" and oversized == grpc.StatusCode.FAILED_PRECONDITION and "slot" in details
        assert no_slot or oversized == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{service}.{rpc}: {oversized.name}"
        under, _ = call_raw(channel, service, rpc, kind, [b"\x0a" + b"\xff" * (message_limit - 65536)])
        assert under != grpc.StatusCode.RESOURCE_EXHAUSTED, f"{service}.{rpc}: refused under the limit"
        tally["oversized RESOURCE_EXHAUSTED"] = 1


def test_every_rpc_answers_fuzzed_messages_with_a_status_and_the_run_stays_exact(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, 3, 2, images_per_node=30, seed=9, hooks=recording(tmp_path),
                         extra_members=["intruder"],
                         # The aggregator waits for the intruder, which never joins properly, so the fuzzing
                         # starts before the rounds do; it lingers after them for the rest.
                         aggregator={"round_deadline_seconds": 180, "first_chunk_seconds": 2.0,
                                     "expected_participants": 4, "join_timeout_seconds": 60,
                                     "linger_seconds": 900})
    seen: dict[str, dict[str, int]] = {}
    with Consortium(config) as consortium:
        aggregator = consortium.channel_as("intruder", "aggregator")
        pb_grpc.AggregatorStub(aggregator).GetStatus(pb.GetStatusRequest(), timeout=300, wait_for_ready=True)
        # The aggregator's limit is its largest honest chunk (the defaults: 8 ciphertexts, 2^18 plaintext values).
        _fuzz(aggregator, "Aggregator", AGGREGATOR_RPCS, seen, upload_message_limit(8, 1 << 18))
        key_authority = consortium.channel_as("aggregator", "key_authority")
        _fuzz(key_authority, "KeyAuthority", KEY_AUTHORITY_RPCS, seen, GRPC_MESSAGE_LIMIT)
        for name, service in consortium.services.items():
            assert service.process.poll() is None or name.startswith("hospital"), f"{name} died"
        code = consortium.wait(420)
    print("fuzz cases per RPC, by status:", seen)
    assert code == 0, (consortium.logs / "aggregator.log").read_text()[-3000:]
    assert all(sum(v for k, v in tally.items() if not k.startswith("oversized")) >= CASES // 2
               for tally in seen.values())
    rows = [r for r in consortium.rows() if int(str(r["round"])) > 0]
    assert [bool(r.get("failed")) for r in rows] == [False, False]
    records = tmp_path / "records"
    for row in rows:
        round_id = int(str(row["round"]))
        expected = np.sum([node_fields(records, str(n), round_id) for n in row["contributors"]],  # type: ignore[attr-defined]
                          axis=0) % (1 << 10)
        assert np.array_equal(field_sum(tmp_path, round_id), expected)
    # The ledger holds the consortium's decrypted rounds, and nothing the fuzzing asked for.
    ledger = json.loads((tmp_path / "key_authority" / "decrypted_rounds.json").read_text())
    assert sorted(int(entry.rsplit(":", 1)[1]) for entry in ledger["rounds"]) == [int(str(r["round"])) for r in rows]
    assert len(ledger["models"]) == len(rows)  # one participant set per model, each model a round's
