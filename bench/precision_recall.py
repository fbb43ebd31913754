"""Precision and recall of railguard's local rails on the labelled set in tests/data/.

Run it from the repository root (``make precision``):

    .venv/bin/python bench/precision_recall.py
    .venv/bin/python bench/precision_recall.py --json figures.json --width 100

Every entry of ``tests/data/rails_dataset.jsonl`` is one user message (stage ``input``)
or one answer (stage ``output``), with the local rails that should fire on it
(``labels``; empty for a benign entry). Each rail of the entry's stage runs alone
through the real engine (`Guardrails.run_stage` with the rail selected, as
``options.rails.input: [name]`` does), on one config holding all of them (`CONFIG`).
A rail "fires" when it blocks or rewrites. The labels say what a rail of that kind
should catch, not what this implementation catches: a jailbreak is labelled for
``regex check input`` even when no pattern of `CONFIG` could match it.

Printed: per rail, TP / FP / FN / TN, precision, recall and F1; per entry (does any
rail of the stage fire, and should one); per entity type of the sensitive-data rails
(from the entity types an entry lists and those the rail's reason names); then every
misclassified entry, truncated.

Dataset format (one JSON object per line): ``id``, ``stage`` (input|output), ``kind``
(benign, lookalike, jailbreak, ...), ``labels`` (rail names), and ``text``, or, for
inputs too big to keep literal, ``generate``: ``prefix + repeat * times + suffix``.
Optional: ``entities`` (the sensitive-data entity types present), ``note``. A ``§``
in a text is removed on load: it splits secret-shaped values so that secret scanners
don't take the file for a leak. Exit status 0 (a report, not a test), 2 on a bad dataset.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rails.base import CheckContext, Stage  # noqa: E402
from rails.config import RailsConfig  # noqa: E402
from rails.guardrails import Guardrails  # noqa: E402
from rails.recognizers import BUILTIN  # noqa: E402

DATASET = ROOT / "tests" / "data" / "rails_dataset.jsonl"
SPLIT = "§"

REGEX_IN = "regex check input"
SENSITIVE_IN = "detect sensitive data on input"
BLOAT = "context bloat detection on input"
REGEX_OUT = "regex check output"
SENSITIVE_OUT = "detect sensitive data on output"
INJECTION = "injection detection"
RAILS: dict[str, tuple[str, ...]] = {
    "input": (REGEX_IN, SENSITIVE_IN, BLOAT),
    "output": (REGEX_OUT, SENSITIVE_OUT, INJECTION),
}
SENSITIVE = (SENSITIVE_IN, SENSITIVE_OUT)

# A jailbreak and prompt-leak pattern set as a config author might write it (RE2 syntax,
# matched case-insensitively). Written for the kind of attack, not for this dataset.
JAILBREAK_PATTERNS = [
    r"\b(?:ignore|disregard|forget|override)\b.{0,40}\b(?:previous|prior|above|earlier|"
    r"preceding|all|your|the)\b.{0,20}\b(?:instructions|rules|guidelines|directions|"
    r"prompts?|directives)\b",
    r"\b(?:reveal|print|show|repeat|output|display|leak|tell\s+me)\b.{0,30}\b(?:system|initial|"
    r"hidden|original|secret)\s+(?:prompt|instructions|message)",
    r"\bwhat\s+(?:is|are)\s+your\s+(?:system\s+prompt|instructions|rules)\b",
    r"\bDAN\s+mode\b|\bdo\s+anything\s+now\b",
    r"\b(?:developer|god|jailbreak|unrestricted|evil)\s+mode\b",
    r"\b(?:jailbreak|jailbroken)\b",
    r"\b(?:no\s+longer|not)\s+(?:bound|restricted|limited)\s+by\b",
    r"\b(?:without|no)\s+(?:any\s+)?(?:restrictions|filters|limitations|censorship|"
    r"content\s+polic(?:y|ies)|moral\s+guidelines)\b",
    r"\bact\s+as\s+(?:an?\s+)?(?:unfiltered|uncensored|unrestricted|jailbroken)\b",
    r"\bnew\s+(?:instructions|rules|system\s+message)\s*:",
    r"\b(?:bypass|disable|turn\s+off|override)\b.{0,20}\b(?:safety|content|ethical)\s+"
    r"(?:filters?|guidelines|policies|restrictions|training)\b",
    r"\bstay\s+in\s+character\b",
    r"<\|im_(?:start|end)\|>|\[/?INST\]|<<\/?SYS>>",
]
# Signs in an answer that a jailbreak worked or the system prompt leaked.
LEAK_PATTERNS = [
    r"\bDeveloper\s+Mode\s+(?:enabled|output)\b",
    r"\[🔓\s*JAILBREAK\]",
    r"^\s*(?:DAN|STAN|AIM|BetterDAN)\s*:",
    r"\b(?:my|the)\s+system\s+prompt\s+(?:is|says|reads)\b",
    r"\bhere\s+are\s+my\s+(?:instructions|rules)\b",
    r"\bas\s+an?\s+(?:unfiltered|uncensored|unrestricted|jailbroken)\s+(?:AI|model|assistant)\b",
]
ENTITIES = sorted(BUILTIN)

CONFIG: dict[str, Any] = {
    "models": [],
    "rails": {
        "input": {"flows": list(RAILS["input"])},
        "output": {"flows": list(RAILS["output"])},
        "config": {
            "regex_detection": {
                "input": {"patterns": JAILBREAK_PATTERNS, "case_insensitive": True},
                "output": {
                    "patterns": ["(?m)" + p for p in LEAK_PATTERNS],
                    "case_insensitive": True,
                },
            },
            "sensitive_data_detection": {
                "input": {"entities": ENTITIES},
                "output": {"entities": ENTITIES},
            },
            "injection_detection": {"injections": ["code", "sqli", "template", "xss"]},
            "context_bloat_detection": {},  # NeMo's defaults: 5,000 characters, ...
        },
    },
}


@dataclass(slots=True)
class Entry:
    id: str
    stage: str
    kind: str
    labels: frozenset[str]
    text: str
    entities: frozenset[str] = frozenset()
    note: str = ""


class DatasetError(ValueError):
    pass


def entry_text(raw: dict[str, Any]) -> str:
    generate = raw.get("generate")
    if generate is not None:
        if not isinstance(generate, dict) or not isinstance(generate.get("repeat"), str):
            raise DatasetError("generate needs a `repeat` string")
        times = generate.get("times", 1)
        if not isinstance(times, int) or not 1 <= times <= 100_000:
            raise DatasetError("generate.times must be a whole number from 1 to 100,000")
        text = generate.get("prefix", "") + generate["repeat"] * times + generate.get("suffix", "")
    else:
        text = raw.get("text")
    if not isinstance(text, str) or not text:
        raise DatasetError("needs a non-empty `text` or a `generate`")
    return text.replace(SPLIT, "")


def load(path: Path) -> list[Entry]:
    """The dataset, validated; DatasetError names the line that is wrong."""
    entries: list[Entry] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = orjson.loads(line)
            if not isinstance(raw, dict):
                raise DatasetError("not a JSON object")
            stage, labels = raw.get("stage"), raw.get("labels")
            if stage not in RAILS:
                raise DatasetError(f"stage must be one of {', '.join(RAILS)}")
            if not isinstance(labels, list) or not set(labels) <= set(RAILS[stage]):
                raise DatasetError(f"labels must be a list of: {', '.join(RAILS[stage])}")
            entities = raw.get("entities", [])
            if not isinstance(entities, list) or not set(entities) <= set(ENTITIES):
                raise DatasetError(f"entities must be a list of: {', '.join(ENTITIES)}")
            if entities and not set(labels) & set(SENSITIVE):
                raise DatasetError("lists entities but no sensitive-data rail")
            ident, kind = raw.get("id"), raw.get("kind")
            if not isinstance(ident, str) or ident in seen or not isinstance(kind, str):
                raise DatasetError("needs a unique string `id` and a string `kind`")
            seen.add(ident)
            entries.append(
                Entry(
                    ident,
                    stage,
                    kind,
                    frozenset(labels),
                    entry_text(raw),
                    frozenset(entities),
                    str(raw.get("note", "")),
                )
            )
        except (orjson.JSONDecodeError, DatasetError) as exc:
            raise DatasetError(f"{path}:{number}: {exc}") from exc
    return entries


@dataclass(slots=True)
class Outcome:
    """What one rail decided on one entry."""

    fired: bool
    reason: str | None


@dataclass(slots=True)
class Tally:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, expected: bool, got: bool) -> None:
        if expected and got:
            self.tp += 1
        elif got:
            self.fp += 1
        elif expected:
            self.fn += 1
        else:
            self.tn += 1

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p is not None and r is not None and p + r else None

    def figures(self) -> dict[str, Any]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


@dataclass(slots=True)
class Report:
    entries: list[Entry]
    outcomes: dict[tuple[str, str], Outcome] = field(default_factory=dict)  # (id, rail)
    seconds: float = 0.0


async def evaluate(entries: Sequence[Entry]) -> Report:
    guardrails = Guardrails(RailsConfig.parse_object(CONFIG))
    report = Report(list(entries))
    started = time.perf_counter()
    for entry in entries:
        stage = Stage(entry.stage)
        if stage is Stage.INPUT:
            ctx = CheckContext(
                user_text=entry.text,
                bot_text=None,
                messages=[{"role": "user", "content": entry.text}],
                context={},
                model="dataset",
            )
        else:
            question = "(the user's question)"
            ctx = CheckContext(
                user_text=question,
                bot_text=entry.text,
                messages=[{"role": "user", "content": question}],
                context={},
                model="dataset",
            )
        for rail in RAILS[entry.stage]:
            result = await guardrails.run_stage(stage, entry.text, ctx, [rail])
            info = result.activated[0].get("additional_info") if result.activated else None
            reason = info.get("reason") if info else None
            fired = result.blocked_by is not None or result.modified
            report.outcomes[(entry.id, rail)] = Outcome(fired, reason)
    report.seconds = time.perf_counter() - started
    return report


def entity_types(reason: str | None) -> set[str]:
    """The entity types a sensitive-data rail's reason names ('sensitive data: A, B')."""
    if not reason or ":" not in reason:
        return set()
    return {name.strip() for name in reason.split(":", 1)[1].split(",") if name.strip()}


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def clip(text: str, width: int) -> str:
    flat = " ".join(text.split()) or repr(text[:20])
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def summarise(report: Report, width: int) -> tuple[str, dict[str, Any]]:
    entries = report.entries
    per_rail = {rail: Tally() for rails in RAILS.values() for rail in rails}
    per_entry = Tally()
    micro = Tally()
    by_kind: dict[str, Tally] = {}
    wrong: list[tuple[str, str, Entry, Outcome]] = []
    for entry in entries:
        any_fired = False
        for rail in RAILS[entry.stage]:
            outcome = report.outcomes[(entry.id, rail)]
            expected = rail in entry.labels
            per_rail[rail].add(expected, outcome.fired)
            micro.add(expected, outcome.fired)
            any_fired |= outcome.fired
            if expected != outcome.fired:
                wrong.append(("FN" if expected else "FP", rail, entry, outcome))
        per_entry.add(bool(entry.labels), any_fired)
        by_kind.setdefault(entry.kind, Tally()).add(bool(entry.labels), any_fired)

    head = ["rail", "stage", "TP", "FP", "FN", "TN", "precision", "recall", "F1"]

    def row(name: str, stage: str, t: Tally) -> list[str]:
        counts = [str(t.tp), str(t.fp), str(t.fn), str(t.tn)]
        return [name, stage, *counts, ratio(t.precision), ratio(t.recall), ratio(t.f1)]

    rows = [head]
    for stage, rails in RAILS.items():
        rows += [row(rail, stage, per_rail[rail]) for rail in rails]
    rows.append(row("any rail of the stage (per entry)", "both", per_entry))
    rows.append(row("every rail decision (micro)", "both", micro))

    stages = Counter(e.stage for e in entries)
    out = [
        f"precision and recall of railguard's local rails on {len(entries)} labelled entries "
        f"({stages['input']} input, {stages['output']} output; "
        f"{sum(not e.labels for e in entries)} where no rail should fire), {report.seconds:.2f} s",
        "",
        table(rows),
    ]

    # per kind: how many entries of the kind any rail of their stage flagged
    kind_rows = [["kind", "entries", "flagged", "should be"]]
    for kind, t in sorted(by_kind.items()):
        total = t.tp + t.fp + t.fn + t.tn
        kind_rows.append([kind, str(total), str(t.tp + t.fp), str(t.tp + t.fn)])
    out += ["", "per kind of entry (flagged: any rail of its stage fired)", table(kind_rows)]

    # per entity type, for the sensitive-data rails
    expected_n: Counter[str] = Counter()
    found_n: Counter[str] = Counter()
    spurious_n: Counter[str] = Counter()
    for entry in entries:
        rail = SENSITIVE_IN if entry.stage == "input" else SENSITIVE_OUT
        named = entity_types(report.outcomes[(entry.id, rail)].reason)
        for entity in entry.entities:
            expected_n[entity] += 1
            found_n[entity] += entity in named
        for entity in named - entry.entities:
            spurious_n[entity] += 1
    entity_rows = [["entity", "entries with it", "found", "recall", "named where not listed"]]
    for entity in ENTITIES:
        if expected_n[entity] or spurious_n[entity]:
            n = expected_n[entity]
            entity_rows.append(
                [
                    entity,
                    str(n),
                    str(found_n[entity]),
                    ratio(found_n[entity] / n if n else None),
                    str(spurious_n[entity]),
                ]
            )
    out += ["", "detect sensitive data, per entity type (input and output)", table(entity_rows)]

    out += [
        "",
        f"misclassified ({len(wrong)}; FN: should have fired and did not, FP: fired "
        "and should not have):",
    ]
    for verdict, rail, entry, outcome in sorted(wrong, key=lambda w: (w[1], w[0], w[2].id)):
        why = f" [{clip(outcome.reason, 60)}]" if outcome.fired and outcome.reason else ""
        out.append(f"  {verdict} {rail:<33} {entry.id:<8} {entry.kind:<18}{why}")
        out.append(f"       {clip(entry.text, width)}")

    figures = {
        "entries": len(entries),
        "per_rail": {rail: t.figures() for rail, t in per_rail.items()},
        "per_entry": per_entry.figures(),
        "micro": micro.figures(),
        "per_entity": {
            e: {"expected": expected_n[e], "found": found_n[e], "spurious": spurious_n[e]}
            for e in ENTITIES
        },
        "misclassified": [
            {"verdict": v, "rail": r, "id": e.id, "kind": e.kind, "reason": o.reason}
            for v, r, e, o in wrong
        ],
    }
    return "\n".join(out), figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="precision and recall of the local rails")
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--width", type=int, default=110, help="characters of text shown")
    args = parser.parse_args(argv)
    try:
        entries = load(args.dataset)
    except (OSError, DatasetError) as exc:
        print(f"precision_recall: {exc}", file=sys.stderr)
        return 2
    report = asyncio.run(evaluate(entries))
    text, figures = summarise(report, args.width)
    print(text)
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
