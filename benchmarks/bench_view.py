"""`hpl-data view` on a large dataset: time to first render in headless Chromium.

  python benchmarks/bench_view.py [--pairs 100000] [--baseline 1000] [--chromium /usr/bin/chromium]

Builds a synthetic hpl-gen folder (group pairs with WebShop-sized conversations: a shared ~2 kB
first message per task, ~400-character observations drawn from a per-task pool, like real pairs
that share a task's prompt and pages; consecutive pairs belong to different tasks, the worst case
for the per-block string sharing), writes the report, opens it from disk in headless
Chromium and reads ``performance.now()`` at the end of the first render (navigation start to
overview + first page of the pair browser drawn; also the browser's first-contentful-paint and the
load event, when every text block is parsed), then opens one pair (its text block is
decompressed on demand). The same is done for a ``--baseline``-pair folder in the same run; the
ratio shows how the cost grows with size. Target: the 100 k-pair report renders in under 2 s.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("search click buy now size color black white medium large small pack ounce natural organic shirt shoes "
         "women men relaxed fit cotton polyester price lower than dollars item features reviews description "
         "back next prev page results total instruction find me with and for the a of in to").split()


def synthetic_folder(out: Path, n_pairs: int, seed: int = 0) -> Path:
    """An hpl-gen-shaped folder: group_pairs.parquet + manifest.json (no env needed)."""
    from hpl_data.parquet import MC_PAIRS, write_table

    rng = random.Random(seed)
    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    def turns(task: dict, k: int) -> list[dict]:
        """k assistant turns with the observations between them."""
        out = []
        for _ in range(k):
            out += [{"role": "assistant", "content": rng.choice(task["acts"])},
                    {"role": "user", "content": "Observation: " + rng.choice(task["obs"])}]
        return out[:-1]

    n_tasks = max(1, n_pairs // 8)
    tasks = []
    for _ in range(n_tasks):
        tasks.append({"prompt": "You are web shopping.\n" + words(300), "obs": [words(70) for _ in range(8)],
                      "acts": [f"Thought: {words(12)}\nAction: click[{words(2)}]" for _ in range(8)],
                      "type": rng.choice(["fashion", "beauty", "garden", "grocery", "electronics"])})
    rows = []
    for i in range(n_pairs):
        t = i % n_tasks
        task = tasks[t]
        start = rng.randrange(0, 4)
        length = rng.randrange(1, 4)
        prompt = [{"role": "user", "content": task["prompt"]}] + turns(task, start) + \
            ([{"role": "user", "content": "Observation: " + task["obs"][0]}] if start else [])
        co = [round(rng.random(), 2) for _ in range(3)]
        ro = [round(rng.random() * 0.5, 2) for _ in range(3)]
        cr, rr = sum(co) / 3, sum(ro) / 3
        delta = max(0.01, cr - rr)
        lb, db = min(3, length), 1 if delta >= 0.7 else 2 if delta >= 0.4 else 3
        rows.append({"prompt": prompt, "chosen": turns(task, length), "rejected": turns(task, length), "env": "webshop",
                     "split": "train", "task_id": str(t), "task_type": task["type"], "level": "group",
                     "group_start": start, "group_length": length, "chosen_reward": cr, "rejected_reward": rr,
                     "n_rollouts": 3, "chosen_std": 0.1, "rejected_std": 0.1, "delta_r": delta, "length_bucket": lb,
                     "delta_bucket": db, "bucket": f"B{lb}{db}", "segmenter": "fixed-k:3", "policy_id": "heuristic",
                     "expert_id": "oracle", "seed": 0, "chosen_outcomes": co, "rejected_outcomes": ro})
    out.mkdir(parents=True, exist_ok=True)
    write_table(rows, MC_PAIRS, out / "group_pairs.parquet", {"config": {"env": "webshop", "split": "train"}})
    (out / "manifest.json").write_text(json.dumps({"config": {"env": "webshop", "split": "train", "levels": "group"},
                                                   "counters": {"group_pairs": n_pairs}, "finished": True}))
    return out


def measure(folder: Path, chromium: str) -> dict:
    from playwright.sync_api import sync_playwright

    from hpl_data.view import write_report

    t0 = time.perf_counter()
    report = write_report([folder], folder / "report.html")
    write_s = time.perf_counter() - t0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            t0 = time.perf_counter()
            page.goto(report.as_uri(), wait_until="commit")
            page.wait_for_function("window.hplReport !== undefined", timeout=60_000)
            wall_s = time.perf_counter() - t0
            first_render_ms = page.evaluate("window.hplReport.firstRenderMs")
            page.wait_for_load_state("load")
            load_ms = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
            paint_ms = page.evaluate("(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || -1000")
            count = page.text_content("#pair-count")
            page.click("#tabs button[data-tab=pairs]")
            t0 = time.perf_counter()
            page.click("#pair-table tbody tr:nth-child(3)")
            page.wait_for_selector("#pair-detail .sides")
            detail_s = time.perf_counter() - t0
        finally:
            browser.close()
    if errors:
        raise RuntimeError(f"page errors: {errors}")
    return {"pairs_shown": count, "report_mb": report.stat().st_size / 1e6, "write_s": write_s,
            "first_render_s": first_render_ms / 1000, "wall_to_render_s": wall_s,
            "first_contentful_paint_s": paint_ms / 1000, "load_event_s": load_ms / 1000,
            "open_pair_s": detail_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--baseline", type=int, default=1_000)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hpl-bench-view-") as tmp:
        results = {}
        for n in (args.baseline, args.pairs):
            t0 = time.perf_counter()
            folder = synthetic_folder(Path(tmp) / f"pairs{n}", n)
            build_s = time.perf_counter() - t0
            results[n] = {"build_dataset_s": build_s, **measure(folder, args.chromium)}
            print(f"{n:>7} pairs: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in results[n].items()), flush=True)
        big, base = results[args.pairs], results[args.baseline]
        print(f"ratio {args.pairs} / {args.baseline} pairs: first render x{big['first_render_s'] / base['first_render_s']:.1f}, "
              f"report size x{big['report_mb'] / base['report_mb']:.1f}")
        verdict = "under" if big["first_render_s"] < 2 else "OVER"
        print(f"{args.pairs} pairs: first render {big['first_render_s']:.2f} s ({verdict} the 2 s target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
