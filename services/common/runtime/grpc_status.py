"""Each named refusal maps to exactly one gRPC status code, here and nowhere else."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from services.common import errors

STATUS_OF: dict[type[errors.FedXrayError], grpc.StatusCode] = {
    errors.SpecMismatchError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ClassMismatchError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.CkksParameterError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.PackingError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.DecryptionIntegrityError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PrivacyBudgetError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.MalformedChunkError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.BrokenStreamError: grpc.StatusCode.CANCELLED,
    errors.StreamDeadlineError: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.ServerLimitError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DigestMismatchError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.WrongKeyError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.WrongRoundError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DuplicateSubmissionError: grpc.StatusCode.ALREADY_EXISTS,
    errors.PolicyViolationError: grpc.StatusCode.PERMISSION_DENIED,
    errors.AlreadyDecryptedError: grpc.StatusCode.ALREADY_EXISTS,
    errors.UnknownNodeError: grpc.StatusCode.UNAUTHENTICATED,
    errors.IdentityMismatchError: grpc.StatusCode.PERMISSION_DENIED,
    errors.PlanRefusedError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DecryptionRefusedError: grpc.StatusCode.ABORTED,
    errors.ImplausibleSumError: grpc.StatusCode.DATA_LOSS,
}

log = logging.getLogger(__name__)
Method = TypeVar("Method", bound=Callable[..., Any])


def status_code_for(error: errors.FedXrayError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


def refusal_reason(error: errors.FedXrayError | type[errors.FedXrayError]) -> str:
    """A metric label: the error's name without the Error suffix, in snake case."""
    cls = error if isinstance(error, type) else type(error)
    name = cls.__name__.removesuffix("Error")
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


# Every `reason` label a service can count: each named refusal, and the aggregator's own verdicts on a round.
REFUSAL_REASONS: tuple[str, ...] = (*sorted({refusal_reason(cls) for cls in STATUS_OF}), "key_authority_refused")


def _refuse(servicer: Any, context: grpc.ServicerContext, name: str, error: errors.FedXrayError) -> None:
    log.warning("refused %s: %s", name, error)
    record = getattr(servicer, "record_refusal", None)
    if record is not None:
        record(refusal_reason(error))
    context.abort(status_code_for(error), str(error))


def translate_errors(method: Method) -> Method:
    """Servicer decorator (unary response): a FedXrayError becomes its status code.

    The servicer may define `record_refusal(reason)` to count refusals.
    """

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except errors.FedXrayError as error:
            _refuse(self, context, method.__name__, error)

    return wrapper  # type: ignore[return-value]


def translate_stream_errors(method: Method) -> Method:
    """As `translate_errors`, for methods that stream their responses (generators)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from method(self, request, context)
        except errors.FedXrayError as error:
            _refuse(self, context, method.__name__, error)

    return wrapper  # type: ignore[return-value]
