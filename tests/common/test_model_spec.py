import numpy as np
import pytest
import torch

from services.common.errors import SpecMismatchError
from services.common.ml.model_spec import flatten_state, parameter_spec, restore_state


def _net(classes: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4, classes))


def test_flatten_then_restore_is_identity() -> None:
    state = _net(2).state_dict()
    spec = parameter_spec(state)
    flat = flatten_state(state)
    assert flat.shape == (spec.count,)
    restored = restore_state(state, flat + 1.0, spec)
    local = ("running_mean", "running_var", "num_batches_tracked")
    assert any(name.endswith(local) for name in state)
    for name, tensor in state.items():
        if name.endswith(local):  # BatchNorm statistics stay with the hospital
            assert torch.equal(restored[name], tensor)
        else:
            assert torch.allclose(restored[name], tensor + 1.0)


def test_spec_mismatch_names_both_specs() -> None:
    two, three = parameter_spec(_net(2).state_dict()), parameter_spec(_net(3).state_dict())
    with pytest.raises(SpecMismatchError, match=f"expected {two.count}.*got {three.count}"):
        two.require_equal(three)


def test_restore_refuses_a_vector_of_the_wrong_length() -> None:
    state = _net(2).state_dict()
    spec = parameter_spec(state)
    with pytest.raises(SpecMismatchError):
        restore_state(state, np.zeros(spec.count - 1), spec)


def test_resnet50_with_two_classes_aggregates_exactly_its_trainable_parameters() -> None:
    from services.common.ml.models import build_model

    model = build_model("resnet50", 2)
    assert sum(p.numel() for p in model.parameters()) == 23_512_130
    assert parameter_spec(model.state_dict()).count == 23_512_130
