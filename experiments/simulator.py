"""The consortium in one process, on SYNTHETIC data: the services' own parts, without their processes.

Every hospital runs the node's local round (`services/hospital_node/local_round.py`:
the trainer, and SCAFFOLD's client rule), the server runs the aggregator's strategy
(`services/aggregator/strategies`, built by the same factory from the same settings),
and with `secure_codec` every upload goes through the secure codec (clip, clamp,
randomized rounding, Skellam noise, mod 2^b) as the nodes encode it and the key
authority returns it, less the encryption, which the tests show exact. No privacy
is claimed for a simulation; it picks settings quickly, and `experiments.experiment`
then measures the chosen ones on the real services.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from experiments.centralized import pool
from scripts.launcher import ConsortiumConfig, SettingValues
from services.aggregator.pooled_evaluation import pool_reports
from services.aggregator.round_planner import training_plan
from services.aggregator.strategies.factory import build_strategy
from services.common.ml.evaluation_report import EvaluationReport
from services.common.ml.head_refit import (
    class_estimates,
    lda_head,
    moments_from_statistics,
    moments_of,
    penultimate_features,
    scaled_to,
    set_head,
    statistics_vector,
)
from services.common.ml.model_spec import flatten_state, parameter_spec, restore_state
from services.common.ml.models import best_device, build_model
from services.common.ml.trainable import trained_parameters, trained_positions
from services.common.runtime.atomic_files import append_line_atomic
from services.common.secure_sum.ckks_params import ckks_parameters, field_layout, statistics_layout
from services.common.secure_sum.packing import to_modular
from services.common.secure_sum.quantize import clip_l2
from services.common.secure_sum.update_codec import (
    QuantizationPlan,
    clamp_threshold,
    decode_mean_update,
    encode_update,
    plan_quantization,
    plan_statistics,
)
from services.hospital_node.config import DataSettings, TrainingSettings
from services.hospital_node.data.local_data import LocalData, load_local_data
from services.hospital_node.head_training import train_head
from services.hospital_node.local_round import ScaffoldClient, local_training, train_only, train_round
from services.hospital_node.trainer import evaluate, train_local

RefitScoring = Literal["none", "eval", "install"]


@dataclass(frozen=True)
class Simulation:
    """What only a simulation chooses; every other choice is a service setting (`SettingValues`)."""

    mode: Literal["federated", "centralized"] = "federated"
    nodes: int = 5
    images_per_node: int | None = None  # SYNTHETIC images per hospital; None: the nodes' synthetic_images
    # 1: clamp every upload's coordinates as the secure codec does (0: clip only)
    secure_clamp: bool = False
    # 1: the mean upload is what the key authority would return: every upload encoded by the secure codec
    secure_codec: bool = False
    # "eval": also score each round's model with its head refit by LDA on the pooled training features; "install":
    # the refit head replaces the averaged one every round
    head_refit_each_round: RefitScoring = "none"
    # with "eval": also score the head refit from statistics that took the secure sum, at each noise variance
    refit_noise_variances: tuple[float, ...] = ()
    seed: int = 0  # the data, split and initial model; training from seed + 1, codec noise from seed + 3


def consortium_config(values: SettingValues, simulation: Simulation) -> ConsortiumConfig:
    """The consortium a simulation stands for: the same settings, the data and model seeded by `seed`."""
    seeded = {"synthetic_seed": simulation.seed, "model_seed": simulation.seed, **values}
    return ConsortiumConfig(run_dir=Path("."), nodes=simulation.nodes, settings=seeded,
                            images_per_node=simulation.images_per_node, insecure=True)


def pooled_evaluation(model: torch.nn.Module, data: LocalData, device: torch.device) -> dict[str, float]:
    counts = evaluate(model, data.val_images, data.val_labels, num_classes=data.num_classes, device=device)
    pooled = pool_reports([EvaluationReport("pooled", 0, counts)]).as_dict()
    return {k: v for k, v in pooled.items() if isinstance(v, float)}


def sent(upload: np.ndarray, clip_norm: float, clamp: bool) -> np.ndarray:
    """What the aggregator's sum holds of one upload, less rounding and noise: L2-clipped, and with `clamp`
    clamped per coordinate where the secure codec clamps."""
    clipped = clip_l2(upload, clip_norm)
    if not clamp:
        return clipped
    bound = clamp_threshold(upload.size, clip_norm)
    return np.clip(clipped, -bound, bound)


def secure_sum(vectors: list[np.ndarray], plan: QuantizationPlan, rng: np.random.Generator) -> np.ndarray:
    """The sum the key authority would return of these vectors, each encoded as a node encodes it in secure mode
    (one rounding piece per node), decoded as the aggregator decodes it."""
    total = np.zeros(vectors[0].size, dtype=np.int64)
    for vector in vectors:
        total = (total + encode_update(vector, plan, rng).astype(np.int64)) % (1 << plan.bits)
    return decode_mean_update(to_modular(total, plan.bits), plan, len(vectors)) * len(vectors)


class Codec:
    """The quantization plans of the consortium's secure sums, as the aggregator's planner makes them."""

    def __init__(self, config: ConsortiumConfig) -> None:
        self._aggregator, authority = config.aggregator_settings(), config.key_authority_settings()
        params = ckks_parameters(authority.max_participants)
        self._update = field_layout(params, authority.max_participants, authority.bits)
        self._statistics = statistics_layout(params, authority.max_participants)

    def update_plan(self, dimension: int) -> QuantizationPlan:
        a, layout = self._aggregator, self._update
        return plan_quantization(dimension, a.clip_norm, layout.bits, max_participants=layout.max_participants,
                                 min_participants=a.min_participants,
                                 noise_kind=a.noise_kind, noise_variance=a.noise_variance)

    def statistics_plan(self, dimension: int, noise_variance: float) -> QuantizationPlan:
        a, layout = self._aggregator, self._statistics
        return plan_statistics(dimension, a.clip_norm, layout.bits, max_participants=layout.max_participants,
                               min_participants=a.min_participants,
                               noise_kind=a.noise_kind, noise_variance=noise_variance)


def refit_head(model: torch.nn.Module, parts: list[LocalData], features: list[torch.Tensor], shrinkage: float) -> None:
    """Replace the head by LDA on the moments of the hospitals' training features, summed over hospitals."""
    moments = [moments_of(f, p.train_labels, p.num_classes) for f, p in zip(features, parts)]
    set_head(model, *lda_head(sum(moments[1:], moments[0]), shrinkage))


