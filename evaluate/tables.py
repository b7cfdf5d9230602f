"""Markdown tables of `tsa score`: one run in the paper's layout (Table 1 VideoPhy, Table 2
VideoPhy2, Table 3 VBench), and runs side by side with paired differences."""
from __future__ import annotations

import math

from tsa.evaluate.vbench_final import LABELS, TABLE_A, TABLE_B

CATEGORY_LABELS = {"solid_solid": "Solid-Solid", "solid_fluid": "Solid-Fluid", "fluid_fluid": "Fluid-Fluid"}


def label(key: str) -> str:
    """Display name of a metric key (`SA`, `solid_fluid/PC`, `subject_consistency`, `Total`)."""
    cat, _, metric = key.rpartition("/")
    name = LABELS.get(metric, metric)
    return f"{CATEGORY_LABELS.get(cat, cat)} {name}" if cat else name


def fmt(x: float, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def fmt_ci(lo: float, hi: float, signed: bool = False) -> str:
    return f"[{fmt(lo, signed)}, {fmt(hi, signed)}]"


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _layout(result: dict) -> list[list[str]]:
    """Groups of metric keys, one Markdown table each, in the paper's column order."""
    metrics = result["metrics"]
    if result["evaluator"] == "vbench":
        return [[k for k in group if k in metrics] for group in (TABLE_A, TABLE_B) if any(k in metrics for k in group)]
    base = [k for k in ("Joint", "SA", "PC") if k in metrics]
    keys = list(base)
    for cat, entry in result.get("categories", {}).items():
        keys += [f"{cat}/{m}" for m in base if m in entry]
    return [keys]


def _lookup(result: dict, key: str) -> dict:
    cat, _, metric = key.rpartition("/")
    return result["categories"][cat][metric] if cat else result["metrics"][key]


def paper_table(result: dict) -> str:
    """One run: its numbers with the 95 % intervals under them, as the paper lays them out."""
    blocks = []
    overall = "Overall " if result.get("categories") else ""
    for keys in _layout(result):
        cells = [_lookup(result, k) for k in keys]
        rows = [["%"] + [fmt(c["value"]) for c in cells], ["95 % CI"] + [fmt_ci(*c["ci95"]) for c in cells]]
        blocks.append(_md([""] + [label(k) if "/" in k else overall + label(k) for k in keys], rows))
    counts = f"{result['videos']} videos, {result['prompts']} prompts"
    if result.get("categories"):
        counts += " (" + ", ".join(f"{CATEGORY_LABELS.get(c, c)} {e['videos']}"
                               for c, e in result["categories"].items()) + ")"
    return "\n\n".join(blocks) + f"\n\n{result['benchmark']} ({result['evaluator']}): {counts}; 95 % bootstrap " \
                                 f"intervals over prompts ({result['bootstrap']['replicates']} replicates)."


def comparison_table(rows: list[dict], labels: list[str]) -> str:
    """Runs side by side: `rows` from compare.comparison_rows (one per metric)."""
    header = ["metric"] + [labels[0]]
    for name in labels[1:]:
        header += [name, f"{name} − {labels[0]}", "prompts for ±1"]
    body = []
    for r in rows:
        line = [label(r["metric"]), f"{fmt(r['runs'][0]['value'])} {fmt_ci(*r['runs'][0]['ci95'])}"]
        for run in r["runs"][1:]:
            line += [f"{fmt(run['value'])} {fmt_ci(*run['ci95'])}",
                     f"{fmt(run['diff'], True)} {fmt_ci(*run['diff_ci95'], True)}",
                     _count(run["prompts_for_1pt"])]
        body.append(line)
    return _md(header, body)


def _count(n: float) -> str:
    return "n/a" if n is None or not math.isfinite(n) else f"{int(math.ceil(n)):,}"
