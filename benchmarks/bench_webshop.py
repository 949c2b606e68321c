"""WebShop env speed and memory, in one run (numbers are ratios to baselines measured here).

  python benchmarks/bench_webshop.py [--quick] [--full-catalog] [--index-full]

Memory: RSS counts every mapped page, including clean pages of the memory-mapped catalog that
live in the shared page cache; PSS splits shared pages between the processes mapping them;
"anonymous" is the heap a worker cannot share -- the per-worker cost that grows with workers.

Prints: steps/s for search and non-search steps (one process = one core), reset/s, search
latency p50/p99, snapshot+restore vs reset+replay to step 8, and catalog load time plus
per-worker memory (RSS, PSS, private) for the 1k catalog. Goals from the issue: >= 2,000
non-search steps/s per core, search p50 <= 2 ms on 1k products, restore >= 50x faster than
replay to step 8.

--full-catalog (or --only-full): ``catalog="full"`` on a synthetic 1.18 M-product catalog (the 1k
catalog grown with seeded, perturbed texts so no two products share a text, ``write_synthetic_full``;
a few GB of Arrow + index in the cache): build time (wall and CPU, the analysis worker processes'
CPU included) of the Arrow catalog and the search index, their size on disk, the analysis
workers' peak memory, then 4 workers together (spawned
processes) that open the catalog and index memory-mapped, search goal instructions and read the
first result page's products: search p50/p95 and each worker's Private_Clean + Private_Dirty
from /proc/<pid>/smaps_rollup (pages only that worker maps; the shared mapped files are not
private), once through ``WebShopEnv`` with oracle episodes (the real worker), once bare; then
the in-memory baseline (the index read into each worker's own memory, as ``bm25s.BM25.load``
without mmap; with --inmem-catalog also the catalog, ~3 GB more per worker) and the ratios.
Goals: build <= 5 min, <= 200 MB private memory per worker, search p50 <= 20 ms.
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
    cat = load_catalog(size=size)
    load_s = time.perf_counter() - t0
    import random

    rng = random.Random(os.getpid())
    for _ in range(touch):
        cat.product(rng.randrange(len(cat)))
    return {"load_s": load_s, "products": len(cat), **mem_kb()}


def bench_memory(size: str, workers: int = 2, touch: int = 2000) -> list[dict]:
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker, like a real worker pool
    with ctx.Pool(workers) as pool:
        return pool.map(_worker_load, [(size, touch)] * workers)


# --- full scale: a synthetic 1.18 M-product catalog ------------------------------------------------

SMAPS_FIELDS = ("Rss", "Pss", "Shared_Clean", "Private_Clean", "Private_Dirty", "Anonymous")


def smaps_rollup(pid: int) -> dict[str, int]:
    """kB per field of /proc/<pid>/smaps_rollup. Private_* counts pages mapped by this process
    only; file pages that other workers map too are Shared_*, whatever the process touched."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, rest = line.partition(":")
            if k in SMAPS_FIELDS:
                out[k] = int(rest.split()[0])
    return out


def _full_build(root: str, queue) -> None:
    """Build (or find) the catalog's Arrow file and search index, in a process of its own so the
    parent maps nothing the workers are measured on. CPU times include the analysis workers'."""
    import resource
    import threading

    import psutil

    from hpl_envs.webshop.catalog import load_catalog
    from hpl_envs.webshop.search import SearchEngine

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    peak_private_kb, done = [0], threading.Event()

    def watch_workers() -> None:  # the analysis workers are this process's children
        while not done.wait(0.5):
            for child in psutil.Process().children():
                try:
                    m = smaps_rollup(child.pid)
                except OSError:
                    continue
                peak_private_kb[0] = max(peak_private_kb[0], m.get("Private_Clean", 0) + m.get("Private_Dirty", 0))

    threading.Thread(target=watch_workers, daemon=True).start()
    t0, c0 = time.perf_counter(), cpu()
    catalog = load_catalog(Path(root), "full")
    t1, c1 = time.perf_counter(), cpu()
    engine = SearchEngine.for_catalog(catalog)
    t2, c2 = time.perf_counter(), cpu()
    done.set()
    index_dir = SearchEngine.index_path(catalog.key)
    arrow = next(index_dir.parent.glob(f"webshop-catalog-v*-full-{catalog.key}.arrow"))
    contents = catalog.table.column("contents")
    queue.put({"products": len(catalog), "catalog_s": t1 - t0, "index_s": t2 - t1, "built": engine.built,
               "catalog_cpu_s": c1 - c0, "index_cpu_s": c2 - c1, "vocabulary": len(engine.vocab),
               "distinct_texts": len(contents.unique()) if len(catalog) <= 2_000_000 else None,
               "builder_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "analysis_worker_peak_mb": peak_private_kb[0] / 1024,
               "index_bytes": sum(f.stat().st_size for f in index_dir.iterdir()),
               "catalog_bytes": sum(f.stat().st_size for f in arrow.parent.glob(arrow.stem + ".*")
                                    if not f.name.endswith((".lock", ".tmp")))})


