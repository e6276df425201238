"""The attack harness (issue 34), first section: gradient inversion against what each party holds.

    python -m experiments.attacks --out runs/attacks [--quick]

On SYNTHETIC radiographs (32 px) and the small sigmoid CNN of the DLG paper, where inversion is known to work,
the Inverting Gradients attack (`experiments.attacks.inversion`) is run against:

- one hospital's plaintext update, as a plain-FedAvg server sees it: one image, one step; four images, one step;
  one image, five local steps;
- FedXray's aggregator: the decrypted sum of five hospitals' updates, each encoded by the real secure codec
  (clip, randomized rounding, Skellam noise at the default variance 16, mod 2^b);
- one image's DP-SGD step (clipped to 1, Gaussian noise at the sigma the hospital's PLD plan gives for epsilon 8
  and 2 over one epoch of 200 images in batches of 16, delta 1e-5).

The attacker is told the true labels (generous to it). Each reconstruction is scored against the true image by
PSNR and SSIM beside the population prior (the mean of 64 other SYNTHETIC images, which needs no attack), and by
re-identification: the rank of the true image among 65 candidates by PSNR to the reconstruction (1: singled
out). Writes ATTACKS.md, attacks.json and inversion.png to --out; one progress line per case. Membership
inference and adversarial examples are not in this command yet (their pieces are in this package, tested).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
from experiments.simulator import secure_sum
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
        settings = InversionSettings(steps=500 if quick else 2000)
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
    (out / "attacks.json").write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
    _figure(victims[0, 0], pictures, out / "inversion.png")
    _report(outcomes, settings, out / "ATTACKS.md", quick)
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


def _report(outcomes: list[Outcome], settings: InversionSettings, path: Path, quick: bool) -> None:
    rows = "\n".join(f"| {o.case} | {o.holder} | {o.psnr:.1f} | {o.ssim:.2f} | {o.psnr - o.prior_psnr:+.1f} | "
                     f"{o.rank} of {o.candidates} |" for o in outcomes)
    path.write_text(f"""# Attacks on SYNTHETIC data: gradient inversion

`python -m experiments.attacks{' --quick' if quick else ''}`: Inverting Gradients, {settings.steps} Adam steps,
true labels given to the attacker, on the DLG paper's small CNN at 32 px. The prior is the mean of
{outcomes[0].candidates - 1} other SYNTHETIC images: PSNR {outcomes[0].prior_psnr:.1f} dB and SSIM
{outcomes[0].prior_ssim:.2f} against the victim, with no attack at all.

| case | who holds it | PSNR (dB) | SSIM | PSNR gain over the prior | rank of the true image |
|---|---|---|---|---|---|
{rows}

![originals and reconstructions](inversion.png)
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/attacks"))
    parser.add_argument("--quick", action="store_true", help="500 attack steps instead of 2000")
    args = parser.parse_args()
    print("gradient inversion (SYNTHETIC data):")
    run(args.out, args.quick)
    print(f"wrote {args.out / 'ATTACKS.md'}")


if __name__ == "__main__":
    main()
