"""Offline/online encryption: fresh encryptions of zero made ahead, each used once, for one round attempt only."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from services.common.secure_sum.ckks_params import ckks_parameters, field_layout
from services.common.secure_sum.he_codec import decrypt_to_slot_integers, slot_matrix
from services.common.secure_sum.packing import pack_fields
from services.hospital_node import encryption_pool
from services.hospital_node.encryption_pool import (
    EncryptionPool,
    UploadRecipe,
    encrypt_rows_from_stock,
    fill_stock,
)
from services.hospital_node.node_loop import precompute_pays
from services.key_authority.key_store import make_secret_context

pytestmark = pytest.mark.unit
PARAMS = ckks_parameters(8)


@pytest.fixture(scope="module")
def secret() -> ts.Context:
    return make_secret_context(PARAMS)


@pytest.fixture(autouse=True)
def empty_stock() -> None:
    encryption_pool._stock.clear()
    encryption_pool._drawn.clear()


def _rows(seed: int, count: int) -> np.ndarray:
    layout = field_layout(PARAMS, 8, None)
    fields = np.random.default_rng(seed).integers(0, 1 << layout.bits, count * PARAMS.slots * layout.fields_per_slot)
    return slot_matrix(pack_fields(fields, layout), PARAMS.slots)


def test_the_precomputed_path_decrypts_exactly_as_the_direct_path(secret: ts.Context) -> None:
    rows = _rows(1, 3)
    fill_stock(secret, "5:1", 3)
    precomputed = encrypt_rows_from_stock(secret, rows, "5:1")
    assert encryption_pool._stock["5:1"] == []  # all three were taken
    direct = encrypt_rows_from_stock(secret, rows, None)
    for path in (precomputed, direct):
        assert np.array_equal(decrypt_to_slot_integers(secret, path, PARAMS.slots), rows.reshape(-1))


def test_no_precomputed_encryption_is_used_twice(secret: ts.Context) -> None:
    fill_stock(secret, "5:1", 4)
    zeros = np.zeros((4, PARAMS.slots))
    sent = encrypt_rows_from_stock(secret, zeros, "5:1")
    assert len(set(sent)) == 4  # the same plaintext, four distinct random components
    more = encrypt_rows_from_stock(secret, zeros[:2], "5:1")  # the stock is empty: fresh encryptions
    assert not set(more) & set(sent)
    assert np.array_equal(decrypt_to_slot_integers(secret, more, PARAMS.slots), zeros[:2].reshape(-1))


def test_an_abandoned_round_attempt_leaves_no_stock_behind(secret: ts.Context) -> None:
    fill_stock(secret, "5:1", 3)
    fill_stock(secret, "6:1", 1)  # the next round: round 5's stock is dropped, never used
    assert set(encryption_pool._stock) == {"6:1"} and len(encryption_pool._stock["6:1"]) == 1
    encrypt_rows_from_stock(secret, _rows(2, 1), "6:2")  # another attempt: round 6 attempt 1's goes too
    assert set(encryption_pool._stock) == {"6:2"} and encryption_pool._stock["6:2"] == []


def _keyed_recipe(tag: str | None, seed: int = 9, full: int = 3) -> tuple[UploadRecipe, int]:
    """A recipe for a node of three, masked with its peers and the key authority, over `full` + 1 ciphertexts of
    one chunk each."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from services.common.secure_sum.noise import NoiseKind
    from services.common.secure_sum.pairwise_masks import MaskScope, authority_mask, peer_masks
    from services.common.secure_sum.update_codec import plan_quantization

    layout = field_layout(PARAMS, 8, None)
    dimension = PARAMS.slots * layout.fields_per_slot * full + 11
    nodes = ("a", "b", "c")
    keys = {node: X25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i, node in enumerate(nodes)}
    scope = MaskScope("c", "k", 7, 1, nodes)
    masks = tuple(peer_masks("a", keys["a"], {n: k.public_key() for n, k in keys.items()}, scope=scope))
    authority = (authority_mask("a", keys["a"], X25519PrivateKey.from_private_bytes(bytes([9]) * 32).public_key(),
                                scope),)
    plan = plan_quantization(dimension, 1.0, layout.bits, max_participants=8, min_participants=2,
                             noise_kind=NoiseKind.SKELLAM, noise_variance=4.0, rounding_pieces=full + 1)
    return UploadRecipe(plan, layout, PARAMS.slots, 1, np.random.SeedSequence(seed), masks, authority, tag), dimension


