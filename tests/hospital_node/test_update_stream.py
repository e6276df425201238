"""A node packs only in the key authority's layouts, whatever a round plan says."""

import pytest

from services.common.errors import MalformedChunkError
from services.common.protocol.public_key import PublicKeyInfo
from services.common.protocol.round_plan import RoundKind, RoundPlan
from services.common.secure_sum.packing import FieldLayout
from services.hospital_node.update_stream import require_signed_layout
from tests.plans import PLAN, STATISTICS_LAYOUT, UPDATE_LAYOUT, packed_in

UPDATE, STATISTICS = UPDATE_LAYOUT, STATISTICS_LAYOUT
PUBLIC = PublicKeyInfo(b"", "key", UPDATE, STATISTICS, 4096, 3)


def test_plans_in_the_key_authoritys_layouts_pass() -> None:
    statistics = packed_in(STATISTICS, round_id=2, kind=RoundKind.HEAD_STATISTICS)
    for plan, layout in ((PLAN, UPDATE), (statistics, STATISTICS)):
        assert plan.layout == layout == PUBLIC.layout_for(plan.sum_layout)
        assert require_signed_layout(plan, PUBLIC) is None  # raises MalformedChunkError when refused


@pytest.mark.parametrize("plan", [
    # A statistics round packing update fields: unpacked wide, its slots would show the carries between fields.
    packed_in(UPDATE, round_id=3, kind=RoundKind.HEAD_STATISTICS),
    # An update round in the statistics layout, or with less headroom than the key authority's n_max.
    packed_in(STATISTICS, round_id=3),
    packed_in(FieldLayout(10, 4, 3), round_id=3),
])
def test_a_plan_in_any_other_layout_is_refused(plan: RoundPlan) -> None:
    with pytest.raises(MalformedChunkError, match="round 3 packs"):
        require_signed_layout(plan, PUBLIC)
