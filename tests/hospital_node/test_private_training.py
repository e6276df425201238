"""DP-SGD in the hospital's trainer: per-example clipping checked against torch.func, noise of the planned size,
the model refused when it cannot be trained per example, and the machinery taken off after training."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn
from torch.func import functional_call, grad, vmap

from services.common.ml.models import FrozenBatchNorm2d, build_model
from services.common.ml.trainable import last_block_parameters
from services.hospital_node.data.local_data import LocalData
from services.hospital_node.private_training import (
    GRAD_SAMPLE_MODES,
    PrivateTraining,
    PrivateTrainingError,
    clipped_patient_sum,
    per_example_module,
    private_optimizer,
    release_module,
    require_private_model,
    train_private,
)
from services.hospital_node.trainer import LocalTraining

pytestmark = pytest.mark.unit
CPU = torch.device("cpu")


def _batch(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 1, 16, 16, generator=generator)
    images[: count // 2] *= 6.0  # some examples with much larger gradients, so that the clip bites on some only
    return images, torch.randint(0, 2, (count,), generator=generator)


def _reference_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example gradients by torch.func, independent of Opacus."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(parameters: dict[str, torch.Tensor], image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, parameters, (image.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, label.unsqueeze(0))

    result: dict[str, torch.Tensor] = vmap(grad(loss), in_dims=(None, 0, 0))(params, images, labels)
    return result


def _per_example_norms(gradients: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in gradients.values()))  # type: ignore[arg-type]


def _dp_gradient(mode: str, clip: float, sigma: float, images: torch.Tensor, labels: torch.Tensor,
                 expected_batch: int) -> dict[str, torch.Tensor]:
    """The gradient Opacus hands the optimizer after one DP-SGD step's clipping and noise (model: tiny-gn)."""
    model = build_model("tiny-gn", 2, seed=1)
    private = PrivateTraining(sigma, clip, mode)  # type: ignore[arg-type]
    module = per_example_module(model, private)
    base = torch.optim.SGD(model.parameters(), lr=0.0)
    optimizer, criterion = private_optimizer(module, base, private, expected_batch=expected_batch, device=CPU)
    optimizer.zero_grad()
    criterion(module(images), labels).backward()
    optimizer.pre_step()  # clip, sum, noise, scale: what step() applies
    gradients = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    release_module(module, model)
    return gradients


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_each_examples_gradient_is_clipped_to_c_as_torch_func_computes_it(mode: str) -> None:
    images, labels = _batch(8)
    reference = _reference_gradients(build_model("tiny-gn", 2, seed=1), images, labels)
    norms = _per_example_norms(reference)
    clip = float(norms.median())
    assert (norms > clip).any() and (norms < clip).any(), "the test needs clipped and unclipped examples"
    factors = torch.clamp(clip / (norms + 1e-6), max=1.0)
    clipped = {name: g * factors.view(-1, *([1] * (g.dim() - 1))) for name, g in reference.items()}
    assert bool((_per_example_norms(clipped) <= clip * (1 + 1e-5)).all())
    expected = {name: g.sum(0) / 8 for name, g in clipped.items()}
    got = _dp_gradient(mode, clip, 0.0, images, labels, expected_batch=8)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)
    unclipped = {name: g.mean(0) for name, g in reference.items()}
    assert any(not torch.allclose(got[n], unclipped[n], rtol=1e-3, atol=1e-6) for n in unclipped), \
        "clipping changed nothing: the test would not notice a missing clip"


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_the_noise_has_standard_deviation_sigma_c_over_the_expected_batch(mode: str) -> None:
    images, labels = _batch(8)
    clip, sigma, expected_batch = 0.5, 2.0, 8
    noiseless = _dp_gradient(mode, clip, 0.0, images, labels, expected_batch)
    noisy = _dp_gradient(mode, clip, sigma, images, labels, expected_batch)
    noise = torch.cat([(noisy[n] - noiseless[n]).flatten() for n in noiseless]).double().numpy()
    target = sigma * clip / expected_batch
    # About 25k coordinates: the sample standard deviation is within 3% of the truth far beyond 5 sigma.
    assert noise.size > 10_000
    assert abs(noise.std() / target - 1) < 0.03
    assert abs(noise.mean()) < 5 * target / math.sqrt(noise.size)


