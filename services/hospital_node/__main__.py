"""Run a hospital node: `python -m services.hospital_node [--config FILE]`.

Settings come from FEDXRAY_NODE_* environment variables or an env file; `--help`
lists them. `python -m services.hospital_node keygen --out DIR --node-id ID`
makes the node's Ed25519 identity key (ID.key, mode 0600) and its public half.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.runtime.settings_loader import load_settings
from services.hospital_node.config import HospitalNodeSettings

if TYPE_CHECKING:
    from services.hospital_node.node_loop import UploadObserver


def main(argv: list[str] | None = None, observer: UploadObserver | None = None) -> int:
    """`observer` is for tests only (tests/service_hooks); the command line never sets it."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keygen"]:
        from services.common.protocol.node_identity import agreement_key_path, generate_identity

        keygen = argparse.ArgumentParser(prog="python -m services.hospital_node keygen")
        keygen.add_argument("--out", type=Path, required=True)
        keygen.add_argument("--node-id", required=True)
        parsed = keygen.parse_args(argv[1:])
        key = generate_identity(parsed.out, parsed.node_id)
        print(f"private, never leave this hospital (mode 0600): {key} {agreement_key_path(key)}\n"
              f"public, send to the consortium operator: {key.with_suffix('.pub')} "
              f"{agreement_key_path(key).with_suffix('.pub')}")
        return 0
    settings = load_settings(HospitalNodeSettings, "services.hospital_node", __doc__, argv=argv)
    from services.hospital_node.service import serve  # torch and TenSEAL load here, after the settings are checked

    return serve(settings, observer)


if __name__ == "__main__":
    sys.exit(main())