def _update(dimension: int) -> np.ndarray:
    return np.random.default_rng(5).normal(0, 0.01, dimension)


def test_worker_processes_precompute_and_the_upload_uses_them(secret: ts.Context) -> None:
    """Through the pool's worker processes, with pairwise and authority masks: a precomputed upload (noise, masks
    and encryptions of zero drawn while 'training', each chunk's slice of the update read from its ring slot)
    encodes exactly the fields a direct upload from the same seeds encodes in this process (from the update itself),
    in other ciphertexts, and decrypts to them plus the authority mask."""
    from services.common.secure_sum.ckks_params import public_context_bytes
    from services.common.secure_sum.packing import to_modular, unpack_fields
    from services.common.secure_sum.pairwise_masks import mask_values

    recipe, dimension = _keyed_recipe("7:1")
    bounds = recipe.bounds(dimension)
    assert sum(recipe.ciphertexts(a, b) for a, b in bounds) == 4  # three full ciphertexts, one for 11 values
    update = _update(dimension)
    with EncryptionPool(public_context_bytes(secret), workers=2) as pool:
        assert pool.precompute(dimension, recipe)
        assert pool.precompute_seconds() > 0
        precomputed = list(pool.encode_and_encrypt(update, recipe, keep_fields=True))
    # Another SeedSequence with the same entropy: the same seed object twice is refused (next test).
    with EncryptionPool(public_context_bytes(secret), workers=0) as in_process:
        direct = list(in_process.encode_and_encrypt(update, replace(recipe, tag=None, seed=np.random.SeedSequence(9)),
                                                    keep_fields=True))
    for a, b, (start, stop) in zip(precomputed, direct, bounds, strict=True):
        assert a.fields is not None and np.array_equal(a.fields, b.fields)
        assert not set(a.ciphertexts) & set(b.ciphertexts)
        decrypted = unpack_fields(decrypt_to_slot_integers(secret, a.ciphertexts, PARAMS.slots), recipe.layout,
                                  a.fields.size)
        sent = to_modular(a.fields.astype(np.int64)
                          + mask_values(recipe.authority, start, stop - start, recipe.plan.bits), recipe.plan.bits)
        assert np.array_equal(decrypted, sent)


def test_each_draw_is_used_once_and_only_by_its_round_attempt(secret: ts.Context) -> None:
    """In one worker's state: a chunk's drawn noise and masks are popped when the chunk is encrypted, a second
    upload of the same attempt draws afresh (other noise), and another attempt's draw drops them all."""
    recipe, dimension = _keyed_recipe("7:1")
    update = _update(dimension)
    chunks = [(i, a, b - a) for i, (a, b) in enumerate(recipe.bounds(dimension))]
    assert encryption_pool.draw_ahead(recipe, chunks) == 4
    drawn = dict(encryption_pool._drawn["7:1"])
    pool = EncryptionPool(bytes(secret.serialize(save_secret_key=False)), workers=0)
    first = list(pool.encode_and_encrypt(update, recipe, keep_fields=True))
    assert encryption_pool._drawn["7:1"] == {}  # all four were taken
    assert all(np.array_equal(drawn[c.index].kept, encryption_pool.draw_chunk(recipe, *chunks[c.index]).kept)
               for c in first)  # what was drawn ahead is what a draw on the spot gives from the same seeds
    fresh = replace(recipe, seed=np.random.SeedSequence(10))
    encryption_pool.draw_ahead(fresh, chunks[:1])
    second = next(pool.encode_and_encrypt(update, fresh, keep_fields=True))
    assert second.fields is not None and first[0].fields is not None
    assert not np.array_equal(second.fields, first[0].fields)  # other noise, never the same noised vector twice
    encryption_pool.draw_ahead(recipe, chunks)
    encryption_pool.draw_ahead(replace(recipe, tag="7:2"), chunks[:1])  # a new attempt: 7:1's draws go
    assert set(encryption_pool._drawn) == {"7:2"} and list(encryption_pool._drawn["7:2"]) == [0]
    fill_stock(secret, "8:1", 1)  # the next round's encryptions of zero: every draw of round 7 goes
    assert encryption_pool._drawn == {} and set(encryption_pool._stock) == {"8:1"}


def test_an_upload_under_a_precomputed_tag_with_another_recipe_is_refused(secret: ts.Context) -> None:
    """A precompute's draws belong to its recipe: an upload that names its tag with other seeds or masks would
    mix two recipes' noise, so it is refused before anything is encrypted."""
    from services.common.secure_sum.ckks_params import public_context_bytes

    recipe, dimension = _keyed_recipe("7:1")
    with EncryptionPool(public_context_bytes(secret), workers=1) as pool:
        assert pool.precompute(dimension, recipe)
        pool.precompute_seconds()
        with pytest.raises(ValueError, match="precomputed for another recipe"):
            next(pool.encode_and_encrypt(_update(dimension), replace(recipe, masks=())))


