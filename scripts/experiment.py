"""Secure FL, plaintext FL and centralized training on the same SYNTHETIC data and seed.

    python -m scripts.experiment --out docs/results [--rounds 8] [--image-size 64]

Five hospitals, Dirichlet(alpha) label skew, the same architecture, local epochs
and learning rate everywhere; writes each run's rounds, then `REPORT.md` with
plots (see scripts/report.py). Progress is printed as rounds finish.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from scripts.centralized import node_settings_for, run_centralized
from scripts.consortium import Consortium, ConsortiumConfig, format_row
from scripts.report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/experiment"))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--architecture", default="resnet50")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images-per-node", type=int, default=400)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--clip-norm", type=float, default=50.0)
    parser.add_argument("--noise-variance", type=float, default=16.0)
    parser.add_argument("--server-optimizer", default="fedavg")
    parser.add_argument("--encryption-workers", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--skip", action="append", default=[], help="secure | plaintext | centralized")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, Path] = {}
    timings: dict[str, float] = {}
    for mode in ("plaintext", "secure"):
        if mode in args.skip:
            continue
        run_dir = args.out / mode
        shutil.rmtree(run_dir, ignore_errors=True)
        config = ConsortiumConfig(
            run_dir=run_dir, nodes=5, rounds=args.rounds, secure=mode == "secure", architecture=args.architecture,
            image_size=args.image_size, images_per_node=args.images_per_node, partition_scheme="dirichlet",
            partition_alpha=args.alpha, local_epochs=args.local_epochs, learning_rate=args.learning_rate,
            batch_size=args.batch_size, clip_norm=args.clip_norm, noise_variance=args.noise_variance,
            server_optimizer=args.server_optimizer, encryption_workers=args.encryption_workers,
            torch_threads=args.torch_threads, seed=1, round_deadline_seconds=3600)
        consortium = Consortium(config)
        print(f"[{mode}] class counts:\n{consortium.write_class_counts()}", flush=True)
        started = time.monotonic()
        with consortium:
            code = consortium.wait(args.timeout, on_row=lambda row, m=mode: print(f"[{m}] {format_row(row)}",
                                                                                   flush=True))
        timings[mode] = time.monotonic() - started
        if code != 0:
            print(f"[{mode}] failed with exit {code}; logs in {run_dir / 'logs'}", flush=True)
            return 1
        runs[mode] = run_dir
    if "centralized" not in args.skip:
        started = time.monotonic()
        settings = node_settings_for(args.architecture, args.image_size, args.images_per_node * 5, 5, "dirichlet",
                                     args.alpha, 0)
        run_centralized(settings, 5, args.rounds, args.local_epochs, args.learning_rate, args.batch_size,
                        args.out / "centralized", seed=1)
        timings["centralized"] = time.monotonic() - started
        runs["centralized"] = args.out / "centralized"
    notes = (f"Setting: {args.architecture} at {args.image_size} px, 5 hospitals x {args.images_per_node} images "
             f"(80% train / 20% validation each), Dirichlet alpha={args.alpha} label skew, {args.rounds} rounds of "
             f"{args.local_epochs} local epochs, lr {args.learning_rate}, batch {args.batch_size}, clip norm "
             f"{args.clip_norm}, Skellam noise variance {args.noise_variance} per quorum, server "
             f"{args.server_optimizer}. Wall seconds per run: {json.dumps({k: round(v) for k, v in timings.items()})}.")
    print(write_report(runs, args.out, "Secure vs plaintext federated vs centralized (SYNTHETIC data)", notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
