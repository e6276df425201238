"""The aggregator's gRPC message limit is the largest honest message, computed, not a round 16 MiB."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from protos.fedxray.v1 import fedxray_pb2 as pb
from services.common.ml.model_spec import parameter_spec
from services.common.ml.models import build_model
from services.common.protocol.class_roster import ClassRoster
from services.common.protocol.upload import CIPHERTEXT_BYTES_BOUND, upload_message_limit
from services.common.protocol.wire import join_to_wire
from services.common.secure_sum.ckks_params import COEFF_MOD_BIT_SIZES, POLY_MODULUS_DEGREE

pytestmark = pytest.mark.unit
CHUNK_CIPHERTEXTS = 8
PLAINTEXT_VALUES = 1 << 18


def _largest_chunk_message() -> bytes:
    """An upload chunk of the defaults at its largest: 8 real ciphertexts, every other field filled."""
    context = ts.context(ts.SCHEME_TYPE.CKKS, POLY_MODULUS_DEGREE, coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES))
    context.global_scale = 2.0 ** 40
    ciphertext = ts.ckks_vector(context, np.random.default_rng(0).random(POLY_MODULUS_DEGREE // 2).tolist())
    payload = bytes(ciphertext.serialize())
    assert len(payload) <= CIPHERTEXT_BYTES_BOUND
    chunk = pb.UpdateChunk(round_id=2 ** 31, key_id="k" * 64, node_id="hospital-" + "x" * 50, index=2 ** 20,
                           ciphertexts=[payload] * CHUNK_CIPHERTEXTS)
    chunk.attestation.stream_digest = b"\xff" * 32
    chunk.attestation.signature = b"\xff" * 64
    return chunk.SerializeToString()


def test_the_largest_honest_upload_chunk_fits_and_little_more_does() -> None:
    limit = upload_message_limit(CHUNK_CIPHERTEXTS, PLAINTEXT_VALUES)
    honest = len(_largest_chunk_message())
    assert honest <= limit
    assert limit < honest * 1.35  # was 16 MiB: 15x an honest chunk
    plaintext = len(pb.UpdateChunk(plaintext_values=b"\0" * 4 * PLAINTEXT_VALUES).SerializeToString())
    assert plaintext <= upload_message_limit(1, PLAINTEXT_VALUES)


@pytest.mark.parametrize("architecture", ["resnet50", "efficientnet-b0"])
def test_a_join_with_the_largest_models_parameter_spec_fits(architecture: str) -> None:
    spec = parameter_spec(build_model(architecture, 2).state_dict())
    classes = ClassRoster(tuple(f"A_LONG_CLASS_NAME_{i}" for i in range(20)), tuple(range(20)))
    join = join_to_wire("hospital-1", spec, classes).SerializeToString()
    assert len(join) <= upload_message_limit(1, 1)
