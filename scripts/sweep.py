"""Choose federated training settings by in-process simulation on SYNTHETIC data.

    python -m scripts.sweep --out runs/sweep --base rounds=15,partition=label_mix \\
        "sgd=local_optimizer=sgd,learning_rate=0.02" "prox=proximal_mu=0.01" "central=mode=centralized"

Each named setting runs in its own process (side by side, so a GPU is shared)
and simulates the consortium without its services: every hospital trains on
its part of the split (`partition`, as in the nodes) with the node's own
trainer, its update is L2-clipped at the clip norm as in secure mode (`secure_clamp=1` also clamps it per
coordinate as the secure codec does), and the server averages and steps with the aggregator's own
FedAvg/FedAdam (`drift_correction=1`: SCAFFOLD, as the nodes and aggregator run it). No encryption and no noise: this picks settings
quickly, and `scripts.experiment` then measures the chosen ones on the real
services. `mode=centralized` trains on the pooled data instead. Prints a row per
round per setting and a closing table ranked by the mean F1 of the last rounds;
writes `<out>/<name>.jsonl` and `<out>/ranking.json`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from scripts.centralized import node_settings_for, pool
from services.aggregator.fedadam import FedAdam
from services.aggregator.fedavg import FedAvg
from services.aggregator.pooled_evaluation import pool_reports
from services.aggregator.round_schedule import round_learning_rate
from services.common.atomic_files import append_line_atomic
from services.common.ckks_params import ckks_parameters, field_layout, statistics_layout
from services.common.head_refit import (
    class_estimates,
    lda_head,
    moments_from_statistics,
    moments_of,
    penultimate_features,
    scaled_to,
    set_head,
    statistics_vector,
)
from services.common.model_spec import flatten_named, flatten_state, parameter_spec, restore_state
from services.common.models import best_device, build_model
from services.common.noise import NoiseKind
from services.common.packing import to_modular
from services.common.quantize import clip_l2
from services.common.update_codec import (
    clamp_threshold,
    decode_mean_update,
    encode_update,
    plan_quantization,
    plan_statistics,
    received_update,
)
from services.hospital_node.local_data import LocalData, load_local_data
from services.hospital_node.trainer import LocalTraining, evaluate, loss_gradient, train_local

SCORED_LAST_ROUNDS = 3


@dataclass(frozen=True)
class Setting:
    """One simulated configuration; the names match scripts.experiment's options."""

    mode: str = "federated"
    architecture: str = "resnet50"
    image_size: int = 64
    images_per_node: int = 1000
    alpha: float = 0.5
    partition: str = "dirichlet"
    rounds: int = 15
    local_epochs: int = 1
    learning_rate: float = 0.02
    batch_size: int = 32
    local_optimizer: str = "sgd"
    proximal_mu: float = 0.0
    imbalance: str = "class_weights"
    clip_norm: float = 20.0
    server_optimizer: str = "fedavg"
    server_learning_rate: float = 1.0
    server_momentum: float = 0.0
    round_schedule: str = "constant"  # the aggregator's: "cosine" lowers the local rate from round to round
    round_floor: float = 0.1  # under "cosine", the last round's rate as a share of learning_rate
    # 1: SCAFFOLD's drift correction as the services run it (each upload carries the control variate's change)
    drift_correction: int = 0
    secure_clamp: int = 0  # 1: clamp every upload's coordinates as the secure codec does (0: clip only)
    # 1: the mean update is what the key authority would return: every upload encoded by the secure codec (clip,
    # clamp, randomized rounding, Skellam noise of noise_variance per quorum of 3, 10-bit fields for up to 8 nodes)
    secure_codec: int = 0
    noise_variance: float = 16.0
    freeze_head: int = 0  # 1: local training leaves the classifier head as it arrived (FedBABU)
    # "eval": also score each round's model with its head refit by LDA on the pooled training features;
    # "lda": the refit head replaces the averaged one and the next round starts from it
    head_refit: str = "none"
    head_shrinkage: float = 0.1
    # with head_refit=eval, e.g. "16:0": also score the head refit from statistics that took the services' secure
    # sum (refit_head_securely), at each of these noise variances
    refit_noise_variances: str = ""
    torch_threads: int = 2
    seed: int = 0  # as scripts.experiment --seed: the data, split and initial model; training from seed + 1

    @classmethod
    def parse(cls, text: str, base: Setting) -> tuple[str, Setting]:
        """`name=key=value,key=value` over `base`; a key must be a Setting field."""
        name, _, assignments = text.partition("=")
        types = {f.name: type(getattr(base, f.name)) for f in fields(cls)}
        changes: dict[str, object] = {}
        for assignment in filter(None, assignments.split(",")):
            key, _, value = assignment.partition("=")
            if key not in types:
                raise SystemExit(f"unknown setting {key!r} in {text!r}; known: {', '.join(types)}")
            changes[key] = types[key](value)
        return name, replace(base, **changes)  # type: ignore[arg-type]

    def training(self, round_id: int = 1) -> LocalTraining:
        rate = round_learning_rate(self.learning_rate, round_id, self.rounds,
                                   self.round_schedule, self.round_floor)  # type: ignore[arg-type]
        return LocalTraining(self.local_epochs, rate, self.batch_size,
                             self.local_optimizer,  # type: ignore[arg-type]
                             self.proximal_mu if self.mode == "federated" else 0.0,
                             self.imbalance,  # type: ignore[arg-type]
                             "cosine", True, bool(self.freeze_head))


