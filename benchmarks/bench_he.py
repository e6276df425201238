"""Update-codec benchmark: packed exact CKKS versus the usual one-float-per-slot TenSEAL set-up.

Run: `make bench-he` or `python -m benchmarks.bench_he [--dimension N]`. The default
dimension, 23,512,130, is torchvision ResNet-50 with a 2-class head. Both codecs
process the same update; the codec's 5 submissions are distinct node encodings,
the baseline encrypts one node and sums that submission 5 times (its encryption
alone takes minutes here). Then the node path again with pairwise masks, for
participant sets of 5, 10 and 20 (`--mask-nodes`), beside the unmasked node path in
the same run.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from benchmarks.memory_probe import peak_rss_bytes, reset_peak_rss
from services.common.protocol.chunking import upload_chunk_count
from services.common.secure_sum.ckks_params import (
    CkksParameters,
    ckks_parameters,
    field_layout,
    load_public_context,
    make_secret_context,
    public_context_bytes,
)
from services.common.secure_sum.he_codec import RunningCiphertextSum, decrypt_to_slot_integers, slot_matrix
from services.common.secure_sum.noise import NoiseKind
from services.common.secure_sum.packing import FieldLayout, unpack_fields
from services.common.secure_sum.pairwise_masks import MaskScope, PeerMask, authority_mask, peer_masks
from services.common.secure_sum.update_codec import (
    QuantizationPlan,
    decode_mean_update,
    plan_quantization,
    scale_update,
)
from services.hospital_node.encryption_pool import EncryptedChunk, EncryptionPool, UploadRecipe
from services.key_authority.decryption_pool import DecryptionPool

RESNET50_2CLASS = 23_512_130
NODES = 5
MAX_PARTICIPANTS = 8
CHUNK_CIPHERTEXTS = 8
log = logging.getLogger("bench_he")


@dataclass
class CodecFigures:
    name: str
    bytes_per_parameter: float
    node_seconds: float
    sum_seconds: float
    decrypt_seconds: float
    peak_memory_bytes: int
    max_error: float


def _progress(label: str, items: Iterator[EncryptedChunk], total: int) -> Iterator[EncryptedChunk]:
    step = max(1, total // 5)
    for done, item in enumerate(items, start=1):
        if done % step == 0 or done == total:
            log.info("%s: %d/%d chunks", label, done, total)
        yield item


def _plan(update: np.ndarray) -> tuple[QuantizationPlan, CkksParameters, FieldLayout]:
    params = ckks_parameters(MAX_PARTICIPANTS)
    layout = field_layout(params, MAX_PARTICIPANTS)
    pieces = upload_chunk_count(update.size, layout, params.slots, CHUNK_CIPHERTEXTS)
    plan = plan_quantization(update.size, clip_norm=float(np.linalg.norm(update)), bits=layout.bits,
                             max_participants=MAX_PARTICIPANTS, min_participants=3,
                             noise_kind=NoiseKind.SKELLAM, noise_variance=30.0, rounding_pieces=pieces)
    return plan, params, layout


def _recipe(plan: QuantizationPlan, params: CkksParameters, layout: FieldLayout, seed: int,
            masks: tuple[PeerMask, ...] = (), authority: tuple[PeerMask, ...] = (),
            tag: str | None = None) -> UploadRecipe:
    return UploadRecipe(plan, layout, params.slots, CHUNK_CIPHERTEXTS, np.random.SeedSequence(seed), masks, authority,
                        tag)


def _encode_node(pool: EncryptionPool, update: np.ndarray, plan: QuantizationPlan, params: CkksParameters,
                 layout: FieldLayout, seed: int, label: str, masks: tuple[PeerMask, ...] = (),
                 recipe: UploadRecipe | None = None, keep_fields: bool = True) -> list[EncryptedChunk]:
    recipe = recipe if recipe is not None else _recipe(plan, params, layout, seed, masks)
    chunks = pool.encode_and_encrypt(update, recipe, keep_fields=keep_fields)
    return list(_progress(label, chunks, plan.rounding_pieces))


def _drain(chunks: Iterator[EncryptedChunk]) -> int:
    return sum(len(chunk.ciphertexts) for chunk in chunks)


def _timed(action: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def bench_packed(update: np.ndarray, workers: int) -> CodecFigures:
    plan, params, layout = _plan(update)
    secret = make_secret_context(params)
    public = public_context_bytes(secret)
    log.info("packed codec: N=%d primes=%s scale=2^%d, %d fields of %d bits (+%d headroom) per slot",
             params.poly_modulus_degree, params.coeff_mod_bit_sizes, params.scale_bits,
             layout.fields_per_slot, layout.bits, layout.width - layout.bits)
    submissions: list[list[EncryptedChunk]] = []
    node_times: list[float] = []
    reset_peak_rss()
    with EncryptionPool(public, workers=workers) as pool:
        for node in range(NODES):
            start = time.perf_counter()
            submissions.append(_encode_node(pool, update, plan, params, layout, node, f"node {node + 1}/{NODES}"))
            node_times.append(time.perf_counter() - start)
    wire = sum(len(c) for chunk in submissions[0] for c in chunk.ciphertexts)
    node_peak = peak_rss_bytes()

    def summed() -> RunningCiphertextSum:
        total = RunningCiphertextSum(load_public_context(public), len(submissions[0]))
        for submission in submissions:
            for chunk in submission:
                total.fold(chunk.index, total.parse_chunk(chunk.index, chunk.ciphertexts))
        return total

    total, sum_seconds = _timed(summed)
    assert isinstance(total, RunningCiphertextSum)

    def decrypted() -> np.ndarray:
        parts = []
        for chunk in submissions[0]:
            assert chunk.fields is not None
            slots = decrypt_to_slot_integers(secret, total.serialized_chunk(chunk.index), params.slots)
            parts.append(unpack_fields(slots, layout, chunk.fields.size))
        return np.concatenate(parts)

    fields, decrypt_seconds = _timed(decrypted)
    assert isinstance(fields, np.ndarray)
    exact = np.mod(sum(np.concatenate([c.fields for c in s if c.fields is not None]).astype(np.int64)
                       for s in submissions), layout.modulus)
    mismatches = int(np.count_nonzero(fields != exact))
    mean = decode_mean_update(fields, plan, NODES)
    log.info("packed codec: %d integer mismatches; decoded-mean max |error| %.3g (quantization + noise)",
             mismatches, float(np.max(np.abs(mean - update))))
    return CodecFigures("packed CKKS", wire / update.size, statistics.median(node_times), sum_seconds,
                        decrypt_seconds, max(node_peak, peak_rss_bytes()), float(mismatches))


def bench_baseline(update: np.ndarray) -> CodecFigures:
    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    context.global_scale = 2**40
    public = ts.context_from(context.serialize(save_public_key=True, save_secret_key=False,
                                               save_galois_keys=False, save_relin_keys=False))
    slots = 4096
    rows = slot_matrix(update, slots)
    reset_peak_rss()
    start = time.perf_counter()
    submission: list[bytes] = []
    for index, row in enumerate(rows):
        submission.append(bytes(ts.ckks_vector(public, row).serialize()))
        if (index + 1) % max(1, rows.shape[0] // 5) == 0:
            log.info("baseline encrypt: %d/%d ciphertexts", index + 1, rows.shape[0])
    node_seconds = time.perf_counter() - start
    wire = sum(len(c) for c in submission)
    start = time.perf_counter()
    sums = [ts.ckks_vector_from(public, c) for c in submission]
    for _ in range(NODES - 1):
        for total, payload in zip(sums, submission):
            total += ts.ckks_vector_from(public, payload)
    sum_seconds = time.perf_counter() - start
    start = time.perf_counter()
    decrypted = np.concatenate([np.asarray(ts.ckks_vector_from(context, t.serialize()).decrypt()) for t in sums])
    decrypt_seconds = time.perf_counter() - start
    error = float(np.max(np.abs(decrypted[: update.size] - NODES * update)))
    return CodecFigures("baseline 1 float/slot", wire / update.size, node_seconds, sum_seconds, decrypt_seconds,
                        peak_rss_bytes(), error)


def report(packed: CodecFigures, baseline: CodecFigures, single_process_node_seconds: float | None) -> str:
    rows = [
        ("bytes on the wire per parameter", packed.bytes_per_parameter, baseline.bytes_per_parameter),
        ("node s: encode+encrypt+serialize", packed.node_seconds, baseline.node_seconds),
        (f"s to sum {NODES} submissions", packed.sum_seconds, baseline.sum_seconds),
        ("s to decrypt+decode", packed.decrypt_seconds, baseline.decrypt_seconds),
        ("peak memory GB", packed.peak_memory_bytes / 1e9, baseline.peak_memory_bytes / 1e9),
    ]
    lines = [f"{'metric':36} {'packed':>12} {'baseline':>12} {'packed/baseline':>16}"]
    for label, ours, theirs in rows:
        lines.append(f"{label:36} {ours:12.3f} {theirs:12.3f} {ours / theirs:16.3f}")
    lines.append(f"{'max error (packed: integer mismatches)':36} {packed.max_error:12.0f} {baseline.max_error:12.3g}")
    if single_process_node_seconds is not None:
        lines.append(f"packed node s on 1 process: {single_process_node_seconds:.2f} "
                     f"(ratio to baseline {single_process_node_seconds / baseline.node_seconds:.3f})")
    return "\n".join(lines)


def bench_masking(update: np.ndarray, workers: int, node_counts: tuple[int, ...],
                  repeats: int = 2) -> dict[int, float]:
    """Median node seconds of one upload without masks (key 0) and with a node's pairwise masks in a set of each
    size (its n - 1 peers), run alternately in one pool so that the machine's noise falls on both alike."""
    plan, params, layout = _plan(update)
    public = public_context_bytes(make_secret_context(params))
    masks = {0: ()}
    for count in node_counts:
        nodes = [f"hospital-{i}" for i in range(count)]
        private = {node: X25519PrivateKey.generate() for node in nodes}
        peers = {node: key.public_key() for node, key in private.items()}
        masks[count] = tuple(peer_masks(nodes[0], private[nodes[0]], peers, scope=MaskScope("bench", "key", 1, 1,
                                                                                       tuple(nodes))))
    times: dict[int, list[float]] = {count: [] for count in masks}
    with EncryptionPool(public, workers=workers) as pool:
        for repeat in range(repeats):
            for count, node_masks in masks.items():
                start = time.perf_counter()
                _encode_node(pool, update, plan, params, layout, repeat, f"masked for {count} nodes" if count
                             else "unmasked", node_masks)
                times[count].append(time.perf_counter() - start)
    return {count: statistics.median(seconds) for count, seconds in times.items()}


