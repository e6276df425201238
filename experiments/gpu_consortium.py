"""A five-hospital ResNet-50 consortium at 224x224 on a GPU machine, timed per phase.

Run: `python -m experiments.gpu_consortium [--rounds 3] [--out DIR]`. Every node trains
on CUDA with AMP and channels_last (the node logs say which device it used) on its
part of the SYNTHETIC radiograph set; encryption runs on CPU worker processes.
Prints per-round seconds of each phase (node phases: slowest node) and writes
them as JSON. Meant to finish within 5 minutes on one H100/H200-class GPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from scripts.consortium import Consortium, ConsortiumConfig
from services.common.atomic_files import write_json_atomic

PHASES = ("train", "encode", "encrypt", "upload", "aggregate", "decrypt", "apply")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images-per-node", type=int, default=400)
    parser.add_argument("--architecture", default="resnet50")
    parser.add_argument("--encryption-workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=290)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device (CPU)"
    print(f"device: {device}; torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-consortium-") as tmp:
        config = ConsortiumConfig(
            run_dir=Path(tmp), nodes=5, images_per_node=args.images_per_node, seed=1,
            settings={"rounds": args.rounds, "architecture": args.architecture, "image_size": args.image_size,
                      "batch_size": 32, "encryption_workers": args.encryption_workers, "torch_threads": 2,
                      "partition_scheme": "iid"})
        started = time.monotonic()
        with Consortium(config) as consortium:
            code = consortium.wait(args.timeout, on_row=lambda row: print(
                f"  round {row['round']} finished", flush=True))
            rows = [r for r in consortium.rows() if int(str(r["round"])) >= 1]
            devices = sorted({line.split(" on ")[1].split(",")[0] for node in consortium.node_ids
                              for line in (consortium.logs / f"{node}.log").read_text().splitlines()
                              if "parameters," in line and " on " in line})
        total = time.monotonic() - started
    print(f"\n{args.architecture} at {args.image_size}x{args.image_size}, 5 hospitals, node devices {devices}, "
          f"SYNTHETIC data; total {total:.0f} s (exit {code})")
    print(f"{'round':>5} {'seconds':>8} " + " ".join(f"{p:>9}" for p in PHASES))
    for row in rows:
        phases = row.get("phases") or {}
        print(f"{row['round']:>5} {float(str(row.get('seconds', 0))):8.1f} "
              + " ".join(f"{float(phases.get(p, 0.0)):9.2f}" for p in PHASES))
    if args.out:
        write_json_atomic(args.out / "gpu_rounds.json", {"device": device, "node_devices": devices,
                                                         "total_seconds": total, "rows": rows}, default=str)
    return 0 if code == 0 and len(rows) == args.rounds else 1


if __name__ == "__main__":
    raise SystemExit(main())
