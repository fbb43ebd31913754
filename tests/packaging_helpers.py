"""What the packaging tests share: the repo's paths, `railguard serve`'s real flags, and a
small PromQL reader (on promql-parser's real parser) for the dashboard and the alert rules."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import promql_parser as pp
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "railguard"
DASHBOARD = CHART / "files" / "railguard-dashboard.json"
ALERTS = CHART / "files" / "railguard-alerts.yml"
BIN = Path(sys.executable).parent


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@cache
def cli_flags(command: str) -> frozenset[str]:
    """The long flags `railguard COMMAND --help` really prints."""
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", command, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return frozenset(re.findall(r"(--[a-z0-9][a-z0-9-]*)", result.stdout)) - {"--help"}


def flag_name(arg: str) -> str:
    """`--port=8000` -> `--port`."""
    return arg.split("=", 1)[0]


# Series Prometheus itself adds for every scrape target, and the labels it adds to every
# series it scrapes: a query may use them beside what railguard exports.
PROMETHEUS_SERIES: dict[str, set[str]] = {
    "up": set(),
    "scrape_duration_seconds": set(),
    "scrape_samples_scraped": set(),
    "scrape_samples_post_metric_relabeling": set(),
    "scrape_series_added": set(),
}
TARGET_LABELS = {"job", "instance"}


@dataclass(frozen=True)
class Series:
    """One series name railguard exports, with its metric type and label names."""

    name: str
    kind: str  # counter, gauge, histogram, summary, prometheus
    labels: frozenset[str]


@dataclass
class QueryFacts:
    """What one PromQL expression uses."""

    metrics: list[str] = field(default_factory=list)
    matcher_labels: list[tuple[str, str]] = field(default_factory=list)  # (metric, label)
    grouping: list[tuple[str, set[str]]] = field(default_factory=list)  # (op, labels)
    rate_args: list[str] = field(default_factory=list)  # metrics under rate()/increase()
    quantile_groupings: list[set[str] | None] = field(default_factory=list)


# Grafana's own variables, which are not PromQL: each is given a value of its type.
GRAFANA_RANGE_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${__rate_interval}": "5m",
    "${__interval}": "1m",
    "${__range}": "1h",
}


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_RANGE_VARS.items():
        expr = expr.replace(var, value)
    # Dashboard variables only appear inside label-matcher strings, which PromQL accepts
    # as they are; one anywhere else would leave a `$` that fails to parse, as it should.
    return expr


def parse(expr: str) -> pp.Expr:
    return pp.parse(expr)


def facts(expr: pp.Expr) -> QueryFacts:
    found = QueryFacts()

    def visit(node: Any) -> bool:
        if isinstance(node, pp.VectorSelector):
            name = node.name
            if name is None:  # {__name__="..."}: name it from the matcher
                for m in node.matchers.matchers:
                    if m.name == "__name__":
                        name = m.value
            assert name, f"selector without a metric name: {node}"
            found.metrics.append(name)
            for m in node.matchers.matchers:
                if m.name != "__name__":
                    found.matcher_labels.append((name, m.name))
        elif isinstance(node, pp.AggregateExpr) and node.modifier is not None:
            found.grouping.append((str(node.op), set(node.modifier.labels)))
        elif isinstance(node, pp.Call):
            if node.func.name in {"rate", "irate", "increase", "resets"}:
                inner = node.args[0]
                assert isinstance(inner, pp.MatrixSelector), f"{node.func.name} of {inner}"
                found.rate_args.append(inner.vector_selector.name or "")
            if node.func.name == "histogram_quantile":
                inner = node.args[1]
                while isinstance(inner, pp.ParenExpr):
                    inner = inner.expr
                if isinstance(inner, pp.AggregateExpr) and inner.modifier is not None:
                    found.quantile_groupings.append(set(inner.modifier.labels))
                else:
                    found.quantile_groupings.append(None)
        return True

    pp.walk(expr, visit)
    return found


def kept_labels(expr: Any, series: dict[str, Series]) -> set[str] | None:
    """The labels the result of `expr` carries (None for a scalar), as far as a reader of
    a legend or an alert annotation can rely on them."""
    if isinstance(expr, pp.NumberLiteral | pp.StringLiteral):
        return None
    if isinstance(expr, pp.ParenExpr | pp.UnaryExpr):
        return kept_labels(expr.expr, series)
    if isinstance(expr, pp.VectorSelector):
        known = series.get(expr.name or "")
        return (set(known.labels) if known else set()) | TARGET_LABELS
    if isinstance(expr, pp.MatrixSelector):
        return kept_labels(expr.vector_selector, series)
    if isinstance(expr, pp.SubqueryExpr):
        return kept_labels(expr.expr, series)
    if isinstance(expr, pp.AggregateExpr):
        inner = kept_labels(expr.expr, series) or set()
        if expr.modifier is None:
            return set()
        if str(expr.modifier.type).endswith("By"):
            return set(expr.modifier.labels)
        return inner - set(expr.modifier.labels)
    if isinstance(expr, pp.Call):
        name = expr.func.name
        if name in {"scalar", "time", "vector"}:
            return None if name != "vector" else set()
        if name == "histogram_quantile":
            buckets = kept_labels(expr.args[1], series)
            return None if buckets is None else buckets - {"le"}
        if name in {"label_replace", "label_join"}:
            source = kept_labels(expr.args[0], series) or set()
            return source | {expr.args[1].val}
        kept = [kept_labels(a, series) for a in expr.args if isinstance(a, pp.Expr)]
        vectors = [v for v in kept if v is not None]
        return vectors[0] if vectors else None
    if isinstance(expr, pp.BinaryExpr):
        lhs = kept_labels(expr.lhs, series)
        rhs = kept_labels(expr.rhs, series)
        if lhs is None:
            return rhs
        if rhs is None:
            return lhs
        matching = expr.modifier.matching if expr.modifier is not None else None
        if matching is not None and str(matching.type).endswith("Include"):
            return set(matching.labels) if str(expr.op) not in {"and", "unless"} else lhs
        return lhs
    raise AssertionError(f"unexpected PromQL node {type(expr).__name__}: {expr}")


def check_query(expr_text: str, series: dict[str, Series], where: str) -> list[str]:
    """Every problem with one PromQL expression against the exported series."""
    problems: list[str] = []
    try:
        expr = parse(expr_text)
    except Exception as exc:  # the parser's errors are plain exceptions
        return [f"{where}: does not parse: {exc}\n{expr_text}"]
    found = facts(expr)
    used_labels: set[str] = set()
    for metric in found.metrics:
        if metric not in series:
            problems.append(f"{where}: metric {metric!r} is not exported")
        else:
            used_labels |= series[metric].labels
    for metric, label in found.matcher_labels:
        known = series.get(metric)
        if known and label not in known.labels | TARGET_LABELS:
            problems.append(f"{where}: {metric} has no label {label!r}")
    for op, labels in found.grouping:
        unknown = labels - used_labels - TARGET_LABELS
        if unknown:
            problems.append(f"{where}: {op} groups by unknown labels {sorted(unknown)}")
    for metric in found.rate_args:
        known = series.get(metric)
        if known and known.kind not in {"counter", "histogram", "summary"}:
            problems.append(f"{where}: rate/increase over {metric}, a {known.kind}")
    for grouping in found.quantile_groupings:
        if grouping is None or "le" not in grouping:
            problems.append(f"{where}: histogram_quantile over an aggregation without `le`")
    return problems


TEMPLATE_LABEL = re.compile(r"\{\{\s*\$labels\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
