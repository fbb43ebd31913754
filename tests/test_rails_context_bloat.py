"""`context bloat detection on input`: each threshold through the HTTP API, the three
actions, the settings' errors, exactness against plain implementations, and speed on
inputs built to be slow."""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rails.base import Action, CheckContext, Stage
from rails.config import ConfigError, RailsConfig
from rails.guardrails import Guardrails
from rails.library.context_bloat import (
    ContextBloat,
    build,
    find_run,
    repetition_ratio,
    shannon_entropy,
    smallest_over,
)
from tests.conftest import StartRailguard, write_configs
from tests.fake_upstream import FakeUpstream

REFUSAL = "I'm sorry, I can't respond to that."
FLOW = "context bloat detection on input"
LOG = {"log": {"activated_rails": True}}
_PROSE_WORDS = (
    "the a of to and in that is for it with as was on be at by this had not are but from "
    "or have an they which one you were her all she there would their we him been has "
    "when who will more no if out so said what up its about into than them can only "
    "other new some could time these two may then do first any my now such like our over "
    "man me even most made after also did many before must through back years where much "
    "your way well down should because each just those people how too little state good "
    "very make world still own see men work long get here between both life being under "
    "never day same another know while last might us great old year off come since "
    "against go came right used take three garden river budget library morning engine "
    "window letter market station harbor"
)
WORDS = _PROSE_WORDS.split()


def prose(chars: int, seed: int = 0) -> str:
    """Ordinary-looking sentences of random common words, exactly `chars` long."""
    rng = random.Random(seed)
    sentences = []
    while sum(map(len, sentences)) < chars:
        words = rng.sample(WORDS, rng.randint(6, 14))
        sentences.append(" ".join(words).capitalize() + ". ")
    return "".join(sentences)[:chars]


def config(**settings: Any) -> dict[str, Any]:
    rails: dict[str, Any] = {"input": {"flows": [FLOW]}}
    if settings:
        rails["config"] = {"context_bloat_detection": settings}
    return {"rails": rails}


def rail(**settings: Any) -> ContextBloat:
    return build(RailsConfig.parse_object(config(**settings)), FLOW, Stage.INPUT, {})


CTX = CheckContext(user_text="", bot_text=None, messages=[], context={}, model="m1")


async def chat(
    http: aiohttp.ClientSession, base: str, text: str, **guardrails: Any
) -> dict[str, Any]:
    body = {
        "model": "m1",
        "messages": [{"role": "user", "content": text}],
        "guardrails": {"config_id": "c", **guardrails},
    }
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        data: dict[str, Any] = await response.json()
        return data


def answer(data: dict[str, Any]) -> str:
    return str(data["choices"][0]["message"]["content"])


def reason(data: dict[str, Any]) -> str:
    (entry,) = data["guardrails"]["log"]["activated_rails"]
    return str((entry["additional_info"] or {}).get("reason", ""))


RUN_BASE = prose(89)  # 89 characters with no run longer than 2
THRESHOLDS = [
    # (settings, a text just within, a text just past, the reason the second one gets)
    (
        {"max_chars": 100},
        prose(100),
        prose(101),
        "size_cap_exceeded: 101 chars > max_chars 100",
    ),
    (  # shape checks start at min_chars: a 2-bit text passes below it, blocks at it
        {"min_chars": 60},
        "ab" * 29 + "a",
        "ab" * 30,
        "low_entropy: 1.000 bits/char < min_entropy 3.5",
    ),
    (
        {"max_run_ratio": 0.1},
        RUN_BASE + "." + "x" * 10,  # a run of 10 in 100 characters: 0.1, not over
        RUN_BASE + "x" * 11,
        "long_run: 11 x 'x' is 0.110 of the text > max_run_ratio 0.1",
    ),
]


@pytest.mark.parametrize(("settings", "within", "past", "why"), THRESHOLDS)
async def test_each_threshold_passes_at_its_limit_and_blocks_past_it(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    settings: dict[str, Any],
    within: str,
    past: str,
    why: str,
) -> None:
    base = await start_railguard({"c": config(**settings)})
    assert answer(await chat(http, base, within)) == f"echo: {within}"
    data = await chat(http, base, past, options=LOG)
    assert answer(data) == REFUSAL
    assert reason(data) == why
    assert len(fake_upstream.main_calls) == 1


