"""What the key authority publishes: the public CKKS context and the layouts it unpacks sums in."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.protocol.round_plan import SumLayout
from services.common.secure_sum.packing import FieldLayout


def unpacking_layout(sum_layout: SumLayout, update: FieldLayout, statistics: FieldLayout) -> FieldLayout:
    """The one mapping from a sum's layout to the fields it is packed and unpacked in."""
    return statistics if sum_layout is SumLayout.STATISTICS else update


@dataclass(frozen=True)
class PublicKeyInfo:
    context: bytes  # serialized, public key only
    key_id: str
    update_layout: FieldLayout
    statistics_layout: FieldLayout
    slots: int  # per ciphertext
    min_participants: int  # fewest distinct attested nodes in a decryptable sum
    mask_agreement_key: bytes = b""  # the key authority's X25519 public key, raw

    @property
    def max_participants(self) -> int:
        return self.update_layout.max_participants

    def layout_for(self, sum_layout: SumLayout) -> FieldLayout:
        return unpacking_layout(sum_layout, self.update_layout, self.statistics_layout)
