"""The aggregator's initial weights file: checked against the model, never half-loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from services.common.errors import SpecMismatchError
from services.common.ml.initial_weights import load_initial_weights
from services.common.ml.models import FrozenBatchNorm2d, build_model
from tests.imagenet_weights import imagenet_style_resnet50


def _save(state: object, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_torchvision_resnet_state_dict_loads_with_an_imagenet_sized_head_left_seeded(tmp_path: Path) -> None:
    # A torchvision ResNet-18 as a user would download it: BatchNorm (its running statistics), 1,000 classes.
    torch.manual_seed(7)
    imagenet = torchvision.models.resnet18(num_classes=1000)
    path = _save(imagenet.state_dict(), tmp_path / "resnet18.pt")
    model = build_model("resnet18", num_classes=2, seed=3)
    seeded_head = model[1].fc.weight.detach().clone()
    kept = load_initial_weights(model, path)
    assert kept == ["1.fc.bias", "1.fc.weight"]
    assert torch.equal(model[1].conv1.weight, imagenet.conv1.weight)
    # BatchNorm's affine parameters become GroupNorm's; its running statistics have no place here.
    assert torch.equal(model[1].layer4[1].bn2.weight, imagenet.layer4[1].bn2.weight)
    assert torch.equal(model[1].fc.weight, seeded_head)


def test_imagenet_style_batchnorm_weights_load_frozen_with_their_statistics(tmp_path: Path) -> None:
    imagenet = imagenet_style_resnet50(tmp_path / "resnet50-imagenet.pt")
    model = build_model("resnet50-bn-frozen", num_classes=2, seed=3)
    assert load_initial_weights(model, tmp_path / "resnet50-imagenet.pt") == ["1.fc.bias", "1.fc.weight"]
    bn = imagenet.layer3[2].bn2
    frozen = model[1].layer3[2].bn2
    assert isinstance(frozen, FrozenBatchNorm2d)
    for ours, theirs in ((frozen.mean, bn.running_mean), (frozen.var, bn.running_var), (frozen.weight, bn.weight),
                         (frozen.bias, bn.bias)):
        assert torch.equal(ours, theirs)
    # The same features as torchvision's model in eval mode, in train mode too (nothing in it is a batch statistic).
    # In float64: the two paths sum the grey channel and apply the statistics in another order, and in float32 that
    # gap depends on the processor's kernels (0.1 of a 1e-3 tolerance here, 0.28 with AVX2's); in float64 it is ~1e-12.
    grey = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    imagenet.fc = torch.nn.Identity()
    model[1].fc = torch.nn.Identity()
    imagenet.double()
    model.double()
    with torch.no_grad():
        expected = imagenet(grey.expand(-1, 3, -1, -1))
        torch.testing.assert_close(model.eval()(grey), expected, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(model.train()(grey), expected, rtol=1e-7, atol=1e-9)
    # Frozen: no BatchNorm tensor is a parameter, so no optimizer step can move one.
    assert not any(".bn" in name or "downsample.1" in name for name, _ in model.named_parameters())


def test_frozen_batchnorm_refuses_weights_without_statistics(tmp_path: Path) -> None:
    """A GroupNorm model's file has no statistics: half-loading it would normalise with the initial ones."""
    path = _save(build_model("resnet50", 2, seed=0).state_dict(), tmp_path / "groupnorm.pt")
    with pytest.raises(SpecMismatchError, match=r"missing keys: 1\.bn1\.mean"):
        load_initial_weights(build_model("resnet50-bn-frozen", 2, seed=0), path)


def test_own_state_dict_round_trips_including_the_head(tmp_path: Path) -> None:
    source = build_model("tiny-gn", num_classes=2, seed=11)
    path = _save(source.state_dict(), tmp_path / "tiny.pt")
    model = build_model("tiny-gn", num_classes=2, seed=12)
    assert load_initial_weights(model, path) == []
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), source.state_dict().items(), strict=True):
        assert torch.equal(ours, theirs), name


def test_weights_of_another_architecture_are_refused_naming_keys_and_nothing_loads(tmp_path: Path) -> None:
    path = _save(build_model("resnet18", num_classes=2).state_dict(), tmp_path / "resnet18.pt")
    model = build_model("resnet50", num_classes=2, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SpecMismatchError, match="does not fit this model") as refused:
        load_initial_weights(model, path)
    assert "wrong shapes" in str(refused.value) or "missing keys" in str(refused.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_one_wrong_shape_is_named(tmp_path: Path) -> None:
    state = build_model("tiny-gn", num_classes=2).state_dict()
    state["1.features.0.weight"] = torch.zeros(16, 3, 5, 5)
    path = _save(state, tmp_path / "bad.pt")
    with pytest.raises(SpecMismatchError, match=r"wrong shapes: 1\.features\.0\.weight \(16, 3, 5, 5\)"):
        load_initial_weights(build_model("tiny-gn", num_classes=2), path)


def test_non_finite_values_and_non_state_dicts_are_refused(tmp_path: Path) -> None:
    state = build_model("tiny-gn", num_classes=2).state_dict()
    state["1.features.4.weight"] = torch.full_like(state["1.features.4.weight"], float("nan"))
    with pytest.raises(SpecMismatchError, match="not finite"):
        load_initial_weights(build_model("tiny-gn", num_classes=2), _save(state, tmp_path / "nan.pt"))
    with pytest.raises(SpecMismatchError, match="not a state dict"):
        load_initial_weights(build_model("tiny-gn", num_classes=2), _save([1, 2, 3], tmp_path / "list.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(SpecMismatchError, match="not a readable PyTorch weights file"):
        load_initial_weights(build_model("tiny-gn", num_classes=2), tmp_path / "junk.pt")


def test_a_file_that_runs_code_on_load_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("owned",))

    path = _save({"1.head.weight": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(SpecMismatchError, match="not a readable PyTorch weights file"):
        load_initial_weights(build_model("tiny-gn", num_classes=2), path)
