"""Secure FL, plaintext FL and centralized training on the same SYNTHETIC data and seed.

    python -m scripts.experiment --out docs/results [--rounds 8] [--image-size 64]

Five hospitals, Dirichlet(alpha) label skew, the same architecture, local epochs
and learning rate everywhere; writes each run's rounds, then `REPORT.md` with
plots (see scripts/report.py). Progress is printed as rounds finish.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import threading
import time
from pathlib import Path

import torch

from scripts.centralized import node_settings_for, pooled_data, run_centralized
from scripts.consortium import Consortium, ConsortiumConfig, format_row
from scripts.paired import compare, describe, final_model
from scripts.report import write_report
from services.common.models import best_device
from services.hospital_node.trainer import LocalTraining


def centralized(args: argparse.Namespace) -> Path:
    """The centralized baseline: the same images, splits and local training, `--centralized-epochs` per round."""
    settings = node_settings_for(args.architecture, args.image_size, args.images_per_node * 5, 5, args.partition,
                                 args.alpha, args.seed, args.calibration_fraction)
    # No FedProx anchor: with one party there is no global model to stay near.
    training = LocalTraining(args.centralized_epochs, args.learning_rate, args.batch_size, args.local_optimizer, 0.0,
                             args.imbalance, settings.lr_schedule, settings.augment)
    out = args.out / "centralized"
    # As many CPU threads as each hospital: torch's default (every core) beside the hospitals' processes
    # oversubscribes the cores, and its threads' busy-waiting slowed CPU runs several times over.
    threads = torch.get_num_threads()
    torch.set_num_threads(args.torch_threads or threads)
    try:
        run_centralized(settings, 5, args.rounds, training, out, seed=args.seed + 1,
                        round_schedule=args.round_schedule, round_floor=args.round_floor, head_refit=args.head_refit)
    finally:
        torch.set_num_threads(threads)
    return Path(out)


def run_baseline(args: argparse.Namespace, runs: dict[str, Path], timings: dict[str, float]) -> None:
    started = time.monotonic()
    runs["centralized"] = centralized(args)
    timings["centralized"] = time.monotonic() - started


def wait_for(mode: str, consortium: Consortium, timeout: float, runs: dict[str, Path],
             timings: dict[str, float]) -> bool:
    """Print the consortium's rounds as they come; record its run and wall seconds. False if it failed."""
    started = time.monotonic()
    code = consortium.wait(timeout, on_row=lambda row: print(f"[{mode}] {format_row(row)}", flush=True))
    finished = consortium.config.run_dir / "aggregator" / "finished.json"
    # Side by side, a consortium may have finished before its turn to be waited for: time it by its own finish.
    timings[mode] = (finished.stat().st_mtime - consortium.started_at if finished.exists()
                     else time.monotonic() - started)
    if code != 0:
        print(f"[{mode}] failed with exit {code}; logs in {consortium.logs}", flush=True)
        return False
    runs[mode] = consortium.config.run_dir
    return True


