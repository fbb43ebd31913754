"""The Grafana dashboard and the Prometheus alert rules only query what railguard exports.

The exported series are read from a real railguard's /metrics (names and types), with the
label names of each metric from metrics/registry.py, so a renamed metric or label breaks
this test, never a panel in production.
"""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import promql_parser as pp
import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

import metrics.registry
from tests.conftest import StartRailguard
from tests.packaging_helpers import (
    ALERTS,
    DASHBOARD,
    LEGEND_LABEL,
    PROMETHEUS_SERIES,
    TEMPLATE_LABEL,
    Series,
    check_query,
    grafana_to_promql,
    kept_labels,
    load_yaml,
    parse,
)

SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def registry_labels() -> dict[str, set[str]]:
    """Label names of every metric defined in metrics/registry.py, by family name."""
    out: dict[str, set[str]] = {}
    for value in vars(metrics.registry).values():
        if isinstance(value, MetricWrapperBase):
            out[value._name] = set(value._labelnames)
    return out


def series_from_exposition(text: str) -> dict[str, Series]:
    labels = registry_labels()
    series: dict[str, Series] = {}
    for family in text_string_to_metric_families(text):
        family_labels = set(labels.get(family.name, set()))
        for sample in family.samples:
            family_labels |= set(sample.labels) - {"le", "quantile"}
        for suffix in SUFFIXES.get(family.type, ("",)):
            extra = {"le"} if suffix == "_bucket" else set()
            name = family.name + suffix
            series[name] = Series(name, family.type, frozenset(family_labels | extra))
    for name, extra in PROMETHEUS_SERIES.items():
        series.setdefault(name, Series(name, "prometheus", frozenset(extra)))
    return series


