"""Native recognizers for sensitive data: the entities NeMo finds with Presidio, without
Presidio or spaCy.

Each recognizer is an RE2 pattern (linear in the text, so no input can make a scan hang)
plus, where the format carries one, a check that turns lookalikes away: Luhn for cards,
mod-97 for IBANs, reserved ranges for SSNs, octet ranges for IPs, a JSON header for JWTs.
A `Scanner` first runs all its patterns as one RE2 set, a single pass that says which
occur at all, so ordinary prose costs one scan however many entities are enabled.

Choices a reader may look for:
- PHONE_NUMBER: NANP numbers need separators or a `+1` (`212-555-0123`, `(212) 555-0123`,
  `+12125550123`); international ones start with `+` or `00` and have 8 to 15 digits;
  national ones start with a trunk `0`, have 10 or 11 digits and a separator. A bare
  digit run without `+` is not a phone number: it is too often an id or an amount.
- IP_ADDRESS: a dotted quad of octets 0-255 is an address even when it reads like a
  version (`1.2.3.4`); `v1.2.3.4`, `release-1.2.3.4`, `1.2.3.4.5` and `999.1.1.1` are
  not, and a range `10.0.0.1-10.0.0.9` holds two. IPv6 is whatever
  `ipaddress` accepts, standing alone (so `std::vector` is not one).
- URL: needs a scheme (`https://`, `ftp://`, `ws://`...) or `www.`; bare domains such as
  `config.yml` are not URLs.
- US_SSN: `AAA-GG-SSSS` with `-`, space or `.`; area 000, 666 and 9xx, group 00 and
  serial 0000 are never issued, so they don't count. Nine bare digits don't either.
- CREDIT_CARD: 13 to 19 digits, bare or grouped by spaces or dashes, passing Luhn and
  starting like a card network (2221-2720, 3, 4, 5, 6).
- API_KEY: provider tokens by their documented prefixes, a `Bearer` token, and an AWS
  secret key next to its name; placeholders (`sk-xxxx...`) are not keys.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import re2

Span = tuple[int, int]
Check = Callable[[str, int, int], Span | None]  # (text, start, end) -> span to report, or None

RESCAN_REACH = 100  # longer than any candidate of a pattern built with `rescan=True`


@dataclass(frozen=True, slots=True)
class Finding:
    entity: str
    start: int
    end: int


class Recognizer:
    """One pattern for one entity; `check` confirms a candidate, or the part of it that is
    the value. Raises `re2.error` for a pattern RE2 can't compile.

    - `value_group`: when a capture group took part, it is the value, the rest context.
    - `rescan`: a candidate may hide a true value that starts inside it (the IBAN
      lookalike `AB12 ABCD` runs on into `DE89 3704 ...`; one IBAN runs on into the
      next), so what no confirmed value covers is searched again. Only for patterns whose
      candidates are shorter than `RESCAN_REACH`, which keeps each search short."""

    __slots__ = ("check", "entity", "pattern", "regex", "rescan", "value_group")

    def __init__(
        self,
        entity: str,
        pattern: str,
        check: Check | None = None,
        *,
        value_group: bool = False,
        rescan: bool = False,
    ) -> None:
        self.entity = entity
        self.pattern = pattern
        self.regex = re2.compile(pattern)
        self.check = check
        self.value_group = value_group
        self.rescan = rescan

    def find(self, text: str, subject: str | bytes) -> Iterator[Finding]:
        """Findings in `text`; `subject` is what RE2 searches: `text`, or its bytes when it
        is ASCII (the same offsets, without the wrapper's offset translation)."""
        return self._confirm(text, subject, self.regex.finditer(subject), 0, len(text))

    def _confirm(
        self, text: str, subject: str | bytes, matches: Iterable[Any], offset: int, limit: int
    ) -> Iterator[Finding]:
        """Check the candidates that start before `limit`; match positions are `offset`
        short of the text's."""
        for match in matches:
            start, end = match.span()
            start, end = start + offset, end + offset
            if start >= limit:
                return
            if self.value_group:
                groups = (match.span(group) for group in range(1, len(match.groups()) + 1))
                value = next((span for span in groups if span[0] >= 0), None)
                if value is not None:
                    start, end = value[0] + offset, value[1] + offset
            span = (start, end) if self.check is None else self.check(text, start, end)
            if span is not None:
                yield Finding(self.entity, *span)
            resume = start + 1 if span is None else span[1]
            if self.rescan and resume < min(end, limit):
                # what no value covers, searched again: one character of context before,
                # room for the longest candidate after; later starts are the caller's
                inner = self.regex.finditer(subject[resume - 1 : end + RESCAN_REACH], 1)
                yield from self._confirm(text, subject, inner, resume - 1, min(end, limit))


def _glued(text: str, start: int, end: int) -> bool:
    """True when the span is part of a longer token: a letter or digit right next to it,
    or more digits beyond a `.`, `-` or `,` (`1.2.3.4.5`, `123-45-6789-0`)."""
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    if before.isalnum() or before == "_" or after.isalnum() or after == "_":
        return True
    if before in ".-," and start >= 2 and text[start - 2].isdigit():
        return True
    return after in ".-," and end + 1 < len(text) and text[end + 1].isdigit()


def _standalone(text: str, start: int, end: int) -> Span | None:
    return None if _glued(text, start, end) else (start, end)


# --- numbers with checksums -----------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card_network(digits: str) -> bool:
    return digits[0] in "3456" or 222100 <= int(digits[:6]) <= 272099


def _card(text: str, start: int, end: int) -> Span | None:
    """The longest run of leading digit groups that is a card number, so a card followed
    by a year (`4111 1111 1111 1111 2030`) is still found."""
    groups = text[start:end].replace("-", " ").split(" ")
    for count in range(len(groups), 0, -1):
        digits = "".join(groups[:count])
        if not 13 <= len(digits) <= 19:
            continue
        card_end = start + len(digits) + count - 1  # one separator between groups
        if _card_network(digits) and luhn_valid(digits) and not _glued(text, start, card_end):
            return start, card_end
    return None


def _ssn(text: str, start: int, end: int) -> Span | None:
    digits = text[start:end].replace("-", "").replace(" ", "").replace(".", "")
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return None
    return _standalone(text, start, end)


IBAN_LENGTHS = {
    **dict.fromkeys(["NO"], 15),
    **dict.fromkeys(["BE"], 16),
    **dict.fromkeys(["DK", "FI", "FK", "FO", "GL", "NL", "SD"], 18),
    **dict.fromkeys(["MK", "SI"], 19),
    **dict.fromkeys(["AT", "BA", "EE", "KZ", "LT", "LU", "MN", "XK"], 20),
    **dict.fromkeys(["CH", "HR", "LI", "LV"], 21),
    **dict.fromkeys(["BG", "BH", "CR", "DE", "GB", "GE", "IE", "ME", "RS", "VA"], 22),
    **dict.fromkeys(["AE", "GI", "IL", "IQ", "OM", "SO", "TL"], 23),
    **dict.fromkeys(["AD", "CZ", "ES", "MD", "PK", "RO", "SA", "SE", "SK", "TN", "VG"], 24),
    **dict.fromkeys(["LY", "PT", "ST"], 25),
    **dict.fromkeys(["IS", "TR"], 26),
    **dict.fromkeys(["BI", "DJ", "FR", "GR", "IT", "MC", "MR", "SM"], 27),
    **dict.fromkeys(["AL", "AZ", "BY", "CY", "DO", "GT", "HU", "LB", "NI", "PL", "SV"], 28),
    **dict.fromkeys(["BR", "EG", "PS", "QA", "UA"], 29),
    **dict.fromkeys(["JO", "KW", "MU", "YE"], 30),
    **dict.fromkeys(["MT", "SC"], 31),
    **dict.fromkeys(["LC"], 32),
    **dict.fromkeys(["RU"], 33),
}


def iban_valid(compact: str) -> bool:
    """ISO 13616: the country's length, then mod 97 of the rearranged number is 1."""
    compact = compact.upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _iban(text: str, start: int, end: int) -> Span | None:
    """Cut the candidate at its country's length: the pattern may run on into the next
    group of four."""
    length = IBAN_LENGTHS.get(text[start : start + 2].upper())
    if length is None:
        return None
    compact: list[str] = []
    cut = start
    while cut < end and len(compact) < length:
        if text[cut] != " ":
            compact.append(text[cut])
        cut += 1
    if len(compact) < length or _glued(text, start, cut):
        return None
    return (start, cut) if iban_valid("".join(compact)) else None


# --- network addresses ----------------------------------------------------------------


def _ipv4(text: str, start: int, end: int) -> Span | None:
    """A quad of octets standing alone; a range (`10.0.0.1-10.0.0.9`) holds two, a version
    tag (`release-2.4.1.0`, `v1.2.3.4`) none."""
    if any(int(octet) > 255 for octet in text[start:end].split(".")):
        return None
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    if before.isalnum() or before == "_" or after.isalnum() or after == "_":
        return None
    if before in ".-" and start >= 2 and text[start - 2].isalpha():
        return None
    if before == "." and start >= 2 and text[start - 2].isdigit():
        return None
    if after == "." and end + 1 < len(text) and text[end + 1].isdigit():
        return None
    return start, end


def _ipv6(text: str, start: int, end: int) -> Span | None:
    candidate = text[start:end]
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    if before.isalnum() or before in "_:." or after.isalnum() or after in "_:":
        return None
    if candidate.strip(":") == "":
        return None
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return None
    return start, end


# --- phone numbers --------------------------------------------------------------------


def _digit_runs(text: str, start: int, end: int) -> list[Span]:
    runs: list[Span] = []
    run_start = None
    for index in range(start, end + 1):
        if index < end and text[index].isdigit():
            run_start = index if run_start is None else run_start
        elif run_start is not None:
            runs.append((run_start, index))
            run_start = None
    return runs


def _after_digit_group(text: str, start: int) -> bool:
    """A phone number doesn't start right after another group of digits: `0044` inside
    `3704 0044 0532` is part of a longer number (an IBAN here), not a prefix."""
    return text[start - 2 : start - 1].isdigit() and text[start - 1 : start] == " "


def _international_phone(text: str, start: int, end: int) -> Span | None:
    """E.164 allows 15 digits: drop trailing groups beyond that (a year after the number)."""
    if _after_digit_group(text, start):
        return None
    runs = _digit_runs(text, start, end)
    while runs and sum(run_end - run_start for run_start, run_end in runs) > 15:
        runs.pop()
    if sum(run_end - run_start for run_start, run_end in runs) < 8:
        return None
    number_end = runs[-1][1]
    number_end += text[number_end : number_end + 1] == ")"
    return _standalone(text, start, number_end)


def _national_phone(text: str, start: int, end: int) -> Span | None:
    number = text[start:end]
    if _after_digit_group(text, start) or number.isdigit():
        return None
    if not 10 <= sum(char.isdigit() for char in number) <= 11:
        return None
    return _standalone(text, start, end)


# --- secrets --------------------------------------------------------------------------


def _api_key(text: str, start: int, end: int) -> Span | None:
    """Not when the key runs on into more token characters, nor a placeholder like
    `sk-xxxxxxxx...`."""
    after = text[end] if end < len(text) else " "
    if after.isalnum() or after == "_" or len(set(text[max(start, end - 16) : end])) < 6:
        return None
    return start, end


def _jwt(text: str, start: int, end: int) -> Span | None:
    header = text[start:end].split(".", 1)[0]
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError):
        return None
    return (start, end) if isinstance(decoded, dict) and "alg" in decoded else None


