"""Serving Prometheus metrics: what the storer daemon and the queue manager share.

Each process keeps its own metric objects (:mod:`vmchecker.storer.metrics`,
:mod:`vmchecker.tester.metrics`); this module serves them on a separate HTTP address
(``daemon.metrics_listen`` of the global config, ``tester.metrics_listen`` of a tester
config; off when empty), apart from the XML-RPC port: a monitoring system reaches the
one without being allowed the other. The endpoint has no authentication and names
courses, assignments and testers: listen on loopback or on an internal address only.

Metrics must never cost a job anything. Every function the job path calls is wrapped in
:func:`guarded` (an exception is logged once and swallowed), gauges are read at scrape
time by a :class:`ScrapeCollector` that yields nothing rather than fail, and an address
that cannot be bound is logged and leaves the process running without metrics.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from vmchecker.confparse import parse_host_port

log = logging.getLogger(__name__)

# Histogram buckets (seconds), one set per kind of duration.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
JOB_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
START_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)

F = TypeVar("F", bound=Callable[..., Any])
_complained: set[str] = set()


def guarded(fn: F) -> F:
    """Run ``fn`` so that it can never raise into its caller (the job path): an exception
    is logged (with its traceback the first time, then at debug level) and the call
    returns None."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:
            if fn.__qualname__ in _complained:
                log.debug("metrics: %s failed again", fn.__qualname__, exc_info=True)
            else:
                _complained.add(fn.__qualname__)
                log.warning("metrics: %s failed; the job goes on without it", fn.__qualname__, exc_info=True)
            return None
    return wrapper  # type: ignore[return-value]


class ScrapeCollector(Collector):
    """Gauges computed when Prometheus scrapes, by ``produce`` (from the journal, the
    scheduler, the queue manager's own state): nothing to keep in step on the job path.
    A ``produce`` that fails yields nothing for that scrape (logged), never an error page."""

    def __init__(self, produce: Callable[[], Iterable[Metric]]):
        self._produce = produce

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(self._produce())
        except Exception:
            log.warning("metrics: computing the gauges failed; this scrape goes without them", exc_info=True)
            return iter(())
        return iter(families)


class _Shared(Collector):
    """The metric objects of a module-level registry, served by one exporter among others."""

    def __init__(self, registry: CollectorRegistry):
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        return self._registry.collect()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass   # a scrape every few seconds is not news


class Exporter:
    """One HTTP endpoint serving ``/metrics`` (any path, as prometheus-client does) in a
    thread of its own until :meth:`close`."""

    def __init__(self, host: str, port: int, collectors: Iterable[Collector], what: str):
        registry = CollectorRegistry(auto_describe=False)
        for collector in collectors:
            registry.register(collector)
        server_class = _Server6 if ":" in host else _Server
        self._httpd = make_server(host, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler)
        self.host, self.port = host, self._httpd.server_address[1]
        self.what = what
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port (safe to call twice)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(10)
        self._httpd.server_close()


def serve(listen: str, shared: CollectorRegistry, gauges: Callable[[], Iterable[Metric]] | None,
          what: str) -> Exporter | None:
    """Serve the metric objects of ``shared``, the process's own (CPU, memory, open files)
    and the scrape-time ``gauges`` on ``listen`` (``HOST:PORT``); None when ``listen`` is
    empty, or when the address cannot be had: that is logged, and the process serves its
    jobs without metrics rather than not at all."""
    if not listen:
        return None
    try:
        host, port = parse_host_port(listen)
        collectors: list[Collector] = [_Shared(shared), ProcessCollector(registry=None),
                                       PlatformCollector(registry=None)]
        if gauges is not None:
            collectors.append(ScrapeCollector(gauges))
        exporter = Exporter(host, port, collectors, what)
    except (OSError, ValueError) as exc:
        log.error("%s: cannot serve metrics on %s: %s; going on without them", what, listen, exc)
        return None
    log.info("%s: metrics on %s", what, exporter.url)
    return exporter