def refit_head_securely(features: list[torch.Tensor], parts: list[LocalData], codec: Codec, clip_norm: float,
                        shrinkage: float, noise_variance: float, rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """The head LDA fits on the statistics the services' one secure sum gives (each hospital's statistics vector
    scaled to the clip norm, in the statistics layout), and the codec's errors: against the exact sum of the same
    scaled vectors."""
    classes, dim = parts[0].num_classes, features[0].shape[1]
    vectors = [scaled_to(statistics_vector(moments_of(f, p.train_labels, classes)), clip_norm)
               for f, p in zip(features, parts)]
    total = secure_sum(vectors, codec.statistics_plan(vectors[0].size, noise_variance), rng)
    moments = moments_from_statistics(total, classes, dim)
    _, means, covariance = class_estimates(moments)
    _, exact_means, exact_cov = class_estimates(moments_from_statistics(np.sum(vectors, axis=0), classes, dim))
    contrast = exact_means[-1] - exact_means[0]
    detail: dict[str, object] = {
        "contrast_error": round(float(np.linalg.norm(means[-1] - means[0] - contrast) / np.linalg.norm(contrast)), 6),
        "covariance_error": round(float(np.linalg.norm(covariance - exact_cov) / np.linalg.norm(exact_cov)), 6),
        "trace_ratio": round(float(np.trace(covariance) / np.trace(exact_cov)), 6)}
    weight, bias = lda_head(moments, shrinkage)
    return weight, bias, detail


def simulate(name: str, values: SettingValues, simulation: Simulation, out: Path) -> None:
    """Run the consortium of `values` in this process, a row per round to `out/<name>.jsonl`."""
    config = consortium_config(values, simulation)
    aggregator, node = config.aggregator_settings(), config.node_settings(0)
    if node.torch_threads:
        torch.set_num_threads(node.torch_threads)
    device = best_device()
    parts = [load_local_data(DataSettings.of(config.node_settings(i))) for i in range(simulation.nodes)]
    pooled = pool(parts)
    model = build_model(aggregator.architecture, aggregator.num_classes, aggregator.model_seed)
    spec = parameter_spec(model.state_dict())
    weights = flatten_state(model.state_dict()).astype(np.float64)
    positions = trained_positions(model, spec, aggregator.trainable)
    strategy = build_strategy(aggregator, spec.count, positions)
    codec = Codec(config)
    generator = torch.Generator().manual_seed(simulation.seed + 1)
    refit_rng = np.random.default_rng(simulation.seed + 2)
    codec_rng = np.random.default_rng(simulation.seed + 3)
    if simulation.secure_codec and strategy.drift_correction:
        raise SystemExit("secure_codec=1 does not simulate drift correction; use secure_clamp=1 with it")
    scaffolds = [ScaffoldClient(spec.count) if strategy.drift_correction else None for _ in parts]
    log_path = out / f"{name}.jsonl"
    log_path.unlink(missing_ok=True)
    for round_id in range(1, aggregator.rounds + 1):
        started = time.monotonic()
        plan = training_plan(aggregator, round_id)
        training = local_training(plan, TrainingSettings.of(node))
        norms: list[float] = []
        kept: list[float] = []  # per hospital, the share of its control variate change's norm the sum received
        if simulation.mode == "centralized":  # no FedProx anchor: with one party there is no global model
            centralized = replace(training, proximal_mu=0.0)
            if plan.trainable == "head":
                train_head(model, pooled, centralized, device=device, generator=generator)
            elif plan.trainable == "last_block":
                train_only(model, trained_parameters(model, "last_block"), pooled, training=centralized, device=device,
                           generator=generator)
            else:
                train_local(model, pooled, centralized, device=device, generator=generator)
        else:
            uploads, raw = [], []
            broadcast = strategy.broadcast(weights)
            for part, scaffold in zip(parts, scaffolds):
                model.load_state_dict(restore_state(model.state_dict(), weights.astype(np.float32), spec))
                result = train_round(model, part, training, device=device, generator=generator, spec=spec,
                                     global_weights=weights, scaffold=scaffold,
                                     consortium_control=broadcast[spec.count:], trainable=plan.trainable,
                                     positions=positions)
                norms.append(round(float(np.linalg.norm(result.update(spec.count))), 3))
                uploads.append(sent(result.upload, aggregator.clip_norm, simulation.secure_clamp))
                raw.append(result.upload)
                if scaffold is not None:  # as the node: c_i moves by what the sum received of the change
                    received = uploads[-1][spec.count:]
                    scaffold.accept(received)
                    kept.append(round(float(np.linalg.norm(received) / max(
                        np.linalg.norm(result.upload[spec.count:]), 1e-30)), 3))
            mean_upload = (secure_sum(raw, codec.update_plan(raw[0].size), codec_rng) / len(raw)
                           if simulation.secure_codec else np.mean(uploads, axis=0))
            weights = strategy.apply(weights, mean_upload, len(parts))
            model.load_state_dict(restore_state(model.state_dict(), weights.astype(np.float32), spec))
        extra = _refit_scores(model, parts, pooled, simulation, codec, aggregator.clip_norm,
                              aggregator.head_refit_shrinkage, refit_rng, device)
        if simulation.head_refit_each_round == "install":
            weights = flatten_state({k: v.cpu() for k, v in model.state_dict().items()}).astype(np.float64)
        metrics = pooled_evaluation(model, pooled, device)
        row = {"name": name, "round": round_id, "seconds": round(time.monotonic() - started, 1),
               "learning_rate": training.learning_rate, **metrics, **extra}
        if norms:
            row["update_norms"] = norms  # each hospital's, before clipping
        if kept:
            row["control_change_kept"] = kept
        append_line_atomic(log_path, json.dumps(row))
        _print_row(name, round_id, metrics, extra, row["seconds"])


def _refit_scores(model: torch.nn.Module, parts: list[LocalData], pooled: LocalData, simulation: Simulation,
                  codec: Codec, clip_norm: float, shrinkage: float, rng: np.random.Generator,
                  device: torch.device) -> dict[str, object]:
    """The refit head's scores ("eval", the model kept as it was) or the refit installed ("install")."""
    extra: dict[str, object] = {}
    if simulation.head_refit_each_round == "none":
        return extra
    sources = [pooled] if simulation.mode == "centralized" else parts
    kept_state = {k: v.clone() for k, v in model.state_dict().items()}  # "eval" scores a copy
    if simulation.head_refit_each_round == "install":
        extra["before_refit"] = pooled_evaluation(model, pooled, device)
    # the head's inputs: the same before and after the refit, so computed once
    features = [penultimate_features(model, p.train_images, device) for p in sources]
    refit_head(model, sources, features, shrinkage)
    if simulation.head_refit_each_round == "eval":
        extra["refit"] = pooled_evaluation(model, pooled, device)
        model.load_state_dict(kept_state)
        if simulation.mode == "federated" and simulation.refit_noise_variances:
            for variance in simulation.refit_noise_variances:
                weight, bias, detail = refit_head_securely(features, parts, codec, clip_norm, shrinkage, variance,
                                                           rng)
                set_head(model, weight, bias)
                extra[f"refit_secure_noise{variance:g}"] = {**pooled_evaluation(model, pooled, device), **detail}
            model.load_state_dict(kept_state)
    return extra


def _print_row(name: str, round_id: int, metrics: dict[str, float], extra: dict[str, object], seconds: object) -> None:
    other = ""
    for label, values in extra.items():
        if isinstance(values, dict) and "f1" in values:
            other += f"; {label}: F1 {values.get('f1', float('nan')):.3f} AUC {values.get('auc', float('nan')):.3f}"
    print(f"[{name}] round {round_id}: F1 {metrics.get('f1', float('nan')):.3f} "
          f"AUC {metrics.get('auc', float('nan')):.3f}{other} ({seconds} s)", flush=True)
