"""Property: over any split of an answer into deltas, what the client gets is a prefix of
what the upstream sent, and with hold-back a blocked phrase never reaches it."""

from __future__ import annotations

import itertools

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import StartRailguard
from tests.fake_upstream import FakeUpstream
from tests.stream_helpers import (
    BAD,
    delivered_text,
    parsed,
    post_stream,
    stream_config,
    upstream_events,
)

WORDS = st.sampled_from(["alpha ", "beta ", "bad ", "phrase ", "gamma ", BAD + " ", "b", "ad"])


@st.composite
def splits(draw: st.DrawFn) -> list[str]:
    """An answer of random words, cut into deltas at random places (empty deltas included)."""
    text = "".join(draw(st.lists(WORDS, min_size=1, max_size=40)))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=60)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


# The phrase is 10 characters, so it spans at most 10 tokens: windows overlapping by 9 or
# more always see it whole, wherever the deltas are cut.
CONFIGS = {
    f"w{chunk}-{context}-{mode}": stream_config(chunk, context, stream_first=mode == "first")
    for chunk, context in ((10, 9), (12, 9), (30, 12))
    for mode in ("first", "hold")
}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(deltas=splits(), config_id=st.sampled_from(sorted(CONFIGS)))
async def test_delivered_text_is_a_prefix_and_hold_back_never_leaks(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    deltas: list[str],
    config_id: str,
) -> None:
    base = await _server(start_railguard)
    fake_upstream.next(chunks=upstream_events(deltas))
    status, _, raw = await post_stream(http, base, config_id)
    assert status == 200
    text = "".join(deltas)
    got = delivered_text(raw)
    assert text.startswith(got)
    events = parsed(raw)
    assert events[-1] == "[DONE]"
    blocked = "error" in events[-2]
    assert blocked == (BAD in text)
    if not blocked:
        assert got == text
    if config_id.endswith("hold"):
        assert BAD not in got


_servers: dict[int, str] = {}


async def _server(start_railguard: StartRailguard) -> str:
    """One railguard per test run: hypothesis calls the test body many times."""
    key = id(start_railguard)
    if key not in _servers:
        _servers[key] = await start_railguard(CONFIGS)
    return _servers[key]
