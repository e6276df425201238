"""Secure FL, plaintext FL and centralized training on the same SYNTHETIC data and seed.

    python -m experiments.experiment --out docs/results [--rounds 8] [--image-size 64]

Five hospitals, the same architecture, local epochs and learning rate everywhere;
every service setting named below keeps its settings model's default unless given.
Writes each run's rounds, then `REPORT.md` with plots (see experiments/report.py).
Progress is printed as rounds finish.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from experiments.centralized import pooled_data, run_centralized
from experiments.paired import compare, describe, final_model
from experiments.report import write_report
from experiments.setting_options import add_setting_options, chosen_settings
from scripts.launcher import Consortium, ConsortiumConfig, format_row
from services.aggregator.round_planner import training_plan
from services.aggregator.run_outcome import FINISHED_MARKER
from services.common.ml.models import best_device
from services.hospital_node.config import TrainingSettings
from services.hospital_node.local_round import local_training

NODES = 5
SETTINGS = ("rounds", "architecture", "image_size", "partition_scheme", "partition_alpha", "local_epochs",
            "learning_rate", "round_schedule", "round_floor", "batch_size", "clip_norm", "noise_variance",
            "server_optimizer", "server_learning_rate", "server_momentum", "local_optimizer", "proximal_mu",
            "drift_correction", "head_refit", "imbalance", "calibration_fraction", "encryption_workers",
            "torch_threads", "record_epsilon", "dp_clip_norm", "trainable", "dp_grad_sample_mode",
            "init_weights")


def centralized(config: ConsortiumConfig, epochs: int, out: Path, seed: int) -> Path:
    """The centralized baseline: the same images, splits and local training, `epochs` per round."""
    node = config.node_settings(0)
    # No FedProx anchor: with one party there is no global model to stay near.
    training = replace(local_training(training_plan(config.aggregator_settings(), 1), TrainingSettings.of(node)),
                       epochs=epochs, proximal_mu=0.0)
    # As many CPU threads as each hospital: torch's default (every core) beside the hospitals' processes
    # oversubscribes the cores, and its threads' busy-waiting slowed CPU runs several times over.
    threads = torch.get_num_threads()
    torch.set_num_threads(node.torch_threads or threads)
    try:
        run_centralized(config, training, out, seed=seed)
    finally:
        torch.set_num_threads(threads)
    return out


def wait_for(mode: str, consortium: Consortium, timeout: float, runs: dict[str, Path],
             timings: dict[str, float]) -> bool:
    """Print the consortium's rounds as they come; record its run and wall seconds. False if it failed."""
    started = time.monotonic()
    code = consortium.wait(timeout, on_row=lambda row: print(f"[{mode}] {format_row(row)}", flush=True))
    finished = consortium.config.run_dir / "aggregator" / FINISHED_MARKER
    # Side by side, a consortium may have finished before its turn to be waited for: time it by its own finish.
    timings[mode] = (finished.stat().st_mtime - consortium.started_at if finished.exists()
                     else time.monotonic() - started)
    if code != 0:
        print(f"[{mode}] failed with exit {code}; logs in {consortium.logs}", flush=True)
        return False
    runs[mode] = consortium.config.run_dir
    return True


def paired_notes(config: ConsortiumConfig, runs: dict[str, Path]) -> str:
    """Each federated run's F1 gap to the baseline on the same images, paired (see experiments.paired)."""
    if "centralized" not in runs:
        return ""
    data, device = pooled_data(config), best_device()
    architecture = config.aggregator_settings().architecture
    baseline = final_model("centralized", runs["centralized"], architecture, data.num_classes)
    notes = []
    for mode in ("secure", "plaintext"):
        if mode in runs:
            try:
                other = final_model(mode, runs[mode], architecture, data.num_classes)
                notes.append(describe("centralized", mode, compare(baseline, other, architecture, data, device)))
            except ValueError as refused:
                notes.append(f"No paired F1 gap for {mode}: {refused}")
    print("\n".join(notes), flush=True)
    return "".join(f"\n\n{note}" for note in notes)


