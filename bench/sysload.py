"""How much CPU the rest of the machine used while the benchmark ran (Linux /proc).

The benchmark owns both CPUs of a small machine; anything else running at the same time
(a test suite, a build, a noisy VM neighbour) shows up as tail latency that is not
railguard's. `CpuWatch` compares the machine's busy time with the CPU time of the
benchmark's own processes over each phase, and reads the hypervisor's steal time, so
the report can say when a figure was taken on a busy machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

_TICK = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


@dataclass(frozen=True, slots=True)
class _Snapshot:
    wall: float
    busy: float  # seconds of user, nice, system, irq and softirq on all CPUs
    steal: float
    ours: float  # seconds of CPU used by the benchmark's processes


@dataclass(frozen=True, slots=True)
class PhaseLoad:
    phase: str
    seconds: float
    foreign: float  # other processes' CPU, as a fraction of one CPU
    steal: float  # stolen by the hypervisor, as a fraction of one CPU


def _machine() -> tuple[float, float] | None:
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...; loopback networking is
    # partly softirq time, which the kernel also charges to the benchmark's processes
    user, nice, system, _, _, irq, softirq, steal = (int(v) / _TICK for v in fields[1:9])
    return user + nice + system + irq + softirq, steal


def _process(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # after the command name: state is field 3, utime field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / _TICK


class CpuWatch:
    """Per-phase foreign CPU; `pids` returns the servers' pids (the benchmark adds itself
    and the children it has waited for)."""

    def __init__(self, pids: Callable[[], Sequence[int]]) -> None:
        self.pids = pids
        self.phases: list[PhaseLoad] = []

    def _snapshot(self) -> _Snapshot | None:
        machine = _machine()
        if machine is None:
            return None
        me = os.times()
        ours = me.user + me.system + me.children_user + me.children_system
        ours += sum(_process(pid) for pid in self.pids())
        return _Snapshot(time.monotonic(), machine[0], machine[1], ours)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = self._snapshot()
        yield
        end = self._snapshot()
        if start is None or end is None:
            return
        seconds = end.wall - start.wall
        if seconds <= 0:
            return
        foreign = max(0.0, (end.busy - start.busy) - (end.ours - start.ours)) / seconds
        self.phases.append(PhaseLoad(name, seconds, foreign, (end.steal - start.steal) / seconds))
