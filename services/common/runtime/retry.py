"""The one retry helper: a call tried again on the statuses that say "not now", with exponential backoff, a
deadline or a number of tries, and one log line per retry. Flower's `RetryInvoker` is the model.

`Backoff` is the pause sequence alone, for loops that are not one call (the node's subscription, which starts
its backoff afresh whenever a message arrives).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

import grpc

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Which statuses are tried again, and for how long: until `seconds` have passed since the first try (None: no
    limit) and at most `tries` tries in all (None: no limit), pausing `first_pause`, then `multiplier` times as
    long each time, at most `max_pause`."""

    codes: Collection[grpc.StatusCode]
    seconds: float | None = None
    tries: int | None = None
    first_pause: float = 1.0
    max_pause: float = 30.0
    multiplier: float = 2.0


class Backoff:
    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self.pause = policy.first_pause

    def next(self) -> float:
        """The pause to take now; the one after it grows."""
        pause = self.pause
        self.pause = min(self.pause * self._policy.multiplier, self._policy.max_pause)
        return pause

    def reset(self) -> None:
        self.pause = self._policy.first_pause


def retry_call(call: Callable[[], T], policy: RetryPolicy, what: str, *, log: logging.Logger,
               may_retry: Callable[[grpc.RpcError], bool] = lambda error: True,
               describe: Callable[[grpc.RpcError], str] | None = None, stop: threading.Event | None = None) -> T:
    """`call()`'s result. A gRPC error is raised at once when its status is not in the policy's codes, when
    `may_retry(error)` says no, when `stop` is set, or when the tries or the time are spent; otherwise the call is
    made again after the next pause, with one warning: "`what` (STATUS: details); retrying in N s (try K)", or
    `describe(error)` in place of everything before the semicolon."""
    started, tries, backoff = time.monotonic(), 0, Backoff(policy)
    while True:
        tries += 1
        try:
            return call()
        except grpc.RpcError as error:
            pause = backoff.pause
            spent = ((policy.tries is not None and tries >= policy.tries)
                     or (policy.seconds is not None and time.monotonic() + pause > started + policy.seconds))
            if error.code() not in policy.codes or spent or not may_retry(error) or (stop is not None
                                                                                      and stop.is_set()):
                raise
            line = describe(error) if describe is not None else f"{what} ({error.code().name}: {error.details()})"
            log.warning("%s; retrying in %.0f s (try %d)", line, pause, tries + 1)
            if stop is not None:
                stop.wait(backoff.next())
            else:
                time.sleep(backoff.next())
