"""catalog="full" at scale: a synthetic catalog (the 1k one grown with seeded, perturbed texts) whose
Arrow file and memory-mapped search index are built once (analysis over processes), under a lock,
and opened by every other process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpl_envs.agents import make_agent, play
from hpl_envs.webshop.catalog import load_catalog, write_synthetic_full
from hpl_envs.webshop.env import WebShopEnv
from hpl_envs.webshop.goals import build_goals
from hpl_envs.webshop.search import SearchEngine

PRODUCTS = 20_000  # more than one analysis chunk (PARALLEL_CHUNK): the index is built over processes
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """A data root whose catalog="full" is 30,000 products, with a cache dir of its own."""
    root = write_synthetic_full(tmp_path_factory.mktemp("data"), PRODUCTS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        catalog = load_catalog(root, "full")
        yield root, catalog, SearchEngine.for_catalog(catalog)


def _open_in_subprocess(root: Path, query: str) -> dict:
    code = ("import json, sys; from pathlib import Path; from hpl_envs.webshop.catalog import load_catalog; "
            "from hpl_envs.webshop.search import SearchEngine; "
            "e = SearchEngine.for_catalog(load_catalog(Path(sys.argv[1]), 'full')); "
            "print(json.dumps({'built': e.built, 'hits': e.search(sys.argv[2])}))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code, str(root), query], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_synthetic_full_catalog_grows_the_1k_one_with_distinct_texts(full):
    from hpl_envs.webshop.catalog import _TextPerturber

    _, catalog, _ = full
    base = load_catalog(size="1k")
    assert len(catalog) == PRODUCTS
    assert [catalog.asin(i) for i in range(len(base))] == [base.asin(i) for i in range(len(base))]
    assert catalog.asin(len(base)) == "Z000100000" and catalog.index(f"Z{PRODUCTS // 1000 - 1:04d}00999") == PRODUCTS - 1
    assert len(build_goals(catalog)) == len(build_goals(base))  # copies carry no goals
    contents = catalog.table.column("contents")
    assert len(contents.unique()) > 0.99 * PRODUCTS  # (a few 1k products share a text already)
    copy, original = catalog.product(3 * len(base) + 7), base.product(7)
    assert copy.Title != original.Title and copy.options == original.options and copy.pricing == original.pricing
    assert len(copy.Title.split()) >= len(original.Title.split())  # words swapped, a model code maybe added
    again = _TextPerturber(base.table, seed=0).copy(3)  # seeded: the same texts every build
    assert again["Title"][7] == copy.Title and again["contents"][7] == contents[3 * len(base) + 7].as_py()
    ascii_share = np.mean([t.isascii() for t in contents.slice(len(base), 5 * len(base)).to_pylist()])
    assert abs(ascii_share - np.mean([t.isascii() for t in base.table.column("contents").to_pylist()])) < 0.1


def test_mapped_index_gives_the_in_memory_results(full):
    _, catalog, engine = full
    assert engine.built and isinstance(engine.retriever.scores["data"], np.memmap)
    in_memory = SearchEngine.build(catalog.table.column("contents").to_pylist(), processes=1)  # in this process
    in_memory.tie_rank = catalog.asin_rank()
    queries = [g.instruction_text.lower() for g in build_goals(catalog)[:300]] + ["red shoe", "zzz", ""]
    for q in queries:
        assert engine.search(q) == in_memory.search(q), q
    assert len(engine.vocab) > 1.5 * len(SearchEngine.for_catalog(load_catalog(size="1k")).vocab)  # new words


def test_a_second_process_opens_the_index_without_rebuilding(full):
    root, _, engine = full
    index_dir = SearchEngine.index_path(engine_key := load_catalog(root, "full").key)
    before = {f.name: f.stat().st_mtime_ns for f in index_dir.iterdir()}
    query = "3 ounce bottle of bright citrus deodorant for sensitive skin"
    other = _open_in_subprocess(root, query)
    assert other == {"built": False, "hits": engine.search(query)}
    assert {f.name: f.stat().st_mtime_ns for f in index_dir.iterdir()} == before
    assert SearchEngine.index_path(engine_key) == index_dir


def test_concurrent_first_opens_build_once_and_leftovers_of_a_killed_build_are_ignored(tmp_path, monkeypatch):
    root = write_synthetic_full(tmp_path / "data", 3_000)
    monkeypatch.setenv("HPL_CACHE_DIR", str(tmp_path / "cache"))
    key = load_catalog(root, "full").key
    index_dir = SearchEngine.index_path(key)
    stale = index_dir.with_name(f"{index_dir.name}.999999.tmp")  # a builder killed mid-save
    stale.mkdir()
    (stale / "data.csc.index.npy").write_bytes(b"torn")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = ("import json, sys; from pathlib import Path; from hpl_envs.webshop.catalog import load_catalog; "
            "from hpl_envs.webshop.search import SearchEngine; "
            "e = SearchEngine.for_catalog(load_catalog(Path(sys.argv[1]), 'full')); "
            "print(json.dumps({'built': e.built, 'hits': e.search('red shoe')}))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["hits"] == results[1]["hits"] != []
    assert not stale.exists() and (index_dir / "params.index.json").exists()


def test_an_episode_on_the_full_catalog_end_to_end(full):
    root, _, _ = full
    env = WebShopEnv(catalog="full", data_root=root)
    oracle = make_agent("webshop", "oracle")
    for tid in env.task_ids("test")[:3]:
        _, reward, info, _ = play(env, oracle, tid)
        assert reward == 1.0 and info["purchased"]["asin"] == env.goal(tid).asin
    env.reset(options={"task_id": "0"})
    obs, *_ = env.step("search[decorative pillows]")
    assert "Total results: 50" in obs and "[SEP] Z0" in obs  # perturbed copies compete with the original
