"""``hpl-eval compare A.json B.json ...``: agents side by side, and whether their differences are real.

First the paper's Table-1 layout (×100): ALFWorld seen / unseen success, WebShop average reward /
success, InterCode-SQL average reward / success, and the average of the four headline numbers
(ALFWorld seen and unseen success, WebShop and SQL average reward) over the columns an agent has; a
second table gives ALFWorld success per task type. Then, for each run against the first input's
run of the same env and split, paired on the task ids both have: the difference in average reward
and in success with a 95 % paired bootstrap interval and a two-sided paired sign-flip permutation
p-value (:mod:`hpl_data.stats`), marking differences whose interval contains 0, and naming task ids
that only one run has. Runs whose protocol fingerprints differ are refused unless
``--allow-protocol-mismatch`` (then the differing parts are printed). Inputs are ``hpl-eval`` JSONs:
one run each (per-task results in ``per_episode``), or a multi-env ``summary.json`` (per-task
results from the trajectories Parquet files beside it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hpl_data.cli_common import CliError, CliParser, run_cli
from hpl_data.stats import METHOD, PERMUTATIONS, TEST_NAME, PairedDifference, mean_ci, paired_difference

COLUMNS = [  # (header, env, splits, metric)
    ("ALFWorld seen", "alfworld", ("valid_seen", "dev"), "success_rate"),
    ("ALFWorld unseen", "alfworld", ("valid_unseen", "test"), "success_rate"),
    ("WebShop reward", "webshop", None, "avg_reward"),
    ("WebShop success", "webshop", None, "success_rate"),
    ("SQL reward", "intercode-sql", None, "avg_reward"),
    ("SQL success", "intercode-sql", None, "success_rate"),
]
HEADLINE = ("ALFWorld seen", "ALFWorld unseen", "WebShop reward", "SQL reward")
SUMMARY_KEYS = {"env", "split", "episodes", "avg_reward", "success_rate"}


def load(paths: list[Path]) -> list[dict]:
    """[{agent, label, name, runs: [summary, ...], tasks: [per-task results or None per run]}]."""
    out = []
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{p}: not a readable hpl-eval JSON ({e})") from e
        runs = data.get("runs", [data]) if isinstance(data, dict) else None
        if not isinstance(runs, list) or not runs or any(not isinstance(r, dict) or not SUMMARY_KEYS <= r.keys()
                                                         for r in runs):
            raise ValueError(f"{p}: not an hpl-eval summary (needs {', '.join(sorted(SUMMARY_KEYS))})")
        out.append({"agent": data.get("agent") or runs[0].get("agent", "?"), "label": Path(p).stem, "runs": runs,
                    "tasks": [task_results(r, Path(p)) for r in runs]})
    labels = [e["agent"] for e in out]
    for e in out:
        e["name"] = e["agent"] if labels.count(e["agent"]) == 1 else f"{e['agent']} ({e['label']})"
    return out


@dataclass(frozen=True)
class TaskResults:
    """One run's per-task outcomes, keyed by task id, in the run's task order."""

    rewards: dict[str, float]
    successes: dict[str, float]


def task_results(run: dict, source: Path) -> TaskResults | None:
    """From the run's ``per_episode``, else its trajectories Parquet beside ``source``; ``None``
    when neither is there (a summary without per-task results: no paired statistics)."""
    from hpl_envs.registry import profile

    where = f"{source} ({run.get('env')}/{run.get('split')})"
    if isinstance(run.get("per_episode"), list):
        rows = run["per_episode"]
    elif run.get("trajectories") and (source.parent / run["trajectories"]).is_file():
        import pyarrow.parquet as pq

        where = str(source.parent / run["trajectories"])
        try:
            rows = pq.read_table(source.parent / run["trajectories"], columns=["task_id", "reward", "won"]).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise ValueError(f"{where}: not a readable trajectories table ({e})") from e
    else:
        return None
    try:
        succeeded = profile(str(run.get("env"))).succeeded
    except ValueError as e:  # canonical(): an unknown env
        raise ValueError(f"{where}: {e}") from e
    rewards: dict[str, float] = {}
    successes: dict[str, float] = {}
    for e in rows:
        try:
            task_id, reward = str(e["task_id"]), float(e["reward"])
            success = float(e["success"] if "success" in e else succeeded(e))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: a per-task result without task_id, reward and won ({err})") from err
        if not math.isfinite(reward):
            raise ValueError(f"{where}: task {task_id!r} has reward {reward}, not a finite number")
        if task_id in rewards:
            raise ValueError(f"{where}: task {task_id!r} appears twice")
        rewards[task_id], successes[task_id] = reward, success
    return TaskResults(rewards, successes)


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


@dataclass(frozen=True)
class RunComparison:
    """One run against the first input's run of the same env and split, on their common tasks."""

    env: str
    split: str
    reference: str
    run: str
    reward: PairedDifference
    success: PairedDifference
    only_in_reference: list[str]
    only_in_run: list[str]


