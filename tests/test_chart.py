"""charts/railguard, checked without a `helm` binary (no registry here ships one): nothing
below renders the chart. It checks what can be checked as written: Chart.yaml and
values.yaml, values.schema.json against values.yaml and the documented examples
(check-jsonschema), every template's actions balanced and referencing existing values,
the plain-YAML parts of the manifests against Kubernetes' schemas (kubernetes-validate),
and the configs and flags the chart hands railguard against railguard itself.
`helm lint` and `helm template` are the README's advice where Helm is installed."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.app import client_policy
from proxy.cli import _parser, settings_from_args
from rails.config import load_config_root
from rails.policy import ClientPolicy
from tests.packaging_helpers import (
    ALERTS,
    BIN,
    CHART,
    DASHBOARD,
    REPO,
    cli_flags,
    flag_name,
    load_yaml,
)
from upstream.routing import load_upstreams_file

TEMPLATES = CHART / "templates"
MANIFESTS = sorted(p for p in TEMPLATES.glob("*.yaml"))
EXAMPLES = sorted((CHART / "examples").glob("values-*.yaml"))
SCHEMA = CHART / "values.schema.json"
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")  # Chart.yaml's kubeVersion floor, and the newest
ACTION = re.compile(r"\{\{-?(.*?)-?\}\}", re.S)
BLOCK_OPEN = re.compile(r"^\s*(if|with|range|define|block)\b")


def values() -> dict[str, Any]:
    return load_yaml(CHART / "values.yaml")


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of an override file into the defaults: maps merge key by key, a null
    deletes the default, anything else replaces it."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def check_jsonschema(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--schemafile", str(SCHEMA), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- Chart.yaml and values ------------------------------------------------------------


def test_chart_yaml() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == CHART.name
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    assert chart["kubeVersion"].startswith(">=1.25")


def test_schema_is_valid_json_schema() -> None:
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--check-metaschema", str(SCHEMA)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_values_and_examples_pass_the_schema(tmp_path: Path) -> None:
    assert EXAMPLES, "documented example values"
    # As written (what check-jsonschema sees), and merged into the defaults (what Helm checks).
    merged_files = []
    for example in EXAMPLES:
        target = tmp_path / f"merged-{example.name}"
        target.write_text(yaml.safe_dump(merged(values(), load_yaml(example))))
        merged_files.append(target)
    result = check_jsonschema(CHART / "values.yaml", *EXAMPLES, *merged_files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_rejects_mistakes(tmp_path: Path) -> None:
    """The schema has teeth: a typo, a wrong type or a bad config id fails."""
    for bad in (
        {"replicaCount": "two"},
        {"serviceMonitor": {"enabeld": True}},
        {"configs": {"inline": {"bad/id": {"config.yml": "x"}}}},
        {"threadStore": {"url": "http://redis:6379"}},
        {"server": {"extraArgs": ["no-dashes"]}},
    ):
        target = tmp_path / "bad.yaml"
        target.write_text(yaml.safe_dump(bad))
        assert check_jsonschema(target).returncode != 0, bad


def test_every_value_key_is_described_by_the_schema() -> None:
    schema = json.loads(SCHEMA.read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        if not isinstance(value, dict) or "properties" not in node:
            return
        for key, child in value.items():
            assert key in node["properties"], f"{path}.{key} is not in values.schema.json"
            walk(child, node["properties"][key], f"{path}.{key}")

    walk(values(), schema, "values")


# --- templates, as text ---------------------------------------------------------------


def actions(text: str) -> list[str]:
    return [m.group(1).strip() for m in ACTION.finditer(text)]


@pytest.mark.parametrize("path", sorted(TEMPLATES.iterdir()), ids=lambda p: p.name)
def test_template_actions_are_balanced(path: Path) -> None:
    text = path.read_text()
    # Every {{ is closed before the next one opens.
    depth = 0
    for token in re.findall(r"\{\{|\}\}", text):
        depth += 1 if token == "{{" else -1
        assert depth in (0, 1), f"{path.name}: nested or unopened action"
    assert depth == 0, f"{path.name}: unclosed action"
    # Every if/with/range/define has its end.
    stack: list[str] = []
    for action in actions(text):
        if action.startswith("/*"):
            continue
        opened = BLOCK_OPEN.match(action)
        if opened:
            stack.append(opened.group(1))
        elif action == "end":
            assert stack, f"{path.name}: an end without a block"
            stack.pop()
    assert stack == [], f"{path.name}: unclosed {stack}"


def value_paths(data: Any, prefix: str = "") -> set[str]:
    out = {prefix} if prefix else set()
    if isinstance(data, dict):
        for key, child in data.items():
            out |= value_paths(child, f"{prefix}.{key}")
    return out


@pytest.mark.parametrize("path", sorted(TEMPLATES.iterdir()), ids=lambda p: p.name)
def test_templates_only_reference_existing_values(path: Path) -> None:
    known = value_paths(values())
    text = path.read_text()
    for action in actions(text):
        for ref in re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", action):
            assert ref in known, f"{path.name}: .Values{ref} is not in values.yaml"


@pytest.mark.parametrize("path", sorted(TEMPLATES.iterdir()), ids=lambda p: p.name)
def test_templates_include_defined_helpers_and_existing_files(path: Path) -> None:
    helpers = set(re.findall(r'define "([^"]+)"', (TEMPLATES / "_helpers.tpl").read_text()))
    for action in actions(path.read_text()):
        for name in re.findall(r'include "([^"]+)"', action):
            assert name in helpers, f"{path.name}: include {name!r} is not defined"
        for file in re.findall(r'\.Files\.Get "([^"]+)"', action):
            assert (CHART / file).is_file(), f"{path.name}: {file} is not in the chart"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_values_inside_with_and_range_use_the_root_context(path: Path) -> None:
    """Inside `with`/`range` the dot is rebound: .Values there is a bug, $.Values is not."""
    stack: list[str] = []
    for action in actions(path.read_text()):
        opened = BLOCK_OPEN.match(action)
        rebinding = any(kind in {"with", "range"} for kind in stack)
        if rebinding and re.search(r"(?<![$\w])\.Values\b", action):
            raise AssertionError(f"{path.name}: {action!r} inside {stack}")
        if opened:
            stack.append(opened.group(1))
        elif action == "end":
            stack.pop()


# --- the plain-YAML parts, against Kubernetes' schemas ----------------------------------


def skeleton(text: str) -> list[dict[str, Any]]:
    """The manifest's plain YAML: lines that are only template actions go, block inserts
    (toYaml, nindent) leave their key empty and the key goes, and each inline action
    becomes a placeholder of its written type: quoted -> a string, bare -> an integer."""
    lines = []
    for line in text.splitlines():
        if not line.strip() or ACTION.sub("", line).strip() == "":
            continue
        if re.search(r"\{\{[^}]*(toYaml|nindent|indent)[^}]*\}\}", line):
            line = re.sub(r"\{\{[^}]*\}\}", "", line)

        def placeholder(match: re.Match[str], line: str = line) -> str:
            inside_quotes = line[: match.start()].count('"') % 2 == 1
            if inside_quotes:
                return "x"
            return '"x"' if re.search(r"\|\s*quote\s*-?\}\}$", match.group(0)) else "1"

        lines.append(ACTION.sub(placeholder, line))
    docs = [d for d in yaml.safe_load_all("\n".join(lines)) if d]

    def prune(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: prune(v) for k, v in node.items() if v is not None}
        if isinstance(node, list):
            return [prune(v) for v in node]
        return node

    return [prune(d) for d in docs]


CORE_KINDS = {
    "Deployment",
    "Service",
    "ConfigMap",
    "Secret",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
}
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


def test_every_manifest_has_a_skeleton() -> None:
    kinds = {doc["kind"] for path in MANIFESTS for doc in skeleton(path.read_text())}
    assert kinds == CORE_KINDS | OPERATOR_KINDS


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_plain_yaml_is_valid_kubernetes(path: Path, version: str) -> None:
    for doc in skeleton(path.read_text()):
        if doc["kind"] in OPERATOR_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            # Their specs are the chart's values and files (checked above), not plain YAML.
            assert {"apiVersion", "kind", "metadata"} <= set(doc)
            assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_validation_has_teeth() -> None:
    text = (TEMPLATES / "deployment.yaml").read_text().replace("containerPort:", "containerPrt:")
    (deployment,) = skeleton(text)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_deployment_has_probes_resources_and_a_locked_down_container() -> None:
    (deployment,) = skeleton((TEMPLATES / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    text = (TEMPLATES / "deployment.yaml").read_text()
    assert "toYaml .Values.resources" in text and "toYaml .Values.securityContext" in text
    security = values()["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["capabilities"]["drop"] == ["ALL"]
    # The image's user: the Dockerfile's numeric USER.
    assert f"USER {security['runAsUser']}:" in (REPO / "Dockerfile").read_text()


async def test_probe_paths_answer_on_railguard(start_railguard: Any, http: Any) -> None:
    base = await start_railguard()
    for path in ("/health", "/ready", "/metrics"):
        async with http.get(base + path) as response:
            assert response.status == 200, path


def test_deployment_args_are_real_flags() -> None:
    text = (TEMPLATES / "deployment.yaml").read_text()
    args = re.findall(r'^\s*- "(--[a-z0-9-]+)=', text, re.M)
    assert "--host" in args and "--config" in args
    assert set(args) <= cli_flags("serve"), set(args) - cli_flags("serve")
    # The thread store reaches railguard as the variable its --thread-store flag reads.
    assert "RAILGUARD_THREAD_STORE" in (REPO / "proxy" / "cli.py").read_text()
    assert "name: RAILGUARD_THREAD_STORE" in text
    for example in EXAMPLES:
        for arg in merged(values(), load_yaml(example))["server"]["extraArgs"]:
            assert flag_name(arg) in cli_flags("serve"), f"{example.name}: {arg}"


def test_production_example_enforces_rails() -> None:
    production = merged(values(), load_yaml(CHART / "examples" / "values-production.yaml"))
    args = production["server"]["extraArgs"]
    assert "--client-rail-selection=none" in args
    assert "--input-rails-scope=client_messages" in args
    settings = settings_from_args(_parser().parse_args(["serve", *args]))
    assert client_policy(settings) == ClientPolicy()  # nothing in the client's hands


def test_alert_rules_and_dashboard_ship_with_the_chart() -> None:
    rule = (TEMPLATES / "prometheusrule.yaml").read_text()
    assert '.Files.Get "files/railguard-alerts.yml"' in rule
    assert set(load_yaml(ALERTS)) == {"groups"}  # a PrometheusRule spec as it is
    assert (
        '.Files.Get "files/railguard-dashboard.json"'
        in (TEMPLATES / "grafana-dashboard.yaml").read_text()
    )
    assert DASHBOARD.stat().st_size < 900_000  # a ConfigMap holds at most 1 MiB


# --- what the chart hands railguard -------------------------------------------------------


def write_configs(root: Path, chart_values: dict[str, Any]) -> Path:
    """The /config folder the chart's projected volume builds from configs.inline."""
    for config_id, files in chart_values["configs"]["inline"].items():
        for name, content in files.items():
            (root / config_id).mkdir(parents=True, exist_ok=True)
            (root / config_id / name).write_text(content)
    if chart_values["configs"]["challenges"]:
        (root / "challenges.json").write_text(chart_values["configs"]["challenges"])
    return root


