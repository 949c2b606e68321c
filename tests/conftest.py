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