def _full_worker(root: str, mode: str, queries: int, offset: int, queue, turn, release) -> None:
    """One worker: open the full catalog and index, search goal instructions, render the first
    result page (as the env does), then wait so the parent can read its memory. The workers
    search one at a time (``turn``), so latency is one search on one core, not core contention."""
    from hpl_envs import make_env
    from hpl_envs.webshop.catalog import load_catalog
    from hpl_envs.webshop.goals import build_goals
    from hpl_envs.webshop.search import SearchEngine

    t0 = time.perf_counter()
    if mode == "env":  # the real worker: a WebShopEnv on catalog="full", episodes end to end
        from hpl_envs.agents import make_agent, play

        env = make_env("webshop", catalog="full", data_root=root)
        catalog, engine, goals = env.shared.catalog, env.shared.search, env.goals
        oracle = make_agent("webshop", "oracle")
        rewards = [play(env, oracle, tid)[1] for tid in env.task_ids("test")[offset:offset + 10]]
    else:
        catalog = load_catalog(Path(root), "full", mmap=(mode != "in-memory+catalog"))
        engine = SearchEngine.for_catalog(catalog, mmap=(mode == "mmap"))
        goals, rewards = build_goals(catalog), []
    open_s = time.perf_counter() - t0
    texts = [g.instruction_text.lower() for g in goals]
    times, cpu_times = [], []
    with turn:
        for j in range(queries):
            t, c = time.perf_counter(), time.thread_time()
            hits = engine.search(texts[(offset * queries + j) % len(texts)])
            for i in hits[:10]:
                catalog.product(i)
            times.append(time.perf_counter() - t)
            cpu_times.append(time.thread_time() - c)
    queue.put({"pid": os.getpid(), "open_s": open_s, "times": times, "cpu_times": cpu_times, "rewards": rewards,
               "built": engine.built})
    release.wait()


