"""The key authority's streamed decryption (sum_decryption.decrypt_stream), as a dishonest aggregator would try it:
each chunk is checked as it arrives and decrypted while the next one travels, the round goes into the ledger before
anything is decrypted, and nothing comes back unless every chunk was checked and every slot decrypted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from services.common.errors import DecryptionIntegrityError, MalformedChunkError
from services.common.protocol.round_plan import SumLayout
from services.common.protocol.upload import DecryptManifest
from services.common.secure_sum.he_codec import encrypt_rows
from services.key_authority.decryption_pool import DecryptionPool
from services.key_authority.key_store import KeyMaterial, load_or_create_keys
from services.key_authority.sum_decryption import decrypt_stream

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyMaterial:
    return load_or_create_keys(8, None, tmp_path_factory.mktemp("ka"), persist=False)


def _manifest(keys: KeyMaterial) -> tuple[DecryptManifest, int]:
    """A sum of three ciphertexts, one per chunk."""
    per_ciphertext = keys.params.slots * keys.layout.fields_per_slot
    values = 3 * per_ciphertext - 7
    return DecryptManifest(5, keys.key_id, 3, values, (), SumLayout.UPDATE, 1, ("a", "b", "c"), 1), values


def _chunks(keys: KeyMaterial, rows: np.ndarray) -> list[list[bytes]]:
    public = ts.context_from(keys.public_context)
    return [encrypt_rows(public, row[None, :]) for row in rows]


def _rows(keys: KeyMaterial, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**20, size=(3, keys.params.slots)).astype(np.float64)


class Events:
    def __init__(self) -> None:
        self.log: list[str] = []

    def chunks(self, chunks: list[list[bytes]]) -> Iterator[tuple[int, list[bytes]]]:
        for index, chunk in enumerate(chunks):
            self.log.append(f"chunk {index}")
            yield index, chunk

    def claim(self) -> None:
        self.log.append("claim")


def test_the_ledger_entry_comes_after_the_first_chunk_and_before_any_decryption(keys: KeyMaterial) -> None:
    manifest, values = _manifest(keys)
    events = Events()

    class Recording(DecryptionPool):
        def stream(self, slots: int):  # type: ignore[no-untyped-def]
            inner = super().stream(slots)
            original = inner.submit

            def submit(ciphertexts: list[bytes], parsed: list[ts.CKKSVector] | None = None) -> None:
                events.log.append("decrypt")
                original(ciphertexts, parsed)
            inner.submit = submit  # type: ignore[method-assign]
            return inner

    fields = decrypt_stream(keys, manifest, events.chunks(_chunks(keys, _rows(keys))), unmasks=[],
                            claim=events.claim, pool=Recording(keys.secret_context, 0))
    # Decrypted as it arrives: chunk i is decrypted before chunk i + 1 is read, and the claim precedes all.
    assert events.log == ["chunk 0", "claim", "decrypt", "chunk 1", "decrypt", "chunk 2", "decrypt"]
    assert sum(f.size for f in fields) == values


def test_the_streamed_sum_equals_the_decryption_of_each_chunk_alone(keys: KeyMaterial) -> None:
    manifest, values = _manifest(keys)
    rows = _rows(keys, 1)
    expected_slots = rows.astype(np.int64).reshape(-1)
    for workers in (0, 2):
        with DecryptionPool(keys.secret_context, workers) as pool:
            fields = decrypt_stream(keys, manifest, enumerate(_chunks(keys, rows)), unmasks=[], claim=lambda: None,
                                    pool=pool)
        assert np.concatenate(fields).size == values
        layout = keys.layout
        # The first field of each slot is its lowest `bits` bits (unpack_fields' layout), exactly.
        first = np.concatenate(fields)[: keys.params.slots * layout.fields_per_slot: layout.fields_per_slot]
        assert np.array_equal(first.astype(np.int64), expected_slots[: first.size] % (1 << layout.bits))


def test_a_malformed_first_chunk_is_refused_before_the_ledger_and_a_malformed_later_one_after(
        keys: KeyMaterial) -> None:
    manifest, _ = _manifest(keys)
    chunks = _chunks(keys, _rows(keys))
    claims: list[int] = []
    with pytest.raises(MalformedChunkError):
        decrypt_stream(keys, manifest, enumerate([chunks[0] * 2, *chunks[1:]]), unmasks=[],
                       claim=lambda: claims.append(1))
    assert claims == []  # nothing was decrypted, so the round may still be sent again
    with pytest.raises(MalformedChunkError, match="ended after 2 of 3"):
        decrypt_stream(keys, manifest, enumerate(chunks[:2]), unmasks=[], claim=lambda: claims.append(1))
    assert claims == [1]  # decryption had started: the round is spent, and nothing was returned


def test_a_crafted_chunk_that_decrypts_off_the_integers_spends_the_round_and_returns_nothing(
        keys: KeyMaterial) -> None:
    """The refusal that depends on the secret key (a slot far from an integer) comes after the ledger entry and only
    once the whole stream has been read: one such answer per round, and never which chunk, nor early enough for a
    dishonest aggregator to choose its next chunks by it."""
    manifest, _ = _manifest(keys)
    rows = _rows(keys)
    crafted = _chunks(keys, rows)
    crafted[1] = _chunks(keys, rows + 0.5)[1]  # only the middle chunk is off the integers
    for workers in (0, 2):
        events = Events()
        with DecryptionPool(keys.secret_context, workers) as pool, pytest.raises(DecryptionIntegrityError) as refused:
            decrypt_stream(keys, manifest, events.chunks(crafted), unmasks=[], claim=events.claim, pool=pool)
        assert events.log == ["chunk 0", "claim", "chunk 1", "chunk 2"], workers  # read to the end, then refused
        assert "chunk" not in str(refused.value) and "ciphertext" not in str(refused.value)


def test_a_refused_claim_stops_the_stream_before_any_decryption(keys: KeyMaterial, tmp_path: Path) -> None:
    manifest, _ = _manifest(keys)
    events = Events()

    def refuse() -> None:
        events.log.append("claim")
        raise MalformedChunkError("already decrypted")

    with pytest.raises(MalformedChunkError, match="already decrypted"):
        decrypt_stream(keys, manifest, events.chunks(_chunks(keys, _rows(keys))), unmasks=[], claim=refuse)
    assert events.log == ["chunk 0", "claim"]


@pytest.mark.slow
def test_the_decryption_benchmark_runs_each_process_count(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bench_decrypt

    bench_decrypt.main(["--dimension", "60000", "--workers", "0", "1", "--repeats", "1"])
    table = capsys.readouterr().out.split("the key authority alone")[1].splitlines()
    rows = {line.split()[0]: float(line.split()[2]) for line in table[2:] if line.strip()}
    assert rows.keys() == {"0", "1"} and rows["0"] == 1.0