@pytest.mark.parametrize(
    ("setting", "text", "value"),
    [
        ("min_entropy", "abcd" * 20, 2.0),  # four letters, equally often: exactly 2 bits
        ("max_repetition_ratio", "one two three " * 10, 25 / 28),  # 25 of 28 trigrams repeat
    ],
)
async def test_a_measure_equal_to_its_threshold_passes_and_one_past_it_blocks(
    start_railguard: StartRailguard,
    http: aiohttp.ClientSession,
    setting: str,
    text: str,
    value: float,
) -> None:
    past = value + 0.001 if setting == "min_entropy" else value - 0.001
    others = {} if setting == "min_entropy" else {"min_entropy": 0.0}  # text of three words
    base = await start_railguard(
        {"at": config(**{setting: value}, **others), "past": config(**{setting: past}, **others)}
    )
    assert answer(await chat(http, base, text, config_id="at")) == f"echo: {text}"
    data = await chat(http, base, text, config_id="past", options=LOG)
    assert answer(data) == REFUSAL
    expected = (
        f"low_entropy: 2.000 bits/char < min_entropy {past}"
        if setting == "min_entropy"
        else f"high_repetition: 0.893 of 3-grams repeated > max_repetition_ratio {past}"
    )
    assert reason(data) == expected


async def test_ngram_size_sets_what_counts_as_repeated() -> None:
    text = "red green blue " * 4 + "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    # 22 words, 13 distinct: 9 of 22 repeat; of the 20 trigrams, 13 are distinct: 7 repeat
    assert repetition_ratio(text, 1) == 9 / 22
    assert repetition_ratio(text, 3) == 7 / 20
    words = await rail(ngram_size=1, max_repetition_ratio=0.38).check(text, CTX)
    trigrams = await rail(ngram_size=3, max_repetition_ratio=0.38).check(text, CTX)
    assert words.action is Action.BLOCK and trigrams.action is Action.ALLOW
    assert words.reason == "high_repetition: 0.409 of 1-grams repeated > max_repetition_ratio 0.38"


