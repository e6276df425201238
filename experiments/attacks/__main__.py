"""The attack harness: the known attacks against FedXray's own protections, on SYNTHETIC data.

    python -m experiments.attacks --out runs/attacks [--quick]      (make attacks)

Three sections, each with a baseline where the attack should succeed beside FedXray's configuration:

1. gradient inversion against what each party holds (`inversion_section`);
2. membership inference against the consortium's final models, non-private and under DP-SGD, with every DP
   model's ROC checked against its bound (`membership_section`; a violation stops the command with an error);
3. FGSM and PGD against the same models, and the hospitals' PGD adversarial training with its cost
   (`robustness_section`).

Sections 2 and 3 start from the public ResNet-50 stand-in (`experiments.pretrain`, cached; built first when
missing, about 4 minutes here). Writes ATTACKS.md, attacks.json and the figures inversion.png, membership.png and
robustness.png to --out, with progress lines throughout. --quick: a small size for tests (a 1-epoch stand-in on
300 images, 500 inversion steps, two shadow sets, two budgets), whose figures say nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from experiments.attacks import inversion_section, membership_section, robustness_section
from experiments.pretrain import CACHE, StandIn, stand_in_weights
from experiments.privacy_table import hospitals, pooled
from services.common.ml.initial_weights import load_initial_weights
from services.common.ml.models import build_model


@dataclass(frozen=True)
class Size:
    """How big a run is: the default (docs/ATTACKS.md) or --quick (tests)."""

    stand_in: StandIn
    images_per_node: int
    shadows: int
    epsilons: tuple[float, ...]
    budgets: list[float]  # x 1/255
    pgd_steps: int
    robust_images: int
    fine_tune_epochs: int
    adversarial_epsilon: float  # the adversarial training's budget, x 1/255


DEFAULT = Size(StandIn(image_size=32), 200, 4, (8.0, 2.0, 1.0), [1, 2, 4, 8], 10, 200, 5, 4)
QUICK = Size(StandIn(image_size=32, images=300, epochs=1), 40, 2, (8.0,), [2, 8], 3, 40, 1, 4)


def run(out: Path, *, quick: bool, cache: Path = CACHE,
        progress: Callable[[str], None] = partial(print, flush=True)) -> dict[str, object]:
    size = QUICK if quick else DEFAULT
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    started = time.monotonic()
    progress("1/3 gradient inversion (SYNTHETIC data, DLG CNN, one thread):")
    inversion = inversion_section.run(out, quick, progress)
    torch.set_num_threads(threads)
    progress("2/3 membership inference on the consortium's final models (SYNTHETIC data):")
    base = build_model("resnet50", 2, 0)
    load_initial_weights(base, stand_in_weights(size.stand_in, cache))
    progress("  the demo's model: one head update from the public ResNet-50 stand-in")
    head_updates = inversion_section.head_update_attack(base, progress)
    membership, models = membership_section.run(base, images_per_node=size.images_per_node, shadows=size.shadows,
                                                epsilons=size.epsilons, progress=progress)
    membership_section.figure(membership, out / "membership.png")
    progress("3/3 adversarial examples (SYNTHETIC validation images):")
    validation = pooled(hospitals(membership_section.TARGET_SEED, size.images_per_node, 32))
    images, labels = validation.val_images[:size.robust_images], validation.val_labels[:size.robust_images]
    attacked = [(name, model) for name, model in models.items() if "baseline" not in name][:3]
    robustness = []
    for name, model in attacked:
        robustness.append(robustness_section.measure(name, model, images, labels, budgets=size.budgets,
                                                                 steps=size.pgd_steps))
        progress(f"  {name}: PGD accuracy {' '.join(f'{a:.2f}' for a in robustness[-1].pgd['accuracy'])}")
    for adversarial in (0.0, size.adversarial_epsilon):
        model, seconds = robustness_section.fine_tune(base, images_per_node=size.images_per_node,
                                                      epochs=size.fine_tune_epochs,
                                                      adversarial_epsilon=adversarial / 255)
        name = ("last block fine-tuned, " + (f"PGD adversarial training at {adversarial:g}/255" if adversarial
                                             else "plain"))
        robustness.append(robustness_section.measure(name, model, images, labels, budgets=size.budgets,
                                                                 steps=size.pgd_steps))
        robustness[-1].step_seconds = seconds
        progress(f"  {name} ({seconds:.2f} s a step): PGD accuracy "
                 f"{' '.join(f'{a:.2f}' for a in robustness[-1].pgd['accuracy'])}")
    robustness_section.figure(robustness, out / "robustness.png")
    minutes = (time.monotonic() - started) / 60
    rows = {"inversion": [asdict(o) for o in inversion], "head_updates": [asdict(o) for o in head_updates],
            "membership": [r.row() for r in membership],
            "robustness": [asdict(r) for r in robustness], "minutes": round(minutes, 1), "quick": quick}
    (out / "attacks.json").write_text(json.dumps(rows, indent=2))
    (out / "ATTACKS.md").write_text(_report(size, quick, inversion=inversion, head_updates=head_updates,
                                                    membership=membership, robustness=robustness, minutes=minutes))
    return rows


def _report(size: Size, quick: bool, *, inversion: list[inversion_section.Outcome],
            head_updates: list[inversion_section.HeadOutcome], membership: list[membership_section.Result],
            robustness: list[robustness_section.Robustness],
            minutes: float) -> str:
    prior = inversion[0]
    costs = [r for r in robustness if r.step_seconds is not None]
    cost_rows = "\n".join(f"| {r.model} | {r.step_seconds:.2f} | {r.pgd['f1'][0]:.3f} | {r.pgd['accuracy'][0]:.3f} | "
                          f"{r.pgd['accuracy'][-1]:.3f} |" for r in costs)
    return f"""# Attacks on SYNTHETIC data

