"""The contract every registered hpl env keeps: gymnasium's env checker, exact snapshots (also
pickled into a fresh process), the base class's bookkeeping (turns, truncation, the common info keys,
the error after the end, seeding), a working ``ansi`` render, and docstrings that document every
info key the env emits and every constructor argument."""

import gc
import inspect
import pickle
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import psutil
import pytest
from gymnasium.utils.env_checker import check_env

from hpl_envs import make_env
from hpl_envs.core import COMMON_INFO
from hpl_envs.registry import PROFILES, profile

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
    """gymnasium's checker passes without a single warning (render_fps, the spec it rebuilds the env
    from, files left open, a subprocess left running), and close() leaves no child process."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
        obs, _ = env.reset(seed=3)
        assert env.render() == obs and isinstance(obs, str)
        assert "ansi" in env.metadata["render_modes"]
        quiet = make_env(env.env_name, max_turns=4)
        quiet.reset(seed=3)
        assert quiet.render() is None
        quiet.close()
        env.close()
        del quiet
        gc.collect()  # unclosed files and running Popen objects warn when collected
    assert not caught, [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
    left = [(p.pid, p.name()) for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not left, f"processes left running after close(): {left}"


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


def check_common_info(info: dict, turn: int) -> None:
    for key, (kind, _) in COMMON_INFO.items():
        assert key in info, key
        assert isinstance(info[key], kind), (key, info[key])
    assert info["turn"] == turn


def test_truncation_common_info_and_the_error_after_the_end(env):
    with pytest.raises(RuntimeError, match="call reset"):
        make_env(env.env_name, max_turns=4).step("look")
    _, info = env.reset(seed=0)
    check_common_info(info, 0)
    assert info["action_valid"] is True and info["won"] is False
    for turn in range(1, 5):  # max_turns=4 invalid actions: truncated (not terminated) on the 4th
        _, reward, term, trunc, info = env.step("nonsense action")
        check_common_info(info, turn)
        assert (reward, term, trunc, info["won"]) == (0.0, False, turn == 4, False)
    assert env.episode_over
    with pytest.raises(RuntimeError, match=f"^{env.env_name}: episode is over; call reset"):
        env.step("nonsense action")
    # the base's fields travel with a snapshot: an ended episode restored is still over
    ended = env.get_state()
    env.reset(seed=0)
    env.set_state(ended)
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("nonsense action")
    with pytest.raises(TypeError, match="set_state expects"):
        env.set_state({"not": "a state"})


def test_reset_seed_is_reproducible(env):
    first = [env.reset(seed=s) for s in (11, 12, 11)]
    assert first[0] == first[2]
    again = make_env(env.env_name, max_turns=4)
    assert again.reset(seed=11) == first[0]
    assert [env.reset()[1]["task_id"] for _ in range(3)] == [again.reset()[1]["task_id"] for _ in range(3)]
    assert len({env.reset(seed=s)[1]["task_id"] for s in range(6)}) > 1  # the seed picks the task


def docstring_section(cls, title: str) -> str:
    doc = inspect.getdoc(cls) or ""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", doc, re.S | re.M)
    assert match, f"{cls.__name__}'s docstring has no '## {title}' section"
    return match.group(1)


def test_docstring_follows_the_template_and_documents_every_info_key_and_argument(env):
    """Gymnasium's env docstring template, true to the code: the Information section lists exactly
    the info keys a short episode emits (one ending in the env's own termination, one truncated),
    the Arguments section every constructor argument and the registry's default."""
    cls = type(env)
    emitted: set[str] = set()
    _, info = env.reset(seed=0)
    emitted |= set(info)
    while not env.episode_over:
        emitted |= set(env.step("nonsense action")[4])
    solver = make_env(env.env_name)
    task = solver.task_ids(SPLIT[env.env_name])[0]
    actions = first_actions(solver, task, solver.max_turns)
    solver.max_turns = len(actions)  # the winning step is also the last allowed one: terminated wins
    _, info = solver.reset(options={"task_id": task})
    for action in actions:
        _, reward, term, trunc, info = solver.step(action)
        emitted |= set(info)
    assert (term, trunc, info["won"]) == (True, False, True) and reward > 0
    solver.close()
    documented = re.findall(r"^- ``(\w+)``", docstring_section(cls, "Information"), re.M)
    assert set(COMMON_INFO) <= set(documented)
    assert sorted(documented) == sorted(emitted), "the Information section and the emitted info keys differ"
    for title in ("Description", "Action Space", "Observation Space", "Starting State", "Rewards", "Episode End",
                  "Version History"):
        assert docstring_section(cls, title).strip()
    arguments = docstring_section(cls, "Arguments")
    for name in list(inspect.signature(cls.__init__).parameters)[1:]:
        assert f"- ``{name}=" in arguments, f"argument {name} is not documented"
    assert f"``max_turns={profile(env.env_name).max_turns}``" in arguments
    assert profile(env.env_name).gym_id in arguments


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_the_profile_names_the_agents_and_bad_arguments_are_typed(name):
    """Which built-in agents an env has is its profile's fact (no env-name branches elsewhere); an
    argument the env does not take is an EnvArgumentError before anything is built, not a TypeError."""
    from hpl_envs.agents import Agent, make_agent
    from hpl_envs.registry import EnvArgumentError

    agents = PROFILES[name].agents
    assert set(agents) == {"oracle", "heuristic"}
    for agent in [*agents, "random"]:
        built = make_agent(name, agent, seed=1)
        assert isinstance(built, Agent) and (agent == "random" or type(built).__name__ == agents[agent].split(":")[1])
    with pytest.raises(ValueError, match=r"no built-in agent 'genius' .*\['heuristic', 'oracle', 'random'\]"):
        make_agent(name, "genius")
    with pytest.raises(EnvArgumentError, match=f"env {name}: got an unexpected keyword argument 'bogus'; it takes "):
        make_env(name, bogus=1)