# --- the catalogue --------------------------------------------------------------------

_URL_TAIL = r"[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}]"
_PEM_LABEL = r"[A-Z0-9 ]* PRIVATE KEY(?: BLOCK)?-----"
_PEM_GAP = r"(?:\s|\\[nr])+"  # a newline, or an escaped one when the key sits in JSON
_KEY_PATTERNS = (
    r"\bsk-ant-[a-z]+\d{2}-[A-Za-z0-9_-]{32,}",  # Anthropic
    r"\bsk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{32,}",  # OpenAI project/service keys
    r"\bsk-[A-Za-z0-9]{32,}",  # OpenAI legacy, DeepSeek
    r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}",  # AWS access key id
    r"(?i)aws.{0,20}secret.{0,20}[=:]\s*[\"']?([A-Za-z0-9/+]{40})",  # AWS secret access key
    r"\bgh[pousr]_[A-Za-z0-9]{36,}",  # GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{50,}",  # GitHub fine-grained tokens
    r"\bgl(?:pat|dt|rt|ptt|cbt|imt|ft|soat|agent)-[A-Za-z0-9_.-]{20,}",  # GitLab
    r"\bxox[abcprse](?:\.xox[abcprse])?-\d[A-Za-z0-9-]{8,}",  # Slack tokens
    r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_-]{20,}",  # Slack webhooks
    r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}",  # Stripe secret and restricted keys
    r"\bwhsec_[A-Za-z0-9+/=]{24,}",  # Stripe webhook secrets
    r"\bAIza[0-9A-Za-z_-]{35}",  # Google API keys
    r"\bGOCSPX-[A-Za-z0-9_-]{28}",  # Google OAuth client secrets
    r"\bya29\.[A-Za-z0-9_-]{20,}",  # Google OAuth access tokens
    r"\bhf_[A-Za-z0-9]{30,}",  # Hugging Face
    r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",  # SendGrid
    r"\bnpm_[A-Za-z0-9]{36}",  # npm
    r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}",  # PyPI
    r"\bgsk_[A-Za-z0-9]{48,}",  # Groq
    r"\br8_[A-Za-z0-9]{37}",  # Replicate
    r"\bxai-[A-Za-z0-9]{70,}",  # xAI
    r"\bdo[por]_v1_[a-f0-9]{64}",  # DigitalOcean
    r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}",  # Shopify
    r"\bdapi[a-f0-9]{32}",  # Databricks
    r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{20,}=*)",  # any bearer token, e.g. in a curl line
)

