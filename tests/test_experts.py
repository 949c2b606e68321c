"""Expert trajectories from files (file:PATH) through hpl-gen: InterCode's published runs and
ETO/IPR-style conversation JSON."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import DATA

from hpl_data.experts import load_expert_file


def gen(out, *args):
    return subprocess.run([sys.executable, "-m", "hpl_data.cli_gen", "--out", str(out), *args], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("name", ["gpt-3.5/ic_sql_react_10_turns.json", "gpt-4/ic_sql_multiturn_gpt-4_10_turns.json"])
def test_intercode_runs_as_expert(tmp_path, name):
    path = DATA / "expert" / "intercode_sql_results" / name
    rec = load_expert_file(str(path), True)
    assert len(rec) > 1000 and all(not a.startswith("execute[") for steps in rec.values() for _, a in steps)
    p = gen(tmp_path, "--env", "intercode-sql", "--split", "dev", "--expert", str(path), "--limit", "12")
    assert p.returncode == 0, p.stderr
    man = json.loads((tmp_path / "manifest.json").read_text())["counters"]
    assert man["expert_kept"] + man["expert_filtered"] == 12 and man["expert_kept"] >= 6
    rows = pq.read_table(tmp_path / "trajectories_expert.parquet").to_pylist()
    kept = [r for r in rows if r["reward"] == 1.0]
    assert len(kept) == man["expert_kept"]
    if "react" in name:  # GPT-3.5 ReAct runs carry thoughts, which become the assistant turns
        assert all(m["content"].startswith("Thought: ") for r in kept for m in r["messages"] if m["role"] == "assistant")
    for level in ("traj", "step", "group"):
        assert pq.read_metadata(tmp_path / f"{level}_pairs.parquet").num_rows > 0, level


def test_eto_conversation_file_as_expert(tmp_path):
    """An ETO-layout file (from/value turns, ids with the env prefix) replays to the recorded outcome."""
    from hpl_envs import make_env
    from hpl_envs.agents import make_agent, play

    env = make_env("webshop")
    items, rewards = [], []
    ids = env.task_ids("train")[:5]
    for tid in ids:
        _, reward, _, actions = play(env, make_agent("webshop", "oracle"), tid)
        rewards.append(reward)
        conv = [{"from": "human", "value": "instruction and example"}]
        for a in actions:
            conv += [{"from": "gpt", "value": f"Thought: I act.\nAction: {a}"}, {"from": "human", "value": "obs"}]
        items.append({"id": f"webshop_{tid}", "conversations": conv[:-1]})
    f = tmp_path / "webshop_sft.json"
    f.write_text(json.dumps(items))
    p = gen(tmp_path / "out", "--env", "webshop", "--split", "train", "--expert", f"file:{f}", "--levels", "traj")
    assert p.returncode == 0, p.stderr
    rows = pq.read_table(tmp_path / "out" / "trajectories_expert.parquet").to_pylist()
    assert [r["task_id"] for r in rows] == ids and [r["reward"] for r in rows] == rewards
    assert all(m["content"].startswith("Thought: I act.") for r in rows for m in r["messages"] if m["role"] == "assistant")


def test_bad_expert_files(tmp_path, cli_error):
    from hpl_data import cli_gen

    def error(out, expert):
        return cli_error(cli_gen, ["--no-progress", "--env", "webshop", "--expert", expert, "--out", str(tmp_path / out)])

    (tmp_path / "bad.json").write_text("{not json")
    assert "not readable JSON" in error("o1", f"file:{tmp_path / 'bad.json'}")
    (tmp_path / "other.json").write_text(json.dumps([{"id": "nope-1", "conversations": [{"from": "gpt", "value": "Action: x"}]}]))
    assert "no trajectory for any" in error("o2", str(tmp_path / "other.json"))
    assert "needs an LLM policy" in error("o3", "teacher:heuristic")
