"""`jailbreak detection model` / `jailbreak detection heuristics`: NeMo's jailbreak rails,
as calls to the services NeMo sends them to.

Settings are NeMo's, under `rails.config.jailbreak_detection`:

- the model: `nim_base_url` + `nim_server_endpoint` (default `classify`) is the NemoGuard
  JailbreakDetect NIM: POST `{"input": text}`, answered `{"jailbreak": bool, "score": float}`,
  with `Authorization: Bearer <api_key, else $api_key_env_var>`. Without a NIM,
  `server_endpoint` is NeMo's jailbreak detection server's `/model` URL: POST
  `{"prompt": text}`, same answer. Deprecated `nim_url`/`nim_port` still name a NIM.
- the heuristics: `server_endpoint` is that server's `/heuristics` URL: POST `{"prompt",
  "lp_threshold", "ps_ppl_threshold"}` from `length_per_perplexity_threshold` (89.79) and
  `prefix_suffix_perplexity_threshold` (1845.65); it answers `{"jailbreak": bool, ...}`.

Where NeMo differs: without a service it runs the classifier or the perplexity model
(GPT-2) in-process; railguard runs no models, so that is a start-up error. And an answer
without a boolean `jailbreak` raises, so the rail's `on_error` policy decides (NeMo allows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from rails.base import Action, CheckContext, Stage, Verdict
from rails.config import ConfigError, RailsConfig
from upstream import Upstream, UpstreamBadResponse

SECTION = "rails.config.jailbreak_detection"
_HEURISTIC_THRESHOLDS = (
    # (our setting, the server's field, NeMo's default)
    ("length_per_perplexity_threshold", "lp_threshold", 89.79),
    ("prefix_suffix_perplexity_threshold", "ps_ppl_threshold", 1845.65),
)


@dataclass(frozen=True, slots=True)
class Service:
    """Where a check is POSTed, and the body around the checked text."""

    upstream: Upstream
    path: str  # appended to upstream.base_url: "" or "/..."
    text_field: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def body(self, text: str) -> dict[str, Any]:
        return {self.text_field: text, **self.extra}


class JailbreakCheck:
    """One POST per check; blocks when the service answers `"jailbreak": true`."""

    uses_model = True
    rewrites = False

    def __init__(self, name: str, stage: Stage, task: str, service: Service) -> None:
        self.name = name
        self.stage = stage
        self._task = task  # the task name of the call in `log.llm_calls`
        self._service = service
        # NeMo's action (no parameters); it returns whether the text is a jailbreak
        self.action_name = task
        self.action_params: Mapping[str, Any] = {}

    async def check(self, text: str, ctx: CheckContext) -> Verdict:
        if ctx.caller is None:
            raise RuntimeError(f"{self.name} needs a model caller")
        service = self._service
        answer = await ctx.caller.post_json(
            self._task, service.upstream, service.path, service.body(text)
        )
        jailbreak = answer.get("jailbreak")
        if not isinstance(jailbreak, bool):
            raise UpstreamBadResponse(
                f"Upstream {service.upstream.name} answered without a boolean 'jailbreak'"
            )
        details = describe(answer)
        if not jailbreak:
            return Verdict(Action.ALLOW, reason=details or None, value=False)
        reason = f"jailbreak ({details})" if details else "jailbreak"
        return Verdict(Action.BLOCK, reason=reason, value=True)


def describe(answer: Mapping[str, Any]) -> str:
    """What a service said beyond yes or no: the classifier's score, the heuristics that fired."""
    parts = []
    score = answer.get("score")
    if isinstance(score, int | float) and not isinstance(score, bool):
        parts.append(f"score {score:g}")
    parts += [key for key, value in answer.items() if key != "jailbreak" and value is True]
    return ", ".join(parts)


