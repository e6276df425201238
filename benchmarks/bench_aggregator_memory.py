"""Aggregator peak memory with 5 and with 20 submitting nodes: it should not grow.

Run: `python -m benchmarks.bench_aggregator_memory [--architecture resnet18]`.
A real key authority and aggregator run as processes; one load process plays N
registered nodes over real gRPC. Every node's update is encoded and encrypted
independently (as real nodes do: summing one ciphertext with itself would add its
noise coherently), then all N streams are sent at once, so the aggregator stages
N full submissions concurrently. Read from the
aggregator's own `fedxray_peak_rss_bytes` metric after the round.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import tempfile
import time
from pathlib import Path

import numpy as np

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from scripts.launcher import Consortium, ConsortiumConfig
from services.common.ml.model_spec import parameter_spec
from services.common.ml.models import build_model
from services.common.protocol.node_identity import load_identity
from services.common.protocol.wire import plan_from_wire, upload_chunk_to_wire
from services.hospital_node.encryption_pool import EncryptionPool
from services.hospital_node.update_stream import UploadTimings, secure_upload, upload_recipe
from tests.e2e.consortium_checks import scrape


def measure(nodes: int, architecture: str, root: Path) -> tuple[float, float]:
    run_dir = root / f"n{nodes}"
    node_ids = [f"load-{i + 1}" for i in range(nodes)]
    config = ConsortiumConfig(run_dir=run_dir, nodes=0, extra_members=node_ids,
                              settings={"rounds": 1, "architecture": architecture, "max_participants": 20,
                                        "min_participants": 3},
                              aggregator={"expected_participants": nodes})
    spec = parameter_spec(build_model(architecture, 2, 0).state_dict())
    with Consortium(config) as consortium:
        stubs = {n: pb_grpc.AggregatorStub(consortium.channel_as(n, "aggregator")) for n in node_ids}
        streams = [stubs[n].Subscribe(pb.JoinRequest(node_id=n, parameter_count=spec.count,
                                                       parameter_digest=spec.digest,
                                                       class_names=["NORMAL", "OPACITY"]), wait_for_ready=True)
                   for n in node_ids]
        plans = []
        for stream in streams:  # every subscriber receives the plan and the model
            plan = plan_from_wire(next(stream).plan)
            for _ in range(plan.model.chunk_count):
                next(stream)
            plans.append(plan)
        plan = plans[0]
        public = pb_grpc.KeyAuthorityStub(consortium.channel_as(node_ids[0], "key_authority")).GetPublicContext(
            pb.GetPublicContextRequest(), timeout=60)
        uploads: dict[str, list[pb.UpdateChunk]] = {}
        with EncryptionPool(public.context, workers=2) as pool:
            for index, node_id in enumerate(node_ids):
                update = np.random.default_rng(index).normal(0, 1e-3, spec.count)
                uploads[node_id] = [upload_chunk_to_wire(chunk) for chunk in secure_upload(
                    plan, update, node_id, key=load_identity(run_dir / "identities" / f"{node_id}.key"), pool=pool,
                    recipe=upload_recipe(plan, public.slots_per_ciphertext, np.random.SeedSequence(index)),
                    timings=UploadTimings())]
        print(f"  {nodes} nodes: encrypted {nodes} updates", flush=True)
        submission_bytes = sum(len(c) for chunk in uploads[node_ids[0]] for c in chunk.ciphertexts)
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=nodes) as executor:
            futures = [executor.submit(stubs[n].SubmitUpdate, iter(uploads[n]), timeout=1800) for n in node_ids]
            for future in futures:
                future.result()
        upload_seconds = time.monotonic() - started
        while not (run_dir / "aggregator" / "rounds.jsonl").exists():
            time.sleep(0.5)
        peak = scrape(consortium.services["aggregator"].metrics_port)["fedxray_peak_rss_bytes"]
        for stream in streams:
            stream.cancel()  # type: ignore[attr-defined]
        print(f"  {nodes} nodes: {submission_bytes / 1e6:.0f} MB per submission, uploads took "
              f"{upload_seconds:.1f} s, aggregator peak RSS {peak / 1e6:.0f} MB", flush=True)
    return peak, submission_bytes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="resnet18")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        peak5, size = measure(5, args.architecture, Path(tmp))
        peak20, _ = measure(20, args.architecture, Path(tmp))
    print(f"\n{args.architecture}: one submission is {size / 1e6:.0f} MB of ciphertext")
    print(f"aggregator peak RSS: 5 nodes {peak5 / 1e6:.0f} MB, 20 nodes {peak20 / 1e6:.0f} MB, "
          f"ratio 20/5 = {peak20 / peak5:.2f} (holding whole submissions would add "
          f"{15 * size / 1e6:.0f} MB at 20 nodes)")


if __name__ == "__main__":
    main()
