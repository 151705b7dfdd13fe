"""Tester hosts as network namespaces on a bridge of our own.

``LabNetwork`` makes a bridge in the root namespace with a private /24 out of
10.231.0.0/16 (the storer's side is ``.1``); ``add_host()`` makes a namespace
joined to that bridge by a veth pair, with ``eth0`` at ``.2``, ``.3``... and no
default route, so a namespace can reach the storer and its peers and nothing else.
IP forwarding is never turned on.

The network rule (LAB-NOTES): before any traffic goes to one of these addresses,
``check_route()`` asserts that the kernel routes it through our own bridge and not
through the machine's default-route device; a missing route would send packets
out of the machine.

Names: the bridge is ``vmck<pid>b<n>``, host-side veths ``vmck<pid>h<n>``,
namespaces ``vmck-<pid>-<n>-<label>``. ``cleanup_leftovers()`` (run once per
process, before the first network is made) deletes the ones whose owner pid is
dead. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.lab import require_marker
from tests.util import pid_alive

log = logging.getLogger(__name__)

PREFIX = "vmck"
SUPERNET = ipaddress.ip_network("10.231.0.0/16")
LOCK_FILE = Path("/run/lock/vmck-lab.lock")

_counter = itertools.count(1)
_cleaned = False
_LINK_RE = re.compile(rf"^{PREFIX}(\d+)[bh]\d+$")
_NS_RE = re.compile(rf"^{PREFIX}-(\d+)-")


# --------------------------------------------------------------------------- helpers


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ip ARGS``; on failure raise with ip's own message."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _ip_json(*args: str) -> list:
    out = ip("-j", *args).stdout.strip()
    return json.loads(out) if out else []


def available() -> str | None:
    """Why namespaces cannot be made here (a skip reason), or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


def _namespaces() -> list[str]:
    return [entry["name"] for entry in _ip_json("netns", "list")]


def _links() -> list[str]:
    return [entry["ifname"] for entry in _ip_json("link", "show")]


def default_device() -> str | None:
    """The device of the machine's default route (the way out of the machine)."""
    routes = _ip_json("route", "show", "default")
    return routes[0].get("dev") if routes else None


def route_device(addr: str, netns: str | None = None) -> str:
    """The device ``ip route get ADDR`` names (in ``netns`` when given)."""
    prefix = ("-n", netns) if netns else ()
    routes = _ip_json(*prefix, "route", "get", addr)
    if not routes or "dev" not in routes[0]:
        raise AssertionError(f"no route to {addr}{f' in namespace {netns}' if netns else ''}")
    return routes[0]["dev"]


def check_route(addr: str, expected_dev: str, netns: str | None = None) -> None:
    """Fail unless traffic to ``addr`` leaves through ``expected_dev`` (our own link).

    Loopback addresses must go through ``lo``. This is the network rule's guard:
    call it before connecting to any lab address."""
    dev = route_device(addr, netns)
    if netns is None and dev == default_device():
        raise AssertionError(
            f"route to {addr} goes through {dev}, the machine's default-route device:"
            " refusing to send traffic out of the machine")
    if dev != expected_dev:
        raise AssertionError(f"route to {addr} goes through {dev}, expected our own {expected_dev}")


def leftovers(pid: int | None = None) -> list[str]:
    """Namespaces and links made by process ``pid`` (default: this one) that still exist."""
    pid = os.getpid() if pid is None else pid
    found = [f"netns {n}" for n in _namespaces() if n.startswith(f"{PREFIX}-{pid}-")]
    found += [f"link {n}" for n in _links() if (m := _LINK_RE.match(n)) and int(m.group(1)) == pid]
    return found


def _delete_namespace(name: str) -> None:
    """Kill what still runs in namespace ``name`` (processes our tests started there), then delete it."""
    pids = ip("netns", "pids", name, check=False).stdout.split()
    for p in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(p), 9)
    ip("netns", "del", name, check=False)


def cleanup_leftovers() -> list[str]:
    """Delete ``vmck`` namespaces and links whose owner process is dead. Returns what went."""
    removed = []
    for name in _namespaces():
        m = _NS_RE.match(name)
        if m and not pid_alive(int(m.group(1))):
            _delete_namespace(name)
            removed.append(f"netns {name}")
    for name in _links():
        m = _LINK_RE.match(name)
        if m and not pid_alive(int(m.group(1))):
            ip("link", "del", name, check=False)
            removed.append(f"link {name}")
    if removed:
        log.warning("removed leftovers of earlier test runs: %s", ", ".join(removed))
    return removed


def _cleanup_once() -> None:
    global _cleaned
    if not _cleaned:
        _cleaned = True
        cleanup_leftovers()


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    """Serialise subnet choice across concurrent test processes."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of SUPERNET that no address or route of the machine touches."""
    used = []
    for entry in _ip_json("-4", "addr", "show"):
        for a in entry.get("addr_info", []):
            used.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for r in _ip_json("-4", "route", "show", "table", "all"):
        dst = r.get("dst")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(dst, strict=False))
    for subnet in itertools.islice(SUPERNET.subnets(new_prefix=24), 1, 255):
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError(f"no free /24 left in {SUPERNET}")


