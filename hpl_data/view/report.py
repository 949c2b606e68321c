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


def render_html(paths: list[Path], title: str | None = None) -> str:
    payload, pair_blocks, episode_blocks = collect(paths)
    payload["title"] = title or "hpl: " + ", ".join(Path(p).name or str(p) for p in paths)
    payload["generated"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data = _script_safe(json.dumps(payload, separators=(",", ":"), default=str))
    blocks = [f'<script type="text/plain" id="pc{i}">{b}</script>' for i, b in enumerate(pair_blocks)]
    blocks += [f'<script type="text/plain" id="ec{i}">{b}</script>' for i, b in enumerate(episode_blocks)]
    page = (_asset("report.html").replace("{{TITLE}}", html.escape(payload["title"]))
            .replace("/*{{CSS}}*/", _asset("report.css")).replace("/*{{JS}}*/", _asset("report.js")))
    head, rest = page.split("{{DATA}}", 1)  # data last, so nothing inside it is ever substituted
    middle, tail = rest.split("{{BLOCKS}}", 1)
    return "".join([head, data, middle, "\n".join(blocks), tail])


def write_report(paths: list[Path], out: Path, title: str | None = None) -> Path:
    """Write the report atomically (temp file + rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(render_html(paths, title), encoding="utf-8")
    tmp.replace(out)
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
