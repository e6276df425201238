"""`python -m tests.service_hooks.aggregator`: the aggregator, recording each decrypted sum (tests only)."""

from __future__ import annotations

import sys
from functools import partial

from services.aggregator.__main__ import main
from tests.service_hooks.hooks import TestHooks, record_decrypted_sum

if __name__ == "__main__":
    hooks = TestHooks()
    observer = partial(record_decrypted_sum, hooks.record_dir) if hooks.record_dir is not None else None
    sys.exit(main(observer=observer))
