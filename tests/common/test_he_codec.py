"""The invariant: decrypting the sum of encryptions gives exactly the modular sum."""

import numpy as np
import pytest
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import CkksParameterError, DecryptionIntegrityError
from services.common.protocol.chunking import upload_chunk_count
from services.common.secure_sum.ckks_params import (
    FRESH_NOISE_AT_UNIT_SCALE,
    ckks_parameters,
    field_layout,
    load_public_context,
    make_secret_context,
    public_context_bytes,
    statistics_layout,
)
from services.common.secure_sum.he_codec import (
    RunningCiphertextSum,
    decrypt_to_slot_integers,
    encrypt_rows,
    slot_matrix,
)
from services.common.secure_sum.noise import NoiseKind
from services.common.secure_sum.packing import pack_fields, unpack_fields
from services.common.secure_sum.pairwise_masks import MaskScope, PeerMask, peer_masks
from services.common.secure_sum.update_codec import plan_quantization, scale_update
from services.hospital_node.encryption_pool import EncryptedChunk, EncryptionPool, UploadRecipe
from tests.statistics import chi_square_critical, chi_square_uniform

N_MAX_CONFIGURATIONS = (8, pytest.param(20, marks=pytest.mark.slow))


@pytest.fixture(scope="module", params=N_MAX_CONFIGURATIONS)
def keyed(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    n_max = request.param
    params = ckks_parameters(n_max)
    secret = make_secret_context(params)
    public = public_context_bytes(secret)
    return n_max, params, field_layout(params, n_max), secret, public


def _roundtrip(keyed, vectors: list[np.ndarray]) -> np.ndarray:  # type: ignore[no-untyped-def]
    _, params, layout, secret, public = keyed
    size = vectors[0].size
    context = load_public_context(public)
    chunks_per_vector = [[[c] for c in encrypt_rows(context, slot_matrix(pack_fields(v, layout), params.slots))]
                         for v in vectors]
    total = RunningCiphertextSum(context, len(chunks_per_vector[0]))
    for chunks in chunks_per_vector:
        for index, chunk in enumerate(chunks):
            total.fold(index, total.parse_chunk(index, chunk))
    slots = np.concatenate([decrypt_to_slot_integers(secret, total.serialized_chunk(i), params.slots)
                            for i in range(total.chunk_count)])
    return unpack_fields(slots, layout, size)


@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_decrypted_sum_equals_modular_integer_sum_for_every_n(keyed, data: st.DataObject) -> None:  # type: ignore[no-untyped-def]
    n_max, params, layout, *_ = keyed
    seed = data.draw(st.integers(0, 2**32 - 1))
    size = data.draw(st.integers(1, params.slots * layout.fields_per_slot + 7))
    extreme = data.draw(st.booleans())
    rng = np.random.default_rng(seed)
    for n in range(1, n_max + 1):
        if extreme:  # every field at its maximum: the worst case for carries and CKKS range
            vectors = [np.full(size, layout.modulus - 1, dtype=np.int64) for _ in range(n)]
        else:
            vectors = [rng.integers(0, layout.modulus, size) for _ in range(n)]
        expected = np.mod(np.sum(vectors, axis=0), layout.modulus)
        assert np.array_equal(_roundtrip(keyed, vectors), expected), f"n={n}"


@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_statistics_layout_sums_are_exact_for_every_n(keyed, data: st.DataObject) -> None:  # type: ignore[no-untyped-def]
    n_max, params, _, secret, public = keyed
    layout = statistics_layout(params, n_max)
    assert layout.fields_per_slot == 1 and layout.bits > 32  # what the head refit's statistics rely on
    seed = data.draw(st.integers(0, 2**32 - 1))
    size = data.draw(st.integers(1, params.slots + 7))
    extreme = data.draw(st.booleans())
    rng = np.random.default_rng(seed)
    for n in range(1, n_max + 1):
        if extreme:
            vectors = [np.full(size, layout.modulus - 1, dtype=np.int64) for _ in range(n)]
        else:
            vectors = [rng.integers(0, layout.modulus, size) for _ in range(n)]
        expected = np.mod(np.sum(vectors, axis=0), layout.modulus)
        assert np.array_equal(_roundtrip((n_max, params, layout, secret, public), vectors), expected), f"n={n}"


def test_public_context_holds_no_secret_key(keyed) -> None:  # type: ignore[no-untyped-def]
    *_, secret, public = keyed
    context = ts.context_from(public)
    assert secret.is_private()
    assert not context.is_private()
    assert not context.has_secret_key()


def test_public_context_cannot_decrypt(keyed) -> None:  # type: ignore[no-untyped-def]
    _, params, _, _, public = keyed
    context = load_public_context(public)
    vector = ts.ckks_vector(context, [1.0, 2.0])
    with pytest.raises(Exception):
        vector.decrypt()
    with pytest.raises(ValueError, match="secret-key"):
        decrypt_to_slot_integers(context, [bytes(vector.serialize())], params.slots)


def test_fresh_noise_matches_the_constant_the_parameters_rely_on(keyed) -> None:  # type: ignore[no-untyped-def]
    _, params, _, secret, public = keyed
    context = load_public_context(public)
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**30, params.slots).astype(np.float64)
    errors = np.concatenate([np.asarray(ts.ckks_vector_from(secret, ts.ckks_vector(context, values).serialize())
                                        .decrypt()) - values for _ in range(4)])
    measured = errors.std() * params.scale
    # The constant must not understate the noise (the safety margin depends on it).
    assert measured <= FRESH_NOISE_AT_UNIT_SCALE * 1.1


