"""Sensitive data: the native recognizers (true and false positives per entity), span
resolution and masking, the detect and mask rails' settings, and both rails over HTTP.

Secret-shaped samples are assembled at run time, so this file holds no string a secret
scanner would take for a real key.
"""

from __future__ import annotations

import base64
import logging
import random
import string
import time
from typing import Any

import aiohttp
import orjson
import pytest

from rails.base import CheckContext, Stage
from rails.config import ConfigError, RailsConfig
from rails.guardrails import Guardrails
from rails.recognizers import BUILTIN, Finding, Scanner, iban_valid, luhn_valid, mask, resolve
from tests.conftest import StartRailguard
from tests.fake_upstream import FakeUpstream
from tests.stream_helpers import delivered_text, parsed, post_stream, upstream_events

REFUSAL = "I'm sorry, I can't respond to that."
ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "-_"
PROSE = (
    "In 2023 the committee reviewed the annual budget, which rose by 4.5 percent to 1,234 "
    "million dollars. Researchers at the institute noted that results vary between regions: "
    "some saw growth, others did not. The report (see section 3.2, pages 10-12) recommends "
    "further study before the 12:30 meeting on Friday, and version 2.0.1 of the tool. "
)


def token(length: int, alphabet: str = ALNUM, seed: int = 7) -> str:
    rng = random.Random(seed * 1000 + length)
    return "".join(rng.choice(alphabet) for _ in range(length))


def digits(length: int) -> str:
    return token(length, string.digits)