def _data(count: int, seed: int = 0) -> LocalData:
    images, labels = _batch(count, seed)
    return LocalData(images, labels, images[:4], labels[:4], 2)


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_training_runs_through_empty_poisson_batches_and_leaves_no_machinery(mode: str) -> None:
    model = build_model("tiny-gn", 2, seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    # 6 images at an expected batch of 1: about a third of the 30 steps draw an empty batch.
    stats = train_private(model, _data(6), LocalTraining(5, 0.05, 1), private=PrivateTraining(1.0, 1.0, mode),
                          device=CPU, augment_generator=torch.Generator().manual_seed(0))
    assert stats.steps == 30
    assert math.isfinite(stats.mean_loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(not torch.equal(before[name], p) for name, p in model.named_parameters())
    assert all(p.requires_grad and not hasattr(p, "grad_sample") for p in model.parameters())
    assert not any(module._forward_hooks or module._backward_hooks for module in model.modules())


def test_last_block_training_moves_only_the_last_stage_and_the_head() -> None:
    model = build_model("resnet18", 2, seed=0)
    names = last_block_parameters(model)
    assert names and all(".layer4." in f".{n}" or n.startswith("1.fc.") for n in names)
    assert {"1.fc.weight", "1.fc.bias"} <= names
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_private(model, _data(8), LocalTraining(1, 0.05, 4), private=PrivateTraining(1.0, 1.0, "ghost", 8,
                                                                                      "last_block"),
                  device=CPU, augment_generator=torch.Generator().manual_seed(0))
    moved = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    assert moved == names
    assert all(p.requires_grad for p in model.parameters())


def test_efficientnet_per_example_gradients_average_to_the_batch_gradient_and_last_block_is_its_last_stage() -> None:
    # torchvision's MBConv adds its residual in place; the hooks must still see every layer's own input.
    model = build_model("efficientnet-b0", 2, seed=0)
    module = per_example_module(model, PrivateTraining(1.0, 1.0, "hooks"))
    try:
        images, labels = torch.rand(3, 1, 32, 32), torch.tensor([0, 1, 1])
        torch.nn.functional.cross_entropy(module(images), labels, reduction="mean").backward()
        for name, p in model.named_parameters():
            assert p.grad_sample is not None, name
            torch.testing.assert_close(p.grad_sample.mean(0), p.grad, rtol=1e-4,
                                       atol=1e-5 * float(p.grad.abs().max()), msg=name)
    finally:
        release_module(module, model)
    names = last_block_parameters(model)
    assert {"1.classifier.1.weight", "1.features.8.0.weight"} <= names
    assert all(n.startswith(("1.features.7.", "1.features.8.", "1.classifier.")) for n in names)


def test_a_frozen_head_stays_frozen_under_dp() -> None:
    model = build_model("tiny-gn", 2, seed=0)
    head = model[1].head.weight.detach().clone()
    train_private(model, _data(8), LocalTraining(1, 0.05, 4, freeze_head=True), private=PrivateTraining(1.0, 1.0),
                  device=CPU, augment_generator=torch.Generator().manual_seed(0))
    assert torch.equal(model[1].head.weight, head)


@pytest.mark.parametrize("architecture", ["resnet50-bn", "tiny"])
def test_a_batchnorm_model_is_refused_by_name(architecture: str) -> None:
    with pytest.raises(PrivateTrainingError, match="BatchNorm"):
        require_private_model(build_model(architecture, 2, 0), architecture)


@pytest.mark.parametrize("architecture", ["resnet50", "resnet18", "efficientnet-b0", "tiny-gn"])
def test_the_groupnorm_models_pass_opacus_validator(architecture: str) -> None:
    model = build_model(architecture, 2, 0)
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert require_private_model(model, architecture) is None  # raises PrivateTrainingError when refused


def test_frozen_batchnorm_passes_the_validator_for_head_and_last_block_and_is_refused_for_all() -> None:
    model = build_model("resnet50-bn-frozen", 2, 0)
    assert ModuleValidator.validate(model, strict=False) == []  # no BatchNorm left: each is a frozen affine map
    for trainable in ("head", "last_block"):
        assert require_private_model(model, "resnet50-bn-frozen", trainable) is None
    with pytest.raises(PrivateTrainingError, match="frozen .* not all of it"):
        require_private_model(model, "resnet50-bn-frozen", "all")


def test_fedprox_is_refused_under_dp() -> None:
    with pytest.raises(PrivateTrainingError, match="FedProx"):
        train_private(build_model("tiny-gn", 2, 0), _data(8), LocalTraining(1, 0.05, 4, proximal_mu=0.1),
                      private=PrivateTraining(1.0, 1.0), device=CPU, augment_generator=torch.Generator().manual_seed(0))


def test_noise_draws_differ_between_runs_whatever_the_training_seed() -> None:
    """The noise comes from OS entropy: two runs with the same training seed must not share it."""
    images, labels = _batch(8)
    first = _dp_gradient("hooks", 1.0, 1.0, images, labels, 8)
    second = _dp_gradient("hooks", 1.0, 1.0, images, labels, 8)
    assert not np.allclose(first["1.head.weight"].numpy(), second["1.head.weight"].numpy())


def test_last_block_of_a_frozen_batchnorm_model_trains_under_dp_and_its_batchnorm_stays() -> None:
    model = build_model("resnet50-bn-frozen", 2, 0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.var.uniform_(0.5, 2.0)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    images = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    data = LocalData(images, torch.tensor([0, 1] * 4), images, torch.tensor([0, 1] * 4), 2)
    train_private(model, data, LocalTraining(1, 0.05, 4, augment=False), private=PrivateTraining(1.0, 1.0,
                                                                                                 trainable="last_block"),
                  device=CPU, augment_generator=torch.Generator().manual_seed(0))
    moved = {name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])}
    assert moved and all(name.startswith(("1.layer4.", "1.fc.")) for name in moved)
    assert not any(name.endswith((".mean", ".var")) or ".bn" in name for name in moved)


def _patient_module(architecture: str = "tiny-gn") -> tuple[nn.Module, nn.Module, list[nn.Parameter]]:
    model = build_model(architecture, 2, seed=0).train()
    module = per_example_module(model, PrivateTraining(1.0, 1.0, "hooks"), loss_reduction="sum")
    return model, module, [p for p in model.parameters() if p.requires_grad]


def _norm(parts: list[torch.Tensor]) -> float:
    return float(torch.sqrt(sum(p.pow(2).sum() for p in parts)))


def test_without_a_binding_clip_the_patient_sum_is_the_batch_gradient() -> None:
    """Each image's gradient, summed per patient and over patients, with a clip that never binds: the gradient of
    the batch's summed loss (so no image is lost or counted twice across physical batches)."""
    model, module, trained = _patient_module()
    images, labels = _batch(10)
    patients = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 5])
    sums, _ = clipped_patient_sum(module, trained, images, labels=labels, patients=patients, clip_norm=1e9,
                                  physical_batch=4)
    release_module(module, model)
    model.zero_grad()
    nn.functional.cross_entropy(model(images), labels, reduction="sum").backward()
    for summed, parameter in zip(sums, trained):
        torch.testing.assert_close(summed, parameter.grad, rtol=1e-4, atol=1e-5)