def masking_report(seconds: dict[int, float], workers: int) -> str:
    lines = [f"node s: encode+encrypt+serialize with pairwise masks ({workers} workers, medians)",
             f"{'participants':>12} {'node s':>8} {'masked/unmasked':>16}",
             f"{'unmasked':>12} {seconds[0]:8.3f} {1.0:16.3f}"]
    for count in sorted(c for c in seconds if c):
        lines.append(f"{count:>12} {seconds[count]:8.3f} {seconds[count] / seconds[0]:16.3f}")
    return "\n".join(lines)


def bench_online(update: np.ndarray, workers: int, repeats: int = 3) -> dict[str, float]:
    """Median seconds, run alternately in one pool so that the machine's noise falls on both alike, of:
    - a node's full path after training (scale, round, noise, masks, encode, encrypt, serialize) and its online
      path (the same with the noise, the masks and the encryptions of zero precomputed on the workers, as while it
      trains), and the precompute itself; a node of 5, so 4 pairwise masks and one with the key authority;
    - the key authority's decryption of that upload's chunks in one process and on `workers` processes."""
    plan, params, layout = _plan(update)
    secret = make_secret_context(params)
    public = public_context_bytes(secret)
    nodes = [f"hospital-{i}" for i in range(NODES)]
    private = {node: X25519PrivateKey.generate() for node in nodes}
    scope = MaskScope("bench", "key", 1, 1, tuple(nodes))
    masks = tuple(peer_masks(nodes[0], private[nodes[0]], {n: k.public_key() for n, k in private.items()}, scope=scope))
    authority = (authority_mask(nodes[0], private[nodes[0]], X25519PrivateKey.generate().public_key(), scope),)
    times: dict[str, list[float]] = {name: [] for name in ("full", "online", "precompute", "decrypt serial",
                                                           "decrypt parallel")}
    with EncryptionPool(public, workers=workers) as pool, DecryptionPool(secret, workers) as decryption:
        serial = DecryptionPool(secret, 0)
        upload = _encode_node(pool, update, plan, params, layout, 0, "upload to decrypt", keep_fields=False)
        chunks = [chunk.ciphertexts for chunk in upload]
        for repeat in range(repeats):
            # Timed as a node streams: each chunk handed on and dropped, not all held.
            start = time.perf_counter()
            _drain(pool.encode_and_encrypt(update, _recipe(plan, params, layout, repeat, masks, authority)))
            times["full"].append(time.perf_counter() - start)
            recipe = _recipe(plan, params, layout, repeat, masks, authority, tag=f"bench:{repeat}")
            start = time.perf_counter()
            pool.precompute(update.size, recipe)
            pool.precompute_seconds()  # waits for every share
            times["precompute"].append(time.perf_counter() - start)
            start = time.perf_counter()
            _drain(pool.encode_and_encrypt(update, recipe))
            times["online"].append(time.perf_counter() - start)
            log.info("repeat %d/%d: full %.2f s, online %.2f s", repeat + 1, repeats, times["full"][-1],
                     times["online"][-1])
            for name, decryptor in (("decrypt serial", serial), ("decrypt parallel", decryption)):
                start = time.perf_counter()
                decryptor.slot_integers(chunks, params.slots)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def online_report(seconds: dict[str, float], workers: int, dimension: int) -> str:
    def line(label: str, name: str, reference: str) -> str:
        return f"{label:50} {seconds[name]:8.2f} {seconds[name] / seconds[reference]:12.2f}"

    return "\n".join([
        f"CKKS on the critical path, {dimension:,} parameters, {workers} worker processes (medians)",
        f"{'path':50} {'seconds':>8} {'vs baseline':>12}",
        line("node, full (baseline): noise, masks, encrypt", "full", "full"),
        line("node, online: round, add drawn, encode, add zero", "online", "full"),
        line("node, precompute in training: noise, masks, zeros", "precompute", "full"),
        line("key authority, 1 process (baseline): decrypt", "decrypt serial", "decrypt serial"),
        line(f"key authority, {workers} processes: decrypt", "decrypt parallel", "decrypt serial"),
        f"node critical path {seconds['full'] / seconds['online']:.2f}x shorter; decryption "
        f"{seconds['decrypt serial'] / seconds['decrypt parallel']:.2f}x faster"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dimension", type=int, default=RESNET50_2CLASS)
    parser.add_argument("--workers", type=int, default=2, help="encryption processes per node")
    parser.add_argument("--skip-single-process", action="store_true")
    parser.add_argument("--mask-nodes", type=int, nargs="*", default=[5, 10, 20],
                        help="participant-set sizes to time the masked node path at (none: skip)")
    parser.add_argument("--only-masking", action="store_true", help="time the masked node path alone")
    parser.add_argument("--only-online", action="store_true",
                        help="time the full and the online (precomputed) node paths alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rng = np.random.default_rng(42)
    update = rng.normal(0.0, 1e-3, args.dimension)
    if args.only_masking:
        print(masking_report(bench_masking(update, args.workers, tuple(args.mask_nodes)), args.workers))
        return
    if args.only_online:
        print(online_report(bench_online(update, args.workers), args.workers, args.dimension))
        return
    packed = bench_packed(update, args.workers)
    single = None
    if not args.skip_single_process:
        single = bench_packed_single(update)
    baseline = bench_baseline(update)
    masking = bench_masking(update, args.workers, tuple(args.mask_nodes)) if args.mask_nodes else None
    online = bench_online(update, args.workers)
    print(f"\nupdate of {args.dimension:,} parameters, {NODES} nodes")
    print(report(packed, baseline, single))
    if masking is not None:
        print(masking_report(masking, args.workers))
    print(online_report(online, args.workers, args.dimension))


def bench_packed_single(update: np.ndarray) -> float:
    """Node-side seconds of one encoding on a single process, for an even comparison."""
    plan, params, layout = _plan(update)
    public = public_context_bytes(make_secret_context(params))
    with EncryptionPool(public, workers=0) as pool:
        start = time.perf_counter()
        _encode_node(pool, update, plan, params, layout, 0, "single-process node")
        return time.perf_counter() - start


if __name__ == "__main__":
    main()
