"""Membership: who may subscribe, what a broadcast reaches, and who is told when a node leaves."""

from __future__ import annotations

import threading

import pytest

from services.aggregator.membership import Membership
from services.common.errors import SpecMismatchError, UnknownNodeError
from services.common.model_spec import ParameterSpec
from services.common.round_plan import ModelChunk, TrainingFinished

SPEC = ParameterSpec(10, "layout", (), ())
MEMBERS = frozenset({"hospital-1", "hospital-2"})


def test_an_unknown_node_or_another_model_layout_cannot_subscribe() -> None:
    membership = Membership(MEMBERS, SPEC)
    with pytest.raises(UnknownNodeError, match="'mallory' is not a registered"):
        next(membership.subscribe("mallory", SPEC, lambda: True))
    with pytest.raises(SpecMismatchError, match="model spec mismatch"):
        next(membership.subscribe("hospital-1", ParameterSpec(11, "other", (), ()), lambda: True))
    assert membership.connected() == set()


def test_a_broadcast_reaches_every_subscriber_in_order_and_leaving_is_announced() -> None:
    membership = Membership(MEMBERS, SPEC)
    left: list[str] = []
    membership.on_leave(left.append)
    received: dict[str, list[object]] = {"hospital-1": [], "hospital-2": []}
    stop = threading.Event()

    def follow(node: str) -> None:
        for message in membership.subscribe(node, SPEC, lambda: not stop.is_set()):
            received[node].append(message)
            if isinstance(message, TrainingFinished):
                return

    threads = [threading.Thread(target=follow, args=(node,)) for node in sorted(MEMBERS)]
    for thread in threads:
        thread.start()
    assert membership.wait_for(2, 2, 10, stop) == set(MEMBERS)
    assert membership.broadcast(ModelChunk(1, 0, b"a")) == 2
    membership.broadcast(TrainingFinished(1))
    for thread in threads:
        thread.join(10)
    assert all(messages == [ModelChunk(1, 0, b"a"), TrainingFinished(1)] for messages in received.values())
    assert sorted(left) == sorted(MEMBERS) and membership.connected() == set()


def test_waiting_for_nodes_settles_for_the_quorum_after_the_timeout_and_refuses_below_it() -> None:
    membership = Membership(MEMBERS, SPEC)
    stop = threading.Event()
    with pytest.raises(TimeoutError, match="only 0 nodes joined"):
        membership.wait_for(2, 1, 0.2, stop)
    subscription = membership.subscribe("hospital-1", SPEC, lambda: not stop.is_set())
    thread = threading.Thread(target=lambda: list(subscription))
    thread.start()
    try:
        assert membership.wait_for(2, 1, 0.5, stop) == {"hospital-1"}
    finally:
        stop.set()
        thread.join(10)
