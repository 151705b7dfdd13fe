"""The tester's own config: its folders, slots and per-machine instance overrides.

A tester config (``vmchecker-init-course tester DIR`` writes a commented one) says where
the queue manager keeps its bundles and how many run at once. Under ``machines`` it may
override keys of a machine the bundles carry (another container name, a local image):
the course decides what a machine is, the tester where it lives. Loaded once, like every
config, into frozen objects; errors name the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmchecker.config import Machine, check_metrics_listen, machine_to_dict
from vmchecker.confparse import build, deep_merge, read_yaml
from vmchecker.contract import TESTER_INFO
from vmchecker.errors import BundleError, ConfigError
from vmchecker.fsutil import write_atomic

log = logging.getLogger(__name__)

_warned: set[tuple[str, str]] = set()  # (bundle's URL, tester's) pairs already logged


@dataclass(frozen=True)
class TesterSettings:
    name: str = "tester"
    queue: str = "queue"
    work: str = "tmpunzip"
    done: str = "done"
    slots: int = 2
    executor_timeout: int = 600
    # Only for a bundle that carries no notify URL (one too broken to read): the storer
    # puts its daemon's URL in every bundle, and that one is used.
    storer_daemon: str = ""
    state: str = "state"
    # Seconds results stay in done/<job>/ once the storer has them (notified), so a
    # sysadmin can still look; then a periodic sweep removes them.
    done_grace: float = 86400.0
    # The host commands (``kernel_messages``, ``host_commands`` of a bundle's machine)
    # this tester runs, as exact strings: they run as root with a shell, so the storer's
    # word alone is not enough. Commands the tester's own ``machines`` set are its own.
    accept_host_commands: list[str] = dataclasses.field(default_factory=list)
    # HOST:PORT to serve this queue manager's Prometheus metrics on (vmchecker/tester/
    # metrics.py); empty: none. One port per queue manager; loopback or an internal address.
    metrics_listen: str = ""
    # Ready guests kept per machine this tester recently ran, made while a slot is idle so
    # a job skips revert and start (vmchecker/executor/warm.py): unset, as many as slots;
    # 0 turns warm guests off.
    warm_guests: int | None = None

    @property
    def warm_per_machine(self) -> int:
        return self.slots if self.warm_guests is None else self.warm_guests


@dataclass(frozen=True)
class TesterConfig:
    """A tester's own config; ``machines`` holds partial overrides of machine keys."""

    path: Path
    tester: TesterSettings
    machines: dict[str, dict[str, Any]]

    @property
    def root(self) -> Path:
        return self.path.parent

    def _dir(self, value: str) -> Path:
        return self.root / value

    @property
    def queue_dir(self) -> Path:
        return self._dir(self.tester.queue)

    @property
    def work_dir(self) -> Path:
        return self._dir(self.tester.work)

    @property
    def done_dir(self) -> Path:
        return self._dir(self.tester.done)

    @property
    def state_dir(self) -> Path:
        return self._dir(self.tester.state)

    def notify_url(self, bundled: str) -> str:
        """Where to notify the storer for a bundle that says ``bundled``: the bundle's URL
        (the storer's daemon, written once in its global file), else ``storer_daemon``.
        Both set and different: the bundle's wins, and the log says so."""
        fallback = self.tester.storer_daemon
        if bundled and fallback and bundled != fallback and (bundled, fallback) not in _warned:
            _warned.add((bundled, fallback))
            log.warning("the storer's bundles say notify %s, but %s says tester.storer_daemon %s: using the"
                        " bundle's; remove storer_daemon (or correct it) so the two do not disagree",
                        bundled, self.path, fallback)
        return bundled or fallback

    def identity(self) -> dict[str, Any]:
        """What this tester tells the storer about itself (its queue/TESTER_INFO)."""
        return {"name": self.tester.name, "slots": self.tester.slots, "config": str(self.path)}

    def publish_identity(self) -> Path:
        """Write :meth:`identity` into queue/ (the storer's account can read it there), so
        the storer can check that the course's name and slots for this tester are its own."""
        path = self.queue_dir / TESTER_INFO
        write_atomic(path, json.dumps(self.identity(), sort_keys=True) + "\n", 0o644)
        return path

    def check_host_commands(self, machine: Machine) -> None:
        """Refuse a machine (the bundle's, with this tester's overrides) whose host
        commands this tester did not accept: ``tester.accept_host_commands``, or those its
        own ``machines.NAME`` sets. Raises BundleError naming the first one refused."""
        own = self.machines.get(machine.name) or {}
        accepted = set(self.tester.accept_host_commands)
        for key in ("kernel_messages", "host_commands"):
            accepted.update(c for c in own.get(key) or [] if isinstance(c, str))
        for key in ("kernel_messages", "host_commands"):
            for command in getattr(machine, key):
                if command not in accepted:
                    raise BundleError(f"machine {machine.name!r}: {key} command {command!r} is not accepted by"
                                      f" this tester; a tester runs only the host commands its sysadmin lists"
                                      " under tester.accept_host_commands in its config")

    def machine(self, bundled: Machine) -> Machine:
        """The bundle's machine with this tester's instance overrides applied."""
        overrides = self.machines.get(bundled.name)
        if not overrides:
            return bundled
        merged = deep_merge(machine_to_dict(bundled), overrides)
        return build(Machine, {**merged, "name": bundled.name}, self.path, f"machines.{bundled.name}")


