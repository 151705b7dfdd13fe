"""The daemon's view of its courses: config, scheduler and tester links, per course.

One daemon serves every course of the global file. A course is loaded when first
needed and reloaded when its config file changes, so a sysadmin who adds an
assignment does not have to restart the daemon (a broken edit keeps the last good
config and is logged). Estimates live in the journal, so a reload loses none.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from vmchecker import config
from vmchecker.errors import ConfigError, NotFound
from vmchecker.storer.journal import Journal
from vmchecker.storer.scheduler import Scheduler
from vmchecker.storer.transport import TesterLink

log = logging.getLogger(__name__)


@dataclass
class Course:
    """Everything the daemon holds for one course."""

    config: config.CourseConfig
    scheduler: Scheduler
    mtime: float
    links: dict[str, TesterLink] = field(default_factory=dict)
    # on_recovered(course id, tester): one of its testers answers again after a failure
    on_recovered: Callable[[str, str], object] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def id(self) -> str:
        return self.config.id

    def link(self, tester: str) -> TesterLink:
        """The (reused) SSH/SFTP link to one of the course's testers."""
        with self._lock:
            if tester not in self.links:
                link = TesterLink.from_config(self.config, tester)
                if self.on_recovered is not None:
                    link.on_recovered = functools.partial(_recovered, self.on_recovered, self.id)
                self.links[tester] = link
            return self.links[tester]

    def known_links(self) -> list[TesterLink]:
        """The links made so far (a tester never contacted has none)."""
        with self._lock:
            return list(self.links.values())

    def take_links(self, old: Course) -> None:
        """Keep the links of ``old`` (the course before a reload) whose tester is reached
        the same way, so a reload neither breaks a transfer under way nor reconnects;
        close the others."""
        with old._lock:
            for name, link in old.links.items():
                if name in self.config.testers and _same_endpoint(link, self.config, name):
                    self.links[name] = link
                else:
                    link.close()
            old.links = {}

    def close(self) -> None:
        with self._lock:
            for link in self.links.values():
                link.close()


def _recovered(callback: Callable[[str, str], object], course_id: str, link: TesterLink) -> None:
    callback(course_id, link.name)


def _same_endpoint(link: TesterLink, cfg: config.CourseConfig, name: str) -> bool:
    t = cfg.testers[name]
    return ((link.host, link.port, link.user, link.key_file, link.known_hosts, link.queue, link.expect)
            == (t.host, t.port, t.user, cfg.resolve(cfg.storer.ssh_key), cfg.resolve(cfg.storer.known_hosts),
                t.queue, (t.name, t.slots)))


def resolve_addresses(host: str) -> set[str]:
    """Every address a host name stands for (empty if it does not resolve)."""
    try:
        return {ipaddress.ip_address(info[4][0]).compressed for info in socket.getaddrinfo(host, None)}
    except (socket.gaierror, ValueError):
        return set()


def with_daemon_address(cfg: config.CourseConfig, listen: tuple[str, int], global_path: Path) -> config.CourseConfig:
    """``cfg`` with the ``storer.daemon`` the daemon listening on ``listen`` puts in its
    bundles: its own URL when the course sets none; the course's when it reaches that
    address. A course whose URL does not (another port, another host) would send testers
    elsewhere: ConfigError naming both values."""
    host, port = listen
    where = config.join_host_port(host, port)
    url = cfg.storer.daemon
    if not url:
        try:
            return config.with_daemon_url(cfg, config.daemon_url(where))
        except ValueError as exc:
            raise ConfigError(cfg.path, "storer.daemon", f"is not set, and the daemon's {exc}") from None
    parts = urlsplit(url)
    try:
        url_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        url_port = None
    same_host = host in config.WILDCARD_HOSTS or bool(resolve_addresses(parts.hostname or "") & resolve_addresses(host))
    if url_port != port or not same_host:
        raise ConfigError(cfg.path, "storer.daemon",
                          f"is {url}, but the storer daemon listens on {where} (daemon.listen in {global_path},"
                          " or its --listen): testers would call the wrong address; remove storer.daemon"
                          " (the daemon's own address is used) or make the two agree")
    return cfg


def tester_done_dir(tester: config.Tester) -> str:
    """Where a tester keeps finished jobs: ``done`` from the config, else next to ``queue``."""
    if tester.done:
        return tester.done
    queue = tester.queue.rstrip("/")
    return f"{queue.rsplit('/', 1)[0]}/done" if "/" in queue else "done"


class Courses:
    """Thread-safe registry of the courses in the global file."""

    def __init__(self, global_path: Path | str | None, journal: Journal, listen: tuple[str, int] | None = None,
                 on_recovered: Callable[[str, str], object] | None = None):
        """``listen``: the daemon's address, which each course's ``storer.daemon`` is
        derived from or checked against (None: taken as written). ``on_recovered(course,
        tester)`` is called when a tester's link succeeds again after a failure."""
        self.global_path = config.global_config_path(global_path)
        self.journal = journal
        self.listen = listen
        self.on_recovered = on_recovered
        self._lock = threading.RLock()
        self._courses: dict[str, Course] = {}
        self._glob: config.GlobalConfig | None = None
        self._glob_mtime: float | None = None

    def _global(self) -> config.GlobalConfig:
        """The global file, read again only when it changed."""
        try:
            mtime = self.global_path.stat().st_mtime
        except OSError:
            mtime = None
        if self._glob is None or mtime != self._glob_mtime:
            self._glob, self._glob_mtime = config.load_global(self.global_path), mtime
        return self._glob

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._global().courses)

    def get(self, course_id: str) -> Course:
        """The course, loaded or reloaded if its file changed; NotFound/ConfigError if unusable."""
        with self._lock:
            path = self._global().course_path(course_id)
            try:
                mtime = path.stat().st_mtime
            except OSError:
                raise NotFound(f"course {course_id!r}: its config {path} is missing") from None
            current = self._courses.get(course_id)
            if current is not None and current.mtime == mtime:
                return current
            try:
                loaded = self._load(course_id, path, mtime)
            except ConfigError as exc:
                if current is None:
                    raise
                log.error("keeping the last good config of %s: %s", course_id, exc.message)
                return current
            if current is not None:
                loaded.take_links(current)
            self._courses[course_id] = loaded
            return loaded

    def _load(self, course_id: str, path: Path, mtime: float) -> Course:
        cfg = config.load_course(path)
        if cfg.id != course_id:
            raise ConfigError(path, "course.id", f"is {cfg.id!r} but the global file registers it as {course_id!r}")
        if self.listen is not None:
            cfg = with_daemon_address(cfg, self.listen, self.global_path)
        scheduler = Scheduler.from_config(
            cfg,
            estimates=self.journal.load_estimates(course_id),
            persist=functools.partial(self.journal.save_estimate, course_id),
        )
        for job in self.journal.in_flight():
            if job.course == course_id and job.tester in cfg.testers and job.assignment in cfg.assignments:
                scheduler.on_sent(job.tester, job.id, job.assignment, now=job.sent)
        log.info("course %s loaded from %s", course_id, path)
        return Course(cfg, scheduler, mtime, on_recovered=self.on_recovered)

    def loaded(self) -> list[Course]:
        with self._lock:
            return list(self._courses.values())

    def close(self) -> None:
        with self._lock:
            for course in self._courses.values():
                course.close()
            self._courses.clear()
