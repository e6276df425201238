"""Five hospital processes, a key authority and an aggregator over loopback gRPC, two rounds."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from scripts.launcher import Consortium
from services.common.protocol.node_identity import load_identity
from services.common.protocol.round_plan import SumLayout
from services.common.protocol.upload import Attestation, DecryptManifest
from services.common.protocol.wire import manifest_to_wire
from services.common.secure_sum.packing import field_offset
from services.common.secure_sum.pairwise_masks import participant_set_hash
from tests.e2e.consortium_checks import (
    checkpoint_weights,
    field_sum,
    node_fields,
    node_update,
    recording,
    round_plan,
    scrape,
    status,
    tiny_config,
)

NODES, ROUNDS = 5, 2


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    run_dir = tmp_path_factory.mktemp("secure")
    config = tiny_config(run_dir, NODES, ROUNDS, seed=7, hooks=recording(run_dir),
                         settings={"noise_variance": 12.0, "clip_norm": 5.0,
                                   "partition_scheme": "label_mix",  # 40 images each, so 8 held out per hospital:
                                   "calibration_fraction": 0.5},  # 4 calibrate, 4 are evaluated
                         aggregator={"linger_seconds": 600, "trace_file": run_dir / "traces" / "aggregator.jsonl"},
                         key_authority={"trace_file": run_dir / "traces" / "key_authority.jsonl"})
    secret_key_gauges: dict[str, float] = {}
    consortium = Consortium(config)
    done = threading.Event()

    def watch_gauges() -> None:
        """Each process's own report, read once it is inside a round (its contexts loaded)."""
        while not done.is_set() and len(secret_key_gauges) < len(consortium.services):
            for name, service in list(consortium.services.items()):
                try:
                    samples = scrape(service.metrics_port)
                except OSError:
                    continue
                if name == "key_authority" or samples.get("fedxray_current_round", 0) >= 1:
                    secret_key_gauges.setdefault(name, samples["fedxray_holds_secret_key"])
            done.wait(0.1)

    with consortium:
        watcher = threading.Thread(target=watch_gauges, daemon=True)
        watcher.start()
        code = consortium.wait(420)
        done.set()
        watcher.join()
        statuses = {"key_authority": status(consortium, "key_authority")}
        yield consortium, code, secret_key_gauges, statuses


def test_the_operating_point_comes_from_the_calibration_counts_and_is_published(finished_run) -> None:  # type: ignore[no-untyped-def]
    consortium, code, _, _ = finished_run
    assert code == 0
    last = consortium.rows()[-1]["evaluation"]
    # The evaluated images are the 4 per hospital not kept for calibration, at the chosen threshold.
    assert last["examples"] == NODES * 4
    assert sum(map(sum, last["calibrated"]["confusion"])) == NODES * 4
    samples = scrape(consortium.services["aggregator"].metrics_port)
    assert samples['fedxray_validation_metric{metric="f1_calibrated"}'] == pytest.approx(last["calibrated"]["f1"])
    assert samples['fedxray_validation_metric{metric="threshold"}'] == pytest.approx(last["calibrated"]["threshold"])


def _centered(values: np.ndarray, bits: int) -> np.ndarray:
    half = 1 << (bits - 1)
    return ((values.astype(np.int64) + half) % (1 << bits)) - half


def test_rounds_complete_with_all_five_hospitals(finished_run) -> None:  # type: ignore[no-untyped-def]
    consortium, code, _, _ = finished_run
    assert code == 0, (consortium.logs / "aggregator.log").read_text()[-3000:]
    rows = [r for r in consortium.rows() if r["round"] >= 1]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["participants"] == NODES and not r.get("failed") for r in rows)
    assert all(r["evaluation"] and r["evaluation"]["examples"] > 0 for r in consortium.rows())



def test_each_release_is_one_trace_across_the_aggregator_and_the_key_authority(finished_run) -> None:  # type: ignore[no-untyped-def]
    """The spans of the critical path (services/common/runtime/tracing.py): the key authority's are children of the
    aggregator's call, through the traceparent in the gRPC metadata, and every phase is there for every round."""
    consortium, code, _, _ = finished_run
    assert code == 0
    traces = consortium.config.run_dir / "traces"
    spans = [json.loads(line) for name in ("aggregator", "key_authority")
             for line in (traces / f"{name}.jsonl").read_text().splitlines()]
    by_id = {span["span"]: span for span in spans}
    calls = [s for s in spans if s["name"] == "aggregator.decrypt_rpc"]
    assert sorted(s["attributes"]["round"] for s in calls) == [1, 2]
    for call in calls:
        own = [s for s in spans if s["trace"] == call["trace"]]
        names = {s["name"] for s in own}
        assert {"aggregator.round", "aggregator.collect", "aggregator.charge_privacy", "aggregator.release",
                "aggregator.send_chunks", "aggregator.await_answer", "aggregator.receive_answers", "aggregator.decode",
                "aggregator.apply", "ka.decrypt_rpc", "ka.policy_check", "ka.mask_agreement", "ka.receive_and_decrypt",
                "ka.ledger_claim", "ka.answer"} <= names, names
        rpc = next(s for s in own if s["name"] == "ka.decrypt_rpc")
        assert rpc["service"] == "key_authority" and by_id[rpc["parent"]] == call
        assert rpc["attributes"]["round"] == call["attributes"]["round"]
        # The key authority's work lies within the aggregator's call (one clock: the same machine).
        assert call["start"] <= rpc["start"] and rpc["start"] + rpc["seconds"] <= call["start"] + call["seconds"] + 0.05
    # Ids, counts and timings only: no attribute carries a value of a sum or a key.
    assert all(isinstance(v, (int, float, str, bool)) and len(str(v)) < 40
               for s in spans for v in s["attributes"].values())