def load_tester(path: Path | str) -> TesterConfig:
    """Load a tester config (a file, or a tester folder holding ``config.yaml``)."""
    path = Path(path).absolute()
    if path.is_dir():
        path = path / "config.yaml"
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(path, "", "expected a mapping with 'tester'")
    for k in data:
        if k not in ("tester", "machines"):
            raise ConfigError(path, str(k), "unknown key (known keys here: tester, machines)")
    tester = build(TesterSettings, data.get("tester"), path, "tester")
    if tester.slots < 1:
        raise ConfigError(path, "tester.slots", "must be at least 1")
    if tester.done_grace < 0:
        raise ConfigError(path, "tester.done_grace", "must be 0 or more (seconds)")
    check_metrics_listen(tester.metrics_listen, "", path, "tester")
    if tester.warm_guests is not None and tester.warm_guests < 0:
        raise ConfigError(path, "tester.warm_guests", "must be 0 (no warm guests) or more")
    machines = data.get("machines") or {}
    if not isinstance(machines, dict):
        raise ConfigError(path, "machines", f"expected a mapping, got {machines!r}")
    names = {f.name for f in dataclasses.fields(Machine)} - {"name"}
    for mname, body in machines.items():
        if not isinstance(body, dict):
            raise ConfigError(path, f"machines.{mname}", f"expected a mapping, got {body!r}")
        for k in body:
            if k not in names:
                raise ConfigError(path, f"machines.{mname}.{k}", "unknown machine key")
    return TesterConfig(path, tester, {str(k): v for k, v in machines.items()})


def parse_identity(raw: bytes | str) -> dict[str, Any] | None:
    """A tester's published identity (its queue/TESTER_INFO): ``name``, ``slots`` and
    ``config``; None when it is not one."""
    try:
        info = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("name"), str):
        return None
    slots = info.get("slots")
    if isinstance(slots, bool) or not isinstance(slots, int):
        return None
    return info


def identity_disagreement(raw: bytes | str, name: str, slots: int) -> str | None:
    """How a tester's published identity disagrees with the course's ``name`` and
    ``slots`` for it, with both values; None when it agrees."""
    info = parse_identity(raw)
    if info is None:
        return f"its {TESTER_INFO} is not valid: restart its queue manager, which writes it"
    where = f" in {info['config']}" if isinstance(info.get("config"), str) else ""
    problems = []
    if info["name"] != name:
        problems.append(f"the course calls it {name!r} but it calls itself {info['name']!r} (tester.name{where})")
    if info["slots"] != slots:
        problems.append(f"the course gives it {slots} slot(s) but it runs {info['slots']} (tester.slots{where})")
    if not problems:
        return None
    return ("; ".join(problems) + ": make the course's testers entry and the tester's config agree"
            " (then restart the queue manager if its config changed)")
