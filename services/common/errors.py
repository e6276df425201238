"""Named errors of the FedXray core.

Every refusal in the system is one of these. Each maps to exactly one gRPC status
code in `services/common/runtime/grpc_status.py`, so a node or operator always learns
*why* a request was refused.
"""

from __future__ import annotations


class FedXrayError(Exception):
    """Base class of every refusal the system makes on purpose."""


class SpecMismatchError(FedXrayError):
    """Two parties disagree on the model's parameter layout."""


class ClassMismatchError(FedXrayError):
    """A hospital's class names, or their order, differ from the consortium's."""


class CkksParameterError(FedXrayError):
    """CKKS parameters that cannot carry the configured integers exactly."""


class PackingError(FedXrayError):
    """A value outside the field range, or a malformed packed vector."""


class DecryptionIntegrityError(FedXrayError):
    """A decrypted slot is not close to an integer: the input was no valid sum."""


class PrivacyBudgetError(FedXrayError):
    """A plan whose privacy cost exceeds the budget or cannot be met at all."""


class MalformedChunkError(FedXrayError):
    """A submission chunk that is out of order, oversized or undecodable."""


class BrokenStreamError(FedXrayError):
    """An upload stream whose node went away (died, or lost its connection) before finishing it."""


class StreamDeadlineError(FedXrayError):
    """An upload stream that sent no first chunk, or did not finish, within the server's deadline."""


class ServerLimitError(FedXrayError):
    """A request beyond a server limit: a second open upload of one node, or the staging quota."""


class DigestMismatchError(FedXrayError):
    """A stream whose digest or signature does not verify."""


class WrongKeyError(FedXrayError):
    """A request made under a key id other than the current one."""


class WrongRoundError(FedXrayError):
    """A submission for a round that is not open."""


class DuplicateSubmissionError(FedXrayError):
    """A second (or replayed) submission from a node in the same round."""


class PolicyViolationError(FedXrayError):
    """A decryption request the key authority's policy refuses."""


class AlreadyDecryptedError(FedXrayError):
    """A second decryption request for a round that was already decrypted."""


class IdentityMismatchError(FedXrayError):
    """A request whose claimed identity differs from its TLS certificate's."""


class UnknownNodeError(FedXrayError):
    """A node the consortium does not know."""


class PlanRefusedError(FedXrayError):
    """A round plan below a hospital's own privacy floor; `reason` names the rule it broke."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class DecryptionRefusedError(FedXrayError):
    """The key authority refused to decrypt a round's sum; the round fails, the run goes on."""


class ImplausibleSumError(FedXrayError):
    """A decrypted sum larger than clipped honest uploads plus the configured noise can make."""
