"""Public pretraining on a SYNTHETIC stand-in, for the consortium's initial weights; cached.

Run: `python -m experiments.pretrain [--image-size 32]` (`make pretrain`). It prints where
the weights are; `make demo` and the experiments build or reuse them by themselves.

A hospital in the real world starts from public weights (ImageNet, or public chest X-ray
sets): DP-SGD from scratch on a few hundred images per hospital learns nothing, while DP
fine-tuning of few parameters on good features does (Tramer & Boneh, ICLR 2021). This
machine can download neither, so this command makes a stand-in, and labels it as one:

- SYNTHETIC radiographs from the consortium's generator, from a disjoint seed
  (`PUBLIC_SEED`, far from every seed the consortium's data use), with a shifted intensity
  distribution (gamma 1.4, 85% contrast, a brightness offset): neither the hospitals'
  images nor distributed like them;
- another task than the hospitals': the generator's three classes (NORMAL, OPACITY,
  DIFFUSE), as ImageNet's 1000 classes are not a hospital's question. Its own head is
  scored on the hospitals' binary question (OPACITY against NORMAL) all the same, as a
  baseline arm, and so is a binary head fitted on public data only (linear discriminant
  analysis of the stand-in's features of its NORMAL and OPACITY images): that head is the
  one the consortium starts from, so round 0 of every run is the public model, and what a
  run adds over it is the federation's gain;
- trained without DP: public data need none.

The weights are cached under `runs/pretrain/<hash of the settings>/`: `model.pt` (the
state dict with the public binary head, the format `load_initial_weights` checks) and
`model.json` (how it was made, its held-out accuracy and AUC on the pretext task, and the
zero-shot AUC of its own head and of the public head on SYNTHETIC hospital-distribution
images). No weights file goes into git.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from services.common.ml.head_refit import lda_head, moments_of, penultimate_features
from services.common.ml.models import best_device, build_model
from services.common.ml.trainable import classifier_head
from services.common.runtime.atomic_files import read_json, write_atomic
from services.hospital_node.data.local_data import LocalData
from services.hospital_node.data.synthetic_xray import generate_synthetic_xrays
from services.hospital_node.trainer import LocalTraining, predict, train_local

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "runs" / "pretrain"
PUBLIC_SEED = 9_000_017  # the consortium's synthetic seeds are small integers
GAMMA, CONTRAST, OFFSET = 1.4, 0.85, 0.05
PRETEXT_CLASSES = 3  # NORMAL, OPACITY, DIFFUSE: the hospitals ask NORMAL against OPACITY
HOSPITAL_SEED = 0  # the consortium's default synthetic set, for the zero-shot scores
SHRINKAGE = 0.1


@dataclass(frozen=True)
class StandIn:
    """Everything that decides the stand-in's weights: its cache key."""

    architecture: str = "resnet50"
    image_size: int = 32
    images: int = 4000
    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 5e-4
    model_seed: int = 0
    num_classes: int = 2  # the consortium's

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def path(self, cache: Path = CACHE) -> Path:
        return cache / f"{self.architecture}-{self.image_size}px-{self.key()}" / "model.pt"


def public_stand_in(count: int, image_size: int, num_classes: int = PRETEXT_CLASSES,
                    seed: int = PUBLIC_SEED) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC images from a disjoint seed, with a shifted intensity distribution (values stay in [0, 1])."""
    images, labels = generate_synthetic_xrays(count, image_size, num_classes, seed)
    shifted = np.clip(CONTRAST * np.power(np.clip(images, 0.0, 1.0), GAMMA) + OFFSET, 0.0, 1.0)
    return shifted.astype(np.float32), labels.astype(np.int64)


def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The area under the ROC curve of `scores` for labels 1 against 0 (Mann-Whitney, ties counted half)."""
    positive, negative = int((labels == 1).sum()), int((labels == 0).sum())
    if not positive or not negative:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - positive * (positive + 1) / 2) / (positive * negative))


def stand_in_weights(stand_in: StandIn, cache: Path = CACHE) -> Path:
    """The cached weights of `stand_in`, built first (with progress) when missing."""
    path = stand_in.path(cache)
    if path.exists() and path.with_suffix(".json").exists():
        print(f"public stand-in: cached {path.relative_to(REPO) if path.is_relative_to(REPO) else path}", flush=True)
        return path
    pretrain(stand_in, path)
    return path