def pooled_evaluation(model: torch.nn.Module, data: LocalData, device: torch.device) -> dict[str, float]:
    counts = evaluate(model, data.val_images, data.val_labels, data.num_classes, device)
    report = counts.report("pooled", 0)
    return {k: v for k, v in pool_reports([report]).as_dict().items() if isinstance(v, float)}


def sent(upload: np.ndarray, setting: Setting) -> np.ndarray:
    """What the aggregator's sum holds of one upload, less rounding and noise: L2-clipped, and with `secure_clamp`
    clamped per coordinate where the secure codec clamps."""
    clipped = clip_l2(upload, setting.clip_norm)
    if not setting.secure_clamp:
        return clipped
    bound = clamp_threshold(upload.size, setting.clip_norm)
    return np.clip(clipped, -bound, bound)


def refit_head(model: torch.nn.Module, parts: list[LocalData], features: list[torch.Tensor], setting: Setting) -> None:
    """Replace the head by LDA on the moments of the hospitals' training features, summed over hospitals."""
    moments = [moments_of(f, p.train_labels, p.num_classes) for f, p in zip(features, parts)]
    set_head(model, *lda_head(sum(moments[1:], moments[0]), setting.head_shrinkage))


MAX_PARTICIPANTS, MIN_PARTICIPANTS = 8, 3  # as scripts.experiment's consortia


def secure_sum(vectors: list[np.ndarray], clip_norm: float, noise_variance: float, rng: np.random.Generator,
               statistics: bool = False) -> np.ndarray:
    """The sum the key authority would return of these vectors, each encoded as a node encodes it in secure mode
    (L2 clip, clamp, randomized rounding, its share of Skellam noise of `noise_variance` per quorum, mod 2^b), less
    encryption, which the tests show exact. `statistics`: in the head refit's statistics layout and plan."""
    params = ckks_parameters(MAX_PARTICIPANTS)
    if statistics:
        bits = statistics_layout(params, MAX_PARTICIPANTS).bits
        plan = plan_statistics(vectors[0].size, clip_norm, bits, MAX_PARTICIPANTS, MIN_PARTICIPANTS,
                               NoiseKind.SKELLAM, noise_variance)
    else:
        bits = field_layout(params, MAX_PARTICIPANTS, None).bits
        plan = plan_quantization(vectors[0].size, clip_norm, bits, MAX_PARTICIPANTS, MIN_PARTICIPANTS,
                                 NoiseKind.SKELLAM, noise_variance)
    total = np.zeros(vectors[0].size, dtype=np.int64)
    for vector in vectors:
        total = (total + encode_update(vector, plan, rng).astype(np.int64)) % (1 << bits)
    return decode_mean_update(to_modular(total, bits), plan, len(vectors)) * len(vectors)


