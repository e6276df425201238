"""How fast `--help` answers, beside what it cost before: `python -m benchmarks.bench_help`.

Each service's `python -m services.<name> --help` runs REPEATS times in a fresh process; the
baseline is a fresh process that imports torch and TenSEAL, which every `--help` paid before the
services parsed their settings ahead of those imports. Medians, and the ratio, are printed. A
benchmark, not a timed test: this machine is shared, and the figures go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REPEATS = 7
SERVICES = ("key_authority", "aggregator", "hospital_node")


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def median_seconds(command: list[str]) -> float:
    seconds(command)  # warm the page cache
    return statistics.median(seconds(command) for _ in range(REPEATS))


def main() -> None:
    baseline = median_seconds([sys.executable, "-c", "import torch, tenseal"])
    print(f"median of {REPEATS} fresh processes each")
    print(f"{'command':<44} {'seconds':>8} {'vs baseline':>12}")
    print(f"{'baseline: import torch, tenseal':<44} {baseline:8.2f} {1.0:11.2f}x")
    for service in SERVICES:
        value = median_seconds([sys.executable, "-m", f"services.{service}", "--help"])
        print(f"{f'services.{service} --help':<44} {value:8.2f} {value / baseline:11.2f}x", flush=True)


if __name__ == "__main__":
    main()
