"""A real Prometheus scrapes a real gateway: every dashboard and rule expression returns data.

How "returns data" is checked, through Prometheus's HTTP API (instant queries):

- dashboard targets: the expression itself, Grafana's variables substituted ($department by
  ``.+``, which, unlike ``.*``, does not match a missing label, so a misspelt label name in a
  matcher fails; $__rate_interval by 1m);
- recording rules: queried by their record name, so Prometheus must have evaluated them;
- alerts: an alert's expression is empty while its condition is false, so it is queried with
  every comparison made a ``bool`` one (``x > 2`` -> ``x > bool 2``: 0/1 instead of a filter);
  it then returns data exactly when its inputs do, whether or not the alert would fire;
- every result must carry the labels its ``by (...)`` clauses name (a misspelt grouping label
  would yield series without them), and every selector of every expression must return data
  on its own (a misspelt metric or matcher inside an ``or`` or a ``vector(0)`` fallback would
  otherwise hide).

Expressions that use a metric of ``NO_DATA_HERE`` are not checked, for the reason given there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from ..conftest import TINY_MODEL, LiveServer, free_port
from ..worlds import build_deployment
from .conftest import Prometheus, requires_prometheus
from .promql import (
    Expression,
    dashboard_targets,
    grouping_labels,
    metric_names,
    rules,
    selectors,
    substitute,
    with_bool_comparisons,
)

pytestmark = requires_prometheus

NO_VLLM = "no vLLM server in this test (its scrape target is a closed port: up{job='vllm'} is 0)"
NO_GPU = "no GPU on this machine (loragate_gpu_available is checked: it says 0)"
NO_DATA_HERE = {
    "vllm:num_requests_running": NO_VLLM,
    "vllm:num_requests_waiting": NO_VLLM,
    "vllm:kv_cache_usage_perc": NO_VLLM,
    "loragate_replica_up": "set by the vLLM backend only; this gateway runs the embedded engine",
    "loragate_rate_limited_total": "no rate limiter yet: the family has no samples",
    "loragate_gpu_utilization_ratio": NO_GPU,
    "loragate_gpu_memory_used_bytes": NO_GPU,
    "loragate_gpu_memory_total_bytes": NO_GPU,
    "loragate_gpu_power_watts": NO_GPU,
    "loragate_gpu_temperature_celsius": NO_GPU,
}
VARIABLES = {"department": ".+", "__rate_interval": "1m"}

TENANTS = """
tenants:
  acme:
    default_department: it
    departments:
      it: {adapter: acme-it, template: acme/it}
      legal: {template: acme/broken}  # never loads: its requests fail with 500
  globex:
    departments:
      sales: {adapter: globex-sales}
"""
IT_TEMPLATE = 'version: "{v}"\nsystem: "You are the IT assistant of {{{{ tenant }}}}."\n'


@dataclass
class Gateway:
    server: LiveServer
    keys: dict[str, str]
    it_template: Path


@pytest.fixture(scope="module")
def gateway(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Two tenants, two departments with adapters and one with a broken template, on the tiny model."""
    root = tmp_path_factory.mktemp("metrics-world")
    deployment = build_deployment(
        root,
        tiny_model_dir,
        tenants=TENANTS,
        templates={"acme/it.yaml": IT_TEMPLATE.format(v=1), "acme/broken.yaml": 'system: "{{ unclosed"\n'},
        adapters=[("acme-it", "acme-it-lora", 1), ("globex-sales", "globex-lora", 2)],
        max_loaded_adapters=1,  # the two departments take turns: loads and evictions
    )
    settings = deployment.settings
    keys = {tenant: deployment.keys.create(tenant)[1] for tenant in ("acme", "globex")}
    with LiveServer(settings) as server:
        yield Gateway(server, keys, root / "prompts" / "acme" / "it.yaml")


def drive_traffic(gateway: Gateway) -> None:
    """Both departments, streamed and not, adapters taking turns, a template reload, and errors."""

    def chat(
        tenant: str | None, department: str | None, *, stream: bool = False, model: str = TINY_MODEL
    ) -> int:
        headers = {"Authorization": f"Bearer {gateway.keys[tenant]}"} if tenant else {}
        headers |= {"X-Department": department} if department else {}
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 6,
            "min_tokens": 6,
        }
        with httpx.stream(
            "POST",
            gateway.server.base_url + "/chat/completions",
            json=body | {"stream": stream},
            headers=headers,
        ) as response:
            response.read()
            return response.status_code

    for turn in range(3):
        if turn == 2:  # a hot reload of the IT template
            gateway.it_template.write_text(IT_TEMPLATE.format(v=2) + "# edited\n")
        for tenant, department in (("acme", "it"), ("globex", "sales")):
            assert chat(tenant, department) == 200
            assert chat(tenant, department, stream=True) == 200
    assert chat("acme", "sales") == 403
    assert chat("acme", "it", model="no-such-model") == 404
    assert chat(None, "it") == 401
    assert chat("acme", "legal") == 500
    assert chat("acme", "legal", stream=True) == 500


def problems(prometheus: Prometheus, checks: list[tuple[Expression, str]]) -> list[str]:
    found = []
    for expression, query in checks:
        result = prometheus.query(query)
        if not result:
            found.append(f"{expression.where}: no data for {query}")
        for series in result:
            if missing := grouping_labels(expression.expr) - set(series["metric"]):
                found.append(f"{expression.where}: {series['metric']} lacks {sorted(missing)}")
    return found


def test_every_dashboard_and_rule_expression_returns_data(gateway: Gateway, tmp_path: Path) -> None:
    dashboard = [replace(e, expr=substitute(e.expr, VARIABLES)) for e in dashboard_targets()]
    records, alerts = rules("record"), rules("alert")
    everything = dashboard + records + alerts
    used = set().union(*(metric_names(e.expr) for e in everything))
    assert set(NO_DATA_HERE) <= used, "NO_DATA_HERE names metrics that deploy/ no longer uses"
    assert "loragate_gpu_available" in used

    checks = [(e, e.expr) for e in dashboard]
    checks += [(e, e.where.removeprefix("record ")) for e in records]
    checks += [(e, with_bool_comparisons(e.expr)) for e in alerts]
    checks += [(Expression(f"selector of {e.where}", s), s) for e in everything for s in selectors(e.expr)]
    checks = [(e, query) for e, query in checks if metric_names(e.expr).isdisjoint(NO_DATA_HERE)]

    targets = {"loragate": f"127.0.0.1:{gateway.server.port}", "vllm": f"127.0.0.1:{free_port()}"}
    with Prometheus(tmp_path, targets) as prometheus:
        prometheus.wait_until_up("loragate")
        drive_traffic(gateway)
        deadline = time.monotonic() + 30  # scrapes and rule evaluations run every second
        while (found := problems(prometheus, checks)) and time.monotonic() < deadline:
            time.sleep(1)
        assert not found, "\n".join(found)
        departments = {
            s["metric"]["department"] for s in prometheus.query("loragate:requests_per_second:by_department")
        }
        assert {"it", "sales", "legal"} <= departments
