"""What a node answered to evaluations in secure runs, on disk across restarts: the one participant set it answers
under a key, and the masked values it sent for each of the last models.

Evaluation masks are bound to the key, the set and the model, not to a round (`services.common.secure_sum.masked_evaluation`).
Two rules keep what the aggregator reads to the pooled counts of one set, and both must outlive the process:
- one set per key: the same hospitals' counts pooled over two sets would give, by their difference, one hospital's
  counts. Not only on one model: a confusion matrix's row sums are the validation images per class whatever the
  model, and two nearby models give nearly the same matrices. So the first set a node answers is the only one it
  answers under that key; after a member leaves for good, the consortium has no pooled evaluation until it runs
  under a new key;
- one masked vector per model: a model sent again gets the very values sent before. Evaluated afresh (the node's
  BatchNorm statistics move as it trains), other counts under the same masks would give, by their difference, the
  difference of this hospital's counts. A model whose values are no longer kept gets no second report.
The record is written (atomically, fsynced) before a report leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.common.runtime.atomic_files import read_json, write_json_atomic
from services.common.secure_sum.pairwise_masks import participant_set_hash

# The models whose masked values are kept, to be sent again (a failed round sends its model again at once).
KEPT_VALUES = 8


class EvaluationLedger:
    def __init__(self, path: Path) -> None:
        self._path = path
        stored = read_json(path) or {}
        # key id -> {"set": participant-set hash (hex), "models": {model digest (hex): values | None}, oldest first}
        self._keys: dict[str, dict[str, object]] = stored.get("keys", {})

    def answered_set(self, key_id: str) -> bytes | None:
        """The hash of the one participant set this node answers evaluations for under `key_id`, once it has."""
        entry = self._keys.get(key_id)
        return bytes.fromhex(str(entry["set"])) if entry else None

    def sent(self, key_id: str, model_sha256: bytes) -> tuple[int, ...] | None | bool:
        """The masked values sent for `model_sha256`; True when they were sent and are no longer kept; None when
        this node never evaluated that model."""
        models = self._models(key_id)
        if model_sha256.hex() not in models:
            return None
        values = models[model_sha256.hex()]
        return tuple(int(v) for v in values) if isinstance(values, list) else True

    def record(self, key_id: str, model_sha256: bytes, participants: Sequence[str], values: Sequence[int]) -> None:
        entry = self._keys.setdefault(key_id, {"set": participant_set_hash(participants).hex(), "models": {}})
        if entry["set"] != participant_set_hash(participants).hex():
            raise ValueError(f"evaluations under key {key_id!r} are answered for one participant set only")
        models = self._models(key_id)
        models[model_sha256.hex()] = list(values)
        for old in list(models)[:-KEPT_VALUES]:
            models[old] = None
        write_json_atomic(self._path, {"keys": self._keys})

    def _models(self, key_id: str) -> dict[str, list[int] | None]:
        entry = self._keys.get(key_id, {})
        models = entry.get("models", {})
        assert isinstance(models, dict)
        return models
