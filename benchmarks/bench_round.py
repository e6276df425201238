"""Secure versus plaintext round on the same services, data and seed.

Run: `make bench-round` or `python -m benchmarks.bench_round [--rounds R]`. The
workload: ResNet-50 at 64 px, 5 hospital processes on this machine, 200 training
images each (SYNTHETIC radiographs), one local epoch. Three runs: plaintext, secure,
and secure with the encryption precomputed while training (encryptions of zero,
noise and masks; `precompute_encryption=on`). Both secure runs give each node one
encryption worker process. Prints per-round latency, each phase's seconds (node
phases: slowest node) and the critical path (the slowest node's seconds from its
trained update to its last chunk sent, plus decryption and applying the new model)
side by side, with the ratios. `--drift-correction` adds a third run, secure with SCAFFOLD drift correction (uploads
twice as long, one extra gradient pass per hospital), and its ratio to plain secure. `--trainable-modes` runs secure
rounds only, training all, last_block and head (the plan's trained parameters are all that is uploaded, encrypted
and decrypted), side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import trace_report
from scripts.launcher import QUICK_TRAINING, Consortium, ConsortiumConfig
from services.common.runtime.metrics import PHASES


def run_mode(secure: bool, args: argparse.Namespace, root: Path, drift_correction: bool = False,
             precompute: bool = False, trainable: str = "all") -> list[dict[str, object]]:
    label = ("secure" if secure else "plaintext") + ("+drift" if drift_correction else "") + (
        "+pre" if precompute else "") + ("" if trainable == "all" else f"+{trainable}")
    nodes = args.nodes
    config = ConsortiumConfig(
        run_dir=root / label, nodes=nodes, seed=args.seed,
        # 200 training images per node after the 20% validation split.
        images_per_node=args.train_images * 5 // 4,
        # Fewer than 3 hospitals (the crossover runs): a quorum of all of them.
        aggregator={"trace_file": root / label / "traces" / "aggregator.jsonl", "min_participants": min(3, nodes)},
        settings={**QUICK_TRAINING, "rounds": args.rounds, "secure": secure, "allow_plaintext": not secure,
                  "drift_correction": drift_correction, "trainable": trainable,
                  "architecture": args.architecture, "image_size": args.image_size, "partition_scheme": "iid",
                  "round_deadline_seconds": 3600,
                  # Five hospitals share this machine's cores: one training thread and one encryption worker
                  # each (a precompute needs a worker to run beside training).
                  "torch_threads": 1, "encryption_workers": 1,
                  "precompute_encryption": "on" if precompute else "off"},
        # Every service writes its spans (services/common/runtime/tracing.py): the breakdown below.
        key_authority={"trace_file": root / label / "traces" / "key_authority.jsonl", "min_participants": min(3, nodes),
                       **({} if args.decrypt_workers is None else {"decrypt_workers": args.decrypt_workers})},
        per_node={i: {"trace_file": root / label / "traces" / f"node-{i + 1}.jsonl", "min_participants": min(3, nodes)}
                  for i in range(nodes)},
    )
    started = time.monotonic()
    print(f"[{label}] starting {nodes} hospitals, {args.rounds} round(s)...", flush=True)
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
        value = row["phases"].get(phase, 0.0) if phase else row[key]  # type: ignore[attr-defined,index]
        values.append(float(value))  # type: ignore[arg-type]
    return statistics.median(values)


def print_side_by_side(runs: dict[str, list[dict[str, object]]], base_label: str) -> None:
    """Median round, phase and critical-path seconds of each run, and each run's ratio to the base's."""
    others = [label for label in runs if label != base_label]
    print(f"{'':18}" + "".join(f"{label:>12}" for label in runs)
          + "".join(f"{label + '/' + base_label[:5]:>18}" for label in others))
    for name, key, phase in [("round", "seconds", None), *((p, "", p) for p in (*PHASES, "critical_path"))]:
        medians = {label: median_of(rows, key, phase) for label, rows in runs.items()}
        base = medians[base_label]
        ratios = "".join(f"{medians[label] / base:18.2f}" if base > 0 else f"{'-':>18}" for label in others)
        print(f"{name + ' s':18}" + "".join(f"{value:12.2f}" for value in medians.values()) + ratios)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--architecture", default="resnet50")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-images", type=int, default=200, help="training images per node")
    parser.add_argument("--nodes", type=int, default=5, help="hospitals on this machine (the quorum: at most 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--drift-correction", action="store_true", help="also time secure rounds with it on")
    parser.add_argument("--trainable-modes", action="store_true",
                        help="only secure rounds, training all, last_block and head (only those values travel)")
    parser.add_argument("--decrypt-workers", type=int, help="the key authority's decryption processes (default: its "
                        "own default)")
    parser.add_argument("--only", choices=("plaintext", "secure", "secure+pre"), action="append",
                        help="run only these (repeatable); the ratios need plaintext")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (logs, rows, span files)")
    args = parser.parse_args(argv)
    if args.trainable_modes:
        with tempfile.TemporaryDirectory(prefix="bench-round-") as tmp:
            modes = {mode: run_mode(True, args, Path(tmp), trainable=mode) for mode in ("all", "last_block", "head")}
        print(f"\nsecure rounds by what trains and travels: {args.architecture} at {args.image_size}px, 5 nodes x "
              f"{args.train_images} SYNTHETIC training images, 1 local epoch; medians over {args.rounds} round(s)")
        print_side_by_side(modes, "all")
        return
    with (contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory(prefix="bench-round-")
          ) as tmp:
        plans = {"plaintext": lambda: run_mode(False, args, Path(tmp)),
                 "secure": lambda: run_mode(True, args, Path(tmp)),
                 "secure+pre": lambda: run_mode(True, args, Path(tmp), precompute=True)}
        runs = {label: run() for label, run in plans.items() if not args.only or label in args.only}
        drift = run_mode(True, args, Path(tmp), drift_correction=True) if args.drift_correction else []
        print(f"\n{args.architecture} at {args.image_size}px, {args.nodes} nodes x {args.train_images} SYNTHETIC "
              f"training images, 1 local epoch; medians over {args.rounds} round(s)")
        print_side_by_side(runs, "plaintext" if "plaintext" in runs else next(iter(runs)))
        print("\nthe critical path, traced (OpenTelemetry spans of every service; benchmarks/trace_report.py)")
        print(trace_report.report({label: Path(tmp) / label / "traces" for label in runs}))
    if drift:
        print(f"\nsecure with drift correction, same workload; medians over {args.rounds} round(s)")
        print_side_by_side({"secure": runs["secure"], "+drift": drift}, "secure")

if __name__ == "__main__":
    main()
