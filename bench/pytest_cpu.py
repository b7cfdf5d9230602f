"""Where the test suite's CPU goes: a pytest plugin that records, for each test, the machine's
CPU-seconds (all processes: Ray's workers and actors, subprocesses) and the wall seconds from
its setup to its teardown; then a summary by module.

    PYTHONPATH=bench python -m pytest -q -n0 -p pytest_cpu        # writes pytest_cpu.jsonl
    python bench/pytest_cpu.py pytest_cpu.jsonl                     # the table

Run it with `-n0` on an idle machine: with two xdist workers each test's CPU figure also holds
what the other worker spent meanwhile (its wall time is still right). `PYTEST_CPU_LOG` names
another output file.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict

_started: dict[str, tuple[float, float]] = {}


def machine_cpu_seconds() -> float:
    """user + nice + system + irq + softirq + steal of every CPU since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return sum(int(x) for x in fields[:3] + fields[5:8]) / os.sysconf("SC_CLK_TCK")


def pytest_runtest_setup(item) -> None:
    _started[item.nodeid] = (machine_cpu_seconds(), time.monotonic())


def pytest_runtest_logfinish(nodeid, location) -> None:
    if nodeid not in _started:
        return
    cpu, wall = _started.pop(nodeid)
    with open(os.environ.get("PYTEST_CPU_LOG", "pytest_cpu.jsonl"), "a") as f:
        f.write(json.dumps({"id": nodeid, "cpu": round(machine_cpu_seconds() - cpu, 2),
                            "wall": round(time.monotonic() - wall, 2)}) + "\n")


def summarize(path: str, top: int = 25) -> None:
    rows = [json.loads(line) for line in open(path)]
    by_module: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for r in rows:
        m = by_module[r["id"].split("::")[0]]
        m[0] += r["cpu"]
        m[1] += r["wall"]
        m[2] += 1
    cpu, wall = sum(r["cpu"] for r in rows), sum(r["wall"] for r in rows)
    print(f"{len(rows)} tests: {cpu:.0f} CPU-s, {wall:.0f} s of test wall time")
    print(f"{'module':45s} {'tests':>5s} {'CPU-s':>7s} {'wall s':>7s} {'share':>6s}")
    for name, (c, w, n) in sorted(by_module.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{name:45s} {n:5d} {c:7.1f} {w:7.1f} {c / cpu:6.1%}")


if __name__ == "__main__":
    summarize(sys.argv[1] if len(sys.argv) > 1 else "pytest_cpu.jsonl")
