"""`injection detection`: NeMo's output rail for answers carrying payloads a downstream
system would run: code, SQL, template or HTML/markdown injection.

Settings are NeMo's, under `rails.config.injection_detection`: `injections`, a list of
`code`, `sqli`, `template`, `xss` (required: with none the rail would check nothing), and
`action` (default `reject`):

- `reject` blocks; the reason names the injection types found.
- `omit` removes every offending span (a rewrite).
- `sanitize` rewrites every offending span so nothing runs it, keeping what can be kept
  (NeMo accepts the word but has not implemented it):
  - template: a space goes between the characters of every delimiter (`{ {`, `$ {`, `< %`);
  - xss: HTML is escaped, an event handler's `=` too, `javascript:`/`vbscript:`/`data:`
    schemes lose their colon (`%3A`), and a markdown image becomes a link, which is not
    fetched on display;
  - code and sqli: the span becomes `[injection removed: code]` (or `sqli`). Commands and
    SQL have no escaping that holds in every context: a `# ` or `-- ` put before them is
    no comment inside a string literal, where the rest of the line still runs.
  A sanitized (or omitted) answer is checked again, and blocked if it still holds a
  payload (the text around a span closing up into a new one), so what the client gets
  always passes this rail.

NeMo matches YARA rules; railguard runs the native RE2 patterns below (linear time, one
pass for all of them), narrower than NeMo's so ordinary prose and ordinary code answers
pass. Still, `code` flags what a coding assistant may well show (`import os`, `import
requests`, `subprocess.run(...)`, `curl ... | sh`), and `template` any template delimiter
pair (`{{ name }}`, `${HOME}`): they are what a downstream interpreter would run.
`yara_path` and `yara_rules` (custom YARA rules) are a start-up error when set: a rule
railguard silently ignored would be a hole; use `regex check output` for custom patterns
instead. An unknown setting is an error too, so a typo can't disable a check.

In the log, the action is NeMo's `injection_detection(text=$bot_message)`, returning
`{"is_injection": bool, "detections": [types], "action": ...}` (NeMo's result without
the text).
"""

from __future__ import annotations

import html
import itertools
import re
from collections.abc import Callable, Mapping
from typing import Any

import re2

from rails.base import Action, CheckContext, Stage, Verdict
from rails.config import ConfigError, RailsConfig

SECTION = "rails.config.injection_detection"
ACTIONS = ("reject", "omit", "sanitize")
MAX_SPANS = 1000  # a rewrite edits at most this many spans; an answer with more is blocked
Span = tuple[int, int, set[str]]  # start, end, the injection types found there

