"""Decryption of a sum's chunks in parallel, on the key authority's own worker processes.

TenSEAL holds the GIL while it decrypts, so threads would not help. Each worker process is
started by the key authority and receives the secret context once, through its initializer:
the key stays within the key authority's own processes, and the workers return only rounded
slot integers (`decrypt_to_slot_integers`), never raw decryptions. Chunks come back in order;
a chunk that does not decrypt to integers refuses the whole sum, as in one process.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing

import numpy as np
import tenseal as ts

from services.common.secure_sum.he_codec import decrypt_to_slot_integers

_worker_secret: ts.Context | None = None


def _init_worker(secret_context: bytes) -> None:
    global _worker_secret
    _worker_secret = ts.context_from(secret_context)


def _decrypt_in_worker(ciphertexts: list[bytes], slots: int) -> np.ndarray:
    assert _worker_secret is not None, "worker used before its initializer ran"
    return decrypt_to_slot_integers(_worker_secret, ciphertexts, slots)


class DecryptionPool:
    """Decrypts chunks on `workers` processes (0: in this process, one chunk after another)."""

    def __init__(self, secret_context: ts.Context, workers: int) -> None:
        self._secret = secret_context
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        if workers > 0:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                initargs=(bytes(secret_context.serialize(save_secret_key=True)),))

    def slot_integers(self, chunks: list[list[bytes]], slots: int) -> list[np.ndarray]:
        """Each chunk's rounded slot integers, in order; all chunks are decrypted before any is returned."""
        if self._executor is None:
            return [decrypt_to_slot_integers(self._secret, ciphertexts, slots) for ciphertexts in chunks]
        futures = [self._executor.submit(_decrypt_in_worker, ciphertexts, slots) for ciphertexts in chunks]
        return [future.result() for future in futures]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> DecryptionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
