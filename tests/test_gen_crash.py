"""hpl-gen killed with SIGKILL at random moments, then rerun, equals an uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq

ARGS = ["--env", "webshop", "--limit", "80", "--mc-rollouts", "6", "--workers", "2", "--seed", "7"]
TABLES = ("trajectories_expert", "trajectories_policy", "traj_pairs", "step_pairs", "group_pairs")


def gen(out, timeout=600):
    return subprocess.Popen([sys.executable, "-m", "hpl_data.cli_gen", *ARGS, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_sigkill_resume_equals_uninterrupted(tmp_path):
    ref = tmp_path / "ref"
    p = gen(ref)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err

    out = tmp_path / "killed"
    rng = random.Random(11)
    kills = 0
    # kill at random moments; a run that finishes before its kill time simply completes, so keep
    # going (bounded) until the run has been killed at least 10 times
    for _ in range(40):
        if kills >= 12:
            break
        p = gen(out)
        time.sleep(rng.uniform(0.3, 2.5))
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            kills += 1
        p.wait(timeout=60)
    assert kills >= 10
    p = gen(out)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    for name in TABLES:
        a = pq.read_table(ref / f"{name}.parquet").to_pylist()
        b = pq.read_table(out / f"{name}.parquet").to_pylist()
        assert len(a) == len(b) and a == b, name  # no loss, no duplicates, same rows
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