async def test_defaults_are_nemos(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard({"c": config()})
    ordinary = prose(4000, seed=1)
    assert answer(await chat(http, base, ordinary)) == f"echo: {ordinary}"
    for text, why in [
        (prose(5001, seed=2), "size_cap_exceeded: 5001 chars > max_chars 5000"),
        ("ha " * 40, "low_entropy: 1.585 bits/char < min_entropy 3.5"),
        (
            prose(199) + "." + " " * 40,
            "long_run: 40 x ' ' is 0.167 of the text > max_run_ratio 0.1",
        ),
        ("x" * 49, None),  # under min_chars: only the size cap applies
    ]:
        data = await chat(http, base, text, options=LOG)
        if why is None:
            assert answer(data) == f"echo: {text}"
        else:
            assert (answer(data), reason(data)) == (REFUSAL, why)


async def test_truncate_cuts_an_oversized_turn_and_blocks_the_other_checks(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard({"c": config(max_chars=100, action="truncate")})
    long = prose(300, seed=3)
    assert answer(await chat(http, base, long)) == f"echo: {long[:100]}"
    assert fake_upstream.main_calls[-1].body["messages"][-1]["content"] == long[:100]
    data = await chat(http, base, "ab" * 100, options=LOG)  # cut to 100, still 1 bit/char
    assert (answer(data), reason(data)) == (
        REFUSAL,
        "low_entropy: 1.000 bits/char < min_entropy 3.5",
    )
    assert len(fake_upstream.main_calls) == 1


async def test_warn_lets_everything_through_and_logs_every_check_crossed(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = await start_railguard({"c": config(max_chars=100, action="warn")})
    padding = "please " * 30
    data = await chat(http, base, padding, options=LOG)
    assert answer(data) == f"echo: {padding}"
    assert reason(data) == (
        "warn: size_cap_exceeded: 210 chars > max_chars 100; "
        "low_entropy: 2.522 bits/char < min_entropy 3.5; "
        "high_repetition: 0.964 of 3-grams repeated > max_repetition_ratio 0.4"
    )
    assert "context bloat detection on input (action: warn): size_cap_exceeded" in caplog.text


async def test_a_bloated_turn_on_a_stream_gets_the_refusal(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard({"c": config(max_chars=10)})
    body = {
        "model": "m1",
        "stream": True,
        "messages": [{"role": "user", "content": "x" * 11}],
        "guardrails": {"config_id": "c"},
    }
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        raw = await response.text()
    assert REFUSAL in raw and raw.endswith("data: [DONE]\n\n")
    assert fake_upstream.main_calls == []


async def test_every_user_message_of_the_turn_counts(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard({"c": config(max_chars=100)})
    messages = [{"role": "user", "content": prose(60, seed=s)} for s in (4, 5)]
    body = {"model": "m1", "messages": messages, "guardrails": {"config_id": "c"}}
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        assert answer(await response.json()) == REFUSAL  # 60 + 1 + 60 characters


BROKEN = [
    ({"max_chars": 0}, "max_chars", "must be a whole number >= 1, not 0"),
    ({"max_chars": "5k"}, "max_chars", "must be a whole number, not '5k'"),
    ({"min_chars": True}, "min_chars", "must be a whole number, not True"),
    ({"min_entropy": 8.5}, "min_entropy", "must be a number from 0 to 8, not 8.5"),
    ({"max_run_ratio": 1.5}, "max_run_ratio", "must be a number from 0 to 1, not 1.5"),
    ({"max_repetition_ratio": -0.1}, "max_repetition_ratio", "from 0 to 1, not -0.1"),
    ({"ngram_size": 2.5}, "ngram_size", "must be a whole number, not 2.5"),
    ({"action": "drop"}, "action", "must be one of reject, truncate, warn, not 'drop'"),
    ({"max_messages": 5}, "max_messages", "unknown setting (known: action, max_chars"),
]


@pytest.mark.parametrize(("settings", "key", "message"), BROKEN)
def test_a_bad_setting_is_a_start_up_error_naming_file_and_key(
    tmp_path: Path, settings: dict[str, Any], key: str, message: str
) -> None:
    root = write_configs(tmp_path / "configs", {"c": config(**settings)})
    with pytest.raises(ConfigError) as caught:
        Guardrails(RailsConfig.from_path(root / "c"))
    assert caught.value.file == str(root / "c" / "config.yml")
    assert caught.value.key == f"rails.config.context_bloat_detection.{key}"
    assert message in caught.value.reason


def test_settings_that_are_not_a_mapping_and_the_output_stage_are_errors() -> None:
    raw = {"rails": {"input": {"flows": [FLOW]}, "config": {"context_bloat_detection": [1]}}}
    with pytest.raises(ConfigError, match=r"rails\.config\.context_bloat_detection: must be a"):
        Guardrails(RailsConfig.parse_object(raw))
    output = {"rails": {"output": {"flows": [FLOW]}}}
    with pytest.raises(ConfigError, match="unknown output rail flow 'context bloat detection"):
        Guardrails(RailsConfig.parse_object(output))


# --- the measures, against plain implementations ----------------------------------------


def plain_entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


def plain_longest_run(text: str) -> int:
    longest = run = 0
    for index, char in enumerate(text):
        run = run + 1 if index and text[index - 1] == char else 1
        longest = max(longest, run)
    return longest


@given(st.text(alphabet=st.sampled_from("ab cé€😀\x00"), max_size=300))
def test_entropy_and_runs_match_a_plain_count(text: str) -> None:
    if text:
        assert math.isclose(shannon_entropy(text), plain_entropy(text), abs_tol=1e-9)
    longest = plain_longest_run(text)
    for length in range(1, longest + 3):
        run = find_run(text, length)
        assert (run is not None) == (longest >= length)
        if run is not None:
            assert run[0] * run[1] in text and run[1] >= length


def test_long_texts_are_measured_on_nemos_sample() -> None:
    """Over 10,000 characters: the first, middle and last 2,666 of them."""
    text = "ab" * 2000 + prose(8000) + "cd" * 2000
    middle = len(text) // 2
    sample = text[:2666] + text[middle - 1333 : middle + 1333] + text[-2666:]
    assert shannon_entropy(text) == pytest.approx(plain_entropy(sample))
    assert shannon_entropy(text) != pytest.approx(plain_entropy(text))


@pytest.mark.parametrize(("ratio", "total"), [(0.1, 50), (0.3, 10), (0.57, 100), (0.0, 7)])
def test_smallest_over_is_exact(ratio: float, total: int) -> None:
    count = smallest_over(ratio, total)
    assert count / total > ratio and not (count - 1) / total > ratio


# --- no input can make it slow ---------------------------------------------------------


def adversarial_inputs() -> dict[str, str]:
    rng = random.Random(7)
    size = 100_000
    return {
        # runs just short of max_run_ratio 0.001 (100 chars), next to each other
        "near-runs": "".join(chr(97 + i % 26) * 99 for i in range(size // 99)),
        "distinct characters": "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(size)),
        "distinct words": " ".join(f"w{i}" for i in range(size // 7)),
        "one character": "a" * size,
        "short alternating runs": ("ab" * 3 + "cd" * 2) * (size // 10),
    }


@pytest.mark.parametrize("name", list(adversarial_inputs()))
async def test_100_kb_built_to_be_slow_is_measured_quickly(name: str) -> None:
    check = rail(max_chars=200_000, action="warn", max_run_ratio=0.001, min_entropy=0.5)
    text = adversarial_inputs()[name]
    started = time.perf_counter()
    verdict = await check.check(text, CTX)
    assert time.perf_counter() - started < 0.5  # a sanity bound; a few ms measured
    assert verdict.action is Action.ALLOW  # warn
    crossed = (verdict.reason or "").removeprefix("warn: ")
    assert ("long_run" in crossed) == (name in ("one character",))
