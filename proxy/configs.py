"""The loaded config folder: compiled guardrails by id, and `config_ids` combinations.

Everything is compiled before the server accepts a request; combinations are compiled
on first use and kept in a bounded cache. An id is only ever a key of this table.
Each config's client policy is the server's default with the config's own settings over
it; a combination gets the strictest of its parts', whatever its merged YAML says.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from proxy.errors import invalid
from rails.config import ConfigError, ConfigRoot, combine
from rails.guardrails import Guardrails
from rails.policy import ClientPolicy


class ConfigStore:
    def __init__(
        self,
        root: ConfigRoot,
        default_id: str | None = None,
        cache_size: int = 64,
        policy: ClientPolicy | None = None,
    ) -> None:
        self.root = root
        policy = policy or ClientPolicy()
        self.compiled = {
            cid: Guardrails(config, policy.for_config(config))
            for cid, config in root.configs.items()
        }
        if default_id is not None and default_id not in self.compiled:
            raise ConfigError(
                f"default config id '{default_id}' is not one of: {', '.join(self.compiled)}"
            )
        if default_id is None and len(self.compiled) == 1:
            default_id = next(iter(self.compiled))
        self.default_id = default_id
        self._combined: OrderedDict[tuple[str, ...], Guardrails] = OrderedDict()
        self._cache_size = cache_size

    @property
    def ids(self) -> list[str]:
        return sorted(self.compiled)

    def _get(self, config_id: str) -> Guardrails:
        found = self.compiled.get(config_id)
        if found is None:
            raise invalid(
                f"Unknown guardrails configuration '{config_id}'. "
                f"Available: {', '.join(self.ids)}.",
                param="config_id",
                code="config_not_found",
            )
        return found

    def resolve(self, config_id: str | None, config_ids: Sequence[str] | None) -> Guardrails:
        if config_ids:
            if len(config_ids) == 1:
                return self._get(config_ids[0])
            return self._combine(tuple(config_ids))
        if config_id is not None:
            return self._get(config_id)
        if self.default_id is None:
            raise invalid(
                "No guardrails configuration given: set `guardrails.config_id` or start the "
                "server with --default-config-id.",
                param="config_id",
                code="config_required",
            )
        return self.compiled[self.default_id]

    def _combine(self, ids: tuple[str, ...]) -> Guardrails:
        cached = self._combined.get(ids)
        if cached is not None:
            self._combined.move_to_end(ids)
            return cached
        parts = [self._get(cid) for cid in ids]
        policy = ClientPolicy.strictest(p.policy for p in parts)
        try:
            guardrails = Guardrails(combine([p.config for p in parts]), policy)
        except ConfigError as exc:
            raise invalid(str(exc), param="config_ids", code="config_conflict") from exc
        self._combined[ids] = guardrails
        if len(self._combined) > self._cache_size:
            self._combined.popitem(last=False)
        return guardrails