@pytest.fixture
async def exported(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> dict[str, Series]:
    base = await start_railguard()
    async with http.get(f"{base}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return series_from_exposition(text)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return out


def dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(where, PromQL, legend) for every panel target."""
    out = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            where = f"panel {panel['title']!r} target {target['refId']}"
            out.append((where, grafana_to_promql(target["expr"]), target.get("legendFormat", "")))
    return out


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


# --- what the exported series look like --------------------------------------------------


async def test_exported_series_are_read_from_real_metrics(exported: dict[str, Series]) -> None:
    assert exported["railguard_requests_total"].kind == "counter"
    assert {"route", "config_id", "model", "stream", "outcome"} <= exported[
        "railguard_requests_total"
    ].labels
    assert "le" in exported["railguard_rail_duration_seconds_bucket"].labels
    assert exported["railguard_in_flight_requests"].kind == "gauge"
    # Every metric defined in the registry is served.
    for family in registry_labels():
        assert any(name.startswith(family) for name in exported), family


def test_the_checker_catches_drift() -> None:
    """The checks below can fail: a wrong name, label, grouping or rate is reported."""
    series = {
        "railguard_requests_total": Series(
            "railguard_requests_total", "counter", frozenset({"outcome"})
        ),
        "railguard_in_flight_requests": Series(
            "railguard_in_flight_requests", "gauge", frozenset()
        ),
        "railguard_x_bucket": Series("railguard_x_bucket", "histogram", frozenset({"le"})),
    }
    assert check_query("rate(railguard_requests_total[5m])", series, "ok") == []
    assert check_query("rate(railguard_request_total[5m])", series, "q")[0].endswith(
        "'railguard_request_total' is not exported"
    )
    assert (
        "no label 'verdict'" in check_query('railguard_requests_total{verdict="x"}', series, "q")[0]
    )
    assert (
        "unknown labels ['rail']"
        in check_query("sum by (rail) (rate(railguard_requests_total[5m]))", series, "q")[0]
    )
    assert "a gauge" in check_query("rate(railguard_in_flight_requests[5m])", series, "q")[0]
    assert (
        "without `le`"
        in check_query("histogram_quantile(0.9, sum(rate(railguard_x_bucket[5m])))", series, "q")[0]
    )
    assert "does not parse" in check_query("sum(rate(x[5m])", series, "q")[0]


# --- the dashboard ------------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "railguard" and board["title"] == "railguard"
    assert isinstance(board["schemaVersion"], int)
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        # Every panel follows the data source variable, so the JSON imports anywhere.
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        assert panel.get("description"), f"panel {panel['title']!r} has no description"


def test_dashboard_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in panels(dashboard()):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"panel {panel['title']!r} overlaps another"
        taken |= cells


def test_dashboard_has_the_issue_sections() -> None:
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    for section in ("Traffic", "Latency", "Rails", "Streaming", "Upstreams", "Runtime"):
        assert any(section in row for row in rows), section


async def test_dashboard_queries_only_use_exported_series(exported: dict[str, Series]) -> None:
    problems: list[str] = []
    queries = dashboard_queries(dashboard())
    assert len(queries) > 20
    for where, expr, legend in queries:
        found = check_query(expr, exported, where)
        problems += found
        if found:
            continue
        kept = kept_labels(parse(expr), exported) or set()
        for label in LEGEND_LABEL.findall(legend):
            if label not in kept:
                problems.append(f"{where}: legend uses {label!r}, the result has {sorted(kept)}")
    assert problems == [], "\n".join(problems)


async def test_dashboard_variables_use_exported_series(exported: dict[str, Series]) -> None:
    problems: list[str] = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)", query)
        assert match, f"variable {variable['name']}: {query}"
        selector, label = match.groups()
        where = f"variable {variable['name']!r}"
        problems += check_query(selector, exported, where)
        metric = parse(selector)
        assert isinstance(metric, pp.VectorSelector)
        if label not in exported[metric.name or ""].labels | {"job", "instance"}:
            problems.append(f"{where}: {metric.name} has no label {label!r}")
    assert problems == [], "\n".join(problems)


# --- the alert rules ----------------------------------------------------------------------

RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def test_alert_rules_file_is_valid() -> None:
    data = load_yaml(ALERTS)
    assert set(data) == {"groups"}
    group_names = [group["name"] for group in data["groups"]]
    assert len(group_names) == len(set(group_names))
    names = []
    for group in data["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            assert set(rule) <= RULE_KEYS, rule
            assert re.fullmatch(r"Railguard[A-Z][A-Za-z0-9]+", rule["alert"]), rule["alert"]
            names.append(rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            if "for" in rule:
                assert DURATION.match(rule["for"]), rule
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule
            assert set(rule["annotations"]) >= {"summary", "description"}, rule
            for text in rule["annotations"].values():
                assert text.count("{{") == text.count("}}"), text
    assert len(names) == len(set(names)), "alert names must be unique"


def test_alert_rules_cover_the_issue() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert "RailguardBlockRateSpike" in exprs
    assert "RailguardUpstreamErrors" in exprs
    assert 'verdict=~"error|timeout"' in exprs["RailguardRailFailing"]
    assert "RailguardDown" in exprs
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert 'policy="allow"' in exprs["RailguardRailFailOpen"]
    assert rules["RailguardRailFailOpen"]["labels"]["severity"] == "critical"
    assert "railguard_proxy_overhead_seconds_bucket" in exprs["RailguardOverheadOverBudget"]
    assert "> 0.003" in exprs["RailguardOverheadOverBudget"]
    assert "railguard_event_loop_lag_seconds_bucket" in exprs["RailguardEventLoopLag"]


def test_dashboard_shows_the_new_metrics() -> None:
    queries = " ".join(expr for _, expr, _ in dashboard_queries(dashboard()))
    for metric in (
        "railguard_proxy_overhead_seconds_bucket",
        "railguard_rails_added_seconds_bucket",
        "railguard_time_to_first_chunk_seconds_bucket",
        "railguard_upstream_time_to_first_chunk_seconds_bucket",
        "railguard_rail_errors_total",
        "railguard_tokens_total",
        "railguard_config_info",
        "railguard_build_info",
        "railguard_event_loop_lag_seconds_bucket",
    ):
        assert metric in queries, metric


async def test_alert_rules_only_use_exported_series(exported: dict[str, Series]) -> None:
    problems: list[str] = []
    for rule in alert_rules():
        where = f"alert {rule['alert']}"
        found = check_query(rule["expr"], exported, where)
        problems += found
        if found:
            continue
        kept = kept_labels(parse(rule["expr"]), exported) or set()
        for text in rule["annotations"].values():
            for label in TEMPLATE_LABEL.findall(text):
                if label not in kept:
                    problems.append(f"{where}: annotation uses {label!r}, result has {kept}")
    assert problems == [], "\n".join(problems)
