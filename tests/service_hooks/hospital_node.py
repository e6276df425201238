"""`python -m tests.service_hooks.hospital_node`: a hospital node that records its uploads and can crash
mid-upload (tests only)."""

from __future__ import annotations

import sys

from services.hospital_node.__main__ import main
from tests.service_hooks.hooks import NodeRecorder, TestHooks

if __name__ == "__main__":
    sys.exit(main(observer=NodeRecorder(TestHooks())))
