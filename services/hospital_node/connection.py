"""The node's line to the aggregator: subscribe, hand each complete round plan (with its model) to the node, and
subscribe again after a broken stream, backing off, for as long as the settings allow."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc

from services.common.errors import MalformedChunkError
from services.common.ml.model_spec import ParameterSpec
from services.common.protocol.class_roster import ClassRoster
from services.common.protocol.round_plan import ModelChunk, RoundPlan, TrainingFinished
from services.common.runtime.retry import Backoff, RetryPolicy
from services.hospital_node.consortium_client import ConsortiumClient

log = logging.getLogger(__name__)
# Statuses of a broken connection, not of a refusal: the node subscribes again. Any other status ends the node.
RECONNECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                             grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
                             grpc.StatusCode.RESOURCE_EXHAUSTED})
RECONNECT = RetryPolicy(RECONNECT_CODES, first_pause=1.0, max_pause=30.0)
# A join the aggregator refuses for what it says (other class names, another model, not a member): rejoining cannot
# cure it, so the node exits 2 with the aggregator's message.
JOIN_REFUSALS = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED,
                           grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT})
PlanHandler = Callable[[RoundPlan, list[bytes]], None]


def follow_rounds(client: ConsortiumClient, node_id: str, spec: ParameterSpec, *, reconnect_seconds: float,
                  classes: ClassRoster, stop: threading.Event, handle: PlanHandler) -> int:
    """Follow the aggregator's rounds until training finishes (0), handing each plan and its model to `handle`. A
    broken stream (the aggregator restarting, a network fault) is followed by a new subscription, after 1, 2, 4 ...
    (at most 30) seconds, for `reconnect_seconds` since the last message (then 1); a refused join ends it (2)."""
    backoff, last_message = Backoff(RECONNECT), time.monotonic()
    while not stop.is_set():
        received = [False]
        try:
            if _follow_subscription(client, node_id, spec, classes=classes, stop=stop, handle=handle,
                                    received=received):
                return 0
            reason = "the aggregator ended the stream before training finished"
        except grpc.RpcError as error:
            if not received[0] and error.code() in JOIN_REFUSALS:
                log.error("the aggregator refused this hospital's join (%s): %s", error.code().name,
                          error.details())
                return 2
            if error.code() not in RECONNECT_CODES:
                raise
            reason = f"{error.code().name}: {error.details()}"
        now = time.monotonic()
        if received[0]:
            backoff.reset()
            last_message = now
        if now - last_message > reconnect_seconds:
            log.error("lost the aggregator (%s) and could not reconnect for %.0f s; giving up", reason,
                      now - last_message)
            return 1
        pause = backoff.next()
        log.warning("lost the aggregator (%s); reconnecting in %.0f s", reason, pause)
        stop.wait(pause)
    return 0


def _follow_subscription(client: ConsortiumClient, node_id: str, spec: ParameterSpec,
                         *, classes: ClassRoster, stop: threading.Event, handle: PlanHandler,
                         received: list[bool]) -> bool:
    """One subscription's messages; True when training finished or the node was stopped."""
    subscription = client.subscribe(node_id, spec, classes)
    plan: RoundPlan | None = None
    model_chunks: list[bytes] = []
    for message in subscription:
        received[0] = True
        if stop.is_set():
            subscription.cancel()
            return True
        if isinstance(message, TrainingFinished):
            log.info("training finished after %d rounds", message.rounds)
            return True
        if isinstance(message, RoundPlan):
            plan, model_chunks = message, []
            continue
        assert isinstance(message, ModelChunk)
        if plan is None or message.round_id != plan.round_id:
            raise MalformedChunkError("model chunk without a matching plan")
        model_chunks.append(message.values)
        if len(model_chunks) == plan.model.chunk_count:
            handle(plan, model_chunks)
    return stop.is_set()
