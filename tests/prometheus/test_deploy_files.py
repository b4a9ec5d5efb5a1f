"""deploy/ on its own: promtool accepts the config and rules; the dashboard and the PNG agree."""

from __future__ import annotations

import json
import subprocess

import pytest

from loadtests.dashboard_png import PANELS

from .conftest import requires_prometheus
from .promql import (
    DASHBOARD,
    PROMETHEUS_YML,
    RULE_FILES,
    dashboard_targets,
    grouping_labels,
    rules,
    selectors,
    substitute,
    with_bool_comparisons,
)


@requires_prometheus
@pytest.mark.parametrize(
    "command",
    [["check", "config", str(PROMETHEUS_YML)], ["check", "rules", *map(str, RULE_FILES)]],
    ids=["config", "rules"],
)
def test_promtool_accepts(command: list[str]) -> None:
    result = subprocess.run(["promtool", *command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_panels_use_the_datasource_variable_and_known_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "department"}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
    for target in dashboard_targets():
        substitute(target.expr, {"department": ".+", "__rate_interval": "1m"})  # no other variable


def test_rule_names_are_unique() -> None:
    names = [r.where for r in rules("record") + rules("alert")]
    assert len(names) == len(set(names))


def test_png_panels_are_dashboard_panels() -> None:
    titles = {t.where.split("'")[1] for t in dashboard_targets()}
    assert set(PANELS) <= titles


def test_expression_rewrites() -> None:
    expr = 'sum by (le, department) (rate(loragate_x_bucket{status=~"5..",a!="b"}[5m])) / up{job="vllm"}'
    assert selectors(expr) == ['loragate_x_bucket{status=~"5..",a!="b"}', 'up{job="vllm"}']
    assert selectors("histogram_quantile(0.5, vllm:kv_cache_usage_perc) > loragate:a:b") == [
        "vllm:kv_cache_usage_perc",
        "loragate:a:b",
    ]
    assert grouping_labels(expr + " or sum by (adapter) (x)") == {"department", "adapter"}
    assert (
        with_bool_comparisons('x{a!="b"} >= 0.5 and on () y == 0')
        == 'x{a!="b"} >= bool 0.5 and on () y == bool 0'
    )
    assert with_bool_comparisons("x > bool 1") == "x > bool 1"
    assert substitute(
        'r{d=~"$department"}[${__rate_interval}]', {"department": ".+", "__rate_interval": "1m"}
    ) == ('r{d=~".+"}[1m]')