def b64url(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()


def pem(kind: str, lines: int = 4, end: bool = True, separator: str = "\n") -> str:
    label = f"{kind} PRIVATE" + " KEY"
    body = base64.b64encode(bytes(range(256)) * 2).decode()
    rows = [body[i * 64 : (i + 1) * 64] for i in range(lines)] + ["AAAB"]
    text = separator.join([f"-----BEGIN {label}-----", *rows])
    return text + (f"{separator}-----END {label}-----" if end else "")


JWT = f"{b64url({'alg': 'HS256', 'typ': 'JWT'})}.{b64url({'sub': '42'})}.{token(43, URLSAFE)}"
SLACK_WEBHOOK = f"https://hooks.slack.com/services/T{digits(8)}/B{digits(8)}/{token(24)}"


def found(entity: str, text: str) -> list[str]:
    """The spans one entity's recognizers report in `text`, resolved, as substrings."""
    return [text[f.start : f.end] for f in resolve(Scanner(BUILTIN[entity]).find(text))]


# (entity, text, the one span expected)
FINDS = [
    ("EMAIL_ADDRESS", "write to john.doe@example.com today", "john.doe@example.com"),
    ("EMAIL_ADDRESS", "From: Jane <jane+news@mail.example.co.uk>", "jane+news@mail.example.co.uk"),
    ("EMAIL_ADDRESS", "mailto:ops_team@corp.io.", "ops_team@corp.io"),
    ("PHONE_NUMBER", "call (212) 555-0123 now", "(212) 555-0123"),
    ("PHONE_NUMBER", "call 212-555-0123", "212-555-0123"),
    ("PHONE_NUMBER", "call 212.555.0123", "212.555.0123"),
    ("PHONE_NUMBER", "call +1 212 555 0123", "+1 212 555 0123"),
    ("PHONE_NUMBER", "call 1-800-555-0199", "1-800-555-0199"),
    ("PHONE_NUMBER", "call +12125550123", "+12125550123"),
    ("PHONE_NUMBER", "ring +44 20 7946 0958", "+44 20 7946 0958"),
    ("PHONE_NUMBER", "ring +44 20 7946 0958 2024", "+44 20 7946 0958"),  # a year after it
    ("PHONE_NUMBER", "ring +49 30 12345678", "+49 30 12345678"),
    ("PHONE_NUMBER", "ring +33 1 23 45 67 89", "+33 1 23 45 67 89"),
    ("PHONE_NUMBER", "ring +91 98765 43210", "+91 98765 43210"),
    ("PHONE_NUMBER", "ring 0044 20 7946 0958", "0044 20 7946 0958"),
    ("PHONE_NUMBER", "ring 020 7946 0958", "020 7946 0958"),
    ("PHONE_NUMBER", "ring 07700 900123", "07700 900123"),
    ("PHONE_NUMBER", "ring (030) 1234 5678", "(030) 1234 5678"),
    ("CREDIT_CARD", "card 4111 1111 1111 1111", "4111 1111 1111 1111"),
    ("CREDIT_CARD", "card 4111-1111-1111-1111.", "4111-1111-1111-1111"),
    ("CREDIT_CARD", "card 4111111111111111", "4111111111111111"),
    ("CREDIT_CARD", "mc 5500 0000 0000 0004", "5500 0000 0000 0004"),
    ("CREDIT_CARD", "mc 2223003122003222", "2223003122003222"),
    ("CREDIT_CARD", "amex 378282246310005", "378282246310005"),
    ("CREDIT_CARD", "amex 3782 822463 10005", "3782 822463 10005"),
    ("CREDIT_CARD", "discover 6011 1111 1111 1117", "6011 1111 1111 1117"),
    ("CREDIT_CARD", "card 4111 1111 1111 1111 2030", "4111 1111 1111 1111"),  # expiry after
    ("US_SSN", "ssn 123-45-6789", "123-45-6789"),
    ("US_SSN", "ssn 078 05 1120", "078 05 1120"),
    ("US_SSN", "ssn 219.09.9999", "219.09.9999"),
    ("US_SSN", "ssn 665-99-0001", "665-99-0001"),
    ("IBAN_CODE", "DE89 3704 0044 0532 0130 00 is mine", "DE89 3704 0044 0532 0130 00"),
    ("IBAN_CODE", "to GB82WEST12345698765432.", "GB82WEST12345698765432"),
    ("IBAN_CODE", "to GB82 WEST 1234 5698 7654 32", "GB82 WEST 1234 5698 7654 32"),
    ("IBAN_CODE", "FR14 2004 1010 0505 0001 3M02 606", "FR14 2004 1010 0505 0001 3M02 606"),
    ("IBAN_CODE", "NL91ABNA0417164300", "NL91ABNA0417164300"),
    ("IBAN_CODE", "ES91 2100 0418 4502 0005 1332", "ES91 2100 0418 4502 0005 1332"),
    ("IBAN_CODE", "CH93 0076 2011 6238 5295 7", "CH93 0076 2011 6238 5295 7"),
    ("IBAN_CODE", "NO93 8601 1117 947", "NO93 8601 1117 947"),
    ("IBAN_CODE", "BE68 5390 0754 7034", "BE68 5390 0754 7034"),
    ("IBAN_CODE", "IT60 X054 2811 1010 0000 0123 456", "IT60 X054 2811 1010 0000 0123 456"),
    ("IBAN_CODE", "lower de89370400440532013000 too", "de89370400440532013000"),
    ("IP_ADDRESS", "host 192.168.1.1, ok", "192.168.1.1"),
    ("IP_ADDRESS", "dns 8.8.8.8.", "8.8.8.8"),
    ("IP_ADDRESS", "bind 0.0.0.0", "0.0.0.0"),
    ("IP_ADDRESS", "release 1.2.3.4", "1.2.3.4"),  # a valid quad is an address
    ("IP_ADDRESS", "ip=10.1.2.3,", "10.1.2.3"),
    ("IP_ADDRESS", "v6 2001:db8:85a3::8a2e:370:7334.", "2001:db8:85a3::8a2e:370:7334"),
    (
        "IP_ADDRESS",
        "full 2001:0db8:0000:0000:0000:ff00:0042:8329",
        "2001:0db8:0000:0000:0000:ff00:0042:8329",
    ),
    ("IP_ADDRESS", "link fe80::1 up", "fe80::1"),
    ("IP_ADDRESS", "loopback ::1", "::1"),
    ("IP_ADDRESS", "mapped ::ffff:192.168.1.1", "::ffff:192.168.1.1"),
    ("URL", "see https://example.com/path?q=1&r=2 now", "https://example.com/path?q=1&r=2"),
    ("URL", "(see https://example.com/a).", "https://example.com/a"),
    ("URL", "at http://10.0.0.1:8080/x", "http://10.0.0.1:8080/x"),
    ("URL", "visit www.example.org, then", "www.example.org"),
    ("URL", "get ftp://files.example.com/pub", "ftp://files.example.com/pub"),
    ("URL", "open wss://stream.example.com/socket", "wss://stream.example.com/socket"),
    ("API_KEY", "key sk-" + token(48), "sk-" + token(48)),
    ("API_KEY", "sk-proj-" + token(100, URLSAFE), "sk-proj-" + token(100, URLSAFE)),
    ("API_KEY", "sk-ant-api03-" + token(93, URLSAFE), "sk-ant-api03-" + token(93, URLSAFE)),
    (
        "API_KEY",
        "id AKIA" + token(16, string.ascii_uppercase + string.digits) + " set",
        "AKIA" + token(16, string.ascii_uppercase + string.digits),
    ),
    ("API_KEY", "ghp_" + token(36), "ghp_" + token(36)),
    ("API_KEY", "github_pat_" + token(82, ALNUM + "_"), "github_pat_" + token(82, ALNUM + "_")),
    ("API_KEY", "glpat-" + token(20, URLSAFE), "glpat-" + token(20, URLSAFE)),
    (
        "API_KEY",
        f"xoxb-{digits(12)}-{digits(13)}-{token(24)}",
        f"xoxb-{digits(12)}-{digits(13)}-{token(24)}",
    ),
    ("API_KEY", SLACK_WEBHOOK, SLACK_WEBHOOK),
    ("API_KEY", "sk_live_" + token(24), "sk_live_" + token(24)),
    ("API_KEY", "rk_test_" + token(24), "rk_test_" + token(24)),
    ("API_KEY", "AIza" + token(35, URLSAFE, seed=3) + " x", "AIza" + token(35, URLSAFE, seed=3)),
    ("API_KEY", "hf_" + token(34), "hf_" + token(34)),
    (
        "API_KEY",
        f"SG.{token(22, URLSAFE)}.{token(43, URLSAFE)}",
        f"SG.{token(22, URLSAFE)}.{token(43, URLSAFE)}",
    ),
    ("API_KEY", "npm_" + token(36), "npm_" + token(36)),
    ("API_KEY", "-H 'Authorization: Bearer " + token(40) + "'", token(40)),
    ("API_KEY", "aws_secret_access_key = " + token(40, ALNUM + "/+"), token(40, ALNUM + "/+")),
    ("PRIVATE_KEY", pem("RSA") + "\nthanks", pem("RSA")),
    ("PRIVATE_KEY", pem("OPENSSH"), pem("OPENSSH")),
    ("PRIVATE_KEY", pem("EC"), pem("EC")),
    ("PRIVATE_KEY", "-- " + pem("ENCRYPTED"), pem("ENCRYPTED")),
    ("PRIVATE_KEY", '{"key": "' + pem("", separator="\\n") + '"}', pem("", separator="\\n")),
    # cut short, no END line: its full lines; a short last line can't be told from a word
    ("PRIVATE_KEY", pem("RSA", end=False) + "\nthanks", pem("RSA", end=False)[: -len("AAAB") - 1]),
    ("JWT", f"token {JWT} end", JWT),
    (
        "JWT",
        f"{b64url({'alg': 'none'})}.{b64url({'sub': '1'})}.",
        f"{b64url({'alg': 'none'})}.{b64url({'sub': '1'})}.",
    ),
]

# (entity, text that holds none of it)
MISSES = [
    ("EMAIL_ADDRESS", "user@localhost"),
    ("EMAIL_ADDRESS", "use the @decorator here"),
    ("EMAIL_ADDRESS", "a @ b.com"),
    ("EMAIL_ADDRESS", "name@domain"),
    ("PHONE_NUMBER", "id 2125550123"),  # bare digits: an id as often as a number
    ("PHONE_NUMBER", "call 555-0123"),  # no area code
    ("PHONE_NUMBER", "call 123-456-7890"),  # area codes don't start with 1
    ("PHONE_NUMBER", "call 212-055-0123"),  # nor exchanges with 0
    ("PHONE_NUMBER", "score +1 5"),
    ("PHONE_NUMBER", "on 2024-01-15"),
    ("PHONE_NUMBER", "ISBN 0-306-40615-2"),
    ("PHONE_NUMBER", "dated 01.02.2024"),
    ("PHONE_NUMBER", "in 2023 and 2024"),
    ("PHONE_NUMBER", "iban DE89 3704 0044 0532 0130 01"),
    ("CREDIT_CARD", "card 4111 1111 1111 1112"),  # Luhn fails
    ("CREDIT_CARD", "order 4000123412341235"),  # 16 digits, Luhn fails
    ("CREDIT_CARD", "order 1234567812345670"),  # Luhn passes, no card starts with 1
    ("CREDIT_CARD", "at 1700000000000 ms"),
    ("CREDIT_CARD", "zero 0000 0000 0000 0000"),
    ("CREDIT_CARD", "long 41111111111111111111111"),
    ("CREDIT_CARD", "pi 3.14159265358979323846"),
    ("US_SSN", "000-12-3456"),
    ("US_SSN", "666-12-3456"),
    ("US_SSN", "900-12-3456"),
    ("US_SSN", "123-00-4567"),
    ("US_SSN", "123-45-0000"),
    ("US_SSN", "123456789"),
    ("US_SSN", "123-45-67890"),
    ("US_SSN", "1123-45-6789"),
    ("US_SSN", "123-45-6789-0"),
    ("IBAN_CODE", "DE89 3704 0044 0532 0130 01"),  # checksum fails
    ("IBAN_CODE", "GB82 WEST 1234 5698 7654 33"),
    ("IBAN_CODE", "XX89 3704 0044 0532 0130 00"),  # no such country
    ("IBAN_CODE", "DE89 3704 0044 0532 0130"),  # too short for DE
    ("IBAN_CODE", "DE89 3704 0044 0532 0130 00X"),  # runs on
    ("IP_ADDRESS", "999.1.1.1"),
    ("IP_ADDRESS", "256.1.1.1"),
    ("IP_ADDRESS", "1.2.3.4.5"),
    ("IP_ADDRESS", "v1.2.3.4"),
    ("IP_ADDRESS", "see release-2.4.1.0 notes"),
    ("IP_ADDRESS", "build.1.2.3.4 done"),
    ("IP_ADDRESS", "version 1.2.3"),
    ("IP_ADDRESS", "std::vector<int>"),
    ("IP_ADDRESS", "at 12:30:45"),
    ("IP_ADDRESS", "mac 00:1A:2B:3C:4D:5E"),
    ("IP_ADDRESS", "a::b::c"),
    ("URL", "edit config.yml"),
    ("URL", "example.com"),
    ("URL", "e.g. this"),
    ("URL", "the http:// prefix"),
    ("URL", "node.js"),
    ("API_KEY", "pip install sk-learn"),
    ("API_KEY", "sk-" + "x" * 40),  # placeholders
    ("API_KEY", "sk-proj-" + "X" * 40),
    ("API_KEY", "sk_live_" + "x" * 24),
    ("API_KEY", "ghp_" + "a" * 36),
    ("API_KEY", "a task-" + token(40)),
    ("API_KEY", "ghp_" + token(20)),
    ("API_KEY", "AKIA" + token(15, string.ascii_uppercase)),
    ("API_KEY", "AIza" + token(20)),
    ("API_KEY", "hf_hub_download(repo_id)"),
    ("API_KEY", "xoxo-gossip-girl-forever-and-always"),
    ("API_KEY", "the bearer of bad news"),
    ("API_KEY", "Bearer <token>"),
    (
        "PRIVATE_KEY",
        "-----BEGIN PUBLIC" + " KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOC\n-----END PUBLIC KEY-----",
    ),
    ("PRIVATE_KEY", "-----BEGIN CERTIFICATE-----"),
    ("PRIVATE_KEY", "keep your private key safe"),
    ("JWT", f"{b64url({'typ': 'JWT'})}.{b64url({'sub': '1'})}.{token(20)}"),  # no alg
    ("JWT", f"{b64url({'alg': 'HS256'})}.{b64url({'sub': '1'})}"),  # two parts
    ("JWT", "eyJhbGciOi.notbase64json.sig"),
]


@pytest.mark.parametrize(("entity", "text", "expected"), FINDS)
def test_recognizer_finds(entity: str, text: str, expected: str) -> None:
    assert found(entity, text) == [expected]


def test_a_range_of_addresses_holds_two() -> None:
    assert found("IP_ADDRESS", "allow 10.0.0.1-10.0.0.9 only") == ["10.0.0.1", "10.0.0.9"]


@pytest.mark.parametrize(("entity", "text"), MISSES)
def test_recognizer_lets_lookalikes_pass(entity: str, text: str) -> None:
    assert found(entity, text) == []


def test_every_entity_has_true_and_false_positives() -> None:
    assert {e for e, _, _ in FINDS} == set(BUILTIN) == {e for e, _ in MISSES}


@pytest.mark.parametrize(
    ("number", "valid"),
    [("4111111111111111", True), ("79927398713", True), ("4111111111111112", False), ("0", True)],
)
def test_luhn(number: str, valid: bool) -> None:
    assert luhn_valid(number) is valid


@pytest.mark.parametrize(
    ("iban", "valid"),
    [
        ("DE89370400440532013000", True),
        ("GB82WEST12345698765432", True),
        ("SA0380000000608010167519", True),
        ("MT84MALT011000012345MTLCAST001S", True),
        ("DE89370400440532013001", False),
        ("DE8937040044053201300", False),  # length is the country's
        ("ZZ89370400440532013000", False),
    ],
)
def test_iban_checksum(iban: str, valid: bool) -> None:
    assert iban_valid(iban) is valid


def everything() -> Scanner:
    return Scanner([r for recognizers in BUILTIN.values() for r in recognizers])


def angle(entity: str) -> str:
    return f"<{entity}>"


def test_ordinary_prose_has_nothing_to_mask() -> None:
    assert everything().find(PROSE * 10) == []


def test_a_span_inside_a_longer_one_is_masked_once_by_the_longer() -> None:
    text = "see https://example.com/u/jane@example.com/profile now"
    findings = everything().find(text)
    assert {f.entity for f in findings} == {"URL", "EMAIL_ADDRESS"}
    assert mask(text, findings, angle) == "see <URL> now"


def test_identical_spans_go_to_the_more_specific_entity() -> None:
    findings = everything().find(f"hook: {SLACK_WEBHOOK}")
    assert {f.entity for f in findings} == {"URL", "API_KEY"}
    assert [f.entity for f in resolve(findings)] == ["API_KEY"]


def test_partly_overlapping_spans_merge_so_nothing_shows() -> None:
    findings = [Finding("URL", 0, 10), Finding("EMAIL_ADDRESS", 5, 15), Finding("JWT", 20, 25)]
    assert resolve(findings) == [Finding("URL", 0, 15), Finding("JWT", 20, 25)]
    assert mask("0123456789abcdefghijklmnopq", findings, angle) == "<URL>fghij<JWT>pq"


def test_mask_keeps_the_text_around_each_span() -> None:
    text = f"mail a@b.io or call 212-555-0123; key {pem('RSA')}\nbye"
    assert mask(text, everything().find(text), angle) == (
        "mail <EMAIL_ADDRESS> or call <PHONE_NUMBER>; key <PRIVATE_KEY>\nbye"
    )


# --- the rails, without a socket --------------------------------------------------------


def engine(flows: dict[str, list[str]], **settings: Any) -> Guardrails:
    rails: dict[str, Any] = {stage: {"flows": names} for stage, names in flows.items()}
    rails["config"] = {"sensitive_data_detection": settings}
    return Guardrails(RailsConfig.parse_object({"rails": rails}))


def ctx() -> CheckContext:
    return CheckContext(user_text="", bot_text=None, messages=[], context={}, model="m")


async def test_detect_blocks_naming_the_types_never_the_values() -> None:
    guardrails = engine(
        {"input": ["detect sensitive data on input"]},
        input={"entities": ["EMAIL_ADDRESS", "CREDIT_CARD", "US_SSN"]},
    )
    text = "I am jo@example.com, card 4111 1111 1111 1111"
    result = await guardrails.run_stage(Stage.INPUT, text, ctx())
    assert result.blocked_by == "detect sensitive data on input"
    reason = result.activated[0]["additional_info"]["reason"]
    assert reason == "sensitive data: CREDIT_CARD, EMAIL_ADDRESS"
    clean = await guardrails.run_stage(Stage.INPUT, "123-45-678 and jo at example", ctx())
    assert clean.blocked_by is None


async def test_detect_names_what_masking_would_mask_not_a_value_inside_another() -> None:
    guardrails = engine(
        {"input": ["detect sensitive data on input"]},
        input={"entities": ["IBAN_CODE", "PHONE_NUMBER"]},
    )
    text = "Pay to NL91 ABNA 0417 1643 00 today"  # its last groups read like a phone number
    result = await guardrails.run_stage(Stage.INPUT, text, ctx())
    assert result.activated[0]["additional_info"]["reason"] == "sensitive data: IBAN_CODE"


async def test_only_the_listed_entities_count() -> None:
    guardrails = engine(
        {"output": ["mask sensitive data on output"]}, output={"entities": ["EMAIL_ADDRESS"]}
    )
    text = "jo@example.com, 212-555-0123"
    result = await guardrails.run_stage(Stage.OUTPUT, text, ctx())
    assert result.text == "<EMAIL_ADDRESS>, 212-555-0123"
    assert result.modified
    assert guardrails.output[0].rail.rewrites


@pytest.mark.parametrize(
    ("mask_token", "expected"),
    [("***", "call *** now"), ("[{entity}]", "call [PHONE_NUMBER] now"), ("", "call  now")],
)
async def test_mask_token(mask_token: str, expected: str) -> None:
    guardrails = engine(
        {"input": ["mask sensitive data on input"]},
        input={"entities": ["PHONE_NUMBER"], "mask_token": mask_token},
    )
    result = await guardrails.run_stage(Stage.INPUT, "call 212-555-0123 now", ctx())
    assert result.text == expected


async def test_no_entities_finds_nothing_as_in_nemo_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="railguard.rails"):
        guardrails = engine({"input": ["detect sensitive data on input"]})
    assert "finds nothing" in caplog.text
    assert "rails.config.sensitive_data_detection.input.entities" in caplog.text
    result = await guardrails.run_stage(Stage.INPUT, "jo@example.com 4111111111111111", ctx())
    assert result.blocked_by is None


