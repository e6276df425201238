"""One DP-SGD step against one non-private step: same model, same batch, in one run.

Run: `make bench-dp` or `python -m benchmarks.bench_dp [--repeats N]`. The workload:
ResNet-50 (GroupNorm, out-of-place blocks) at 64 px, a batch of 16 SYNTHETIC
radiographs, SGD with momentum. Each configuration has its own copy of the model; the
configurations take turns within every repetition, so the machine's noise falls on all
of them alike. A step is forward, backward and the optimizer step (for DP: per-example
gradients, clipping to C, Gaussian noise, averaging). Prints the median seconds per
step of each configuration and its ratio to the non-private full-model step.

Configurations:
- `plain`: non-private, the whole model trained (the baseline);
- `plain last_block`: non-private, only layer4 and the head trained;
- `dp hooks`, `dp ghost`, `dp functorch`, `dp ew`: DP-SGD on the whole model with each
  of Opacus's per-example gradient modes (ghost: fast gradient clipping, which never
  materializes per-example gradients; ew: expanded weights);
- `dp hooks last_block`, `dp ghost last_block`: DP fine-tuning of layer4 and the head,
  the rest frozen;
- `dp head`: a `head` round's DP-SGD step (services/hospital_node/head_training.py): the
  head alone on the frozen backbone's features, which a round computes once (the
  feature pass is timed apart: `features once`), with exact per-example gradients,
  each patient's sum clipped (here one image a patient), noise and the optimizer step.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from services.common.ml.head_refit import penultimate_features
from services.common.ml.models import build_model
from services.common.ml.trainable import classifier_head, last_block_parameters
from services.hospital_node.data.local_data import LocalData
from services.hospital_node.head_training import clipped_unit_sum, frozen_features, per_example_gradients
from services.hospital_node.private_training import (
    PrivateTraining,
    per_example_module,
    private_optimizer,
)

NOISE_MULTIPLIER = 1.0
CLIP_NORM = 1.0


@dataclass
class Configuration:
    label: str
    step: Callable[[], None]


def _model(seed: int, architecture: str) -> nn.Module:
    return build_model(architecture, num_classes=2, seed=seed)


def _freeze_to_last_block(model: nn.Module) -> None:
    keep = last_block_parameters(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in keep)


def plain_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        optimizer.step()
    return step


def private_step(model: nn.Module, mode: str, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    private = PrivateTraining(noise_multiplier=NOISE_MULTIPLIER, max_grad_norm=CLIP_NORM,
                              grad_sample_mode=mode)  # type: ignore[arg-type]
    module = per_example_module(model, private)
    base = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    optimizer, criterion = private_optimizer(module, base, private, expected_batch=images.shape[0],
                                             device=torch.device("cpu"))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(module(images), labels).backward()
        optimizer.step()
    return step


def head_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One DP-SGD step of a `head` round, on features computed once before (as the round does)."""
    features = frozen_features(model, LocalData(images, labels, images, labels, 2), torch.device("cpu"))
    head = classifier_head(model)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)
    units = torch.arange(labels.numel())
    noise = torch.Generator().manual_seed(0)

    def step() -> None:
        with torch.no_grad():
            grads = per_example_gradients(head.weight, head.bias, features, labels)[:2]
            weight, bias, _ = clipped_unit_sum(*grads, units, CLIP_NORM)
            std = NOISE_MULTIPLIER * CLIP_NORM
            head.weight.grad = (weight + torch.normal(0.0, std, weight.shape, generator=noise)) / labels.numel()
            head.bias.grad = (bias + torch.normal(0.0, std, bias.shape, generator=noise)) / labels.numel()
        optimizer.step()
    return step


def features_once(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """The feature pass a `head` round makes once for all its steps (here over one batch)."""
    def step() -> None:
        penultimate_features(model, images, torch.device("cpu"))
    return step


def configurations(args: argparse.Namespace, images: torch.Tensor, labels: torch.Tensor) -> list[Configuration]:
    made = []
    for label, make in (("dp head", head_step), ("features once", features_once)):
        if not args.only or label in args.only:
            made.append(Configuration(label, make(_model(args.seed, args.architecture), images, labels)))
    for label, mode, last_block in [("plain", None, False), ("plain last_block", None, True),
                                    ("dp hooks", "hooks", False), ("dp ghost", "ghost", False),
                                    ("dp functorch", "functorch", False), ("dp ew", "ew", False),
                                    ("dp hooks last_block", "hooks", True), ("dp ghost last_block", "ghost", True)]:
        if args.only and label not in args.only:
            continue
        model = _model(args.seed, args.architecture)
        model.train()
        if last_block:
            _freeze_to_last_block(model)
        step = plain_step(model, images, labels) if mode is None else private_step(model, mode, images, labels)
        made.append(Configuration(label, step))
    return made


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="resnet50")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="configuration labels to run (default: all)")
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=generator)
    labels = torch.randint(0, 2, (args.batch,), generator=generator)
    warnings.filterwarnings("ignore", message=".*[Ss]ecure.*")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    made = configurations(args, images, labels)
    print(f"{args.architecture} at {args.image_size} px, batch {args.batch}, torch threads "
          f"{torch.get_num_threads()}, {args.repeats} timed steps each (after a warm-up), taking turns", flush=True)
    times: dict[str, list[float]] = {c.label: [] for c in made}
    for repeat in range(args.repeats + 1):
        for configuration in made:
            started = time.perf_counter()
            configuration.step()
            if repeat:  # the first pass warms up allocators and hooks
                times[configuration.label].append(time.perf_counter() - started)
        print(f"  repetition {repeat}/{args.repeats} done" + (" (warm-up)" if not repeat else ""), flush=True)
    base = statistics.median(times["plain"]) if "plain" in times else None
    print(f"{'configuration':22} {'median s/step':>14} {'min':>8} {'max':>8} {'x plain':>8}")
    for label, values in times.items():
        median = statistics.median(values)
        ratio = f"{median / base:8.2f}" if base else f"{'-':>8}"
        print(f"{label:22} {median:14.3f} {min(values):8.3f} {max(values):8.3f} {ratio}")


if __name__ == "__main__":
    main()
