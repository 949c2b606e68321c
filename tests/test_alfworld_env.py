"""ALFWorld on TextWorld's PDDL engine: snapshots, fidelity to plain TextWorld, robustness."""

import json
import os
import pickle
import random
import subprocess
import sys

import pytest

pytest.importorskip("textworld")
pytest.importorskip("alfworld")

from hpl_envs import make_env  # noqa: E402
from hpl_envs.agents import make_agent, play  # noqa: E402
from hpl_envs.alfworld.games import TASK_TYPES  # noqa: E402
from hpl_envs.data import DataCorruptError, DataMissingError  # noqa: E402


@pytest.fixture(scope="module")
def alf():
    env = make_env("alfworld", max_turns=40)
    yield env
    env.close()


def one_game_per_type(env, split="valid_seen"):
    seen = {}
    for tid in env.task_ids(split):
        seen.setdefault(env.game(tid).task_type, tid)
    assert set(seen) == set(TASK_TYPES)
    return [seen[t] for t in TASK_TYPES]


def rollout(env, tid, actions):
    out = []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append((obs, r, term, trunc, tuple(info["admissible_actions"])))
        if term or trunc:
            break
    return out


@pytest.mark.parametrize("depth", [1, 3, 6, 10])
def test_restore_equals_uninterrupted(alf, depth):
    for k, tid in enumerate(one_game_per_type(alf)):
        rng = random.Random(depth * 100 + k)
        obs, info = alf.reset(options={"task_id": tid})
        actions, snap, outputs = [], None, []
        # a mix of walkthrough and random admissible actions, recorded on an uninterrupted run
        plan = alf.walkthrough(tid)
        for t in range(depth + 12):
            if t == depth:
                snap = alf.get_state()
            a = plan[t] if t < len(plan) and rng.random() < 0.5 else rng.choice(info["admissible_actions"])
            obs, r, term, trunc, info = alf.step(a)
            actions.append(a)
            outputs.append((obs, r, term, trunc, tuple(info["admissible_actions"])))
            if term or trunc:
                break
        if snap is None:
            continue
        alf.reset(options={"task_id": one_game_per_type(alf, "valid_unseen")[k]})  # somewhere else
        alf.step("look")
        alf.set_state(snap)
        assert alf.last_restore == "snapshot"
        assert rollout(alf, tid, actions[depth:]) == outputs[depth:]


def test_pickled_snapshot_restores_by_replay(alf):
    tid = one_game_per_type(alf)[2]
    alf.reset(options={"task_id": tid})
    for a in alf.walkthrough(tid)[:3]:
        alf.step(a)
    snap = pickle.loads(pickle.dumps(alf.get_state()))  # as if sent to another worker
    expected = rollout(alf, tid, alf.walkthrough(tid)[3:])
    alf.set_state(snap)
    assert alf.last_restore == "replay"
    assert rollout(alf, tid, alf.walkthrough(tid)[3:]) == expected
    assert expected[-1][2] and expected[-1][1] == 1.0


PLAIN_TEXTWORLD = r"""
import json, random, sys
import textworld
from textworld.envs.pddl import PddlEnv
from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
out = []
for path, seed in json.loads(sys.argv[1]):
    env = AlfredInfos(AlfredDemangler(PddlEnv(textworld.EnvInfos(won=True, admissible_commands=True))))
    env.load(path)
    state = env.reset()
    rng = random.Random(seed)
    trace = [[state.feedback, state["admissible_commands"], state["won"]]]
    for t in range(15):
        a = rng.choice(state["admissible_commands"] + ["jump", "take moon"])
        state, _, done = env.step(a)
        trace.append([a, state.feedback, state["admissible_commands"], state["won"]])
        if done:
            break
    out.append(trace)
print(json.dumps(out))
"""


def test_same_as_plain_textworld(alf):
    """hpl's speed-ups (memoised parsing/translation, restore-based reset) change nothing: compare
    with unmodified TextWorld + ALFWorld wrappers in a fresh interpreter."""
    tids = one_game_per_type(alf, "valid_unseen")
    jobs = [(str(alf.game(t).path), i) for i, t in enumerate(tids)]
    p = subprocess.run([sys.executable, "-c", PLAIN_TEXTWORLD, json.dumps(jobs)], capture_output=True, text=True,
                       timeout=600, check=True)
    plain = json.loads(p.stdout)
    for tid, trace in zip(tids, plain):
        for _ in range(2):  # twice: the second reset comes from the in-memory initial snapshot
            obs, info = alf.reset(options={"task_id": tid})
            assert obs == "\n".join(trace[0][0].split("\n\n")[1:])
            assert info["admissible_actions"] == trace[0][1]
            for a, feedback, admissible, won in trace[1:]:
                obs, r, term, trunc, info = alf.step(a)
                assert obs == feedback and info["admissible_actions"] == admissible and info["won"] == won


