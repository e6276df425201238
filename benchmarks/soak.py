"""Soak: many rounds through the real services; each process's memory, open files and staged files, round by round.

Run: `make soak` or `python -m benchmarks.soak [--rounds 20] [--architecture tiny]`. Five
hospital processes, the key authority and the aggregator on this machine (mTLS on
loopback, real CKKS), SYNTHETIC data. After each round it samples, for every process, its
resident memory (VmRSS) and its open file descriptors (/proc/PID/fd), and the files
left in the aggregator's staging folder. It prints one row per round, then each
service's growth from round 3 to the last round. The bar is at most 10% growth. A
service that grew more is named, and the command exits 1.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from scripts.launcher import QUICK_TRAINING, Consortium, ConsortiumConfig

SETTLED_ROUND = 3  # growth is measured from here: the first rounds fill caches and pools
LIMIT = 0.10


def sample(consortium: Consortium) -> dict[str, tuple[float, int]]:
    """Per service: (resident MB, open file descriptors), from /proc."""
    out = {}
    for name, service in consortium.services.items():
        pid = service.process.pid
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            continue  # a process that has already exited
        out[name] = (rss_kb / 1024, fds)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--architecture", default="tiny")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--images-per-node", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        config = ConsortiumConfig(
            run_dir=Path(tmp), nodes=5, images_per_node=args.images_per_node, seed=1,
            settings={**QUICK_TRAINING, "rounds": args.rounds, "architecture": args.architecture,
                      "image_size": args.image_size,
                      "partition_scheme": "iid", "encryption_workers": 0, "torch_threads": 1,
                      "round_deadline_seconds": 600},
            aggregator={"linger_seconds": 60})
        samples: dict[int, dict[str, tuple[float, int]]] = {}
        staged: dict[int, int] = {}
        staging = Path(tmp) / "aggregator" / "staging"
        print(f"soak: {args.rounds} rounds, {args.architecture} at {args.image_size} px, 5 hospitals; "
              "per round: resident MB / open fds of each process, staged files", flush=True)
        with Consortium(config) as consortium:
            def on_row(row: dict[str, object]) -> None:
                round_id = int(str(row["round"]))
                samples[round_id] = sample(consortium)
                staged[round_id] = len(list(staging.glob("*"))) if staging.exists() else 0
                cells = "  ".join(f"{n}: {rss:.0f}/{fds}" for n, (rss, fds) in sorted(samples[round_id].items()))
                print(f"round {round_id:3d}  staged {staged[round_id]}  {cells}", flush=True)
            code = consortium.wait(args.timeout, on_row=on_row)
    if code != 0:
        print(f"the run failed (exit {code})")
        return 1
    last = max(samples)
    print(f"\ngrowth from round {SETTLED_ROUND} to round {last} (bar: {LIMIT:.0%})")
    print(f"{'service':16} {'RSS MB':>14} {'growth':>8} {'fds':>10} {'growth':>8}")
    failed = []
    for name in sorted(samples[SETTLED_ROUND]):
        if name not in samples[last]:
            continue
        (rss0, fd0), (rss1, fd1) = samples[SETTLED_ROUND][name], samples[last][name]
        rss_growth, fd_growth = rss1 / rss0 - 1, fd1 / fd0 - 1
        print(f"{name:16} {rss0:6.0f} {rss1:6.0f} {rss_growth:8.1%} {fd0:4d} {fd1:4d} {fd_growth:8.1%}")
        if rss_growth > LIMIT or fd_growth > LIMIT:
            failed.append(name)
    print(f"staged files after round {SETTLED_ROUND}: {staged[SETTLED_ROUND]}, after round {last}: {staged[last]}")
    if failed or staged[last] > staged[SETTLED_ROUND]:
        print(f"grew beyond {LIMIT:.0%}: {', '.join(failed) or 'staging'}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
