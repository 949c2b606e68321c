"""The ``hpl-data view`` subcommand: flags -> :func:`hpl_data.view.write_report`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console


def add_parser(sub) -> argparse.ArgumentParser:
    v = sub.add_parser("view", help="one self-contained HTML report of hpl-gen folders and hpl-eval runs")
    v.add_argument("paths", nargs="+", type=Path,
                   help="hpl-gen output folders, hpl-eval JSONs (or their folders), Parquet tables")
    v.add_argument("--out", type=Path, default=Path("report.html"), help="the HTML file to write")
    v.add_argument("--title", default=None)
    v.add_argument("--serve", action="store_true", help="also serve it on 127.0.0.1 (it opens from disk without)")
    v.add_argument("--port", type=int, default=0, help="with --serve; 0 = a free port")
    return v


def run(args, console: Console) -> int:
    from hpl_data.view import ViewInputError, serve, write_report

    try:
        out = write_report(args.paths, args.out, args.title)
    except ViewInputError as e:
        console.print(f"[red]hpl-data view: {e}[/red]", soft_wrap=True)
        return 2
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); open it in a browser")
    if args.serve:
        serve(out, args.port, console.print)
    return 0
