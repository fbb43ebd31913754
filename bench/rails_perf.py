"""railguard's rails benchmark: local rails in-process, model-backed rails over HTTP.

Run it from the repository root (``make bench`` runs it after ``bench/run.py``):

    .venv/bin/python bench/rails_perf.py            # full run, about 3 minutes
    .venv/bin/python bench/rails_perf.py --quick    # smaller samples, under a minute
    .venv/bin/python bench/rails_perf.py --json out.json

(Not ``bench/rails.py``: run as a script, that name would shadow the ``rails`` package.)

What it starts (stopped on exit, Ctrl-C or error), pinned as ``bench/run.py`` pins them:

* ``bench/fake_llm.py`` on the second CPU, with slow models (``--model``): check models
  answering ``No`` (self check) or ``safe`` (Llama Guard) after 5, 10 or 20 ms, and a
  main model answering after 30 ms; any other model is answered at once;
* railguard on the first CPU with the check cache off (``--check-cache-size 0``: every
  check is a real call), on a temporary config root (`CONFIGS`).

What it measures, always against a direct call measured in the same run:

a. each local rail alone, in this process, through the engine (``Guardrails.run_stage``
   on a config holding only that rail): input rails on a 4 KB user message, output rails
   on a 4 KB answer (`harmless_message`, `harmless_answer`: no rail fires on them);
   p50 (the targets) and p99. Then all of them together (``bench/precision_recall.py``'s config: the
   input stage on the message and the output stage on the answer, per iteration), and
   the same config over HTTP (config ``local`` against ``none``, 4 KB message). For
   scale, the direct call to the fake upstream (small body) at concurrency 1;
b. one model-backed rail: ``self check input`` against a check model at 5 ms. railguard's
   overhead per check = (request through railguard with the rail) - (the same request
   with no rails) - (the check model called directly with the prompt railguard sends it).
   For context, what railguard adds with no rails to a main model that takes as long
   (waiting on a slow upstream leaves the CPU idle, and waking up has a cost of its own);
c. two model rails (``self check input`` at 10 ms, ``llama guard check input`` at 20 ms)
   with ``rails.input.parallel: true``: what they add to a request, against the slower
   check called directly. The target: no more than each check's own overhead budget
   (1 ms, as in b) over the slower, where running them one after the other adds the
   faster check's whole time; and the same two run one after the other, for contrast;
d. speculative generation: a main model at 30 ms and ``self check input`` at 20 ms,
   without and with ``rails.input.speculative_generation: true``; the saving, against
   the ideal (the check's whole time hidden behind the main call).

HTTP figures come from sequential requests on keep-alive raw sockets, the targets
alternating in blocks so drift hits all of them alike. Differences are of p50s (and
means, as context). The exit status is 0 whatever the figures; 2 means the setup failed.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import uvloop
import yaml
from fake_llm import ANSWER
from httpclient import BenchError, RawClient, build_request, summary
from precision_recall import CONFIG as LOCAL_CONFIG  # also puts the repository on sys.path
from run import (
    BENCH,
    CHAT_PATH,
    HOST,
    SMALL_BODY,
    SMALL_MESSAGE,
    Processes,
    Results,
    alternate,
    chat_body,
    free_port,
    ms,
    no_gc,
    report,
    run_phases,
    run_session,
    signed,
    us,
    wait_ready,
    warm,
)
from sysload import CpuWatch

from rails.base import CheckContext, Stage
from rails.config import RailsConfig
from rails.guardrails import Guardrails

# Targets are on p50s; p99s are context (a burst of other work on the CPU doubles them).
TARGET_LOCAL = 0.2e-3  # each local rail
TARGET_LOCAL_ALL = 1e-3  # all local rails of the config together
TARGET_CHECK_OVERHEAD = 1e-3  # railguard's own cost per model check
TARGET_PARALLEL = 2e-3  # two parallel checks: total - the slower one, each check's 1 ms budget

SELF_CHECK_MS = 5.0
PARALLEL_MS = (10.0, 20.0)  # self check, llama guard
MAIN_MS, SPEC_CHECK_MS = 30.0, 20.0
MAIN_MODEL = "main-30"
# name -> (milliseconds, answer) for bench/fake_llm.py --model
SLOW_MODELS = {
    "check-5": (SELF_CHECK_MS, "No"),
    "main-5": (SELF_CHECK_MS, ANSWER),  # a main model as slow as that check, for context
    "check-10": (PARALLEL_MS[0], "No"),
    "guard-20": (PARALLEL_MS[1], "safe"),
    "check-20": (SPEC_CHECK_MS, "No"),
    MAIN_MODEL: (MAIN_MS, ANSWER),
}

SELF_CHECK = "self check input"
LLAMA_GUARD = "llama guard check input"


def _self_check_model(name: str) -> dict[str, Any]:
    return {"type": "self_check_input", "engine": "openai", "model": name}


def _two_checks(parallel: bool) -> dict[str, Any]:
    return {
        "models": [
            _self_check_model("check-10"),
            {"type": "llama_guard", "engine": "openai", "model": "guard-20"},
        ],
        "rails": {"input": {"flows": [SELF_CHECK, LLAMA_GUARD], "parallel": parallel}},
    }


def _speculative(enabled: bool) -> dict[str, Any]:
    return {
        "models": [_self_check_model("check-20")],
        "rails": {"input": {"flows": [SELF_CHECK], "speculative_generation": enabled}},
    }


CONFIGS: dict[str, dict[str, Any]] = {
    "none": {"models": [], "rails": {}},
    "local": LOCAL_CONFIG,
    "self_check": {
        "models": [_self_check_model("check-5")],
        "rails": {"input": {"flows": [SELF_CHECK]}},
    },
    "parallel": _two_checks(parallel=True),
    "sequential": _two_checks(parallel=False),
    "spec_off": _speculative(False),
    "spec_on": _speculative(True),
}

# a local rail alone: (flow, stage); the settings are LOCAL_CONFIG's
LOCAL_RAILS = (
    ("regex check input", Stage.INPUT),
    ("detect sensitive data on input", Stage.INPUT),
    ("mask sensitive data on input", Stage.INPUT),
    ("context bloat detection on input", Stage.INPUT),
    ("regex check output", Stage.OUTPUT),
    ("detect sensitive data on output", Stage.OUTPUT),
    ("mask sensitive data on output", Stage.OUTPUT),
    ("injection detection", Stage.OUTPUT),
)

_ANSWER_PARTS = (
    "Here is a plan for the week. Start in the north with two quiet beach days, then take the "
    "regional train south; it runs every hour and has room for luggage.",
    "For the museum visits, book the morning slots: the queues are shorter and the children "
    "will still have energy. Most museums close on Mondays, so plan the hikes for that day.",
    "Markets open early, usually from seven until one. Bring small change, and try the "
    "custard tarts, the grilled sardines and the local cheese with quince paste.",
    "If you want to keep track of the budget, a short script helps:\n\n"
    "```python\nfrom dataclasses import dataclass\n\n\n@dataclass\nclass Expense:\n"
    "    day: int\n    item: str\n    amount: float\n\n\ndef total(expenses: list[Expense]) "
    "-> float:\n    return round(sum(e.amount for e in expenses), 2)\n```\n",
    "For the vegetarian in the group, most restaurants offer vegetable soups, bean stews and "
    "salads; ask for the dish of the day without meat, which kitchens are used to preparing.",
    "The cliffs in the south are best at sunset. Wear proper shoes on the trails, carry water, "
    "and keep the children away from the edges where the ground is loose after rain.",
)


_WORDS = (
    "we our family would like to plan a quiet week by the coast in early autumn with two "
    "children one grandparent and a small dog looking for short walks beaches markets "
    "museums trains buses guesthouses lunches dinners bread fruit cheese fish soup cliffs "
    "sunset harbour village castle garden river bridge church square bakery ferry island "
    "lighthouse bicycle picnic swim kayak boat tour guide map ticket booking price budget "
    "morning afternoon evening weekend Monday Tuesday Friday rain wind sun shade jacket "
    "shoes luggage station platform timetable connection delay queue entrance opening "
    "hours free cheaper quieter busier nearby farther easy steep flat long short best "
    "worst favourite local fresh grilled sweet salty please suggest recommend avoid "
    "compare explain whether which where when how many much often also but because so"
)
_VOCABULARY = _WORDS.split()


def harmless_message(size: int = 4096) -> str:
    """About `size` characters of a user's trip-planning message: sentences of ordinary
    words in a fixed pseudo-random order, so that none of the context-bloat measures
    (entropy, runs, repeated word 3-grams) mistakes it for padding, as repeated
    sentences would be."""
    rng = random.Random(4096)
    sentences: list[str] = []
    length = 0
    while length < size:
        sentence = " ".join(rng.sample(_VOCABULARY, rng.randint(8, 16))).capitalize() + "."
        sentences.append(sentence)
        length += len(sentence) + 1
    return " ".join(sentences)[:size]


def harmless_answer(size: int = 4096) -> str:
    """About `size` characters of an ordinary assistant answer, prose and a code block,
    that no local rail fires on."""
    parts: list[str] = []
    length = 0
    index = 0
    while length < size:
        part = _ANSWER_PARTS[index % len(_ANSWER_PARTS)]
        parts.append(part)
        length += len(part) + 2
        index += 1
    return "\n\n".join(parts)[:size]


@dataclass(frozen=True, slots=True)
class Plan:
    engine_iterations: int  # per local rail, in-process
    direct_samples: int  # the direct call and config none, small body
    local_samples: int  # config local vs none over HTTP
    check_samples: int  # b: per target
    slow_samples: int  # c and d: per target
    warmup: int


FULL = Plan(5000, 3000, 3000, 1000, 300, 50)
QUICK = Plan(1000, 500, 500, 200, 60, 20)


def config_for(flow: str, stage: Stage) -> dict[str, Any]:
    """LOCAL_CONFIG with one rail: `flow` on `stage`, nothing on the other stage."""
    config = copy.deepcopy(LOCAL_CONFIG)
    config["rails"]["input"]["flows"] = [flow] if stage is Stage.INPUT else []
    config["rails"]["output"]["flows"] = [flow] if stage is Stage.OUTPUT else []
    return config


def local_rails(plan: Plan) -> dict[str, dict[str, float]]:
    """Each local rail alone, then all of LOCAL_CONFIG's; seconds per check (or request)."""
    message = harmless_message()
    answer = harmless_answer()
    ctx = CheckContext(
        user_text=message,
        bot_text=answer,
        messages=[{"role": "user", "content": message}],
        context={},
        model="bench-model",
    )

    async def measure(
        guardrails: Guardrails, stages: Sequence[tuple[Stage, str]], iterations: int
    ) -> list[float]:
        clock = time.perf_counter
        samples = [0.0] * iterations
        for index in range(iterations):
            t0 = clock()
            for stage, text in stages:
                result = await guardrails.run_stage(stage, text, ctx)
                if result.blocked_by or result.modified:
                    raise BenchError(f"{result.activated} fired on the benchmark text")
            samples[index] = clock() - t0
        return samples

    runs: list[tuple[str, Guardrails, list[tuple[Stage, str]]]] = []
    for flow, stage in LOCAL_RAILS:
        guardrails = Guardrails(RailsConfig.parse_object(config_for(flow, stage)))
        runs.append((flow, guardrails, [(stage, message if stage is Stage.INPUT else answer)]))
    everything = Guardrails(RailsConfig.parse_object(LOCAL_CONFIG))
    runs.append(("all", everything, [(Stage.INPUT, message), (Stage.OUTPUT, answer)]))

    async def all_runs() -> dict[str, dict[str, float]]:
        figures = {}
        for name, guardrails, stages in runs:
            await measure(guardrails, stages, min(500, plan.engine_iterations))
            samples = await measure(guardrails, stages, plan.engine_iterations)
            figures[name] = summary(samples)
        return figures

    with no_gc():
        return uvloop.run(all_runs())