def test_the_run_progress_gauges_the_alerts_read_end_settled(finished_run) -> None:  # type: ignore[no-untyped-def]
    consortium, code, _, _ = finished_run
    assert code == 0
    samples = scrape(consortium.services["aggregator"].metrics_port)
    assert samples["fedxray_rounds_completed"] == ROUNDS
    assert samples["fedxray_round_open"] == 0  # no round left open: the stalled-round alert stays silent
    assert samples["fedxray_round_opened_timestamp_seconds"] > 0
    missed = {name: value for name, value in samples.items() if name.startswith("fedxray_node_rounds_missed")}
    assert len(missed) == NODES and set(missed.values()) == {0.0}  # every member contributed to the last round
    # Refusal reasons are exported at 0 before any refusal, so increase() sees the first one.
    assert samples['fedxray_refused_requests_total{reason="digest_mismatch"}'] == 0


def test_key_authority_returns_exactly_the_integer_sum_of_what_nodes_encoded(finished_run) -> None:  # type: ignore[no-untyped-def]
    consortium, *_ = finished_run
    records = consortium.config.run_dir / "records"
    for round_id in range(1, ROUNDS + 1):
        plan = round_plan(consortium.config.run_dir, round_id)
        bits = int(plan["bits"])
        encoded = [node_fields(records, node, round_id) for node in consortium.node_ids]
        expected = np.sum(encoded, axis=0) % (1 << bits)
        assert np.array_equal(field_sum(consortium.config.run_dir, round_id), expected)


def test_global_model_moves_by_the_fedavg_mean_of_the_updates(finished_run) -> None:  # type: ignore[no-untyped-def]
    consortium, *_ = finished_run
    run_dir, records = consortium.config.run_dir, consortium.config.run_dir / "records"
    for round_id in range(1, ROUNDS + 1):
        plan = round_plan(run_dir, round_id)
        n, scale, bits = int(plan["participants"]), float(plan["scale"]), int(plan["bits"])
        before, after = checkpoint_weights(run_dir, round_id - 1), checkpoint_weights(run_dir, round_id)
        decoded_mean = _centered(field_sum(run_dir, round_id) - n * field_offset(bits), bits) / (n * scale)
        # FedAvg with server learning rate 1: w_r = w_{r-1} + mean update (checkpoints are float32).
        np.testing.assert_allclose(after, before + decoded_mean, rtol=1e-6, atol=1e-6)
        # And that mean is the hospitals' true clipped mean, up to rounding and noise.
        clip = consortium.aggregator_settings.clip_norm
        updates = [node_update(records, node, round_id) for node in consortium.node_ids]
        clipped = [u * min(1.0, clip / np.linalg.norm(u)) for u in updates]
        true_mean = np.mean(clipped, axis=0)
        sigma = math.sqrt(n / 4 + n * float(plan["node_noise_variance"])) / (n * scale)
        assert np.max(np.abs(decoded_mean - true_mean)) < 7 * sigma
        assert np.linalg.norm(after - before) > 0


def test_only_the_key_authority_holds_a_secret_key(finished_run) -> None:  # type: ignore[no-untyped-def]
    consortium, _, gauges, statuses = finished_run
    assert statuses["key_authority"].holds_secret_key
    assert set(gauges) == {"key_authority", "aggregator", *consortium.node_ids}
    assert gauges["key_authority"] == 1.0
    assert all(gauges[name] == 0.0 for name in gauges if name != "key_authority")


def _attestation(identities: Path, node_id: str, round_id: int, key_id: str, nodes: list[str]) -> Attestation:
    """`node_id`'s signed attestation of a one-value upload masked for `nodes`, as that node would make it."""
    unsigned = Attestation(node_id, round_id, key_id, 1, bytes(32), b"", SumLayout.UPDATE, 1,
                           participant_set_hash(nodes), 1, 1, model_digest=b"m" * 32)
    return replace(unsigned, signature=load_identity(identities / f"{node_id}.key").sign(unsigned.signed_message()))


def _decrypt(consortium: Consortium, manifest: pb.DecryptManifest) -> grpc.RpcError:
    stub = pb_grpc.KeyAuthorityStub(consortium.channel_as("aggregator", "key_authority"))
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.Decrypt(iter([pb.DecryptRequest(manifest=manifest)]), timeout=30))
    return refused.value