def paired_comparisons(entries: list[dict]) -> tuple[list[RunComparison], list[str]]:
    """Every later input's runs against the first input's; plus notes on what could not be paired."""
    reference = entries[0]
    by_key = {(r["env"], r["split"]): (r, t) for r, t in zip(reference["runs"], reference["tasks"])}
    comparisons, notes = [], []
    for entry in entries[1:]:
        for run, tasks in zip(entry["runs"], entry["tasks"]):
            key = (run["env"], run["split"])
            where = f"{key[0]}/{key[1]}"
            if key not in by_key:
                notes.append(f"{where}: {entry['name']} has it, {reference['name']} does not; nothing to pair")
                continue
            ref_tasks = by_key[key][1]
            missing = [e["name"] for e, t in ((reference, ref_tasks), (entry, tasks)) if t is None]
            if missing:
                notes.append(f"{where}: no per-task results in {' and '.join(missing)} (a summary.json without its "
                             "trajectories Parquet files?); no paired statistics")
                continue
            common = [t for t in ref_tasks.rewards if t in tasks.rewards]
            if not common:
                notes.append(f"{where}: {entry['name']} and {reference['name']} have no task id in common; "
                             "nothing to pair")
                continue
            comparisons.append(RunComparison(
                env=key[0], split=key[1], reference=reference["name"], run=entry["name"],
                reward=paired_difference([ref_tasks.rewards[t] for t in common], [tasks.rewards[t] for t in common]),
                success=paired_difference([ref_tasks.successes[t] for t in common],
                                          [tasks.successes[t] for t in common]),
                only_in_reference=[t for t in ref_tasks.rewards if t not in tasks.rewards],
                only_in_run=[t for t in tasks.rewards if t not in ref_tasks.rewards],
            ))
    return comparisons, notes


def format_p(p: float) -> str:
    return "1" if p == 1.0 else f"{p:.3g}"


def id_list(ids: list[str], limit: int = 20) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def print_comparisons(console: Console, comparisons: list[RunComparison], notes: list[str]) -> None:
    """One table per env and split: each run minus the first input's run, with interval and p-value."""
    for env, split in dict.fromkeys((c.env, c.split) for c in comparisons):
        group = [c for c in comparisons if (c.env, c.split) == (env, split)]
        table = Table(title=f"{env} / {split}: paired differences, run minus {group[0].reference}")
        for col in ("run", "tasks", "metric", "difference [95% CI]", "p", "0 in CI"):
            table.add_column(col, justify="left" if col in ("run", "metric") else "right",
                             no_wrap=col != "run")
        for c in group:
            for metric, d in (("reward", c.reward), ("success", c.success)):
                interval = "" if d.ci95 is None else f" [{d.ci95[0]:+.3f}, {d.ci95[1]:+.3f}]"
                table.add_row(c.run, str(d.tasks), metric, f"{d.difference:+.4f}{interval}",
                              format_p(d.p_value) + ("" if d.exact else "*"),
                              "[yellow]yes[/yellow]" if d.interval_contains_zero else "no")
        console.print(table)
        for c in group:
            if c.only_in_reference:
                console.print(f"{env}/{split}: {len(c.only_in_reference)} task ids only in {c.reference} (not paired): "
                              f"{id_list(c.only_in_reference)}", soft_wrap=True)
            if c.only_in_run:
                console.print(f"{env}/{split}: {len(c.only_in_run)} task ids only in {c.run} (not paired): "
                              f"{id_list(c.only_in_run)}", soft_wrap=True)
    if comparisons:
        console.print(f"95% CI: paired {METHOD}. p: {TEST_NAME} of the mean difference, exact over every sign "
                      f"pattern of the non-zero differences; * = Monte Carlo, {PERMUTATIONS:,} random sign flips "
                      "(seed 0). '0 in CI: yes': no difference shown at 95%.", soft_wrap=True, highlight=False)
    for note in notes:
        console.print(f"[yellow]{note}[/yellow]", soft_wrap=True)


def column_intervals(entry: dict) -> dict[str, list[float] | None]:
    """95 % intervals (×100) of :func:`row`'s columns: pooled per-task values of the column's runs,
    else the single run's ``*_ci95`` field; ``None`` where neither exists (and for Average)."""
    out: dict[str, list[float] | None] = {"Average": None}
    for header, env, splits, metric in COLUMNS:
        picked = [(r, t) for r, t in zip(entry["runs"], entry["tasks"])
                  if r["env"] == env and (splits is None or r["split"] in splits)]
        ci = None
        if picked and all(t is not None for _, t in picked):
            values = [v for _, t in picked for v in (t.rewards if metric == "avg_reward" else t.successes).values()]
            ci = mean_ci(values)
        elif len(picked) == 1:
            ci = picked[0][0].get(f"{metric}_ci95")
        out[header] = None if ci is None else [100 * ci[0], 100 * ci[1]]
    return out


