"""The contract every registered hpl env keeps: gymnasium's env checker, exact snapshots (also
pickled into a fresh process), a clear error after the episode ends, and a working ``ansi`` render."""

import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from gymnasium.utils.env_checker import check_env

from hpl_envs import make_env
from hpl_envs.registry import PROFILES

HAS_SQL_SERVER = bool(shutil.which("mariadbd") or shutil.which("mysqld") or Path("/usr/sbin/mariadbd").exists())
SPLIT = {"webshop": "train", "alfworld": "train", "intercode-sql": "train"}


@pytest.fixture(params=sorted(PROFILES))
def env(request):
    if request.param == "intercode-sql" and not HAS_SQL_SERVER:
        pytest.skip("no mariadbd/mysqld here (CI installs mariadb-server)")
    e = make_env(request.param, render_mode="ansi", max_turns=4)
    yield e
    e.close()


def first_actions(env, task_id: str, n: int) -> list[str]:
    """The oracle's first n actions of a task (valid, state-changing moves)."""
    from hpl_envs.agents import make_agent

    agent = make_agent(env.env_name or env.__class__.__name__, "oracle")
    obs, info = env.reset(options={"task_id": task_id})
    agent.reset(env, obs, info)
    actions = []
    for _ in range(n):
        actions.append(agent.act(obs, info))
        obs, _, term, trunc, info = env.step(actions[-1])
        if term or trunc:
            break
    return actions


def test_gymnasium_env_checker_and_render(env):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env)
    obs, _ = env.reset(seed=3)
    assert env.render() == obs and isinstance(obs, str)
    assert "ansi" in env.metadata["render_modes"]
    quiet = make_env(env.env_name, max_turns=4)
    quiet.reset(seed=3)
    assert quiet.render() is None


def test_snapshot_round_trip_in_process_and_in_a_fresh_one(env):
    task = env.task_ids(SPLIT[env.env_name])[0]
    actions = first_actions(env, task, 2)
    obs, info = env.reset(options={"task_id": task})
    obs, *_ = env.step(actions[0])
    snap = env.get_state()
    after = env.step(actions[-1])
    env.set_state(snap)
    assert env.observation == obs
    again = env.step(actions[-1])
    assert again[:4] == after[:4]
    # the pickled snapshot, restored by a new env in another process, continues identically
    env.set_state(snap)
    blob = pickle.dumps(env.get_state())
    code = ("import pickle, sys; from hpl_envs import make_env; "
            f"e = make_env({env.env_name!r}, max_turns=4); e.set_state(pickle.loads(sys.stdin.buffer.read())); "
            f"o, r, t, u, i = e.step({actions[-1]!r}); sys.stdout.buffer.write(pickle.dumps((o, r, t, u)))")
    p = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    assert pickle.loads(p.stdout) == tuple(after[:4])


def test_stepping_after_the_end_is_a_clear_error(env):
    env.reset(seed=0)
    done = False
    while not done:  # 4 turns at most
        *_, term, trunc, _ = env.step("nonsense action")
        done = term or trunc
    with pytest.raises(RuntimeError, match="episode is over; call reset"):
        env.step("nonsense action")
