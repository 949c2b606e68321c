"""Monte-Carlo labelling cost and throughput of ``hpl-gen``.

  python benchmarks/bench_gen.py [--env webshop] [--limit 20] [--rollouts 5]
  python benchmarks/bench_gen.py --llm-throughput [--limit 8] [--concurrency 64]

Default (built-in heuristic policy, no model): the same tasks and seeds labelled (a) IPR-style, each
level on its own with fixed M (step-only run + group-only run), (b) hpl's one rollout tree for both
levels (expert values shared) with fixed M, (c) as (b) with adaptive MC, (d) as (c) with
``--mc-curtail``. Prints policy actions (= the
LLM calls an LLM policy would make) per valued step+group comparison, and wall time.

``--llm-throughput``: a tiny model built locally (:mod:`hpl_data.tiny_model`), served by vLLM's
OpenAI server. Runs (1) ``hpl-eval``'s engine on WebShop episodes, (2) ``hpl-gen``'s MC labelling
with that model as reference policy, (3) ``hpl-eval`` again, all at ``--concurrency``, and prints LLM
calls/s, requests in flight and prompt tokens per call of each (the machine may be shared: the ratio
uses the mean of the two hpl-eval rates, which bracket hpl-gen's); then LLM calls per valued comparison, hpl (one
tree + adaptive MC, with and without curtailment) vs IPR-style per-level fixed M. An MC call is not an hpl-eval
call (it carries the expert history, and on a tiny model attention over it is most of the server's work), so
both runs' own requests are then replayed against the same server with nothing else running (cold prefix
cache, same concurrency): the server's capacity for each request shape, and the share of it each run
reached. The last line is ``hpl-gen/hpl-eval LLM calls/s ratio R (peak in flight N)``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def label(out: Path, reuse: Path | None, **kw) -> dict:
    """One hpl-gen run (trajectories copied from ``reuse`` so only the MC stage differs)."""
    import pyarrow.parquet as pq

    from hpl_data.gen import GenConfig, Generation

    if reuse is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("trajectories_expert.parquet", "trajectories_policy.parquet"):
            shutil.copy(reuse / name, out / name)
    t0 = time.perf_counter()
    res = Generation(GenConfig(out=out, progress=False, **kw)).run()
    c = dict(res.counters)
    c["wall"] = time.perf_counter() - t0
    c["pairs"] = sum(pq.read_metadata(out / f"{lv}_pairs.parquet").num_rows
                     for lv in ("step", "group") if (out / f"{lv}_pairs.parquet").exists())
    return c


def compare_labelling(tmp: Path, reuse: Path | None = None, **kw) -> dict[str, dict]:
    """IPR-style per level, hpl tree fixed M (unless ``reuse`` holds it), hpl tree adaptive: counters of each."""
    runs = {} if reuse else {"tree": label(tmp / "tree", None, levels=("traj", "step", "group"), **kw)}
    reuse = reuse or tmp / "tree"
    return {
        "ipr_step": label(tmp / "ipr_step", reuse, levels=("step",), mc_share_rollouts=False, **kw),
        "ipr_group": label(tmp / "ipr_group", reuse, levels=("group",), mc_share_rollouts=False, **kw),
        **runs,
        "tree_adaptive": label(tmp / "tree_adaptive", reuse, levels=("step", "group"), mc_adaptive=True, **kw),
        "tree_curtail": label(tmp / "tree_curtail", reuse, levels=("step", "group"), mc_adaptive=True,
                              mc_curtail=True, **kw),
    }


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def per_pair(c: dict, key: str) -> float:
    return c.get(key, 0) / max(c.get("pairs_labelled", 0), 1)


def report_calls_per_pair(runs: dict[str, dict], key: str, what: str) -> float:
    ipr = (runs["ipr_step"].get(key, 0) + runs["ipr_group"].get(key, 0)) / max(
        runs["ipr_step"].get("pairs_labelled", 0) + runs["ipr_group"].get("pairs_labelled", 0), 1)
    for name, c in runs.items():
        print(f"  {name:14s} {c.get(key, 0):7d} {what}, {c.get('pairs_labelled', 0):4d} valued comparisons "
              f"({c['pairs']} kept), {per_pair(c, key):.1f} per comparison, {c.get('rollouts', 0)} rollouts "
              f"({c.get('rollouts_saved', 0)} saved), {c['wall']:.1f}s")
    for name, label_ in (("tree", "hpl tree, fixed M"), ("tree_adaptive", "hpl tree + adaptive"),
                         ("tree_curtail", "hpl tree + adaptive + curtail")):
        hpl = per_pair(runs[name], key)
        print(f"  {what} per valued step+group comparison: IPR-style per-level fixed M {ipr:.1f}, "
              f"{label_} {hpl:.1f} -> {ipr / hpl if hpl else float('nan'):.2f}x fewer")
    # IPR's own scripts also play every alternative to the end once (its explore stage, whose final
    # reward its pair filter reads) besides the M Monte-Carlo rollouts: about one more rollout each
    step = runs["ipr_step"]
    per_rollout = step.get(key, 0) / max(step.get("rollouts", 0), 1)
    extra = step.get("pairs_labelled", 0) * per_rollout
    ipr_full = (runs["ipr_step"].get(key, 0) + extra + runs["ipr_group"].get(key, 0)) / max(
        runs["ipr_step"].get("pairs_labelled", 0) + runs["ipr_group"].get("pairs_labelled", 0), 1)
    hpl = per_pair(runs["tree_curtail"], key)
    print(f"  (estimate) IPR as its scripts run it, + one explore continuation per step alternative "
          f"(~{per_rollout:.1f} {what} each): {ipr_full:.1f} per comparison -> "
          f"{ipr_full / hpl if hpl else float('nan'):.2f}x hpl tree + adaptive + curtail")
    return ipr / hpl if hpl else float("nan")


class Recorder:
    """Keeps every request the engine sends (messages, sampling params), in send order, for replay."""

    def __init__(self) -> None:
        self.requests: list[tuple[list[dict], object]] = []
        self.on = False

    def install(self) -> None:
        from hpl_data.engine import RolloutEngine

        real = RolloutEngine.chat
        rec = self

        async def chat(engine, messages, params, affinity=None):
            sent = list(messages)
            comp = await real(engine, messages, params, affinity)
            if rec.on:  # answered calls only, as the runs count them
                rec.requests.append((sent, params))
            return comp

        RolloutEngine.chat = chat

    def take(self) -> list[tuple[list[dict], object]]:
        out, self.requests = self.requests, []
        return out


async def replay(url: str, requests: list, concurrency: int) -> float:
    """The server's calls/s for exactly these requests, ``concurrency`` in flight, nothing else in
    the loop (no env, no engine): what the server can do for this request shape."""
    import httpx
    import openai

    async with httpx.AsyncClient(timeout=600) as http:  # start cold, as the run did
        (await http.post(url.removesuffix("/v1") + "/reset_prefix_cache")).raise_for_status()
    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=600)
    model = (await client.models.list()).data[0].id
    queue = iter(requests)

    async def lane() -> None:
        for messages, p in queue:
            kw = dict(logprobs=True, top_logprobs=p.top_logprobs or None) if p.logprobs else {}
            try:
                await client.chat.completions.create(model=model, messages=messages, temperature=p.temperature,
                                                     top_p=p.top_p, max_tokens=p.max_tokens, seed=p.seed, **kw)
            except openai.BadRequestError:  # e.g. a prompt at the context limit with little room to answer
                pass

    t0 = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    await client.close()
    return len(requests) / wall


async def eval_throughput(url: str, tasks: list[str], concurrency: int, max_tokens: int, workers: int) -> dict:
    """What ``hpl-eval --policy openai:URL --concurrency N`` runs: the engine on whole episodes."""
    from hpl_data.engine import EngineConfig, RolloutEngine
    from hpl_data.policies import SamplingParams, make_chat_policy

    policy = make_chat_policy(f"openai:{url}", concurrency=concurrency)
    cfg = EngineConfig(concurrency=concurrency, workers=workers,
                       sampling=SamplingParams(temperature=1.0, max_tokens=max_tokens))
    try:
        async with RolloutEngine("webshop", policy, config=cfg) as eng:
            await eng.run(tasks)
            return eng.counters.as_dict()
    finally:
        await policy.close()


def llm_throughput(args) -> int:
    from hpl_data.policies.vllm_server import VLLMServer
    from hpl_data.tiny_model import build_tiny_model
    from hpl_envs import make_env

    tmp = Path(tempfile.mkdtemp(prefix="hpl-bench-gen-"))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # /reset_prefix_cache, so each replay starts cold
    recorder = Recorder()
    recorder.install()
    os.environ.setdefault("VLLM_CACHE_ROOT", str(tmp / "vllm-cache"))
    model = build_tiny_model(tmp / "tiny")
    try:
        # on CPU, VLLMServer prefills whole prompts (vllm-cpu crashes on chunked seeded prefill)
        with VLLMServer(model, log_path=tmp / "vllm.log") as srv:
            eval_tasks = make_env("webshop").task_ids("test")[: args.eval_episodes]

            def run_eval(when: str) -> tuple[float, float]:
                recorder.on = when == "before"
                ev = asyncio.run(eval_throughput(srv.url, eval_tasks, args.concurrency, args.max_tokens,
                                                 args.workers))
                recorder.on = False
                rate = ev["llm_calls"] / ev["wall_s"]
                print(f"hpl-eval  webshop ({when}): {ev['episodes']} episodes, {ev['llm_calls']} LLM calls in "
                      f"{ev['wall_s']:.1f}s = {rate:.1f} calls/s, peak {ev['peak_inflight']} in flight, mean "
                      f"{ev['mean_inflight']:.1f}, {ev['prompt_tokens'] / max(ev['llm_calls'], 1):.0f} prompt "
                      f"tokens/call (--concurrency {args.concurrency}; load {load()})")
                return rate, ev["prompt_tokens"] / ev["wall_s"]

            # the machine may be shared: hpl-eval runs before and after hpl-gen, the ratio uses their mean
            ev_before = run_eval("before")
            eval_requests = recorder.take()
            kw = dict(env="webshop", policy=f"openai:{srv.url}", limit=args.limit, mc_rollouts=args.rollouts,
                      policy_max_tokens=args.max_tokens, concurrency=args.concurrency, workers=args.workers,
                      seed=0)
            recorder.on = True
            tree = label(tmp / "gen" / "tree", None, levels=("traj", "step", "group"), **kw)
            recorder.on = False
            gen_requests = recorder.take()[-tree["mc_llm_calls"]:]  # the MC stage's (not the policy episodes')
            gen_rate = tree["mc_llm_calls_per_s"] or 0.0
            print(f"hpl-gen   webshop MC labelling: {args.limit} tasks, M={args.rollouts}, {tree['mc_llm_calls']} LLM "
                  f"calls = {gen_rate:.1f} calls/s, peak {tree['mc_llm_peak_in_flight']} in flight, mean "
                  f"{tree['mc_llm_mean_in_flight']:.1f}, outside LLM {tree['mc_outside_llm_fraction']:.1%} of its "
                  f"wall time, {tree['mc_prompt_tokens'] / max(tree['mc_llm_calls'], 1):.0f} prompt tokens/call "
                  f"(load {load()})")
            ev_after = run_eval("after")
            ev_rate, ev_tokens = (ev_before[0] + ev_after[0]) / 2, (ev_before[1] + ev_after[1]) / 2
            gen_tokens = tree["mc_prompt_tokens"] * gen_rate / max(tree["mc_llm_calls"], 1)  # over the same wall time
            if not args.no_ipr:
                runs = {"tree": tree, **compare_labelling(tmp / "gen", reuse=tmp / "gen" / "tree", **kw)}
                report_calls_per_pair(runs, "mc_llm_calls", "LLM calls")
            # an MC rollout starts mid-episode, so its prompts are longer than hpl-eval's: the server does
            # more work per call; prompt tokens/s compares the load each puts on the server
            print(f"hpl-gen/hpl-eval prompt tokens/s ratio {gen_tokens / ev_tokens:.2f}")
            # what the server can do for each request shape: the same requests replayed with nothing else
            # running (cold prefix cache, same --concurrency); each run's calls/s as a share of that
            cap_eval = asyncio.run(replay(srv.url, eval_requests, args.concurrency))
            cap_gen = asyncio.run(replay(srv.url, gen_requests, args.concurrency))
            print(f"server capacity, the runs' own requests replayed ({args.concurrency} in flight, no env): "
                  f"hpl-eval's {cap_eval:.1f} calls/s, hpl-gen MC's {cap_gen:.1f} calls/s (load {load()})")
            print(f"share of that capacity reached: hpl-eval {ev_rate / cap_eval:.0%}, hpl-gen MC "
                  f"{gen_rate / cap_gen:.0%}; ratio {(gen_rate / cap_gen) / (ev_rate / cap_eval):.2f}")
            print(f"hpl-gen/hpl-eval LLM calls/s ratio {gen_rate / ev_rate:.2f} "
                  f"(peak in flight {tree['mc_llm_peak_in_flight']}, mean {tree['mc_llm_mean_in_flight']:.1f})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="webshop")
    ap.add_argument("--limit", type=int, default=None, help="tasks (default 20; --llm-throughput: 8)")
    ap.add_argument("--rollouts", type=int, default=None, help="M (default 5; --llm-throughput: 3)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--llm-throughput", action="store_true")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--eval-episodes", type=int, default=96)
    ap.add_argument("--no-ipr", action="store_true", help="--llm-throughput: skip the calls-per-pair comparison")
    ap.add_argument("--max-tokens", type=int, default=24, help="tiny model tokens per turn")
    args = ap.parse_args(argv)
    if args.llm_throughput:
        args.limit, args.rollouts = args.limit or 8, args.rollouts or 3
        return llm_throughput(args)
    args.limit, args.rollouts = args.limit or 20, args.rollouts or 5
    with tempfile.TemporaryDirectory() as d:
        print(f"{args.env}: {args.limit} tasks, M={args.rollouts}, heuristic reference policy")
        runs = compare_labelling(Path(d), env=args.env, limit=args.limit, mc_rollouts=args.rollouts,
                                 workers=args.workers)
        report_calls_per_pair(runs, "env_steps", "policy actions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