def test_layout_refuses_bits_that_cannot_be_exact(keyed) -> None:  # type: ignore[no-untyped-def]
    n_max, params, layout, *_ = keyed
    with pytest.raises(CkksParameterError, match=f"n_max={n_max}"):
        field_layout(params, n_max, bits=layout.bits + 1)


def test_decryption_refuses_non_integer_plaintexts(keyed) -> None:  # type: ignore[no-untyped-def]
    _, params, _, secret, public = keyed
    vector = ts.ckks_vector(load_public_context(public), [0.5] * params.slots)
    with pytest.raises(DecryptionIntegrityError):
        decrypt_to_slot_integers(secret, [bytes(vector.serialize())], params.slots)


def test_worker_pool_chunks_decrypt_to_the_fields_it_encoded(keyed) -> None:  # type: ignore[no-untyped-def]
    n_max, params, layout, secret, public = keyed
    dimension = params.slots * layout.fields_per_slot * 3 + 11
    chunks = upload_chunk_count(dimension, layout, params.slots, 1)
    plan = plan_quantization(dimension, 1.0, layout.bits, max_participants=n_max, min_participants=2,
                             noise_kind=NoiseKind.SKELLAM, noise_variance=4.0, rounding_pieces=chunks)
    update = np.random.default_rng(5).normal(0, 0.01, dimension)
    with EncryptionPool(public, workers=2) as pool:
        out = list(pool.encode_and_encrypt(update,
                                           UploadRecipe(plan, layout, params.slots, 1, np.random.SeedSequence(9)),
                                           keep_fields=True))
    assert [c.index for c in out] == list(range(chunks))
    fields = np.concatenate([c.fields for c in out if c.fields is not None])
    decrypted = np.concatenate([unpack_fields(decrypt_to_slot_integers(secret, c.ciphertexts, params.slots), layout,
                                              c.fields.size) for c in out if c.fields is not None])
    assert fields.size == dimension
    assert np.array_equal(decrypted, fields)


def _mask_keys(nodes: list[str]) -> tuple[dict[str, X25519PrivateKey], dict[str, X25519PublicKey]]:
    private = {node: X25519PrivateKey.generate() for node in nodes}
    return private, {node: key.public_key() for node, key in private.items()}


def _upload(pool: EncryptionPool, plan, layout, slots: int, update: np.ndarray, seed: int,  # type: ignore[no-untyped-def]
            masks: tuple[PeerMask, ...] = ()) -> list[EncryptedChunk]:
    return list(pool.encode_and_encrypt(update,
                                        UploadRecipe(plan, layout, slots, 1, np.random.SeedSequence(seed), masks),
                                        keep_fields=True))