def pretrain(stand_in: StandIn, out: Path) -> dict[str, object]:
    """Train on the public stand-in's pretext task, fit the public binary head, and write both files (atomically)."""
    s = stand_in
    print(f"public stand-in: pretraining {s.architecture} at {s.image_size} px on {s.images} SYNTHETIC public images "
          f"(seed {PUBLIC_SEED}, shifted intensities, {PRETEXT_CLASSES}-class pretext), {s.epochs} epochs; "
          f"cached for every later run in {out.parent}", flush=True)
    pictures, labels = public_stand_in(s.images, s.image_size)
    held = max(PRETEXT_CLASSES, s.images // 10)
    data = LocalData(torch.from_numpy(pictures[held:]), torch.from_numpy(labels[held:]),
                     torch.from_numpy(pictures[:held]), torch.from_numpy(labels[:held]), PRETEXT_CLASSES)
    device = best_device()
    model = build_model(s.architecture, PRETEXT_CLASSES, s.model_seed)
    generator = torch.Generator().manual_seed(s.model_seed)
    started = time.monotonic()
    trained = data.train_labels.numel()
    for epoch in range(1, s.epochs + 1):
        # One epoch per call, the learning rate lowered along a cosine over the whole run.
        rate = s.learning_rate * 0.5 * (1 + np.cos(np.pi * (epoch - 1) / s.epochs))
        stats = train_local(model, data, LocalTraining(epochs=1, learning_rate=float(rate), batch_size=s.batch_size,
                                                       optimizer="adamw", imbalance="none", schedule="constant",
                                                       augment=True), device=device, generator=generator)
        elapsed = time.monotonic() - started
        accuracy, _ = _pretext_scores(model, data, device)
        print(f"  epoch {epoch}/{s.epochs}: loss {stats.mean_loss:.4f}, held-out accuracy {accuracy:.3f}, "
              f"{epoch * trained / elapsed:.0f} images/s, ETA {elapsed / epoch * (s.epochs - epoch):.0f} s",
              flush=True)
    accuracy, pretext_auc = _pretext_scores(model, data, device)
    own_head_auc, public_head_auc, weight, bias = _binary_heads(model, pictures, labels, s, device)
    # The consortium's model: the same backbone with the public binary head.
    consortium = build_model(s.architecture, s.num_classes, s.model_seed)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(_head_prefix(model))}
    consortium.load_state_dict({**consortium.state_dict(), **state})
    head = classifier_head(consortium)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight).float())
        head.bias.copy_(torch.from_numpy(bias).float())
    description: dict[str, object] = {
        "what": "pretrained on a SYNTHETIC public stand-in (not real radiographs); head fitted on public data only",
        **asdict(s), "public_seed": PUBLIC_SEED, "pretext_classes": ["NORMAL", "OPACITY", "DIFFUSE"],
        "intensity_shift": {"gamma": GAMMA, "contrast": CONTRAST, "offset": OFFSET}, "held_out": held,
        "held_out_accuracy": round(accuracy, 4), "held_out_macro_auc": round(pretext_auc, 4),
        "zero_shot_own_head_auc": round(own_head_auc, 4), "zero_shot_public_head_auc": round(public_head_auc, 4),
        "zero_shot_images": f"1000 SYNTHETIC hospital-distribution images (seed {HOSPITAL_SEED}), OPACITY vs NORMAL",
        "seconds": round(time.monotonic() - started),
    }
    consortium.to("cpu")
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(consortium.state_dict(), buffer)
    write_atomic(out, buffer.getvalue())
    write_atomic(out.with_suffix(".json"), (json.dumps(description, indent=2) + "\n").encode())
    print(f"public stand-in: held-out pretext accuracy {accuracy:.3f} (macro AUC {pretext_auc:.3f}); zero-shot AUC "
          f"on the hospitals' question: its own head {own_head_auc:.3f}, the public binary head "
          f"{public_head_auc:.3f}; {description['seconds']} s", flush=True)
    return description


def _head_prefix(model: torch.nn.Module) -> str:
    head = classifier_head(model)
    name = next(n for n, m in model.named_modules() if m is head)
    return f"{name}."


def _pretext_scores(model: torch.nn.Module, data: LocalData, device: torch.device) -> tuple[float, float]:
    """Held-out accuracy and macro one-against-rest AUC on the pretext task."""
    probabilities, _ = predict(model, data.val_images, data.val_labels, num_classes=PRETEXT_CLASSES, device=device)
    labels = data.val_labels.numpy()
    accuracy = float((probabilities.argmax(1) == labels).mean())
    aucs = [binary_auc(probabilities[:, c], (labels == c).astype(np.int64)) for c in range(PRETEXT_CLASSES)]
    return accuracy, float(np.nanmean(aucs))


def _binary_heads(model: torch.nn.Module, pictures: np.ndarray, labels: np.ndarray, s: StandIn,
                  device: torch.device) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The zero-shot AUC of the pretext head (OPACITY against NORMAL) and of a binary LDA head fitted on the public
    NORMAL and OPACITY images' features, on SYNTHETIC hospital-distribution images; and that head."""
    binary = labels < 2
    public_features = penultimate_features(model, torch.from_numpy(pictures[binary]), device)
    weight, bias = lda_head(moments_of(public_features, torch.from_numpy(labels[binary]), 2), SHRINKAGE)
    images, truth = generate_synthetic_xrays(1000, s.image_size, 2, HOSPITAL_SEED)
    probabilities, _ = predict(model, torch.from_numpy(images), torch.from_numpy(truth), num_classes=PRETEXT_CLASSES,
                               device=device)
    own = probabilities[:, 1] / np.maximum(probabilities[:, 0] + probabilities[:, 1], 1e-12)
    features = penultimate_features(model, torch.from_numpy(images), device).numpy()
    logits = features @ weight.T + bias
    return binary_auc(own, truth), binary_auc(logits[:, 1] - logits[:, 0], truth), weight, bias


def describe(path: Path) -> dict[str, object]:
    value = read_json(path.with_suffix(".json"))
    return value if isinstance(value, dict) else {}


def main(argv: list[str] | None = None) -> None:
    defaults = StandIn()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default=defaults.architecture, help="default: %(default)s")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="default: %(default)s (the demo's)")
    parser.add_argument("--images", type=int, default=defaults.images,
                        help="public stand-in images, a tenth held out (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default: %(default)s")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="default: %(default)s")
    parser.add_argument("--model-seed", type=int, default=defaults.model_seed,
                        help="the consortium's model seed (aggregator setting; default: %(default)s)")
    parser.add_argument("--num-classes", type=int, default=defaults.num_classes,
                        help="the consortium's classes (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="default: runs/pretrain")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    stand_in = StandIn(args.architecture, args.image_size, args.images, args.epochs, args.batch_size,
                       args.learning_rate, args.model_seed, args.num_classes)
    path = stand_in_weights(stand_in, args.cache)
    print(f"weights: {path}\n{json.dumps(describe(path), indent=2)}", flush=True)


if __name__ == "__main__":
    main()
