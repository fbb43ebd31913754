"""compose.yaml, checked without Docker (no engine runs on these machines): every service's
image or build, ports, volumes, dependencies and commands, and the Prometheus and Grafana
files it mounts."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.packaging_helpers import (
    ALERTS,
    DASHBOARD,
    REPO,
    cli_flags,
    flag_name,
    load_yaml,
)

COMPOSE_FILE = REPO / "compose.yaml"
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """What compose makes of `${VAR:-default}` when VAR is not set."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    assert isinstance(cmd, list), "write commands as lists: no shell quoting to get wrong"
    return [str(part) for part in cmd]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def binds(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of every volume in short syntax."""
    out = []
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), volume
        parts = volume.split(":")
        mode = parts[2] if len(parts) > 2 else "rw"
        out.append((parts[0], parts[1], mode))
    return out


def mounted(service_name: str, target: str) -> Path:
    """The repo file that a service sees at `target`."""
    for source, mount, _ in binds(services()[service_name]):
        if mount == target:
            return (REPO / source).resolve()
        if target.startswith(mount.rstrip("/") + "/"):
            return (REPO / source / target[len(mount.rstrip("/")) + 1 :]).resolve()
    raise AssertionError(f"{service_name} mounts nothing at {target}")


def test_compose_file_shape() -> None:
    data = compose()
    assert set(data) <= {"name", "services", "volumes", "networks", "configs", "secrets"}
    assert {"railguard", "redis", "prometheus", "grafana"} <= set(data["services"])
    upstreams = [name for name in data["services"] if "upstream" in name]
    assert upstreams == ["demo-upstream"]


@pytest.mark.parametrize("name", sorted(services()))
def test_service_has_image_or_build(name: str) -> None:
    service = services()[name]
    assert "image" in service or "build" in service, name
    if "build" in service:
        build = service["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (REPO / context / "Dockerfile").is_file(), name
    else:
        # Pinned images: a tag that names a version, never latest.
        image = service["image"]
        assert re.fullmatch(r"[a-z0-9./_-]+:[A-Za-z0-9._-]+", image), image
        assert not image.endswith(":latest"), image


def test_published_ports_do_not_clash() -> None:
    seen: dict[int, str] = {}
    for name, service in services().items():
        for port in service.get("ports", []):
            assert isinstance(port, str), (
                f"{name}: quote ports ({port!r}): YAML reads 1:2 as base 60"
            )
            parts = port.split(":")
            assert len(parts) == 2, f"{name}: HOST:CONTAINER, got {port}"
            host = int(parts[0])
            assert host not in seen, f"{name} and {seen.get(host)} both publish {host}"
            seen[host] = name
    assert seen == {8000: "railguard", 9090: "prometheus", 3000: "grafana"}


def test_railguard_listens_where_it_is_published() -> None:
    railguard = services()["railguard"]
    args = dict(a.split("=", 1) for a in command(railguard) if "=" in a)
    assert args["--host"] == "0.0.0.0"
    assert railguard["ports"] == [f"{args['--port']}:{args['--port']}"]


@pytest.mark.parametrize("name", sorted(services()))
def test_mounted_files_exist(name: str) -> None:
    for source, target, mode in binds(services()[name]):
        if source.startswith((".", "/")):
            assert (REPO / source).exists(), f"{name}: {source} is not in the repo"
            assert mode == "ro", f"{name}: mount {source} read-only"
        else:
            assert source in (compose().get("volumes") or {}), f"{name}: volume {source}"
        assert PurePosixPath(target).is_absolute(), target


@pytest.mark.parametrize("name", sorted(services()))
def test_depends_on_names_exist(name: str) -> None:
    all_services = services()
    depends = all_services[name].get("depends_on", [])
    items = depends.items() if isinstance(depends, dict) else [(d, {}) for d in depends]
    for dependency, spec in items:
        assert dependency in all_services, f"{name} depends on unknown {dependency}"
        assert dependency != name
        condition = spec.get("condition", "service_started")
        assert condition in {
            "service_started",
            "service_healthy",
            "service_completed_successfully",
        }
        if condition == "service_healthy":
            check = all_services[dependency].get("healthcheck", {})
            assert check.get("test") and not check.get("disable"), dependency


def test_railguard_command_uses_real_flags() -> None:
    cmd = command(services()["railguard"])
    assert cmd[0] == "serve"
    flags = cli_flags("serve")
    for arg in cmd[1:]:
        assert flag_name(arg) in flags, f"{arg}: not a flag of `railguard serve`"


def test_the_documented_upstream_switch_is_a_real_flag() -> None:
    """The one commented line that puts a local Ollama or vLLM behind railguard."""
    lines = [
        line.strip()
        for line in COMPOSE_FILE.read_text().splitlines()
        if re.match(r"\s*#\s*- --upstream=", line)
    ]
    assert len(lines) == 1, lines
    arg = lines[0].lstrip("#").strip().removeprefix("- ").split()[0]
    assert flag_name(arg) in cli_flags("serve")
    assert urlsplit(arg.split("=", 1)[1]).hostname == "host.docker.internal"
    assert "host.docker.internal:host-gateway" in services()["railguard"]["extra_hosts"]


def test_demo_upstream_is_the_default_upstream() -> None:
    all_services = services()
    demo = all_services["demo-upstream"]
    cmd = command(demo)
    assert cmd[0] == "demo-upstream"
    flags = cli_flags("demo-upstream")
    assert all(flag_name(arg) in flags for arg in cmd[1:])
    port = dict(a.split("=", 1) for a in cmd[1:])["--port"]
    # The image's HEALTHCHECK asks railguard's port, which the demo doesn't serve.
    assert demo["healthcheck"] == {"disable": True}
    url = urlsplit(environment(all_services["railguard"])["RAILGUARD_UPSTREAM_URL"])
    assert (url.hostname, str(url.port), url.path) == ("demo-upstream", port, "/v1")


def test_thread_store_points_at_the_redis_service() -> None:
    railguard = services()["railguard"]
    urls = [a.split("=", 1)[1] for a in command(railguard) if a.startswith("--thread-store=")]
    urls += [v for k, v in environment(railguard).items() if k == "RAILGUARD_THREAD_STORE"]
    assert urls, "the railguard service gets no thread store"
    for url in urls:
        parts = urlsplit(url)
        assert parts.scheme == "redis" and parts.hostname == "redis"
        assert str(parts.port) in " ".join(services()["redis"].get("expose", []))
    assert services()["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_railguard_gets_the_configs_at_the_documented_path() -> None:
    config = dict(a.split("=", 1) for a in command(services()["railguard"]) if "=" in a)
    assert config["--config"] == "/config"
    assert mounted("railguard", "/config") == (REPO / "examples" / "configs").resolve()
    assert config["--default-config-id"] in {p.name for p in (REPO / "examples/configs").iterdir()}


def test_prometheus_scrapes_railguard_and_loads_the_alert_rules() -> None:
    prom = services()["prometheus"]
    config_arg = next(a for a in command(prom) if a.startswith("--config.file="))
    config_path = mounted("prometheus", config_arg.split("=", 1)[1])
    config = load_yaml(config_path)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for c in jobs["railguard"]["static_configs"] for t in c["targets"]]
    assert targets == ["railguard:8000"]
    assert jobs["railguard"].get("metrics_path", "/metrics") == "/metrics"
    # The rule files glob matches the mounted alert rules, which are the chart's.
    (pattern,) = config["rule_files"]
    rules = [t for _, t, _ in binds(prom) if PurePosixPath(t).match(pattern)]
    assert rules and all(mounted("prometheus", t) == ALERTS.resolve() for t in rules)


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    grafana = services()["grafana"]
    sources = load_yaml(mounted("grafana", "/etc/grafana/provisioning/datasources/prometheus.yml"))
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus" and "prometheus" in grafana["depends_on"]
    assert f"{url.port}:{url.port}" in services()["prometheus"]["ports"]
    providers = load_yaml(mounted("grafana", "/etc/grafana/provisioning/dashboards/railguard.yml"))
    (provider,) = providers["providers"]
    folder = provider["options"]["path"]
    dashboards = [t for _, t, _ in binds(grafana) if t.startswith(folder + "/")]
    assert [mounted("grafana", t) for t in dashboards] == [DASHBOARD.resolve()]
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home in dashboards
    assert json.loads(DASHBOARD.read_text())["uid"] == "railguard"
