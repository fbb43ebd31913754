"""The labelled rails dataset and `bench/precision_recall.py`: the dataset is well formed
and big enough, and the script runs the local rails over it and prints its tables.

The figures themselves are the script's to report; this only checks a sanity floor, far
below what the rails reach, so that a rail wired wrongly (firing on everything, or never)
fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT / "tests" / "data" / "rails_dataset.jsonl"
SCRIPT = ROOT / "bench" / "precision_recall.py"
RAILS = {
    "input": {
        "regex check input",
        "detect sensitive data on input",
        "context bloat detection on input",
    },
    "output": {"regex check output", "detect sensitive data on output", "injection detection"},
}
KINDS = {
    "benign",
    "lookalike",
    "jailbreak",
    "prompt_injection",
    "pii",
    "secret",
    "bloat",
    "code_injection",
    "sqli",
    "template_injection",
    "xss",
    "jailbreak_output",
}


def entries() -> list[dict]:
    return [json.loads(line) for line in DATASET.read_text(encoding="utf-8").splitlines() if line]


def test_dataset_is_well_formed_and_big_enough() -> None:
    data = entries()
    assert len(data) >= 200
    assert len({e["id"] for e in data}) == len(data)
    for entry in data:
        assert entry["stage"] in RAILS, entry["id"]
        assert set(entry["labels"]) <= RAILS[entry["stage"]], entry["id"]
        assert entry["kind"] in KINDS, entry["id"]
        assert ("text" in entry) != ("generate" in entry), entry["id"]
        if entry["kind"] in ("benign", "lookalike"):
            assert not entry["labels"], entry["id"]
        elif not entry["labels"]:
            assert entry.get("note"), f"{entry['id']}: say why nothing should fire"
    kinds = Counter(e["kind"] for e in data)
    assert kinds["benign"] + kinds["lookalike"] >= 60
    labels = Counter(label for e in data for label in e["labels"])
    for rails in RAILS.values():
        for rail in rails:
            assert labels[rail] >= 5, rail


def test_script_prints_the_tables(tmp_path: Path) -> None:
    figures_path = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", str(figures_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"on {len(entries())} labelled entries" in out
    for heading in ("rail", "stage", "TP", "FP", "FN", "TN", "precision", "recall", "F1"):
        assert heading in out.splitlines()[2]
    for rails in RAILS.values():
        for rail in rails:
            assert any(line.startswith(rail + " ") for line in out.splitlines()), rail
    assert "any rail of the stage (per entry)" in out
    assert "per entity type" in out
    assert "misclassified (" in out

    figures = json.loads(figures_path.read_text())
    assert figures["entries"] == len(entries())
    overall = figures["per_entry"]
    assert overall["tp"] + overall["fp"] + overall["fn"] + overall["tn"] == len(entries())
    # sanity floor only: every rail catches something and does not fire on everything
    assert overall["precision"] > 0.5 and overall["recall"] > 0.5
    for rail, tally in figures["per_rail"].items():
        assert tally["tp"] > 0, rail
        assert tally["tn"] > tally["fp"], rail


def test_script_rejects_a_bad_dataset(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "x", "stage": "input", "kind": "benign", "labels": ["injection detection"],'
        ' "text": "hi"}\n'
    )
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dataset", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "bad.jsonl:1" in done.stderr and "labels must be" in done.stderr
