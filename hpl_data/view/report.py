"""Assemble the report's HTML from the payload and the embedded assets; optionally serve it."""

from __future__ import annotations

import datetime
import html
import http.server
import json
import math
import os
import re
import urllib.parse
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from hpl_data.view.collect import collect


def _asset(name: str) -> str:
    return resources.files("hpl_data.view").joinpath("assets", name).read_text(encoding="utf-8")


# In a <script> element, "</script" ends it and "<!--" changes how it is parsed; "&" matters
# in attributes; U+2028/9 end lines in older JS parsers. As JSON escapes they are the same text.
_SCRIPT_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                                 "\u2028": "\\u2028", "\u2029": "\\u2029"})
_PLACEHOLDER = re.compile(r"(\{\{TITLE\}\}|/\*\{\{CSS\}\}\*/|/\*\{\{JS\}\}\*/|\{\{DATA\}\}|\{\{BLOCKS\}\})")


def _finite(value: Any) -> Any:
    """NaN/inf (which an hpl-eval JSON may hold) as null: JSON.parse rejects them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def script_json(value: Any) -> str:
    """``value`` as JSON that is safe as the text of a <script type="application/json"> element
    (the page reads it back with JSON.parse, which turns the escapes into the original text)."""
    return json.dumps(_finite(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=str).translate(_SCRIPT_ESCAPES)


def _template() -> list[str]:
    """The page template cut at its placeholders, each of which it holds exactly once; filling
    the cut pieces (never replacing inside filled-in text) keeps a title or data that contains a
    placeholder's text from being substituted."""
    parts = _PLACEHOLDER.split(_asset("report.html"))
    found = parts[1::2]
    if sorted(found) != sorted(["{{TITLE}}", "/*{{CSS}}*/", "/*{{JS}}*/", "{{DATA}}", "{{BLOCKS}}"]):
        raise RuntimeError(f"report.html: expected each placeholder once, found {found}")
    return parts


def _pieces(paths: list[Path], title: str | None) -> Iterator[str]:
    """The page as a sequence of strings (the text blocks one by one, so a large report is
    written without holding it in memory twice)."""
    payload, pair_blocks, episode_blocks = collect(paths)
    payload["title"] = title or "hpl: " + ", ".join(Path(p).name or str(p) for p in paths)
    payload["generated"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    fills = {"{{TITLE}}": lambda: [html.escape(payload["title"])],
             "/*{{CSS}}*/": lambda: [_asset("report.css")],
             "/*{{JS}}*/": lambda: [_asset("report.js")],
             "{{DATA}}": lambda: [script_json(payload)],
             "{{BLOCKS}}": lambda: (f'<script type="text/plain" id="{prefix}{i}">{block}</script>\n'
                                    for prefix, blocks in (("pc", pair_blocks), ("ec", episode_blocks))
                                    for i, block in enumerate(blocks))}  # base64: nothing to escape
    for i, part in enumerate(_template()):
        if i % 2:
            yield from fills[part]()
        elif part:
            yield part


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


class _ReportHandler(http.server.BaseHTTPRequestHandler):
    """Answers GET/HEAD of "/" or "/<report name>" with the report and 404 to anything else:
    the report's folder (other reports, data, keys) is neither listed nor served."""

    report: Path  # set on the subclass that make_server builds

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        requested = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if requested not in ("/", "/" + self.report.name):
            self.send_error(404)
            return
        data = self.report.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the console stays for the serving line


def make_server(path: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1 for the one report at ``path`` (not started)."""
    handler = type("ReportHandler", (_ReportHandler,), {"report": Path(path).resolve()})
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


def report_url(httpd: http.server.ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/{urllib.parse.quote(httpd.RequestHandlerClass.report.name)}"


def serve(path: Path, port: int = 0, open_message=print) -> None:
    """Serve the report alone on 127.0.0.1 until interrupted (the file also opens from disk)."""
    with make_server(path, port) as httpd:
        open_message(f"serving {report_url(httpd)}  (Ctrl-C stops)")
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
