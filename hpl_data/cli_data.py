"""``hpl-data``: what benchmark data is present, and fetching it.

  hpl-data info               data root, files present, task counts and split overlaps
  hpl-data download ENV       fetch ENV's public files into the data root, verified
                              (webshop [--full: 1.18 M catalog], alfworld, intercode-sql, prompts)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hpl-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="what is present")
    d = sub.add_parser("download", help="fetch an env's files")
    d.add_argument("env", choices=["webshop", "alfworld", "intercode-sql", "prompts"])
    d.add_argument("--full", action="store_true", help="the 1.18 M-product WebShop catalog (~5 GB)")
    d.add_argument("--root", type=Path, default=None, help="defaults to the data root")
    args = p.parse_args(argv)
    console = Console()
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