@pytest.mark.parametrize("source", [CHART / "values.yaml", *EXAMPLES], ids=lambda p: p.name)
def test_inline_configs_load_in_railguard(source: Path, tmp_path: Path) -> None:
    chart_values = merged(values(), load_yaml(source))
    if not chart_values["configs"]["inline"]:
        assert chart_values["configs"]["existing"], source.name
        return
    root = load_config_root(write_configs(tmp_path / "config", chart_values))
    assert set(root.configs) == set(chart_values["configs"]["inline"])
    default = chart_values["server"]["defaultConfigId"]
    assert (
        not default
        or default in root.configs
        or any(e["configId"] == default for e in chart_values["configs"]["existing"])
    )


def test_upstream_routes_load_in_railguard(tmp_path: Path) -> None:
    tables = [merged(values(), load_yaml(p))["upstream"]["routes"] for p in EXAMPLES]
    tables = [routes for routes in tables if routes]
    assert tables, "an example shows the upstreams table"
    for routes in tables:
        table = tmp_path / "upstreams.yaml"
        table.write_text(yaml.safe_dump({"upstreams": routes}))
        assert len(load_upstreams_file(table)) == len(routes)


def test_sidecar_example_manifest_is_valid_and_uses_real_flags() -> None:
    path = CHART / "examples" / "sidecar-deployment.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    for version in KUBERNETES_VERSIONS:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    railguard = containers["railguard"]
    assert railguard["args"][0] == "serve"
    assert {flag_name(a) for a in railguard["args"][1:]} <= cli_flags("serve")
    upstream = next(a for a in railguard["args"] if a.startswith("--upstream="))
    model_port = containers["vllm"]["ports"][0]["containerPort"]
    assert upstream == f"--upstream=http://127.0.0.1:{model_port}/v1"
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["ports"][0]["targetPort"] == railguard["ports"][0]["name"]


def test_sidecar_values_put_the_model_on_localhost() -> None:
    sidecar = merged(values(), load_yaml(CHART / "examples" / "values-sidecar.yaml"))
    (model,) = sidecar["extraContainers"]
    port = model["ports"][0]["containerPort"]
    assert sidecar["upstream"]["url"] == f"http://127.0.0.1:{port}/v1"
    assert port != sidecar["server"]["port"], "one network namespace: the ports must differ"
    mounts = {m["name"] for m in model.get("volumeMounts", [])}
    assert mounts <= {v["name"] for v in sidecar["extraVolumes"]}
