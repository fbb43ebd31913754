"""`railguard serve` as a real process: broken config folders stop it with the file and
key named (exit code 2); a sound one serves, under a prefix, and with several workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import SELF_CHECK_PROMPTS, write_configs
from tests.fake_upstream import FakeUpstream

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 20
# Variables the CLI reads: the tests say what they want explicitly.
CLI_ENV = (
    "RAILGUARD_UPSTREAM_URL",
    "MAIN_MODEL_BASE_URL",
    "MAIN_MODEL_ENGINE",
    "DEFAULT_CONFIG_ID",
    "RAILGUARD_LOG_LEVEL",
    "NEMO_GUARDRAILS_SERVER_ENABLE_CORS",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLI_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def serve_cmd(root: Path, port: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "proxy.cli",
        "serve",
        "--config",
        str(root),
        "--port",
        str(port),
        *args,
    ]


def run_broken(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `serve` on a config that must not start; it must exit 2 without serving."""
    result = subprocess.run(
        serve_cmd(root, free_port(), *args),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO,
        env=cli_env(**env),
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "railguard: cannot start:" in result.stderr
    assert "Traceback" not in result.stderr
    return result


GOOD: dict[str, Any] = {"models": []}


# --- broken config folders -----------------------------------------------------------


def test_unknown_flow_name(tmp_path: Path) -> None:
    root = write_configs(
        tmp_path / "configs",
        {
            "good": GOOD,
            "bad": {"rails": {"input": {"flows": ["regex check input", "jailbreak detection"]}}},
        },
    )
    # the first flow needs patterns; give them so the second flow is the problem
    bad = yaml.safe_load((root / "bad" / "config.yml").read_text())
    bad["rails"]["config"] = {"regex_detection": {"input": {"patterns": ["x"]}}}
    (root / "bad" / "config.yml").write_text(yaml.safe_dump(bad))
    stderr = run_broken(root).stderr
    assert str(root / "bad" / "config.yml") in stderr
    assert "rails.input.flows[1]" in stderr
    assert "unknown input rail flow 'jailbreak detection'" in stderr
    implemented = stderr.split("railguard implements: ", 1)[1].split("\n", 1)[0].split(", ")
    assert {"regex check input", "self check input"} <= set(implemented)
    assert "regex check output" not in implemented  # only flows of the stage named


def test_output_flow_listed_as_input(tmp_path: Path) -> None:
    root = write_configs(
        tmp_path / "configs", {"bad": {"rails": {"input": {"flows": ["self check output"]}}}}
    )
    stderr = run_broken(root).stderr
    assert f"{root / 'bad' / 'config.yml'}: rails.input.flows[0]: " in stderr
    assert "unknown input rail flow 'self check output'" in stderr


def test_safety_flow_naming_a_model_type_the_config_lacks(tmp_path: Path) -> None:
    flow = "content safety check input $model=content_safety"
    root = write_configs(
        tmp_path / "configs", {"good": GOOD, "bad": {"rails": {"input": {"flows": [flow]}}}}
    )
    stderr = run_broken(root).stderr
    assert f"{root / 'bad' / 'config.yml'}: rails.input.flows[0]: " in stderr
    assert (
        f"'{flow}' needs a model of type 'content_safety' in `models` (types there: none)" in stderr
    )


def test_yaml_syntax_error(tmp_path: Path) -> None:
    root = write_configs(tmp_path / "configs", {"good": GOOD})
    bad = root / "bad"
    bad.mkdir()
    (bad / "config.yml").write_text("models: []\nrails:\n  input:\n    flows: [unclosed\n")
    stderr = run_broken(root).stderr
    assert str(bad / "config.yml") in stderr
    assert "invalid YAML at line" in stderr


def test_regex_that_does_not_compile(tmp_path: Path) -> None:
    root = write_configs(
        tmp_path / "configs",
        {
            "bad": {
                "rails": {
                    "input": {"flows": ["regex check input"]},
                    "config": {"regex_detection": {"input": {"patterns": ["ok", "(unclosed"]}}},
                }
            }
        },
    )
    stderr = run_broken(root).stderr
    assert str(root / "bad" / "config.yml") in stderr
    assert "rails.config.regex_detection.input.patterns[1]" in stderr
    assert "invalid regular expression" in stderr


def test_rail_policy_that_is_not_block_or_allow(tmp_path: Path) -> None:
    root = write_configs(
        tmp_path / "configs",
        {
            "bad": {
                "rails": {"input": {"flows": ["self check input"]}},
                "prompts": SELF_CHECK_PROMPTS,
                "railguard": {"rails": {"self check input": {"on_error": "ignore"}}},
            }
        },
    )
    stderr = run_broken(root).stderr
    assert str(root / "bad" / "config.yml") in stderr
    assert "railguard.rails.self check input.on_error" in stderr


def test_default_config_id_naming_a_missing_config(tmp_path: Path) -> None:
    root = write_configs(tmp_path / "configs", {"alpha": GOOD, "beta": GOOD})
    stderr = run_broken(root, "--default-config-id", "gamma").stderr
    assert "default config id 'gamma' is not one of: alpha, beta" in stderr
    # the environment variable is checked the same way
    stderr = run_broken(root, DEFAULT_CONFIG_ID="delta").stderr
    assert "default config id 'delta'" in stderr


def test_missing_config_folder(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    stderr = run_broken(missing).stderr
    assert str(missing) in stderr
    assert "not a folder" in stderr


def test_folder_without_configs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    stderr = run_broken(empty).stderr
    assert "no guardrails configurations found" in stderr
    assert str(empty) in stderr


def test_non_openai_engine_in_env(tmp_path: Path) -> None:
    root = write_configs(tmp_path / "configs", {"good": GOOD})
    stderr = run_broken(root, MAIN_MODEL_ENGINE="huggingface_pipeline").stderr
    assert "MAIN_MODEL_ENGINE='huggingface_pipeline'" in stderr
    assert "vllm_openai" in stderr


def test_broken_upstreams_file(tmp_path: Path) -> None:
    root = write_configs(tmp_path / "configs", {"good": GOOD})
    table = tmp_path / "upstreams.yml"
    table.write_text(yaml.safe_dump({"upstreams": [{"name": "x", "models": ["m"]}]}))
    stderr = run_broken(root, "--upstreams", str(table)).stderr
    assert f"{table}: upstreams[0].base_url: is required" in stderr


# --- a server that starts ------------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Servers started by a test; their whole process groups are killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # workers too, even if the parent is gone
        proc.wait(timeout=TIMEOUT)


def start_server(
    processes: list[subprocess.Popen[bytes]], tmp_path: Path, root: Path, port: int, *args: str
) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"server-{port}.log").open("wb")
    proc = subprocess.Popen(
        serve_cmd(root, port, *args),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=cli_env(),
        start_new_session=True,
    )
    log.close()
    processes.append(proc)
    return proc


def read_log(log: Path) -> str:
    return log.read_text(errors="replace")


async def wait_healthy(
    http: aiohttp.ClientSession, proc: subprocess.Popen[bytes], url: str, log: Path
) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode}: {read_log(log)}"
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                if resp.status == 200:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} not healthy within 10 s: {read_log(log)}")