def test_a_patient_with_k_images_moves_the_opacus_clipped_sum_by_at_most_c() -> None:
    model, module, trained = _patient_module()
    images, labels = _batch(12)
    images[:4] = images[0]  # patient 0: four alike images, whose gradients add up
    labels[:4] = labels[0]
    patients = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 4, 5])
    clip = 0.05
    keep = patients != 0
    with_all, _ = clipped_patient_sum(module, trained, images, labels=labels, patients=patients, clip_norm=clip,
                                      physical_batch=5)
    without, _ = clipped_patient_sum(module, trained, images[keep], labels=labels[keep], patients=patients[keep],
                                     clip_norm=clip, physical_batch=5)
    assert _norm([a - b for a, b in zip(with_all, without)]) <= clip * (1 + 1e-4)
    # Per image, the same patient would move it by up to 4 C.
    per_image, _ = clipped_patient_sum(module, trained, images, labels=labels, patients=torch.arange(12),
                                       clip_norm=clip, physical_batch=5)
    per_image_without, _ = clipped_patient_sum(module, trained, images[keep], labels=labels[keep],
                                               patients=torch.arange(12)[keep], clip_norm=clip, physical_batch=5)
    release_module(module, model)
    assert _norm([a - b for a, b in zip(per_image, per_image_without)]) > 3 * clip


def test_with_patients_dp_sgd_samples_patients_and_trains_the_part_asked_for() -> None:
    model = build_model("tiny-gn", 2, seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    images, labels = _batch(16)
    patients = torch.arange(16) // 2  # eight patients of two images
    data = replace(LocalData(images, labels, images[:4], labels[:4], 2), train_patients=patients)
    stats = train_private(model, data, LocalTraining(2, 0.05, 4), private=PrivateTraining(1.0, 1.0,
                                                                                          trainable="last_block"),
                          device=CPU, augment_generator=torch.Generator().manual_seed(0))
    assert stats.steps == 2 * 2  # two epochs of ceil(8 patients / 4) Poisson steps: patients, not images
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert moved and moved <= last_block_parameters(model)
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # the machinery is off again
