"""A real Prometheus (Debian's package; .ci/run installs it) started by the tests themselves.

Every test here is skipped, with the reason, where ``prometheus``/``promtool`` are not on PATH;
under CI (``CI=true``, where .ci/run installs them) a missing tool is a failure instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ..conftest import free_port
from .promql import PROMETHEUS_YML, RULE_FILES

MISSING = [tool for tool in ("prometheus", "promtool") if shutil.which(tool) is None]
if MISSING and os.environ.get("CI", "").lower() == "true":
    raise RuntimeError(f"CI must have {MISSING} on PATH: .ci/run installs Debian's prometheus package")
requires_prometheus = pytest.mark.skipif(
    bool(MISSING), reason=f"{' and '.join(MISSING)} not on PATH: apt-get install prometheus (.ci/run does)"
)


class Prometheus:
    """``prometheus`` on 127.0.0.1 with deploy/'s rules, scraping the given targets every second."""

    def __init__(self, tmp: Path, targets: dict[str, str]):
        config = yaml.safe_load(PROMETHEUS_YML.read_text())
        config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(path) for path in RULE_FILES]
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        assert set(jobs) == set(targets), f"deploy/ scrapes {sorted(jobs)}"
        for name, target in targets.items():
            jobs[name]["static_configs"] = [{"targets": [target]}]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.command = [
            "prometheus",
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address={self.url.removeprefix('http://')}",
            "--log.level=warn",
        ]
        self.log = tmp / "prometheus.log"

    def __enter__(self) -> Prometheus:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"prometheus did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's series (each with ``metric`` labels and a ``value``)."""
        return self.api("query", query=expr)["result"]

    def wait_until_up(self, job: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            targets = self.api("targets")["activeTargets"]
            health = [t["health"] for t in targets if t["labels"]["job"] == job]
            if health and all(h == "up" for h in health):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job} is not up: {[t['lastError'] for t in targets]}")
            time.sleep(0.2)
