"""Test helpers for LLM policies: a tiny local model, a fault-injecting HTTP proxy, and the
scaffolding of scripted endpoints (:class:`ScriptedServer`).

The proxy is a real HTTP server in front of a real vLLM server. It forwards requests
unchanged, except that it can answer 500, hang, or drop connections for a chosen number of
requests: the failures an OpenAI-compatible endpoint produces in the field.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class ScriptedServer:
    """An HTTP server on 127.0.0.1, in its own thread, whose answers come from ``handle(request)``
    (the request body already read): scripted OpenAI-compatible endpoints for tests."""

    answers_get = False  # GET requests too (e.g. /v1/models), or 501

    def __init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.handle(self)

            def do_GET(self):
                if server.answers_get:
                    server.handle(self)
                else:
                    self.send_error(501)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    @staticmethod
    def reply(request: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")  # e.g. http://127.0.0.1:8000
        self.mode = "pass"  # pass | error500 | hang
        self.faults_left = 0  # requests to sabotage in the current mode (-1: all)
        self.hang_s = 30.0
        self.requests = 0
        self.sabotaged = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    proxy.requests += 1
                    sabotage = proxy.mode != "pass" and proxy.faults_left != 0
                    if sabotage:
                        proxy.sabotaged += 1
                        proxy.faults_left -= proxy.faults_left > 0
                    mode = proxy.mode
                if sabotage and mode == "error500":
                    msg = b'{"error": {"message": "injected failure", "type": "server_error"}}'
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                if sabotage and mode == "hang":
                    time.sleep(proxy.hang_s)
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                r = httpx.request(self.command, proxy.upstream + self.path, content=body, headers=headers, timeout=600)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def set(self, mode: str, faults: int = -1) -> None:
        with self.lock:
            self.mode, self.faults_left, self.sabotaged = mode, faults, 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