def stop(proc: subprocess.Popen[bytes]) -> int:
    os.killpg(proc.pid, signal.SIGTERM)
    return proc.wait(timeout=TIMEOUT)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def group_gone(pgid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


async def test_serve_starts_and_proxies(
    processes: list[subprocess.Popen[bytes]],
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    root = write_configs(
        tmp_path / "configs",
        {
            "regex": {
                "instructions": [
                    {"type": "general", "content": "Be nice."}
                ],  # not run: warned once
                "rails": {
                    "input": {"flows": ["regex check input"]},
                    "config": {"regex_detection": {"input": {"patterns": [r"\bsecret\b"]}}},
                },
            }
        },
    )
    port = free_port()
    proc = start_server(processes, tmp_path, root, port, "--upstream", fake_upstream.url)
    base = f"http://127.0.0.1:{port}"
    await wait_healthy(http, proc, f"{base}/health", tmp_path / f"server-{port}.log")

    body = {"model": "m1", "messages": [{"role": "user", "content": "hello there"}]}
    async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        data = await resp.json()
    assert data["choices"][0]["message"]["content"] == "echo: hello there"
    assert data["guardrails"]["config_id"] == "regex"  # the only config is the default
    assert [c.body["model"] for c in fake_upstream.main_calls] == ["m1"]

    body["messages"] = [{"role": "user", "content": "tell me the secret"}]
    async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
        data = await resp.json()
    assert data["choices"][0]["message"]["content"] == "I'm sorry, I can't respond to that."
    assert len(fake_upstream.main_calls) == 1

    assert stop(proc) == 0
    log = read_log(tmp_path / f"server-{port}.log")
    assert f"railguard serving on http://127.0.0.1:{port}" in log
    warnings = [line for line in log.splitlines() if "ignoring what railguard does not run" in line]
    assert len(warnings) == 1 and "instructions" in warnings[0]


async def test_serve_says_once_per_config_when_streams_are_held_whole(
    processes: list[subprocess.Popen[bytes]], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    output_rails = {
        "rails": {
            "output": {"flows": ["regex check output"]},
            "config": {"regex_detection": {"output": {"patterns": ["x"]}}},
        }
    }
    windowed = {
        "rails": {
            **output_rails["rails"],
            "output": {"flows": ["regex check output"], "streaming": {"enabled": True}},
        }
    }
    root = write_configs(
        tmp_path / "configs", {"held": output_rails, "windowed": windowed, "alpha": GOOD}
    )
    port = free_port()
    proc = start_server(processes, tmp_path, root, port)
    log_path = tmp_path / f"server-{port}.log"
    await wait_healthy(http, proc, f"http://127.0.0.1:{port}/health", log_path)
    assert stop(proc) == 0
    notes = [line for line in read_log(log_path).splitlines() if "held whole" in line]
    assert len(notes) == 1 and "'held'" in notes[0]


async def test_serve_under_a_prefix(
    processes: list[subprocess.Popen[bytes]], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    root = write_configs(tmp_path / "configs", {"alpha": GOOD, "beta": GOOD})
    port = free_port()
    proc = start_server(processes, tmp_path, root, port, "--prefix", "/guard")
    base = f"http://127.0.0.1:{port}"
    await wait_healthy(http, proc, f"{base}/guard/health", tmp_path / f"server-{port}.log")
    async with http.get(f"{base}/guard/v1/rails/configs") as resp:
        assert resp.status == 200
        assert await resp.json() == [{"id": "alpha"}, {"id": "beta"}]
    for path in ("/v1/rails/configs", "/health"):
        async with http.get(f"{base}{path}") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "not_found"
    assert stop(proc) == 0


async def test_serve_with_two_workers(
    processes: list[subprocess.Popen[bytes]], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    root = write_configs(tmp_path / "configs", {"alpha": GOOD})
    port = free_port()
    proc = start_server(processes, tmp_path, root, port, "--workers", "2")
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / f"server-{port}.log"
    await wait_healthy(http, proc, f"{base}/health", log)
    # several fresh connections, so both workers get a chance to answer
    for _ in range(6):
        async with aiohttp.ClientSession() as fresh, fresh.get(f"{base}/health") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}
    children = _children(proc.pid)
    assert len(children) == 2, children
    assert stop(proc) == 0
    assert group_gone(proc.pid, within=5), "a worker outlived the server"


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        pytest.skip("needs /proc to count the workers")
    return [int(child) for child in text.split()]
