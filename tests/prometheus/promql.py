"""The expressions of deploy/: dashboard targets and rules, and the text rewrites the live test needs.

No PromQL parser is at hand in Python, so these work on the text. They only need to handle
the expressions in deploy/, whose metric names all start with ``loragate_``, ``loragate:``,
``vllm:`` or are ``up``; ``test_deploy_files.py`` checks them on examples.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
RULE_FILES = (
    DEPLOY / "prometheus" / "rules" / "recording.yml",
    DEPLOY / "prometheus" / "rules" / "alerts.yml",
)
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "loragate.json"

# A selector: a metric name of ours (not a function: no "(" after it), with its label matchers.
_SELECTOR = re.compile(r"(?<![\w:\"])(loragate[_:][\w:]*|vllm:[\w:]*|up)(?![\w:(])(\{[^}]*\})?")
_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(?!\s*bool\b)")
_GROUPING = re.compile(r"\bby\s*\(([^)]*)\)")
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass(frozen=True)
class Expression:
    where: str  # "panel <title> <refId>", "record <name>" or "alert <name>"
    expr: str


def dashboard_targets(path: Path = DASHBOARD) -> list[Expression]:
    panels = json.loads(path.read_text())["panels"]
    return [
        Expression(f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in panels
        for target in panel.get("targets", [])
    ]


def rules(kind: str) -> list[Expression]:
    """``kind`` is "record" or "alert"."""
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found += [Expression(f"{kind} {r[kind]}", r["expr"]) for r in group["rules"] if kind in r]
    return found


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's template variables ($name, ${name}) replaced; an unknown one is an error."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for the template variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(value, expr)


def selectors(expr: str) -> list[str]:
    """The vector selectors, matchers included: ``rate(x{a="b"}[5m]) / y`` -> ``x{a="b"}``, ``y``."""
    return [name + (matchers or "") for name, matchers in _SELECTOR.findall(expr)]


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in _SELECTOR.findall(expr)}


def grouping_labels(expr: str) -> set[str]:
    """Labels of every ``by (...)`` clause, but ``le`` (histogram_quantile consumes it)."""
    labels = {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",")}
    return labels - {"", "le"}


def with_bool_comparisons(expr: str) -> str:
    """Every comparison outside label matchers made a ``bool`` one: 0/1 values instead of a filter.

    ``x > 2`` returns nothing while x is small; ``x > bool 2`` returns x's series with 0 or 1,
    so the expression returns data exactly when its inputs do, whatever the alert's condition.
    """
    parts = re.split(r"(\{[^}]*\})", expr)  # odd items: matchers, left alone
    return "".join(p if i % 2 else _COMPARISON.sub(r"\1 bool", p) for i, p in enumerate(parts))
