"""The tester's own config: its folders, slots and per-machine instance overrides.

A tester config (``vmchecker-init-course tester DIR`` writes a commented one) says where
the queue manager keeps its bundles and how many run at once. Under ``machines`` it may
override keys of a machine the bundles carry (another container name, a local image):
the course decides what a machine is, the tester where it lives. Loaded once, like every
config, into frozen objects; errors name the file and the key.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmchecker.config import Machine, machine_to_dict
from vmchecker.confparse import build, deep_merge, read_yaml
from vmchecker.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TesterSettings:
    name: str = "tester"
    queue: str = "queue"
    work: str = "tmpunzip"
    done: str = "done"
    slots: int = 2
    executor_timeout: int = 600
    storer_daemon: str = ""
    state: str = "state"


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
