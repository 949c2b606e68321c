"""WebShop env: snapshots, fuzzed actions, determinism, gymnasium integration, agents."""

import os
import pickle
import random
import subprocess
import sys

import gymnasium as gym
import pytest

import hpl_envs  # noqa: F401  (registers ids)
from hpl_envs import make_env
from hpl_envs.agents import make_agent
from hpl_envs.core import TaskNotFoundError


def play(env, agent, task_id, seed=0):
    obs, info = env.reset(options={"task_id": task_id})
    agent.reset(env, obs, info)
    trace = [obs]
    done = False
    while not done:
        obs, r, term, trunc, info = env.step(agent.act(obs, info))
        trace.append((obs, r, term, trunc))
        done = term or trunc
    return trace, info


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_snapshot_then_continue_equals_uninterrupted(webshop_env, depth):
    env = webshop_env
    rng = random.Random(depth)
    for task_id in rng.sample(env.task_ids("train"), 8):
        # a stochastic agent: record its actions on an uninterrupted run
        agent = make_agent("webshop", "heuristic", seed=depth, epsilon=0.3)
        obs, info = env.reset(options={"task_id": task_id})
        agent.reset(env, obs, info)
        actions, outputs, snap = [], [], None
        done = False
        while not done:
            if len(actions) == depth:
                snap = pickle.dumps(env.get_state())  # snapshots must be picklable (they travel)
            a = agent.act(obs, info)
            obs, r, term, trunc, info = env.step(a)
            actions.append(a)
            outputs.append((obs, r, term, trunc, info["admissible_actions"]))
            done = term or trunc
        if snap is None:
            continue
        # scramble the env with another task, then restore and replay the suffix
        env.reset(options={"task_id": env.task_ids("test")[0]})
        env.step("search[something else entirely]")
        env.set_state(pickle.loads(snap))
        for a, expected in zip(actions[depth:], outputs[depth:]):
            obs, r, term, trunc, info = env.step(a)
            assert (obs, r, term, trunc, info["admissible_actions"]) == expected


FUZZ_PIECES = ["click[", "]", "[", "search[", "click[buy now]", "click[< prev]", "click[next >]", "<r>", "<c>",
               "<a>", "<q>", "\n", "\x00", "é", "漢字", "🙂", " ", "click[search]", "Search[", "CLICK[", "[SEP]",
               "click[b0743jkhbv]", "search[pillow]", "click[description]", "\u200b", "'", '"', "\\", "%s", "{}"]


def random_action(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.03:
        return "x" * rng.randint(10_000, 200_000)  # huge strings
    if kind < 0.05:
        return "search[" + "shoe " * rng.randint(1_000, 20_000) + "]"  # huge queries
    if kind < 0.15:
        return "".join(chr(rng.randint(0, 0x2FFFF)) for _ in range(rng.randint(0, 50)))  # arbitrary unicode
    return "".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(0, 6)))


def test_ten_thousand_fuzzed_actions(webshop_env):
    env = webshop_env
    rng = random.Random(1234)
    obs, info = env.reset(options={"task_id": "0"})
    invalid = 0
    for i in range(10_000):
        if i % 7 == 0 and info["admissible_actions"]:
            action = rng.choice(info["admissible_actions"]).replace("<keywords>", "pillow")
        else:
            action = random_action(rng)
        before = (obs, env.get_state())
        obs, r, term, trunc, info = env.step(action)
        if not info["action_valid"]:
            invalid += 1
            # the original leaves the page unchanged on an invalid action
            assert obs == before[0]
            assert env.get_state().url == before[1].url
        if term or trunc:
            obs, info = env.reset(options={"task_id": str(rng.randrange(len(env.goals)))})
    assert invalid > 5000


def test_invalid_actions_follow_the_original_parse(webshop_env):
    env = webshop_env
    env.reset(options={"task_id": "0"})
    for bad in ["Search[pillow]", "search pillow", "click[search]", "search[a\nb]", "click[", "search[x[y]z]"]:
        obs, r, term, trunc, info = env.step(bad)
        assert not info["action_valid"], bad
    env.reset(options={"task_id": "0"})
    # search works from any page and trailing text after ']' is ignored, as in the original
    obs, r, term, trunc, info = env.step("search[pillow] please")
    assert info["action_valid"] and "Total results" in obs


def test_errors_are_clear(webshop_env):
    with pytest.raises(TaskNotFoundError):
        webshop_env.reset(options={"task_id": "999999"})
    with pytest.raises(TaskNotFoundError):
        webshop_env.reset(options={"task_id": "-1"})
    with pytest.raises(ValueError):
        webshop_env.task_ids("nope")
    with pytest.raises(ValueError):
        make_env("webshop", max_turns=0)
    with pytest.raises(TypeError):
        webshop_env.set_state({"not": "a state"})
    env = make_env("webshop", max_turns=1)
    env.reset(options={"task_id": "1"})
    env.step("click[nothing]")
    with pytest.raises(RuntimeError):
        env.step("click[nothing]")


def test_splits_follow_webshop_convention(webshop_env):
    assert webshop_env.task_ids("test") == [str(i) for i in range(500)]
    assert webshop_env.task_ids("dev")[0] == "500" and len(webshop_env.task_ids("dev")) == 1000
    assert len(webshop_env.task_ids("train")) == len(webshop_env.goals) - 1500


