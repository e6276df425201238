"""A node packs only in the key authority's layouts, whatever a round plan says."""

import pytest

from protos.fedxray.v1 import fedxray_pb2 as pb
from services.common.errors import MalformedChunkError
from services.hospital_node.update_stream import require_signed_layout

PUBLIC = pb.PublicContext(bits=10, fields_per_slot=3, max_participants=8, statistics_bits=37)


def test_plans_in_the_key_authoritys_layouts_pass() -> None:
    require_signed_layout(pb.RoundPlan(round_id=1, bits=10, fields_per_slot=3, max_participants=8), PUBLIC)
    require_signed_layout(pb.RoundPlan(round_id=2, head_statistics=True, bits=37, fields_per_slot=1,
                                       max_participants=8), PUBLIC)


@pytest.mark.parametrize("plan", [
    # A statistics round packing update fields: unpacked wide, its slots would show the carries between fields.
    pb.RoundPlan(round_id=3, head_statistics=True, bits=10, fields_per_slot=3, max_participants=8),
    # An update round in the statistics layout, or with less headroom than the key authority's n_max.
    pb.RoundPlan(round_id=3, bits=37, fields_per_slot=1, max_participants=8),
    pb.RoundPlan(round_id=3, bits=10, fields_per_slot=3, max_participants=4),
])
def test_a_plan_in_any_other_layout_is_refused(plan: pb.RoundPlan) -> None:
    with pytest.raises(MalformedChunkError, match="round 3 packs"):
        require_signed_layout(plan, PUBLIC)
