"""Pairwise masks of secure aggregation: Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017, Section 4 (without its dropout recovery:
a round that loses a node is retried as a new attempt with a smaller set instead), and
one more mask per node shared with the key authority, which it removes only for the
manifest's own scope (`authority_mask`).

Nodes i and j in a round attempt's participant set S agree on a key from X25519(i, j),
bound by HKDF to the consortium, the key id, the round, the attempt and S itself. Node
i adds, for every other j in S, +PRG(key_ij) if i < j and -PRG(key_ij) if i > j, mod
2^b, to its field integers before packing. Over the whole of S every mask meets its
negative and the sum is exact; over any proper subset, at least one mask stays, and a
ChaCha20 keystream mod 2^b makes that sum uniform, whatever the updates. The PRG is
ChaCha20 (RFC 8439) from `cryptography`, never numpy's generators, whose output can be
predicted from a few values.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.common.secure_sum.packing import MAX_SLOT_BITS

MASK_DOMAIN = b"fedxray.v1/pairwise-mask"
SET_DOMAIN = b"fedxray.v1/participant-set"
CHACHA_BLOCK = 64


def _frame(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">Q", len(part)) + part for part in parts)


def participant_set_hash(participants: Sequence[str]) -> bytes:
    """SHA-256 naming a participant set, whatever the order it is listed in."""
    return hashlib.sha256(SET_DOMAIN + _frame(*(node.encode() for node in sorted(participants)))).digest()


@dataclass(frozen=True)
class MaskScope:
    """What one attempt's masks are bound to: the consortium, the key, the round, the attempt, the participant set
    and the digest of the whole plan (model, training and codec). Two nodes given different plans make masks that
    never cancel, and a node uploads at most once per round attempt, so a mask never covers two encodings."""

    consortium: str
    key_id: str
    round_id: int
    attempt: int
    participants: tuple[str, ...]
    plan_digest: bytes = b""

    def info(self, low: str, high: str, domain: bytes = MASK_DOMAIN) -> bytes:
        return domain + _frame(self.consortium.encode(), self.key_id.encode(), struct.pack(">Q", self.round_id),
                               struct.pack(">I", self.attempt), participant_set_hash(self.participants),
                               self.plan_digest, low.encode(), high.encode())


@dataclass(frozen=True)
class PeerMask:
    key: bytes  # a ChaCha20 key, 32 bytes
    sign: int  # +1: this node adds the stream; -1: it subtracts it


def peer_masks(node_id: str, private: X25519PrivateKey, peers: Mapping[str, X25519PublicKey],
               *, scope: MaskScope, domain: bytes = MASK_DOMAIN) -> list[PeerMask]:
    """This node's mask with every other member of the scope's participant set (in `domain`: another domain gives
    other streams from the same agreements, as the pooled class counts' do)."""
    if node_id not in scope.participants:
        raise ValueError(f"{node_id!r} is not in the participant set {list(scope.participants)}")
    masks = []
    for peer in sorted(set(scope.participants) - {node_id}):
        if peer not in peers:
            raise KeyError(f"no key-agreement key of participant {peer!r}")
        low, high = sorted((node_id, peer))
        masks.append(PeerMask(_derive(private, peers[peer], scope.info(low, high, domain)),
                              1 if node_id == low else -1))
    return masks


AUTHORITY_DOMAIN = b"fedxray.v1/authority-mask"
AUTHORITY = "key-authority"


def _derive(private: X25519PrivateKey, public: X25519PublicKey, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(private.exchange(public))


def authority_mask(node_id: str, private: X25519PrivateKey, authority: X25519PublicKey,
                   scope: MaskScope) -> PeerMask:
    """The node's mask with the key authority, added like a pairwise mask. Only the key authority can remove it,
    and only for the round, attempt, set and plan it was made for: a sum of other uploads (another round's, say)
    presented under this manifest keeps the masks of its own scope and decrypts to uniform noise."""
    return PeerMask(_derive(private, authority, scope.info(node_id, AUTHORITY, AUTHORITY_DOMAIN)), 1)


def authority_unmasks(private: X25519PrivateKey, nodes: Mapping[str, X25519PublicKey],
                      scope: MaskScope) -> list[PeerMask]:
    """The key authority's side: minus every participant's authority mask, for the scope's participant set."""
    missing = sorted(set(scope.participants) - set(nodes))
    if missing:
        raise KeyError(f"no key-agreement key of participants {missing}")
    return [PeerMask(_derive(private, nodes[node], scope.info(node, AUTHORITY, AUTHORITY_DOMAIN)), -1)
            for node in sorted(set(scope.participants))]


def _word(bits: int) -> np.dtype[np.unsignedinteger]:
    """The smallest unsigned word holding `bits`: its values mod 2^bits stay uniform, as 2^bits divides 2^word."""
    for dtype in (np.uint16, np.uint32, np.uint64):
        if bits <= np.dtype(dtype).itemsize * 8:
            return np.dtype(dtype)
    raise ValueError(f"no mask word holds {bits} bits")


def keystream(key: bytes, offset: int, length: int) -> bytes:
    """Bytes [offset, offset + length) of ChaCha20's keystream under `key` (block counter seeked, nonce zero: every
    key is used for one stream only)."""
    block, skip = divmod(offset, CHACHA_BLOCK)
    # cryptography's 16-byte ChaCha20 nonce: the little-endian 32-bit block counter, then the 96-bit nonce.
    encryptor = Cipher(ChaCha20(key, struct.pack("<I", block) + bytes(12)), mode=None).encryptor()
    return encryptor.update(bytes(skip + length))[skip:]


def mask_values(masks: Sequence[PeerMask], start: int, count: int, bits: int) -> np.ndarray:
    """This node's total mask for field values [start, start + count), in [0, 2^bits); any slice of it equals the
    same slice of the whole, so chunks are masked independently."""
    if not 1 <= bits <= MAX_SLOT_BITS:
        raise ValueError(f"masks of {bits}-bit fields: 1 to {MAX_SLOT_BITS} bits, so that they fit an int64")
    word = _word(bits)
    # Summed in the word itself, wrapping mod 2^word: 2^bits divides 2^word, so the sum mod 2^bits is exact, and each
    # keystream is added as it comes, with no masking or widening of its own. One reduction at the end.
    total: np.ndarray = np.zeros(count, dtype=word)
    for mask in masks:
        stream = np.frombuffer(keystream(mask.key, start * word.itemsize, count * word.itemsize), dtype=word)
        if mask.sign > 0:
            np.add(total, stream, out=total)
        else:
            np.subtract(total, stream, out=total)
    np.bitwise_and(total, word.type((1 << bits) - 1), out=total)
    return total.astype(np.int64)
