"""Public pretraining on a SYNTHETIC stand-in, for the consortium's initial weights.

Run: `python -m experiments.pretrain --out runs/pretrain/resnet50-64.pt [--images N --epochs E]`,
then start the aggregator with `FEDXRAY_AGG_INIT_WEIGHTS=<that file>` (experiments
take `--init-weights`).

DP-SGD from scratch on a thousand images per hospital learns little; the usual route
starts from a model pretrained on public data (ImageNet, or public chest X-ray sets).
This machine cannot download either, so this command makes a stand-in, and labels it
as one: SYNTHETIC radiographs from the same generator as the consortium's, but from a
disjoint seed (`PUBLIC_SEED`, far from every seed the consortium's data use) and with
a shifted intensity distribution (a gamma of 1.4, 85% contrast, a brightness offset),
so the public set is neither the hospitals' images nor distributed like them. It is
trained without DP: public data need none. The file holds the model's state dict (the
format `load_initial_weights` checks) and, beside it, a JSON description of how it was
made and its accuracy on held-out public stand-in images.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from services.common.atomic_files import write_atomic
from services.common.models import best_device, build_model
from services.hospital_node.data.local_data import LocalData
from services.hospital_node.data.synthetic_xray import generate_synthetic_xrays
from services.hospital_node.trainer import LocalOptimizer, LocalTraining, evaluation_report, train_local

log = logging.getLogger(__name__)

PUBLIC_SEED = 9_000_017  # the consortium's synthetic seeds are small integers
GAMMA, CONTRAST, OFFSET = 1.4, 0.85, 0.05


def public_stand_in(count: int, image_size: int, num_classes: int, seed: int = PUBLIC_SEED) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """SYNTHETIC images from a disjoint seed, with a shifted intensity distribution (values stay in [0, 1])."""
    images, labels = generate_synthetic_xrays(count, image_size, num_classes, seed)
    shifted = np.clip(CONTRAST * np.power(np.clip(images, 0.0, 1.0), GAMMA) + OFFSET, 0.0, 1.0)
    return shifted.astype(np.float32), labels.astype(np.int64)


def pretrain(architecture: str, image_size: int, num_classes: int, images: int, epochs: int, batch_size: int,
             learning_rate: float, model_seed: int, out: Path,
             optimizer: LocalOptimizer = "adamw") -> dict[str, object]:
    """Train on the public stand-in, write the state dict to `out` (atomically) and its description beside it."""
    pictures, labels = public_stand_in(images, image_size, num_classes)
    held = max(1, images // 10)
    data = LocalData(torch.from_numpy(pictures[held:]), torch.from_numpy(labels[held:]),
                     torch.from_numpy(pictures[:held]), torch.from_numpy(labels[:held]), num_classes)
    device = best_device()
    model = build_model(architecture, num_classes, model_seed)
    generator = torch.Generator().manual_seed(model_seed)
    started = time.monotonic()
    for epoch in range(1, epochs + 1):
        # One epoch per call, the learning rate lowered along a cosine over the whole run.
        rate = learning_rate * 0.5 * (1 + np.cos(np.pi * (epoch - 1) / epochs))
        stats = train_local(model, data, LocalTraining(epochs=1, learning_rate=float(rate), batch_size=batch_size, optimizer=optimizer,
                                                       schedule="constant", augment=True), device, generator)
        accuracy = _accuracy(model, data, device)
        print(f"  epoch {epoch}/{epochs}: loss {stats.mean_loss:.4f}, held-out public stand-in accuracy "
              f"{accuracy:.3f} ({time.monotonic() - started:.0f} s)", flush=True)
    description: dict[str, object] = {
        "what": "pretrained on a SYNTHETIC public stand-in (not real radiographs)",
        "architecture": architecture, "image_size": image_size, "num_classes": num_classes,
        "public_seed": PUBLIC_SEED, "intensity_shift": {"gamma": GAMMA, "contrast": CONTRAST, "offset": OFFSET},
        "images": images, "held_out": held, "epochs": epochs, "batch_size": batch_size,
        "learning_rate": learning_rate, "optimizer": optimizer, "model_seed": model_seed,
        "held_out_accuracy": round(_accuracy(model, data, device), 4), "seconds": round(time.monotonic() - started),
    }
    model.to("cpu")
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    write_atomic(out, buffer.getvalue())
    write_atomic(out.with_suffix(".json"), (json.dumps(description, indent=2) + "\n").encode())
    return description


def _accuracy(model: torch.nn.Module, data: LocalData, device: torch.device) -> float:
    confusion = evaluation_report(model, data, device, "public", 0).counts.confusion
    return float(np.trace(confusion) / max(confusion.sum(), 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where to write the state dict")
    parser.add_argument("--architecture", default="resnet50")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--images", type=int, default=2000, help="public stand-in images (a tenth held out)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--model-seed", type=int, default=0, help="the consortium's model seed (aggregator setting)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(f"pretraining {args.architecture} at {args.image_size} px on {args.images} SYNTHETIC public stand-in "
          f"images (seed {PUBLIC_SEED}, shifted intensities), {args.epochs} epochs", flush=True)
    description = pretrain(args.architecture, args.image_size, args.num_classes, args.images, args.epochs,
                           args.batch_size, args.learning_rate, args.model_seed, args.out, args.optimizer)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}: held-out accuracy "
          f"{description['held_out_accuracy']}", flush=True)


if __name__ == "__main__":
    main()
