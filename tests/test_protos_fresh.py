"""The checked-in stubs are what grpcio-tools makes of protos/ today (`make protos` updates them)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO = Path("protos/fedxray/v1/fedxray.proto")
GENERATED = ("fedxray_pb2.py", "fedxray_pb2.pyi", "fedxray_pb2_grpc.py")


def test_checked_in_stubs_match_the_proto(tmp_path: Path) -> None:
    (tmp_path / PROTO.parent).mkdir(parents=True)
    shutil.copy(REPO / PROTO, tmp_path / PROTO)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.",
                    "--grpc_python_out=.", str(PROTO)], cwd=tmp_path, check=True)
    for name in GENERATED:
        fresh = (tmp_path / PROTO.parent / name).read_text()
        checked_in = (REPO / PROTO.parent / name).read_text()
        assert fresh == checked_in, f"{PROTO.parent / name} is stale: run `make protos`"


def test_every_rpc_and_message_is_documented() -> None:
    lines = (REPO / PROTO).read_text().splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(("rpc ", "service ")):
            assert lines[number - 1].strip().startswith("//") or stripped.startswith("service"), stripped
