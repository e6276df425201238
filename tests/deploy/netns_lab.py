"""A private test network of Linux network namespaces: one "host" per service.

`NetnsLab` makes a bridge namespace holding a Linux bridge, and for each host a
namespace joined to that bridge by a veth pair, with its own address in a private
/24. The root namespace gets a blackhole route for the subnet, so no packet from
the root namespace can reach (or leak towards) those addresses; every process that
talks to the lab runs inside one of its namespaces (`ip netns exec`).

`close()` kills the processes it started, deletes every namespace (which deletes
their veths and the bridge) and the route; it is safe to call twice and after a
failed `add_host`.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


@dataclass
class LabProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def log_tail(self, chars: int = 3000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]


@dataclass
class NetnsLab:
    subnet: str
    prefix: str = field(default_factory=lambda: f"fxlab{os.getpid() % 100000}")
    namespaces: list[str] = field(default_factory=list)
    processes: dict[str, LabProcess] = field(default_factory=dict)
    route_added: bool = False

    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}-bridge"

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def open(self) -> NetnsLab:
        # Before anything gets an address: the root namespace must never route to the lab.
        ip("route", "replace", "blackhole", self.subnet)
        self.route_added = True
        self._add_namespace(self.bridge_ns)
        ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        return self

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, host: str, host_number: int) -> str:
        """A namespace for `host` at the subnet's address number `host_number`; returns the address."""
        network = ipaddress.ip_network(self.subnet)
        address = str(network.network_address + host_number)
        ns = self.namespace(host)
        self._add_namespace(ns)
        port = f"p{len(self.namespaces)}"  # the veth end in the bridge namespace (names are per namespace)
        ip("-n", self.bridge_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{address}/{network.prefixlen}", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        return address

    def start(self, host: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path) -> LabProcess:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{host}.log"
        log = open(log_path, "wb")
        # `ip netns exec` execs argv inside the namespace: the pid is the service's own.
        process = subprocess.Popen(["ip", "netns", "exec", self.namespace(host), *argv], env=env, cwd=cwd,
                                   stdout=log, stderr=subprocess.STDOUT)
        self.processes[host] = LabProcess(host, process, log_path, log)
        return self.processes[host]

    def run_in(self, host: str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.namespace(host), *argv], capture_output=True,
                              text=True, timeout=timeout)

    def close(self) -> None:
        for lab_process in self.processes.values():
            if lab_process.process.poll() is None:
                lab_process.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for lab_process in self.processes.values():
            try:
                lab_process.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                lab_process.process.kill()
                lab_process.process.wait(timeout=10)
            lab_process.log.close()
        for name in reversed(self.namespaces):
            ip("netns", "del", name, check=False)
        self.namespaces.clear()
        if self.route_added:
            ip("route", "del", "blackhole", self.subnet, check=False)
            self.route_added = False

    def leftovers(self) -> list[str]:
        """Namespaces of this lab, and its blackhole route, still present (empty after close())."""
        found = [name for name in ip("netns", "list").stdout.split() if name.startswith(self.prefix + "-")]
        if "blackhole" in ip("route", "show", self.subnet).stdout:
            found.append(f"blackhole {self.subnet}")
        return found