# type -> its patterns (RE2 syntax), one payload shape each. What a pattern matches, from
# its group 1 when it has one, is the span `omit` removes and `sanitize` rewrites; for
# code and SQL the span runs on to the end of the line (or of inline `code`), since shells
# and SQL read a payload to the end of its line.
PATTERNS: dict[str, tuple[str, ...]] = {
    "code": (
        # Python importing modules that run commands or open connections, at the start of a
        # line or after `;` or a quote (`python -c "import os; ..."`)
        r"(?m)(?:^|[;\"'`])[ \t]*((?:import[ \t]+(?:[\w. \t]+,[ \t]*)*|from[ \t]+)"
        r"(?:os|subprocess|shutil|pty|socket|requests|urllib[23]?|http|httpx|aiohttp"
        r"|paramiko|asyncssh|ftplib|telnetlib|smtplib|mechanize)\b)",
        # Node requiring a process or socket module
        r"(?:\brequire\s*\(\s*|\bfrom[ \t]+)['\"](?:node:)?(?:child_process|net|dgram)['\"]",
        # calls that run commands or code
        r"\b__import__\s*\(",
        r"\bos\s*\.\s*(?:system|popen|exec[lv]p?e?|spawn[lv]p?e?|posix_spawnp?)\s*\(",
        r"\bsubprocess\s*\.\s*(?:run|call|Popen|check_call|check_output|getoutput"
        r"|getstatusoutput)\s*\(",
        r"\bpty\s*\.\s*spawn\s*\(",
        r"\bRuntime\s*\.\s*getRuntime\s*\(\s*\)\s*\.\s*exec\s*\(",
        # eval/exec of a string, a decoded blob or an import
        r"\b(?:eval|exec)\s*\(\s*(?:[\"']|compile\s*\(|__import__|base64|codecs|zlib|marshal"
        r"|bytes\s*\.\s*fromhex|input\s*\()",
        # a download piped into an interpreter
        r"\b(?:curl|wget)\b[^\n|]*\|[ \t]*(?:sudo[ \t]+(?:-\S+[ \t]+)*)?"
        r"(?:(?:ba|z|k|da|tc|c)?sh|python[\d.]*|perl|ruby|node|php)\b",
        r"(?i)\b(?:iex|invoke-expression)\b[^\n]*?\b(?:downloadstring|invoke-webrequest|iwr)\b",
        r"(?i)\b(?:downloadstring|invoke-webrequest|iwr)\b[^\n]*?\|[ \t]*"
        r"(?:iex|invoke-expression)\b",
        # deleting /, ~, $HOME, * or . recursively
        r"(?m)\brm[ \t]+(?:-{1,2}[\w-]+[ \t]+)+(?:/|/\*|~/?\*?|\*|\$\{?HOME\}?/?\*?|\.{1,2}/?\*?)"
        r"(?:[ \t;&|)`'\"]|$)",
        # a fork bomb; overwriting a disk
        r":\(\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;\s*:",
        r"\bdd\b[^\n]*\bof=/dev/(?:sd|hd|nvme|xvd|vd|mmcblk|disk)",
        r"\bmkfs(?:\.\w+)?[ \t]+(?:-\S+[ \t]+)*/dev/",
        # reverse shells
        r"/dev/(?:tcp|udp)/[\w.-]+/\d+",
        r"\b(?:nc|ncat|netcat)\b[^\n]*[ \t]-[a-zA-Z]*[ec][ \t]+(?:/bin/)?(?:ba)?sh\b",
        # after a command separator: reading the password file, an interactive shell
        r"(?:;|&&|\|\|?|`|\$\()[ \t]*(?:cat[ \t]+/etc/(?:passwd|shadow)\b|(?:ba)?sh[ \t]+-i\b)",
    ),
    "sqli": (
        # a tautology after closing a string: ' OR 1=1, " or "a"="a, ') OR ('x'='x
        r"(?i)['\"`]\s*\)*\s*(?:or|and|\|\||&&)\s+\(*\s*(?:\d+\s*(?:=|<>|!=|<|>|like)\s*\d+"
        r"|'[^'\n]*'\s*(?:=|<>|!=|like)\s*'|\"[^\"\n]*\"\s*(?:=|<>|!=|like)\s*\"|true\b)",
        r"(?i)\bor\s+1\s*=\s*1\b",
        # a second statement after closing a string: '; DROP TABLE users
        r"(?i)['\"]\s*\)*\s*;\s*(?:drop|delete|insert|update|truncate|alter|create|exec(?:ute)?"
        r"|shutdown|select|grant|declare)\b",
        # UNION-based extraction
        r"(?i)\bunion\s+(?:all\s+|distinct\s+)?select\b",
        # a comment cutting the query right after a closing quote: admin'--, admin' #
        # (`--` then a space or the end, as SQL needs: prose's `"yes"--and` passes)
        r"(?i)\w(['\"]\)*(?:--(?:[ \t'\"-]|$)|#))",
        r"(?im)\w(['\"][ \t]*\)*[ \t]*(?:--|#)[ \t-]*)$",
        # time-based blind injection
        r"(?i)\bpg_sleep\s*\(\s*\d|\bwaitfor\s+delay\s+'|\bbenchmark\s*\(\s*\d{4,}\s*,",
        r"(?i)\b(?:and|or)\s+sleep\s*\(\s*\d+\s*\)",
        # CHAR() concatenation to smuggle strings; file access and commands through SQL
        r"(?i)\bcha?r\s*\(\s*\d+\s*\)\s*(?:\+|\|\||,)\s*cha?r\s*\(\s*\d+",
        r"(?i)\bload_file\s*\(|\binto\s+(?:out|dump)file\b|\bxp_cmdshell\b",
    ),
    "template": (
        r"\{\{[^\n]*?\}\}+",  # Jinja2, Twig, Django, Handlebars, Angular expressions
        r"\{%[^\n]*?%\}",  # Jinja2, Twig, Django statements
        r"\$\{[^\n{}]*\}",  # JS template literals, Java EL, Log4Shell, shell expansion
        r"#\{[^\n{}]*\}",  # Ruby interpolation, Spring EL, JSF
        r"<%[=#-]?[^\n]*?%>",  # ERB, JSP, EJS
    ),
    "xss": (
        r"(?is)<script\b[^>]*>.*?</script\s*>",  # a script element
        r"(?i)<script\b[^>]*>",  # a script tag never closed
        r"(?i)<[a-z][^<>]*?[\s\"'/]on[a-z]{3,}\s*=[^>]*>?",  # a tag with an event handler
        # an event handler calling script outside a tag (an attribute breaking out)
        r"(?i)\bon(?:error|load|click|mouseover|focus|blur|submit|toggle|animationstart"
        r"|pointerover)\s*=\s*[\"']?\s*(?:alert|prompt|confirm|eval|fetch|document\.|window\."
        r"|location|top\.|self\.)",
        # script URLs: in a tag's attribute, in a markdown link, or calling script
        r"(?i)<[a-z][^<>]*?\b(?:href|src|action|formaction|data|xlink:href)\s*=\s*[\"']?\s*"
        r"(?:(?:javascript|vbscript)\s*:|data\s*:\s*text/html)[^>]*>?",
        r"(?i)\[[^\]\n]*\]\(\s*<?\s*(?:javascript|vbscript)\s*:[^\s)]*(?:\([^\s)]*\)[^\s)]*)*\)?",
        # (no space around the colon, as in a URL: prose's `JavaScript: this is` passes)
        r"(?i)\b(?:javascript|vbscript):(?:alert|prompt|confirm|eval|fetch|document|window"
        r"|location|void|top|self|this)\b[^\s\"'<>`]*",
        # tags that load or run other content
        r"(?i)<(?:iframe|object|embed|applet|base|meta[^>]*http-equiv)\b[^>]*>",
        # a markdown image whose URL has a query: shown, it sends data out
        r"!\[[^\]\n]*\]\(\s*<?https?://[^\s)>]*\?[^\s)>]*=[^\s)]*\)?",
    ),
}
KINDS = tuple(PATTERNS)
_SPAN_TAILS = {"code": r"[^\n`]*", "sqli": r"[^\n`]*"}