def describe_setting(config: ConsortiumConfig, centralized_epochs: int, seed: int) -> str:
    a, n = config.aggregator_settings(), config.node_settings(0)
    return (f"Setting: {a.architecture} at {n.image_size} px, {NODES} hospitals x {n.synthetic_images // NODES} "
            f"images ({1 - n.validation_fraction:.0%} train / {n.validation_fraction:.0%} held out each; "
            f"{n.calibration_fraction:.0%} of the held-out images choose the operating point, the rest are the "
            f"evaluated set), {n.partition_scheme} split (alpha {n.partition_alpha}), {a.rounds} rounds of "
            f"{a.local_epochs} local epochs (centralized: {centralized_epochs} epochs per round over the pooled "
            f"data), lr {a.learning_rate}"
            + (f" falling along a cosine to {a.round_floor:g}x by the last round" if a.round_schedule == "cosine"
               else "")
            + f", batch {a.batch_size}, clip norm {a.clip_norm}, {a.noise_kind} noise variance {a.noise_variance} "
            f"per quorum, local optimizer {a.local_optimizer}, imbalance {n.imbalance}, FedProx mu {a.proximal_mu}, "
            f"drift correction {'on' if a.drift_correction else 'off'}, "
            + ("then a refit of the classifier head by LDA on the training images' feature statistics (summed "
               "securely in the federated runs; the last round's row), " if a.head_refit else "")
            + f"server {a.server_optimizer} (lr {a.server_learning_rate}, momentum {a.server_momentum}), seed {seed}"
            + (f", initial weights {a.init_weights.name}" if a.init_weights else "")
            + (f", record-level DP-SGD at epsilon {n.record_epsilon or a.record_epsilon:g} (delta {n.record_delta or 'min(1e-5, 0.1/n)'}"
               f", clip norm {n.dp_clip_norm}, {a.trainable} trained, {n.dp_grad_sample_mode} per-example "
               f"gradients) in the federated run" if (n.record_epsilon or a.record_epsilon) else "")
            + ".")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/experiment"))
    parser.add_argument("--images-per-node", type=int, default=None,
                        help="SYNTHETIC images per hospital (default: the nodes' synthetic_images / 5)")
    parser.add_argument("--centralized-epochs", type=int, default=0,
                        help="the baseline's epochs per round over the pooled data (default: the local epochs)")
    parser.add_argument("--seed", type=int, default=0,
                        help="N: the SYNTHETIC set, its partition and splits and the initial model; "
                             "training and noise randomness derive from N+1")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--skip", action="append", default=[], help="secure | plaintext | centralized")
    parser.add_argument("--concurrent", action="store_true",
                        help="run the two consortia and the centralized baseline at once (a machine with room)")
    add_setting_options(parser, SETTINGS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    values = {**chosen_settings(args, SETTINGS), "synthetic_seed": args.seed, "model_seed": args.seed,
              "round_deadline_seconds": 3600,
              # SYNTHETIC hospitals, often with a handful of validation images each: the comparison needs their
              # counts, and there is no patient behind them (a real hospital keeps the floor of 20).
              "min_validation_images": 0}
    if "init_weights" in values:
        values["init_weights"] = Path(str(values["init_weights"])).resolve()
    if float(str(values.get("record_epsilon", 0))) > 0:
        # Each hospital plans its record-level noise for the whole run.
        values["record_rounds"] = int(str(values.get("rounds", ConsortiumConfig(run_dir=args.out).aggregator_settings(
            insecure=True).rounds)))
    base = ConsortiumConfig(run_dir=args.out, nodes=NODES, settings=values, images_per_node=args.images_per_node,
                            seed=args.seed + 1)
    local = replace(base, insecure=True)  # the same settings, read in this process (no certificates needed)
    centralized_epochs = args.centralized_epochs or local.aggregator_settings().local_epochs
    runs: dict[str, Path] = {}
    timings: dict[str, float] = {}
    consortia: dict[str, Consortium] = {}
    for mode in ("plaintext", "secure"):
        if mode in args.skip:
            continue
        shutil.rmtree(args.out / mode, ignore_errors=True)
        consortia[mode] = Consortium(replace(base, run_dir=args.out / mode,
                                             settings={**values, "secure": mode == "secure",
                                                       "allow_plaintext": mode == "plaintext"}))
        print(f"[{mode}] class counts:\n{consortia[mode].write_class_counts()}", flush=True)

    def baseline() -> None:
        started = time.monotonic()
        runs["centralized"] = centralized(local, centralized_epochs, args.out / "centralized", args.seed + 1)
        timings["centralized"] = time.monotonic() - started

    with contextlib.ExitStack() as stack:
        thread = threading.Thread(target=baseline, daemon=True)
        if args.concurrent:
            for consortium in consortia.values():
                stack.enter_context(consortium)
            if "centralized" not in args.skip:
                thread.start()
        for mode, consortium in consortia.items():
            with contextlib.ExitStack() as own:
                if not args.concurrent:
                    own.enter_context(consortium)
                if not wait_for(mode, consortium, args.timeout, runs, timings):
                    return 1
        if "centralized" not in args.skip:
            if not args.concurrent:
                thread.start()
            thread.join()
    concurrently = " (run concurrently)" if args.concurrent else ""
    notes = (describe_setting(local, centralized_epochs, args.seed)
             + f" Wall seconds per run{concurrently}: {json.dumps({k: round(v) for k, v in timings.items()})}.")
    notes += paired_notes(local, runs)
    print(write_report(runs, args.out, "Secure vs plaintext federated vs centralized (SYNTHETIC data)", notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
