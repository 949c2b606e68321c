"""hpl-gen SIGKILLed at shard boundaries, once in each stage (expert episodes, policy episodes, MC
labelling), then rerun: the tables equal those of an uninterrupted run, whose digests are stored
(this code's output, as test_gen's RELEASE digests are), so the uninterrupted run is not redone."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

ARGS = ["--no-progress", "--env", "webshop", "--limit", "24", "--mc-rollouts", "6", "--workers", "2", "--seed", "7"]
TASKS = 24
# every column of every table: rows:sha256[:16] (``digests`` below) of the uninterrupted run
UNINTERRUPTED = {
    "group_pairs": "35:110ecd342a70d720",
    "step_pairs": "69:5b21254b3a12bed1",
    "traj_pairs": "22:1f81030aea296adf",
    "trajectories_expert": "24:c93012566b5b3024",
    "trajectories_policy": "24:69900e11a9a6a50a",
}
STAGES = ("trajectories_expert", "trajectories_policy", "mc_group_step")  # shard folders, in the order written


def gen(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpl_data.cli_gen", *ARGS, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def shard_count(out: Path, stage: str) -> int:
    return len(list((out / ".shards" / stage).glob("*.json")))


def digests(out: Path) -> dict[str, str]:
    result = {}
    for path in sorted(out.glob("*.parquet")):
        rows = pq.read_table(path).to_pylist()
        h = hashlib.sha256()
        for r in rows:
            h.update(json.dumps(r, sort_keys=True, default=str).encode() + b"\n")
        result[path.stem] = f"{len(rows)}:{h.hexdigest()[:16]}"
    return result


def test_sigkill_at_shard_boundaries_then_resume_equals_uninterrupted(tmp_path):
    out = tmp_path / "killed"
    rng = random.Random(11)
    for stage in STAGES:  # one kill in each stage, just after a drawn shard of it was written
        target = rng.randint(shard_count(out, stage) + 1, TASKS - 1)
        p = gen(out)
        while p.poll() is None and shard_count(out, stage) < target:
            time.sleep(0.01)
        assert p.poll() is None, (stage, p.stderr.read()[-3000:])  # it was at work in that stage
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        assert shard_count(out, stage) >= target, stage  # the shards written before the kill are kept
        assert not (out / "manifest.json").exists() or '"finished": true' not in (out / "manifest.json").read_text()
    p = gen(out)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert digests(out) == UNINTERRUPTED  # no loss, no duplicates, the same rows
    assert not list(out.rglob("*.tmp"))
