"""How many CPU cores this process can count on: those it may run on (its affinity), cut to its container's CPU
limit where cgroups set one (Kubernetes `resources.limits.cpu`, `docker run --cpus`)."""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cpu_limit(v2: Path = CGROUP_V2_MAX, v1_quota: Path = CGROUP_V1_QUOTA,
              v1_period: Path = CGROUP_V1_PERIOD) -> float | None:
    """The cgroup's CPU quota in cores, or None when there is none (or no cgroup file to read)."""
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(v1_quota.read_text())
        return None if quota_us <= 0 else quota_us / int(v1_period.read_text())
    except (OSError, ValueError):
        return None


def usable_cores() -> float:
    cores = float(len(os.sched_getaffinity(0)))
    limit = cpu_limit()
    return cores if limit is None else max(min(cores, limit), 0.01)
