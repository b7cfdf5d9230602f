"""Which kinds of process spend a command's CPU: samples every process's CPU time and title
(/proc/PID/stat and cmdline, ~5 times a second) while COMMAND runs, then sums the CPU-seconds by
kind (Ray's daemons, Ray Data's actors, Ray Train's workers, tsa's subprocesses, pytest).

    python bench/proc_cpu.py -- python -m pytest -q -n0 tests/test_train_ddp.py
    python bench/proc_cpu.py --interval 0.1 --top 30 -- bash demo.sh

A process that lives less than one interval may be missed, and each one's last fraction of an
interval is lost: the totals are lower bounds. The machine-wide figure (/proc/stat) is printed
beside them for that reason.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import defaultdict

from pytest_cpu import machine_cpu_seconds  # bench/ is on sys.path when this script runs

TICK = os.sysconf("SC_CLK_TCK")


def snapshot() -> dict[int, tuple[float, str]]:
    """pid -> (user + system CPU-seconds, title) for every process now alive."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        title = title or stat.split("(", 1)[1].split(")", 1)[0]
        if title == "python":  # Ray's workers before their title is set, and other bare names
            title = f"python (child of {fields[1]})"
        out[int(name)] = (cpu, title)
    return out


KINDS = [  # first match wins: (kind, pattern on the title). Ray's actors also appear under their
    # 15-character kernel names (ray::RayTrainWo) when no sample read their command line.
    ("pytest (driver and xdist workers)", r"pytest|xdist|import sys;exec\(eval"),
    ("ray: gcs_server", r"gcs_server"),
    ("ray: raylet", r"/raylet |^raylet"),
    ("ray: dashboard, agents, log monitor", r"dashboard|[Aa]gent|log_monitor|monitor\.py"),
    ("ray data: map actors", r"ray::(MapWorker|_MapWorker)"),
    ("ray data: other actors", r"ray::(_StatsActo|_Autoscali|AutoscalingRequester|ActorLocat|SplitCoordinator|"
                               r"OpBufferQueue|_ray_data)"),
    ("ray train: workers", r"ray::(RayTrainWo|TrainWorker|_RayTrainWo)"),
    ("ray train: controller and helpers", r"ray::(TrainContr|Controller|DatasetMan|Synchroniza|Preemption|"
                                          r"PlacementG|TrainStateActor|_TrainSession)"),
    ("tsa actors", r"ray::(ShardWrit|Progress|StageCount|RunConsole|Sample|Gallery|_Worker)"),
    ("ray: idle or task workers", r"ray::"),
    ("decode children", r"decode_proc"),
    ("tsa subprocesses", r"-m tsa |tsa/cli|__main__"),
    ("multiprocessing children (spawn)", r"multiprocessing\.spawn"),
    ("moto server", r"moto"),
    ("chromium", r"chrom"),
]


def kind_of(title: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, title):
            return kind
    return "other: " + title.split()[0][-40:] if title else "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--top", type=int, default=20, help="titles to list by CPU")
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        p.error("no command")
    me = os.getpid()
    before = snapshot()
    start_cpu, start = machine_cpu_seconds(), time.monotonic()
    last: dict[int, tuple[float, str]] = {}  # pid -> (CPU spent since the start, latest title)
    proc = subprocess.Popen(cmd)
    while proc.poll() is None:
        for pid, (cpu, title) in snapshot().items():
            if pid != me:
                base = before[pid][0] if pid in before else 0.0
                if pid in last and title.startswith("python (child of"):
                    title = last[pid][1]  # an exited process (empty cmdline) keeps the title it had
                last[pid] = (cpu - base, title)
        time.sleep(a.interval)
    wall, machine = time.monotonic() - start, machine_cpu_seconds() - start_cpu
    by_kind: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    by_title: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for cpu, title in last.values():
        if cpu <= 0:
            continue
        k = by_kind[kind_of(title)]
        k[0] += cpu
        k[1] += 1
        t = by_title[re.sub(r"\d{3,}", "N", title)[:110]]
        t[0] += cpu
        t[1] += 1
    seen = sum(v[0] for v in by_kind.values())
    print(f"exit {proc.returncode}; {wall:.1f} s wall; machine {machine:.1f} CPU-s; seen in processes {seen:.1f}")
    print(f"{'kind':45s} {'procs':>6s} {'CPU-s':>8s} {'share':>6s}")
    for kind, (cpu, n) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        print(f"{kind:45s} {n:6d} {cpu:8.1f} {cpu / max(seen, 1e-9):6.1%}")
    print(f"\n{'title':110s} {'procs':>6s} {'CPU-s':>8s}")
    for title, (cpu, n) in sorted(by_title.items(), key=lambda kv: -kv[1][0])[:a.top]:
        print(f"{title:110s} {n:6d} {cpu:8.1f}")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
