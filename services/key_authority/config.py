"""Key authority settings: environment variables (FEDXRAY_KA_*) or an env file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.runtime.cpu import usable_cores
from services.common.runtime.service_settings import Address, ServiceSettings

# Unset decrypt_workers takes at most this many: each worker process holds a copy of the secret key.
MAX_AUTO_DECRYPT_WORKERS = 4
# ... and none below this many cores: one worker beside the service's own process was slower than none
# (`make bench-decrypt`: 1.82 s against 1.34 s on 2 cores), two faster (1.20 s).
MIN_CORES_FOR_DECRYPT_WORKERS = 3


class KeyAuthoritySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FEDXRAY_KA_", extra="forbid")

    listen: Address = Field("127.0.0.1:50051", description="gRPC host:port to serve on")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9101, description="Prometheus /metrics port; 0 disables")
    state_dir: Path = Field(Path("runs/key_authority"), description="decryption ledger (and key, if persisted)")
    persist_secret_key: bool = Field(True, description="keep the secret key in state_dir (mode 0600, refused at load "
                                                       "if group or others can read it), so that a restarted key "
                                                       "authority decrypts the rounds in flight; false: a new key "
                                                       "every start")
    node_keys_dir: Path = Field(Path("runs/identities"), description="<node_id>.pub Ed25519 keys of the nodes")
    max_participants: int = Field(8, ge=1, le=1024, description="largest node count a sum may hold (n_max)")
    min_participants: int = Field(3, ge=1, description="fewest distinct attested nodes in a decryptable sum")
    bits: int | None = Field(None, description="field bits; None: the largest CKKS can carry exactly")
    consortium: str = Field("fedxray", description="the consortium's name, as the hospitals' (masks are bound to it)")
    decrypt_workers: int | None = Field(None, ge=0, description="the key authority's own processes that decrypt a "
                                        "sum's chunks in parallel, as they arrive (each holds the secret key; none "
                                        "leaves the key authority's host); 0: in this process, one chunk after "
                                        "another; unset: one fewer than this host's cores (its CPU affinity, cut to "
                                        "its container's CPU limit), at most 4, on three cores or more, and 0 below "
                                        "(one worker only adds the copying: docs/BENCHMARKS.md)")

    def decryption_processes(self) -> int:
        """`decrypt_workers`, or what unset means on this host."""
        if self.decrypt_workers is not None:
            return self.decrypt_workers
        cores = int(usable_cores())
        return min(MAX_AUTO_DECRYPT_WORKERS, cores - 1) if cores >= MIN_CORES_FOR_DECRYPT_WORKERS else 0
