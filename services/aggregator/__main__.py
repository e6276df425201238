"""Run the aggregator: `python -m services.aggregator [--config FILE]`.

Settings come from FEDXRAY_AGG_* environment variables or an env file; `--help`
lists them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from services.aggregator.config import AggregatorSettings
from services.common.runtime.settings_loader import load_settings

if TYPE_CHECKING:
    from services.aggregator.sum_release import DecryptionObserver


def main(argv: list[str] | None = None, observer: DecryptionObserver | None = None) -> int:
    """`observer` is for tests only (tests/service_hooks); the command line never sets it."""
    settings = load_settings(AggregatorSettings, "services.aggregator", __doc__, argv=argv)
    from services.aggregator.service import serve  # torch and TenSEAL load here, after the settings are checked

    return serve(settings, observer)


if __name__ == "__main__":
    sys.exit(main())
