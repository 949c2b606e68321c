"""WebShop env speed and memory, in one run (numbers are ratios to baselines measured here).

  python benchmarks/bench_webshop.py [--quick] [--full-catalog] [--index-full]

Memory: RSS counts every mapped page, including clean pages of the memory-mapped catalog that
live in the shared page cache; PSS splits shared pages between the processes mapping them;
"anonymous" is the heap a worker cannot share -- the per-worker cost that grows with workers.

Prints: steps/s for search and non-search steps (one process = one core), reset/s, search
latency p50/p99, snapshot+restore vs reset+replay to step 8, and catalog load time plus
per-worker memory (RSS, PSS, private) for the 1k catalog and, with --full-catalog, for a
synthetic 1.18 M-product catalog made by replicating the 1k one (3 GB Arrow file in the cache).
Goals from the issue: >= 2,000 non-search steps/s per core, search p50 <= 2 ms on 1k products,
restore >= 50x faster than replay to step 8.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def mem_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            k, _, rest = line.partition(":")
            if k in ("Rss", "Pss", "Anonymous"):
                out[k] = int(rest.split()[0])
    return out


def bench_steps(env, seconds: float) -> dict:
    from hpl_envs.agents import make_agent

    tasks = env.task_ids("test")
    oracle = make_agent("webshop", "oracle")
    plans = {}
    for tid in tasks[:200]:
        obs, info = env.reset(options={"task_id": tid})
        oracle.reset(env, obs, info)
        plans[tid] = list(oracle.plan)
    # non-search steps: product/option/sub-page clicks on a fixed item page
    search_t, click_t, reset_t = [], [], []
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        tid = tasks[i % 200]
        i += 1
        plan = plans[tid]
        t0 = time.perf_counter()
        env.reset(options={"task_id": tid})
        t1 = time.perf_counter()
        reset_t.append(t1 - t0)
        t0 = time.perf_counter()
        env.step(plan[0])
        _ = env.observation
        search_t.append(time.perf_counter() - t0)
        if plan[1] == "click[next >]":
            continue
        for a in [plan[1], "click[description]", "click[< prev]", "click[features]", "click[< prev]"] + plan[2:-1]:
            t0 = time.perf_counter()
            env.step(a)
            click_t.append(time.perf_counter() - t0)
            if env.get_state().turn >= env.max_turns - 1:
                break
    return {
        "reset_per_s": len(reset_t) / sum(reset_t),
        "search_steps_per_s": len(search_t) / sum(search_t),
        "search_step_p50_ms": 1e3 * statistics.median(search_t),
        "nonsearch_steps_per_s": len(click_t) / sum(click_t),
        "nonsearch_step_p50_ms": 1e3 * statistics.median(click_t),
    }


def bench_search(env, n: int = 2000) -> dict:
    engine = env.shared.search
    queries = [g.instruction_text for g in env.goals[:n]]
    times = []
    for q in queries:
        t0 = time.perf_counter()
        engine.search(q.lower(), 50)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"search_engine_p50_ms": 1e3 * times[len(times) // 2], "search_engine_p99_ms": 1e3 * times[int(len(times) * 0.99)]}


def bench_restore(env, depth: int = 8, reps: int = 300) -> dict:
    """Reach step ``depth`` of an episode; compare restoring a snapshot vs reset + replay."""
    actions = ["search[decorative pillows]", "click[next >]", "click[next >]", "click[< prev]", "click[< prev]",
               "click[b0743jkhbv]", "click[description]", "click[< prev]", 'click[28" x 28"]', "click[features]"]
    actions = actions[:depth]
    env.reset(options={"task_id": "0"})
    for a in actions:
        env.step(a)
    target_obs = env.observation
    snap = env.get_state()
    t0 = time.perf_counter()
    for _ in range(reps):
        env.reset(options={"task_id": "0"})
        for a in actions:
            env.step(a)
        obs = env.observation
    replay = (time.perf_counter() - t0) / reps
    assert obs == target_obs
    t0 = time.perf_counter()
    for _ in range(reps):
        env.set_state(snap)
        obs = env.observation
    restore = (time.perf_counter() - t0) / reps
    assert obs == target_obs
    return {"depth": depth, "replay_ms": replay * 1e3, "restore_ms": restore * 1e3, "restore_speedup": replay / restore}


def _worker_load(args) -> dict:
    size, touch = args
    from hpl_envs.webshop.catalog import load_catalog

    t0 = time.perf_counter()
    cat = load_catalog(size=size) if size == "1k" else _open_synthetic()
    load_s = time.perf_counter() - t0
    import random

    rng = random.Random(os.getpid())
    for _ in range(touch):
        cat.product(rng.randrange(len(cat)))
    return {"load_s": load_s, "products": len(cat), **mem_kb()}


SYNTH_N = 1_180_000


def _synthetic_path() -> Path:
    from hpl_envs.data import cache_dir

    return cache_dir() / f"bench-webshop-synthetic-{SYNTH_N}.arrow"


def _open_synthetic():
    from hpl_envs.webshop.catalog import Catalog, read_arrow

    return Catalog(read_arrow(_synthetic_path()), key="synthetic", index_path=_synthetic_path())


def build_synthetic() -> float:
    """Replicate the 1k catalog to 1.18 M products (unique ASINs) as one Arrow file."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from hpl_envs.webshop.catalog import load_catalog, write_arrow

    path = _synthetic_path()
    if path.exists():
        _open_synthetic()
        return 0.0
    t0 = time.perf_counter()
    base = load_catalog(size="1k").table
    reps = -(-SYNTH_N // base.num_rows)
    batches = []
    for r in range(reps):
        asin = pc.binary_join_element_wise(pc.utf8_slice_codeunits(base["asin"], 0, 6),
                                           pa.scalar(f"{r:04d}"), "")
        batches.append(base.set_column(0, "asin", asin))
    # group the copies so the file has ~20 record batches of 64 k rows, like a converted real catalog
    groups = [pa.concat_tables(batches[i:i + 64]).combine_chunks() for i in range(0, len(batches), 64)]
    table = pa.concat_tables(groups).slice(0, SYNTH_N)
    write_arrow(table, path)
    _open_synthetic()  # builds the ASIN index once, before the workers open it
    return time.perf_counter() - t0


def bench_memory(size: str, workers: int = 2, touch: int = 2000) -> list[dict]:
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker, like a real worker pool
    with ctx.Pool(workers) as pool:
        return pool.map(_worker_load, [(size, touch)] * workers)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full-catalog", action="store_true", help="also the synthetic 1.18 M catalog")
    args = ap.parse_args(argv)
    from hpl_envs import make_env

    t0 = time.perf_counter()
    env = make_env("webshop")
    _ = env.shared.search, env.shared.reward
    print(f"env construction (catalog + goals + search index + spaCy, warm cache): {time.perf_counter() - t0:.2f}s")
    s = bench_steps(env, 2 if args.quick else 8)
    print(f"reset/s {s['reset_per_s']:.0f} | search steps/s {s['search_steps_per_s']:.0f} "
          f"(p50 {s['search_step_p50_ms']:.2f} ms) | non-search steps/s {s['nonsearch_steps_per_s']:.0f} "
          f"(p50 {s['nonsearch_step_p50_ms']:.3f} ms)")
    q = bench_search(env, 300 if args.quick else 2000)
    print(f"search engine alone: p50 {q['search_engine_p50_ms']:.2f} ms, p99 {q['search_engine_p99_ms']:.2f} ms (1k products)")
    r = bench_restore(env)
    print(f"to step {r['depth']}: reset+replay {r['replay_ms']:.3f} ms vs snapshot restore {r['restore_ms']:.4f} ms "
          f"-> restore is {r['restore_speedup']:.0f}x faster")
    for res in bench_memory("1k"):
        print(f"1k catalog worker: load {res['load_s'] * 1e3:.0f} ms, {res['products']} products, "
              f"RSS {res['Rss'] / 1024:.0f} MB, PSS {res['Pss'] / 1024:.0f} MB, anonymous {res['Anonymous'] / 1024:.0f} MB")
    if args.full_catalog:
        built = build_synthetic()
        if built:
            print(f"synthetic {SYNTH_N:,}-product catalog built in {built:.1f}s ({_synthetic_path().stat().st_size / 2**30:.2f} GiB Arrow)")
        for res in bench_memory("synthetic"):
            print(f"1.18M catalog worker: open {res['load_s'] * 1e3:.0f} ms, {res['products']:,} products, "
                  f"RSS {res['Rss'] / 1024:.0f} MB, PSS {res['Pss'] / 1024:.0f} MB, anonymous {res['Anonymous'] / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
