"""`head` rounds: DP-SGD on the classifier head over frozen features, per patient where patients are known.

The per-example gradients are checked against torch.func, the per-patient clip against its bound, and the DP
property itself (an example's gradient does not depend on the other examples of its batch) for every model and
mode DP accepts; the same check must catch a BatchNorm layer in train mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from scripts.launcher import record_epsilon_text
from services.common.ml.model_spec import flatten_state, parameter_spec
from services.common.ml.models import ARCHITECTURES, PER_EXAMPLE_ARCHITECTURES, FrozenBatchNorm2d, build_model
from services.common.ml.trainable import TRAINABLE, classifier_head, trained_parameters, trained_positions
from services.hospital_node.data.local_data import LocalData
from services.hospital_node.data.synthetic_xray import MAX_IMAGES_PER_PATIENT, synthetic_patients
from services.hospital_node.head_training import clipped_unit_sum, frozen_features, per_example_gradients, train_head
from services.hospital_node.local_round import train_round
from services.hospital_node.private_training import PrivateTraining, PrivateTrainingError, require_private_model
from services.hospital_node.trainer import LocalTraining

pytestmark = pytest.mark.unit
CPU = torch.device("cpu")


def _features(count: int, dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(count, dim, generator=generator)
    features[: count // 2] *= 5.0  # some large gradients, so that a clip bites on some units only
    return features, torch.randint(0, 2, (count,), generator=generator)


def test_closed_form_per_example_gradients_are_torch_funcs() -> None:
    features, labels = _features(9)
    head = nn.Linear(6, 2)
    weight_grads, bias_grads, losses = per_example_gradients(head.weight.detach(), head.bias.detach(), features,
                                                              labels)

    def loss(parameters: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(head, parameters, (x[None],)), y[None])

    reference = vmap(grad(loss), in_dims=(None, 0, 0))(dict(head.named_parameters()), features, labels)
    torch.testing.assert_close(weight_grads, reference["weight"])
    torch.testing.assert_close(bias_grads, reference["bias"])
    torch.testing.assert_close(losses, nn.functional.cross_entropy(head(features), labels, reduction="none"))


def test_a_patient_with_k_images_moves_the_clipped_sum_by_at_most_c() -> None:
    features, labels = _features(12)
    head = nn.Linear(6, 2)
    nn.init.zeros_(head.weight)  # every example's gradient is then (p - y) x f with p = 1/2: none vanishes
    clip = 0.5
    patients = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 4, 5])  # patient 0 holds 4 images
    features[:4], labels[:4] = features[0] * 4 + 0.1 * torch.randn(4, 6), 1  # alike: their gradients add up
    grads = per_example_gradients(head.weight.detach(), head.bias.detach(), features, labels)[:2]
    with_all = clipped_unit_sum(*grads, patients, clip)
    keep = patients != 0
    without = clipped_unit_sum(grads[0][keep], grads[1][keep], patients[keep], clip)
    moved = torch.sqrt((with_all[0] - without[0]).pow(2).sum() + (with_all[1] - without[1]).pow(2).sum())
    assert with_all[2] == 6 and without[2] == 5
    assert moved <= clip * (1 + 1e-5)
    # Per image, the same patient would move it by up to 4 C: each of its images clipped on its own.
    per_image = clipped_unit_sum(*grads, torch.arange(12), clip)
    per_image_without = clipped_unit_sum(grads[0][keep], grads[1][keep], torch.arange(12)[keep], clip)
    moved_images = torch.sqrt((per_image[0] - per_image_without[0]).pow(2).sum()
                              + (per_image[1] - per_image_without[1]).pow(2).sum())
    assert moved_images > 3 * clip


def test_synthetic_patients_hold_one_to_four_images_of_one_class() -> None:
    labels = np.random.default_rng(1).integers(0, 2, 400)
    patients = synthetic_patients(labels, seed=3)
    sizes = np.bincount(patients)
    assert sizes.min() >= 1 and sizes.max() <= MAX_IMAGES_PER_PATIENT and 1.5 < sizes.mean() < 3.5
    assert all(len(set(labels[patients == p])) == 1 for p in range(sizes.size))
    assert np.array_equal(patients, synthetic_patients(labels, seed=3))


def _data(count: int, patients: torch.Tensor | None = None) -> LocalData:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 1, 16, 16, generator=generator)
    labels = torch.randint(0, 2, (count,), generator=generator)
    images[labels == 1, :, 4:8, 4:8] += 0.8  # something to learn
    return LocalData(images, labels, images[:8], labels[:8], 2, train_patients=patients)


def test_head_training_moves_the_head_only_and_uploads_only_its_positions() -> None:
    model = build_model("tiny-gn", 2, seed=0)
    spec = parameter_spec(model.state_dict())
    initial = flatten_state(model.state_dict())
    positions = trained_positions(model, spec, "head")
    patients = torch.from_numpy(synthetic_patients(_data(48).train_labels.numpy(), 0))
    result = train_round(model, _data(48, patients), LocalTraining(3, 0.05, 8), device=CPU,
                         generator=torch.Generator().manual_seed(0), spec=spec, global_weights=initial,
                         private=PrivateTraining(1.0, 1.0), trainable="head", positions=positions)
    after = flatten_state(model.state_dict())
    moved = np.flatnonzero(after != initial)
    assert moved.size and set(moved) <= set(positions.tolist())
    assert result.upload.shape == positions.shape
    np.testing.assert_allclose(result.upload, (after - initial)[positions], rtol=1e-6)
    head = classifier_head(model)
    assert positions.size == head.weight.numel() + head.bias.numel()
    # Steps: 3 epochs of ceil(patients / 8) Poisson steps over patients.
    assert result.stats.steps == 3 * int(np.ceil(torch.unique(patients).numel() / 8))


def test_non_private_head_training_learns_on_frozen_features() -> None:
    model = build_model("tiny-gn", 2, seed=0)
    data = _data(96)
    before = nn.functional.cross_entropy(model(data.train_images), data.train_labels).item()
    train_head(model, data, LocalTraining(30, 0.05, 16), device=CPU, generator=torch.Generator().manual_seed(0))
    features = frozen_features(model, data, CPU)
    after = nn.functional.cross_entropy(classifier_head(model)(features), data.train_labels).item()
    assert after < before


def _example_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, trainable: str) -> torch.Tensor:
    """Example 0's gradient as computed inside this batch: its own loss's gradient through a train-mode forward
    pass of the whole batch for `all` and `last_block` (what Opacus's per-sample gradients assume is that
    example's alone); the closed form on frozen eval-mode features for `head`."""
    if trainable == "head":
        features = frozen_features(model, LocalData(images, labels, images, labels, 2), CPU)
        head = classifier_head(model)
        weight, bias, _ = per_example_gradients(head.weight.detach(), head.bias.detach(), features, labels)
        return torch.cat([weight[0].flatten(), bias[0].flatten()])
    names = trained_parameters(model, trainable)  # type: ignore[arg-type]
    trained = [p for name, p in model.named_parameters() if name in names]
    model.train()
    torch.manual_seed(0)  # the same dropout and stochastic-depth draws (EfficientNet) for both batches
    loss = nn.functional.cross_entropy(model(images)[:1], labels[:1])
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, trained)])