# --------------------------------------------------------------------------- classes


class LabNetwork:
    """A bridge of our own in the root namespace; tester hosts join it.

    Use as a context manager; ``close()`` removes every host and the bridge, also
    after a failed test. Attributes: ``bridge`` (device), ``subnet``, ``gateway``
    (the storer-side address, on the bridge), ``hosts``.
    """

    def __init__(self) -> None:
        reason = available()
        if reason:
            raise RuntimeError(reason)
        require_marker("netns", "network namespaces")
        _cleanup_once()
        self.bridge = f"{PREFIX}{os.getpid()}b{next(_counter)}"
        self.hosts: list[TesterHost] = []
        self._next_host = 2
        with _allocation_lock():
            self.subnet = _free_subnet()
            self.gateway = str(self.subnet.network_address + 1)
            ip("link", "add", self.bridge, "type", "bridge")
            try:
                ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
                ip("link", "set", self.bridge, "up")
            except BaseException:
                ip("link", "del", self.bridge, check=False)
                raise
        log.info("lab network %s on %s", self.subnet, self.bridge)

    def add_host(self, label: str = "tester") -> TesterHost:
        """A new namespace on this bridge, with the next free address."""
        address = str(self.subnet.network_address + self._next_host)
        self._next_host += 1
        host = TesterHost(self, label, address)
        self.hosts.append(host)
        return host

    def check_route(self, addr: str) -> None:
        """Assert that ``addr`` is reached through this network's bridge."""
        check_route(addr, self.bridge)

    def close(self) -> None:
        for host in reversed(self.hosts):
            host.close()
        self.hosts.clear()
        ip("link", "del", self.bridge, check=False)

    def __enter__(self) -> LabNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TesterHost:
    """A separate host: a network namespace whose ``eth0`` sits on a LabNetwork.

    Attributes: ``netns`` (namespace name), ``address``, ``label``, ``veth``
    (host-side device on the bridge), ``network``. Files are shared with the root
    namespace (only the network is separate), so a test can look into the
    tester's folders directly.
    """

    def __init__(self, network: LabNetwork, label: str, address: str) -> None:
        n = next(_counter)
        self.network = network
        self.label = label
        self.address = address
        self.netns = f"{PREFIX}-{os.getpid()}-{n}-{label}"
        self.veth = f"{PREFIX}{os.getpid()}h{n}"
        peer = f"{PREFIX}{os.getpid()}g{n}"
        ip("netns", "add", self.netns)
        try:
            ip("link", "add", self.veth, "type", "veth", "peer", "name", peer)
            ip("link", "set", peer, "netns", self.netns)
            ip("-n", self.netns, "link", "set", peer, "name", "eth0")
            ip("-n", self.netns, "addr", "add", f"{address}/{network.subnet.prefixlen}", "dev", "eth0")
            ip("-n", self.netns, "link", "set", "lo", "up")
            ip("-n", self.netns, "link", "set", "eth0", "up")
            ip("link", "set", self.veth, "master", network.bridge)
            ip("link", "set", self.veth, "up")
        except BaseException:
            self.close()
            raise
        log.info("tester host %s at %s", self.netns, address)

    def command(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.netns, *cmd]

    def run(self, cmd: Sequence[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside the namespace (``subprocess.run`` keywords apply);
        output is captured as text unless told otherwise. With ``check``, a
        failure raises RuntimeError carrying the command's stderr."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        proc = subprocess.run(self.command(cmd), **kwargs)
        if check and proc.returncode != 0:
            raise RuntimeError(f"in {self.netns}: {' '.join(cmd)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def popen(self, cmd: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start ``cmd`` inside the namespace; ``ip netns exec`` execs it, so the
        Popen's pid is the command's own."""
        return subprocess.Popen(self.command(cmd), **kwargs)

    def check_route(self, addr: str | None = None) -> None:
        """Assert that the root namespace reaches this host through our bridge, and,
        when ``addr`` is given, that this host reaches ``addr`` through its eth0
        (or lo for its own loopback)."""
        self.network.check_route(self.address)
        if addr is not None:
            expected = "lo" if ipaddress.ip_address(addr).is_loopback else "eth0"
            check_route(addr, expected, netns=self.netns)

    def link_down(self) -> None:
        """Cut this host off the network (its eth0 goes down), as a dead tester."""
        ip("-n", self.netns, "link", "set", "eth0", "down")

    def link_up(self) -> None:
        ip("-n", self.netns, "link", "set", "eth0", "up")

    def close(self) -> None:
        """Kill what still runs inside, delete the namespace (its eth0 goes with it)
        and the host-side veth."""
        if self.netns in _namespaces():
            _delete_namespace(self.netns)
        if self.veth in _links():
            ip("link", "del", self.veth, check=False)

    def __enter__(self) -> TesterHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
