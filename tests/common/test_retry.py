"""The one retry helper: what it tries again, how long it waits, when it gives up, and the line it logs."""

from __future__ import annotations

import logging
import threading

import grpc
import pytest

from services.common.runtime.retry import Backoff, RetryPolicy, retry_call

pytestmark = pytest.mark.unit
log = logging.getLogger("test_retry")


class Status(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"{self._code.name.lower()} for the test"


def _failing(codes: list[grpc.StatusCode], calls: list[int]):  # type: ignore[no-untyped-def]
    def call() -> str:
        calls.append(1)
        if len(calls) <= len(codes):
            raise Status(codes[len(calls) - 1])
        return "answer"
    return call


FAST = RetryPolicy({grpc.StatusCode.UNAVAILABLE}, first_pause=0.01, max_pause=0.02)


def test_a_transient_status_is_tried_again_with_one_line_per_retry(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    with caplog.at_level(logging.WARNING, "test_retry"):
        assert retry_call(_failing([grpc.StatusCode.UNAVAILABLE] * 2, calls), FAST, "the server", log=log) == "answer"
    assert len(calls) == 3
    assert [r.getMessage() for r in caplog.records] == [
        "the server (UNAVAILABLE: unavailable for the test); retrying in 0 s (try 2)",
        "the server (UNAVAILABLE: unavailable for the test); retrying in 0 s (try 3)"]


@pytest.mark.parametrize(("policy", "codes", "calls_made"), [
    (FAST, [grpc.StatusCode.PERMISSION_DENIED], 1),  # a refusal is not tried again
    (RetryPolicy({grpc.StatusCode.UNAVAILABLE}, tries=2, first_pause=0.01), [grpc.StatusCode.UNAVAILABLE] * 5, 2),
    (RetryPolicy({grpc.StatusCode.UNAVAILABLE}, seconds=0.05, first_pause=0.04), [grpc.StatusCode.UNAVAILABLE] * 5,
     2),  # 0.04 + 0.08 would pass the 0.05 s limit: two tries
])
def test_it_gives_up_on_a_refusal_after_its_tries_or_its_time(policy: RetryPolicy, codes: list[grpc.StatusCode],
                                                             calls_made: int) -> None:
    calls: list[int] = []
    with pytest.raises(grpc.RpcError) as raised:
        retry_call(_failing(codes, calls), policy, "the server", log=log)
    assert raised.value.code() == codes[0] and len(calls) == calls_made


def test_a_stop_or_the_callers_no_ends_the_retries() -> None:
    stop, calls = threading.Event(), []  # type: ignore[var-annotated]
    stop.set()
    with pytest.raises(grpc.RpcError):
        retry_call(_failing([grpc.StatusCode.UNAVAILABLE] * 3, calls), FAST, "x", log=log, stop=stop)
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(grpc.RpcError):
        retry_call(_failing([grpc.StatusCode.UNAVAILABLE] * 3, calls), FAST, "x", log=log,
                   may_retry=lambda error: False)
    assert len(calls) == 1


def test_the_backoff_doubles_to_its_ceiling_and_starts_again_after_a_reset() -> None:
    backoff = Backoff(RetryPolicy((), first_pause=1.0, max_pause=5.0))
    assert [backoff.next() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 1.0