def test_masked_uploads_sum_to_the_unmasked_fields_for_every_n(keyed) -> None:  # type: ignore[no-untyped-def]
    """Honest rounds stay exact with pairwise masks, at every participant count up to n_max."""
    n_max, params, layout, secret, public = keyed
    dimension = params.slots * layout.fields_per_slot + 5  # two ciphertexts, one chunk each
    plan = plan_quantization(dimension, 1.0, layout.bits, max_participants=n_max, min_participants=1,
                             noise_kind=NoiseKind.SKELLAM, noise_variance=4.0, rounding_pieces=2)
    rng = np.random.default_rng(3)
    context = load_public_context(public)
    with EncryptionPool(public, workers=0) as pool:
        for n in range(1, n_max + 1):
            nodes = [f"hospital-{i}" for i in range(n)]
            private, peers = _mask_keys(nodes)
            scope = MaskScope("c", "k", 1, 1, tuple(nodes))
            total = RunningCiphertextSum(context, 2)
            plain = np.zeros(dimension, dtype=np.int64)
            for index, node in enumerate(nodes):
                update = rng.normal(0, 0.01, dimension)
                masks = tuple(peer_masks(node, private[node], peers, scope=scope))
                for chunk in _upload(pool, plan, layout, params.slots, update, index, masks):
                    total.fold(chunk.index, total.parse_chunk(chunk.index, chunk.ciphertexts))
                plain += np.concatenate([c.fields for c in _upload(pool, plan, layout, params.slots, update, index)
                                         if c.fields is not None]).astype(np.int64)
            slots = np.concatenate([decrypt_to_slot_integers(secret, total.serialized_chunk(i), params.slots)
                                    for i in range(2)])
            assert np.array_equal(unpack_fields(slots, layout, dimension), plain % layout.modulus), f"n={n}"


def test_with_the_secret_key_and_every_ciphertext_one_hospitals_upload_is_uniform(keyed) -> None:  # type: ignore[no-untyped-def]
    """Collusion of both servers: they hold the secret key and each node's ciphertexts, and decrypt one hospital's
    upload alone. What they get is uniform over the field (chi-square, 98,304 values over 2^b bins, p = 1e-4) and
    uncorrelated with what that hospital encoded (|r| below 0.02, over six standard errors)."""
    n_max, params, layout, secret, public = keyed
    dimension = params.slots * layout.fields_per_slot * 8
    plan = plan_quantization(dimension, 1.0, layout.bits, max_participants=n_max, min_participants=3,
                             noise_kind=NoiseKind.SKELLAM, noise_variance=16.0, rounding_pieces=8)
    nodes = [f"hospital-{i}" for i in range(5)]
    private, peers = _mask_keys(nodes)
    masks = tuple(peer_masks(nodes[0], private[nodes[0]], peers, scope=MaskScope("c", "k", 1, 1, tuple(nodes))))
    update = np.random.default_rng(8).normal(0, 1.0 / np.sqrt(dimension), dimension)  # a full-size update
    with EncryptionPool(public, workers=0) as pool:
        uploaded = _upload(pool, plan, layout, params.slots, update, 1, masks)
        encoded = np.concatenate([c.fields for c in _upload(pool, plan, layout, params.slots, update, 1)
                                  if c.fields is not None]).astype(np.int64)
    decrypted = np.concatenate([unpack_fields(decrypt_to_slot_integers(secret, c.ciphertexts, params.slots), layout,
                                              params.slots * layout.fields_per_slot) for c in uploaded])
    assert chi_square_uniform(decrypted, layout.modulus) < chi_square_critical(layout.modulus, z=3.72)
    assert chi_square_uniform(encoded, layout.modulus) > chi_square_critical(layout.modulus, z=3.72)  # the control
    assert abs(np.corrcoef(decrypted, encoded)[0, 1]) < 0.02