# The most specific entities first: when several find the very same span, the first names it.
BUILTIN: dict[str, tuple[Recognizer, ...]] = {
    "PRIVATE_KEY": (
        Recognizer(
            "PRIVATE_KEY",
            rf"-----BEGIN{_PEM_LABEL}"
            rf"(?:{_PEM_GAP}(?:[A-Za-z0-9+/=]{{16,}}|[A-Za-z0-9+/]*={{1,2}}|[A-Za-z-]+: [^\n]*))*"
            rf"(?:(?:{_PEM_GAP}[A-Za-z0-9+/=]+)?{_PEM_GAP}-----END{_PEM_LABEL})?",
        ),
    ),
    "JWT": (Recognizer("JWT", r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*", _jwt),),
    # each alternative in its own group, so one's `(?i)` stays its own
    "API_KEY": (
        Recognizer(
            "API_KEY", "|".join(f"(?:{p})" for p in _KEY_PATTERNS), _api_key, value_group=True
        ),
    ),
    "CREDIT_CARD": (
        Recognizer(
            "CREDIT_CARD", r"\b(?:\d{13,19}|\d{4}(?:[ -]\d{3,6}){2,4})\b", _card, rescan=True
        ),
    ),
    "IBAN_CODE": (
        Recognizer(
            "IBAN_CODE",
            # compact, or printed in groups of four
            r"(?i)\b[a-z]{2}\d{2}(?:[a-z0-9]{11,30}|(?: [a-z0-9]{4}){2,7}(?: [a-z0-9]{1,3})?)",
            _iban,
            rescan=True,
        ),
    ),
    "US_SSN": (
        Recognizer(
            "US_SSN", r"\b(?:\d{3}-\d{2}-\d{4}|\d{3} \d{2} \d{4}|\d{3}\.\d{2}\.\d{4})\b", _ssn
        ),
    ),
    "EMAIL_ADDRESS": (
        Recognizer(
            "EMAIL_ADDRESS",
            r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
            r"\.[A-Za-z]{2,}\b",
        ),
    ),
    "IP_ADDRESS": (
        Recognizer("IP_ADDRESS", r"\b(?:\d{1,3}\.){3}\d{1,3}\b", _ipv4),
        Recognizer(
            "IP_ADDRESS",
            r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?",
            _ipv6,
        ),
    ),
    "PHONE_NUMBER": (
        Recognizer(
            "PHONE_NUMBER",
            r"(?:(?:\+1|\b1)[ .-]?)?(?:\([2-9]\d{2}\) ?|\b[2-9]\d{2}[ .-])[2-9]\d{2}[ .-]\d{4}\b",
            _standalone,
        ),
        Recognizer(
            "PHONE_NUMBER",
            r"(?:\+|\b00)[1-9]\d{0,2}(?:[ .-]?\(?\d{1,5}\)?){1,7}",
            _international_phone,
            rescan=True,
        ),
        Recognizer(
            "PHONE_NUMBER",
            r"(?:\(0\d{1,4}\)|\b0\d{1,4})[ .-]?\d{2,4}(?:[ .-]?\d{2,4}){1,3}\b",
            _national_phone,
            rescan=True,
        ),
    ),
    "URL": (
        Recognizer(
            "URL",
            rf"(?i)\b(?:https?|ftps?|wss?)://{_URL_TAIL}|\bwww\.[a-z0-9-]+(?:\.[a-z0-9-]+)+"
            rf"(?:[/?#:]{_URL_TAIL})?",
        ),
    ),
}

SPECIFICITY = tuple(BUILTIN)


def pattern_recognizer(entity: str, regex: str) -> Recognizer:
    """A Presidio no-code pattern: case-insensitive, `.` matching newlines, `^`/`$` at
    line ends, as Presidio's default flags. Raises `re2.error` if RE2 can't run it."""
    return Recognizer(entity, f"(?ims){regex}")


def deny_list_recognizer(entity: str, words: Sequence[str]) -> Recognizer:
    """Presidio's deny list: any of `words`, whole, in any case (longest first, so `Mrs`
    is not read as `Mr`)."""
    ordered = sorted(words, key=len, reverse=True)
    return Recognizer(entity, "(?i)" + "|".join(_whole_word(word) for word in ordered))


def _whole_word(word: str) -> str:
    edge_before = r"\b" if word[:1].isalnum() or word[:1] == "_" else ""
    edge_after = r"\b" if word[-1:].isalnum() or word[-1:] == "_" else ""
    return f"{edge_before}{re2.escape(word)}{edge_after}"


class Scanner:
    """Finds every span its recognizers accept. One RE2 set pass first tells which
    patterns occur at all; only those are then run for their spans."""

    def __init__(self, recognizers: Sequence[Recognizer]) -> None:
        self._recognizers = tuple(recognizers)
        self._set: Any = None
        if self._recognizers:
            self._set = re2.Set.SearchSet()
            for recognizer in self._recognizers:
                self._set.Add(recognizer.pattern)
            self._set.Compile()

    def find(self, text: str) -> list[Finding]:
        if self._set is None or not text:
            return []
        subject = text.encode("ascii") if text.isascii() else text
        return [
            finding
            for index in sorted(self._set.Match(subject) or ())
            for finding in self._recognizers[index].find(text, subject)
        ]


def resolve(findings: Iterable[Finding]) -> list[Finding]:
    """Non-overlapping spans in text order: a span inside a longer one goes (identical
    spans: the more specific entity stays); spans that partly overlap become one span
    covering both, named after the one that starts first, so nothing is left uncovered."""
    rank = {entity: index for index, entity in enumerate(SPECIFICITY)}  # custom ones: -1, first
    ordered = sorted(findings, key=lambda f: (f.start, f.start - f.end, rank.get(f.entity, -1)))
    merged: list[Finding] = []
    for finding in ordered:
        if merged and finding.start < merged[-1].end:
            last = merged[-1]
            if finding.end > last.end:
                merged[-1] = Finding(last.entity, last.start, finding.end)
            continue
        merged.append(finding)
    return merged


def mask(text: str, findings: Iterable[Finding], replacement: Callable[[str], str]) -> str:
    """`text` with each resolved span replaced by `replacement(entity)`."""
    pieces: list[str] = []
    position = 0
    for finding in resolve(findings):
        pieces += (text[position : finding.start], replacement(finding.entity))
        position = finding.end
    pieces.append(text[position:])
    return "".join(pieces)