_DELIMITER_JOINT = re.compile(r"(?<=[{}$#<%])(?=[{}%>])")  # no quantifier: linear
_SCRIPT_SCHEME = re.compile(r"(?i)\b(javascript|vbscript|data)(\s*):")
_EVENT_HANDLER = re.compile(r"(?i)\b(on[a-z]{3,}\s*)=")


def _space_delimiters(span: str) -> str:
    return _DELIMITER_JOINT.sub(" ", span)


def _defuse_html(span: str) -> str:
    span = _EVENT_HANDLER.sub(r"\1&#61;", _SCRIPT_SCHEME.sub(r"\1\2%3A", html.escape(span)))
    return span.replace("![", "[")  # markdown images anywhere in the span become links


REMOVED = ("code", "sqli")  # sanitized by removal, with a marker naming the types
SANITIZERS: dict[str, Callable[[str], str]] = {
    "template": _space_delimiters,
    "xss": _defuse_html,  # last: it escapes what the others leave
}


class InjectionDetection:
    uses_model = False
    action_name = "injection_detection"

    def __init__(self, name: str, stage: Stage, kinds: tuple[str, ...], action: str) -> None:
        self.name = name
        self.stage = stage
        self.action_params = {"text": "$bot_message"}
        self.action = action
        self._clean = Verdict(Action.ALLOW, value=self._returned([]))
        self.rewrites = action != "reject"
        self._patterns = [(kind, p) for kind in kinds for p in PATTERNS[kind]]
        self._any = re2.Set.SearchSet(re2.Options())  # every pattern in one pass
        for _, pattern in self._patterns:
            self._any.Add(pattern)
        self._any.Compile()
        self._spanners = [
            re2.compile(f"(?:{pattern}){_SPAN_TAILS.get(kind, '')}")
            for kind, pattern in self._patterns
        ]

    async def check(self, text: str, ctx: CheckContext) -> Verdict:
        matched = self._any.Match(text)
        if not matched:
            return self._clean
        found = sorted({self._patterns[i][0] for i in matched}, key=KINDS.index)
        reason = f"{', '.join(found)} injection"
        value = self._returned(found)
        if self.action == "reject":
            return Verdict(Action.BLOCK, reason=reason, value=value)
        spans = self._spans(text, matched)
        if spans is None:
            reason = f"{reason}: over {MAX_SPANS} spans to rewrite"
            return Verdict(Action.BLOCK, reason=reason, value=value)
        if self.action == "sanitize":
            rewritten = _rebuild(text, spans, _sanitized)
        else:
            rewritten = _rebuild(text, spans, lambda span, kinds: "")
        if self._any.Match(rewritten):  # the text around a span closed up into a new payload
            reason = f"{reason}: the text after {self.action} has more"
            return Verdict(Action.BLOCK, reason=reason, value=value)
        return Verdict(Action.REWRITE, text=rewritten, reason=reason, value=value)

    def _returned(self, found: list[str]) -> dict[str, Any]:
        return {"is_injection": bool(found), "detections": found, "action": self.action}

    def _spans(self, text: str, matched: list[int]) -> list[Span] | None:
        """Every match of the matched patterns, overlapping ones merged, with their types;
        None when there are more than MAX_SPANS (each costs a few microseconds)."""
        found: list[tuple[int, int, str]] = []
        for index in matched:
            kind, spanner = self._patterns[index][0], self._spanners[index]
            for m in itertools.islice(spanner.finditer(text), MAX_SPANS + 1 - len(found)):
                start, end = m.start(1) if m.re.groups else m.start(), m.end()
                if kind in _SPAN_TAILS:  # a span with a tail ends where its inline code does
                    cut = text.find("`", start + 1, end)
                    end = end if cut == -1 else cut
                found.append((start, end, kind))
            if len(found) > MAX_SPANS:
                return None
        merged: list[Span] = []
        for start, end, kind in sorted(found):
            if merged and start < merged[-1][1]:
                last_start, last_end, kinds = merged[-1]
                merged[-1] = (last_start, max(last_end, end), kinds | {kind})
            else:
                merged.append((start, end, {kind}))
        return merged


