"""``hpl-eval compare A.json B.json ...``: agents side by side in the paper's Table-1 layout.

Columns (×100): ALFWorld seen / unseen success, WebShop average reward / success, InterCode-SQL
average reward / success, and the average of the four headline numbers (ALFWorld seen and unseen
success, WebShop and SQL average reward) over the columns an agent has. A second table gives
ALFWorld success per task type. Inputs are ``hpl-eval`` JSONs: one run each, or a multi-env
``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

COLUMNS = [  # (header, env, splits, metric)
    ("ALFWorld seen", "alfworld", ("valid_seen", "dev"), "success_rate"),
    ("ALFWorld unseen", "alfworld", ("valid_unseen", "test"), "success_rate"),
    ("WebShop reward", "webshop", None, "avg_reward"),
    ("WebShop success", "webshop", None, "success_rate"),
    ("SQL reward", "intercode-sql", None, "avg_reward"),
    ("SQL success", "intercode-sql", None, "success_rate"),
]
HEADLINE = ("ALFWorld seen", "ALFWorld unseen", "WebShop reward", "SQL reward")


def load(paths: list[Path]) -> list[dict]:
    """[{agent, label, runs: [summary, ...]}], one entry per input file."""
    out = []
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: not a readable hpl-eval JSON ({e})") from e
        runs = data["runs"] if "runs" in data else [data]
        if not runs or any("env" not in r or "avg_reward" not in r for r in runs):
            raise ValueError(f"{p}: not an hpl-eval summary (needs env, split, avg_reward)")
        out.append({"agent": data.get("agent") or runs[0].get("agent", "?"), "label": Path(p).stem, "runs": runs})
    labels = [e["agent"] for e in out]
    for e in out:
        e["name"] = e["agent"] if labels.count(e["agent"]) == 1 else f"{e['agent']} ({e['label']})"
    return out


def row(entry: dict) -> dict[str, float | None]:
    vals: dict[str, float | None] = {}
    for header, env, splits, metric in COLUMNS:
        runs = [r for r in entry["runs"] if r["env"] == env and (splits is None or r["split"] in splits)]
        if runs:
            n = sum(r["episodes"] for r in runs)
            vals[header] = 100 * sum(r[metric] * r["episodes"] for r in runs) / n if n else None
        else:
            vals[header] = None
    head = [vals[h] for h in HEADLINE if vals[h] is not None]
    vals["Average"] = sum(head) / len(head) if head else None
    return vals


def alfworld_types(entry: dict) -> dict[str, float]:
    totals: dict[str, list[float]] = {}
    for r in entry["runs"]:
        if r["env"] != "alfworld":
            continue
        for t, v in r["by_task_type"].items():
            acc = totals.setdefault(t, [0.0, 0])
            acc[0] += v["success_rate"] * v["episodes"]
            acc[1] += v["episodes"]
    return {t: 100 * s / n for t, (s, n) in sorted(totals.items()) if n}


def print_table(console: Console, entries: list[dict]) -> None:
    if "name" not in entries[0]:
        for e in entries:
            e["name"] = e["agent"]
    rows = [(e["name"], row(e)) for e in entries]
    headers = [h for h, *_ in COLUMNS] + ["Average"]
    headers = [h for h in headers if any(r[h] is not None for _, r in rows)]
    table = Table(title="agents (×100)")
    table.add_column("agent")
    for h in headers:
        table.add_column(h.replace(" ", "\n"), justify="right")
    for name, r in rows:
        table.add_row(name, *("-" if r[h] is None else f"{r[h]:.1f}" for h in headers))
    console.print(table)
    types = [(e["name"], alfworld_types(e)) for e in entries]
    names = sorted({t for _, d in types for t in d})
    if names:
        t2 = Table(title="ALFWorld success by task type (×100, seen + unseen)")
        t2.add_column("agent")
        for n in names:
            t2.add_column(n, justify="right")
        for name, d in types:
            t2.add_row(name, *("-" if n not in d else f"{d[n]:.1f}" for n in names))
        console.print(t2)


def protocol_mismatches(entries: list[dict]) -> list[dict]:
    """Runs of the same env and split whose protocol fingerprints differ (see ``hpl_data.protocol``)."""
    from hpl_data.protocol import mismatches

    return mismatches([(e.get("name", e["agent"]), r) for e in entries for r in e["runs"]])


def print_protocol_mismatches(console: Console, entries: list[dict]) -> int:
    """Say which runs were not produced under the same protocol, and which parts differ."""
    from hpl_data.protocol import describe

    found = protocol_mismatches(entries)
    for m in found:
        console.print(f"[yellow]protocol differs[/yellow] for {m['env']}/{m['split']}: {m['run']} vs {m['reference']}: "
                      f"{describe(m['parts'])}", soft_wrap=True)
    return len(found)


def save_png(entries: list[dict], path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit("hpl-eval compare --png needs matplotlib: pip install 'hpl[plot]'") from e
    rows = [(e["name"], row(e)) for e in entries]
    headers = [h for h in [c[0] for c in COLUMNS] + ["Average"] if any(r[h] is not None for _, r in rows)]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(headers) * max(1, len(rows)) / 2), 4))
    width = 0.8 / max(1, len(rows))
    for i, (name, r) in enumerate(rows):
        xs = [j + i * width for j in range(len(headers))]
        ys = [r[h] or 0.0 for h in headers]
        bars = ax.bar(xs, ys, width, label=name)
        ax.bar_label(bars, labels=[f"{y:.1f}" if r[h] is not None else "" for y, h in zip(ys, headers)], fontsize=7)
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(headers))], headers, rotation=20, ha="right")
    ax.set_ylabel("score (×100)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hpl-eval compare", description=__doc__)
    p.add_argument("results", nargs="+", type=Path, help="hpl-eval JSON files (single runs or summary.json)")
    p.add_argument("--png", type=Path, default=None, help="save a bar chart here")
    args = p.parse_args(argv)
    console = Console()
    try:
        entries = load(args.results)
    except (ValueError, KeyError) as e:
        Console(stderr=True).print(f"[red]hpl-eval compare: {e}[/red]")
        return 2
    print_table(console, entries)
    print_protocol_mismatches(console, entries)
    if args.png:
        console.print(f"wrote {save_png(entries, args.png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