def test_key_authority_refuses_too_few_participants_and_a_second_decryption(finished_run) -> None:  # type: ignore[no-untyped-def]
    consortium, *_ = finished_run
    key_id = status(consortium, "key_authority").key_id
    ids = consortium.identities

    def manifest(round_id: int, nodes: list[str], key: str = key_id) -> pb.DecryptManifest:
        return manifest_to_wire(DecryptManifest(
            round_id, key, 1, 1, tuple(_attestation(ids, node, round_id, key, nodes) for node in nodes),
            SumLayout.UPDATE, 1, tuple(nodes), 1))

    too_few = _decrypt(consortium, manifest(99, ["hospital-1", "hospital-2"]))
    assert too_few.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "between 3 and" in (too_few.details() or "")
    same_node_thrice = _decrypt(consortium, manifest(98, ["hospital-1"] * 3))
    assert same_node_thrice.code() == grpc.StatusCode.PERMISSION_DENIED
    again = _decrypt(consortium, manifest(1, ["hospital-1", "hospital-2", "hospital-3"]))
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS
    wrong_key = _decrypt(consortium, manifest(97, ["hospital-1", "hospital-2", "hospital-3"], key="0" * 16))
    assert wrong_key.code() == grpc.StatusCode.FAILED_PRECONDITION
    # A sum is unpacked only in the layout its nodes signed: update uploads in the wide statistics layout would
    # show the carries between fields, i.e. how many nodes sent a negative value per coordinate.
    widened = manifest(96, ["hospital-1", "hospital-2", "hospital-3"])
    widened.layout = pb.SUM_LAYOUT_STATISTICS
    unsigned_layout = _decrypt(consortium, widened)
    assert unsigned_layout.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "layout" in (unsigned_layout.details() or "")
    for attestation in widened.attestations:
        attestation.layout = pb.SUM_LAYOUT_STATISTICS  # relabelled, but the nodes signed the update layout
    forged = _decrypt(consortium, widened)
    assert forged.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not verify" in (forged.details() or "")
    unknown = manifest(95, ["hospital-1", "hospital-2", "hospital-3"])
    unknown.layout = 7  # type: ignore[assignment]
    assert _decrypt(consortium, unknown).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status(consortium, "key_authority").decrypted_rounds == [1, 2]


def test_key_authority_answers_decryption_only_for_the_aggregators_certificate(finished_run) -> None:  # type: ignore[no-untyped-def]
    consortium, *_ = finished_run
    stub = pb_grpc.KeyAuthorityStub(consortium.channel_as("hospital-1", "key_authority"))
    manifest = pb.DecryptManifest(round_id=50, key_id="x", chunk_count=1, value_count=1)
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.Decrypt(iter([pb.DecryptRequest(manifest=manifest)]), timeout=30))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "aggregator's certificate" in (refused.value.details() or "")


def _handshake_fails(channel: grpc.Channel) -> bool:
    try:
        pb_grpc.AggregatorStub(channel).GetStatus(pb.GetStatusRequest(), timeout=10)
    except grpc.RpcError as error:
        return error.code() == grpc.StatusCode.UNAVAILABLE
    return False


def test_aggregator_refuses_foreign_ca_missing_and_plaintext_clients(finished_run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from scripts.make_certs import issue, make_ca
    from services.common.runtime.tls import AGGREGATOR_NAME, TlsSettings, channel

    consortium, *_ = finished_run
    assert not _handshake_fails(consortium.channel_as("hospital-1", "aggregator"))  # the control: members get in
    foreign_ca, foreign_key = make_ca(tmp_path, "Some other CA")
    issue(tmp_path, "hospital-1", foreign_ca, foreign_key)
    impostor = TlsSettings(tls_cert=tmp_path / "hospital-1.pem", tls_key=tmp_path / "hospital-1.key",
                           tls_ca=consortium.certs / "ca.pem")
    assert _handshake_fails(channel(consortium.aggregator_address, impostor, AGGREGATOR_NAME))
    no_certificate = grpc.secure_channel(
        consortium.aggregator_address,
        grpc.ssl_channel_credentials(root_certificates=(consortium.certs / "ca.pem").read_bytes()),
        options=[("grpc.ssl_target_name_override", AGGREGATOR_NAME)])
    assert _handshake_fails(no_certificate)
    assert _handshake_fails(grpc.insecure_channel(consortium.aggregator_address))


def test_a_node_cannot_act_for_another_node(finished_run) -> None:  # type: ignore[no-untyped-def]
    consortium, *_ = finished_run
    stub = pb_grpc.AggregatorStub(consortium.channel_as("hospital-1", "aggregator"))
    with pytest.raises(grpc.RpcError) as refused:
        stub.ReportEvaluation(pb.EvaluationReport(node_id="hospital-2", model_round=0, num_classes=2), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
