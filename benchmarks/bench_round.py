"""Secure versus plaintext round on the same services, data and seed.

Run: `make bench-round` or `python -m benchmarks.bench_round [--rounds R]`. The
workload: ResNet-50 at 64 px, 5 hospital processes on this machine, 200 training
images each (SYNTHETIC radiographs), one local epoch. Prints per-round latency of
both modes, their ratio, and the seconds of each phase (node phases: slowest node).
`--drift-correction` adds a third run, secure with SCAFFOLD drift correction (uploads
twice as long, one extra gradient pass per hospital), and its ratio to plain secure.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from scripts.consortium import Consortium, ConsortiumConfig

PHASES = ("train", "encode", "encrypt", "upload", "aggregate", "decrypt", "apply")


def run_mode(secure: bool, args: argparse.Namespace, root: Path, drift_correction: bool = False) -> list[dict[str, object]]:
    label = ("secure" if secure else "plaintext") + ("+drift" if drift_correction else "")
    config = ConsortiumConfig(
        run_dir=root / label, nodes=5, seed=args.seed,
        # 200 training images per node after the 20% validation split.
        images_per_node=args.train_images * 5 // 4,
        settings={"rounds": args.rounds, "secure": secure, "allow_plaintext": not secure,
                  "drift_correction": drift_correction,
                  "architecture": args.architecture, "image_size": args.image_size, "partition_scheme": "iid",
                  "round_deadline_seconds": 3600,
                  # Five hospitals share this machine's cores: one training thread each, encryption in-process.
                  "torch_threads": 1, "encryption_workers": 0},
    )
    started = time.monotonic()
    print(f"[{label}] starting 5 hospitals, {args.rounds} round(s)...", flush=True)
    with Consortium(config) as consortium:
        code = consortium.wait(args.timeout, on_row=lambda row: print(
            f"  round {row['round']} done: {float(str(row.get('seconds', 0))):.1f} s", flush=True))
        rows = [r for r in consortium.rows() if int(str(r["round"])) >= 1 and not r.get("failed")]
    if code != 0 or len(rows) != args.rounds:
        raise SystemExit(f"{label} run failed (exit {code}); logs in {root}")
    print(f"  finished in {time.monotonic() - started:.0f} s", flush=True)
    return rows


def median_of(rows: list[dict[str, object]], key: str, phase: str | None = None) -> float:
    values = []
    for row in rows:
        value = row["phases"][phase] if phase else row[key]  # type: ignore[index]
        values.append(float(value))  # type: ignore[arg-type]
    return statistics.median(values)


def print_side_by_side(base_label: str, base: list[dict[str, object]], other_label: str,
                       other: list[dict[str, object]], ratio_label: str) -> None:
    """Median round and phase seconds of two runs, with the other's ratio to the base."""
    print(f"{'':16} {base_label:>10} {other_label:>10} {ratio_label:>13}")
    b_round, o_round = median_of(base, "seconds"), median_of(other, "seconds")
    print(f"{'round seconds':16} {b_round:10.1f} {o_round:10.1f} {o_round / b_round:13.2f}")
    for phase in PHASES:
        b, o = median_of(base, "", phase), median_of(other, "", phase)
        ratio = f"{o / b:13.2f}" if b > 0 else f"{'-':>13}"
        print(f"{phase + ' s':16} {b:10.2f} {o:10.2f} {ratio}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--architecture", default="resnet50")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-images", type=int, default=200, help="training images per node")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--drift-correction", action="store_true", help="also time secure rounds with it on")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-round-") as tmp:
        plaintext = run_mode(False, args, Path(tmp))
        secure = run_mode(True, args, Path(tmp))
        drift = run_mode(True, args, Path(tmp), drift_correction=True) if args.drift_correction else []
    print(f"\n{args.architecture} at {args.image_size}px, 5 nodes x {args.train_images} SYNTHETIC training images, "
          f"1 local epoch; medians over {args.rounds} round(s)")
    print_side_by_side("plaintext", plaintext, "secure", secure, "secure/plain")
    if drift:
        print(f"\nsecure with drift correction, same workload; medians over {args.rounds} round(s)")
        print_side_by_side("secure", secure, "+drift", drift, "drift/secure")

if __name__ == "__main__":
    main()