async def test_custom_recognizers_from_presidio_format() -> None:
    recognizers = [
        {
            "name": "Titles recognizer",
            "supported_language": "en",
            "supported_entity": "TITLE",
            "deny_list": ["Mr.", "Mrs.", "Dr.", "Prof", "Miss"],
        },
        {
            "supported_entity": "EMPLOYEE_ID",
            "patterns": [{"name": "id", "regex": r"\bemp-\d{6}\b", "score": 0.9}],
        },
    ]
    guardrails = engine(
        {"input": ["mask sensitive data on input"]},
        recognizers=recognizers,
        input={"entities": ["TITLE", "EMPLOYEE_ID", "EMAIL_ADDRESS"]},
    )
    text = "mrs. Smith and Prof Jones (EMP-123456), Professor Missy, prof.x@uni.edu"
    result = await guardrails.run_stage(Stage.INPUT, text, ctx())
    assert result.text == (
        "<TITLE> Smith and <TITLE> Jones (<EMPLOYEE_ID>), Professor Missy, <EMAIL_ADDRESS>"
    )


async def test_custom_recognizers_run_only_when_listed() -> None:
    guardrails = engine(
        {"input": ["detect sensitive data on input"]},
        recognizers=[{"supported_entity": "TITLE", "deny_list": ["Dr."]}],
        input={"entities": ["EMAIL_ADDRESS"]},
    )
    assert (await guardrails.run_stage(Stage.INPUT, "Dr. Who", ctx())).blocked_by is None


