"""The cores a service counts on (services/common/runtime/cpu.py): its affinity, cut to its container's CPU limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.runtime import cpu

pytestmark = pytest.mark.unit


def test_the_cgroup_v2_quota_is_read_in_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu.cpu_limit(tmp_path / "cpu.max", tmp_path / "none", tmp_path / "none") == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu.cpu_limit(tmp_path / "cpu.max", tmp_path / "none", tmp_path / "none") is None


def test_the_cgroup_v1_quota_and_no_cgroup_at_all(tmp_path: Path) -> None:
    (tmp_path / "quota").write_text("50000\n")
    (tmp_path / "period").write_text("100000\n")
    assert cpu.cpu_limit(tmp_path / "none", tmp_path / "quota", tmp_path / "period") == 0.5
    (tmp_path / "quota").write_text("-1\n")
    assert cpu.cpu_limit(tmp_path / "none", tmp_path / "quota", tmp_path / "period") is None
    assert cpu.cpu_limit(tmp_path / "a", tmp_path / "b", tmp_path / "c") is None


def test_a_limit_below_the_affinity_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda _pid: set(range(16)))
    monkeypatch.setattr(cpu, "cpu_limit", lambda: 1.0)
    assert cpu.usable_cores() == 1.0
    monkeypatch.setattr(cpu, "cpu_limit", lambda: None)
    assert cpu.usable_cores() == 16.0
    monkeypatch.setattr(cpu, "cpu_limit", lambda: 64.0)
    assert cpu.usable_cores() == 16.0