def refit_head_securely(features: list[torch.Tensor], parts: list[LocalData], setting: Setting,
                        noise_variance: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """The head LDA fits on the statistics the services' one secure sum gives (each hospital's statistics vector
    scaled to the clip norm, in the statistics layout), and the codec's errors: against the exact sum of the same
    scaled vectors."""
    classes, dim = parts[0].num_classes, features[0].shape[1]
    vectors = [scaled_to(statistics_vector(moments_of(f, p.train_labels, classes)), setting.clip_norm)
               for f, p in zip(features, parts)]
    total = secure_sum(vectors, setting.clip_norm, noise_variance, rng, statistics=True)
    moments = moments_from_statistics(total, classes, dim)
    _, means, covariance = class_estimates(moments)
    _, exact_means, exact_cov = class_estimates(moments_from_statistics(np.sum(vectors, axis=0), classes, dim))
    contrast = exact_means[-1] - exact_means[0]
    detail: dict[str, object] = {
        "contrast_error": round(float(np.linalg.norm(means[-1] - means[0] - contrast) / np.linalg.norm(contrast)), 6),
        "covariance_error": round(float(np.linalg.norm(covariance - exact_cov) / np.linalg.norm(exact_cov)), 6),
        "trace_ratio": round(float(np.trace(covariance) / np.trace(exact_cov)), 6)}
    weight, bias = lda_head(moments, setting.head_shrinkage)
    return weight, bias, detail


def simulate(name: str, setting: Setting, out: Path) -> None:
    torch.set_num_threads(setting.torch_threads)
    device = best_device()
    settings = node_settings_for(setting.architecture, setting.image_size, setting.images_per_node * 5, 5,
                                 setting.partition, setting.alpha, setting.seed)
    parts = [load_local_data(settings.model_copy(update={"partition_index": i})) for i in range(5)]
    pooled = pool(parts)
    model = build_model(setting.architecture, 2, setting.seed)
    spec = parameter_spec(model.state_dict())
    weights = flatten_state(model.state_dict()).astype(np.float64)
    server = (FedAdam(setting.server_learning_rate) if setting.server_optimizer == "fedadam"
              else FedAvg(setting.server_learning_rate, setting.server_momentum))
    generator = torch.Generator().manual_seed(setting.seed + 1)
    refit_rng = np.random.default_rng(setting.seed + 2)
    codec_rng = np.random.default_rng(setting.seed + 3)
    if setting.secure_codec and setting.drift_correction:
        raise SystemExit("secure_codec=1 does not simulate drift correction; use secure_clamp=1 with it")
    own = [np.zeros(spec.count) for _ in parts]  # SCAFFOLD's c_i: each hospital's gradient at its last start
    control = np.zeros(spec.count)  # its c, the consortium's
    log_path = out / f"{name}.jsonl"
    log_path.unlink(missing_ok=True)
    for round_id in range(1, setting.rounds + 1):
        started = time.monotonic()
        training = setting.training(round_id)
        norms: list[float] = []
        kept: list[float] = []  # per hospital, the share of its control variate change's norm the sum received
        if setting.mode == "centralized":
            train_local(model, pooled, training, device, generator)
        else:
            uploads, raw = [], []
            for index, part in enumerate(parts):
                model.load_state_dict(restore_state(model.state_dict(), weights.astype(np.float32), spec))
                drift = (restore_state(model.state_dict(), (control - own[index]).astype(np.float32), spec)
                         if setting.drift_correction else None)
                control_now = (flatten_named(loss_gradient(model, part, training, device), spec)
                               if setting.drift_correction else own[index])
                train_local(model, part, training, device, generator, drift)
                update = flatten_state({k: v.cpu() for k, v in model.state_dict().items()}) - weights
                norms.append(round(float(np.linalg.norm(update)), 3))
                upload = update
                if setting.drift_correction:  # as the node: the update, then its control variate's change
                    upload = np.concatenate([update, control_now - own[index]])
                uploads.append(sent(upload, setting))
                raw.append(upload)
                if setting.drift_correction:  # as the node: c_i moves by what the sum received of the change
                    received = uploads[-1][spec.count :]
                    own[index] = own[index] + received
                    kept.append(round(float(np.linalg.norm(received) / max(np.linalg.norm(upload[spec.count :]),
                                                                              1e-30)), 3))
            mean_upload = (secure_sum(raw, setting.clip_norm, setting.noise_variance, codec_rng) / len(raw)
                           if setting.secure_codec else np.mean(uploads, axis=0))
            if setting.drift_correction:  # as the aggregator, every hospital taking part
                control += mean_upload[spec.count :]
            weights = server.step(weights, mean_upload[: spec.count])
            model.load_state_dict(restore_state(model.state_dict(), weights.astype(np.float32), spec))
        extra: dict[str, object] = {}
        if setting.head_refit in ("eval", "lda"):
            sources = [pooled] if setting.mode == "centralized" else parts
            kept_state = {k: v.clone() for k, v in model.state_dict().items()}  # "eval" scores a copy
            if setting.head_refit == "lda":
                extra["before_refit"] = pooled_evaluation(model, pooled, device)
            # the head's inputs: the same before and after the refit, so computed once
            features = [penultimate_features(model, p.train_images, device) for p in sources]
            refit_head(model, sources, features, setting)
            if setting.head_refit == "eval":
                extra["refit"] = pooled_evaluation(model, pooled, device)
                model.load_state_dict(kept_state)
                if setting.mode == "federated" and setting.refit_noise_variances:
                    for variance in map(float, setting.refit_noise_variances.split(":")):
                        weight, bias, detail = refit_head_securely(features, parts, setting, variance, refit_rng)
                        set_head(model, weight, bias)
                        extra[f"refit_secure_noise{variance:g}"] = {**pooled_evaluation(model, pooled, device),
                                                                    **detail}
                    model.load_state_dict(kept_state)
            else:
                weights = flatten_state({k: v.cpu() for k, v in model.state_dict().items()}).astype(np.float64)
        metrics = pooled_evaluation(model, pooled, device)
        row = {"name": name, "round": round_id, "seconds": round(time.monotonic() - started, 1),
               "learning_rate": training.learning_rate, **metrics, **extra}
        if norms:
            row["update_norms"] = norms  # each hospital's, before clipping
        if kept:
            row["control_change_kept"] = kept
        append_line_atomic(log_path, json.dumps(row))
        other = ""
        for label, values in extra.items():
            assert isinstance(values, dict)
            if "f1" not in values:
                continue
            other += f"; {label}: F1 {values.get('f1', float('nan')):.3f} AUC {values.get('auc', float('nan')):.3f}"
        print(f"[{name}] round {round_id}: F1 {metrics.get('f1', float('nan')):.3f} "
              f"AUC {metrics.get('auc', float('nan')):.3f}{other} ({row['seconds']} s)", flush=True)


def rank(out: Path, names: list[str]) -> list[dict[str, object]]:
    table = []
    for name in names:
        path = out / f"{name}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        last = rows[-SCORED_LAST_ROUNDS:]
        table.append({"name": name, "rounds": len(rows),
                      "f1_last": float(np.mean([r.get("f1", 0.0) for r in last])) if last else 0.0,
                      "auc_last": float(np.mean([r.get("auc", 0.5) for r in last])) if last else 0.5})
    return sorted(table, key=lambda row: -float(row["f1_last"]))  # type: ignore[arg-type]


def plot_curves(rows: list[dict[str, object]], path: Path) -> Path:
    """F1 and AUC per round for each setting in `rows`, with dashed lines for the scores of its refit head
    (head_refit=eval) where the rows carry them."""
    from scripts.report import _save, plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = list(dict.fromkeys(str(r["name"]) for r in rows))
    for index, name in enumerate(names):
        mine = [r for r in rows if r["name"] == name]
        color = f"C{index % 10}"
        for axis, metric in zip(axes, ("f1", "auc")):
            rounds = [r["round"] for r in mine]
            axis.plot(rounds, [r.get(metric, float("nan")) for r in mine], marker="o", color=color, label=name)
            refits = [r["refit"] for r in mine if isinstance(r.get("refit"), dict)]
            if len(refits) == len(mine):
                axis.plot(rounds, [refit.get(metric, float("nan")) for refit in refits],  # type: ignore[attr-defined]
                          linestyle="--", marker="x", color=color, label=f"{name}, head refit")
    for axis, metric in zip(axes, ("F1 at argmax", "ROC AUC")):
        axis.set_title(f"{metric}, held-out images (SYNTHETIC data, simulation)", fontsize=10)
        axis.set_xlabel("round")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="*", help="name=key=value,key=value (see Setting)")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--base", default="", help="key=value,... applied to every setting first")
    parser.add_argument("--timeout", type=float, default=3600, help="stop unfinished settings after this")
    parser.add_argument("--plot-rows", type=Path, nargs="+", help="only plot these rows files into <out>/curves.png")
    args = parser.parse_args(argv)
    if args.plot_rows:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = [json.loads(line) for path in args.plot_rows for line in path.read_text().splitlines()]
        print(f"wrote {plot_curves(rows, args.out / 'curves.png')}")
        return 0
    if not args.settings:
        parser.error("name at least one setting (or --plot-rows)")
    _, base = Setting.parse(f"base={args.base}", Setting())
    named = dict(Setting.parse(text, base) for text in args.settings)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "settings.json").write_text(json.dumps({n: asdict(s) for n, s in named.items()}, indent=1))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=simulate, args=(n, s, args.out), name=n) for n, s in named.items()]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + args.timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            print(f"[{worker.name}] stopped at the sweep's timeout", flush=True)
            worker.terminate()
    table = rank(args.out, list(named))
    (args.out / "ranking.json").write_text(json.dumps(table, indent=1))
    print(f"{'setting':<16} {'rounds':>6} {'F1 (last 3)':>11} {'AUC (last 3)':>12}")
    for row in table:
        print(f"{row['name']:<16} {row['rounds']:>6} {row['f1_last']:>11.3f} {row['auc_last']:>12.3f}")
    rows = [json.loads(line) for name in named if (args.out / f"{name}.jsonl").exists()
            for line in (args.out / f"{name}.jsonl").read_text().splitlines()]
    if rows:
        print(f"wrote {plot_curves(rows, args.out / 'curves.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