def test_the_same_seed_is_never_used_for_two_uploads(secret: ts.Context) -> None:
    """Each chunk's noise and rounding derive from the recipe's seed alone: a second upload from the same recipe
    would send the same noise with another update, whose difference would then show exactly. It is refused."""
    recipe, dimension = _keyed_recipe(None)
    pool = EncryptionPool(bytes(secret.serialize(save_secret_key=False)), workers=0)
    list(pool.encode_and_encrypt(_update(dimension), recipe))
    with pytest.raises(ValueError, match="seed was already used"):
        next(pool.encode_and_encrypt(_update(dimension) * 2, recipe))


def test_an_upload_left_half_way_cannot_read_or_write_a_newer_uploads_ciphertexts(secret: ts.Context) -> None:
    """Workers hand ciphertexts back through a ring of shared memory that uploads reuse (4 slots for 1 worker). An
    upload left suspended half-way (its stream failed) gives the ring up to the next one: resumed, it fails before
    it submits another chunk, so it can neither return the newer upload's ciphertexts nor overwrite a slot the newer
    upload has yet to collect; the newer upload decrypts to exactly its own fields."""
    from services.common.secure_sum.ckks_params import public_context_bytes
    from services.common.secure_sum.packing import to_modular, unpack_fields
    from services.common.secure_sum.pairwise_masks import mask_values

    recipe, dimension = _keyed_recipe(None, full=7)  # 8 chunks: more than the ring's 4 slots
    update = _update(dimension)
    with EncryptionPool(public_context_bytes(secret), workers=1) as pool:
        old = pool.encode_and_encrypt(update, recipe, keep_fields=True)
        next(old)
        newer_recipe = replace(recipe, seed=np.random.SeedSequence(3))
        newer_chunks = pool.encode_and_encrypt(update, newer_recipe, keep_fields=True)
        newer = [next(newer_chunks), next(newer_chunks)]
        with pytest.raises(RuntimeError, match="superseded"):
            next(old)  # without the check it would submit its chunk 4 into the slot of the newer upload's chunk 4
        time.sleep(1.0)  # time for such a stray task to run
        newer += list(newer_chunks)
    for chunk, (start, stop) in zip(newer, recipe.bounds(dimension), strict=True):
        assert chunk.fields is not None
        sent = to_modular(chunk.fields.astype(np.int64)
                          + mask_values(recipe.authority, start, stop - start, recipe.plan.bits), recipe.plan.bits)
        decrypted = unpack_fields(decrypt_to_slot_integers(secret, chunk.ciphertexts, PARAMS.slots), recipe.layout,
                                  chunk.fields.size)
        assert np.array_equal(decrypted, sent), chunk.index


@pytest.mark.parametrize(("device", "cores", "threads", "workers", "expected"), [
    ("cuda", 1.0, 1, 1, True),   # the GPU trains; the CPU cores are otherwise idle
    ("cuda", 8.0, 0, 0, False),  # no worker to precompute on
    ("cpu", 2.0, 1, 1, True),    # one hospital on this 2-core machine: training and the worker each have a core
    ("cpu", 1.0, 1, 1, False),   # two hospitals on it: they would share a core
    ("cpu", 0.4, 1, 1, False),   # the five-hospital demo
    ("cpu", 16.0, 0, 1, False),  # torch's default threads take every core
    ("cpu", 16.0, 12, 2, True),
    ("cpu", 16.0, 15, 2, False),
])
def test_auto_precompute_follows_the_measured_crossover(device: str, cores: float, threads: int, workers: int,
                                                        expected: bool) -> None:
    assert precompute_pays(device, cores, threads, workers) is expected


def test_the_launcher_gives_each_hospital_its_share_of_the_cores(tmp_path: Path) -> None:
    from scripts.launcher import ConsortiumConfig
    from services.common.runtime.cpu import usable_cores
    settings = ConsortiumConfig(run_dir=tmp_path, nodes=4, insecure=True).node_settings(0)
    assert settings.cpu_cores == pytest.approx(usable_cores() / 4)
    assert ConsortiumConfig(run_dir=tmp_path, nodes=4, insecure=True, node={"cpu_cores": 3}).node_settings(1).cpu_cores == 3