def _depends_on_the_batch(model: nn.Module, trainable: str) -> bool:
    generator = torch.Generator().manual_seed(4)
    images = torch.rand(6, 1, 16, 16, generator=generator)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    other = images.clone()
    other[1:] = torch.rand(5, 1, 16, 16, generator=generator) * 3.0  # every other example changed
    first = _example_gradient(model, images, labels, trainable)
    second = _example_gradient(model, other, labels, trainable)
    return not torch.allclose(first, second, rtol=1e-4, atol=1e-6)


def _accepted_by_dp(architecture: str, trainable: str) -> bool:
    try:
        require_private_model(build_model(architecture, 2, seed=0), architecture, trainable)  # type: ignore[arg-type]
    except PrivateTrainingError:
        return False
    return True


DP_ACCEPTS = [(architecture, trainable) for architecture in ARCHITECTURES for trainable in TRAINABLE
              if _accepted_by_dp(architecture, trainable)]


def test_dp_accepts_the_per_example_architectures_only() -> None:
    assert {architecture for architecture, _ in DP_ACCEPTS} == set(PER_EXAMPLE_ARCHITECTURES)
    assert ("resnet50-bn-frozen", "all") not in DP_ACCEPTS and ("resnet50-bn-frozen", "last_block") in DP_ACCEPTS


@pytest.mark.parametrize(("architecture", "trainable"), DP_ACCEPTS)
def test_an_examples_gradient_does_not_depend_on_the_rest_of_its_batch(architecture: str, trainable: str) -> None:
    """Every architecture in every mode DP-SGD accepts (the validator decides which, so a model it starts accepting
    is checked here too). A frozen-BatchNorm model gets statistics that are not the identity's first."""
    model = build_model(architecture, 2, seed=0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.mean.normal_(0.0, 0.3)
                module.var.uniform_(0.5, 2.0)
    assert not _depends_on_the_batch(model, trainable)


def test_head_on_a_batchnorm_model_is_per_example_too() -> None:
    """A BatchNorm model (`tiny`) for `head`: its statistics frozen in eval mode while the features are computed."""
    assert not _depends_on_the_batch(build_model("tiny", 2, seed=0), "head")


def test_the_check_catches_batchnorm_in_train_mode() -> None:
    """The same check on a BatchNorm model trained whole: its batch statistics mix the examples."""
    assert _depends_on_the_batch(build_model("tiny", 2, seed=0), "all")


def test_without_patient_ids_the_unit_is_the_image_and_every_epsilon_says_so() -> None:
    images = _data(8)
    assert images.privacy_unit == "image" and images.unit_count == 8
    assert torch.equal(images.privacy_units(), torch.arange(8))
    patients = _data(8, torch.tensor([0, 0, 1, 1, 1, 2, 3, 3]))
    assert patients.privacy_unit == "patient" and patients.unit_count == 4
    assert record_epsilon_text({"record_epsilon_max": 7.93, "record_epsilon_unit": "image"}) == "7.93 per image"
    assert record_epsilon_text({"record_epsilon_max": 7.93}) == "7.93 per image"  # a row without a unit: images
    assert record_epsilon_text({"record_epsilon_max": 7.93, "record_epsilon_unit": "patient"}) == "7.93 per patient"
    assert record_epsilon_text({}) == "-"