class _Settings:
    """`rails.config.jailbreak_detection`, read with errors naming the file and key."""

    def __init__(self, config: RailsConfig) -> None:
        self._file = config.file_for("rails")
        self._name = f"{config.id or 'config'}:jailbreak_detection"
        raw = config.rail_settings.get("jailbreak_detection")
        if raw is not None and not isinstance(raw, Mapping):
            raise ConfigError("must be a mapping", file=self._file, key=SECTION)
        self._raw: Mapping[str, Any] = raw or {}

    def error(self, message: str, key: str) -> ConfigError:
        return ConfigError(message, file=self._file, key=f"{SECTION}.{key}")

    def string(self, key: str) -> str | None:
        """A stripped string, or None when unset or empty (NeMo reads "" as unset)."""
        value = self._raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(f"must be a string, not {type(value).__name__}", key)
        return value.strip() or None

    def url(self, key: str) -> str | None:
        url = self.string(key)
        return None if url is None else self.checked_url(url, key)

    def checked_url(self, url: str, key: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.error(f"must be an http(s) URL, got {url!r}", key)
        if parts.query or parts.fragment:
            raise self.error("must not have a query or fragment", key)
        if parts.username is not None or parts.password is not None:
            raise self.error("must not contain credentials", key)
        return url

    def nim_base_url(self) -> str | None:
        """`nim_base_url`, else the deprecated `nim_url` + `nim_port` as NeMo migrates them."""
        url = self.url("nim_base_url")
        host = self.string("nim_url")
        if url is not None or host is None:
            return url
        port = self._raw.get("nim_port") or 8000
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise self.error("must be a port number", "nim_port")
        return self.checked_url(f"http://{host}:{port}/v1", "nim_url")

    def threshold(self, key: str, default: float) -> float:
        value = self._raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise self.error("must be a number > 0", key)
        return float(value)

    def upstream(self, url: str, *, with_key: bool = False) -> Upstream:
        """The service at `url`, built once at load. Only a NIM gets `api_key` or
        `api_key_env_var`, as in NeMo: NeMo's own server takes no key."""
        headers = [("Accept", "application/json")]
        api_key = self.string("api_key") if with_key else None
        api_key_env = self.string("api_key_env_var") if with_key else None
        if api_key is not None and ("\r" in api_key or "\n" in api_key):
            raise self.error("must not contain line breaks", "api_key")
        if api_key is not None:  # a key in the config wins over the env var, as in NeMo
            headers.append(("Authorization", f"Bearer {api_key}"))
            api_key_env = None
        return Upstream(self._name, url, api_key_env=api_key_env, headers=tuple(headers))


def build_model(
    config: RailsConfig, name: str, stage: Stage, params: Mapping[str, str]
) -> JailbreakCheck:
    settings = _Settings(config)
    nim = settings.nim_base_url()
    if nim is not None:
        path = settings.string("nim_server_endpoint") or "classify"
        service = Service(settings.upstream(nim, with_key=True), "/" + path.lstrip("/"), "input")
    else:
        endpoint = settings.url("server_endpoint")
        if endpoint is None:
            raise settings.error(
                f"'{name}' needs nim_base_url (a NemoGuard JailbreakDetect NIM) or "
                "server_endpoint (the /model URL of NeMo's jailbreak detection server); "
                "railguard runs no classifier itself",
                "nim_base_url",
            )
        service = Service(settings.upstream(endpoint), "", "prompt")
    return JailbreakCheck(name, stage, "jailbreak_detection_model", service)


def build_heuristics(
    config: RailsConfig, name: str, stage: Stage, params: Mapping[str, str]
) -> JailbreakCheck:
    settings = _Settings(config)
    thresholds = {
        server_field: settings.threshold(key, default)
        for key, server_field, default in _HEURISTIC_THRESHOLDS
    }
    endpoint = settings.url("server_endpoint")
    if endpoint is None:
        raise settings.error(
            f"'{name}' needs server_endpoint (the /heuristics URL of NeMo's jailbreak "
            "detection server); railguard runs no perplexity model itself",
            "server_endpoint",
        )
    service = Service(settings.upstream(endpoint), "", "prompt", thresholds)
    return JailbreakCheck(name, stage, "jailbreak_detection_heuristics", service)


FLOWS = {
    "jailbreak detection model": (Stage.INPUT, build_model),
    "jailbreak detection heuristics": (Stage.INPUT, build_heuristics),
}