def pct_of(value: float, base: float) -> str:
    return f"{value / base:.1%} of a direct call" if base > 0 else ""


class RailsBench:
    def __init__(self, plan: Plan, procs: Processes, workdir: Path) -> None:
        self.plan = plan
        self.procs = procs
        self.workdir = workdir
        self.results = Results()
        self.watch = CpuWatch(lambda: [proc.pid for _, proc in procs.started])
        cpus = sorted(os.sched_getaffinity(0))
        self.pinned = len(cpus) >= 2
        self.proxy_cpu: int | None = cpus[0] if self.pinned else None
        self.load_cpu: int | None = cpus[1] if self.pinned else None
        self.upstream_port = 0
        self.proxy_port = 0
        self.direct_p50 = math.nan

    def log(self, message: str) -> None:
        print(f"[rails bench] {message}", file=sys.stderr, flush=True)

    # setup

    def start(self) -> None:
        if self.load_cpu is not None:
            os.sched_setaffinity(0, {self.load_cpu})
        else:
            self.log("fewer than 2 CPUs: nothing is pinned; figures will be noisier")
        configs = self.workdir / "configs"
        for config_id, content in CONFIGS.items():
            folder = configs / config_id
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.yml").write_text(yaml.safe_dump(content, sort_keys=False))
        self.upstream_port = free_port()
        slow = [
            arg
            for name, (delay, answer) in SLOW_MODELS.items()
            for arg in ("--model", name, f"{delay:g}", answer)
        ]
        command = [sys.executable, str(BENCH / "fake_llm.py"), "--port", str(self.upstream_port)]
        upstream = self.procs.start("upstream", [*command, *slow], self.load_cpu)
        wait_ready(self.procs, "upstream", upstream, self.upstream_port, self.direct(SMALL_BODY))
        self.proxy_port = free_port()
        proxy = self.procs.start(
            "railguard",
            [
                sys.executable,
                "-m",
                "proxy.cli",
                "serve",
                "--config",
                str(configs),
                "--upstream",
                f"http://{HOST}:{self.upstream_port}/v1",
                "--port",
                str(self.proxy_port),
                "--default-config-id",
                "none",
                "--check-cache-size",
                "0",
                "--log-level",
                "WARNING",
            ],
            self.proxy_cpu,
        )
        health = f"GET /health HTTP/1.1\r\nHost: {HOST}:{self.proxy_port}\r\n\r\n".encode()
        wait_ready(self.procs, "railguard", proxy, self.proxy_port, health)
        self.results.meta.update(
            {
                "pinning": (
                    f"railguard on CPU {self.proxy_cpu}; fake models and this process on "
                    f"CPU {self.load_cpu}"
                    if self.pinned
                    else "unpinned"
                ),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            }
        )

    def direct(self, body: bytes) -> bytes:
        return build_request(HOST, self.upstream_port, CHAT_PATH, body)

    def proxied(self, config_id: str, content: str = SMALL_MESSAGE, **extra: Any) -> bytes:
        body = chat_body(content, guardrails={"config_id": config_id}, **extra)
        return build_request(HOST, self.proxy_port, CHAT_PATH, body)

    def check_body(self, config_id: str, task: str, check_model: str, **extra: Any) -> bytes:
        """A direct request to a check model with the prompt railguard sends it for
        `config_id` (read from the log of one request through railguard)."""
        body = chat_body(
            SMALL_MESSAGE,
            guardrails={"config_id": config_id, "options": {"log": {"llm_calls": True}}},
            **extra,
        )
        with RawClient(HOST, self.proxy_port) as client:
            got = client.send(build_request(HOST, self.proxy_port, CHAT_PATH, body))
        if got.status != 200 or ANSWER.encode() not in got.body:
            raise BenchError(f"config {config_id!r} answered {got.status}: {got.body[:300]!r}")
        calls = orjson.loads(got.body)["guardrails"]["log"]["llm_calls"]
        prompts = [c["prompt"] for c in calls if c["task"] == task and not c["from_cache"]]
        if not prompts:
            raise BenchError(f"config {config_id!r} made no {task} call: {calls}")
        request = {
            "model": check_model,
            "messages": [{"role": "user", "content": prompts[0]}],
            "temperature": 0.001,
        }
        return self.direct(orjson.dumps(request))

    def timed_targets(
        self, targets: Sequence[tuple[str, bytes, bytes]], samples: int, block: int
    ) -> dict[str, dict[str, float]]:
        """`samples` requests per target (name, request, bytes the answer must hold),
        alternating in blocks after a warm-up."""
        clients = [
            RawClient(HOST, self.upstream_port if name.startswith("direct") else self.proxy_port)
            for name, _, _ in targets
        ]
        try:
            runs = [
                (client, request, check)
                for client, (_, request, check) in zip(clients, targets, strict=True)
            ]
            warm(runs, self.plan.warmup)
            measured = alternate(runs, samples, block)
        finally:
            for client in clients:
                client.close()
        return {name: summary(s) for (name, _, _), s in zip(targets, measured, strict=True)}

    # a. local rails

    def local(self) -> None:
        plan = self.plan
        answer = ANSWER.encode()
        self.log(f"a. direct call and config none, small body: {plan.direct_samples} each")
        base = self.timed_targets(
            [
                ("direct", self.direct(SMALL_BODY), answer),
                ("none", self.proxied("none"), answer),
            ],
            plan.direct_samples,
            250,
        )
        self.direct_p50 = d = base["direct"]["p50"]
        n = base["none"]["p50"]
        self.results.figures["baseline"] = base
        self.results.add("context: one request, no rails, c=1, p50", ms(d), ms(n), signed(n - d))
        self.log(f"a. local rails in-process, 4 KB texts: {plan.engine_iterations} checks each")
        figures = local_rails(plan)
        self.results.figures["local_rails"] = figures
        for flow, stage in LOCAL_RAILS:
            f = figures[flow]
            self.results.add(
                f"{flow}, alone, 4 KB {'message' if stage is Stage.INPUT else 'answer'}",
                "",
                f"p50 {us(f['p50'])}, p99 {us(f['p99'])}",
                pct_of(f["p50"], d),
                "p50 ≤ 200 µs",
                f["p50"] <= TARGET_LOCAL,
            )
        f = figures["all"]
        self.results.add(
            "all 6 local rails (input on message + output on answer)",
            "",
            f"p50 {us(f['p50'])}, p99 {us(f['p99'])}",
            pct_of(f["p50"], d),
            "p50 ≤ 1 ms",
            f["p50"] <= TARGET_LOCAL_ALL,
        )
        message = harmless_message()
        self.log(f"a. config local vs none over HTTP, 4 KB message: {plan.local_samples} each")
        http = self.timed_targets(
            [
                ("none", self.proxied("none", message), answer),
                ("local", self.proxied("local", message), answer),
            ],
            plan.local_samples,
            250,
        )
        self.results.figures["local_http"] = http
        n, loc = http["none"]["p50"], http["local"]["p50"]
        self.results.add(
            "all local rails over HTTP, 4 KB msg, p50 (cfg none → local)",
            ms(n),
            ms(loc),
            signed(loc - n),
            "added ≤ 1 ms",
            loc - n <= TARGET_LOCAL_ALL,
        )

    # b. one model-backed rail

    def one_check(self) -> None:
        plan = self.plan
        self.log(
            f"b. self check input at {SELF_CHECK_MS:g} ms: {plan.check_samples} requests per target"
        )
        check = self.check_body("self_check", "self_check_input", "check-5")
        slow_main = chat_body(SMALL_MESSAGE, model="main-5")
        answer = ANSWER.encode()
        got = self.timed_targets(
            [
                ("direct check", check, b'"content":"No"'),
                ("none", self.proxied("none"), answer),
                ("self_check", self.proxied("self_check"), answer),
                ("direct main-5", self.direct(slow_main), answer),
                ("none, main-5", self.proxied("none", model="main-5"), answer),
            ],
            plan.check_samples,
            50,
        )
        self.results.figures["one_check"] = got
        c, n, r = got["direct check"], got["none"], got["self_check"]
        m5, n5 = got["direct main-5"]["p50"], got["none, main-5"]["p50"]
        self.results.add(
            f"context: no rails, main model at {SELF_CHECK_MS:g} ms, p50 (direct: main)",
            ms(m5),
            ms(n5),
            signed(n5 - m5),
        )
        added = r["p50"] - n["p50"]
        overhead = added - c["p50"]
        self.results.add(
            f"self check input, check model at {SELF_CHECK_MS:g} ms, p50 (direct: the check)",
            ms(c["p50"]),
            ms(r["p50"]),
            signed(added) + " over no rails",
        )
        self.results.add(
            "railguard's overhead per model check, p50 (rail - none - check)",
            "",
            "",
            signed(overhead),
            "≤ 1 ms",
            overhead <= TARGET_CHECK_OVERHEAD,
        )
        self.results.add(
            "railguard's overhead per model check, mean",
            "",
            "",
            signed(r["mean"] - n["mean"] - c["mean"]),
        )

    # c. two model rails in parallel

    def parallel(self) -> None:
        plan = self.plan
        fast, slow = PARALLEL_MS
        self.log(
            f"c. two checks ({fast:g} and {slow:g} ms), parallel and sequential: "
            f"{plan.slow_samples} requests per target"
        )
        first = self.check_body("parallel", "self_check_input", "check-10")
        second = self.check_body("parallel", "llama_guard_check_input", "guard-20")
        answer = ANSWER.encode()
        got = self.timed_targets(
            [
                ("direct check 1", first, b'"content":"No"'),
                ("direct check 2", second, b'"content":"safe"'),
                ("none", self.proxied("none"), answer),
                ("parallel", self.proxied("parallel"), answer),
                ("sequential", self.proxied("sequential"), answer),
            ],
            plan.slow_samples,
            20,
        )
        self.results.figures["two_checks"] = got
        c1, c2, n = got["direct check 1"]["p50"], got["direct check 2"]["p50"], got["none"]["p50"]
        par = got["parallel"]["p50"] - n
        seq = got["sequential"]["p50"] - n
        slower = max(c1, c2)
        self.results.add(
            f"2 model rails, parallel ({fast:g} + {slow:g} ms), added, p50 (direct: slower)",
            ms(slower),
            ms(par),
            signed(par - slower) + " over the slower",
            "≤ 2 ms over the slower",
            par - slower <= TARGET_PARALLEL,
        )
        self.results.add(
            "same 2 rails, sequential, added, p50 (direct: both checks)",
            ms(c1 + c2),
            ms(seq),
            signed(seq - c1 - c2) + " over both",
        )

    # d. speculative generation

    def speculative(self) -> None:
        plan = self.plan
        self.log(
            f"d. speculative generation, main {MAIN_MS:g} ms, check {SPEC_CHECK_MS:g} ms: "
            f"{plan.slow_samples} requests per target"
        )
        check = self.check_body("spec_off", "self_check_input", "check-20", model=MAIN_MODEL)
        main = self.direct(chat_body(SMALL_MESSAGE, model=MAIN_MODEL))
        answer = ANSWER.encode()
        got = self.timed_targets(
            [
                ("direct main", main, answer),
                ("direct check", check, b'"content":"No"'),
                ("none", self.proxied("none", model=MAIN_MODEL), answer),
                ("spec_off", self.proxied("spec_off", model=MAIN_MODEL), answer),
                ("spec_on", self.proxied("spec_on", model=MAIN_MODEL), answer),
            ],
            plan.slow_samples,
            20,
        )
        self.results.figures["speculative"] = got
        m, c = got["direct main"]["p50"], got["direct check"]["p50"]
        n, off, on = got["none"]["p50"], got["spec_off"]["p50"], got["spec_on"]["p50"]
        self.results.add(
            f"no rails, main model at {MAIN_MS:g} ms, p50 (direct: main)",
            ms(m),
            ms(n),
            signed(n - m),
        )
        self.results.add(
            f"input check {SPEC_CHECK_MS:g} ms, speculative off, p50 (direct: main + check)",
            ms(m + c),
            ms(off),
            signed(off - m - c),
        )
        self.results.add(
            "same, speculative_generation: true, p50 (direct: the longer)",
            ms(max(m, c)),
            ms(on),
            signed(on - max(m, c)),
        )
        self.results.add(
            "saving from speculative generation, p50 (direct: the check's time)",
            ms(min(m, c)),
            ms(off - on),
            signed(off - on - min(m, c)) + " vs ideal",
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="railguard's rails against direct calls")
    parser.add_argument("--quick", action="store_true", help="smaller samples, under a minute")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.monotonic()

    def session(procs: Processes, workdir: Path) -> int:
        bench = RailsBench(plan, procs, workdir)
        bench.log(f"{'quick' if args.quick else 'full'} run; starting the fake and railguard")
        bench.start()
        run_phases(
            bench.watch,
            (
                ("a. local rails", bench.local),
                ("b. one check", bench.one_check),
                ("c. parallel", bench.parallel),
                ("d. speculative", bench.speculative),
            ),
        )
        report(
            "railguard rails benchmark", bench.results, bench.watch, args.quick, started, args.json
        )
        return 0

    return run_session("rails bench", "railguard-rails-bench-", session)


if __name__ == "__main__":
    sys.exit(main())
