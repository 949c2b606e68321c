"""Assemble the report's HTML from the payload and the embedded assets; optionally serve it."""

from __future__ import annotations

import datetime
import html
import json
import os
from importlib import resources
from pathlib import Path

from hpl_data.view.collect import collect


def _asset(name: str) -> str:
    return resources.files("hpl_data.view").joinpath("assets", name).read_text(encoding="utf-8")


def _script_safe(text: str) -> str:
    """JSON inside <script>: '</' would end the element early; U+2028/9 are fine in JSON."""
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _pieces(paths: list[Path], title: str | None):
    """The page as a sequence of strings (the text blocks one by one, so a large report is
    written without holding it in memory twice)."""
    payload, pair_blocks, episode_blocks = collect(paths)
    payload["title"] = title or "hpl: " + ", ".join(Path(p).name or str(p) for p in paths)
    payload["generated"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data = _script_safe(json.dumps(payload, separators=(",", ":"), default=str))
    page = (_asset("report.html").replace("{{TITLE}}", html.escape(payload["title"]))
            .replace("/*{{CSS}}*/", _asset("report.css")).replace("/*{{JS}}*/", _asset("report.js")))
    head, rest = page.split("{{DATA}}", 1)  # data last, so nothing inside it is ever substituted
    middle, tail = rest.split("{{BLOCKS}}", 1)
    yield from (head, data, middle)
    for prefix, blocks in (("pc", pair_blocks), ("ec", episode_blocks)):
        for i, block in enumerate(blocks):
            yield f'<script type="text/plain" id="{prefix}{i}">{block}</script>\n'
    yield tail


def render_html(paths: list[Path], title: str | None = None) -> str:
    return "".join(_pieces(paths, title))


def write_report(paths: list[Path], out: Path, title: str | None = None) -> Path:
    """Write the report atomically (temp file + rename); nothing is left behind on bad input."""
    out = Path(out)
    pieces = _pieces(paths, title)
    first = next(pieces)  # reads every input: fails here, before a file exists, on bad input
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(first)
            for piece in pieces:
                f.write(piece)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def serve(path: Path, port: int = 0, open_message=print) -> None:
    """Serve the report's folder on 127.0.0.1 until interrupted (the file also opens from disk)."""
    import functools
    import http.server

    path = Path(path).resolve()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as httpd:
        open_message(f"serving http://127.0.0.1:{httpd.server_address[1]}/{path.name}  (Ctrl-C stops)")
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
