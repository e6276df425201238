"""A five-hospital ResNet-50 consortium at 224x224 on a GPU machine, timed per phase.

Run: `python -m experiments.gpu_consortium [--rounds 3] [--out DIR]`. Every node trains
on CUDA with AMP and channels_last (the node logs say which device it used) on its
part of the SYNTHETIC radiograph set; encryption runs on CPU worker processes.
Prints per-round seconds of each phase (node phases: slowest node) and the critical
path, and writes them as JSON. Meant to finish within 5 minutes on one H100/H200-class
GPU. By default one SGD epoch a round (a timing run); `--recipe` trains with the
services' defaults instead (the recipe that learns: 10 local epochs, AdamW, head refit).
`--plaintext` times the same rounds without encryption, `--precompute` sets the nodes'
`precompute_encryption`. experiments/gpu_critical_path.sh runs the side-by-side set.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from scripts.launcher import QUICK_TRAINING, TABLE_HEADER, Consortium, ConsortiumConfig, format_row
from services.common.runtime.atomic_files import write_json_atomic
from services.common.runtime.metrics import PHASES

COLUMNS = (*PHASES, "critical_path")



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images-per-node", type=int, default=400)
    parser.add_argument("--architecture", default="resnet50")
    parser.add_argument("--encryption-workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=290)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plaintext", action="store_true", help="privacy off: the baseline of a secure run")
    parser.add_argument("--precompute", choices=("off", "on", "auto"), default="auto",
                        help="the nodes' precompute_encryption (auto: on, since they train on CUDA)")
    parser.add_argument("--recipe", action="store_true",
                        help="train with the services' defaults (the recipe that learns), not one SGD epoch")
    args = parser.parse_args(argv)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device (CPU)"
    print(f"device: {device}; torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-consortium-") as tmp:
        config = ConsortiumConfig(
            run_dir=Path(tmp), nodes=5, images_per_node=args.images_per_node, seed=1,
            settings={**({} if args.recipe else QUICK_TRAINING), "rounds": args.rounds,
                      "secure": not args.plaintext, "allow_plaintext": args.plaintext,
                      "precompute_encryption": args.precompute, "architecture": args.architecture,
                      "image_size": args.image_size,
                      "batch_size": 32, "encryption_workers": args.encryption_workers, "torch_threads": 2,
                      "partition_scheme": "iid"})
        started = time.monotonic()
        with Consortium(config) as consortium:
            code = consortium.wait(args.timeout, on_row=lambda row: print(
                f"  round {row['round']} finished", flush=True))
            every = consortium.rows()
            rows = [r for r in every if int(str(r["round"])) >= 1 and not r.get("head_refit")]
            devices = sorted({line.split(" on ")[1].split(",")[0] for node in consortium.node_ids
                              for line in (consortium.logs / f"{node}.log").read_text().splitlines()
                              if "parameters," in line and " on " in line})
        total = time.monotonic() - started
    print(f"\n{args.architecture} at {args.image_size}x{args.image_size}, 5 hospitals, node devices {devices}, "
          f"SYNTHETIC data, {'PLAINTEXT' if args.plaintext else 'secure'}, precompute {args.precompute}, "
          f"{'the default recipe' if args.recipe else 'one SGD epoch a round'}; total {total:.0f} s (exit {code})")
    print(f"{'round':>5} {'seconds':>8} " + " ".join(f"{p[:9]:>9}" for p in COLUMNS))
    for row in rows:
        phases = row.get("phases") or {}
        print(f"{row['round']:>5} {float(str(row.get('seconds', 0))):8.1f} "
              + " ".join(f"{float(phases.get(p, 0.0)):9.2f}" for p in COLUMNS))
    print("\nper-round metrics (pooled validation of the model after each round)\n" + TABLE_HEADER)
    for row in every:
        print(format_row(row))
    if args.out:
        write_json_atomic(args.out / "gpu_rounds.json", {"device": device, "node_devices": devices,
                                                         "total_seconds": total, "rows": every}, default=str)
    return 0 if code == 0 and len(rows) == args.rounds else 1


if __name__ == "__main__":
    raise SystemExit(main())