def save_png(entries: list[dict], path: Path, comparisons: list[RunComparison] | None = None) -> Path:
    """Bars (×100) with their 95 % intervals as error bars; beside them, when there are paired
    comparisons, each difference with its interval against a line at 0."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise CliError("hpl-eval compare --png needs matplotlib: pip install 'hpl[plot]'") from e
    rows = [(e["name"], row(e), column_intervals(e)) for e in entries]
    headers = [h for h in [c[0] for c in COLUMNS] + ["Average"] if any(r[h] is not None for _, r, _ in rows)]
    bars_width = max(6, 1.4 * len(headers) * max(1, len(rows)) / 2)
    if comparisons:
        fig, (ax, ax_diff) = plt.subplots(1, 2, figsize=(bars_width + 6, 4.5), width_ratios=[bars_width, 6])
    else:
        fig, ax = plt.subplots(figsize=(bars_width, 4))
    width = 0.8 / max(1, len(rows))
    for i, (name, r, cis) in enumerate(rows):
        xs = [j + i * width for j in range(len(headers))]
        ys = [r[h] or 0.0 for h in headers]
        nan = float("nan")  # no error bar where there is no interval
        errors = [[max(0.0, y - cis[h][0]) if cis[h] else nan for y, h in zip(ys, headers)],
                  [max(0.0, cis[h][1] - y) if cis[h] else nan for y, h in zip(ys, headers)]]
        ax.bar(xs, ys, width, label=name, yerr=errors, capsize=3, error_kw={"elinewidth": 1})
        for x, y, h in zip(xs, ys, headers):
            if r[h] is not None:  # above the error bar, where one is drawn
                ax.text(x, max(y, cis[h][1] if cis[h] else y) + 1, f"{y:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(headers))], headers, rotation=20, ha="right")
    ax.set_ylabel("score (×100), 95% CI")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    if comparisons:
        labels, diffs, lows, highs = [], [], [], []
        for c in comparisons:
            for metric, d in (("reward", c.reward), ("success", c.success)):
                labels.append(f"{c.run} − {c.reference}\n{c.env}/{c.split} {metric} (p={format_p(d.p_value)})")
                diffs.append(100 * d.difference)
                ci = d.ci95 or [d.difference, d.difference]
                lows.append(100 * (d.difference - ci[0]))
                highs.append(100 * (ci[1] - d.difference))
        ys = list(range(len(labels)))[::-1]
        ax_diff.errorbar(diffs, ys, xerr=[lows, highs], fmt="o", capsize=4)
        ax_diff.axvline(0, color="grey", linewidth=1, linestyle="--")
        ax_diff.set_yticks(ys, labels, fontsize=7)
        ax_diff.set_ylim(-0.7, len(labels) - 0.3)
        ax_diff.set_xlabel("paired difference (×100), 95% CI")
        ax_diff.yaxis.tick_right()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def protocol_refusal(entries: list[dict]) -> str:
    """The one-line error for inputs whose protocols differ."""
    from hpl_data.protocol import describe

    found = protocol_mismatches(entries)
    parts = "; ".join(f"{m['env']}/{m['split']}: {m['run']} vs {m['reference']}: {describe(m['parts'], 3)}"
                      for m in found[:3])
    return (f"the runs were not produced under the same protocol ({parts}{'; ...' if len(found) > 3 else ''}); "
            "their numbers may not be comparable. Pass --allow-protocol-mismatch to compare them anyway "
            "(paired on the task ids both have)")


def main(argv: list[str] | None = None) -> int:
    return run_cli("hpl-eval compare", _main, argv)


def build_parser() -> argparse.ArgumentParser:
    """The ``hpl-eval compare`` parser (also read by the docs' CLI reference)."""
    p = CliParser(prog="hpl-eval compare", description=__doc__)
    p.add_argument("results", nargs="+", type=Path, help="hpl-eval JSON files (single runs or summary.json)")
    p.add_argument("--png", type=Path, default=None, help="save a chart of the numbers and differences with intervals")
    p.add_argument("--allow-protocol-mismatch", action="store_true",
                   help="compare runs whose protocol fingerprints differ (the differing parts are printed)")
    return p


def _main(argv: list[str]) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    entries = load(args.results)
    if protocol_mismatches(entries) and not args.allow_protocol_mismatch:
        raise CliError(protocol_refusal(entries))
    # piped output (files, tests) is not cut to a terminal's 80 columns
    console = Console(width=None if sys.stdout.isatty() else 160)
    print_table(console, entries)
    print_protocol_mismatches(console, entries)
    comparisons, notes = paired_comparisons(entries)
    print_comparisons(console, comparisons, notes)
    if args.png:
        console.print(f"wrote {save_png(entries, args.png, comparisons)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
