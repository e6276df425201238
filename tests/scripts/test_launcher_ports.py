"""The launcher's listening ports: never one the kernel may hand to an outgoing connection meanwhile."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from scripts import launcher as consortium
from scripts.launcher import free_port


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)  # two services of one launcher never share a port
    assert max(ports) < ephemeral_low
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", ports[-1]))


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    held = free_port()
    monkeypatch.setattr(consortium, "_handed_out", set())  # only the bind check can refuse it now
    offered = iter([held, held, held + 1])
    monkeypatch.setattr(consortium.random, "choice", lambda ports: next(offered))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", held))
        holder.listen()
        assert free_port() == held + 1
