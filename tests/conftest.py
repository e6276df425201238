"""Every test carries one of three markers, so a run can pick its kind:

- `deploy`: Docker, Compose, network namespaces (tests/deploy);
- `e2e`: real service processes over gRPC (tests/e2e, and any test marked so where it lives);
- `unit`: everything else, in this process; `make test-fast` runs these, less those also marked `slow`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

KINDS = ("unit", "e2e", "deploy")
_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(kind) for kind in KINDS):
            continue
        folder = Path(item.path).resolve().relative_to(_TESTS).parts[0]
        item.add_marker({"deploy": pytest.mark.deploy, "e2e": pytest.mark.e2e}.get(folder, pytest.mark.unit))
