"""Makes and keeps the CKKS key pair; the secret key stays in this process.

The secret key is kept on disk by default (`persist_secret_key`), with mode 0600 in
the state directory, so that a restart keeps the key of the rounds in flight. A key
file that group or others can read is refused at load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import tenseal as ts
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from services.common.protocol.public_key import PublicKeyInfo, unpacking_layout
from services.common.protocol.round_plan import SumLayout
from services.common.runtime.atomic_files import write_atomic
from services.common.secure_sum.ckks_params import (
    CkksParameters,
    ckks_parameters,
    field_layout,
    key_id,
    load_public_context,
    make_secret_context,
    public_context_bytes,
    statistics_layout,
)
from services.common.secure_sum.packing import FieldLayout

log = logging.getLogger(__name__)
SECRET_FILE = "ckks_secret_context.bin"
AGREEMENT_FILE = "mask_agreement.key"


@dataclass(frozen=True)
class KeyMaterial:
    params: CkksParameters
    layout: FieldLayout
    statistics_layout: FieldLayout
    secret_context: ts.Context
    public_context: bytes
    key_id: str
    agreement: X25519PrivateKey  # removes each node's authority mask, for a manifest's own scope only

    def layout_for(self, sum_layout: SumLayout) -> FieldLayout:
        """The layout a sum of this kind is unpacked in (the one its nodes packed and signed)."""
        return unpacking_layout(sum_layout, self.layout, self.statistics_layout)

    def public_info(self, min_participants: int) -> PublicKeyInfo:
        """What the key authority publishes; its layouts are the ones `layout_for` unpacks sums in."""
        agreement = self.agreement.public_key().public_bytes(serialization.Encoding.Raw,
                                                             serialization.PublicFormat.Raw)
        return PublicKeyInfo(self.public_context, self.key_id, self.layout, self.statistics_layout,
                             self.params.slots, min_participants, agreement)


def load_or_create_keys(max_participants: int, bits: int | None, state_dir: Path, persist: bool) -> KeyMaterial:
    params = ckks_parameters(max_participants)
    layout = field_layout(params, max_participants, bits)  # refuses impossible settings at start-up
    secret_path, agreement_path = state_dir / SECRET_FILE, state_dir / AGREEMENT_FILE
    if persist and secret_path.exists():
        for path in (secret_path, agreement_path):
            if path.stat().st_mode & 0o077:
                raise PermissionError(f"{path} must not be readable by group or others (chmod 600)")
        context = ts.context_from(secret_path.read_bytes())
        if not context.is_private() or context.global_scale != params.scale:
            raise ValueError(
                f"the key in {secret_path} does not fit these settings: scale {context.global_scale:g} "
                f"(secret key {'present' if context.is_private() else 'MISSING'}), but {max_participants} "
                f"participants at most need scale {params.scale:g}. Start with the consortium size the key was made "
                "for, or move the key away to start a new run with a new key")
        agreement = X25519PrivateKey.from_private_bytes(agreement_path.read_bytes())
        log.info("loaded secret key from %s", secret_path)
    else:
        context = make_secret_context(params)
        agreement = X25519PrivateKey.generate()
        if persist:
            write_atomic(agreement_path, agreement.private_bytes(serialization.Encoding.Raw,
                                                                 serialization.PrivateFormat.Raw,
                                                                 serialization.NoEncryption()), mode=0o600)
            write_atomic(secret_path, bytes(context.serialize(save_secret_key=True)), mode=0o600)
            log.info("secret key written to %s (mode 0600)", secret_path)
    public = public_context_bytes(context)
    load_public_context(public)  # asserts the public half carries no secret key
    return KeyMaterial(params, layout, statistics_layout(params, max_participants), context, public, key_id(public),
                       agreement)
