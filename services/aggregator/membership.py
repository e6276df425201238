"""Who is connected: subscriptions, the broadcast to every subscriber, and waiting for nodes to join."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from services.common.errors import ServerLimitError, UnknownNodeError
from services.common.ml.model_spec import ParameterSpec
from services.common.protocol.class_roster import ClassRoster, require_same_classes
from services.common.protocol.round_plan import RoundMessage

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5
# The least time between two subscriptions of one member: a node reconnecting backs off 1 s or more.
RESUBSCRIBE_SECONDS = 1.0


@dataclass
class _Subscriber:
    node_id: str
    outbox: queue.Queue[RoundMessage | None]


class JoinTimeoutError(TimeoutError):
    """Too few members joined in time; it names those that did not."""


class Membership:
    def __init__(self, members: frozenset[str], spec: ParameterSpec, class_names: tuple[str, ...] | None = None,
                 on_join: Callable[[dict[str, ClassRoster]], None] | None = None) -> None:
        self._members = members
        self._spec = spec
        # The consortium's class names in label order: configured, or else those of the first hospital to join.
        self._class_names = class_names
        self._rosters: dict[str, ClassRoster] = {}
        self._on_join = on_join  # called with every hospital's roster after each accepted join
        self._subscribers: dict[str, _Subscriber] = {}
        self._changed = threading.Condition()
        self._leave_listeners: list[Callable[[str], None]] = []
        self._subscribed_at: dict[str, float] = {}  # when each member last subscribed (monotonic)

    @property
    def spec(self) -> ParameterSpec:
        """The model layout every member must run."""
        return self._spec

    @property
    def members(self) -> frozenset[str]:
        """Every registered consortium member, connected or not."""
        return self._members

    def on_leave(self, listener: Callable[[str], None]) -> None:
        """Call `listener(node_id)` whenever a node's subscription ends."""
        self._leave_listeners.append(listener)

    def require_member(self, node_id: str) -> None:
        if node_id not in self._members:
            raise UnknownNodeError(f"node {node_id!r} is not a registered consortium member")

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self._class_names

    def rosters(self) -> dict[str, ClassRoster]:
        """Each hospital's class names and counts, as it last sent them when it joined."""
        with self._changed:
            return dict(self._rosters)

    def subscribe(self, node_id: str, spec: ParameterSpec, classes: ClassRoster,
                  is_active: Callable[[], bool]) -> Iterator[RoundMessage]:
        """Every message broadcast from now on, until the stream ends or the node goes away. A node whose model or
        class names differ from the consortium's is refused before it is subscribed."""
        self.require_member(node_id)
        self._spec.require_equal(spec)
        subscriber = _Subscriber(node_id, queue.Queue())
        with self._changed:
            now = time.monotonic()
            last = self._subscribed_at.get(node_id)
            if last is not None and now - last < RESUBSCRIBE_SECONDS and node_id in self._subscribers:
                # A flood of subscriptions from one member would hold server threads: one replacement a second.
                raise ServerLimitError(f"node {node_id!r} subscribed {now - last:.2f} s ago; a new subscription "
                                       f"replaces it at most once every {RESUBSCRIBE_SECONDS:g} s")
            self._subscribed_at[node_id] = now
            if self._class_names is None and classes.names:
                self._class_names = classes.names
                log.info("the consortium's classes, in label order, are %s (from %s, the first to join)",
                         list(classes.names), node_id)
            require_same_classes(self._class_names or (), node_id, classes.names)
            self._rosters[node_id] = classes
            replaced = self._subscribers.get(node_id)
            if replaced is not None:  # one live subscription per member: the new one ends the old, and its thread
                replaced.outbox.put(None)
            self._subscribers[node_id] = subscriber
            self._changed.notify_all()
        log.info("node %s subscribed (%d connected): classes %s", node_id, len(self._subscribers), classes.table())
        if self._on_join is not None:
            self._on_join(self.rosters())
        if classes.empty_classes():
            log.warning("!!! %s has no images of %s: its validation metrics cannot cover that class !!!", node_id,
                        ", ".join(classes.empty_classes()))
        try:
            while is_active():
                try:
                    message = subscriber.outbox.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if message is None:
                    return
                yield message
        finally:
            with self._changed:
                current = self._subscribers.get(node_id) is subscriber
                if current:
                    del self._subscribers[node_id]
                self._changed.notify_all()
            if current:  # a subscription another replaced ends without the node leaving
                for listener in self._leave_listeners:
                    listener(node_id)
                log.info("node %s disconnected", node_id)
            else:
                log.info("node %s: an earlier subscription ended, replaced by its newer one", node_id)

    def connected(self) -> set[str]:
        with self._changed:
            return set(self._subscribers)

    def broadcast(self, message: RoundMessage) -> int:
        """Queue `message` for every subscriber; the number it went to."""
        with self._changed:
            for subscriber in self._subscribers.values():
                subscriber.outbox.put(message)
            return len(self._subscribers)

    def wait_for(self, expected: int, minimum: int, timeout: float, stop: threading.Event) -> set[str]:
        """Wait until `expected` nodes are connected, or after `timeout` settle for `minimum`; raise below that."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._subscribers) < expected and not stop.is_set():
                if time.monotonic() > deadline:
                    if len(self._subscribers) >= minimum:
                        break
                    missing = sorted(self._members - set(self._subscribers))
                    raise JoinTimeoutError(
                        f"only {len(self._subscribers)} nodes joined within the join timeout ({timeout:g} s; "
                        f"{minimum} needed); not joined: {', '.join(missing)} (see those hospitals' logs: a node "
                        "that cannot load its images, or whose classes differ, exits with the reason)")
                self._changed.wait(POLL_SECONDS)
            log.info("%d nodes connected; starting", len(self._subscribers))
            return set(self._subscribers)
