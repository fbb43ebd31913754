"""`guardrails.state`: the conversation carried by the client instead of a server store.

The envelope's `state` is `{"version": 1, "payload": ..., "signature": ...}`: the payload
is the config id and the messages so far (as the model saw them), as base64url JSON, so
the client has no reason to look inside and no JSON re-encoding on its side can change
what is signed. With RAILGUARD_STATE_SECRET set, the signature is an HMAC-SHA256 of the
payload, and a state without a matching one is refused: a client can't slip a message
into the history that a rail blocked, nor an answer the model never gave. Without a
secret the state is unsigned and taken as it is, which gives the client no more power
than sending the whole conversation in `messages`.

`state: {}` starts a conversation; every other unusable state is a 422 that says why.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any

import orjson

from proxy.errors import ApiError, invalid
from proxy.request import messages_problem, too_deep

VERSION = 1
_DOMAIN = b"railguard-state-v1\n"  # what the MAC covers besides the payload


def _unusable(why: str) -> ApiError:
    return invalid(f"The `state` can't be used: {why}", param="state", code="invalid_state")


class StateCodec:
    def __init__(self, secret: bytes | None, max_messages: int = 1000) -> None:
        self.secret = secret or None
        self.max_messages = max_messages

    def _sign(self, payload: bytes) -> str:
        assert self.secret is not None
        return hmac.new(self.secret, _DOMAIN + payload, hashlib.sha256).hexdigest()

    def encode(self, config_id: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        kept = messages[-self.max_messages :] if self.max_messages else []
        payload = base64.urlsafe_b64encode(orjson.dumps({"config_id": config_id, "messages": kept}))
        return {
            "version": VERSION,
            "payload": payload.decode("ascii"),
            "signature": self._sign(payload) if self.secret else None,
        }

    def decode(self, state: dict[str, Any], config_id: str) -> list[dict[str, Any]]:
        """The messages of a state this server issued for this config; `{}` is a new one."""
        if not state:
            return []
        version = state.get("version")
        if version != VERSION:
            if version is None or "payload" not in state:
                raise _unusable(
                    "it is not a state railguard issued (send back the `state` object of an "
                    "earlier answer unchanged, or `{}` to start)."
                )
            raise _unusable(f"version {version!r} is not supported; this server reads {VERSION}.")
        payload = state.get("payload")
        if not isinstance(payload, str):
            raise _unusable("its `payload` is not a string.")
        raw = payload.encode("ascii", "replace")
        if self.secret is not None:
            signature = state.get("signature")
            if not isinstance(signature, str):
                raise _unusable(
                    "it is not signed, and this server only accepts states it signed "
                    "(RAILGUARD_STATE_SECRET is set)."
                )
            # bytes: compare_digest refuses str with non-ASCII characters
            if not hmac.compare_digest(signature.encode(), self._sign(raw).encode()):
                raise _unusable(
                    "its signature does not match: it was changed, or signed with another secret."
                )
        try:
            data = orjson.loads(base64.urlsafe_b64decode(raw))
        except (binascii.Error, ValueError):
            raise _unusable("its payload is not valid base64 JSON.") from None
        messages = data.get("messages") if isinstance(data, dict) else None
        if not isinstance(messages, list):
            raise _unusable("its payload holds no list of messages.")
        if too_deep(data):  # its messages go into the request, which is written again
            raise _unusable("its payload is nested too deeply.")
        problem = messages_problem(messages)
        if problem is not None:  # an unsigned state's history is the client's to write
            raise _unusable(f"its payload holds a message railguard can't send: {problem}")
        bound = data.get("config_id")
        if bound != config_id:
            raise invalid(
                f"The `state` belongs to a conversation with config '{bound}', and this "
                f"request uses config '{config_id}'. Continue it with config '{bound}', or "
                "start a new one with `state: {}`.",
                param="state",
                code="state_config_mismatch",
            )
        return messages
