"""Membership: who may subscribe, what a broadcast reaches, and who is told when a node leaves."""

from __future__ import annotations

import threading
import time

import pytest

from services.aggregator.membership import Membership
from services.common.errors import ClassMismatchError, SpecMismatchError, UnknownNodeError
from services.common.ml.model_spec import ParameterSpec
from services.common.protocol.class_roster import ClassRoster
from services.common.protocol.round_plan import ModelChunk, TrainingFinished

SPEC = ParameterSpec(10, "layout", (), ())
MEMBERS = frozenset({"hospital-1", "hospital-2"})
CLASSES = ClassRoster(("NORMAL", "PNEUMONIA"), (10, 10))


def test_an_unknown_node_or_another_model_layout_cannot_subscribe() -> None:
    membership = Membership(MEMBERS, SPEC)
    with pytest.raises(UnknownNodeError, match="'mallory' is not a registered"):
        next(membership.subscribe("mallory", SPEC, CLASSES, lambda: True))
    with pytest.raises(SpecMismatchError, match="model spec mismatch"):
        next(membership.subscribe("hospital-1", ParameterSpec(11, "other", (), ()), CLASSES, lambda: True))
    assert membership.connected() == set()


def test_a_broadcast_reaches_every_subscriber_in_order_and_leaving_is_announced() -> None:
    membership = Membership(MEMBERS, SPEC)
    left: list[str] = []
    membership.on_leave(left.append)
    received: dict[str, list[object]] = {"hospital-1": [], "hospital-2": []}
    stop = threading.Event()

    def follow(node: str) -> None:
        for message in membership.subscribe(node, SPEC, CLASSES, lambda: not stop.is_set()):
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
    with pytest.raises(TimeoutError, match=f"only 0 nodes joined .*not joined: {', '.join(sorted(MEMBERS))}"):
        membership.wait_for(2, 1, 0.2, stop)
    subscription = membership.subscribe("hospital-1", SPEC, CLASSES, lambda: not stop.is_set())
    thread = threading.Thread(target=lambda: list(subscription))
    thread.start()
    try:
        assert membership.wait_for(2, 1, 0.5, stop) == {"hospital-1"}
    finally:
        stop.set()
        thread.join(10)


def test_a_hospital_whose_class_names_differ_is_refused_at_join_naming_the_difference() -> None:
    """The consortium's names come from the first hospital to join; a second with a misspelled folder, or the same
    names in another order (lowercase folders sort first), would train swapped or missing labels."""
    membership = Membership(MEMBERS, SPEC)
    stop = threading.Event()
    first = membership.subscribe("hospital-1", SPEC, CLASSES, lambda: not stop.is_set())
    threading.Thread(target=lambda: list(first), daemon=True).start()
    deadline = time.monotonic() + 5
    while membership.class_names is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert membership.class_names == ("NORMAL", "PNEUMONIA")
    with pytest.raises(ClassMismatchError) as misspelled:
        next(membership.subscribe("hospital-2", SPEC, ClassRoster(("NORMAL", "PNUEMONIA"), (5, 5)), lambda: True))
    assert "label 1: 'PNUEMONIA' at hospital-2, 'PNEUMONIA' in the consortium" in str(misspelled.value)
    with pytest.raises(ClassMismatchError) as swapped:
        next(membership.subscribe("hospital-2", SPEC, ClassRoster(("PNEUMONIA", "normal"), (5, 5)), lambda: True))
    assert "label 0: 'PNEUMONIA' at hospital-2, 'NORMAL' in the consortium" in str(swapped.value)
    with pytest.raises(ClassMismatchError, match="sent no class names"):
        next(membership.subscribe("hospital-2", SPEC, ClassRoster(()), lambda: True))
    assert set(membership.rosters()) == {"hospital-1"}  # nothing of the refused joins is kept
    stop.set()


def test_configured_class_names_win_over_the_first_to_join() -> None:
    membership = Membership(MEMBERS, SPEC, ("NORMAL", "PNEUMONIA"))
    with pytest.raises(ClassMismatchError, match="same names in another order"):
        next(membership.subscribe("hospital-1", SPEC, ClassRoster(("PNEUMONIA", "NORMAL")), lambda: True))
    assert membership.class_names == ("NORMAL", "PNEUMONIA")
