"""Which request headers carry credentials, and how text that may echo them is cleaned.

Upstreams sometimes quote what they received in an error ("Incorrect API key provided:
sk-..."), and that text goes back to the client and into logs. Everything railguard
relays from an upstream's error passes through `redact` first, with the values of the
credential headers that request carried.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# Headers whose whole value is a credential: sent only to the upstream serving the
# request's model, never to a check model on another server.
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "x-auth-token",
        "cookie",
    }
)
# A header not named above but whose name says it holds a secret (x-tenant-token, ...).
_SECRET_NAME = re.compile(r"key|token|secret|passw|auth|cookie|session", re.IGNORECASE)
# Credential-looking tokens in any text, whether railguard sent them or not.
_TOKEN_PATTERNS = (
    re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE),
    re.compile(r"\b(?:sk|rk)-[A-Za-z0-9_-]{8,}"),  # OpenAI-style keys
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),  # a JWT
)
REDACTED = "[redacted]"
_MIN_SECRET = 8  # shorter values would redact ordinary words from messages


def is_credential(name: str) -> bool:
    lower = name.lower()
    return lower in CREDENTIAL_HEADERS or _SECRET_NAME.search(lower) is not None


def credential_values(headers: Mapping[str, str]) -> list[str]:
    """The secret strings of a request's credential headers: each whole value, the token
    after an auth scheme, and each cookie's value; longest first so none is half-replaced."""
    values: set[str] = set()
    for name, value in headers.items():
        if not is_credential(name):
            continue
        values.add(value.strip())
        scheme, _, token = value.strip().partition(" ")
        if token and scheme.isalpha():
            values.add(token.strip())
        if "cookie" in name.lower():
            for part in value.split(";"):
                values.add(part.partition("=")[2].strip())
    return sorted((v for v in values if len(v) >= _MIN_SECRET), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every given secret, and anything shaped like a key or token, replaced."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _TOKEN_PATTERNS[0].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    for pattern in _TOKEN_PATTERNS[1:]:
        text = pattern.sub(REDACTED, text)
    return text