def bench_full_workers(root: Path, mode: str, workers: int, queries: int) -> dict:
    ctx = mp.get_context("spawn")
    queue, turn, release = ctx.Queue(), ctx.Lock(), ctx.Event()
    procs = [ctx.Process(target=_full_worker, args=(str(root), mode, queries, w, queue, turn, release))
             for w in range(workers)]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=1800) for _ in procs]
        mems = [smaps_rollup(r["pid"]) for r in results]  # every worker alive and mapping the files
    finally:
        release.set()
        for p in procs:
            p.join()
    times = sorted(t for r in results for t in r["times"])
    cpu = sorted(t for r in results for t in r["cpu_times"])
    rewards = [x for r in results for x in r["rewards"]]
    return {"workers": workers, "open_s": max(r["open_s"] for r in results),
            "p50_ms": 1e3 * times[len(times) // 2], "p95_ms": 1e3 * times[int(len(times) * 0.95)],
            "cpu_p50_ms": 1e3 * cpu[len(cpu) // 2], "cpu_p95_ms": 1e3 * cpu[int(len(cpu) * 0.95)],
            "rebuilt": any(r["built"] for r in results),
            "private_mb": [(m["Private_Clean"] + m["Private_Dirty"]) / 1024 for m in mems],
            "anon_mb": [m["Anonymous"] / 1024 for m in mems], "rss_mb": [m["Rss"] / 1024 for m in mems],
            "pss_mb": [m["Pss"] / 1024 for m in mems],
            "oracle_reward": sum(rewards) / len(rewards) if rewards else None, "episodes": len(rewards)}


def bench_full_catalog(products: int, workers: int, inmem_workers: int, queries: int, rebuild: bool,
                       inmem_catalog: bool = False) -> None:
    from hpl_envs.data import cache_dir
    from hpl_envs.webshop.catalog import write_synthetic_full

    root = write_synthetic_full(cache_dir() / f"bench-webshop-full-{products}", products)
    if rebuild:  # the cached catalog and index of exactly this synthetic catalog
        import shutil

        from hpl_envs.webshop.catalog import catalog_key, find_sources

        key = catalog_key(find_sources(root, "full"))
        for f in cache_dir().glob(f"webshop-*{key}*"):
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    builder = ctx.Process(target=_full_build, args=(str(root), queue))
    builder.start()
    b = queue.get(timeout=3600)
    builder.join()
    state = "built" if b["built"] else "found in the cache (--rebuild to time the build)"
    print(f"full catalog: {b['products']:,} products, {b['distinct_texts'] or 0:,} distinct search texts, "
          f"vocabulary {b['vocabulary']:,} terms (synthetic: the 1k catalog grown with seeded perturbed texts); "
          f"catalog Arrow {b['catalog_s']:.1f}s ({b['catalog_cpu_s']:.1f}s CPU), search index {b['index_s']:.1f}s "
          f"({b['index_cpu_s']:.1f}s CPU, analysis over {os.cpu_count()} processes), build total "
          f"{b['catalog_s'] + b['index_s']:.1f}s ({state}); on disk: index {b['index_bytes'] / 2**20:.0f} MiB, "
          f"catalog {b['catalog_bytes'] / 2**20:.0f} MiB; peak RSS: builder {b['builder_peak_mb']:.0f} MB, "
          f"analysis workers' private memory at most {b['analysis_worker_peak_mb']:.0f} MB "
          "(sampled every 0.5 s)")
    print(f"  (load average after the build: {' '.join(open('/proc/loadavg').read().split()[:3])})")
    rows = {}
    modes = [("env", workers), ("mmap", workers), ("in-memory", inmem_workers)]
    if inmem_catalog:
        modes.append(("in-memory+catalog", inmem_workers))
    for mode, n in modes:
        r = rows[mode] = bench_full_workers(root, mode, n, queries)
        extra = (f"; oracle reward {r['oracle_reward']:.3f} over {r['episodes']} episodes" if r["episodes"] else "")
        print(f"  {mode:9s} x{n}: open {r['open_s']:.1f}s, search+page wall p50 {r['p50_ms']:.2f} ms p95 {r['p95_ms']:.2f} ms,"
              f" CPU p50 {r['cpu_p50_ms']:.2f} ms p95 {r['cpu_p95_ms']:.2f} ms ({queries} goal instructions per"
              f" worker, one worker at a time){extra}; per worker MB: private "
              f"{', '.join(f'{x:.0f}' for x in r['private_mb'])} | anonymous {', '.join(f'{x:.0f}' for x in r['anon_mb'])}"
              f" | RSS {', '.join(f'{x:.0f}' for x in r['rss_mb'])} | PSS {', '.join(f'{x:.0f}' for x in r['pss_mb'])}"
              + (" | REBUILT in a worker" if r["rebuilt"] else ""))
    m, i = rows["mmap"], rows["in-memory"]
    print(f"  in-memory index / mmap: private memory per worker {max(i['private_mb']) / max(m['private_mb']):.1f}x, "
          f"search wall p50 {i['p50_ms'] / m['p50_ms']:.2f}x, CPU p50 {i['cpu_p50_ms'] / m['cpu_p50_ms']:.2f}x, "
          f"open {i['open_s'] / m['open_s']:.1f}x")
    print(f"  (load average during the run: {' '.join(open('/proc/loadavg').read().split()[:3])} on {os.cpu_count()} cores; "
          "CPU time per search is what a free core would take, wall time includes waiting for one)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full-catalog", action="store_true", help="also the synthetic 1.18 M catalog")
    ap.add_argument("--only-full", action="store_true", help="skip the 1k measurements")
    ap.add_argument("--products", type=int, default=1_180_000, help="size of the synthetic full catalog")
    ap.add_argument("--workers", type=int, default=4, help="memory-mapped workers measured together")
    ap.add_argument("--inmem-workers", type=int, default=2,
                    help="workers that load the search index into their own memory (~0.7 GB each at 1.18 M)")
    ap.add_argument("--inmem-catalog", action="store_true",
                    help="also workers that read the catalog into their own memory too (~3 GB more each)")
    ap.add_argument("--queries", type=int, default=500, help="searches per worker")
    ap.add_argument("--rebuild", action="store_true", help="drop the cached full catalog and index, to time the build")
    args = ap.parse_args(argv)
    if args.only_full:
        bench_full_catalog(args.products, args.workers, args.inmem_workers, args.queries, args.rebuild,
                           args.inmem_catalog)
        return 0
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
        bench_full_catalog(args.products, args.workers, args.inmem_workers, args.queries, args.rebuild,
                           args.inmem_catalog)
    return 0


if __name__ == "__main__":
    sys.exit(main())
