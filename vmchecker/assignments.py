"""The assignments of a course config: the ``assignments`` section, its ``defaults``
block and the checks a type cannot say (the machine it names, a timeout, the order of
its point values).

An assignment is what grading, penalties, the evidence and the web pages read, most of
them without the rest of the course: they import :class:`Assignment` from here. The
loader needs only the names of the course's machines, so :mod:`vmchecker.config` calls
it and this module never imports the config: the imports go one way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from vmchecker.confparse import Size, When, build, check_id
from vmchecker.errors import ConfigError

TYPE_CHECKING = False   # typing.TYPE_CHECKING, without importing typing on a command's path
if TYPE_CHECKING:
    from typing import Any


@dataclass(frozen=True)
class Assignment:
    """An assignment under ``assignments`` (over its ``defaults``): its deadline, machine, points and rules."""
    id: str
    deadline: When
    machine: str
    title: str = ""
    statement: str = ""
    order: int = 0
    timeout: int = 90
    total_points: float = 10.0
    # A build that fails or a run that does not complete scores this (before the late
    # penalty): no points without evidence.
    points_on_failure: float = 0.0
    # No grade exceeds this, whatever the grade lines add; None means total_points.
    max_points: float | None = None
    penalty_weights: list[float] = field(default_factory=lambda: [0.5, 0.5, 1.0])
    penalty_limit: float = 4.0
    min_interval: int = 120
    max_submission_size: Size = 10 * 1024 * 1024
    hard_deadline: bool = False
    submit_only: bool = False
    hidden: bool = False
    show_grades_before_deadline: bool = False
    ignored_vmrs: list[str] = field(default_factory=list)

    @property
    def ceiling(self) -> float:
        """The highest grade this assignment gives (``max_points``, a float)."""
        return self.total_points if self.max_points is None else self.max_points


def load_assignments(section: Any, path: Path, machines: Collection[str]) -> dict[str, Assignment]:
    """The ``assignments`` section of the course config at ``path``: each assignment
    over the ``defaults`` block, a wrong key reported where it was written, the machine it
    names one of ``machines``, its points in order."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(path, "assignments", f"expected a mapping, got {section!r}")
    defaults = section.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(path, "assignments.defaults", f"expected a mapping, got {defaults!r}")
    names = {f.name for f in dataclasses.fields(Assignment)}
    for k in defaults:
        if k not in names or k == "id":
            raise ConfigError(path, f"assignments.defaults.{k}", "unknown key")
    out = {}
    for name, body in section.items():
        name = str(name)
        if name == "defaults":
            continue
        key = f"assignments.{name}"
        check_id(name, path, key, "assignment name")
        if body is not None and not isinstance(body, dict):
            raise ConfigError(path, key, f"expected a mapping, got {body!r}")
        body = {**defaults, **(body or {}), "id": name}
        # a wrong key is reported where it was written
        for k in body:
            if k not in names:
                raise ConfigError(path, f"{key}.{k}", f"unknown key (known keys here: {', '.join(sorted(names - {'id'}))})")
        assignment = build(Assignment, body, path, key)
        if assignment.machine not in machines:
            raise ConfigError(path, f"{key}.machine",
                              f"names machine {assignment.machine!r}, which is not under machines")
        if not assignment.penalty_weights:
            raise ConfigError(path, f"{key}.penalty_weights", "needs at least one weight")
        if assignment.timeout <= 0:
            raise ConfigError(path, f"{key}.timeout", "must be positive")
        _check_points(assignment, path, key)
        if not assignment.title:
            assignment = dataclasses.replace(assignment, title=name)
        out[name] = assignment
    return out


def _check_points(a: Assignment, path: Path, key: str) -> None:
    """The three point values must order: 0 <= points_on_failure <= total_points, and
    the ceiling at least points_on_failure (else a failed job would be cut below what
    a failure scores, and the failure line could not say what it takes)."""
    if a.points_on_failure < 0:
        raise ConfigError(path, f"{key}.points_on_failure", f"must not be negative (is {a.points_on_failure:g})")
    if a.points_on_failure > a.total_points:
        raise ConfigError(path, f"{key}.points_on_failure",
                          f"is {a.points_on_failure:g}, more than total_points ({a.total_points:g}):"
                          " a failed build or run cannot score more than a complete one")
    if a.ceiling < a.points_on_failure:
        raise ConfigError(path, f"{key}.max_points",
                          f"is {a.ceiling:g}, below points_on_failure ({a.points_on_failure:g}):"
                          " max_points must be at least points_on_failure")
