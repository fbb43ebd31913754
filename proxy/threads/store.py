"""What a thread store is: load a thread, append a turn to it. Two stores implement it
(`memory`, `redis`); the proxy only ever talks to this interface.

A store keeps each message as its JSON bytes. The bytes are what Redis holds anyway, and
in memory they make a stored message impossible to change by accident through a dict
that a later request still holds, and let the memory store count what it keeps in bytes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

Reason = Literal["timeout", "unavailable", "error"]

RECENT_TURNS = 32  # turn ids a thread remembers, to store a turn delivered twice once


@dataclass(frozen=True, slots=True)
class ThreadLimits:
    """How long a thread lives after its last turn, and how many messages it keeps."""

    ttl: float = 7 * 24 * 3600.0
    max_messages: int = 1000


@dataclass(frozen=True, slots=True)
class ThreadRecord:
    """A stored thread: the config it is bound to, its messages (oldest first) and the id
    of its last turn: the position the next turn is based on ("" before the first)."""

    config_id: str
    messages: list[dict[str, Any]]
    last_turn: str = ""


class StoreUnavailable(Exception):
    """The store did not answer in time or at all. The message is for logs: it never holds
    message text or credentials."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class ThreadBoundElsewhere(Exception):
    """The thread was created with another config."""

    def __init__(self, config_id: str) -> None:
        super().__init__(config_id)
        self.config_id = config_id


class ThreadStore(ABC):
    """Per-thread message lists with a TTL refreshed on every append and a message cap."""

    kind: str  # a metric label: memory | redis

    def __init__(self, limits: ThreadLimits) -> None:
        self.limits = limits

    @abstractmethod
    async def load(self, thread_id: str) -> ThreadRecord | None:
        """The thread, or None when it never existed or has expired."""

    @abstractmethod
    async def append(
        self, thread_id: str, config_id: str, messages: list[bytes], turn_id: str = ""
    ) -> None:
        """Add one turn's messages (JSON bytes) atomically: two appends to one thread at
        the same time both land, neither overwrites the other. Creates the thread bound to
        `config_id`; raises ThreadBoundElsewhere if it is bound to another config. Refreshes
        the TTL and drops the oldest messages past the cap.

        A turn with a `turn_id` the thread holds among its last RECENT_TURNS is already
        stored: the append does nothing, so a turn delivered twice is stored once."""

    async def check(self) -> None:  # noqa: B027 - a store that can't fail needs no check
        """Raise StoreUnavailable if the store can't be reached now (used at start-up)."""

    async def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections."""

    def describe(self) -> str:
        """What to print at start-up: never a password."""
        return self.kind