def paired_notes(args: argparse.Namespace, runs: dict[str, Path]) -> str:
    """Each federated run's F1 gap to the baseline on the same images, paired (see scripts.paired)."""
    if "centralized" not in runs:
        return ""
    settings = node_settings_for(args.architecture, args.image_size, args.images_per_node * 5, 5, args.partition,
                                 args.alpha, args.seed, args.calibration_fraction)
    data, device = pooled_data(settings, 5), best_device()
    baseline = final_model("centralized", runs["centralized"], args.architecture, data.num_classes)
    notes = []
    for mode in ("secure", "plaintext"):
        if mode in runs:
            try:
                other = final_model(mode, runs[mode], args.architecture, data.num_classes)
                notes.append(describe("centralized", mode, compare(baseline, other, args.architecture, data, device)))
            except ValueError as refused:
                notes.append(f"No paired F1 gap for {mode}: {refused}")
    print("\n".join(notes), flush=True)
    return "".join(f"\n\n{note}" for note in notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/experiment"))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--architecture", default="resnet50")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images-per-node", type=int, default=400)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--partition", default="dirichlet", choices=("dirichlet", "label_mix"),
                        help="dirichlet: per-class split (sizes vary); label_mix: equal sizes, mixed labels")
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--round-schedule", default="constant", choices=("constant", "cosine"),
                        help="cosine: lower the local learning rate from round to round (all three runs alike)")
    parser.add_argument("--round-floor", type=float, default=0.1,
                        help="under --round-schedule cosine, the last round's share of --learning-rate")
    parser.add_argument("--centralized-epochs", type=int, default=0,
                        help="the baseline's epochs per round over the pooled data (default: --local-epochs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--clip-norm", type=float, default=50.0)
    parser.add_argument("--noise-variance", type=float, default=16.0)
    parser.add_argument("--server-optimizer", default="fedavg")
    parser.add_argument("--server-learning-rate", type=float, default=1.0)
    parser.add_argument("--server-momentum", type=float, default=0.0)
    parser.add_argument("--local-optimizer", default="sgd", choices=("sgd", "adamw"))
    parser.add_argument("--proximal-mu", type=float, default=0.0)
    parser.add_argument("--drift-correction", action="store_true",
                        help="SCAFFOLD drift correction in both consortia (uploads carry twice the values)")
    parser.add_argument("--head-refit", action="store_true",
                        help="after the last round, both consortia refit the classifier head from the hospitals' "
                             "summed feature statistics (one more secure sum), and the centralized baseline from "
                             "its pooled images' features")
    parser.add_argument("--imbalance", default="class_weights",
                        choices=("none", "class_weights", "sampler", "logit_adjust"))
    parser.add_argument("--calibration-fraction", type=float, default=0.5,
                        help="share of each hospital's validation split kept for choosing the operating point "
                             "(0: metrics at argmax only)")
    parser.add_argument("--seed", type=int, default=0,
                        help="N: the SYNTHETIC set, its partition and splits and the initial model; "
                             "training and noise randomness derive from N+1")
    parser.add_argument("--encryption-workers", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="CPU threads of each hospital and of the centralized baseline (0: torch's default)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--skip", action="append", default=[], help="secure | plaintext | centralized")
    parser.add_argument("--concurrent", action="store_true",
                        help="run the two consortia and the centralized baseline at once (a machine with room)")
    args = parser.parse_args(argv)
    args.centralized_epochs = args.centralized_epochs or args.local_epochs
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, Path] = {}
    timings: dict[str, float] = {}
    consortia: dict[str, Consortium] = {}
    for mode in ("plaintext", "secure"):
        if mode in args.skip:
            continue
        run_dir = args.out / mode
        shutil.rmtree(run_dir, ignore_errors=True)
        config = ConsortiumConfig(
            run_dir=run_dir, nodes=5, rounds=args.rounds, secure=mode == "secure", architecture=args.architecture,
            image_size=args.image_size, images_per_node=args.images_per_node, partition_scheme=args.partition,
            partition_alpha=args.alpha, local_epochs=args.local_epochs, learning_rate=args.learning_rate,
            round_schedule=args.round_schedule, round_floor=args.round_floor,
            batch_size=args.batch_size, clip_norm=args.clip_norm, noise_variance=args.noise_variance,
            server_optimizer=args.server_optimizer, server_learning_rate=args.server_learning_rate,
            server_momentum=args.server_momentum, local_optimizer=args.local_optimizer,
            proximal_mu=args.proximal_mu, drift_correction=args.drift_correction, head_refit=args.head_refit,
            imbalance=args.imbalance,
            calibration_fraction=args.calibration_fraction, encryption_workers=args.encryption_workers,
            torch_threads=args.torch_threads, seed=args.seed + 1, data_seed=args.seed, round_deadline_seconds=3600)
        consortia[mode] = Consortium(config)
        print(f"[{mode}] class counts:\n{consortia[mode].write_class_counts()}", flush=True)
    if args.concurrent:
        with contextlib.ExitStack() as stack:
            for consortium in consortia.values():
                stack.enter_context(consortium)
            baseline = threading.Thread(target=run_baseline, args=(args, runs, timings), daemon=True)
            if "centralized" not in args.skip:
                baseline.start()
            for mode, consortium in consortia.items():
                if not wait_for(mode, consortium, args.timeout, runs, timings):
                    return 1
            if "centralized" not in args.skip:
                baseline.join()
    else:
        for mode, consortium in consortia.items():
            with consortium:
                if not wait_for(mode, consortium, args.timeout, runs, timings):
                    return 1
        if "centralized" not in args.skip:
            run_baseline(args, runs, timings)
    concurrently = " (run concurrently)" if args.concurrent else ""
    notes = (f"Setting: {args.architecture} at {args.image_size} px, 5 hospitals x {args.images_per_node} images "
             f"(80% train / 20% held out each; {args.calibration_fraction:.0%} of the held-out images choose the "
             f"operating point, the rest are the evaluated set), Dirichlet alpha={args.alpha} label skew ({args.partition} split), "
             f"{args.rounds} rounds of {args.local_epochs} local epochs (centralized: "
             f"{args.centralized_epochs} epochs per round over the pooled data), lr {args.learning_rate}"
             + (f" falling along a cosine to {args.round_floor:g}x by the last round" if args.round_schedule == "cosine"
                else "") + f", batch "
             f"{args.batch_size}, clip norm {args.clip_norm}, Skellam noise variance {args.noise_variance} per quorum, "
             f"local optimizer {args.local_optimizer}, imbalance {args.imbalance}, FedProx mu {args.proximal_mu}, "
             f"drift correction {'on' if args.drift_correction else 'off'}, "
             + ("then a refit of the classifier head by LDA on the training images' feature statistics (summed "
                "securely in the federated runs; the last round's row), " if args.head_refit else "")
             + f"server {args.server_optimizer} (lr {args.server_learning_rate}, momentum {args.server_momentum}), "
             f"seed {args.seed}. "
             f"Wall seconds per run{concurrently}: {json.dumps({k: round(v) for k, v in timings.items()})}.")
    notes += paired_notes(args, runs)
    print(write_report(runs, args.out, "Secure vs plaintext federated vs centralized (SYNTHETIC data)", notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
