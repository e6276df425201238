"""The attack harness's first section: gradient inversion against what each party holds.

On SYNTHETIC radiographs (32 px) and the small sigmoid CNN of the DLG paper, where inversion is known to work,
the Inverting Gradients attack (`experiments.attacks.inversion`) is run against:

- one hospital's plaintext update, as a plain-FedAvg server sees it: one image, one step; four images, one step;
  one image, five local steps;
- FedXray's aggregator: the decrypted sum of five hospitals' updates, each encoded by the real secure codec
  (clip, randomized rounding, Skellam noise at the default variance 16, mod 2^b); and the difference of that sum
  and the sum of the four others on the same model, which the cross-round differencing attack held before the key
  authority refused a second participant set per model;
- one image's DP-SGD step (clipped to 1, Gaussian noise at the sigma the hospital's PLD plan gives for epsilon 8
  and 2 over one epoch of 200 images in batches of 16, delta 1e-5).

The attacker is told the true labels (generous to it). Each reconstruction is scored against the true image by
PSNR and SSIM beside the population prior (the mean of 64 other SYNTHETIC images, which needs no attack), and by
re-identification: the rank of the true image among 65 candidates by PSNR to the reconstruction (1: singled
out). One progress line per case; `run` writes inversion.png and returns the rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch

from experiments.attacks.inversion import (
    Fidelity,
    InversionSettings,
    dlg_lenet,
    fidelity,
    invert,
    loss_gradient,
    psnr,
    split_like,
)
from experiments.privacy_table import Recipe, recipe_codec
from experiments.simulator import secure_sum
from services.common.ml.head_refit import penultimate_features
from services.common.ml.trainable import classifier_head
from services.common.secure_sum.ckks_params import ckks_parameters, field_layout
from services.common.secure_sum.noise import NoiseKind
from services.common.secure_sum.update_codec import plan_quantization
from services.hospital_node.data.synthetic_xray import generate_synthetic_xrays
from services.hospital_node.record_privacy import plan_noise_multiplier

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SIZE, POOL, LEARNING_RATE, DELTA = 32, 64, 0.1, 1e-5


@dataclass(frozen=True)
class Case:
    name: str
    holder: str  # who holds what is attacked
    images: int  # how many images the attacker reconstructs


@dataclass(frozen=True)
class Outcome:
    case: str
    holder: str
    psnr: float
    ssim: float
    prior_psnr: float
    prior_ssim: float
    rank: int  # of the true image among the candidates by PSNR to the reconstruction; 1: singled out
    candidates: int
    seconds: float


def _flat(gradient: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in gradient])


def _local_steps(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> torch.Tensor:
    """Minus the weight change of `steps` plain SGD steps: the direction a multi-step update carries."""
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    change = torch.cat([(p.detach() - s).flatten() for p, s in zip(model.parameters(), start)])
    with torch.no_grad():
        for p, s in zip(model.parameters(), start):
            p.copy_(s)
    return -change


def _targets(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             rng: np.random.Generator) -> dict[str, tuple[Case, torch.Tensor]]:
    """What each party holds, as a flat vector the attack reads as a gradient; images[0] is the victim."""
    one = _flat(loss_gradient(model, images[:1], labels[:1]))
    held: dict[str, tuple[Case, torch.Tensor]] = {
        "plaintext, 1 image, 1 step": (Case("plaintext, 1 image, 1 step", "plain FedAvg server", 1), one),
        "plaintext, 4 images, 1 step": (Case("plaintext, 4 images, 1 step", "plain FedAvg server", 4),
                                        _flat(loss_gradient(model, images[:4], labels[:4]))),
        "plaintext, 1 image, 5 steps": (Case("plaintext, 1 image, 5 steps", "plain FedAvg server", 1),
                                        _local_steps(model, images[:1], labels[:1], 5)),
    }
    updates = [(-LEARNING_RATE * _flat(loss_gradient(model, images[i:i + 1], labels[i:i + 1]))).double().numpy()
               for i in range(5)]
    layout = field_layout(ckks_parameters(8), 8)
    plan = plan_quantization(updates[0].size, 20.0, layout.bits, max_participants=8, min_participants=3,
                             noise_kind=NoiseKind.SKELLAM, noise_variance=16.0)
    decrypted = torch.from_numpy(-secure_sum(updates, plan, rng)).float()
    held["FedXray secure sum of 5"] = (Case("FedXray secure sum of 5", "FedXray aggregator", 1), decrypted)
    # Cross-round differencing: the sum over all five minus the sum over the four others, on the same model. The
    # key authority now decrypts one participant set per model and refuses the second sum (PERMISSION_DENIED,
    # tests/e2e/test_malicious_aggregator.py); before that fix, an aggregator held this.
    others = torch.from_numpy(-secure_sum(updates[1:], plan, rng)).float()
    name = "differencing two sums (before its fix)"
    held[name] = (Case(name, "FedXray aggregator, two participant sets on one model (now refused)", 1),
                  decrypted - others)
    clip = 1.0
    clipped = one * min(1.0, clip / float(one.norm()))
    for epsilon in (8.0, 2.0):
        sigma = plan_noise_multiplier(epsilon, DELTA, 16 / 200, 200 // 16)
        noisy = clipped + torch.from_numpy(rng.normal(0.0, sigma * clip, one.numel())).float()
        name = f"DP-SGD step, epsilon {epsilon:g} (sigma {sigma:.2f})"
        held[name] = (Case(name, "plain FedAvg server, DP-SGD node", 1), noisy)
    return held


def _rank(reconstruction: torch.Tensor, truth: torch.Tensor, others: torch.Tensor) -> int:
    scores = [psnr(reconstruction, candidate.unsqueeze(0)) for candidate in torch.cat([truth, others])]
    return 1 + sum(score > scores[0] for score in scores[1:])


def run(out: Path, quick: bool, progress: Callable[[str], None] = print) -> list[Outcome]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images, labels = (torch.from_numpy(a) for a in generate_synthetic_xrays(4 + POOL, SIZE, 2, seed=3))
        victims, victim_labels, pool = images[:4], labels[:4], images[4:]
        model = dlg_lenet(2, SIZE)
        settings = InversionSettings(steps=steps(quick))
        prior_image = pool.mean(dim=0, keepdim=True)
        outcomes, pictures = [], []
        for name, (case, vector) in _targets(model, victims, victim_labels, np.random.default_rng(0)).items():
            started = time.monotonic()
            reconstruction = invert(model, split_like(vector, model), victim_labels[:case.images],
                                    (case.images, 1, SIZE, SIZE), settings=settings)
            # A batch comes back in any order: the victim's reconstruction is the one closest to it.
            best = max(range(case.images), key=lambda j: psnr(reconstruction[j:j + 1], victims[:1]))
            attacked: Fidelity = fidelity(reconstruction[best:best + 1], victims[:1])
            prior = fidelity(prior_image, victims[:1])
            outcome = Outcome(name, case.holder, attacked.psnr, attacked.ssim, prior.psnr, prior.ssim,
                              _rank(reconstruction[best:best + 1], victims[:1], pool), POOL + 1,
                              time.monotonic() - started)
            outcomes.append(outcome)
            pictures.append((name, reconstruction[best, 0]))
            progress(f"  {name}: PSNR {outcome.psnr:.1f} dB (prior {outcome.prior_psnr:.1f}), SSIM "
                     f"{outcome.ssim:.2f}, rank {outcome.rank} of {outcome.candidates} ({outcome.seconds:.0f} s)")
    finally:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    _figure(victims[0, 0], pictures, out / "inversion.png")
    return outcomes


def _figure(truth: torch.Tensor, pictures: list[tuple[str, torch.Tensor]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(pictures) + 1, figsize=(2.2 * (len(pictures) + 1), 2.8))
    for axis, (title, image) in zip(axes, [("true image", truth), *pictures]):
        axis.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
        axis.set_title(title.replace(", ", ",\n", 1), fontsize=7)
        axis.axis("off")
    fig.suptitle("Gradient inversion on SYNTHETIC radiographs (DLG CNN, 32 px)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def steps(quick: bool) -> int:
    return 500 if quick else 2000


def table(outcomes: list[Outcome]) -> str:
    rows = "\n".join(f"| {o.case} | {o.holder} | {o.psnr:.1f} | {o.ssim:.2f} | {o.psnr - o.prior_psnr:+.1f} | "
                     f"{o.rank} of {o.candidates} |" for o in outcomes)
    return ("| case | who holds it | PSNR (dB) | SSIM | PSNR gain over the prior | rank of the true image |\n"
            "|---|---|---|---|---|---|\n" + rows)


@dataclass(frozen=True)
class HeadOutcome:
    case: str
    cosine: float  # between the features read from the update and the victim's
    rank: int  # of the victim among the candidates by cosine to the features read; 1: singled out
    candidates: int


def head_update_attack(base: torch.nn.Module, progress: Callable[[str], None] = print) -> list[HeadOutcome]:
    """The demo's own model: a head update from the public ResNet-50 stand-in. One image's gradient of a linear
    head is (p - y) f^T for the weight and (p - y) for the bias, so the ratio of the two gives its features f
    exactly; the attacker then singles the image out among 65 candidates by feature match. The same read of the
    consortium's decrypted secure sum of five hospitals' one-image updates (the privacy table's codec: clip 0.5,
    Skellam noise of variance 16)."""
    images, labels = (torch.from_numpy(a) for a in generate_synthetic_xrays(4 + POOL, SIZE, 2, seed=3))
    features = penultimate_features(base, images, torch.device("cpu")).float()
    head = classifier_head(base)

    def update(i: int) -> np.ndarray:
        with torch.no_grad():
            error = torch.softmax(head(features[i:i + 1]), dim=1) - torch.nn.functional.one_hot(labels[i:i + 1], 2)
        return (-LEARNING_RATE * torch.cat([(error.T @ features[i:i + 1]).flatten(), error.flatten()])).double().numpy()

    def read(vector: np.ndarray) -> torch.Tensor:
        weight, bias = torch.from_numpy(vector[:-2]).view(2, -1), torch.from_numpy(vector[-2:])
        row = int(bias.abs().argmax())
        return (weight[row] / bias[row]).float()

    def score(name: str, vector: np.ndarray) -> HeadOutcome:
        found = read(vector)
        candidates = torch.cat([features[:1], features[4:]])
        similarity = torch.nn.functional.cosine_similarity(candidates, found.unsqueeze(0))
        outcome = HeadOutcome(name, float(similarity[0]), 1 + int((similarity[1:] > similarity[0]).sum()),
                              len(candidates))
        progress(f"  {name}: cosine {outcome.cosine:.3f} to the victim's features, rank {outcome.rank} of "
                 f"{outcome.candidates}")
        return outcome

    codec = recipe_codec(Recipe())
    updates = [update(i) for i in range(5)]
    total = secure_sum(updates, codec.update_plan(updates[0].size), np.random.default_rng(1))
    return [score("ResNet-50 head, plaintext, 1 image", updates[0]),
            score("ResNet-50 head, FedXray secure sum of 5", total)]


def head_table(outcomes: list[HeadOutcome]) -> str:
    return ("| case | cosine to the victim's features | rank of the true image |\n|---|---|---|\n"
            + "\n".join(f"| {o.case} | {o.cosine:.3f} | {o.rank} of {o.candidates} |" for o in outcomes))