`python -m experiments.attacks{' --quick' if quick else ''}`: {minutes:.1f} minutes. Every figure is on SYNTHETIC
radiographs.

## 1. Gradient inversion

Inverting Gradients, {inversion_section.steps(quick)} Adam steps, true labels given to the attacker, on the DLG
paper's small CNN at 32 px. The prior is the mean of {prior.candidates - 1} other SYNTHETIC images: PSNR
{prior.prior_psnr:.1f} dB and SSIM {prior.prior_ssim:.2f} against the victim, with no attack at all.

{inversion_section.table(inversion)}

![originals and reconstructions](inversion.png)

The demo's own model: one image's update of the ResNet-50 head (from the public stand-in) holds the image's
features exactly; matched against 65 candidates:

{inversion_section.head_table(head_updates)}

## 2. Membership inference

The public ResNet-50 stand-in with its head trained by the consortium (3 secure rounds, five hospitals of
{size.images_per_node} SYNTHETIC images); {size.shadows} shadow set(s) for offline LiRA; members and non-members
matched by class. Every DP model's curves are checked against TPR <= e^eps FPR + delta (95%, Bonferroni over
the curve's points).

{membership_section.table(membership)}

![ROC curves, log-log](membership.png)

## 3. Adversarial examples

PGD ({size.pgd_steps} steps, no random start) and FGSM on {size.robust_images}
pooled validation images. PGD rows:

{robustness_section.table(robustness)}

The hospitals' PGD adversarial training (`FEDXRAY_NODE_ADVERSARIAL_EPSILON`), last block and head, pooled images,
{size.fine_tune_epochs} epochs:

| model | seconds per step | clean F1 | clean accuracy | accuracy at {size.budgets[-1]:g}/255 |
|---|---|---|---|---|
{cost_rows}

![accuracy, F1 and AUC against the budget](robustness.png)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/attacks"))
    parser.add_argument("--quick", action="store_true", help="the tests' small size; its figures say nothing")
    args = parser.parse_args()
    run(args.out, quick=args.quick)
    print(f"wrote {args.out / 'ATTACKS.md'}")


if __name__ == "__main__":
    main()
