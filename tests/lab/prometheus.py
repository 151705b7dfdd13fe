"""A real Prometheus server (Debian's ``prometheus``) on loopback, for the tests that check
what a monitoring system sees of the daemons' metrics.

Started by hand, as an operator would run it without systemd: its own config (every
target scraped each second), its own data folder, a free loopback port; stopped and its
data removed by :meth:`PrometheusServer.close`. Queried only through its HTTP API
(``/api/v1/query``), the way a dashboard or an alert rule reads it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests import lab
from tests.util import free_port, stop_process, wait_for, wait_for_port

START_WAIT = 60   # seconds for the server to answer (its TSDB opens first)


def available() -> str | None:
    """Why a Prometheus server cannot run here (tools/install-deps.sh installs one), or None."""
    return None if shutil.which("prometheus") else "no prometheus command (apt-get install prometheus)"


class PrometheusServer:
    """``prometheus`` scraping ``targets`` (job name -> ``HOST:PORT`` addresses) every second."""

    def __init__(self, folder: Path, targets: dict[str, list[str]]):
        self.folder = Path(folder)
        self.data = self.folder / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = self.folder / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(addresses)}]}
                               for job, addresses in targets.items()],
        }))
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> PrometheusServer:
        lab.require_marker("prometheus", "a Prometheus server")
        self._log = open(self.folder / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.config}", f"--storage.tsdb.path={self.data}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        wait_for_port(self.proc, self.port, START_WAIT, "prometheus")
        wait_for(self._ready, "prometheus to be ready", START_WAIT, interval=0.2)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as answer:
                return answer.status == 200
        except OSError:
            return False

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector ``expression`` gives now: ``[{"metric": {...}, "value": [t, "v"]}]``."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, expression: str) -> float | None:
        """The one value ``expression`` gives now; None while it gives none (not scraped yet)."""
        result = self.query(expression)
        assert len(result) <= 1, f"{expression} gives several series: {result}"
        return float(result[0]["value"][1]) if result else None

    def log_text(self) -> str:
        return (self.folder / "prometheus.log").read_text(errors="replace")

    def close(self) -> None:
        """Stop the server and remove its data (safe to call twice)."""
        if self.proc is not None:
            stop_process(self.proc, grace=30)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.data, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
