"""A hospital's part of one round, without any network: train from the global model and say what to upload.

The node runs it for every training round; the simulator (`experiments.simulator`)
runs the same code for every simulated hospital. SCAFFOLD's client rule lives here
and nowhere else (its server rule: `services/aggregator/strategies/scaffold.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from services.common.ml.choices import Trainable
from services.common.ml.head_refit import moments_of, penultimate_features, scaled_to, statistics_vector
from services.common.ml.model_spec import ParameterSpec, flatten_named, flatten_state, restore_state
from services.common.ml.trainable import trained_parameters
from services.common.protocol.round_plan import LocalTrainingPlan
from services.hospital_node.config import TrainingSettings
from services.hospital_node.data.local_data import LocalData
from services.hospital_node.head_training import train_head
from services.hospital_node.private_training import PrivateTraining, PrivateTrainingError, train_private
from services.hospital_node.record_privacy import RecordBudgetTarget
from services.hospital_node.trainer import LocalTraining, TrainStats, loss_gradient, train_local


def local_training(plan: LocalTrainingPlan, settings: TrainingSettings) -> LocalTraining:
    """One round's local training: the round's part from the plan, the hospital's own part from its settings."""
    return LocalTraining(plan.epochs, plan.learning_rate, plan.batch_size, plan.optimizer, plan.proximal_mu,
                         settings.imbalance, settings.lr_schedule, settings.augment, settings.freeze_head,
                         adversarial_epsilon=settings.adversarial_epsilon, adversarial_steps=settings.adversarial_steps)


def record_target(plan: LocalTrainingPlan, settings: TrainingSettings, train_images: int) -> RecordBudgetTarget | None:
    """This hospital's record-level DP target: its own settings', else the aggregator's proposal; None: off (always,
    when the hospital turned it off)."""
    if settings.record_dp == "off":
        return None
    epsilon = settings.record_epsilon or (plan.record_epsilon if plan.record_epsilon > 0 else None)
    if epsilon is None:
        return None
    delta = settings.record_delta if settings.record_delta is not None else min(1e-5, 0.1 / max(train_images, 1))
    return RecordBudgetTarget(epsilon, delta, settings.record_rounds)


class ScaffoldClient:
    """SCAFFOLD's client rule (Karimireddy et al., ICML 2020, option I): c_i is this hospital's loss gradient at
    the last global model it trained from; every local step is corrected by c - c_i."""

    def __init__(self, parameter_count: int) -> None:
        self.control = np.zeros(parameter_count)  # c_i

    def accept(self, received_change: np.ndarray) -> None:
        """c_i moves by what the consortium's sum received of its change (clipped, and clamped in secure mode), so
        that c stays the mean of the c_i: a clamped c against exact c_i would add their gap to every step."""
        self.control = self.control + received_change


@dataclass(frozen=True)
class LocalRoundResult:
    upload: np.ndarray  # the update, then under SCAFFOLD the control variate's change
    stats: TrainStats

    def update(self, parameter_count: int) -> np.ndarray:
        return self.upload[:parameter_count]


def train_round(model: nn.Module, data: LocalData, training: LocalTraining, *, device: torch.device,
                generator: torch.Generator, spec: ParameterSpec, global_weights: np.ndarray,
                scaffold: ScaffoldClient | None = None, consortium_control: np.ndarray | None = None,
                private: PrivateTraining | None = None, trainable: Trainable = "all",
                positions: np.ndarray | None = None) -> LocalRoundResult:
    """Train `model`, which holds the global weights, for one round; the upload is `w_local - global_weights`
    (then, under SCAFFOLD, the gradient at the global model minus c_i). `private`: DP-SGD (never with SCAFFOLD,
    whose control variate is a gradient of its own). `trainable` other than `all`: only that part trains, and the
    upload is the update at `positions` only (`services.common.ml.trainable`)."""
    if training.adversarial_epsilon > 0 and (private is not None or trainable == "head"):
        raise PrivateTrainingError("adversarial training needs the images' gradients through every trained layer: "
                                   "it runs in plain local training of all parameters or a part other than the "
                                   "head, not under DP-SGD and not in a head-only round")
    if trainable != "all":
        if scaffold is not None:
            raise PrivateTrainingError(f"SCAFFOLD's control variate needs every parameter trained, not {trainable}")
        assert positions is not None, "a partial round uploads at the trained positions"
        if trainable == "head":
            stats = train_head(model, data, training, device=device, generator=generator,
                               noise_multiplier=private.noise_multiplier if private is not None else None,
                               clip_norm=private.max_grad_norm if private is not None else 1.0)
        elif private is not None:
            stats = train_private(model, data, training, private=private, device=device, augment_generator=generator)
        else:
            stats = train_only(model, trained_parameters(model, trainable), data, training=training, device=device,
                               generator=generator)
        update = flatten_state({k: v.cpu() for k, v in model.state_dict().items()}) - global_weights
        return LocalRoundResult(update[positions], stats)
    if private is not None:
        if scaffold is not None:
            raise PrivateTrainingError("SCAFFOLD's control variate is not supported under DP-SGD")
        stats = train_private(model, data, training, private=private, device=device, augment_generator=generator)
        update = flatten_state({k: v.cpu() for k, v in model.state_dict().items()}) - global_weights
        return LocalRoundResult(update, stats)
    drift, change = None, None
    if scaffold is not None:
        assert consortium_control is not None, "SCAFFOLD needs the consortium's control variate"
        gradient = flatten_named(loss_gradient(model, data, training, device), spec)
        change = gradient - scaffold.control
        drift = restore_state(model.state_dict(), (consortium_control - scaffold.control).astype(np.float32), spec)
    stats = train_local(model, data, training, device=device, generator=generator, drift=drift)
    update = flatten_state({k: v.cpu() for k, v in model.state_dict().items()}) - global_weights
    return LocalRoundResult(update if change is None else np.concatenate([update, change]), stats)


def train_only(model: nn.Module, names: set[str], data: LocalData, *, training: LocalTraining, device: torch.device,
                generator: torch.Generator) -> TrainStats:
    """Plain local training of the named parameters only; every other one stays as it arrived."""
    frozen = [p for name, p in model.named_parameters() if name not in names and p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        return train_local(model, data, training, device=device, generator=generator)
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)


def head_statistics(model: nn.Module, data: LocalData, device: torch.device, clip_norm: float) -> np.ndarray:
    """The head refit's upload: this model's feature statistics on the training images, scaled to the clip norm
    (the scale weighs only this hospital's images: its counts ride in the same vector)."""
    features = penultimate_features(model, data.train_images, device)
    return scaled_to(statistics_vector(moments_of(features, data.train_labels, data.num_classes)), clip_norm)