def test_fuzzed_actions(alf):
    rng = random.Random(3)
    tid = one_game_per_type(alf)[0]
    obs, info = alf.reset(options={"task_id": tid})
    pieces = ["go to", "take", "from", "desk 1", "\n", "\x00", "🙂", "漢字", "  ", "open", "help", "look", "[", "]"]
    for i in range(10_000):
        if i % 5 == 0:
            a = rng.choice(info["admissible_actions"])
        elif i % 97 == 0:
            a = "x" * 100_000
        else:
            a = " ".join(rng.choice(pieces) for _ in range(rng.randint(0, 5)))
        obs, r, term, trunc, info = alf.step(a)
        if not info["action_valid"]:
            assert obs == "Nothing happens."
        if term or trunc:
            obs, info = alf.reset(options={"task_id": tid})


def test_bad_game_files(tmp_path, data_dir):
    with pytest.raises(DataMissingError, match="hpl-data download alfworld"):
        make_env("alfworld", data_root=tmp_path / "nothing")
    src = next((data_dir / "alfworld/json_2.1.1/valid_seen").glob("*/*/game.tw-pddl"))
    for i, content in enumerate(["{not json", json.dumps({"pddl_domain": "x"}),
                                 json.dumps({"pddl_domain": "(define", "grammar": "{}", "pddl_problem": "("})]):
        root = tmp_path / f"r{i}"
        dst = root / "alfworld/json_2.1.1/valid_seen" / src.parent.parent.name / src.parent.name
        dst.mkdir(parents=True)
        (dst / "game.tw-pddl").write_text(content)
        env = make_env("alfworld", data_root=root)
        with pytest.raises(DataCorruptError, match="game.tw-pddl"):
            env.reset(options={"task_id": env.task_ids("valid_seen")[0]})


def test_task_types_and_splits(alf):
    assert len(alf.task_ids("valid_seen")) == 140 and len(alf.task_ids("valid_unseen")) == 134
    assert alf.task_ids("test") == alf.task_ids("valid_unseen") and alf.task_ids("dev") == alf.task_ids("valid_seen")
    obs, info = alf.reset(options={"task_id": alf.task_ids("valid_seen")[0]})
    assert "Your task is to: " in obs and not obs.startswith("-=")
    assert info["instruction"] and info["task_type"] in TASK_TYPES


ORACLE_CHUNKS = 8  # the 274 eval games in strided parts that both xdist workers share (~20 s each idle)


@pytest.mark.parametrize("chunk", range(ORACLE_CHUNKS))
def test_oracle_solves_every_eval_game(alf, chunk):
    """Every game of both eval splits is won by the oracle (a strided part of each split per case:
    every part holds every task type, and the parts together are the whole split)."""
    agent = make_agent("alfworld", "oracle", seed=0)
    for split in ("valid_seen", "valid_unseen"):
        ids = alf.task_ids(split)
        assert sorted(t for k in range(ORACLE_CHUNKS) for t in ids[k::ORACLE_CHUNKS]) == sorted(ids)
        part = ids[chunk::ORACLE_CHUNKS]
        for tid in part:
            _, reward, info, actions = play(alf, agent, tid)
            assert info["won"] and reward == 1.0 and 0 < len(actions) <= alf.max_turns, tid
        assert {alf.game(tid).task_type for tid in part} == set(TASK_TYPES), (split, chunk)


def test_hpl_eval_oracle_on_the_default_splits(alf, tmp_path):
    """hpl-eval's default ALFWorld splits are both eval splits, and its summary counts the oracle's
    wins (the first games of each split; every game is won in the test above)."""
    limit = 3
    p = subprocess.run([sys.executable, "-m", "hpl_data.cli_eval", "--env", "alfworld", "--agent", "oracle",
                        "--limit", str(limit), "--workers", "2", "--out", str(tmp_path), "--quiet"],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert p.returncode == 0, p.stderr
    for split in ("valid_seen", "valid_unseen"):
        s = json.loads((tmp_path / f"alfworld_{split}.json").read_text())
        assert s["split"] == split and s["episodes"] == limit and s["failed_episodes"] == 0
        types = {alf.game(tid).task_type for tid in alf.task_ids(split)[:limit]}
        assert s["success_rate"] == 1.0 and set(s["by_task_type"]) == types, split


def test_heuristic_and_random_run(alf):
    for name in ("heuristic", "random"):
        agent = make_agent("alfworld", name, seed=1)
        for tid in alf.task_ids("valid_unseen")[:3]:
            _, _, info, actions = play(alf, agent, tid)
            assert 0 < len(actions) <= alf.max_turns