def _sanitized(span: str, kinds: set[str]) -> str:
    removed = [kind for kind in REMOVED if kind in kinds]
    if removed:
        return f"[injection removed: {', '.join(removed)}]"
    for kind, sanitizer in SANITIZERS.items():
        if kind in kinds:
            span = sanitizer(span)
    return span


def _rebuild(text: str, spans: list[Span], replace: Callable[[str, set[str]], str]) -> str:
    parts, done = [], 0
    for start, end, kinds in spans:
        parts += [text[done:start], replace(text[start:end], kinds)]
        done = end
    parts.append(text[done:])
    return "".join(parts)


def read_settings(config: RailsConfig) -> tuple[tuple[str, ...], str]:
    """(injection types, action) from `rails.config.injection_detection`."""
    file = config.file_for("rails")

    def error(message: str, key: str) -> ConfigError:
        return ConfigError(message, file=file, key=f"{SECTION}.{key}" if key else SECTION)

    raw: Any = config.rail_settings.get("injection_detection")
    if not isinstance(raw, Mapping):
        raise error("'injection detection' needs settings with a list of injections", "")
    for key in ("yara_path", "yara_rules"):
        if raw.get(key):
            raise error(
                "YARA rules are not supported: railguard runs native detectors for "
                f"{', '.join(KINDS)}; use 'regex check output' for custom patterns",
                key,
            )
    unknown = {str(key) for key in raw} - {"injections", "action", "yara_path", "yara_rules"}
    if unknown:
        raise error("unknown setting (known: injections, action)", sorted(unknown)[0])
    injections = raw.get("injections")
    if not isinstance(injections, list) or not injections:
        raise error(f"must be a non-empty list of: {', '.join(KINDS)}", "injections")
    for index, kind in enumerate(injections):
        if not isinstance(kind, str) or kind not in PATTERNS:
            raise error(
                f"unknown injection type {kind!r} (railguard detects: {', '.join(KINDS)})",
                f"injections[{index}]",
            )
    action = raw.get("action", "reject")
    if action not in ACTIONS:
        raise error(f"must be one of {', '.join(ACTIONS)}, not {action!r}", "action")
    return tuple(kind for kind in KINDS if kind in injections), action


def build(
    config: RailsConfig, name: str, stage: Stage, params: Mapping[str, str]
) -> InjectionDetection:
    kinds, action = read_settings(config)
    return InjectionDetection(name, stage, kinds, action)


FLOWS = {"injection detection": (Stage.OUTPUT, build)}