@pytest.mark.parametrize(
    ("settings", "key", "message"),
    [
        (
            {"input": {"entities": ["EMAIL_ADDRESS", "PERSON"]}},
            ".input.entities[1]",
            "unknown entity 'PERSON'",
        ),
        ({"input": {"entities": "EMAIL_ADDRESS"}}, ".input.entities", "list of strings"),
        ({"input": {"entities": [3]}}, ".input.entities[0]", "non-empty string"),
        ({"input": {"entities": ["URL"], "mask_token": 5}}, ".input.mask_token", "string"),
        (
            {"input": {"entities": ["URL"], "score_threshold": 2}},
            ".input.score_threshold",
            "0 to 1",
        ),
        ({"input": {"entity": ["URL"]}}, ".input.entity", "unknown setting"),
        ({"input": ["URL"]}, ".input", "mapping"),
        ({"inputs": {}}, ".inputs", "unknown setting"),
        ({"recognizers": {"x": 1}}, ".recognizers", "list"),
        ({"recognizers": [{"deny_list": ["a"]}]}, ".recognizers[0]", "supported_entity"),
        (
            {"recognizers": [{"supported_entity": "X"}]},
            ".recognizers[0]",
            "patterns or a deny_list",
        ),
        (
            {"recognizers": [{"supported_entity": "X", "patterns": [{"name": "n"}]}]},
            ".recognizers[0].patterns[0]",
            "needs a regex",
        ),
        (
            {"recognizers": [{"supported_entity": "X", "patterns": [{"regex": "a(?=b)"}]}]},
            ".recognizers[0].patterns[0].regex",
            "RE2 syntax",
        ),
    ],
)
def test_invalid_settings_are_start_up_errors_naming_the_key(
    settings: dict[str, Any], key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        engine({"input": ["mask sensitive data on input"]}, **settings)
    assert caught.value.key == f"rails.config.sensitive_data_detection{key}"
    assert message in caught.value.reason


def test_score_threshold_is_accepted_for_compatibility() -> None:
    guardrails = engine(
        {"output": ["detect sensitive data on output"]},
        output={"entities": ["URL"], "score_threshold": 0.4},
    )
    assert guardrails.output[0].rail.name == "detect sensitive data on output"


# --- over HTTP ----------------------------------------------------------------------------

CARD = "4111 1111 1111 1111"
EMAIL = "jo.smith@example.com"


def http_config(
    input_flows: tuple[str, ...] = (),
    output_flows: tuple[str, ...] = (),
    streaming: dict[str, Any] | None = None,
) -> dict[str, Any]:
    entities = {"entities": ["EMAIL_ADDRESS", "CREDIT_CARD", "API_KEY"]}
    rails: dict[str, Any] = {
        "input": {"flows": list(input_flows)},
        "output": {"flows": list(output_flows)},
        "config": {"sensitive_data_detection": {"input": entities, "output": entities}},
    }
    if streaming is not None:
        rails["output"]["streaming"] = streaming
    return {"rails": rails}


async def chat(
    http: aiohttp.ClientSession, base: str, text: str, **extra: Any
) -> tuple[int, dict[str, Any]]:
    body = {
        "model": "m1",
        "messages": [{"role": "user", "content": text}],
        "guardrails": {"config_id": "c"},
        **extra,
    }
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        return response.status, await response.json()


async def stream_chat(http: aiohttp.ClientSession, base: str, text: str) -> bytes:
    body = {
        "model": "m1",
        "stream": True,
        "messages": [{"role": "user", "content": text}],
        "guardrails": {"config_id": "c"},
    }
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        return await response.read()


def answer(data: dict[str, Any]) -> str:
    return str(data["choices"][0]["message"]["content"])


async def test_detect_on_input_blocks_before_the_upstream(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard({"c": http_config(("detect sensitive data on input",))})
    status, data = await chat(http, base, f"my card is {CARD}")
    assert (status, answer(data)) == (200, REFUSAL)
    assert fake_upstream.main_calls == []
    raw = await stream_chat(http, base, f"write to {EMAIL}")
    assert delivered_text(raw) == REFUSAL
    assert fake_upstream.main_calls == []
    _, data = await chat(http, base, "my card is 4111 1111 1111 1112")  # fails Luhn
    assert answer(data) == "echo: my card is 4111 1111 1111 1112"
    raw = await stream_chat(http, base, "hello there")
    assert "echo" in delivered_text(raw)


async def test_detect_on_output_blocks_the_answer(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    streaming = {"enabled": True, "chunk_size": 200, "context_size": 50, "stream_first": False}
    config = http_config(output_flows=("detect sensitive data on output",), streaming=streaming)
    base = await start_railguard({"c": config})
    fake_upstream.next(content=f"Sure, write to {EMAIL}.")
    _, data = await chat(http, base, "who?")
    assert answer(data) == REFUSAL
    fake_upstream.next(content="Nobody you know.")
    _, data = await chat(http, base, "who?")
    assert answer(data) == "Nobody you know."
    fake_upstream.next(
        chunks=upstream_events(["Sure, ", "write ", "to ", "jo.smith", "@example", ".com."])
    )
    raw = await stream_chat(http, base, "who?")
    assert parsed(raw)[-2]["error"]["code"] == "content_blocked"
    assert b"example" not in raw


async def test_mask_on_input_changes_what_goes_upstream(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard({"c": http_config(("mask sensitive data on input",))})
    key = "sk-proj-" + token(80, URLSAFE)
    _, data = await chat(http, base, f"mail {EMAIL} my key {key}, card {CARD}")
    sent = fake_upstream.main_calls[-1].body["messages"][-1]["content"]
    assert sent == "mail <EMAIL_ADDRESS> my key <API_KEY>, card <CREDIT_CARD>"
    assert answer(data) == f"echo: {sent}"
    raw = await stream_chat(http, base, f"reach me at {EMAIL}")
    assert fake_upstream.main_calls[-1].body["messages"][-1]["content"] == (
        "reach me at <EMAIL_ADDRESS>"
    )
    assert EMAIL.encode() not in raw


async def test_mask_on_output_changes_what_the_client_gets(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(
        {"c": http_config(output_flows=("mask sensitive data on output",))}
    )
    fake_upstream.next(content=f"Write to {EMAIL} and pay with {CARD}.")
    _, data = await chat(http, base, "how?")
    assert answer(data) == "Write to <EMAIL_ADDRESS> and pay with <CREDIT_CARD>."


@pytest.mark.parametrize("stream_first", [True, False])
async def test_mask_on_output_holds_a_stream_until_masked(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    stream_first: bool,
) -> None:
    streaming = {"enabled": True, "chunk_size": 4, "context_size": 1, "stream_first": stream_first}
    config = http_config(output_flows=("mask sensitive data on output",), streaming=streaming)
    base = await start_railguard({"c": config})
    deltas = [
        "Pay ",
        "with ",
        "4111 ",
        "1111 ",
        "1111 ",
        "1111",
        " or ",
        "mail ",
        "jo.smith",
        "@example.com",
        ".",
    ]
    fake_upstream.next(chunks=upstream_events(deltas))
    status, _, raw = await post_stream(http, base, "c")
    assert status == 200
    assert delivered_text(raw) == "Pay with <CREDIT_CARD> or mail <EMAIL_ADDRESS>."
    assert b"4111" not in raw and b"1111" not in raw and b"example" not in raw
    assert parsed(raw)[-1] == "[DONE]"


# --- time ---------------------------------------------------------------------------------

N = 100_000


def repeat(unit: str) -> str:
    return (unit * (N // len(unit) + 1))[:N]


ADVERSARIAL = {
    "no at sign": repeat("a.") + "@",
    "digits and separators": repeat("1-2 3.4 "),
    "card groups": repeat("4111 "),
    "iban-like": repeat("DE89 3704 "),
    "colons": repeat("::a:"),
    "pem headers": repeat("-----BEGIN RSA PRIVATE" + " KEY-----\n"),
    "jwt starts": repeat("eyJhbGciOi."),
    "url without end": "http://" + "a" * N,
    "key prefixes": repeat("sk-ghp_AIza-xoxb-"),
    "phone prefixes": repeat("+44 20 "),
    "random": "".join(random.Random(1).choice("ab1 .:-@/+_=AKIeyJ\n") for _ in range(N)),
}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_crafted_100kb_inputs_scan_in_linear_time(name: str) -> None:
    """RE2 can't backtrack; this guards the Python checks against anything quadratic.
    Measured: 30-200 ms each; a quadratic scan of 100 KB would take minutes."""
    text = ADVERSARIAL[name]
    started = time.perf_counter()
    findings = everything().find(text)
    mask(text, findings, angle)
    assert time.perf_counter() - started < 3.0
