"""The key authority's streamed decryption of a ResNet-50-sized sum, alone on this machine, by decryption processes.

Run: `python -m benchmarks.bench_decrypt [--workers 0 1 2] [--repeats 3]`. A sum of 23,512,130 values (the update
layout, 5 participants' authority masks) in the chunks a round sends, fed to `decrypt_stream` from memory as fast as
it takes them: what a key authority on a host of its own does with its cores, without the aggregator's sending and
the nodes beside it (`make bench-round` measures it inside a round). Medians; ratios to 0 workers (in-process).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from services.common.protocol.chunking import ciphertexts_in_chunk, upload_chunk_count
from services.common.protocol.round_plan import SumLayout
from services.common.protocol.upload import DecryptManifest
from services.common.secure_sum.he_codec import encrypt_rows
from services.common.secure_sum.pairwise_masks import MaskScope, authority_unmasks
from services.key_authority.decryption_pool import DecryptionPool
from services.key_authority.key_store import load_or_create_keys
from services.key_authority.sum_decryption import decrypt_stream

RESNET50_2CLASS = 23_512_130
CHUNK_CIPHERTEXTS = 8


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dimension", type=int, default=RESNET50_2CLASS)
    args = parser.parse_args(argv)
    keys = load_or_create_keys(8, None, Path(tempfile.mkdtemp(prefix="bench-decrypt-")), persist=False)
    slots, layout = keys.params.slots, keys.layout
    chunk_count = upload_chunk_count(args.dimension, layout, slots, CHUNK_CIPHERTEXTS)
    nodes = [f"hospital-{i}" for i in range(1, 6)]
    manifest = DecryptManifest(1, keys.key_id, chunk_count, args.dimension, (), SumLayout.UPDATE, 1, tuple(nodes),
                               CHUNK_CIPHERTEXTS)
    private = {node: X25519PrivateKey.generate() for node in nodes}
    unmasks = authority_unmasks(keys.agreement, {n: k.public_key() for n, k in private.items()},
                                MaskScope("bench", keys.key_id, 1, 1, tuple(nodes)))
    public = ts.context_from(keys.public_context)
    rng = np.random.default_rng(0)
    print(f"encrypting a sum of {args.dimension:,} values: {chunk_count} chunks of up to {CHUNK_CIPHERTEXTS} "
          "ciphertexts...", flush=True)
    chunks = [encrypt_rows(public, rng.integers(0, 2**20, size=(ciphertexts_in_chunk(
        index, args.dimension, layout, slots=slots, chunk_ciphertexts=CHUNK_CIPHERTEXTS), slots)).astype(np.float64))
        for index in range(chunk_count)]
    times: dict[int, list[float]] = {workers: [] for workers in args.workers}
    pools = {workers: DecryptionPool(keys.secret_context, workers) for workers in args.workers}
    try:
        for pool in pools.values():  # each worker process starts and takes the secret key before any timing
            pool.slot_integers([chunks[0]], slots)
        for repeat in range(args.repeats):
            for workers, pool in pools.items():  # alternated, so the machine's drift falls on each alike
                start = time.perf_counter()
                decrypt_stream(keys, manifest, enumerate(chunks), unmasks=unmasks, claim=lambda: None, pool=pool)
                times[workers].append(time.perf_counter() - start)
                print(f"  repeat {repeat + 1}: {workers} workers {times[workers][-1]:.2f} s", flush=True)
    finally:
        for pool in pools.values():
            pool.close()
    base = statistics.median(times[args.workers[0]])
    print(f"\nthe key authority alone: check, decrypt and unmask a {args.dimension:,}-value sum ({chunk_count} "
          f"chunks), medians of {args.repeats}")
    print(f"{'decryption processes':22}{'seconds':>10}{'vs ' + str(args.workers[0]):>10}")
    for workers, values in times.items():
        print(f"{workers:<22}{statistics.median(values):10.2f}{statistics.median(values) / base:10.2f}")


if __name__ == "__main__":
    main()
