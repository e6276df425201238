import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from services.common.errors import PackingError
from services.common.secure_sum.packing import (
    FieldLayout,
    headroom_bits,
    pack_fields,
    to_centered,
    to_modular,
    unpack_fields,
)


def test_headroom_is_ceil_log2_of_participants() -> None:
    assert [headroom_bits(n) for n in (1, 2, 3, 4, 5, 8, 9, 20)] == [0, 1, 2, 2, 3, 3, 4, 5]


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 16), fields=st.integers(1, 4), n_max=st.integers(1, 32), data=st.data())
def test_unpack_of_pack_is_identity(bits: int, fields: int, n_max: int, data: st.DataObject) -> None:
    assume((bits + headroom_bits(n_max)) * fields <= 62)
    layout = FieldLayout(bits=bits, max_participants=n_max, fields_per_slot=fields)
    values = data.draw(hnp.arrays(np.int64, st.integers(0, 200), elements=st.integers(0, (1 << bits) - 1)))
    assert np.array_equal(unpack_fields(pack_fields(values, layout), layout, values.size), values)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 12), n_max=st.integers(1, 20), data=st.data())
def test_sum_of_n_max_packed_vectors_unpacks_to_modular_sum(bits: int, n_max: int, data: st.DataObject) -> None:
    layout = FieldLayout(bits=bits, max_participants=n_max, fields_per_slot=3)
    size = data.draw(st.integers(1, 50))
    vectors = [
        data.draw(hnp.arrays(np.int64, size, elements=st.integers(0, (1 << bits) - 1))) for _ in range(n_max)
    ]
    slot_sum = sum(pack_fields(v, layout) for v in vectors)
    expected = np.mod(np.sum(vectors, axis=0), 1 << bits)
    assert np.array_equal(unpack_fields(slot_sum, layout, size), expected)


def test_pack_refuses_values_outside_the_field() -> None:
    layout = FieldLayout(bits=4, max_participants=2, fields_per_slot=3)
    with pytest.raises(PackingError):
        pack_fields(np.array([16]), layout)
    with pytest.raises(PackingError):
        pack_fields(np.array([-1]), layout)


def test_centered_inverts_modular_inside_half_range() -> None:
    values = np.arange(-512, 512)
    assert np.array_equal(to_centered(to_modular(values, 10), 10), values)
    assert to_centered(np.array([512]), 10)[0] == -512


def test_layout_refuses_slots_wider_than_int64() -> None:
    with pytest.raises(PackingError, match="exceed"):
        FieldLayout(bits=16, max_participants=32, fields_per_slot=4)
