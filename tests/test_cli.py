"""The command-line tools, run as a user would (subprocesses, real files)."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, **kw)


def test_hpl_eval_contract(tmp_path):
    out = tmp_path / "r.json"
    p = run("hpl_data.cli_eval", "--env", "webshop", "--agent", "heuristic", "--split", "test", "--limit", "30",
            "--workers", "2", "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    s = json.loads(out.read_text())
    for key in ("env", "split", "agent", "episodes", "avg_reward", "success_rate", "avg_steps", "by_task_type",
                "env_steps_per_s"):
        assert key in s
    assert s["env"] == "webshop" and s["episodes"] == 30 and s["failed_episodes"] == 0
    assert sum(v["episodes"] for v in s["by_task_type"].values()) == 30
    assert all(set(v) == {"episodes", "avg_reward", "avg_reward_ci95", "success_rate", "success_rate_ci95"}
               for v in s["by_task_type"].values())


def test_hpl_eval_bad_input(cli_error):
    from hpl_data import cli_eval

    assert "unknown env 'nope'" in cli_error(cli_eval, ["--env", "nope", "--agent", "oracle"])
    assert "unknown policy spec" in cli_error(cli_eval, ["--env", "webshop", "--agent", "genius", "--limit", "1"])
    assert "unknown split 'nope'" in cli_error(cli_eval, ["--env", "webshop", "--agent", "oracle", "--split", "nope"])


def test_hpl_eval_missing_data(tmp_path):
    import os

    env = dict(os.environ, HPL_DATA_DIR=str(tmp_path))
    p = run("hpl_data.cli_eval", "--env", "webshop", "--agent", "oracle", env=env)
    assert p.returncode == 2 and "hpl-data download webshop" in p.stderr


def test_corrupt_catalog_is_reported(tmp_path):
    import os
    import shutil

    from conftest import DATA

    (tmp_path / "webshop").mkdir()
    shutil.copy(DATA / "webshop" / "items_ins_v2_1000.json", tmp_path / "webshop")
    lines = (DATA / "webshop" / "items_shuffle_1000.documents.jsonl").read_text().splitlines()
    (tmp_path / "webshop" / "items_shuffle_1000.documents.jsonl").write_text("\n".join(lines[:5]) + "\n{broken\n")
    env = dict(os.environ, HPL_DATA_DIR=str(tmp_path))
    p = run("hpl_data.cli_eval", "--env", "webshop", "--agent", "oracle", env=env)
    assert p.returncode == 2 and "documents.jsonl:6: not valid JSON" in p.stderr


def test_hpl_gen_writes_loadable_pairs(tmp_path, capsys):
    out = tmp_path / "gen"
    p = run("hpl_data.cli_gen", "--env", "webshop", "--limit", "12", "--out", str(out), "--workers", "2")
    assert p.returncode == 0, p.stderr
    for level in ("step", "group"):
        rows = pq.read_table(out / f"{level}_pairs.parquet").to_pylist()
        assert rows, level
        for r in rows:
            assert r["chosen_reward"] - r["rejected_reward"] == pytest.approx(r["delta_r"]) and r["delta_r"] > 0
            assert r["prompt"][-1]["role"] == "user" and r["chosen"][-1]["role"] == "assistant"
            assert len(r["chosen"]) == 2 * r["group_length"] - 1 and r["bucket"] == f"B{r['length_bucket']}{r['delta_bucket']}"
            assert r["n_rollouts"] == 3
    pairs = pq.read_table(out / "traj_pairs.parquet")
    assert pairs.num_rows > 0
    row = pairs.slice(0, 1).to_pylist()[0]
    assert row["chosen_reward"] > row["rejected_reward"]
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["chosen"][-1]["role"] == "assistant" and row["rejected"][-1]["role"] == "assistant"
    traj = pq.read_table(out / "trajectories_expert.parquet")
    assert traj.num_rows == 12
    meta = json.loads(pq.read_schema(out / "traj_pairs.parquet").metadata[b"hpl"])
    assert meta["config"]["env"] == "webshop" and "counters" in meta
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(out / "traj_pairs.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert set(["prompt", "chosen", "rejected"]) <= set(ds.column_names)
    insp = run("hpl_data.cli_data", "inspect", str(out), "--png", str(tmp_path / "inspect.png"))
    assert insp.returncode == 0 and "buckets" in insp.stdout and "step_pairs" in insp.stdout, insp.stderr
    assert (tmp_path / "inspect.png").stat().st_size > 10_000
    from hpl_data import cli_data

    capsys.readouterr()
    assert cli_data.main(["inspect", str(tmp_path / "empty")]) == 2  # inspect reports on stdout, as view does
    said = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert said == f"hpl-data inspect: no Parquet tables in {tmp_path / 'empty'}"
    # rerun reuses finished tables
    p2 = run("hpl_data.cli_gen", "--env", "webshop", "--limit", "12", "--out", str(out))
    assert p2.returncode == 0 and "reusing" in p2.stderr
    # the same seed in a fresh folder (one worker instead of two) gives identical pairs
    out2 = tmp_path / "gen2"
    assert run("hpl_data.cli_gen", "--env", "webshop", "--limit", "12", "--out", str(out2)).returncode == 0
    for level in ("step", "group", "traj"):
        a = pq.read_table(out / f"{level}_pairs.parquet").to_pylist()
        b = pq.read_table(out2 / f"{level}_pairs.parquet").to_pylist()
        assert a == b, level


@pytest.mark.parametrize("extra,message", [
    (["--levels", "traj,nope"], "unknown levels ['nope']"),
    (["--segmenter", "fixed-k"], "fixed-k needs a positive integer"),
    (["--segmenter", "semantic"], "semantic needs a policy spec"),
    (["--mc-rollouts", "0"], "--mc-rollouts must be >= 1"),
])
def test_hpl_gen_bad_options(tmp_path, cli_error, extra, message):
    from hpl_data import cli_gen

    assert message in cli_error(cli_gen, ["--env", "webshop", "--limit", "2", "--out", str(tmp_path / "x"), *extra])
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_hpl_data_info():
    p = run("hpl_data.cli_data", "info")
    assert p.returncode == 0, p.stderr
    assert "shared with train" in p.stdout


def test_hpl_train_needs_a_model():
    p = run("hpl_train.cli")
    assert p.returncode == 2 and "'model' is required" in p.stderr


@pytest.mark.parametrize("env,limit", [("intercode-sql", 8), ("alfworld", 4)])
def test_hpl_gen_other_envs(tmp_path, env, limit):
    pytest.importorskip("textworld") if env == "alfworld" else None
    out = tmp_path / env
    p = run("hpl_data.cli_gen", "--env", env, "--limit", str(limit), "--out", str(out))
    assert p.returncode == 0, p.stderr
    traj = pq.read_table(out / "trajectories_expert.parquet").to_pylist()
    assert len(traj) == limit and all(t["reward"] == 1.0 for t in traj)
    first = traj[0]["messages"]
    assert first[0]["role"] == "user" and "Now, it's your turn" in first[0]["content"]
    assert first[2]["content"].startswith("Observation: ")
