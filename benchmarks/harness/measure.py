"""Measuring processes and the machine, from ``/proc`` and ``getrusage`` (Linux, stdlib only).

- this process: ``proc_status_kib`` / ``reset_peak_rss`` (RSS and its peak), ``cpu_seconds``;
- other processes: ``proc_cpu_seconds``, ``child_pids``, ``tree_cpu_seconds`` (a daemon and its
  workers);
- the whole machine: ``host_busy_seconds`` and the idle-machine gate ``QuietGate``;
- ``percentiles`` of a list of timings.
"""

from __future__ import annotations

import os
import resource
import statistics
import time

QUIET_CORES = 0.2


def proc_status_kib() -> dict[str, int]:
    """VmRSS and VmHWM of this process in KiB (Linux)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def host_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, all processes), from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait
    busy = sum(fields[:3]) + sum(fields[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), None when gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """utime + stime of process ``pid`` so far (all its threads), from /proc; 0 when it is gone.

    With ``reaped_children``, also cutime + cstime: the CPU of its children that exited and
    that it waited for (a crashed worker's CPU stays counted this way).
    """
    fields = _proc_stat(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The live children of ``pid`` (of all its threads), from ``/proc/PID/task/*/children``."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                out += [int(x) for x in fh.read().split()]
        except (OSError, ValueError):
            continue
    return sorted(set(out))


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds per process of ``pid``'s process tree: ``pid`` itself (with its reaped children)
    and every live descendant (with theirs). Sum the values for the tree's total."""
    out: dict[int, float] = {}
    todo = [pid]
    while todo and len(out) < 1000:
        p = todo.pop()
        if p in out:
            continue
        out[p] = proc_cpu_seconds(p, reaped_children=True)
        todo += child_pids(p)
    return out


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean/min of ``values`` (same unit as the input)."""
    if not values:
        return {"n": 0}
    if len(values) == 1:
        v = values[0]
        return {"n": 1, "min": v, "p50": v, "p95": v, "p99": v, "max": v, "mean": v}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"n": len(values), "min": min(values), "p50": q[49], "p95": q[94], "p99": q[98],
            "max": max(values), "mean": statistics.fmean(values)}


class QuietGate:
    """Before each timed run, wait until the machine is idle (others' load is noise).

    Waits for two consecutive 0.5 s windows with under ``QUIET_CORES`` cores busy, spending
    at most ``budget`` seconds over the whole benchmark; after that runs start regardless.
    """

    def __init__(self, budget: float) -> None:
        self.remaining = budget
        self.waited = 0.0

    def wait(self) -> bool:
        quiet_windows = 0
        while True:
            if self.remaining <= 0:
                return False
            start, busy = time.perf_counter(), host_busy_seconds()
            time.sleep(0.5)
            elapsed = time.perf_counter() - start
            self.remaining -= elapsed
            self.waited += elapsed
            quiet_windows = quiet_windows + 1 if (host_busy_seconds() - busy) / elapsed < QUIET_CORES else 0
            if quiet_windows >= 2:
                return True
