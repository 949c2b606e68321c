"""hpl-gen as typed stages on the async engine: the five tables are the release's, row for row,
for any --workers/--concurrency; --env-arg reaches every stage."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hpl_data import cli_gen
from hpl_data.parquet import read_metadata
from hpl_envs.registry import profile

TABLES = ("trajectories_expert", "trajectories_policy", "traj_pairs", "step_pairs", "group_pairs")
HAS_SQL_SERVER = bool(shutil.which("mariadbd") or shutil.which("mysqld") or Path("/usr/sbin/mariadbd").exists())


def gen(out, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "hpl_data.cli_gen", "--no-progress", *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=timeout)


# Columns added after the release (additive; the release's columns must stay identical).
NEW_COLUMNS = {"chosen_outcomes", "rejected_outcomes"}


def table_digests(out: Path) -> dict[str, str]:
    """``rows:sha256[:16]`` of every table over the release's columns: each row as JSON with sorted
    keys (floats by repr)."""
    digests = {}
    for name in TABLES:
        path = Path(out) / f"{name}.parquet"
        if path.exists():
            table = pq.read_table(path)
            rows = table.select([c for c in table.column_names if c not in NEW_COLUMNS]).to_pylist()
            h = hashlib.sha256()
            for r in rows:
                h.update(json.dumps(r, sort_keys=True, default=str).encode() + b"\n")
            digests[name] = f"{len(rows)}:{h.hexdigest()[:16]}"
    return digests


# Digests of the tables written by the release before this change (commit 41d6a41, the synchronous
# ProcessPoolExecutor labeller), obtained with `git archive 41d6a41` into a scratch folder and
#   python -m hpl_data.cli_gen <the flags below, without --workers/--concurrency> --out X
# then table_digests(X) above, on the shared benchmark data (HPL_DATA_DIR) with --workers 1.
# This run uses other --workers/--concurrency on purpose: the result must not depend on them.
# The engine rewrite matched every digest of that release. Since then the WebShop reward uses the
# spaCy tagger then called 'original' (issue 12): four WebShop digests were re-derived
# the same way from this code with --workers 1 (webshop-default step_pairs, webshop-random-adaptive
# trajectories_policy and traj_pairs, webshop-uncertainty step_pairs; the rows differ only in
# rewards: e.g. task 1503's rejected value 0.071 -> 0.357). Issue 27 made tagger 'md-3.7.1' the default
# (35/36 of WebShop's test_goal.py assertions; 'original' was sm-3.0.0): webshop-default and
# webshop-uncertainty step_pairs re-derived the same way (with tagger sm-3.0.0 all three still match
# the earlier digests). SQL and ALFWorld are still the release's.
RELEASE = {
    "webshop-default": (
        ["--env", "webshop", "--limit", "6", "--workers", "2", "--concurrency", "4"],
        {"trajectories_expert": "6:897a5b4457861d2c", "trajectories_policy": "6:498ca621d8929e66",
         "traj_pairs": "6:a70015ae93619ed5", "step_pairs": "15:b6a7393fb75c7f66", "group_pairs": "7:713148e46c13bfe2"}),
    "webshop-random-adaptive": (
        ["--env", "webshop", "--limit", "4", "--policy", "random", "--mc-adaptive", "--mc-rollouts", "4", "--seed", "3",
         "--workers", "2", "--concurrency", "3"],
        {"trajectories_expert": "4:8185833526bd310d", "trajectories_policy": "4:cbe9792f25cd34c5",
         "traj_pairs": "4:5b0f74301404e792", "step_pairs": "10:c0228b6d23f52569", "group_pairs": "6:c6dfda6f6714756f"}),
    "webshop-uncertainty": (
        ["--env", "webshop", "--limit", "4", "--segmenter", "uncertainty", "--entropy-samples", "4", "--levels",
         "step,group"],
        {"trajectories_expert": "4:94810cfcccd0aed2", "trajectories_policy": "4:cee4dff1bf4d5f98",
         "traj_pairs": "4:8dd4b20eb3979a90", "step_pairs": "8:0555b4816c490e93", "group_pairs": "6:46183f757fd1a90e"}),
    "intercode-sql-default": (
        ["--env", "intercode-sql", "--limit", "4", "--workers", "2", "--concurrency", "7"],
        {"trajectories_expert": "4:b1f2e6028cd46228", "trajectories_policy": "4:b2d395f363787d9f",
         "traj_pairs": "4:eb9bae6bd3c5d712", "step_pairs": "4:b79a01b84f09731c", "group_pairs": "4:9e92a486515c3a77"}),
    "intercode-sql-random-adaptive": (  # Kendall-tau rewards: the Hoeffding bound's range is 2
        ["--env", "intercode-sql", "--limit", "3", "--policy", "random", "--mc-adaptive", "--mc-rollouts", "4",
         "--seed", "5", "--workers", "2"],
        {"trajectories_expert": "3:db7e4e9dee592fa9", "trajectories_policy": "3:171c5f6ceb616a06",
         "traj_pairs": "3:209c2e2aa180991c", "step_pairs": "3:a3f9fb81cb01d762", "group_pairs": "3:93ca879512f76c5a"}),
    "alfworld-default": (
        ["--env", "alfworld", "--limit", "2", "--mc-rollouts", "2", "--workers", "2", "--concurrency", "5"],
        {"trajectories_expert": "2:720ae5d157b6a78d", "trajectories_policy": "2:7325c1f536172bce",
         "traj_pairs": "2:78ec278822b0e30d", "step_pairs": "3:971d08c0c477bdcf", "group_pairs": "2:c168af8c8aaac424"}),
}


@pytest.mark.parametrize("name", list(RELEASE))
def test_tables_identical_to_the_release(name, tmp_path):
    args, expected = RELEASE[name]
    if "intercode-sql" in args and not HAS_SQL_SERVER:
        pytest.skip("no mariadbd/mysqld here (CI installs mariadb-server)")
    p = gen(tmp_path / "out", *args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert table_digests(tmp_path / "out") == expected
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    counters = manifest["counters"]
    assert counters["mc_failed_tasks"] == 0 and counters["rollouts"] > 0 and counters["pairs_labelled"] > 0
    # the env's curriculum thresholds travel with the data (the trainer imports no env)
    curriculum = profile(args[args.index("--env") + 1]).curriculum()
    assert manifest["curriculum"] == read_metadata(tmp_path / "out" / "group_pairs.parquet")["curriculum"] == curriculum


def test_env_args_reach_generation(tmp_path, cli_error):
    from hpl_envs import make_env

    p = gen(tmp_path / "product", "--env", "webshop", "--env-arg", "split_mode=product", "--levels", "traj,step",
            "--limit", "3", "--mc-rollouts", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    expected = make_env("webshop", split_mode="product").task_ids("train")[:3]
    assert expected != make_env("webshop").task_ids("train")[:3]  # the argument changes the tasks
    for name in ("trajectories_expert", "trajectories_policy"):
        assert [r["task_id"] for r in pq.read_table(tmp_path / "product" / f"{name}.parquet").to_pylist()] == expected
    assert {r["task_id"] for r in pq.read_table(tmp_path / "product" / "step_pairs.parquet").to_pylist()} <= set(expected)
    manifest = json.loads((tmp_path / "product" / "manifest.json").read_text())
    assert manifest["config"]["env_args"] == {"split_mode": "product"} and manifest["finished"]
    for bad, message in ((["--env-arg", "colour=1"], "colour"), (["--env-arg", "split_mode"], "KEY=VALUE"),
                         (["--env-arg", "split_mode=nope"], "split_mode must be 'webshop' or 'product'")):
        assert message in cli_error(cli_gen, ["--env", "webshop", "--limit", "1", "--out", str(tmp_path / "bad"), *bad])


@pytest.mark.skipif(not HAS_SQL_SERVER, reason="no mariadbd/mysqld here (CI installs mariadb-server)")
def test_sql_env_args(tmp_path, cli_error):
    p = gen(tmp_path / "sql", "--env", "intercode-sql", "--env-arg", 'backend="local"', "--env-arg", "row_cap=1",
            "--env-arg", "max_turns=4", "--limit", "3", "--mc-rollouts", "1", "--workers", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    manifest = json.loads((tmp_path / "sql" / "manifest.json").read_text())
    assert manifest["config"]["env_args"] == {"backend": "local", "row_cap": 1, "max_turns": 4}
    expert = pq.read_table(tmp_path / "sql" / "trajectories_expert.parquet").to_pylist()
    assert all(r["n_steps"] <= 4 for r in expert)
    pairs = pq.read_table(tmp_path / "sql" / "group_pairs.parquet").to_pylist()
    assert pairs and all(r["env"] == "intercode-sql" for r in pairs)
    argv = ["--env", "intercode-sql", "--env-arg", 'backend="nope"', "--limit", "1", "--out", str(tmp_path / "bad")]
    assert "unknown backend 'nope'" in cli_error(cli_gen, argv)


def test_curtailed_adaptive_mc_keeps_the_fixed_m_decisions(tmp_path, cli_error):
    """--mc-curtail stops a pair only once the remaining rollouts cannot change whether ΔR > 0 at M:
    the pairs kept are exactly those of the fixed-M run with the same seeds, for fewer rollouts.
    (A near-1 confidence switches the Hoeffding stop off, so only curtailment stops early.)"""
    common = ["--env", "webshop", "--limit", "3", "--policy", "random", "--mc-rollouts", "4", "--seed", "3",
              "--levels", "step,group", "--workers", "2"]
    fixed, curtailed = tmp_path / "fixed", tmp_path / "curtailed"
    for out, extra in ((fixed, []), (curtailed, ["--mc-adaptive", "--mc-curtail", "--mc-confidence", "0.999999"])):
        p = gen(out, *common, *extra)
        assert p.returncode == 0, p.stderr[-3000:]

    def kept(out):
        return sorted((r["task_id"], r["level"], r["group_start"], r["group_length"], json.dumps(r["rejected"]))
                      for lv in ("step", "group") for r in pq.read_table(out / f"{lv}_pairs.parquet").to_pylist())

    assert kept(curtailed) == kept(fixed) and kept(fixed)
    c_fixed, c_cut = (json.loads((o / "manifest.json").read_text())["counters"] for o in (fixed, curtailed))
    assert c_cut["pairs_labelled"] == c_fixed["pairs_labelled"]
    assert c_cut["pairs_curtailed"] > 0 and c_cut["rollouts"] < c_fixed["rollouts"]
    argv = ["--env", "webshop", "--limit", "1", "--mc-curtail", "--out", str(tmp_path / "bad")]
    assert "--mc-curtail is a stopping rule of adaptive MC; add --mc-adaptive" in cli_error(cli_gen, argv)


def test_a_task_whose_worker_dies_is_labelled_again(tmp_path, monkeypatch):
    """A worker killed mid-labelling takes the task's expert snapshots with it: the task starts over
    on the restarted worker (same seeds), so the tables equal those of an undisturbed run."""
    common = ["--env", "webshop", "--limit", "2", "--mc-rollouts", "2", "--levels", "step,group", "--workers", "2",
              "--policy", "tests.dying_agent:make"]
    p = gen(tmp_path / "clean", *common)
    assert p.returncode == 0, p.stderr[-3000:]
    monkeypatch.setenv("HPL_TEST_GEN_OUT", str(tmp_path / "killed"))
    monkeypatch.setenv("HPL_TEST_KILL_MARKER", str(tmp_path / "killed.marker"))
    p = gen(tmp_path / "killed", *common)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "killed.marker").exists()  # a worker did die during MC labelling
    counters = json.loads((tmp_path / "killed" / "manifest.json").read_text())["counters"]
    assert counters["mc_failed_tasks"] == 0 and counters["mc_task_retries"] >= 1
    assert counters["mc_worker_restarts"] >= 1
    assert table_digests(tmp_path / "killed") == table_digests(tmp_path / "clean")


def test_failed_labelling_exits_1_and_a_rerun_completes_the_tables(tmp_path, monkeypatch):
    """Tasks whose MC labelling fails are left out of the tables and the run exits 1 (not 0: a script
    must not take it for a complete run); rerunning the same command labels just those tasks."""
    common = ["--env", "webshop", "--limit", "2", "--mc-rollouts", "2", "--levels", "step,group",
              "--policy", "tests.dying_agent:make"]
    clean = gen(tmp_path / "clean", *common)
    assert clean.returncode == 0, clean.stderr[-3000:]
    monkeypatch.setenv("HPL_TEST_GEN_OUT", str(tmp_path / "broken"))
    monkeypatch.setenv("HPL_TEST_AGENT_RAISES", "1")
    p = gen(tmp_path / "broken", *common)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "hpl-gen: MC labelling failed for 2 task(s)" in p.stderr.splitlines()[-1]
    assert json.loads((tmp_path / "broken" / "manifest.json").read_text())["counters"]["mc_failed_tasks"] == 2
    monkeypatch.delenv("HPL_TEST_AGENT_RAISES")
    p = gen(tmp_path / "broken", *common)
    assert p.returncode == 0, p.stderr[-3000:]
    assert table_digests(tmp_path / "broken") == table_digests(tmp_path / "clean")


def test_resume_identity_ignores_server_address_and_transport_options():
    """A killed LLM run resumes against a restarted server (another port), with other timeouts, and
    from a manifest an older release wrote; another model or sampling option is other data."""
    from hpl_data.gen import GenConfig, data_identity

    base = GenConfig(env="webshop", out=Path("o"), policy="openai:http://127.0.0.1:8001/v1#tiny").as_dict()
    moved = {**base, "policy": "openai:http://127.0.0.1:9002/v1,http://10.0.0.2:8000/v1#tiny",
             "policy_args": {"call_timeout_s": 1800, "concurrency": 6}, "workers": 4}
    assert data_identity(moved) == data_identity(base)
    older = {k: v for k, v in base.items() if k not in ("mc_curtail", "mc_share_rollouts")}
    assert data_identity(older) == data_identity(base)
    assert data_identity({**base, "policy": "openai:http://127.0.0.1:8001/v1#other"}) != data_identity(base)
    assert data_identity({**base, "policy_args": {"max_model_len": 2048}}) != data_identity(base)
    assert data_identity({**base, "policy_temperature": 0.7}) != data_identity(base)