def test_goals_and_prices_identical_across_processes(webshop_env):
    """The original draws prices unseeded; hpl must give every process the same tasks."""
    code = ("from hpl_envs import make_env; e = make_env('webshop'); import hashlib, json;"
            "print(hashlib.sha256(json.dumps([[g.asin, g.instruction_text, g.price_upper] for g in e.goals]"
            ").encode()).hexdigest(), e.shared.catalog.price(e.shared.catalog.index(e.goals[7].asin)))")
    outs = set()
    for hashseed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        outs.add(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                check=True).stdout)
    assert len(outs) == 1


def test_gymnasium_make_and_spaces():
    env = gym.make("hpl/WebShop-v0")
    obs, info = env.reset(options={"task_id": "3"})
    assert env.observation_space.contains(obs)
    assert env.action_space.contains("click[ünïcode]")
    assert set(info) >= {"task_id", "task_type", "instruction", "admissible_actions", "won", "action_valid"}
    obs, r, term, trunc, info = env.step("search[shoes]")
    assert isinstance(r, float) and not term


def test_oracle_reaches_the_original_ceiling_on_test(webshop_env):
    """The oracle buys the exact goal; misses are only WebShop's option-normalisation quirk."""
    from benchmarks_helpers import classify_misses

    causes, n, wins = classify_misses(webshop_env, "test")
    assert n == 500
    assert wins / n >= 0.95
    assert set(causes) <= {"option-normalisation"}, causes


def test_heuristic_is_nontrivial_and_stochastic(webshop_env):
    rewards, traces = [], set()
    for seed in range(3):
        agent = make_agent("webshop", "heuristic", seed=seed)
        for tid in webshop_env.task_ids("test")[:40]:
            trace, info = play(webshop_env, agent, tid)
            rewards.append(trace[-1][1])
            if tid == "5":
                traces.add(str(trace))
    avg = sum(rewards) / len(rewards)
    assert 0.2 < avg < 0.95
    assert len(traces) > 1  # different seeds explore differently


def test_random_agent_plays_admissible_actions_to_an_end(webshop_env):
    """The random agent picks among the admissible actions (templates filled in); every episode
    ends by a purchase or by truncation at max_turns, rewarded in [0, 1] at its end only; the seed
    replays the same episodes."""
    def episodes(seed):
        agent, out = make_agent("webshop", "random", seed=seed), []
        for tid in webshop_env.task_ids("test")[:20]:
            obs, info = webshop_env.reset(options={"task_id": tid})
            agent.reset(webshop_env, obs, info)
            steps, done = [], False
            while not done:
                admissible = info["admissible_actions"]
                action = agent.act(obs, info)
                assert action in admissible or (action.startswith("search[") and "search[<keywords>]" in admissible)
                obs, r, term, trunc, info = webshop_env.step(action)
                steps.append((action, r, term, trunc))
                done = term or trunc
            out.append(steps)
        return out

    runs = episodes(0)
    for steps in runs:
        *middle, (last_action, reward, term, trunc) = steps
        assert len(steps) <= webshop_env.max_turns and all(r == 0 and not (t or u) for _, r, t, u in middle)
        assert 0 <= reward <= 1
        assert (term and last_action == "click[buy now]") or (trunc and len(steps) == webshop_env.max_turns and reward == 0)
    assert any(steps[-1][2] for steps in runs) and any(steps[-1][3] for steps in runs)  # both endings occur
    assert episodes(0) == runs and episodes(1) != runs


def test_product_disjoint_split_mode():
    env = make_env("webshop", split_mode="product")
    splits = {s: env.task_ids(s) for s in ("train", "dev", "test")}
    products = {s: {env.goal(t).asin for t in ids} for s, ids in splits.items()}
    assert not products["train"] & products["test"] and not products["dev"] & products["test"]
    assert not products["train"] & products["dev"]
    assert sum(len(v) for v in splits.values()) == len(env.goals)
    assert 450 <= len(splits["test"]) <= 600 and 900 <= len(splits["dev"]) <= 1150
    with pytest.raises(ValueError):
        make_env("webshop", split_mode="random")


def test_human_goals_mode():
    """The 13 catalog products that carry WebShop's human instructions give human-goal tasks."""
    env = make_env("webshop", goals="human")
    assert 5 <= len(env.goals) <= 20
    agent = make_agent("webshop", "oracle")
    rewards = [play(env, agent, t)[0][-1][1] for t in env.task_ids("all")]
    assert sum(r == 1.0 for r in rewards) >= len(rewards) // 2


def test_search_imports_the_porter_stemmer_alone_and_stems_as_nltk(webshop_env):
    """The search module takes NLTK's PorterStemmer without NLTK's package import (scipy.stats and
    the rest: ~1 s of every spawned worker's start), leaves no placeholder module behind, and stems
    every word of the catalog's searchable text as the ordinary ``nltk.stem.porter`` class does."""
    probe = ("import sys, hpl_envs.webshop.search as s; "
             "assert not [m for m in sys.modules if m == 'nltk' or m.startswith(('nltk.', 'scipy.stats'))]; "
             "import nltk.stem.porter, nltk.metrics; print(s._STEMMER.stem('technologies'))")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "technolog", p.stderr[-2000:]

    from nltk.stem.porter import PorterStemmer

    from hpl_envs.webshop import search

    ordinary = PorterStemmer(mode=PorterStemmer.MARTIN_EXTENSIONS)
    words = {w for text in webshop_env.shared.catalog.table.column("contents").to_pylist()
             for w in search._ASCII_TOKEN.findall(text.lower())}
    assert len(words) > 5000
    assert [search._STEMMER.stem(w) for w in sorted(words)] == [ordinary.stem(w) for w in sorted(words)]
